/* The float32 instance of the recurrent cells (see recurrent_impl.h).
 *
 * Compiled once as it is (GB_ISA v0: the build's flags, any CPU of the architecture; it also
 * defines the exported test functions) and included again by recurrent_f32_v3.c / _v4.c under
 * AVX2+FMA / AVX-512 targets; recurrent_dispatch.c picks the instance for the CPU at run time. */
#include <float.h>
#include <math.h>
#include "gradbench.h"

#ifndef GB_ISA
#define GB_ISA v0
#define GB_RECURRENT_EXPORTS 1
#endif
#define REAL float
#define SFX f32
#define TLDEXP ldexpf
#define TFMA fmaf
#define TFABS fabsf
#define T_MAX_EXP (FLT_MAX_EXP - 1)
#define GEMM_FN gb_sgemm_fn
#define GEMM_FIELD sgemm
#define BLAS_MIN_FIELD blas_min_width_f32
#include "recurrent_impl.h"
