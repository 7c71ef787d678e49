/* The float64 instance of the recurrent cells (see recurrent_impl.h). */
#include <float.h>
#include <math.h>
#include "gradbench.h"

#define REAL double
#define SFX f64
#define TLDEXP ldexp
#define TFABS fabs
#define T_MAX_EXP (DBL_MAX_EXP - 1)
#define GEMM_FN gb_dgemm_fn
#define GEMM_FIELD dgemm
#include "recurrent_impl.h"
