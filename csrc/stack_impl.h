/* The layer kernels and the two stack drivers, written once over the real type T.
 *
 * Included by stack_f64.c (T = double) and stack_f32.c (T = float), which define
 *   T, SFX (f64/f32), TFMA, TLDEXP, TFABS, GEMM_FN (the BLAS pointer type), GEMM_FIELD
 *   (its gb_opts field) and T_MAX_EXP (the largest e with 2^e finite in T).
 *
 * Dimension letters: L depth, B batch, N width. Every function follows the reference
 * (gradbench/reference.py): same names, arguments in the order outputs, saved values, inputs,
 * parameters, dimensions; the formulas are evaluated in the same order so that, given the same
 * inputs, the elementwise results are the same numbers. Matrix products use FMA and their own
 * summation order (as BLAS does); reductions use a fixed order whatever the thread count.
 *
 * Threads: the own matrix products split their output into tiles, the elementwise passes split
 * rows; every output entry is computed by one thread in a fixed order and reductions go through
 * per-row partial sums combined in row order, so results do not depend on the thread count.
 */
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "gb_internal.h"

#define GB_CAT2(a, b) a##_##b
#define GB_CAT(a, b) GB_CAT2(a, b)
#define F(name) GB_CAT(name, SFX)

#ifdef __FMA__ /* hardware FMA: fma() compiles to one (vector) instruction */
#define MADD(a, b, c) TFMA(a, b, c)
#else
#define MADD(a, b, c) ((a) * (b) + (c))
#endif

#define GB_MIN(a, b) ((a) < (b) ? (a) : (b))
#define GB_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Per-call state: chosen once per call, read-only inside the layer loop. */
typedef struct {
    GEMM_FN gemm;   /* BLAS gemm for this width, or NULL: own kernels */
    int nth;        /* threads of the own kernels for this layer size */
    T *wt;          /* (N,N) workspace: W^T for the own forward product */
    double *rowacc; /* (max(B,N),) per-row partial sums */
    unsigned char *flag; /* (N,) */
} F(gb_ctx);

/* ------------------------------------------------------------------ matrix products */
/* Register tile: C (R,NC) = A (R,K) Bm (K,NC) [+ bias (NC,)]; A(r,k) = A[r*sam + k*sak].
 * Each C entry is one FMA chain over k in order. */
#define GB_TILE(R, NC)                                                                          \
    static inline void F(gb_tile_##R##x##NC)(T *C, int64_t ldc, const T *A, int64_t sam,       \
                                             int64_t sak, const T *Bm, int64_t ldb, int64_t K, \
                                             const T *bias) {                                  \
        T acc[R][NC];                                                                          \
        for (int r = 0; r < R; r++)                                                            \
            for (int c = 0; c < NC; c++) acc[r][c] = 0;                                        \
        for (int64_t k = 0; k < K; k++) {                                                      \
            const T *bk = Bm + k * ldb;                                                        \
            for (int r = 0; r < R; r++) {                                                      \
                const T a = A[r * sam + k * sak];                                              \
                for (int c = 0; c < NC; c++) acc[r][c] = MADD(a, bk[c], acc[r][c]);            \
            }                                                                                  \
        }                                                                                      \
        if (bias) {                                                                            \
            for (int r = 0; r < R; r++)                                                        \
                for (int c = 0; c < NC; c++) C[r * ldc + c] = acc[r][c] + bias[c];             \
        } else {                                                                               \
            for (int r = 0; r < R; r++)                                                        \
                for (int c = 0; c < NC; c++) C[r * ldc + c] = acc[r][c];                       \
        }                                                                                      \
    }

GB_TILE(4, 16)
GB_TILE(4, 8)
GB_TILE(4, 1)
GB_TILE(1, 16)
GB_TILE(1, 8)
GB_TILE(1, 1)

#if defined(__GNUC__) && !defined(GB_PLAIN_C)
/* Vector tiles through the GCC/Clang vector extension: an R x NV*VL block of C lives in
 * R*NV vector registers over the whole k loop (plain C11 tiles above are the fallback and
 * the remainder). Contraction to FMA is switched on for these functions only. */
#define GB_HAVE_VTILES 1
typedef T F(gb_v64) __attribute__((vector_size(64)));
typedef T F(gb_v32) __attribute__((vector_size(32)));
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
#define GB_VTILE(R, NV, V)                                                                      \
    static void F(gb_vtile_##R##x##NV##_##V)(T *C, int64_t ldc, const T *A, int64_t sam,       \
                                             int64_t sak, const T *Bm, int64_t ldb, int64_t K, \
                                             const T *bias) {                                  \
        typedef F(V) vt;                                                                       \
        enum { VL = sizeof(vt) / sizeof(T) };                                                  \
        vt acc[R][NV];                                                                         \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                    \
            _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++) acc[r][v] = (vt){0};          \
        for (int64_t k = 0; k < K; k++) {                                                      \
            vt bv[NV];                                                                         \
            _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++)                               \
                memcpy(&bv[v], Bm + k * ldb + v * VL, sizeof(vt));                             \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; r++) {                              \
                const vt a = (vt){0} + A[r * sam + k * sak];                                   \
                _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++) acc[r][v] += a * bv[v];   \
            }                                                                                  \
        }                                                                                      \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                    \
            _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++) {                             \
                vt out = acc[r][v];                                                            \
                if (bias) {                                                                    \
                    vt bb;                                                                     \
                    memcpy(&bb, bias + v * VL, sizeof(vt));                                    \
                    out = out + bb;                                                            \
                }                                                                              \
                memcpy(C + r * ldc + v * VL, &out, sizeof(vt));                                \
            }                                                                                  \
    }
