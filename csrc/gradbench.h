/* gradbench C kernels: the one header that cffi binds (API mode).
 *
 * Dimension letters: L depth, B batch, N width. Arrays are C-contiguous, of one dtype
 * (suffix _f64 for double, _f32 for float), owned by the caller; no function allocates
 * per layer or keeps global state. Every function returns GB_OK or an error code that
 * Python turns into an exception.
 *
 * Only the text between the cffi markers is given to ffibuilder.cdef(), so it must stay
 * plain declarations (integer #defines only, no includes).
 */
#ifndef GRADBENCH_H
#define GRADBENCH_H

#include <stdint.h>

/* cffi-begin */
/* error codes */
#define GB_OK 0
#define GB_EBADACT 1
#define GB_EBADARG 2
#define GB_ENOMEM 3

/* activation codes, the order of gradbench.spec.ACTIVATIONS */
#define GB_IDENTITY 0
#define GB_SIGMOID 1
#define GB_TANH 2
#define GB_RELU 3
#define GB_LEAKY_RELU 4
#define GB_PRELU 5
#define GB_ELU 6
#define GB_SELU 7
#define GB_SWISH 8
#define GB_GELU 9

/* a = phi(z), elementwise over n entries.    a, z (n,) */
int gb_activation_forward_f64(double *a, const double *z, int64_t n, int act, double param);
int gb_activation_forward_f32(float *a, const float *z, int64_t n, int act, double param);
/* dz = da * phi'(z) (left derivative at the ReLU kink).    dz, da, z (n,) */
int gb_activation_backward_f64(double *dz, const double *da, const double *z, int64_t n, int act, double param);
int gb_activation_backward_f32(float *dz, const float *da, const float *z, int64_t n, int act, double param);
/* clip modes of the backpropagated signal (gradbench.spec.CLIP_*) */
#define GB_CLIP_NONE 0
#define GB_CLIP_VALUE 1
#define GB_CLIP_NORM 2

/* Fortran BLAS gemm (column major), e.g. from scipy.linalg.cython_blas; NULL: own kernels. */
typedef void (*gb_dgemm_fn)(char *transa, char *transb, int *m, int *n, int *k, double *alpha,
                            double *a, int *lda, double *b, int *ldb, double *beta, double *c,
                            int *ldc);
typedef void (*gb_sgemm_fn)(char *transa, char *transb, int *m, int *n, int *k, float *alpha,
                            float *a, int *lda, float *b, int *ldb, float *beta, float *c,
                            int *ldc);

/* How a driver may run: the BLAS it may call, from which width on, and how many threads its
 * own kernels use (results do not depend on the thread count). Read only. */
typedef struct gb_opts {
    gb_dgemm_fn dgemm;
    gb_sgemm_fn sgemm;
    int64_t blas_min_width;   /* layers with N >= this use BLAS for the three products */
    int64_t nthreads;         /* threads of the own kernels (1: serial) */
    int64_t par_min_work;     /* B*N*N below which a layer runs on one thread */
} gb_opts;

/* The whole stack in one call: the contract of gradbench/reference.py stack_forward and
 * stack_backward (same arguments, then the dimensions and the options).
 * icfg (6,) int64, fcfg (6,) double, W (L,N,N), b/gamma/beta (L,N), slope (L,), H (L+1,B,N),
 * Z (L,B,N), bn_mean/bn_rstd (L,N), fexp (L+1,), act_mean/act_std/saturation/dead (L,) double,
 * info (2,) int64; G (B,N), dW (L,N,N), db/dgamma/dbeta (L,N), dslope (L,), sig_m (L+1,)
 * double, sig_e (L+1,), gnorm_m (L,) double. */
int gb_stack_forward_f64(const int64_t *icfg, const double *fcfg, const double *W, const double *b,
                         const double *gamma, const double *beta, const double *slope, double *H,
                         double *Z, double *bn_mean, double *bn_rstd, int64_t *fexp,
                         double *act_mean, double *act_std, double *saturation, double *dead,
                         int64_t *info, int64_t L, int64_t B, int64_t N, const gb_opts *opts);
int gb_stack_forward_f32(const int64_t *icfg, const double *fcfg, const float *W, const float *b,
                         const float *gamma, const float *beta, const float *slope, float *H,
                         float *Z, float *bn_mean, float *bn_rstd, int64_t *fexp,
                         double *act_mean, double *act_std, double *saturation, double *dead,
                         int64_t *info, int64_t L, int64_t B, int64_t N, const gb_opts *opts);
int gb_stack_backward_f64(const int64_t *icfg, const double *fcfg, const double *W,
                          const double *gamma, const double *beta, const double *slope,
                          const double *H, const double *Z, const double *bn_rstd,
                          const int64_t *fexp, double *G, double *dW, double *db, double *dgamma,
                          double *dbeta, double *dslope, double *sig_m, int64_t *sig_e,
                          double *gnorm_m, int64_t *info, int64_t L, int64_t B, int64_t N,
                          const gb_opts *opts);
int gb_stack_backward_f32(const int64_t *icfg, const double *fcfg, const float *W,
                          const float *gamma, const float *beta, const float *slope,
                          const float *H, const float *Z, const float *bn_rstd,
                          const int64_t *fexp, float *G, float *dW, float *db, float *dgamma,
                          float *dbeta, float *dslope, double *sig_m, int64_t *sig_e,
                          double *gnorm_m, int64_t *info, int64_t L, int64_t B, int64_t N,
                          const gb_opts *opts);
/* 1 if the library was compiled with OpenMP, else 0 */
int gb_have_openmp(void);
/* cffi-end */

#endif
