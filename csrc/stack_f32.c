/* The float32 instance of the layer kernels and drivers (see stack_impl.h). Statistics and
 * norms are accumulated in double, as in the reference.
 *
 * Compiled once as it is (GB_ISA v0: the build's flags, any CPU of the architecture; it also
 * defines the exported layer pairs) and included again by stack_f32_v3.c / stack_f32_v4.c
 * under AVX2+FMA / AVX-512 targets; dispatch.c picks the drivers for the CPU at run time. */
#include <float.h>
#include <math.h>
#include "gradbench.h"

#ifndef GB_ISA
#define GB_ISA v0
#define GB_LAYER_PAIRS 1
#endif
#define T float
#define TINT int32_t /* the integer of T's width (vector shuffles) */
#define T_F32 1 /* float lanes for some activations (vact_f32.h) */
#define DT f32
#define TFMA fmaf
#define TLDEXP ldexpf
#define TFABS fabsf
#define T_MAX_EXP (FLT_MAX_EXP - 1)
#define GEMM_FN gb_sgemm_fn
#define GEMM_FIELD sgemm
#include "stack_impl.h"