GB_VTILE(4, 4, gb_v64)
GB_VTILE(4, 2, gb_v64)
GB_VTILE(4, 1, gb_v64)
GB_VTILE(4, 1, gb_v32)
GB_VTILE(1, 4, gb_v64)
GB_VTILE(1, 2, gb_v64)
GB_VTILE(1, 1, gb_v64)
GB_VTILE(1, 1, gb_v32)
#pragma GCC pop_options
#endif

/* One block of at most 4 rows and nw columns, cut into the register tiles. */
static void F(gb_gemm_block)(T *C, const T *A, int64_t sam, int64_t sak, const T *Bm,
                             const T *bias, int64_t mr, int64_t nw, int64_t K, int64_t ld) {
#define GB_CALL(NAME, W)                                                                       \
    for (; c + (W) <= nw; c += (W))                                                            \
        NAME(C + c, ld, A, sam, sak, Bm + c, ld, K, bias ? bias + c : NULL);
#ifdef GB_HAVE_VTILES
#define GB_ROWS(R)                                                                             \
    {                                                                                          \
        const int64_t V64 = 64 / sizeof(T), V32 = 32 / sizeof(T);                              \
        int64_t c = 0;                                                                         \
        GB_CALL(F(gb_vtile_##R##x4_gb_v64), 4 * V64)                                           \
        GB_CALL(F(gb_vtile_##R##x2_gb_v64), 2 * V64)                                           \
        GB_CALL(F(gb_vtile_##R##x1_gb_v64), V64)                                               \
        GB_CALL(F(gb_vtile_##R##x1_gb_v32), V32)                                               \
        GB_CALL(F(gb_tile_##R##x1), 1)                                                         \
    }
#else
#define GB_ROWS(R)                                                                             \
    {                                                                                          \
        int64_t c = 0;                                                                         \
        GB_CALL(F(gb_tile_##R##x16), 16)                                                       \
        GB_CALL(F(gb_tile_##R##x8), 8)                                                         \
        GB_CALL(F(gb_tile_##R##x1), 1)                                                         \
    }
#endif
    if (mr == 4) {
        GB_ROWS(4)
    } else {
        for (int64_t r = 0; r < mr; r++, C += ld, A += sam) GB_ROWS(1)
    }
#undef GB_ROWS
#undef GB_CALL
}

/* C (M,N) = A (M,K) Bm (K,N) [+ bias (N,)] with A(m,k) = A[m*sam + k*sak]; ldb = ldc = N.
 * Cut into tiles of 4 rows x PW columns; one thread computes a whole tile. The parallel
 * region is only entered with nth > 1 (entering it costs even for one thread). */
static void F(gb_gemm_own)(T *C, const T *A, int64_t sam, int64_t sak, const T *Bm,
                           const T *bias, int64_t M, int64_t N, int64_t K, int nth) {
    const int64_t PW = 128; /* column panel */
    const int64_t mb = (M + 3) / 4, nb = (N + PW - 1) / PW, ntile = mb * nb;
#define GB_GEMM_TILE(t)                                                                        \
    {                                                                                          \
        const int64_t m0 = ((t) / nb) * 4, n0 = ((t) % nb) * PW;                               \
        F(gb_gemm_block)(C + m0 * N + n0, A + m0 * sam, sam, sak, Bm + n0,                     \
                         bias ? bias + n0 : NULL, GB_MIN(4, M - m0), GB_MIN(PW, N - n0), K, N); \
    }
#ifdef _OPENMP
    if (nth > 1 && ntile > 1) {
#pragma omp parallel for num_threads(nth) schedule(static)
        for (int64_t t = 0; t < ntile; t++) GB_GEMM_TILE(t)
        return;
    }
#endif
    (void)nth;
    for (int64_t t = 0; t < ntile; t++) GB_GEMM_TILE(t)
#undef GB_GEMM_TILE
}

/* ------------------------------------------------------------------ layers */
/* z = h W^T + b.    z (B,N), h (B,N), W (N,N), b (N,) */
static void F(gb_dense_forward_ctx)(const F(gb_ctx) *cx, T *z, const T *h, const T *W, const T *b,
                                int64_t B, int64_t N) {
    if (cx->gemm) { /* column major: z^T (N,B) = W (N,N) h^T (N,B) + b */
        for (int64_t r = 0; r < B; r++) memcpy(z + r * N, b, (size_t)N * sizeof(T));
        char ta = 'T', tb = 'N';
        int m = (int)N, n = (int)B, k = (int)N, ld = (int)N;
        T one = 1;
        cx->gemm(&ta, &tb, &m, &n, &k, &one, (T *)W, &ld, (T *)h, &ld, &one, z, &ld);
        return;
    }
    T *wt = cx->wt;
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < N; j++) wt[j * N + i] = W[i * N + j];
    F(gb_gemm_own)(z, h, N, 1, wt, b, B, N, N, cx->nth);
}

/* dW = dz^T h, db = sum_B dz, dh = dz W.
 * dh (B,N), dW (N,N), db (N,), dz (B,N), h (B,N), W (N,N) */
static void F(gb_dense_backward_ctx)(const F(gb_ctx) *cx, T *dh, T *dW, T *db, const T *dz,
                                 const T *h, const T *W, int64_t B, int64_t N) {
    for (int64_t j = 0; j < N; j++) db[j] = 0;
    for (int64_t r = 0; r < B; r++)
        for (int64_t j = 0; j < N; j++) db[j] += dz[r * N + j];
    if (cx->gemm) { /* column major: dW^T = h^T dz, dh^T = W^T dz^T */
        char tn = 'N', tt = 'T';
        int n = (int)N, bb = (int)B, ld = (int)N;
        T one = 1, zero = 0;
        cx->gemm(&tn, &tt, &n, &n, &bb, &one, (T *)h, &ld, (T *)dz, &ld, &zero, dW, &ld);
        cx->gemm(&tn, &tn, &n, &bb, &n, &one, (T *)W, &ld, (T *)dz, &ld, &zero, dh, &ld);
        return;
    }
    F(gb_gemm_own)(dW, dz, 1, N, h, NULL, N, N, B, cx->nth);
    F(gb_gemm_own)(dh, dz, N, 1, W, NULL, B, N, N, cx->nth);
}

/* y = gamma * (z - mean_B) * rstd + beta, rstd = 1/sqrt(var_B + eps) (biased variance).
 * y, xhat, z (B,N); mean, rstd, gamma, beta (N,). y may be z. */
static void F(gb_batchnorm_forward_impl)(T *y, T *xhat, T *mean, T *rstd, const T *z, const T *gamma,
                                    const T *beta, double eps, int64_t B, int64_t N) {
    T *var = rstd; /* the variance lives in rstd until rstd is computed */
    for (int64_t j = 0; j < N; j++) mean[j] = var[j] = 0;
    for (int64_t r = 0; r < B; r++)
        for (int64_t j = 0; j < N; j++) mean[j] += z[r * N + j];
    for (int64_t j = 0; j < N; j++) mean[j] /= (T)B;
    for (int64_t r = 0; r < B; r++)
        for (int64_t j = 0; j < N; j++) {
            T d = z[r * N + j] - mean[j];
            var[j] += d * d;
        }
    for (int64_t j = 0; j < N; j++) {
        T v = var[j] / (T)B;
        rstd[j] = (T)(1.0 / sqrt((double)v + eps));
    }
    for (int64_t r = 0; r < B; r++)
        for (int64_t j = 0; j < N; j++) {
            T x = (z[r * N + j] - mean[j]) * rstd[j];
            xhat[r * N + j] = x;
            y[r * N + j] = gamma[j] * x + beta[j];
        }
}

/* Train-mode batch norm backward, linear in dy:
 * dz = gamma * rstd * (dy - mean_B(dy) - xhat * mean_B(dy * xhat)).
 * dz, dy, xhat (B,N); dgamma, dbeta, rstd, gamma (N,). dz may be dy. */
static void F(gb_batchnorm_backward_impl)(T *dz, T *dgamma, T *dbeta, const T *dy, const T *xhat,
                                     const T *rstd, const T *gamma, int64_t B, int64_t N) {
    for (int64_t j = 0; j < N; j++) dgamma[j] = dbeta[j] = 0;
    for (int64_t r = 0; r < B; r++)
        for (int64_t j = 0; j < N; j++) {
            dbeta[j] += dy[r * N + j];
            dgamma[j] += dy[r * N + j] * xhat[r * N + j];
        }
    for (int64_t r = 0; r < B; r++)
        for (int64_t j = 0; j < N; j++) {
            T gr = gamma[j] * rstd[j];
            dz[r * N + j] =
                gr * (dy[r * N + j] - dbeta[j] / (T)B - xhat[r * N + j] * (dgamma[j] / (T)B));
        }
}

/* One chunk of the activation forward: a = phi(z) on [i0, i1) (phi_scaled with rescaling);
 * returns its saturation count (entries with phi'(z) < thr). */
static int64_t F(gb_activation_chunk)(T *a, const T *z, int64_t i0, int64_t i1, const gb_scaled *s,
                                      double thr) {
    int64_t cnt = 0;
    if (s->act == GB_TANH && !s->on) { /* the array tanh; phi' from z (sech^2, no cancellation) */
        F(gb_tanh)(a + i0, z + i0, i1 - i0);
        for (int64_t i = i0; i < i1; i++) cnt += (double)F(gb_dphi)(z[i], GB_TANH, 0.0) < thr;
        return cnt;
    }
    for (int64_t i = i0; i < i1; i++) {
        a[i] = F(gb_phi_scaled)(z[i], s);
        cnt += (double)F(gb_dphi_scaled)(z[i], s) < thr;
    }
    return cnt;
}

/* a = phi(z) (phi_scaled with rescaling); returns the number of entries with phi'(z) < thr
 * (the saturation count).    a, z (n,) */
static int64_t F(gb_activation_forward_sat)(T *a, const T *z, int64_t n, const gb_scaled *s,
                                            double thr, int nth) {
#ifdef _OPENMP
    const int64_t CH = 4096, nch = (n + CH - 1) / CH;
    int64_t nsat = 0;
    if (nth > 1 && nch > 1) {
#pragma omp parallel for num_threads(nth) schedule(static) reduction(+ : nsat)
        for (int64_t c = 0; c < nch; c++)
            nsat += F(gb_activation_chunk)(a, z, c * CH, GB_MIN(n, c * CH + CH), s, thr);
        return nsat;
    }
#endif
    (void)nth;
    return F(gb_activation_chunk)(a, z, 0, n, s, thr);
}

/* One row of the activation backward (see below); returns the row's PReLU slope sum. */
static double F(gb_activation_row)(T *d, const T *g, const T *zr, const T *gamma, const T *beta,
                                   int scale, T alpha, const gb_scaled *s, int64_t N) {
    double sum = 0;
    for (int64_t j = 0; j < N; j++) {
        T da = scale ? g[j] * alpha : g[j];
        T zl = gamma ? gamma[j] * zr[j] + beta[j] : zr[j];
        d[j] = da * F(gb_dphi_scaled)(zl, s);
        if (s->act == GB_PRELU) sum += (double)(da * ((zl < 0 || zl != zl) ? zl : (T)0));
    }
    return sum;
}

/* dz = da * phi'(zl), with da = G (times alpha when scale), zl = z or gamma * xhat + beta under
 * batch norm, phi' from zl (dphi_scaled with rescaling). Returns dL/dslope = sum(da * min(zl,
 * 0)) for PReLU (in double, rows in order), else 0.
 * dz, G, z (B,N); gamma, beta (N,) */
static double F(gb_activation_backward_layer)(T *dz, const T *G, const T *z, const T *gamma,
                                              const T *beta, int scale, T alpha, const gb_scaled *s,
                                              int64_t B, int64_t N, double *rowacc, int nth) {
#define GB_ROW(r)                                                                              \
    rowacc[r] = F(gb_activation_row)(dz + (r) * N, G + (r) * N, z + (r) * N, gamma, beta, scale, \
                                     alpha, s, N)
#ifdef _OPENMP
    if (nth > 1 && B > 1) {
#pragma omp parallel for num_threads(nth) schedule(static)
        for (int64_t r = 0; r < B; r++) GB_ROW(r);
    } else
#endif
    {
        (void)nth;
        for (int64_t r = 0; r < B; r++) GB_ROW(r);
    }
#undef GB_ROW
    double total = 0;
    if (s->act == GB_PRELU)
        for (int64_t r = 0; r < B; r++) total += rowacc[r];
    return total;
}

/* ------------------------------------------------------------------ the exact chain */
/* max |g| ignoring NaN (propagate_nan = 0) or NaN if any entry is NaN (propagate_nan = 1). */
static T F(gb_absmax)(const T *g, int64_t n, int propagate_nan) {
    T lane[16] = {0};
    int nan = 0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int c = 0; c < 16; c++) {
            T v = TFABS(g[i + c]);
            nan |= v != v;
            lane[c] = v > lane[c] ? v : lane[c];
        }
    T m = 0;
    for (; i < n; i++) {
        T v = TFABS(g[i]);
        nan |= v != v;
        m = v > m ? v : m;
    }
    for (int c = 0; c < 16; c++) m = lane[c] > m ? lane[c] : m;
    return (propagate_nan && nan) ? (T)NAN : m;
}

/* Scale g (n,) in place by 2^-e so that max|g| lies in [0.5, 1); return e (0 when g is all
 * zero or its largest magnitude is not finite). Exact: 2^-e is applied in two steps when it
 * is not a finite T (max|g| subnormal). */
static int64_t F(gb_normalise_impl)(T *g, int64_t n) {
    T m = F(gb_absmax)(g, n, 0);
    if (!(m > 0) || !isfinite(m)) return 0;
    int e;
    frexp((double)m, &e); /* m is finite and non-zero here: frexp is well defined */
    if (-e <= T_MAX_EXP) {
        const T s = (T)ldexp(1.0, -e);
        for (int64_t i = 0; i < n; i++) g[i] *= s;
    } else {
        const int e1 = e / 2;
        const T s1 = (T)ldexp(1.0, -e1), s2 = (T)ldexp(1.0, e1 - e);
        for (int64_t i = 0; i < n; i++) g[i] = (g[i] * s1) * s2;
    }
    return e;
}

/* a * 2^ea + scale * s * 2^es written into a at the larger exponent; returns it.
 * a, s (n,) */
static int64_t F(gb_add_aligned_impl)(T *a, int64_t ea, const T *s, int64_t es, double scale,
                                 int64_t n) {
    const int64_t em = GB_MAX(ea, es);
    const int da = gb_clamp_exp(ea - em), ds = gb_clamp_exp(es - em);
    const T sc = (T)scale;
    if (da == 0 && ds == 0) {
        for (int64_t i = 0; i < n; i++) a[i] = s[i] + sc * a[i];
    } else {
        for (int64_t i = 0; i < n; i++) a[i] = TLDEXP(s[i], ds) + sc * TLDEXP(a[i], da);
    }
    return em;
}

/* sum (x 2^k)^2 in double, by rows of N in order (8 lanes per row, then the rows in order);
 * 2^k = s1 s2 (both 1 but in the scaled norm below), applied to each entry exactly.    x (M,N) */
static double F(gb_sumsq)(const T *x, int64_t M, int64_t N, double s1, double s2, double *rowacc) {
    for (int64_t r = 0; r < M; r++) {
        double lane[8] = {0};
        const T *xr = x + r * N;
        int64_t j = 0;
        for (; j + 8 <= N; j += 8)
            for (int c = 0; c < 8; c++) {
                const double v = ((double)xr[j + c] * s1) * s2;
                lane[c] += v * v;
            }
        double s = 0;
        for (; j < N; j++) {
            const double v = ((double)xr[j] * s1) * s2;
            s += v * v;
        }
        for (int c = 0; c < 8; c++) s += lane[c];
        rowacc[r] = s;
    }
    double total = 0;
    for (int64_t r = 0; r < M; r++) total += rowacc[r];
    return total;
}

/* sqrt(sum x^2) in double.    x (M,N) */
static double F(gb_norm)(const T *x, int64_t M, int64_t N, double *rowacc) {
    return sqrt(F(gb_sumsq)(x, M, N, 1.0, 1.0, rowacc));
}

/* ||x||_F = m 2^*e with no square lost to under- or overflow (reference.norm_scaled): the plain
 * sum of squares when it lies in [2^-960, 2^960] (then *e = 0), else the entries scaled by
 * 2^-e, e the exponent of max|x|, before squaring (in two exact steps when 2^-e is not a
 * normal double). NaN or inf entries give a non-finite m.    x (M,N) */
static double F(gb_norm_scaled)(const T *x, int64_t M, int64_t N, double *rowacc, int64_t *e_out) {
    const double s = F(gb_sumsq)(x, M, N, 1.0, 1.0, rowacc);
    *e_out = 0;
    if (s >= 0x1p-960 && s <= 0x1p960) return sqrt(s);
    const double a = (double)F(gb_absmax)(x, M * N, 1);
    if (!(a > 0) || !isfinite(a)) return sqrt(s); /* all zero, NaN or inf */
    int e;
    frexp(a, &e);
    const int e1 = -e / 2, e2 = -e - e1;
    *e_out = e;
    return sqrt(F(gb_sumsq)(x, M, N, ldexp(1.0, e1), ldexp(1.0, e2), rowacc));
}

/* Clip the true value g * 2^e (value: to [-c, c]; norm: norm <= c) in place; g normalised.
 * Returns the new exponent.    g (B,N) */
static int64_t F(gb_clip_signal_impl)(T *g, int64_t e, int mode, double c, int64_t B, int64_t N,
                                 double *rowacc) {
    const int64_t n = B * N;
    if (mode == GB_CLIP_VALUE) {
        int ec;
        const double t = frexp(c, &ec); /* c = t * 2^ec, t in [0.5, 1) */
        const double m = (double)F(gb_absmax)(g, n, 1);
        const int sh = gb_clamp_exp(e - ec);
        if (ldexp(m, sh) > t) {
            for (int64_t i = 0; i < n; i++) {
                double v = (double)TLDEXP(g[i], sh);
                g[i] = (T)(v > t ? t : (v < -t ? -t : v));
            }
            return ec;
        }
    } else if (mode == GB_CLIP_NORM) {
        const double nrm = F(gb_norm)(g, B, N, rowacc);
        if (ldexp(nrm, gb_clamp_exp(e)) > c) {
            const T s = (T)(c / nrm);
            for (int64_t i = 0; i < n; i++) g[i] *= s;
            return 0;
        }
    }
    return e;
}

static int F(gb_all_finite)(const T *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* ------------------------------------------------------------------ drivers */
static int F(gb_check_cfg)(const int64_t *icfg, int64_t L, int64_t B, int64_t N) {
    if (icfg[GB_I_ACT] < GB_IDENTITY || icfg[GB_I_ACT] > GB_GELU) return GB_EBADACT;
    const int64_t k = icfg[GB_I_RESIDUAL];
    if (L < 1 || B < 1 || N < 1 || k < 0 || (k > 0 && L % k != 0)) return GB_EBADARG;
    if (icfg[GB_I_CLIP] < GB_CLIP_NONE || icfg[GB_I_CLIP] > GB_CLIP_NORM) return GB_EBADARG;
    if (N > INT32_MAX / 2 || B > INT32_MAX / 2) return GB_EBADARG;
    /* sigmoid has no scaled form (phi(0) = 1/2 keeps the signal O(1); linear_coefficients) */
    if (icfg[GB_I_RESCALE_FWD] && icfg[GB_I_ACT] == GB_SIGMOID) return GB_EBADARG;
    return GB_OK;
}

static void *F(gb_alloc)(size_t bytes) {
    size_t n = (bytes + 63) / 64 * 64;
    return aligned_alloc(64, n ? n : 64);
}

/* Choose BLAS or own kernels and the thread count; allocate the workspace. */
static int F(gb_ctx_init)(F(gb_ctx) *cx, const gb_opts *opts, int64_t B, int64_t N, int need_wt) {
    memset(cx, 0, sizeof *cx);
    cx->gemm = (opts && opts->GEMM_FIELD && N >= opts->blas_min_width) ? opts->GEMM_FIELD : NULL;
    cx->nth = 1;
    if (opts && opts->nthreads > 1 && B * N * N >= opts->par_min_work)
        cx->nth = (int)GB_MIN(opts->nthreads, 64);
    cx->rowacc = F(gb_alloc)(sizeof(double) * (size_t)GB_MAX(B, N));
    cx->flag = F(gb_alloc)((size_t)N);
    if (need_wt && !cx->gemm) cx->wt = F(gb_alloc)(sizeof(T) * (size_t)(N * N));
    if (!cx->rowacc || !cx->flag || (need_wt && !cx->gemm && !cx->wt)) return GB_ENOMEM;
    return GB_OK;
}

static void F(gb_ctx_free)(F(gb_ctx) *cx) {
    free(cx->wt);
    free(cx->rowacc);
    free(cx->flag);
}

/* The forward driver: the contract of reference.stack_forward (arrays: abi.FORWARD). */
int F(gb_stack_forward)(const gb_stack_arrays *a, const gb_opts *opts) {
    const int64_t L = a->L, B = a->B, N = a->N;
    const int64_t *icfg = a->icfg;
    const double *fcfg = a->fcfg;
    const T *W = a->W, *b = a->b, *gamma = a->gamma, *beta = a->beta, *slope = a->slope;
    T *H = a->H, *Z = a->Z, *bn_mean = a->bn_mean, *bn_rstd = a->bn_rstd;
    int64_t *fexp = a->fexp, *info = a->info;
    double *act_mean = a->act_mean, *act_std = a->act_std, *saturation = a->saturation;
    double *dead = a->dead;
    int rc = F(gb_check_cfg)(icfg, L, B, N);
    if (rc) return rc;
    const int act = (int)icfg[GB_I_ACT], bn = icfg[GB_I_BN] != 0, rescale = icfg[GB_I_RESCALE_FWD] != 0;
    const int64_t k = icfg[GB_I_RESIDUAL], BN = B * N, NN = N * N;
    const double param = fcfg[GB_F_ACT_PARAM], alpha = fcfg[GB_F_RES_SCALE], eps = fcfg[GB_F_BN_EPS];
    const int f32 = sizeof(T) == sizeof(float);
    const double thr = fcfg[GB_F_SAT];
    F(gb_ctx) cx;
    rc = F(gb_ctx_init)(&cx, opts, B, N, 1);
    T *zb = bn ? F(gb_alloc)(sizeof(T) * (size_t)BN) : NULL;
    if (rc || (bn && !zb)) {
        F(gb_ctx_free)(&cx);
        free(zb);
        return GB_ENOMEM;
    }
    info[GB_INFO_FORWARD] = -1;
    for (int64_t l = 0; l < L; l++) {
        const double p = act == GB_PRELU ? (double)slope[l] : param;
        /* with rescaling z is the mantissa of z 2^fexp[l] (zero bias, no batch norm) */
        const gb_scaled sc = gb_scaled_init(act, p, rescale, fexp[l], f32);
        T *h = H + l * BN, *hn = H + (l + 1) * BN, *Zl = Z + l * BN;
        T *z = bn ? zb : Zl;
        F(gb_dense_forward_ctx)(&cx, z, h, W + l * NN, b + l * N, B, N);
        if (bn)
            F(gb_batchnorm_forward_impl)(z, Zl, bn_mean + l * N, bn_rstd + l * N, z, gamma + l * N,
                                    beta + l * N, eps, B, N);
        const int64_t nsat = F(gb_activation_forward_sat)(hn, z, BN, &sc, thr, cx.nth);
        fexp[l + 1] = fexp[l];
        if (k && (l + 1) % k == 0)
            fexp[l + 1] = F(gb_add_aligned_impl)(hn, fexp[l], H + (l + 1 - k) * BN, fexp[l + 1 - k],
                                            alpha, BN);
        if (rescale) fexp[l + 1] += F(gb_normalise_impl)(hn, BN);
        /* statistics of h_{l+1} (two-pass, double, rows in order) and of z_l */
        double s = 0;
        for (int64_t r = 0; r < B; r++) {
            double rs = 0;
            for (int64_t j = 0; j < N; j++) rs += (double)hn[r * N + j];
            s += rs;
        }
        const double mean = s / (double)BN;
        double v = 0;
        for (int64_t r = 0; r < B; r++) {
            double rv = 0;
            for (int64_t j = 0; j < N; j++) {
                double d = (double)hn[r * N + j] - mean;
                rv += d * d;
            }
            v += rv;
        }
        act_mean[l] = mean;
        act_std[l] = sqrt(v / (double)BN);
        saturation[l] = (double)nsat / (double)BN;
        unsigned char *fl = cx.flag;
        for (int64_t j = 0; j < N; j++) fl[j] = 1;
        for (int64_t r = 0; r < B; r++)
            for (int64_t j = 0; j < N; j++) fl[j] &= z[r * N + j] <= 0;
        int64_t nd = 0;
        for (int64_t j = 0; j < N; j++) nd += fl[j];
        dead[l] = (double)nd / (double)N;
        /* a finite sum means every entry is finite; otherwise look */
        if (info[GB_INFO_FORWARD] < 0 && !isfinite(s) && !F(gb_all_finite)(hn, BN))
            info[GB_INFO_FORWARD] = l;
    }
    F(gb_ctx_free)(&cx);
    free(zb);
    return GB_OK;
}

/* Normalise, clip and record dL/dh_l, now complete in G (the reference's finish()). The top
 * signal is only normalised (clip_mode 0): the caller has clipped it already. */
static void F(gb_finish)(T *G, int64_t l, int clip_mode, double c, double *sig_m,
                         int64_t *sig_e, int64_t *info, int64_t B, int64_t N, double *rowacc) {
    int64_t e = sig_e[l] + F(gb_normalise_impl)(G, B * N);
    if (clip_mode) {
        e = F(gb_clip_signal_impl)(G, e, clip_mode, c, B, N, rowacc);
        e += F(gb_normalise_impl)(G, B * N);
    }
    sig_e[l] = e;
    sig_m[l] = F(gb_norm)(G, B, N, rowacc);
    if (info[GB_INFO_BACKWARD] < 0 && !isfinite(sig_m[l]) && !F(gb_all_finite)(G, B * N))
        info[GB_INFO_BACKWARD] = l;
}

/* The backward driver: the contract of reference.stack_backward (arrays: abi.BACKWARD). */
int F(gb_stack_backward)(const gb_stack_arrays *a, const gb_opts *opts) {
    const int64_t L = a->L, B = a->B, N = a->N;
    const int64_t *icfg = a->icfg;
    const double *fcfg = a->fcfg;
    const T *W = a->W, *gamma = a->gamma, *beta = a->beta, *slope = a->slope;
    const T *H = a->H, *Z = a->Z, *bn_rstd = a->bn_rstd;
    T *G = a->G, *dW = a->dW, *db = a->db, *dgamma = a->dgamma, *dbeta = a->dbeta;
    T *dslope = a->dslope;
    double *sig_m = a->sig_m, *gnorm_m = a->gnorm_m;
    int64_t *sig_e = a->sig_e, *gnorm_e = a->gnorm_e, *info = a->info;
    const int64_t *fexp = a->fexp;
    int rc = F(gb_check_cfg)(icfg, L, B, N);
    if (rc) return rc;
    const int act = (int)icfg[GB_I_ACT], bn = icfg[GB_I_BN] != 0, rescale = icfg[GB_I_RESCALE_FWD] != 0;
    const int clip_mode = (int)icfg[GB_I_CLIP];
    const int64_t k = icfg[GB_I_RESIDUAL], BN = B * N, NN = N * N;
    const double param = fcfg[GB_F_ACT_PARAM], alpha = fcfg[GB_F_RES_SCALE], c = fcfg[GB_F_CLIP];
    const int f32 = sizeof(T) == sizeof(float);
    F(gb_ctx) cx;
    rc = F(gb_ctx_init)(&cx, opts, B, N, 0);
    T *dz = F(gb_alloc)(sizeof(T) * (size_t)BN);
    T *skip = k ? F(gb_alloc)(sizeof(T) * (size_t)BN) : NULL;
    if (rc || !dz || (k && !skip)) {
        F(gb_ctx_free)(&cx);
        free(dz);
        free(skip);
        return GB_ENOMEM;
    }
    info[GB_INFO_BACKWARD] = -1;
    F(gb_finish)(G, L, GB_CLIP_NONE, c, sig_m, sig_e, info, B, N, cx.rowacc);
    int64_t skip_e = 0;
    for (int64_t l = L - 1; l >= 0; l--) {
        const int64_t e = sig_e[l + 1];
        const double p = act == GB_PRELU ? (double)slope[l] : param;
        const gb_scaled sc = gb_scaled_init(act, p, rescale, fexp[l], f32);
        const int end_group = k && (l + 1) % k == 0;
        if (end_group) { /* dL/dh_{l+1} also flows down the skip */
            memcpy(skip, G, sizeof(T) * (size_t)BN);
            skip_e = e;
        }
        const T *Zl = Z + l * BN;
        double ds = F(gb_activation_backward_layer)(dz, G, Zl, bn ? gamma + l * N : NULL,
                                                    bn ? beta + l * N : NULL, end_group, (T)alpha,
                                                    &sc, B, N, cx.rowacc, cx.nth);
        dslope[l] = (T)ds;
        if (bn) {
            F(gb_batchnorm_backward_impl)(dz, dgamma + l * N, dbeta + l * N, dz, Zl, bn_rstd + l * N,
                                     gamma + l * N, B, N);
        } else {
            for (int64_t j = 0; j < N; j++) dgamma[l * N + j] = dbeta[l * N + j] = 0;
        }
        F(gb_dense_backward_ctx)(&cx, G, dW + l * NN, db + l * N, dz, H + l * BN, W + l * NN, B, N);
        int64_t ge;
        gnorm_m[l] = F(gb_norm_scaled)(dW + l * NN, N, N, cx.rowacc, &ge);
        gnorm_e[l] = e + fexp[l] + ge;
        sig_e[l] = e;
        if (k && l % k == 0) sig_e[l] = F(gb_add_aligned_impl)(G, e, skip, skip_e, 1.0, BN);
        F(gb_finish)(G, l, clip_mode, c, sig_m, sig_e, info, B, N, cx.rowacc);
    }
    F(gb_ctx_free)(&cx);
    free(dz);
    free(skip);
    return GB_OK;
}

/* ------------------------------------------------------------------ exported layer pairs */
/* The static layer functions above, callable one at a time (tests compare them layer by layer
 * with the reference). One thread, no BLAS: the drivers' own kernels. */
int F(gb_dense_forward)(T *z, const T *h, const T *W, const T *b, int64_t B, int64_t N) {
    F(gb_ctx) cx;
    if (B < 1 || N < 1) return GB_EBADARG;
    int rc = F(gb_ctx_init)(&cx, NULL, B, N, 1);
    if (!rc) F(gb_dense_forward_ctx)(&cx, z, h, W, b, B, N);
    F(gb_ctx_free)(&cx);
    return rc;
}

int F(gb_dense_backward)(T *dh, T *dW, T *db, const T *dz, const T *h, const T *W, int64_t B, int64_t N) {
    F(gb_ctx) cx;
    if (B < 1 || N < 1) return GB_EBADARG;
    int rc = F(gb_ctx_init)(&cx, NULL, B, N, 0);
    if (!rc) F(gb_dense_backward_ctx)(&cx, dh, dW, db, dz, h, W, B, N);
    F(gb_ctx_free)(&cx);
    return rc;
}

int F(gb_batchnorm_forward)(T *y, T *xhat, T *mean, T *rstd, const T *z, const T *gamma, const T *beta,
                            double eps, int64_t B, int64_t N) {
    if (B < 1 || N < 1) return GB_EBADARG;
    F(gb_batchnorm_forward_impl)(y, xhat, mean, rstd, z, gamma, beta, eps, B, N);
    return GB_OK;
}

int F(gb_batchnorm_backward)(T *dz, T *dgamma, T *dbeta, const T *dy, const T *xhat, const T *rstd,
                             const T *gamma, int64_t B, int64_t N) {
    if (B < 1 || N < 1) return GB_EBADARG;
    F(gb_batchnorm_backward_impl)(dz, dgamma, dbeta, dy, xhat, rstd, gamma, B, N);
    return GB_OK;
}

int F(gb_activation_forward)(T *a, const T *z, int64_t n, int act, double param, int rescale, int64_t f) {
    if (act < GB_IDENTITY || act > GB_GELU) return GB_EBADACT;
    if (n < 0 || (rescale && act == GB_SIGMOID)) return GB_EBADARG;
    const gb_scaled s = gb_scaled_init(act, param, rescale, f, sizeof(T) == sizeof(float));
    F(gb_activation_forward_sat)(a, z, n, &s, 0.0, 1);
    return GB_OK;
}

int F(gb_activation_backward)(T *dz, double *dslope, const T *da, const T *z, int64_t B, int64_t N,
                              int act, double param, int rescale, int64_t f) {
    if (act < GB_IDENTITY || act > GB_GELU) return GB_EBADACT;
    if (B < 1 || N < 1 || (rescale && act == GB_SIGMOID)) return GB_EBADARG;
    double *rowacc = F(gb_alloc)(sizeof(double) * (size_t)B);
    if (!rowacc) return GB_ENOMEM;
    const gb_scaled s = gb_scaled_init(act, param, rescale, f, sizeof(T) == sizeof(float));
    *dslope = F(gb_activation_backward_layer)(dz, da, z, NULL, NULL, 0, (T)1, &s, B, N, rowacc, 1);
    free(rowacc);
    return GB_OK;
}

int F(gb_normalise)(T *g, int64_t n, int64_t *e) {
    if (n < 0) return GB_EBADARG;
    *e = F(gb_normalise_impl)(g, n);
    return GB_OK;
}

int F(gb_add_aligned)(T *a, int64_t ea, const T *s, int64_t es, double scale, int64_t n, int64_t *e) {
    if (n < 0) return GB_EBADARG;
    *e = F(gb_add_aligned_impl)(a, ea, s, es, scale, n);
    return GB_OK;
}

int F(gb_clip_signal)(T *g, int64_t e, int mode, double c, int64_t B, int64_t N, int64_t *e_out) {
    if (B < 1 || N < 1 || mode < GB_CLIP_NONE || mode > GB_CLIP_NORM) return GB_EBADARG;
    double *rowacc = F(gb_alloc)(sizeof(double) * (size_t)B);
    if (!rowacc) return GB_ENOMEM;
    *e_out = F(gb_clip_signal_impl)(g, e, mode, c, B, N, rowacc);
    free(rowacc);
    return GB_OK;
}

#undef F
#undef MADD
