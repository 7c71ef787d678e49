/* NumPy's BLAS for the drivers' wide products.
 *
 * NumPy's wheels bundle an OpenBLAS with 64-bit integers (ILP64, symbols scipy_dgemm_64_ and
 * scipy_sgemm_64_); SciPy's bundle another, with 32-bit integers. Each keeps its own pool of
 * worker threads, and an OpenBLAS worker spins for ~0.1 s after every call (measured here: one
 * 512 x 512 product, then 0.11 CPU-seconds of user time while the process slept). A user's own
 * NumPy products leave NumPy's workers spinning; had gradbench's products gone to SciPy's pool,
 * the two pools' threads would share the cores (a float32 width-512 run interleaved with NumPy
 * products: 1.45x slower than alone). So the drivers call NumPy's gemm when it is there,
 * through the two functions below, which have the gb_dgemm_fn / gb_sgemm_fn signature and
 * forward to the ILP64 functions set once by gb_set_blas_ilp64 (gradbench.cbackend, at import,
 * before any driver runs; never changed after). */
#include "gb_internal.h"

typedef void (*gb_dgemm64_fn)(char *, char *, int64_t *, int64_t *, int64_t *, double *, double *,
                              int64_t *, double *, int64_t *, double *, double *, int64_t *);
typedef void (*gb_sgemm64_fn)(char *, char *, int64_t *, int64_t *, int64_t *, float *, float *,
                              int64_t *, float *, int64_t *, float *, float *, int64_t *);

static gb_dgemm64_fn gb_dgemm64;
static gb_sgemm64_fn gb_sgemm64;

void gb_set_blas_ilp64(void *dgemm, void *sgemm) {
    gb_dgemm64 = (gb_dgemm64_fn)dgemm;
    gb_sgemm64 = (gb_sgemm64_fn)sgemm;
}

void gb_dgemm_ilp64(char *transa, char *transb, int *m, int *n, int *k, double *alpha, double *a,
                    int *lda, double *b, int *ldb, double *beta, double *c, int *ldc) {
    int64_t M = *m, N = *n, K = *k, LDA = *lda, LDB = *ldb, LDC = *ldc;
    gb_dgemm64(transa, transb, &M, &N, &K, alpha, a, &LDA, b, &LDB, beta, c, &LDC);
}

void gb_sgemm_ilp64(char *transa, char *transb, int *m, int *n, int *k, float *alpha, float *a,
                    int *lda, float *b, int *ldb, float *beta, float *c, int *ldc) {
    int64_t M = *m, N = *n, K = *k, LDA = *lda, LDB = *ldb, LDC = *ldc;
    gb_sgemm64(transa, transb, &M, &N, &K, alpha, a, &LDA, b, &LDB, beta, c, &LDC);
}
