/* The float32 instance of the layer kernels and drivers (see stack_impl.h). Statistics and
 * norms are accumulated in double, as in the reference. */
#include <float.h>
#include <math.h>
#include "gradbench.h"

#define T float
#define SFX f32
#define TFMA fmaf
#define TLDEXP ldexpf
#define TFABS fabsf
#define T_MAX_EXP (FLT_MAX_EXP - 1)
#define GEMM_FN gb_sgemm_fn
#define GEMM_FIELD sgemm
#include "stack_impl.h"
