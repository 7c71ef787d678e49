/* The float64 instance of the layer kernels and drivers (see stack_impl.h). */
#include <float.h>
#include <math.h>
#include "gradbench.h"

#define T double
#define SFX f64
#define TFMA fma
#define TLDEXP ldexp
#define TFABS fabs
#define T_MAX_EXP (DBL_MAX_EXP - 1)
#define GEMM_FN gb_dgemm_fn
#define GEMM_FIELD dgemm
#include "stack_impl.h"
