/* The float64 instance of the recurrent cells (see recurrent_impl.h).
 *
 * Compiled once as it is (GB_ISA v0: the build's flags, any CPU of the architecture; it also
 * defines the exported test functions) and included again by recurrent_f64_v3.c / _v4.c under
 * AVX2+FMA / AVX-512 targets; recurrent_dispatch.c picks the instance for the CPU at run time. */
#include <float.h>
#include <math.h>
#include "gradbench.h"

#ifndef GB_ISA
#define GB_ISA v0
#define GB_RECURRENT_EXPORTS 1
#endif
#define REAL double
#define SFX f64
#define TLDEXP ldexp
#define TFMA fma
#define TFABS fabs
#define T_MAX_EXP (DBL_MAX_EXP - 1)
#define GEMM_FN gb_dgemm_fn
#define GEMM_FIELD dgemm
#define BLAS_MIN_FIELD blas_min_width
#include "recurrent_impl.h"
