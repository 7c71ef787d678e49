/* The float32 instance of the recurrent cells (see recurrent_impl.h). Statistics and norms are
 * accumulated in double, as in the reference. */
#include <float.h>
#include <math.h>
#include "gradbench.h"

#define REAL float
#define SFX f32
#define TLDEXP ldexpf
#define TFABS fabsf
#define T_MAX_EXP (FLT_MAX_EXP - 1)
#define GEMM_FN gb_sgemm_fn
#define GEMM_FIELD sgemm
#include "recurrent_impl.h"
