/* The layer kernels and the two stack drivers, written once over the real type T.
 *
 * Included by stack_f64.c (T = double) and stack_f32.c (T = float), which define
 *   T, DT (f64/f32), GB_ISA (v0/v3/v4, see dispatch.c), TFMA, TLDEXP, TFABS, GEMM_FN (the
 *   BLAS pointer type), GEMM_FIELD (its gb_opts field) and T_MAX_EXP (the largest e with 2^e
 *   finite in T).
 *
 * Dimension letters: L depth, B batch, N width. Every function follows the reference
 * (gradbench/reference.py): same names, arguments in the order outputs, saved values, inputs,
 * parameters, dimensions; the formulas are the reference's (vectorised, with FMA where the
 * instance has it: results agree to rounding, not bit for bit). Matrix products use FMA and
 * their own summation order (as BLAS does); reductions use a fixed order.
 *
 * Threads (team.c, one team per driver call): each thread owns blocks of 4 batch rows (the
 * forward, the activation rows, dh = dz W) and of 4 dW rows (dW = dz^T h, db). The forward
 * carries one exponent per batch row too (frow: row i of h_l at fexp[l] + frow[l, i]; each row's
 * activation, tail rescue, skip add and normalisation its own), and has no barrier but the
 * rescaling's (the layer's exponent fexp[l+1], the largest of the non-zero rows', from per-thread
 * slots, to which frow[l+1] is relative): each thread transposes the W two layers ahead, into its
 * own buffer (narrow layers) or its share of a shared one, whose other shares it waits for
 * (gb_forward_member, GB_OWN_WT_MAX_N). The backward carries one exponent per batch row
 * (gb_backward_member): normalising, the saturated-derivative rescue and the value clip are each
 * row's own, so a thread's rows need nothing of the others'; it has one barrier per layer (the
 * layer's exponents E of dz and of dh, the largest of the non-zero rows', from per-thread slots;
 * all of dz before dW, whose columns each thread brings to E in place for its own dW rows), batch
 * norm its two (the first gives dz's E, which the rows take before their blocks' sums; the second,
 * after those sums), the norm clip one or two. Every entry is computed by one thread with the same
 * code whatever the thread count, statistics are kept per row and combined in row order after the
 * layers, so results are bit-identical for any thread count, and a team may hand over to one
 * thread mid-call.
 */
#include <float.h>
#include <stdlib.h>
#include <string.h>
#include "gb_internal.h"

#define GB_CAT2(a, b) a##_##b
#define GB_CAT(a, b) GB_CAT2(a, b)
#define F(name) GB_CAT(GB_CAT(name, DT), GB_ISA) /* this instance's: gb_stack_forward_f64_v4 */
#define FP(name) GB_CAT(name, DT)                /* the exported layer pairs: gb_dense_forward_f64 */

#ifndef GB_AINLINE /* activations.h defines it with the vector code */
#define GB_AINLINE inline
#endif

#define GB_MIN(a, b) ((a) < (b) ? (a) : (b))
#define GB_MAX(a, b) ((a) > (b) ? (a) : (b))

#include "gemm_impl.h"
#include "rows_impl.h" /* the row helpers, shared with the recurrent cells */

/* Prefetch of the next layer's arrays, spread over the blocks of this layer's work: a deep
 * stack's layers do not stay in the caches (W, H, Z, dW of every layer are streamed from memory
 * once per pass), and a layer's loads and stores otherwise wait for memory at its start. Up to
 * GB_PF_SPANS byte ranges; part q of nq issues the q-th share of their cache lines (into L2:
 * locality 0, 1 and 3 measured the same). No effect on any value. Always inlined: GCC deletes
 * calls of a static function that only prefetches (it counts as having no side effects). */
#ifndef GB_PF_DEFINED
#define GB_PF_DEFINED
#define GB_PF_SPANS 4
typedef struct {
    const char *p[GB_PF_SPANS];
    int64_t lines[GB_PF_SPANS];
    int w[GB_PF_SPANS];
    int n;
    /* lines = per nq + rem: part q starts at line q per + min(q, rem) (set by the first
     * gb_pf_part of a given nq: two 64-bit divisions per span and call cost more than the
     * prefetches of a small layer) */
    int64_t nq, per[GB_PF_SPANS], rem[GB_PF_SPANS];
} gb_pf;

static inline void gb_pf_add(gb_pf *pf, const void *p, int64_t bytes, int write) {
    if (pf->n >= GB_PF_SPANS || bytes <= 0) return;
    const uintptr_t a = (uintptr_t)p & ~(uintptr_t)63, e = (uintptr_t)p + (uintptr_t)bytes;
    pf->p[pf->n] = (const char *)a;
    pf->lines[pf->n] = (int64_t)((e - a + 63) / 64);
    pf->w[pf->n] = write;
    pf->n++;
}

#if defined(__GNUC__)
#define GB_PF_INLINE __attribute__((always_inline)) inline
#else
#define GB_PF_INLINE inline
#endif
static GB_PF_INLINE void gb_pf_part(gb_pf *pf, int64_t q, int64_t nq) {
#if defined(__GNUC__)
    if (!pf || q >= nq) return;
    if (pf->nq != nq) {
        pf->nq = nq;
        for (int s = 0; s < pf->n; s++) {
            pf->per[s] = pf->lines[s] / nq;
            pf->rem[s] = pf->lines[s] % nq;
        }
    }
    for (int s = 0; s < pf->n; s++) {
        const int64_t per = pf->per[s], rem = pf->rem[s];
        const int64_t a = q * per + GB_MIN(q, rem), b = a + per + (q < rem);
        const char *p = pf->p[s];
        if (pf->w[s])
            for (int64_t i = a; i < b; i++) __builtin_prefetch(p + 64 * i, 1, 2);
        else
            for (int64_t i = a; i < b; i++) __builtin_prefetch(p + 64 * i, 0, 2);
    }
#else
    (void)pf, (void)q, (void)nq;
#endif
}
#endif

/* C (M,N) = A (M,K) Bm (K,N) [+ bias (N,)] with A(m,k) = A[m*sam + k*sak]; ldb = ldc = N.
 * Cut into tiles of 4 rows x PW columns. One thread: the drivers give each thread its own
 * rows of C; every entry is one FMA chain over k in order whichever tile computes it.
 * pf (or NULL): prefetched a share per block of rows. */
static void F(gb_gemm_own_pf)(T *C, const T *A, int64_t sam, int64_t sak, const T *Bm,
                              const T *bias, int64_t M, int64_t N, int64_t K, gb_pf *pf, int64_t q0,
                              int64_t nq) {
    const int64_t PW = GB_PW; /* column panel */
    T *pack = K > GB_KC ? gb_thread_scratch(GB_KC * GB_PW * sizeof(T)) : NULL; /* NULL: unpacked */
    for (int64_t n0 = 0; n0 < N; n0 += PW) {
        const int64_t nw = GB_MIN(PW, N - n0);
        int64_t k0 = 0;
        do { /* one pass over k unpacked (K = 0 too: C = bias or 0) */
            const int64_t k1 = pack ? GB_MIN(K, k0 + GB_KC) : K;
            if (pack)
                for (int64_t k = k0; k < k1; k++) memcpy(pack + (k - k0) * nw, Bm + k * N + n0, nw * sizeof(T));
            for (int64_t m0 = 0; m0 < M; m0 += 4) {
                if (n0 == 0 && k0 == 0) gb_pf_part(pf, q0 + m0 / 4, nq); /* blocks: parts q0, q0 + 1, ... of nq */
                F(gb_gemm_block)(C + m0 * N + n0, A + m0 * sam, sam, sak, pack ? pack : Bm + n0,
                                 bias ? bias + n0 : NULL, GB_MIN(4, M - m0), nw, k0, k1, K, N, pack ? nw : N, 0);
            }
            k0 = k1;
        } while (k0 < K);
    }
}

static void F(gb_gemm_own)(T *C, const T *A, int64_t sam, int64_t sak, const T *Bm,
                           const T *bias, int64_t M, int64_t N, int64_t K) {
    F(gb_gemm_own_pf)(C, A, sam, sak, Bm, bias, M, N, K, NULL, 0, 1);
}


/* db[i] = sum of dz[r][i] over the rows r in order (from 0), i in [i0, i1); the sums of a
 * block of columns kept in registers over the rows.    db (N,), dz (B,N) */
static void F(gb_colsum)(T *db, const T *dz, int64_t B, int64_t N, int64_t i0, int64_t i1) {
    int64_t i = i0;
#ifdef GB_HAVE_VTILES
    typedef F(gb_vw) vt;
    enum { VL = sizeof(vt) / sizeof(T) };
    for (; i + 4 * VL <= i1; i += 4 * VL) {
        vt acc[4] = {{0}, {0}, {0}, {0}};
        for (int64_t r = 0; r < B; r++)
            for (int v = 0; v < 4; v++) {
                vt x;
                memcpy(&x, dz + r * N + i + v * VL, sizeof x);
                acc[v] += x;
            }
        memcpy(db + i, acc, sizeof acc);
    }
    for (; i + VL <= i1; i += VL) {
        vt acc = {0};
        for (int64_t r = 0; r < B; r++) {
            vt x;
            memcpy(&x, dz + r * N + i, sizeof x);
            acc += x;
        }
        memcpy(db + i, &acc, sizeof acc);
    }
#endif
    for (; i < i1; i++) {
        T acc = 0;
        for (int64_t r = 0; r < B; r++) acc += dz[r * N + i];
        db[i] = acc;
    }
}

#ifndef GB_OPAQUE /* without the vector extension: a plain C build contracts nothing it is not told to */
#define GB_OPAQUE(v) ((void)0)
#endif
/* db[i] = sum of dz[r][i] 2^sh[r] over the rows r in order (from 0), i in [i0, i1): gb_colsum of
 * the rows brought to db's exponent one by one, each rounded on its own as ldexp (as
 * gb_scale_down's in-place products; never fused into the sum, so the bits do not depend on
 * which loop takes a column). p[r], p[B + r]: the two factors of 2^sh[r] (gb_pow2_down), the
 * second 1 but for a row far below (far: some such row, whose second product every row takes).
 * db (N,), dz (B,N), p (2B,) */
static void F(gb_colsum_rows)(T *db, const T *dz, const T *p, int64_t B, int64_t N, int64_t i0, int64_t i1,
                              int far) {
    int64_t i = i0;
#ifdef GB_HAVE_VTILES
    typedef F(gb_vw) vt;
    enum { VL = sizeof(vt) / sizeof(T) };
    for (; i + 4 * VL <= i1; i += 4 * VL) {
        vt acc[4] = {{0}, {0}, {0}, {0}};
        for (int64_t r = 0; r < B; r++) {
            const T pr = p[r], pr2 = p[B + r];
            for (int v = 0; v < 4; v++) {
                vt x;
                memcpy(&x, dz + r * N + i + v * VL, sizeof x);
                x = x * pr;
                if (far) {
                    GB_OPAQUE(x);
                    x = x * pr2;
                }
                GB_OPAQUE(x);
                acc[v] += x;
            }
        }
        memcpy(db + i, acc, sizeof acc);
    }
#endif
    for (; i < i1; i++) {
        T acc = 0;
        for (int64_t r = 0; r < B; r++) {
            T x = dz[r * N + i] * p[r];
            if (far) {
                GB_OPAQUE(x);
                x = x * p[B + r];
            }
            GB_OPAQUE(x);
            acc += x;
        }
        db[i] = acc;
    }
}

/* ------------------------------------------------------------------ layers */
/* 1 and the binary exponent of max|x| (frexp; 0 for all zeros) in *e, or 0 when x is not all finite */
static int F(gb_exp_of_max)(const T *x, int64_t n, int *e) {
    double m = 0;
    for (int64_t k = 0; k < n; k++) {
        const double v = fabs((double)x[k]);
        if (!isfinite(v)) return 0;
        m = v > m ? v : m;
    }
    frexp(m, e);
    return 1;
}

#ifndef GB_FINITE_BITS
#define GB_FINITE_BITS
typedef uint64_t __attribute__((may_alias)) gb_bits64;
typedef uint32_t __attribute__((may_alias)) gb_bits32;
#endif
/* whether every entry of x (n,) is finite, on the integer bits (see gb_check_finite) */
static int F(gb_finite_block)(const T *x, int64_t n) {
    if (sizeof(T) == sizeof(double)) {
        const gb_bits64 *u = (const gb_bits64 *)(const void *)x;
        uint64_t acc = 0;
        for (int64_t i = 0; i < n; i++) acc |= ((u[i] & 0x7ff0000000000000u) + 0x0010000000000000u) >> 63;
        return acc == 0;
    }
    const gb_bits32 *u = (const gb_bits32 *)(const void *)x;
    uint32_t acc = 0;
    for (int64_t i = 0; i < n; i++) acc |= ((u[i] & 0x7f800000u) + 0x00800000u) >> 31;
    return acc == 0;
}

/* reference.dense_fix, operation by operation: every z[r, j] that is not finite while h[r], W[j]
 * and b[j] are is recomputed exactly scaled, s = sum_k (h[r,k] 2^-eh)(W[j,k] 2^-ew) in float64,
 * sequential in k, each product rounded on its own (the volatile keeps -ffp-contract=fast from
 * fusing it into an FMA), plus b[j] 2^-(eh+ew), then z = (T) ldexp(s, eh + ew): +-inf where the
 * sum truly overflows, finite where the products cancel, the same bits in every backend.
 * z (nr,N), h (nr,N), W (N,N), b (N,). A row whose z is finite costs one pass over it. */
static void F(gb_dense_fix)(T *z, const T *h, const T *W, const T *b, int64_t nr, int64_t N) {
#ifndef __AVX512F__ /* AVX-512 vectorises the isfinite loop below itself (measured: no gain here) */
    /* all finite, the usual case: one vectorised pass over the rows (the isfinite loop below
     * took ~1.3k instructions per layer at N = 32, B = 16, AVX2) */
    if (F(gb_finite_block)(z, nr * N)) return;
#endif
    for (int64_t r = 0; r < nr; r++) {
        T *zr = z + r * N;
        const T *hr = h + r * N;
        int bad = 0, eh, ew;
        for (int64_t j = 0; j < N; j++) bad |= !isfinite(zr[j]);
        if (!bad || !F(gb_exp_of_max)(hr, N, &eh)) continue;
        for (int64_t j = 0; j < N; j++) {
            if (isfinite(zr[j]) || !isfinite(b[j]) || !F(gb_exp_of_max)(W + j * N, N, &ew)) continue;
            double s = 0;
            for (int64_t k = 0; k < N; k++) {
                volatile double p = ldexp((double)hr[k], -eh) * ldexp((double)W[j * N + k], -ew);
                s += p;
            }
            s += ldexp((double)b[j], -(eh + ew));
            zr[j] = (T)ldexp(s, eh + ew);
        }
    }
}

/* z = h W^T + b.    z (B,N), h (B,N), W (N,N), b (N,); b NULL: z = h W^T, not fixed (the
 * caller adds each row's bias and fixes the rows: gb_add_bias_rows) */
/* gemm: BLAS, or NULL: the own kernels with wt (N,N) as workspace for W^T */
static void F(gb_dense_forward_ctx)(GEMM_FN gemm, T *wt, T *z, const T *h, const T *W, const T *b,
                                    int64_t B, int64_t N) {
    if (gemm) { /* column major: z^T (N,B) = W (N,N) h^T (N,B) + b */
        if (b)
            for (int64_t r = 0; r < B; r++) memcpy(z + r * N, b, (size_t)N * sizeof(T));
        char ta = 'T', tb = 'N';
        int m = (int)N, n = (int)B, k = (int)N, ld = (int)N;
        T one = 1, beta = b ? 1 : 0;
        gemm(&ta, &tb, &m, &n, &k, &one, (T *)W, &ld, (T *)h, &ld, &beta, z, &ld);
    } else {
        for (int64_t i = 0; i < N; i++)
            for (int64_t j = 0; j < N; j++) wt[j * N + i] = W[i * N + j];
        F(gb_gemm_own)(z, h, N, 1, wt, b, B, N, N);
    }
    if (b) F(gb_dense_fix)(z, h, W, b, B, N);
}

/* dW = dz^T h, db = sum_B dz (BLAS or, gemm NULL, the own kernels; db NULL: dW only).
 * dW (N,N), db (N,), dz (B,N), h (B,N) */
static void F(gb_dense_dw_ctx)(GEMM_FN gemm, T *dW, T *db, const T *dz, const T *h, int64_t B, int64_t N) {
    if (db) {
        for (int64_t j = 0; j < N; j++) db[j] = 0;
        for (int64_t r = 0; r < B; r++)
            for (int64_t j = 0; j < N; j++) db[j] += dz[r * N + j];
    }
    if (gemm) { /* column major: dW^T = h^T dz */
        char tn = 'N', tt = 'T';
        int n = (int)N, bb = (int)B, ld = (int)N;
        T one = 1, zero = 0;
        gemm(&tn, &tt, &n, &n, &bb, &one, (T *)h, &ld, (T *)dz, &ld, &zero, dW, &ld);
        return;
    }
    F(gb_gemm_own)(dW, dz, 1, N, h, NULL, N, N, B);
}

/* dh = dz W.    dh (B,N), dz (B,N), W (N,N) */
static void F(gb_dense_dh_ctx)(GEMM_FN gemm, T *dh, const T *dz, const T *W, int64_t B, int64_t N) {
    if (gemm) { /* column major: dh^T = W^T dz^T */
        char tn = 'N';
        int n = (int)N, bb = (int)B, ld = (int)N;
        T one = 1, zero = 0;
        gemm(&tn, &tn, &n, &bb, &n, &one, (T *)W, &ld, (T *)dz, &ld, &zero, dh, &ld);
        return;
    }
    F(gb_gemm_own)(dh, dz, N, 1, W, NULL, B, N, N);
}

#ifdef GB_LAYER_PAIRS /* the exported layer pairs alone use it (not the v3/v4 copies) */
/* dW = dz^T h, db = sum_B dz, dh = dz W.
 * dh (B,N), dW (N,N), db (N,), dz (B,N), h (B,N), W (N,N) */
static void F(gb_dense_backward_ctx)(GEMM_FN gemm, T *dh, T *dW, T *db, const T *dz, const T *h,
                                     const T *W, int64_t B, int64_t N) {
    F(gb_dense_dw_ctx)(gemm, dW, db, dz, h, B, N);
    F(gb_dense_dh_ctx)(gemm, dh, dz, W, B, N);
}
#endif

/* Train-mode batch norm, written so that a thread touches only its own batch rows: the
 * statistics are column sums over the batch, taken per block of GB_BN_ROWS rows (each block's
 * rows added in order, by the thread that owns them: the drivers share rows in whole blocks,
 * F(gb_part)), then the blocks' sums added in block order (every thread the same totals); the
 * mean as reference.batchnorm_mean takes it. The bits do not depend on the number of threads,
 * and only the blocks' sums cross between them.
 * (Columns shared between threads instead, every thread read the others' rows of z twice a
 * layer: two threads ran the forward at 1.25x one thread's speed, L = 1,000, N = B = 64.) */

/* batch norm's blocks over a batch of B rows */
#define GB_BN_NQ(B) (((B) + GB_BN_ROWS - 1) / GB_BN_ROWS)

/* Blocks' parts of the mean (reference.batchnorm_mean) for the rows [r0, r1) (r0 a multiple of
 * GB_BN_ROWS; r1 one, or the batch's end): part[2q] = c_q (block q's first row), part[2q + 1] =
 * S_q (its rows' differences from c_q, summed in row order). z (B,N); part (2 nq,N) */
static void F(gb_bn_mean_blocks)(T *part, const T *z, int64_t r0, int64_t r1, int64_t N) {
    for (int64_t ra = r0; ra < r1; ra += GB_BN_ROWS) {
        T *c = part + 2 * (ra / GB_BN_ROWS) * N, *S = c + N;
        const T *z0 = z + ra * N;
        const int64_t rb = GB_MIN(r1, ra + GB_BN_ROWS);
        for (int64_t j = 0; j < N; j++) c[j] = z0[j], S[j] = z0[j] - z0[j]; /* 0 (NaN where z0 is not finite) */
        for (int64_t r = ra + 1; r < rb; r++)
            for (int64_t j = 0; j < N; j++) S[j] += z[r * N + j] - c[j];
    }
}

/* mean = c_0 + sum_q (n_q (c_q - c_0) + S_q) / B from the blocks' parts, the blocks in order:
 * exactly the value of a column whose entries are all equal */
static void F(gb_bn_mean)(T *mean, const T *part, int64_t B, int64_t N) {
    const int64_t nq = GB_BN_NQ(B);
    const T *c0 = part;
    for (int64_t j = 0; j < N; j++) mean[j] = 0;
    for (int64_t q = 0; q < nq; q++) {
        const T *c = part + 2 * q * N, *S = c + N, n = (T)GB_MIN(GB_BN_ROWS, B - q * GB_BN_ROWS);
        for (int64_t j = 0; j < N; j++) mean[j] += n * (c[j] - c0[j]) + S[j];
    }
    for (int64_t j = 0; j < N; j++) mean[j] = c0[j] + mean[j] / (T)B;
}

/* The blocks' sums of squared deviations (x - c)^2 for the rows [r0, r1) (as
 * gb_bn_mean_blocks), in row order: part[q] (N entries) for block q. x (B,N); c (N,); part (nq,N) */
static void F(gb_bn_var_blocks)(T *part, const T *x, const T *c, int64_t r0, int64_t r1, int64_t N) {
    for (int64_t ra = r0; ra < r1; ra += GB_BN_ROWS) {
        T *p = part + ra / GB_BN_ROWS * N;
        const int64_t rb = GB_MIN(r1, ra + GB_BN_ROWS);
        for (int64_t j = 0; j < N; j++) p[j] = 0;
        for (int64_t r = ra; r < rb; r++)
            for (int64_t j = 0; j < N; j++) {
                const T d = x[r * N + j] - c[j];
                p[j] += d * d;
            }
    }
}

/* The backward's blocks for the rows [r0, r1), one pass: the parts of mean_B(dy) (pm, as
 * gb_bn_mean_blocks) and the sums of dy xhat in row order (px[q], N entries for block q).
 * dy, xhat (B,N); pm (2 nq,N); px (nq,N) */
static void F(gb_bn_dy_blocks)(T *pm, T *px, const T *dy, const T *xhat, int64_t r0, int64_t r1, int64_t N) {
    for (int64_t ra = r0; ra < r1; ra += GB_BN_ROWS) {
        const int64_t q = ra / GB_BN_ROWS, rb = GB_MIN(r1, ra + GB_BN_ROWS);
        T *c = pm + 2 * q * N, *S = c + N, *P = px + q * N;
        const T *d0 = dy + ra * N, *x0 = xhat + ra * N;
        for (int64_t j = 0; j < N; j++) c[j] = d0[j], S[j] = d0[j] - d0[j], P[j] = 0 + d0[j] * x0[j];
        for (int64_t r = ra + 1; r < rb; r++)
            for (int64_t j = 0; j < N; j++) {
                S[j] += dy[r * N + j] - c[j];
                P[j] += dy[r * N + j] * xhat[r * N + j];
            }
    }
}

/* out = the sum of the nq blocks' sums, in block order. out, part[q] (N,) */
static void F(gb_bn_total)(T *out, const T *part, int64_t nq, int64_t N) {
    for (int64_t j = 0; j < N; j++) out[j] = part[j];
    for (int64_t q = 1; q < nq; q++)
        for (int64_t j = 0; j < N; j++) out[j] += part[q * N + j];
}

/* rstd of a column (z: its first entry, stride N) whose squared deviations' sum overflowed
 * (|z - mean| beyond ~1e154, float32 ~1e19), from the deviations scaled by 2^-k, k the exponent
 * of the largest (reference.batchnorm_far_columns): all B rows in order, whatever the thread.
 * 0, as 1/sqrt(inf), where the largest deviation is not finite. */
static T F(gb_bn_far_rstd)(const T *z, T mean, double eps, int64_t B, int64_t N) {
    double top = 0;
    for (int64_t r = 0; r < B; r++) {
        const double a = fabs((double)(z[r * N] - mean));
        if (a > top) top = a;
    }
    if (!isfinite(top)) return 0;
    int k;
    frexp(top, &k);
    const T sc = (T)gb_ldexp_d(1.0, -k);
    T v = 0;
    for (int64_t r = 0; r < B; r++) {
        const T d = (z[r * N] - mean) * sc;
        v += d * d;
    }
    v = v / (T)B;
    return (T)gb_ldexp_d(1.0 / sqrt((double)v + gb_ldexp_d(eps, -2 * k)), -k);
}

/* rstd = 1/sqrt(var + eps), var = the squared deviations' sum / B, from that sum (N,), in place;
 * a column whose sum overflowed from z (B,N) and its mean (gb_bn_far_rstd). Returns how many
 * did: the caller's threads must all have read z before any writes it. */
static int64_t F(gb_bn_rstd)(T *rstd, const T *z, const T *mean, double eps, int64_t B, int64_t N) {
    int64_t far = 0;
    for (int64_t j = 0; j < N; j++) {
        if (isinf(rstd[j])) {
            rstd[j] = F(gb_bn_far_rstd)(z + j, mean[j], eps, B, N);
            far++;
        } else
            rstd[j] = (T)(1.0 / sqrt((double)(rstd[j] / (T)B) + eps));
    }
    return far;
}

/* Rows [r0, r1): xhat = (z - mean) rstd, y = gamma xhat + beta. y, xhat, z (B,N); y may be z */
static void F(gb_bn_normalise)(T *y, T *xhat, const T *z, const T *mean, const T *rstd, const T *gamma,
                               const T *beta, int64_t r0, int64_t r1, int64_t N) {
    for (int64_t r = r0; r < r1; r++)
        for (int64_t j = 0; j < N; j++) {
            const T x = (z[r * N + j] - mean[j]) * rstd[j];
            xhat[r * N + j] = x;
            y[r * N + j] = gamma[j] * x + beta[j];
        }
}

/* Rows [r0, r1): dz = gamma rstd (dy - mean_B(dy) - xhat mean_B(dy xhat)), from the means
 * mdy = mean_B(dy) and mdx = mean_B(dy xhat). dz may be dy */
static void F(gb_bn_dz)(T *dz, const T *dy, const T *xhat, const T *mdy, const T *mdx, const T *rstd,
                        const T *gamma, int64_t r0, int64_t r1, int64_t N) {
    for (int64_t r = r0; r < r1; r++)
        for (int64_t j = 0; j < N; j++) {
            const T gr = gamma[j] * rstd[j];
            dz[r * N + j] = gr * (dy[r * N + j] - mdy[j] - xhat[r * N + j] * mdx[j]);
        }
}

#ifdef GB_LAYER_PAIRS /* the exported layer pairs alone use them (not the v3/v4 copies) */
/* The whole batch on one thread, the drivers' code and bits:
 * y = gamma * (z - mean_B) * rstd + beta, rstd = 1/sqrt(var_B + eps) (biased variance).
 * y, xhat, z (B,N); mean, rstd, gamma, beta (N,); part (2 ceil(B / GB_BN_ROWS), N) scratch.
 * y may be z. */
static void F(gb_batchnorm_forward_impl)(T *y, T *xhat, T *mean, T *rstd, const T *z, const T *gamma,
                                         const T *beta, double eps, int64_t B, int64_t N, T *part) {
    const int64_t nq = GB_BN_NQ(B);
    F(gb_bn_mean_blocks)(part, z, 0, B, N);
    F(gb_bn_mean)(mean, part, B, N);
    F(gb_bn_var_blocks)(part, z, mean, 0, B, N);
    F(gb_bn_total)(rstd, part, nq, N);
    F(gb_bn_rstd)(rstd, z, mean, eps, B, N);
    F(gb_bn_normalise)(y, xhat, z, mean, rstd, gamma, beta, 0, B, N);
}

/* Train-mode batch norm backward on one thread, linear in dy (reference.batchnorm_backward):
 * dz = gamma * rstd * (dy - mean_B(dy) - xhat * mean_B(dy * xhat)), dbeta = B mean_B(dy),
 * dgamma = sum_B dy xhat. dz, dy, xhat (B,N); dgamma, dbeta, rstd, gamma (N,); part
 * (3 ceil(B / GB_BN_ROWS) + 2, N) scratch. dz may be dy. */
static void F(gb_batchnorm_backward_impl)(T *dz, T *dgamma, T *dbeta, const T *dy, const T *xhat,
                                          const T *rstd, const T *gamma, int64_t B, int64_t N, T *part) {
    const int64_t nq = GB_BN_NQ(B);
    T *mdy = part + 2 * nq * N, *mdx = mdy + N;
    F(gb_bn_dy_blocks)(part, mdy + 2 * N, dy, xhat, 0, B, N);
    F(gb_bn_mean)(mdy, part, B, N);
    F(gb_bn_total)(dgamma, mdy + 2 * N, nq, N);
    for (int64_t j = 0; j < N; j++) dbeta[j] = mdy[j] * (T)B, mdx[j] = dgamma[j] / (T)B;
    F(gb_bn_dz)(dz, dy, xhat, mdy, mdx, rstd, gamma, 0, B, N);
}
#endif

/* ------------------------------------------------------------------ activation rows */
#ifdef GB_HAVE_VEC
/* (gb_tv, gb_t8, gb_loadv, gb_load8: rows_impl.h) */
/* GB_VL entries of gamma * xhat + beta (batch norm's y, rounded to T as the scalar loops round
 * it), widened to double */
static inline gb_vd F(gb_load_bn)(const T *xhat, const T *gamma, const T *beta) {
    F(gb_tv) x, g, b;
    memcpy(&x, xhat, sizeof x);
    memcpy(&g, gamma, sizeof g);
    memcpy(&b, beta, sizeof b);
    const F(gb_tv) y = g * x + b;
    return __builtin_convertvector(y, gb_vd);
}

static inline F(gb_tv) F(gb_roundv)(gb_vd v) { return __builtin_convertvector(v, F(gb_tv)); }

typedef signed char F(gb_vb) __attribute__((vector_size(GB_VL))); /* GB_VL bytes */

/* The forward row's outputs of GB_VL lanes: a = phi rounded to T, the count of phi' < thr
 * (minus, per lane, in *vcnt), dead flags cleared where z <= 0 does not hold */
static GB_AINLINE void F(gb_act_fwd_out)(T *a, unsigned char *dead, gb_vd u, gb_vd va, gb_vd vd, double thr,
                                         gb_vi *vcnt) {
    const F(gb_tv) ta = F(gb_roundv)(va), td = F(gb_roundv)(vd);
    memcpy(a, &ta, sizeof ta);
    const gb_vd dd = __builtin_convertvector(td, gb_vd);
    *vcnt += (dd < thr) & (dd > -thr); /* |phi'| < thr: GELU, swish, a negative slope have phi' < 0 */
#if defined(__AVX__) && GB_VL == 4 && !defined(__clang__)
    /* AVX2: the 4 compare bits through a table of byte masks (the conversion of the 64-bit
     * lanes to bytes took ~16 instructions per vector, GCC 12; ~6 so) */
    static const uint32_t bytes[16] = {0x0, 0xff, 0xff00, 0xffff, 0xff0000, 0xff00ff, 0xffff00, 0xffffff,
                                       0xff000000, 0xff0000ff, 0xff00ff00, 0xff00ffff, 0xffff0000,
                                       0xffff00ff, 0xffffff00, 0xffffffff};
    uint32_t dv;
    memcpy(&dv, dead, sizeof dv);
    dv &= bytes[_mm256_movemask_pd((__m256d)(u <= 0.0))]; /* z <= 0: the byte kept, else 0 */
    memcpy(dead, &dv, sizeof dv);
#else
    F(gb_vb) dv, nz = __builtin_convertvector(u <= 0.0, F(gb_vb)); /* z <= 0: -1, else 0 */
    memcpy(&dv, dead, sizeof dv);
    dv &= nz;
    memcpy(dead, &dv, sizeof dv);
#endif
}
#endif

#if defined(GB_HAVE_VEC) && T_F32
#include "vact_f32.h"

/* ReLU and the identity forward, ReLU, leaky ReLU and the identity backward take float lanes too
 * (gb_vf_lin): phi is z where z > 0 or NaN, else 0; phi' 1, else 0 or the slope p (NaN included),
 * gb_vact's values, which its double lanes round to these very floats: the same bits without the
 * conversions each way (float32 ReLU layers ran in double lanes). Not leaky ReLU's forward, whose
 * p z the double lanes round twice. */
static inline int gb_vf_lin(int act, int forward) {
    return act == GB_RELU || act == GB_IDENTITY || (!forward && act == GB_LEAKY_RELU);
}

/* Whether a row's activation runs in float lanes, in the forward (forward = 1) or the backward:
 * ReLU and its kin in GB_VM_PLAIN (gb_vf_lin); the others in the float lanes' layer modes:
 * GB_VM_PLAIN (z as it is) and GB_VM_MUL with |f| <= 60, where
 * z = u 2^f of a lane at or beyond TINY (float32: 2^-16 tanh, 2^-28 ELU, SELU) is a normal
 * float, exact (or inf: the double functions take that lane), and so is phi(z) 2^-f: the
 * products of the double rows, in float; lanes below TINY take the linear form c0 u, c0, as
 * the double rows do (bitwise). And f < -60 for every scaled activation (a vanished signal):
 * the lanes with |u| < tiny 2^-f take the linear form in float (c0 u rounded once, as the double
 * rows round it), the others the double functions (gb_vf_fix) */
static int gb_vf_mode(const gb_scaled *s, const int act, const int forward) {
    if (s->vmode == GB_VM_PLAIN && gb_vf_lin(act, forward)) return 1;
    /* not for any row of a layer whose exponent is above 60 (its rows below it, from frow, at
     * most 60 themselves: one exponent per layer took the double lanes for all of them; so the
     * bits stay those of one exponent per layer) */
    if (s->layer_over) return 0;
    return (gb_vf_has(act) &&
            (s->vmode == GB_VM_PLAIN || (s->vmode == GB_VM_MUL && s->f >= -60 && s->f <= 60))) ||
           (s->on && s->f < -60);
}

/* The lanes of the GB_VFL floats at p where ok is false, as the double rows evaluate them
 * (gb_vact_scaled, or the scalar functions where it declines), into *a (when a) and *d: every
 * entry has the value it would have in the double rows whatever vector it falls in */
static void F(gb_vf_fix)(const T *p, gb_vfi ok, const gb_scaled *s, const int act, gb_vf *a, gb_vf *d) {
    gb_vf va, vd;
    for (int h = 0; h < 2; h++) {
        const T *q = p + h * GB_VL;
        gb_vd ha = {0}, hd; /* ha unread when a is NULL (gcc cannot tell) */
        F(gb_tv) ta, td;
        if (gb_vact_scaled(F(gb_loadv)(q), s, act, a ? &ha : NULL, &hd)) {
            ta = F(gb_roundv)(a ? ha : hd);
            td = F(gb_roundv)(hd);
        } else {
            for (int i = 0; i < GB_VL; i++) {
                ta[i] = a ? FP(gb_phi_scaled)(q[i], s) : 0;
                td[i] = FP(gb_dphi_scaled)(q[i], s);
            }
        }
        memcpy((T *)&va + h * GB_VL, &ta, sizeof ta);
        memcpy((T *)&vd + h * GB_VL, &td, sizeof td);
    }
    if (a) *a = gb_vf_blend(ok, *a, va);
    *d = gb_vf_blend(ok, *d, vd);
}

/* phi (when a) and phi' of the GB_VFL mantissas u in the float lanes (z = u 2^f in GB_VM_MUL);
 * ok: the lanes evaluated, the others to be fixed */
static GB_AINLINE gb_vfi gb_vf_layer(gb_vf u, const gb_scaled *s, const int act, gb_vf *a, gb_vf *d) {
    if (s->vmode == GB_VM_PLAIN) {
        gb_vf_act(u, act, (float)s->p, a, d);
        return gb_vf_ok(u);
    }
    const gb_vf zero = {0};
    /* c0 u rounded once as the double rows round it needs c0 to be a float (SELU's lambda is
     * not: its tiny lanes go to the double functions) */
    const int exact = (double)(float)s->c0p == s->c0p && (double)(float)s->c0m == s->c0m;
    if (s->f < -60) { /* a vanished signal: no polynomial (gb_vf_mode) */
        const gb_vf c0 = gb_vf_blend(u > 0.0f, zero + (float)s->c0p, zero + (float)s->c0m);
        if (a) *a = c0 * u;
        *d = c0;
        const float lim = s->tiny_u > FLT_MAX ? INFINITY : (float)s->tiny_u; /* a power of two */
        const gb_vfi lin = gb_vf_from_bits(gb_vf_bits(u) & 0x7fffffff) < lim; /* NaN, inf: no */
        return exact ? lin : lin & 0;
    }
    const gb_vf z = u * (float)s->pf;
    const gb_vfi tiny = gb_vf_from_bits(gb_vf_bits(z) & 0x7fffffff) < (float)s->tiny;
    const gb_vf c0 = gb_vf_blend(u > 0.0f, zero + (float)s->c0p, zero + (float)s->c0m);
    gb_vf_act(z, act, (float)s->p, a, d);
    if (a) *a = gb_vf_blend(tiny, c0 * u, *a * (float)s->pmf);
    *d = gb_vf_blend(tiny, c0, *d);
    return exact ? gb_vf_ok(z) : gb_vf_ok(z) & ~tiny;
}

/* The smallest float >= t (t >= 0 or NaN): f < t <=> f < gb_float_ceil(t) for every float f */
static float gb_float_ceil(double t) {
    float c = (float)t;
    if ((double)c < t) c = nextafterf(c, INFINITY);
    return c;
}

static GB_AINLINE void gb_vf_lin_act(gb_vf u, int act, float p, gb_vf *a, gb_vf *d) {
    const gb_vf zero = {0}, one = zero + 1.0f;
    if (a) *a = act == GB_IDENTITY ? u : gb_vf_blend((u > 0.0f) | (u != u), u, zero);
    *d = act == GB_IDENTITY ? one : gb_vf_blend(u > 0.0f, one, zero + (act == GB_RELU ? 0.0f : p));
}

/* The float32 forward in float lanes (gb_vf_mode) over the row's whole float vectors from *jp
 * on (gb_act_forward_row_k's outputs; *jp advanced past them): returns the count of phi' < thr */
static GB_AINLINE int64_t F(gb_vf_forward)(T *a, const T *z, int64_t N, const gb_scaled *s, double thr,
                                           unsigned char *dead, int64_t *jp, const int act) {
    const float thrf = gb_float_ceil(thr);
    gb_vfi vcnt = {0};
    int64_t j = *jp, cnt = 0;
    for (; j + GB_VFL <= N; j += GB_VFL) {
        gb_vf u, va, vd;
        memcpy(&u, z + j, sizeof u);
        if (gb_vf_lin(act, 1)) {
            gb_vf_lin_act(u, act, (float)s->p, &va, &vd);
        } else {
            const gb_vfi ok = gb_vf_layer(u, s, act, &va, &vd);
            if (gb_vf_any(~ok)) F(gb_vf_fix)(z + j, ok, s, act, &va, &vd);
        }
        memcpy(a + j, &va, sizeof va);
        vcnt += (vd < thrf) & (vd > -thrf);
        gb_vfb dv;
        memcpy(&dv, dead + j, sizeof dv);
        dv &= __builtin_convertvector(u <= 0.0f, gb_vfb);
        memcpy(dead + j, &dv, sizeof dv);
    }
    for (int i = 0; i < GB_VFL; i++) cnt -= vcnt[i];
    *jp = j;
    return cnt;
}

/* The float32 backward in float lanes (gb_vf_mode; d = da phi'(z), da = g (* alpha)) over the
 * row's whole float vectors from *jp on, max|d| into *mx when mx */
static GB_AINLINE void F(gb_vf_backward)(T *d, const T *g, const T *zr, int scale, T alpha, const gb_scaled *s,
                                         int64_t N, double *mx, int64_t *jp, const int act) {
    gb_vf macc = {0};
    int64_t j = *jp;
    for (; j + GB_VFL <= N; j += GB_VFL) {
        gb_vf u, vd, da;
        memcpy(&u, zr + j, sizeof u);
        if (gb_vf_lin(act, 0)) {
            gb_vf_lin_act(u, act, (float)s->p, NULL, &vd);
        } else {
            const gb_vfi ok = gb_vf_layer(u, s, act, NULL, &vd);
            if (gb_vf_any(~ok)) F(gb_vf_fix)(zr + j, ok, s, act, NULL, &vd);
        }
        memcpy(&da, g + j, sizeof da);
        if (scale) da = da * alpha;
        const gb_vf out = da * vd;
        memcpy(d + j, &out, sizeof out);
        if (mx) macc = gb_vf_max_keep(gb_vf_from_bits(gb_vf_bits(out) & 0x7fffffff), macc);
    }
    if (mx) {
        const double m = gb_vf_hmax_nonneg(macc);
        *mx = m > *mx ? m : *mx;
    }
    *jp = j;
}
#endif

/* One row of the activation forward: a = phi(z) (phi_scaled with rescaling); returns the
 * number of entries with phi'(z) < thr (phi' rounded to T, as the reference compares) and
 * clears dead[j] where z_j <= 0 does not hold.    a, z, dead (N,)
 * Written once for a constant act (the vector code specialised per activation). */
static GB_AINLINE int64_t F(gb_act_forward_row_k)(T *a, const T *z, int64_t N, const gb_scaled *s,
                                                  double thr, unsigned char *dead, const int act) {
    int64_t cnt = 0, j = 0;
#ifdef GB_HAVE_VEC
    gb_vi vcnt = {0}; /* minus the count per lane */
#if T_F32
    if (gb_vf_mode(s, act, 1)) /* float lanes (vact_f32.h) */
        cnt += F(gb_vf_forward)(a, z, N, s, thr, dead, &j, act);
#endif
    if (s->vmode == GB_VM_PLAIN) { /* no scalar fallback: no call in the loop, constants stay in registers */
        /* two vectors per step, their instructions interleaved: the lanes' long dependency
         * chains (exp, the division) overlap better than across loop iterations (~7% on tanh) */
        for (; j + 2 * GB_VL <= N; j += 2 * GB_VL) {
            const gb_vd u0 = F(gb_loadv)(z + j), u1 = F(gb_loadv)(z + j + GB_VL);
            gb_vd va0, vd0, va1, vd1;
            gb_vact(u0, act, s->p, &va0, &vd0);
            gb_vact(u1, act, s->p, &va1, &vd1);
            F(gb_act_fwd_out)(a + j, dead + j, u0, va0, vd0, thr, &vcnt);
            F(gb_act_fwd_out)(a + j + GB_VL, dead + j + GB_VL, u1, va1, vd1, thr, &vcnt);
        }
        for (; j + GB_VL <= N; j += GB_VL) {
            const gb_vd u = F(gb_loadv)(z + j);
            gb_vd va, vd;
            gb_vact(u, act, s->p, &va, &vd);
            F(gb_act_fwd_out)(a + j, dead + j, u, va, vd, thr, &vcnt);
        }
    }
    if (s->vmode == GB_VM_MUL) /* the rescaled forward's usual mode: the same two-vector loop
                                * while every lane is finite (~1.3x tanh's activation pass) */
        for (; j + 2 * GB_VL <= N; j += 2 * GB_VL) {
            const gb_vd u0 = F(gb_loadv)(z + j), u1 = F(gb_loadv)(z + j + GB_VL);
            if (!gb_vfinite(u0) || !gb_vfinite(u1)) break; /* the loop below takes them */
            gb_vd va0, vd0, va1, vd1;
            gb_vact_mul(u0, s, act, &va0, &vd0);
            gb_vact_mul(u1, s, act, &va1, &vd1);
            F(gb_act_fwd_out)(a + j, dead + j, u0, va0, vd0, thr, &vcnt);
            F(gb_act_fwd_out)(a + j + GB_VL, dead + j + GB_VL, u1, va1, vd1, thr, &vcnt);
        }
    for (; j + GB_VL <= N; j += GB_VL) {
        const gb_vd u = F(gb_loadv)(z + j);
        gb_vd va, vd;
        if (gb_vact_scaled(u, s, act, &va, &vd)) {
            F(gb_act_fwd_out)(a + j, dead + j, u, va, vd, thr, &vcnt);
            continue;
        }
        for (int i = 0; i < GB_VL; i++) {
            a[j + i] = FP(gb_phi_scaled)(z[j + i], s);
            cnt += fabs((double)FP(gb_dphi_scaled)(z[j + i], s)) < thr;
            dead[j + i] &= z[j + i] <= 0;
        }
    }
    for (int i = 0; i < GB_VL; i++) cnt -= vcnt[i];
#endif
    for (; j < N; j++) {
        a[j] = FP(gb_phi_scaled)(z[j], s);
        cnt += fabs((double)FP(gb_dphi_scaled)(z[j], s)) < thr;
        dead[j] &= z[j] <= 0;
    }
    return cnt;
}

#define GB_ACT_CASES(CALL)                                                                     \
    switch (s->act) {                                                                          \
    case GB_IDENTITY: CALL(GB_IDENTITY);                                                       \
    case GB_SIGMOID: CALL(GB_SIGMOID);                                                         \
    case GB_TANH: CALL(GB_TANH);                                                               \
    case GB_RELU: CALL(GB_RELU);                                                               \
    case GB_LEAKY_RELU: CALL(GB_LEAKY_RELU);                                                   \
    case GB_PRELU: CALL(GB_PRELU);                                                             \
    case GB_ELU: CALL(GB_ELU);                                                                 \
    case GB_SELU: CALL(GB_SELU);                                                               \
    case GB_SWISH: CALL(GB_SWISH);                                                             \
    default: CALL(GB_GELU);                                                                    \
    }

static int64_t F(gb_act_forward_row)(T *a, const T *z, int64_t N, const gb_scaled *s, double thr,
                                     unsigned char *dead) {
#define GB_FWD_CALL(ACT) return F(gb_act_forward_row_k)(a, z, N, s, thr, dead, ACT)
    GB_ACT_CASES(GB_FWD_CALL)
#undef GB_FWD_CALL
}

#ifdef GB_HAVE_VEC
/* d = da * phi' for GB_VL entries (da = g, times alpha when scale), and max|d| folded into
 * *macc when track: the store of the activation backward's vector loops. Returns da. */
static GB_AINLINE F(gb_tv) F(gb_store_dz)(T *d, const T *g, gb_vd vd, int scale, T alpha, int track,
                                          gb_vd *macc) {
    F(gb_tv) da;
    memcpy(&da, g, sizeof da);
    if (scale) da = da * alpha;
    const F(gb_tv) out = da * F(gb_roundv)(vd);
    memcpy(d, &out, sizeof out);
    if (track) {
        const gb_vd w = gb_vabs(__builtin_convertvector(out, gb_vd));
        *macc = gb_vmax_keep(w, *macc);
    }
    return da;
}
#endif

/* One row of the activation backward: d = da * phi'(zl), da = g (* alpha when scale),
 * zl = z or gamma * xhat + beta under
 * batch norm; phi' by dphi_scaled. Returns the row's PReLU sum of da * min(zl, 0) (the
 * products rounded to T, added in double: the vector lanes' sums in lane order, then the
 * remainder in order; the same for any thread count).
 * d, g, zr (N,); gamma, beta (N,) or NULL */
static GB_AINLINE double F(gb_act_backward_row_k)(T *d, const T *g, const T *zr, const T *gamma,
                                                  const T *beta, int scale, T alpha, const gb_scaled *s,
                                                  int64_t N, double *mx, const int act) {
    double sum = 0, m = 0;
    int64_t j = 0;
#ifdef GB_HAVE_VEC
    gb_vd macc = {0};
#if T_F32
    if (!gamma && gb_vf_mode(s, act, 0))
        F(gb_vf_backward)(d, g, zr, scale, alpha, s, N, mx, &j, act); /* float lanes (vact_f32.h); the loops below take the rest */
#endif
    if (s->vmode == GB_VM_PLAIN) { /* no call in the loop; batch norm (never rescaled) and
                                    * PReLU (homogeneous) always come here */
        const gb_vd zero = {0};
        gb_vd acc = zero; /* PReLU: the slope's sum, lane by lane */
        for (; j + GB_VL <= N; j += GB_VL) {
            const gb_vd zl = gamma ? F(gb_load_bn)(zr + j, gamma + j, beta + j) : F(gb_loadv)(zr + j);
            gb_vd vd;
            gb_vact(zl, act, s->p, NULL, &vd);
            const F(gb_tv) da = F(gb_store_dz)(d + j, g + j, vd, scale, alpha, mx != NULL, &macc);
            if (act == GB_PRELU) {
                const gb_vd neg = gb_blend((zl < 0.0) | (zl != zl), zl, zero); /* zl if < 0 or NaN, else 0 */
                /* the product rounded to T as the scalar loop's da * zl, then summed in double */
                acc += __builtin_convertvector(F(gb_roundv)(__builtin_convertvector(da, gb_vd) * neg), gb_vd);
            }
        }
        if (act == GB_PRELU)
            for (int q = 0; q < GB_VL; q++) sum += acc[q];
    }
    if (!gamma && act != GB_PRELU && s->vmode == GB_VM_MUL) /* the rescaled chain's usual mode: two
        * vectors a step while every lane is finite, as the forward's (their long chains overlap) */
        for (; j + 2 * GB_VL <= N; j += 2 * GB_VL) {
            const gb_vd u0 = F(gb_loadv)(zr + j), u1 = F(gb_loadv)(zr + j + GB_VL);
            if (!gb_vfinite(u0) || !gb_vfinite(u1)) break; /* the loop below takes them */
            gb_vd d0, d1;
            gb_vact_mul(u0, s, act, NULL, &d0);
            gb_vact_mul(u1, s, act, NULL, &d1);
            F(gb_store_dz)(d + j, g + j, d0, scale, alpha, mx != NULL, &macc);
            F(gb_store_dz)(d + j + GB_VL, g + j + GB_VL, d1, scale, alpha, mx != NULL, &macc);
        }
    if (!gamma && act != GB_PRELU)
        for (; j + GB_VL <= N; j += GB_VL) {
            gb_vd vd;
            if (!gb_vact_scaled(F(gb_loadv)(zr + j), s, act, NULL, &vd)) break;
            F(gb_store_dz)(d + j, g + j, vd, scale, alpha, mx != NULL, &macc);
        }
    if (mx)
        m = gb_hmax_nonneg(macc);
#endif
    for (; j < N; j++) {
        T da = g[j];
        if (scale) da = da * alpha;
        const T zl = gamma ? gamma[j] * zr[j] + beta[j] : zr[j];
        d[j] = da * FP(gb_dphi_scaled)(zl, s);
        if (mx) {
            const double w = (double)TFABS(d[j]);
            m = w > m ? w : m;
        }
        if (act == GB_PRELU) sum += (double)(da * ((zl < 0 || zl != zl) ? zl : (T)0));
    }
    if (mx) *mx = m > *mx ? m : *mx;
    return sum;
}

/* ... and with mx (or NULL): *mx = max(*mx, max|d|), NaN ignored (gb_absmax of the row) */
static double F(gb_act_backward_row)(T *d, const T *g, const T *zr, const T *gamma, const T *beta,
                                     int scale, T alpha, const gb_scaled *s, int64_t N, double *mx) {
#define GB_BWD_CALL(ACT) return F(gb_act_backward_row_k)(d, g, zr, gamma, beta, scale, alpha, s, N, mx, ACT)
    GB_ACT_CASES(GB_BWD_CALL)
#undef GB_BWD_CALL
}

/* ------------------------------------------------------------------ the exact chain */
/* m[r] = gb_absmax(h + r N, N, 0) for the nr rows of h, in one call (the forward's rows, one
 * call per layer and thread rather than per row; the max is exact in any order), and nan[r]
 * whether the row has a NaN entry.    h (nr,N) */
static void F(gb_rows_absmax)(const T *h, int64_t nr, int64_t N, T *m, unsigned char *nan) {
    for (int64_t r = 0; r < nr; r++) {
        int isnan_ = 0;
        m[r] = (T)F(gb_absmax_core)(h + r * N, N, 1, &isnan_);
        nan[r] = (unsigned char)isnan_;
    }
}

/* scale * a * 2^da + s * 2^ds (a residual branch plus its skip, aligned at the larger of their
 * exponents) written into a[i0..i1).
 * One of da, ds is 0; the other operand is scaled by 2^d, a normal power of two down to
 * the smallest normal exponent: a product, exact unless the scaled value is subnormal (then
 * rounded once as by ldexp, or fused into the sum), in a loop that vectorises. ldexp itself
 * was a libm call per entry (a residual stack's group ends in the forward with rescaling,
 * float32, and the backward's every skip: float32 residual stacks at n = 64 ran 0.85x the
 * plain loop). Beyond it, ldexp.
 * a, s (n,) */
/* fuse (instances with FMA): 1 rounds sc a 2^da + s 2^ds once, 0 rounds the product sc a 2^da
 * first (as -ffp-contract=fast compiled the product loop below; the loops without a shift and
 * with ldexp fused all of it), -1 as those loops did by the shifts: fused when da = ds = 0 or a
 * shift is beyond T's normal powers of two. The forward's rows choose by the layer's exponents
 * (one decision per layer as before, whatever each row's own shifts): the same bits as one
 * exponent per layer gave wherever nothing is subnormal. Without FMA nothing is fused. */
static GB_AINLINE void F(gb_add_aligned_range)(T *a, const T *s, T sc, int da, int ds, int64_t i0,
                                               int64_t i1, int fuse) {
    const int normal = da >= 1 - T_MAX_EXP && ds >= 1 - T_MAX_EXP;
#ifdef __FMA__
    if (fuse < 0) fuse = (da == 0 && ds == 0) || !normal;
    if (normal) {
        const T pa = TLDEXP((T)1, da), ps = TLDEXP((T)1, ds);
        if (fuse)
            for (int64_t i = i0; i < i1; i++) a[i] = TFMA(sc, a[i] * pa, s[i] * ps);
        else
            for (int64_t i = i0; i < i1; i++) a[i] = TFMA(s[i], ps, sc * (a[i] * pa));
    } else if (fuse) {
        for (int64_t i = i0; i < i1; i++) a[i] = TFMA(sc, TLDEXP(a[i], da), TLDEXP(s[i], ds));
    } else {
        for (int64_t i = i0; i < i1; i++) a[i] = TFMA(TLDEXP(s[i], ds), (T)1, sc * TLDEXP(a[i], da));
    }
#else
    (void)fuse;
    if (da == 0 && ds == 0) {
        for (int64_t i = i0; i < i1; i++) a[i] = s[i] + sc * a[i];
    } else if (normal) {
        const T pa = TLDEXP((T)1, da), ps = TLDEXP((T)1, ds);
        for (int64_t i = i0; i < i1; i++) a[i] = s[i] * ps + sc * (a[i] * pa);
    } else {
        for (int64_t i = i0; i < i1; i++) a[i] = TLDEXP(s[i], ds) + sc * TLDEXP(a[i], da);
    }
#endif
}

/* The loops above round scale * a (the build's -ffp-contract=fast may fuse it into the sum);
 * NumPy, the reference, rounds that product on its own. They differ beyond rounding only where
 * |scale| > 1 and the product overflows while the sum does not: the reference's entry is
 * +-inf, a fused one finite. There (rare: a residual scale above 1 in a stack that overflows
 * forward) those entries are taken as the reference does, the others keep the loops' bits.
 * a, s (n,) */
static void F(gb_add_aligned_overflow)(T *a, const T *s, T sc, int da, int ds, int64_t n, int fuse) {
    enum { CHUNK = 64 };
    T ref[CHUNK];
    unsigned char over[CHUNK];
    for (int64_t i0 = 0; i0 < n; i0 += CHUNK) {
        const int64_t i1 = GB_MIN(i0 + CHUNK, n);
        for (int64_t i = i0; i < i1; i++) {
            volatile T p = sc * TLDEXP(a[i], da); /* rounded on its own, never fused */
            const T pr = p;
            over[i - i0] = isfinite(a[i]) && !isfinite(pr);
            ref[i - i0] = TLDEXP(s[i], ds) + pr;
        }
        F(gb_add_aligned_range)(a, s, sc, da, ds, i0, i1, fuse);
        for (int64_t i = i0; i < i1; i++)
            if (over[i - i0]) a[i] = ref[i - i0];
    }
}

/* scale * a * 2^ea + s * 2^es written into a at the larger exponent, which it returns: the
 * loops of gb_add_aligned_range (fuse there), or gb_add_aligned_overflow where a product may
 * overflow.    a, s (n,) */
static int64_t F(gb_add_aligned_impl)(T *a, int64_t ea, const T *s, int64_t es, double scale,
                                 int64_t n, int fuse) {
    const int64_t em = GB_MAX(ea, es);
    const int da = gb_clamp_exp(ea - em), ds = gb_clamp_exp(es - em);
    const T sc = (T)scale;
    /* |scale * a 2^da| <= |scale| max|a| 2^da (rounding is monotone): no product overflows
     * when that bound is finite; always so for |scale| <= 1 (da <= 0) */
    if (TFABS(sc) > 1) {
        const T m = F(gb_absmax)(a, n, 0); /* NaN entries: NaN either way */
        if (!isfinite(TFABS(sc) * TLDEXP(m, da))) {
            F(gb_add_aligned_overflow)(a, s, sc, da, ds, n, fuse);
            return em;
        }
    }
    F(gb_add_aligned_range)(a, s, sc, da, ds, 0, n, fuse);
    return em;
}

/* the same over the rows of x (M,N), the row sums (kept in rowacc) added in order */
static double F(gb_sumsq)(const T *x, int64_t M, int64_t N, double s1, double s2, double *rowacc) {
    double total = 0;
    for (int64_t r = 0; r < M; r++) total += rowacc[r] = F(gb_sumsq_row)(x + r * N, N, s1, s2);
    return total;
}

#ifdef GB_LAYER_PAIRS /* the exported layer pairs alone use it (not the v3/v4 copies) */
/* sqrt(sum x^2) in double.    x (M,N) */
static double F(gb_norm)(const T *x, int64_t M, int64_t N, double *rowacc) {
    return sqrt(F(gb_sumsq)(x, M, N, 1.0, 1.0, rowacc));
}
#endif

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

#ifdef GB_LAYER_PAIRS /* the exported layer pairs alone use it (not the v3/v4 copies) */
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
            F(gb_clip_values)(g, n, sh, t);
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
#endif

static int F(gb_all_finite)(const T *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* ------------------------------------------------------------------ row reductions, 8 rows at a time
 * The per-row sums of the statistics (gb_row_stats, gb_row_sumsq and the rows of dW) end in
 * a chain of scalar additions, tail + lane 0 + ... + lane 7 in this order, one row after the
 * other. With AVX-512 (GCC) eight rows are reduced together: their lane vectors are transposed
 * (vector c = lane c of the eight rows) and the same additions run in the same order as
 * vector additions, one lane per row; the eight rows' accumulations are interleaved. Every
 * operation of a row is the one of the one-row code, so the results are the same bits. The
 * functions return the first row they left (r1 but for fewer than 8 rows at the end). */
#ifndef GB_TRANSPOSE8
/* v = the 8 x 8 transpose of r (8 vectors of 8 lanes, any lane type; ti: the index vector of
 * that lane width) by three rounds of two-vector shuffles (GCC); t, u: scratch arrays of 8 */
#define GB_TRANSPOSE8(r, t, u, v, ti)                                                           \
    do {                                                                                        \
        for (int q_ = 0; q_ < 8; q_ += 2) {                                                     \
            t[q_] = __builtin_shuffle(r[q_], r[q_ + 1], (ti){0, 8, 2, 10, 4, 12, 6, 14});       \
            t[q_ + 1] = __builtin_shuffle(r[q_], r[q_ + 1], (ti){1, 9, 3, 11, 5, 13, 7, 15});   \
        }                                                                                       \
        for (int q_ = 0; q_ < 8; q_ += 4)                                                       \
            for (int o_ = 0; o_ < 2; o_++) {                                                    \
                u[q_ + o_] = __builtin_shuffle(t[q_ + o_], t[q_ + o_ + 2], (ti){0, 1, 8, 9, 4, 5, 12, 13});     \
                u[q_ + o_ + 2] = __builtin_shuffle(t[q_ + o_], t[q_ + o_ + 2], (ti){2, 3, 10, 11, 6, 7, 14, 15}); \
            }                                                                                   \
        for (int o_ = 0; o_ < 4; o_++) {                                                        \
            v[o_] = __builtin_shuffle(u[o_], u[o_ + 4], (ti){0, 1, 2, 3, 8, 9, 10, 11});        \
            v[o_ + 4] = __builtin_shuffle(u[o_], u[o_ + 4], (ti){4, 5, 6, 7, 12, 13, 14, 15});  \
        }                                                                                       \
    } while (0)
#endif
#if defined(GB_HAVE_VEC) && GB_VL == 8 && !defined(__clang__)
/* tail[r] + acc[r][0] + acc[r][1] + ... + acc[r][7], in this order, for r = 0..7 */
static GB_AINLINE gb_vd8 F(gb_lanesum8)(const gb_vd8 r[8], gb_vd8 tail) {
    typedef int64_t ti __attribute__((vector_size(64)));
    gb_vd8 t[8], u[8], v[8];
    GB_TRANSPOSE8(r, t, u, v, ti);
    gb_vd8 out = tail;
    for (int c = 0; c < 8; c++) out += v[c];
    return out;
}

/* out[r] = gb_sumsq_row(x + r N, N, 1, 1) for rows r of [r0, r1), 8 at a time */
static int64_t F(gb_sumsq_rows8)(const T *x, int64_t r0, int64_t r1, int64_t N, double *out) {
    int64_t r = r0;
    for (; r + 8 <= r1; r += 8) {
        const T *xr = x + r * N;
        gb_vd8 acc[8];
        double tl[8];
        int64_t j = 0;
        for (int q = 0; q < 8; q++) acc[q] = (gb_vd8){0};
        for (; j + 8 <= N; j += 8)
            for (int q = 0; q < 8; q++) {
                const gb_vd8 v = F(gb_load8)(xr + q * N + j);
                acc[q] += v * v;
            }
        for (int q = 0; q < 8; q++) {
            double s = 0;
            for (int64_t jj = j; jj < N; jj++) {
                const double v = (double)xr[q * N + jj];
                s += v * v;
            }
            tl[q] = s;
        }
        gb_vd8 tail, sum;
        memcpy(&tail, tl, sizeof tail);
        sum = F(gb_lanesum8)(acc, tail);
        memcpy(out + r, &sum, sizeof sum);
    }
    return r;
}

/* gb_row_stats of rows [r0, r1), 8 at a time: sum, squared deviations from the row's mean,
 * finiteness */
static int64_t F(gb_row_stats8)(const T *h, int64_t r0, int64_t r1, int64_t N, double *rsum, double *rm2,
                                unsigned char *rbad) {
    int64_t r = r0;
    for (; r + 8 <= r1; r += 8) {
        const T *hr = h + r * N;
        gb_vd8 acc[8], tail, sum, m2;
        double tl[8], mean[8];
        int64_t j = 0, j8;
        for (int q = 0; q < 8; q++) acc[q] = (gb_vd8){0};
        for (; j + 8 <= N; j += 8)
            for (int q = 0; q < 8; q++) acc[q] += F(gb_load8)(hr + q * N + j);
        j8 = j;
        for (int q = 0; q < 8; q++) {
            double s = 0;
            for (int64_t jj = j8; jj < N; jj++) s += (double)hr[q * N + jj];
            tl[q] = s;
        }
        memcpy(&tail, tl, sizeof tail);
        sum = F(gb_lanesum8)(acc, tail);
        const gb_vd8 mv = sum / (double)N; /* one rounded division per lane, as s / N */
        memcpy(mean, &mv, sizeof mean);
        for (int q = 0; q < 8; q++) acc[q] = (gb_vd8){0};
        for (j = 0; j + 8 <= N; j += 8)
            for (int q = 0; q < 8; q++) {
                const gb_vd8 d = F(gb_load8)(hr + q * N + j) - mean[q];
                acc[q] += d * d;
            }
        for (int q = 0; q < 8; q++) {
            double s = 0;
            for (int64_t jj = j8; jj < N; jj++) {
                const double d = (double)hr[q * N + jj] - mean[q];
                s += d * d;
            }
            tl[q] = s;
        }
        memcpy(&tail, tl, sizeof tail);
        m2 = F(gb_lanesum8)(acc, tail);
        memcpy(rsum + r, &sum, sizeof sum);
        memcpy(rm2 + r, &m2, sizeof m2);
        for (int q = 0; q < 8; q++) rbad[r + q] = !isfinite(sum[q]) && !F(gb_all_finite)(hr + q * N, N);
    }
    return r;
}
#else
static int64_t F(gb_sumsq_rows8)(const T *x, int64_t r0, int64_t r1, int64_t N, double *out) {
    (void)x, (void)r1, (void)N, (void)out;
    return r0;
}
static int64_t F(gb_row_stats8)(const T *h, int64_t r0, int64_t r1, int64_t N, double *rsum, double *rm2,
                                unsigned char *rbad) {
    (void)h, (void)r1, (void)N, (void)rsum, (void)rm2, (void)rbad;
    return r0;
}
#endif

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

/* BLAS for this width, or NULL: the own kernels */
static GEMM_FN F(gb_pick_gemm)(const gb_opts *opts, int64_t N) {
    return gb_blas_for(opts, N, sizeof(T) == sizeof(float)) ? opts->GEMM_FIELD : NULL;
}

/* The first of thread tid's rows among n: blocks of 4 rows (the row tile of gb_gemm_own), so
 * that every row is computed by the same tile whatever the thread count (a 1-row and a 4-row
 * tile may contract a*b + c differently); the last block, maybe partial, is the same for all. */
static inline int64_t F(gb_part)(int64_t n, int tid, int nth) {
    return tid >= nth ? n : (n * tid / nth) / 4 * 4;
}

/* The options of icfg and fcfg (gradbench.h layouts), read once per call */
typedef struct {
    int act, bn, rescale, clip;
    int64_t k;
    double param, alpha, eps, thr, c;
} F(gb_cfg);

static F(gb_cfg) F(gb_read_cfg)(const int64_t *icfg, const double *fcfg) {
    F(gb_cfg) c;
    c.act = (int)icfg[GB_I_ACT];
    c.bn = icfg[GB_I_BN] != 0;
    c.rescale = icfg[GB_I_RESCALE_FWD] != 0;
    c.clip = (int)icfg[GB_I_CLIP];
    c.k = icfg[GB_I_RESIDUAL];
    c.param = fcfg[GB_F_ACT_PARAM];
    c.alpha = fcfg[GB_F_RES_SCALE];
    c.eps = fcfg[GB_F_BN_EPS];
    c.thr = fcfg[GB_F_SAT];
    c.c = fcfg[GB_F_CLIP];
    return c;
}

/* A driver's start: the checked options, BLAS or not, and the thread count */
static int F(gb_setup)(const gb_stack_arrays *a, const gb_opts *opts, F(gb_cfg) *cfg,
                       GEMM_FN *gemm, int *nth) {
    const int rc = F(gb_check_cfg)(a->icfg, a->L, a->B, a->N);
    if (rc) return rc;
    *cfg = F(gb_read_cfg)(a->icfg, a->fcfg);
    *gemm = F(gb_pick_gemm)(opts, a->N);
    *nth = gb_stack_threads(opts, a->L, a->B, a->N, sizeof(T) == sizeof(float)); /* dispatch.c */
    return GB_OK;
}

/* ---------------------------------------------------------------- forward */
/* the forward's slots per thread (int64, one cache line): the largest absolute exponent of the
 * thread's non-zero rows of h_{l+1} (GB_NOEXP_F: none) and of all its rows */
#ifndef GB_FSLOT
#define GB_FSLOT 8
#define GB_NOEXP_F INT64_MIN
#endif

/* The forward's rescue (reference.rescue_forward_rows): GELU and swish, whose phi itself
 * underflows for finite z (GELU below z = -37.5). Where a row's largest |h| (mantissas at the
 * row's exponent f) lies below GB_RESCUE_BELOW and some unit below GB_RESCUE_X, where |phi| is
 * just above it, every unit of the row is taken from ell = ln|phi(z 2^f)| (gb_log_phi_f64; the
 * linear regime keeps its exact mantissa, ell = ln|h| + f ln 2), k = floor(max ell / ln2),
 * h = sign exp(ell - k ln2), and the row's exponent becomes k. Each row decides alone: no
 * barrier. */
/* ELU and SELU (activations.LIMIT_RESCUE): rows whose |h| are subnormal at f are rescued too, their
 * limit -alpha 2^-f having lost its digits there; their positive side, lambda x, is linear */
static inline int F(gb_limit_rescue)(int act) { return act == GB_ELU || act == GB_SELU; }

static inline double F(gb_rescue_x)(int act, int f32) { /* activations.RESCUE_X */
    if (F(gb_limit_rescue)(act)) return -1.0;
    return act == GB_GELU ? (f32 ? -11.0 : -35.0) : (f32 ? -65.0 : -620.0);
}

/* the tail test: some z 2^f <= RESCUE_X, as z <= RESCUE_X 2^-f (one product per entry) */
static int F(gb_fwd_deep)(const T *z, int64_t n, double thr) {
    int deep = 0;
    for (int64_t i = 0; i < n; i++) deep |= (double)z[i] <= thr;
    return deep;
}

static inline double F(gb_fwd_ell)(T h, T z, const gb_scaled *s, int64_t f, double *sgn, int *lin) {
    const double x = ldexp((double)z, s->f);
    *lin = fabs(x) < s->tiny || (x > 0 && F(gb_limit_rescue)(s->act)); /* ELU, SELU: lambda x */
    if (*lin) {
        *sgn = 1.0;
        return (h != 0 ? log(fabs((double)h)) : -INFINITY) + (double)f * GB_LN2;
    }
    return gb_log_phi_f64(x, s->act, s->p, sgn);
}

static double F(gb_fwd_ell_max)(const T *h, const T *z, int64_t n, const gb_scaled *s, int64_t f) {
    double m = -INFINITY, sgn;
    int lin;
    for (int64_t i = 0; i < n; i++) {
        const double ell = F(gb_fwd_ell)(h[i], z[i], s, f, &sgn, &lin);
        m = ell > m ? ell : m;
    }
    return m;
}

/* k = floor(top / ln 2), top the row's largest ell */
static void F(gb_fwd_rescue_rows)(T *h, const T *z, int64_t n, const gb_scaled *s, int64_t f, double top,
                                  int64_t k) {
    const double rem = gb_log_rem(top, k);
    double sgn;
    int lin;
    for (int64_t i = 0; i < n; i++) {
        const double ell = F(gb_fwd_ell)(h[i], z[i], s, f, &sgn, &lin);
        h[i] = lin ? (T)ldexp((double)h[i], gb_clamp_exp(f - k)) : (T)(sgn * exp((ell - top) + rem));
    }
}

/* The forward's rescue of one row (reference.rescue_forward_rows: rescue_forward on the 1 x N
 * block at the row's exponent f, s set for f): a row whose largest |h| (NaN: not looked at) lies
 * below GB_RESCUE_BELOW with some unit beyond GB_RESCUE_X is taken from ln|phi|; returns the
 * row's exponent (f when it is not rescued). A row decides alone. h, z (N,) */
static int64_t F(gb_fwd_rescue_row)(T *h, const T *z, int64_t N, const gb_scaled *s, int64_t f, int f32,
                                    double m, int *rescued) {
    /* m: max|h| (gb_absmax(h, N, 1): NaN for a row with a NaN entry) */
    *rescued = 0;
    if (!isfinite(m)) return f;
    if (m > 0) {
        int em;
        uint64_t mb;
        memcpy(&mb, &m, sizeof mb);
        if (mb >> 52) /* normal: frexp's exponent from the bits (no libm call per row) */
            em = (int)(mb >> 52) - 1022;
        else
            frexp(m, &em);
        /* ELU, SELU: a row whose |h| are subnormal at f is looked at too */
        if (em + f > GB_RESCUE_BELOW_EXP(f32) && !(F(gb_limit_rescue)(s->act) && m < (f32 ? (double)FLT_MIN : DBL_MIN)))
            return f;
    }
    if (!F(gb_fwd_deep)(z, N, ldexp(F(gb_rescue_x)(s->act, f32), gb_clamp_exp(-f)))) return f;
    const double M = F(gb_fwd_ell_max)(h, z, N, s, f);
    if (!(M >= GB_RESCUE_LN_MIN && M < INFINITY)) return f;
    const int64_t kf = (int64_t)floor(M / GB_LN2);
    F(gb_fwd_rescue_rows)(h, z, N, s, f, M, kf);
    *rescued = 1;
    return kf;
}

typedef struct {
    const gb_stack_arrays *a;
    GEMM_FN gemm;
    F(gb_cfg) cfg;
    T *wt[3];             /* W^T of layers l, l+1, l+2 in wt[l % 3] (own kernels): (nth,N,N), a copy
                             per thread (own_wt), or (N,N) shared, column shares by thread */
    int own_wt;           /* every thread transposes the whole W into its own copy (GB_OWN_WT_MAX_N) */
    gb_progress *tdone;   /* (nth) shared W^T, per thread: the last layer whose share of W^T it wrote */
    gb_progress *rdone;   /* (nth) shared W^T, per thread: the last layer whose W^T it has read */
    T *zb;                /* (B,N) pre-normalisation z under batch norm, then y */
    T *bnq;               /* (3,nq,N) batch norm: the blocks' parts of the mean of z_l (2) and
                             their sums of squared deviations (1) */
    T *bnm;               /* (nth,2,N) batch norm, per thread: the layer's mean and rstd */
    double *rsum, *rm2;   /* (L,B) per row of h_{l+1}: sum, sum of squared deviations from its mean */
    int64_t *rsat;        /* (L,B) per row: saturated entries of z_l */
    unsigned char *rbad;  /* (L,B) per row: h_{l+1} has a non-finite entry */
    unsigned char *dead;  /* (L,nth,N) per thread: z_l <= 0 on all its rows */
    int64_t *eslot;       /* (2,nth,GB_FSLOT) per thread: the largest absolute exponent of its
                             non-zero rows of h_{l+1} and of all its rows (layer parity) */
    int64_t *gabs;        /* (B,) the rows' absolute exponents of h_{l+1} (rescaling) */
    T *rmax;              /* (B,) the rows' max|h_{l+1}| (rescaling) */
    unsigned char *rnan;  /* (B,) the row of h_{l+1} has a NaN entry (rescaling) */
    gb_scaled_rows *scr;  /* (nth) per thread: its rows' activation setups of the layer */
    unsigned char *gnz;   /* (B,) the row of h_{l+1} is not all zero (rescaling) */
    int frescue;          /* the forward's rescue (GELU, swish, ELU, SELU with rescaling) */
    T *bsr;               /* (nth,N) per thread: a row's bias b 2^-f (rescaling with biases) */
    unsigned char *qdone; /* (L,B) the row's statistics taken at the layer's exponent already (a
                             row of h_{l+1} raised to the next bias's floor: frow changed after) */
    int nth;
} F(gb_fwd);

#ifndef GB_STATS_AT_DEFINED /* not per type */
#define GB_STATS_AT_DEFINED
/* A row's statistics (its sum and squared deviations) at the layer's exponent: times 2^q and 4^q
 * (q: the row's exponent relative to the layer's; exact while normal) */
static inline void gb_stats_at(double *rsum, double *rm2, int64_t q) {
    if (q < 0 && q >= -511) { /* 2^q and its square normal doubles */
        const double p = gb_pow2_f64((int)q);
        *rsum *= p;
        *rm2 *= p * p;
    } else if (q) {
        *rsum = gb_ldexp_d(*rsum, gb_clamp_exp(q));
        *rm2 = gb_ldexp_d(*rm2, 2 * gb_clamp_exp(q));
    }
}
#endif

/* reference.bias_floor of a bias with a nonzero entry: the exponent of max|b| less T_MAX_EXP - 3 */
static int64_t F(gb_bias_floor)(const T *b, int64_t N) {
    double m = 0;
    for (int64_t j = 0; j < N; j++) m = fmax(m, fabs((double)b[j]));
    int e;
    frexp(m, &e);
    return (int64_t)e - (T_MAX_EXP - 3);
}

/* z rows [0, m) (row r at the absolute exponent f + q[r]) += their bias at that exponent, b
 * 2^-(f + q[r]) (reference.bias_rows: ldexp's value, rounded once where subnormal, +-inf where it
 * overflows: gb_scale_into); then reference.dense_fix on a row that is not finite, with its bias
 * (the product ran without it). bs (N,) scratch */
static void F(gb_add_bias_rows)(T *z, const T *h, const T *W, const T *b, const int64_t *q, int64_t f,
                                T *bs, int64_t m, int64_t N) {
    for (int64_t r = 0; r < m; r++) {
        T *zr = z + r * N;
        F(gb_scale_into)(bs, b, N, (int)gb_clamp_exp(-(f + q[r])));
        for (int64_t j = 0; j < N; j++) zr[j] += bs[j];
        if (!F(gb_finite_block)(zr, N)) F(gb_dense_fix)(zr, h + r * N, W, bs, 1, N);
    }
}

/* W^T rows [j0, j1) of one layer: wt[j][i] = W[i][j]. Whole 8 x 8 blocks by three rounds of
 * two-vector shuffles (GCC), the rest element by element. */
static void F(gb_transpose_rows)(T *wt, const T *W, int64_t N, int64_t j0, int64_t j1) {
    int64_t jb = j0;
#if defined(GB_HAVE_VEC) && !defined(__clang__) && defined(__AVX__) && !defined(__AVX512F__)
    /* float64 under AVX2: 4 x 4 blocks of one register per row (an 8 x 8 block is 8 vectors of
     * 64 bytes, which GCC 12 copied lane by lane through the stack: 5.4k instructions per N = 32
     * layer, 1.0k by these blocks) */
    if (sizeof(T) == sizeof(double)) {
        typedef T t4 __attribute__((vector_size(4 * sizeof(T))));
        typedef TINT i4 __attribute__((vector_size(4 * sizeof(T))));
        const int64_t N4 = N / 4 * 4;
        for (; jb + 4 <= j1; jb += 4) {
            for (int64_t ib = 0; ib < N4; ib += 4) {
                t4 r0, r1, r2, r3; /* named, not an array: GCC kept arrays in memory */
                memcpy(&r0, W + ib * N + jb, sizeof(t4));
                memcpy(&r1, W + (ib + 1) * N + jb, sizeof(t4));
                memcpy(&r2, W + (ib + 2) * N + jb, sizeof(t4));
                memcpy(&r3, W + (ib + 3) * N + jb, sizeof(t4));
                const t4 t0 = __builtin_shuffle(r0, r1, (i4){0, 4, 2, 6});
                const t4 t1 = __builtin_shuffle(r0, r1, (i4){1, 5, 3, 7});
                const t4 t2 = __builtin_shuffle(r2, r3, (i4){0, 4, 2, 6});
                const t4 t3 = __builtin_shuffle(r2, r3, (i4){1, 5, 3, 7});
                r0 = __builtin_shuffle(t0, t2, (i4){0, 1, 4, 5});
                r1 = __builtin_shuffle(t1, t3, (i4){0, 1, 4, 5});
                r2 = __builtin_shuffle(t0, t2, (i4){2, 3, 6, 7});
                r3 = __builtin_shuffle(t1, t3, (i4){2, 3, 6, 7});
                memcpy(wt + jb * N + ib, &r0, sizeof(t4));
                memcpy(wt + (jb + 1) * N + ib, &r1, sizeof(t4));
                memcpy(wt + (jb + 2) * N + ib, &r2, sizeof(t4));
                memcpy(wt + (jb + 3) * N + ib, &r3, sizeof(t4));
            }
            for (int64_t j = jb; j < jb + 4; j++)
                for (int64_t i = N4; i < N; i++) wt[j * N + i] = W[i * N + j];
        }
    } else
#endif
#if defined(GB_HAVE_VEC) && !defined(__clang__)
    {
        typedef F(gb_t8) tv; /* 8 lanes of T: one row of a block */
        typedef TINT ti __attribute__((vector_size(8 * sizeof(T))));
        const int64_t N8 = N / 8 * 8;
        for (; jb + 8 <= j1; jb += 8) {
            for (int64_t ib = 0; ib < N8; ib += 8) {
                tv r[8], t[8], u[8], v[8];
                for (int q = 0; q < 8; q++) memcpy(&r[q], W + (ib + q) * N + jb, sizeof(tv));
                GB_TRANSPOSE8(r, t, u, v, ti);
                for (int q = 0; q < 8; q++) memcpy(wt + (jb + q) * N + ib, &v[q], sizeof(tv));
            }
            for (int64_t j = jb; j < jb + 8; j++)
                for (int64_t i = N8; i < N; i++) wt[j * N + i] = W[i * N + j];
        }
    }
#endif
    for (; jb < j1; jb++)
        for (int64_t i = 0; i < N; i++) wt[jb * N + i] = W[i * N + jb];
}

/* Per-row statistics of h rows [r0, r1): sum, squared deviations from the row's mean, finiteness */
static void F(gb_row_stats)(const T *h, int64_t r0, int64_t r1, int64_t N, double *rsum, double *rm2,
                            unsigned char *rbad) {
    r0 = F(gb_row_stats8)(h, r0, r1, N, rsum, rm2, rbad); /* 8 rows at a time (AVX-512), the rest below */
    for (int64_t r = r0; r < r1; r++) { /* 8 lanes (j = c mod 8), then the tail and the lanes in order */
        const T *hr = h + r * N;
        double ls[8] = {0}, lm[8] = {0}, s = 0, m2 = 0;
        int64_t j = 0;
#if defined(GB_HAVE_VEC) && GB_VL == 4 /* two vectors of 4 lanes (see gb_sumsq_row) */
        gb_vd a0 = {0}, a1 = {0};
        for (; j + 8 <= N; j += 8) {
            a0 += F(gb_loadv)(hr + j);
            a1 += F(gb_loadv)(hr + j + 4);
        }
        memcpy(ls, &a0, sizeof a0);
        memcpy(ls + 4, &a1, sizeof a1);
#elif defined(GB_HAVE_VEC)
        gb_vd8 acc = {0};
        for (; j + 8 <= N; j += 8) acc += F(gb_load8)(hr + j);
        memcpy(ls, &acc, sizeof ls);
#endif
        for (; j < N; j++) s += (double)hr[j];
        for (int c = 0; c < 8; c++) s += ls[c];
        const double mean = s / (double)N;
        j = 0;
#if defined(GB_HAVE_VEC) && GB_VL == 4
        a0 = a1 = (gb_vd){0};
        for (; j + 8 <= N; j += 8) {
            const gb_vd d0 = F(gb_loadv)(hr + j) - mean, d1 = F(gb_loadv)(hr + j + 4) - mean;
            a0 += d0 * d0;
            a1 += d1 * d1;
        }
        memcpy(lm, &a0, sizeof a0);
        memcpy(lm + 4, &a1, sizeof a1);
#elif defined(GB_HAVE_VEC)
        acc = (gb_vd8){0};
        for (; j + 8 <= N; j += 8) {
            const gb_vd8 d = F(gb_load8)(hr + j) - mean;
            acc += d * d;
        }
        memcpy(lm, &acc, sizeof lm);
#endif
        for (; j < N; j++) {
            const double d = (double)hr[j] - mean;
            m2 += d * d;
        }
        for (int c = 0; c < 8; c++) m2 += lm[c];
        rsum[r] = s;
        rm2[r] = m2;
        rbad[r] = !isfinite(s) && !F(gb_all_finite)(hr, N);
    }
}

#ifndef GB_JUDGE_EVERY
#define GB_JUDGE_EVERY 16
#endif
/* Where the forward gives every thread its own copy of W^T (N <= GB_OWN_WT_MAX_N and
 * B >= GB_OWN_WT_MIN_B; elsewhere column shares of one copy). Own copies spare every layer the
 * other core's half of W^T and the waits for it, and cost (nth - 1) more transposes: worth it
 * while three copies per thread stay in L2 and the batch is large enough to pay for them.
 * Measured, Zen 4, two threads, forward only, own against shared (ms, 2 runs each): N = 64,
 * B = 64: 12.4-12.7 / 13.4-13.9; N = 96, B = 32: 7.9-8.0 / 8.2-8.7; N = 128, B = 128:
 * 33.2-33.6 / 34.5-34.7; N = 128, B = 64: 20.1-20.3 / 20.0; N = 128, B = 16: 9.8-9.9 / 9.5;
 * N = 192, B = 64: 25.3-25.4 / 23.6-23.7; N = 256, B = 16: 15.5-16.3 / 12.3-13.1; N = 384,
 * B = 32: 48.0 / 36.3. */
#ifndef GB_OWN_WT_MAX_N
#define GB_OWN_WT_MAX_N 128
#endif
#ifndef GB_OWN_WT_MIN_B
#define GB_OWN_WT_MIN_B 32
#endif

static void F(gb_forward_member)(void *arg, int tid, int nth, gb_barrier *bar) {
    F(gb_fwd) *st = arg;
    const gb_stack_arrays *a = st->a;
    const int64_t L = a->L, B = a->B, N = a->N, BN = B * N, NN = N * N, k = st->cfg.k;
    const T *W = a->W, *b = a->b, *gamma = a->gamma, *beta = a->beta, *slope = a->slope;
    T *H = a->H, *Z = a->Z;
    int64_t *fexp = a->fexp, *frow = a->frow;
    const int f32 = sizeof(T) == sizeof(float), rescale = st->cfg.rescale;
    int64_t r0 = F(gb_part)(B, tid, nth), r1 = F(gb_part)(B, tid + 1, nth), nr = r1 - r0;
    int64_t j0 = F(gb_part)(N, tid, nth), j1 = F(gb_part)(N, tid + 1, nth);
    int sense = 0;
    /* exponent of h_l (every thread keeps its copy): row i of h_l at f + frow[l, i] */
    int64_t f = fexp[0];
    int64_t fg = f;      /* exponent of the current residual group's input h (= fexp of its layer) */
    /* W^T without a barrier, one of two ways (st->own_wt, chosen per call: GB_OWN_WT_MAX_N).
     * Own copies: every thread transposes the whole W_{l+2} into its own buffers in layer l (W_0
     * and W_1 first) and waits for nobody. Shared: each thread transposes its column share of
     * W_{l+2} and publishes it in tdone; a thread waits for every share of W_l before layer l
     * (done a layer earlier: a thread may run a layer ahead of another without waiting), and,
     * before writing W_{l+2}^T into wt[(l+2) % 3], for every thread to have read that buffer's
     * W_{l-1}^T (rdone). The rows of a thread are independent of the others' in the forward
     * (batch norm: two barriers, after the blocks' sums of its mean and of its variance), so
     * the only barrier is the rescaling's. */
    const int own = st->own_wt;
    const int64_t off = own ? tid * NN : 0; /* this thread's copy, or the shared one */
    T *wt[3] = {st->wt[0] + off, st->wt[1] + off, st->wt[2] + off};
    if (!st->gemm) {
        for (int64_t q = 0; q < GB_MIN(2, L); q++)
            F(gb_transpose_rows)(wt[q], W + q * NN, N, own ? 0 : j0, own ? N : j1);
        if (!own) gb_progress_set(bar, &st->tdone[tid], GB_MIN(2, L) - 1);
    }
    /* Work the layers' barriers can wait on (rescaling: one a layer, where the first to arrive
     * spun for the last): the own copy of W^T up to W_{l+2} (tw: the next to write; W_l^T is
     * written before layer l's product at the latest) and the row statistics of the thread's
     * rows of the layer before (ps: the layer, its rows ps0 to ps1; written at the next barrier
     * at the latest). Same values, in a wait that was spent spinning. */
    int64_t tw = own && !st->gemm ? GB_MIN(2, L) : L, ps = -1, ps0 = 0, ps1 = 0;
#define GB_FWD_STATS() (F(gb_row_stats)(H + (ps + 1) * BN, ps0, ps1, N, st->rsum + ps * B, st->rm2 + ps * B, \
                                        st->rbad + ps * B), ps = -1)
#define GB_FWD_WT() (F(gb_transpose_rows)(wt[tw % 3], W + tw * NN, N, 0, N), tw++)
    for (int64_t l = 0; l < L; l++) {
        if (gb_team_solo(tid, &nth, &bar, &sense)) { /* the rest on thread 0 */
            if (ps >= 0) GB_FWD_STATS();
            return;
        }
        while (tw <= l) GB_FWD_WT();
        r0 = F(gb_part)(B, tid, nth), r1 = F(gb_part)(B, tid + 1, nth), nr = r1 - r0;
        j0 = F(gb_part)(N, tid, nth), j1 = F(gb_part)(N, tid + 1, nth);
        if (k && l % k == 0) fg = f; /* h_l starts a group: its skip is added at this exponent */
        const T *wtl = wt[l % 3]; /* W_l^T */
        if (!st->gemm && !own) gb_progress_wait(bar, st->tdone, nth, l); /* every share of W_l^T written */
        const double p = st->cfg.act == GB_PRELU ? (double)slope[l] : st->cfg.param;
        /* PReLU: 1 % of the largest |phi'| = max(1, |slope_l|) of the slope that runs, rounded to T
         * (abi.saturation_threshold); the others: fcfg[F_SAT] */
        const double thr = st->cfg.act == GB_PRELU ? (double)(T)(0.01 * fmax(1.0, fabs(p))) : st->cfg.thr;
        /* the scaled activation of each row at its own exponent f + frow[l, r] (gb_scaled_row) */
        const gb_scaled sc = gb_scaled_init(st->cfg.act, p, rescale, f, f32);
        gb_scaled_rows_reset(&st->scr[tid]);
        const int64_t *ql = frow + l * B;
        T *h = H + l * BN + r0 * N, *hn = H + (l + 1) * BN + r0 * N, *Zl = Z + l * BN;
        /* rescaling with biases (unbounded activations): each row's bias at its exponent, the
         * rows first brought up to the bias's floor, rows of zeros put there (reference.raise_rows) */
        const int rbias = rescale && !st->cfg.bn && F(gb_nonzero)(b + l * N, N);
        if (rbias) {
            const int64_t ra = st->gemm ? 0 : r0, rb = st->gemm ? B : r1; /* BLAS: one thread, every row */
            const int64_t floor = F(gb_bias_floor)(b + l * N, N);
            int64_t *qw = frow + l * B;
            for (int64_t r = ra; r < rb; r++) {
                const int64_t d = f + qw[r] - floor;
                if (d == 0 || (d > 0 && F(gb_nonzero)(H + l * BN + r * N, N))) continue;
                if (ps >= 0) GB_FWD_STATS(); /* the layer before's statistics read these rows */
                if (l > 0) { /* ... taken at the layer's exponent with the row's own, not the raised one */
                    gb_stats_at(st->rsum + (l - 1) * B + r, st->rm2 + (l - 1) * B + r, qw[r]);
                    st->qdone[(l - 1) * B + r] = 1;
                }
                if (d < 0) F(gb_scale_down_into)(H + l * BN + r * N, H + l * BN + r * N, N, (int)gb_clamp_exp(d));
                qw[r] = floor - f;
            }
        }
        unsigned char *dead = st->dead + (l * st->nth + tid) * N; /* all 1 for a thread that left */
        if (st->gemm || st->cfg.bn || N > GB_KC) { /* BLAS (one thread), batch norm or a product
            * of packed panels (N > GB_KC: packed once for all the thread's rows, not for each block
            * of 4): pass by pass, z by rows, the batch statistics from the blocks' sums of every
            * thread's rows (two barriers), the activation by rows */
            T *zz = st->cfg.bn ? st->zb : Zl;
            if (rbias) { /* rows at their own exponents: the product, then each row's bias */
                if (st->gemm)
                    F(gb_dense_forward_ctx)(st->gemm, NULL, zz, h, W + l * NN, NULL, B, N);
                else
                    F(gb_gemm_own)(zz + r0 * N, h, N, 1, wtl, NULL, nr, N, N);
                const int64_t a0 = st->gemm ? 0 : r0;
                F(gb_add_bias_rows)(zz + a0 * N, H + l * BN + a0 * N, W + l * NN, b + l * N, ql + a0, f,
                                    st->bsr + tid * N, st->gemm ? B : nr, N);
            } else if (st->gemm)
                F(gb_dense_forward_ctx)(st->gemm, NULL, zz, h, W + l * NN, b + l * N, B, N);
            else {
                F(gb_gemm_own)(zz + r0 * N, h, N, 1, wtl, b + l * N, nr, N, N);
                F(gb_dense_fix)(zz + r0 * N, h, W + l * NN, b + l * N, nr, N);
            }
            if (st->cfg.bn) { /* the thread's rows, the statistics through the blocks' sums (gb_bn_mean_blocks) */
                const int64_t nq = GB_BN_NQ(B);
                T *mean = st->bnm + (size_t)tid * 2 * N, *rstd = mean + N, *sq = st->bnq + 2 * nq * N;
                F(gb_bn_mean_blocks)(st->bnq, zz, r0, r1, N);
                gb_barrier_wait(bar, &sense); /* every block's part of the mean of z_l */
                F(gb_bn_mean)(mean, st->bnq, B, N);
                F(gb_bn_var_blocks)(sq, zz, mean, r0, r1, N); /* (another buffer: the sums are being read) */
                gb_barrier_wait(bar, &sense); /* every block's squared deviations */
                F(gb_bn_total)(rstd, sq, nq, N);
                if (F(gb_bn_rstd)(rstd, zz, mean, st->cfg.eps, B, N)) /* a unit's squares overflowed: */
                    gb_barrier_wait(bar, &sense); /* all rows of z read before any is normalised in place */
                for (int64_t j = j0; j < j1; j++) { /* every thread has them: each writes its share */
                    ((T *)a->bn_mean)[l * N + j] = mean[j];
                    ((T *)a->bn_rstd)[l * N + j] = rstd[j];
                }
                F(gb_bn_normalise)(zz, Zl, zz, mean, rstd, gamma + l * N, beta + l * N, r0, r1, N);
            }
            for (int64_t r = r0; r < r1; r++)
                st->rsat[l * B + r] = F(gb_act_forward_row)(hn + (r - r0) * N, zz + r * N, N,
                                                            gb_scaled_row(&st->scr[tid], &sc, f + ql[r]), thr, dead);
        } else { /* the activation as the epilogue of every block of 4 rows, while z is in L1 */
            gb_pf pf = {0}; /* W_{l+2} (transposed below), the next layer's z and h rows */
            if (l + 1 < L) {
                if (l + 2 < L) gb_pf_add(&pf, W + (l + 2) * NN, NN * (int64_t)sizeof(T), 0);
                gb_pf_add(&pf, Zl + BN + r0 * N, nr * N * (int64_t)sizeof(T), 1);
                if (l + 2 <= L) gb_pf_add(&pf, hn + BN, nr * N * (int64_t)sizeof(T), 1);
            }
            const int64_t nb = (nr + 3) / 4;
            for (int64_t q = 0; q < nr; q += 4) {
                const int64_t m = GB_MIN(4, nr - q);
                gb_pf_part(&pf, q / 4, nb);
                T *zq = Zl + (r0 + q) * N;
                if (rbias) {
                    F(gb_gemm_own)(zq, h + q * N, N, 1, wtl, NULL, m, N, N);
                    F(gb_add_bias_rows)(zq, h + q * N, W + l * NN, b + l * N, ql + r0 + q, f, st->bsr + tid * N,
                                        m, N);
                } else {
                    F(gb_gemm_own)(zq, h + q * N, N, 1, wtl, b + l * N, m, N, N);
                    F(gb_dense_fix)(zq, h + q * N, W + l * NN, b + l * N, m, N);
                }
                for (int64_t r = q; r < q + m; r++)
                    st->rsat[l * B + r0 + r] = F(gb_act_forward_row)(hn + r * N, Zl + (r0 + r) * N, N,
                                                                     gb_scaled_row(&st->scr[tid], &sc, f + ql[r0 + r]),
                                                                     thr, dead);
            }
        }
        if (!st->gemm && own) {
            if (!rescale || !bar) /* no barrier at this layer to wait on */
                while (tw <= l + 2 && tw < L) GB_FWD_WT();
        } else if (!st->gemm) {
            gb_progress_set(bar, &st->rdone[tid], l); /* done with W_l^T */
            if (l + 2 < L) {
                gb_progress_wait(bar, st->rdone, nth, l - 1); /* wt[(l+2) % 3] = wt[(l-1) % 3] free */
                F(gb_transpose_rows)(wt[(l + 2) % 3], W + (l + 2) * NN, N, j0, j1);
                gb_progress_set(bar, &st->tdone[tid], l + 2);
            }
        }
        int64_t fn = f;
        const int end = k && (l + 1) % k == 0;
        if (!rescale) { /* one exponent for every row: frow[l + 1] = 0 */
            if (end) /* fg, not fexp[l + 1 - k]: thread 0 may not have written it yet */
                fn = F(gb_add_aligned_impl)(hn, f, H + (l + 1 - k) * BN + r0 * N, fg, st->cfg.alpha, nr * N, -1);
            F(gb_row_stats)(H + (l + 1) * BN, r0, r1, N, st->rsum + l * B, st->rm2 + l * B, st->rbad + l * B);
            for (int64_t r = r0; r < r1; r++) frow[(l + 1) * B + r] = 0;
        } else { /* row by row (reference stack_forward): each row at its absolute exponent g */
            int64_t tnz = GB_NOEXP_F, tall = GB_NOEXP_F;
            const int64_t *qs = end ? frow + (l + 1 - k) * B : NULL; /* the skip's rows (h_{l+1-k}) */
            /* the rows as the activation left them (not at a group's end): their maxima at once */
            if (!end) F(gb_rows_absmax)(hn, nr, N, st->rmax + r0, st->rnan + r0);
            /* the skip add's rounding as one exponent per layer had it (gb_add_aligned_range) */
            const int fuse = f == fg || f - fg > T_MAX_EXP - 1 || fg - f > T_MAX_EXP - 1;
            for (int64_t r = r0; r < r1; r++) {
                T *hr = H + (l + 1) * BN + r * N;
                int64_t g = f + ql[r];
                if (end) { /* the skip added at the larger exponent; a row of zeros takes the other's */
                    const T *sr = H + (l + 1 - k) * BN + r * N;
                    int64_t es = fg + qs[r];
                    if (!F(gb_nonzero)(hr, N))
                        g = es;
                    else if (!F(gb_nonzero)(sr, N))
                        es = g;
                    g = F(gb_add_aligned_impl)(hr, g, sr, es, st->cfg.alpha, N, fuse);
                }
                int fresh = end; /* the row changed since gb_rows_absmax */
                if (!end && st->frescue) /* GELU, swish, ELU, SELU: the row's rescue (its own decision) */
                    g = F(gb_fwd_rescue_row)(hr, Zl + r * N, N, gb_scaled_row(&st->scr[tid], &sc, g), g, f32,
                                             st->rnan[r] ? (double)NAN : (double)st->rmax[r], &fresh);
                const T m = fresh ? F(gb_absmax)(hr, N, 0) : st->rmax[r]; /* normalised: max|row| in [0.5, 1) */
                g += F(gb_scale_pow2)(hr, N, m);
                const int nz = m > 0 || F(gb_nonzero)(hr, N); /* m = 0: a NaN entry is not zero */
                st->gabs[r] = g;
                st->gnz[r] = (unsigned char)nz;
                if (nz && g > tnz) tnz = g;
                tall = g > tall ? g : tall;
            }
            int64_t *slot = st->eslot + (size_t)(l & 1) * nth * GB_FSLOT;
            slot[(size_t)tid * GB_FSLOT] = tnz;
            slot[(size_t)tid * GB_FSLOT + 1] = tall;
            if (ps >= 0) GB_FWD_STATS(); /* at most one layer's statistics pending */
            ps = l, ps0 = r0, ps1 = r1;
            if (!bar) /* alone: nothing to wait on, the rows still in L1 */
                GB_FWD_STATS();
            else if (!gb_barrier_arrive(bar, &sense)) { /* every thread's rows; meanwhile the pending work */
                while (!gb_barrier_passed(bar, sense) && (ps >= 0 || (tw <= l + 2 && tw < L))) {
                    if (ps >= 0)
                        GB_FWD_STATS();
                    else
                        GB_FWD_WT();
                }
                gb_barrier_finish(bar, sense);
            }
            /* the layer's exponent: the largest non-zero row's (all rows zero: the largest) */
            int64_t mz = GB_NOEXP_F, ma = GB_NOEXP_F;
            for (int t = 0; t < nth; t++) {
                const int64_t *sl = slot + (size_t)t * GB_FSLOT;
                mz = sl[0] > mz ? sl[0] : mz;
                ma = sl[1] > ma ? sl[1] : ma;
            }
            fn = mz != GB_NOEXP_F ? mz : ma;
            for (int64_t r = r0; r < r1; r++) frow[(l + 1) * B + r] = st->gnz[r] ? st->gabs[r] - fn : 0;
        }
        if (tid == 0) fexp[l + 1] = fn;
        f = fn;
        /* without batch norm or rescaling the forward has no barrier: one every GB_JUDGE_EVERY
         * layers, where the team is judged (csrc/team.c: a partner without a core of its own,
         * e.g. beside another library's spinning BLAS worker, makes the others wait for its
         * shares of W^T) and may go solo at the next layer */
        if (!rescale && !st->cfg.bn && (l + 1) % GB_JUDGE_EVERY == 0) gb_barrier_wait(bar, &sense);
    }
    if (ps >= 0) GB_FWD_STATS();
#undef GB_FWD_STATS
#undef GB_FWD_WT
}

/* The forward driver: the contract of reference.stack_forward (arrays: abi.FORWARD). */
int F(gb_stack_forward)(const gb_stack_arrays *a, const gb_opts *opts) {
    const int64_t L = a->L, B = a->B, N = a->N;
    F(gb_fwd) st;
    memset(&st, 0, sizeof st);
    st.a = a;
    int nth, rc = F(gb_setup)(a, opts, &st.cfg, &st.gemm, &nth);
    if (rc) return rc;
    st.nth = nth;
    const size_t LB = (size_t)(L * B);
    const int64_t own = opts ? opts->own_wt : 0;
    st.own_wt = nth > 1 && (own ? own > 0 : N <= GB_OWN_WT_MAX_N && B >= GB_OWN_WT_MIN_B);
    if (!st.gemm) { /* one block, kept by this thread between calls (workspace.c) */
        const size_t part = (sizeof(T) * (size_t)((st.own_wt ? nth : 1) * N * N) + 63) / 64 * 64;
        char *block = gb_workspace_take(3 * part);
        for (int q = 0; q < 3 && block; q++) st.wt[q] = (T *)(void *)(block + q * part);
    }
    st.tdone = F(gb_alloc)(sizeof(gb_progress) * (size_t)nth);
    st.rdone = F(gb_alloc)(sizeof(gb_progress) * (size_t)nth);
    if (st.cfg.bn) { /* z, the blocks' sums (GB_BN_ROWS rows each), the threads' mean and rstd */
        const int64_t nq = GB_BN_NQ(B);
        st.zb = F(gb_alloc)(sizeof(T) * (size_t)(B * N + 3 * nq * N + 2 * nth * N));
        st.bnq = st.zb ? st.zb + B * N : NULL;
        st.bnm = st.zb ? st.bnq + 3 * nq * N : NULL;
    }
    st.rsum = F(gb_alloc)(sizeof(double) * LB);
    st.rm2 = F(gb_alloc)(sizeof(double) * LB);
    st.rsat = F(gb_alloc)(sizeof(int64_t) * LB);
    st.rbad = F(gb_alloc)(LB);
    st.dead = F(gb_alloc)((size_t)(L * nth * N));
    st.eslot = F(gb_alloc)(sizeof(int64_t) * 2 * GB_FSLOT * (size_t)nth);
    st.gabs = F(gb_alloc)(sizeof(int64_t) * (size_t)B);
    st.gnz = F(gb_alloc)((size_t)B);
    st.rmax = F(gb_alloc)(sizeof(T) * (size_t)B);
    st.rnan = F(gb_alloc)((size_t)B);
    st.scr = F(gb_alloc)(sizeof(gb_scaled_rows) * (size_t)nth);
    st.bsr = F(gb_alloc)(sizeof(T) * (size_t)(nth * N));
    st.qdone = F(gb_alloc)(LB);
    st.frescue = st.cfg.rescale && (st.cfg.act == GB_GELU || st.cfg.act == GB_SWISH || F(gb_limit_rescue)(st.cfg.act));
    rc = GB_ENOMEM;
    if ((st.gemm || (st.wt[0] && st.wt[1] && st.wt[2])) && (!st.cfg.bn || st.zb) && st.rsum && st.rm2 &&
        st.rsat && st.rbad && st.dead && st.eslot && st.gabs && st.gnz && st.rmax && st.rnan && st.scr && st.bsr &&
        st.qdone && st.tdone && st.rdone) {
        memset(st.qdone, 0, LB);
        rc = GB_OK;
        for (int t = 0; t < nth; t++) {
            atomic_init(&st.tdone[t].step, -1);
            atomic_init(&st.rdone[t].step, -1);
        }
        /* results do not depend on the number of threads that actually ran */
        /* every thread's dead flags start at 1: those of a thread that did not run stay neutral;
         * results do not depend on how many threads ran, or until which layer */
        memset(st.dead, 1, (size_t)(L * nth * N));
        gb_team_run(nth, F(gb_forward_member), &st, opts ? opts->solo_after : 0);
        /* the statistics of every layer, rows and threads combined in order */
        const double BN = (double)(B * N);
        a->info[GB_INFO_FORWARD] = -1;
        for (int64_t l = 0; l < L; l++) {
            double s = 0, m2 = 0;
            int64_t nsat = 0;
            int bad = 0;
            /* the rows at the layer's exponent: row r's sums times 2^frow, its squares 4^frow
             * (exact while normal: the rows' own sums of the entries scaled) */
            const int64_t *q = a->frow + (l + 1) * B;
            for (int64_t r = 0; r < B; r++)
                if (!st.qdone[l * B + r]) /* (a row raised to a bias's floor: taken then) */
                    gb_stats_at(st.rsum + l * B + r, st.rm2 + l * B + r, q[r]);
            for (int64_t r = 0; r < B; r++) s += st.rsum[l * B + r];
            const double mean = s / BN;
            for (int64_t r = 0; r < B; r++) {
                const double d = st.rsum[l * B + r] / (double)N - mean;
                m2 += st.rm2[l * B + r] + (double)N * d * d; /* Chan et al.'s combination */
                nsat += st.rsat[l * B + r];
                bad |= st.rbad[l * B + r];
            }
            int64_t nd = 0;
            for (int64_t j = 0; j < N; j++) {
                unsigned char all = 1;
                for (int t = 0; t < st.nth; t++) all &= st.dead[(l * st.nth + t) * N + j];
                nd += all;
            }
            a->act_mean[l] = mean;
            a->act_std[l] = sqrt(m2 / BN);
            a->saturation[l] = (double)nsat / BN;
            a->dead[l] = (double)nd / (double)N;
            if (bad && a->info[GB_INFO_FORWARD] < 0) a->info[GB_INFO_FORWARD] = l;
        }
    }
    gb_workspace_give(st.wt[0]);
    free(st.tdone);
    free(st.rdone);
    free(st.zb);
    free(st.rsum);
    free(st.rm2);
    free(st.rsat);
    free(st.rbad);
    free(st.dead);
    free(st.eslot);
    free(st.gabs);
    free(st.gnz);
    free(st.rmax);
    free(st.rnan);
    free(st.scr);
    free(st.bsr);
    free(st.qdone);
    return rc;
}

/* ---------------------------------------------------------------- backward */
/* Per-row exponents (reference.stack_backward): the signal G carries one int64 exponent per
 * batch row (st->rg: row i of dL/dh is G[i] 2^rg[i]), each row normalised on its own, so that
 * samples thousands of decades apart keep their digits. What is summed over the batch (dW, db,
 * dgamma, dbeta, dslope, the norms) has one exponent per layer: E(rows), the largest exponent
 * of the rows that are not all zero (of all rows when every one is), the rows brought to it by
 * a power of two (ldexp's rounding into the subnormals, flushed below) only there; dW and dslope,
 * sums of dz_i^T h_i with h_l's rows at their own exponents (frow), at w = dw_e[l], the largest
 * r_i + frow[l, i] over the rows where both are not all zero, each dz row brought to it by
 * 2^(r_i + frow[l, i] - w). Where nothing is subnormal this is the one-exponent chain's
 * arithmetic bit for bit. */

/* The saturated-derivative rescue (reference.rescue_saturated), row by row: a row of dz = da
 * phi'(zl) whose max|dz| (NaN ignored) is below GB_RESCUE_BELOW (underflowed, or subnormal with
 * its digits lost) is recomputed in log form, ell = ln|da| + ln|phi'(x)| (gb_log_dphi_f64),
 * k = floor(max ell / ln2) of that row, dz = sign exp(ell - k ln2), and k is added to the row's
 * exponent, for the activations of gb_rescue_act (gb_internal.h). A row decides alone: no
 * barrier. */
/* ell = ln|da| + ln|phi'(x)| of entry j of one row and its sign: da and zl in T as
 * gb_act_backward_row forms them, x = zl 2^f (the forward's exponent, clamped) under rescaling */
static inline double F(gb_rescue_ell)(const T *g, const T *zr, const T *gamma, const T *beta, int scale,
                                      T alpha, const gb_scaled *s, int64_t j, double *sgn) {
    T da = g[j];
    if (scale) da = da * alpha;
    const T zl = gamma ? gamma[j] * zr[j] + beta[j] : zr[j];
    const double x = s->on ? ldexp((double)zl, s->f) : (double)zl;
    return gb_rescue_term((double)da, x, s->act, s->p, sgn);
}

/* max of ell over one row (NaN ignored; -inf when none). g, zr (N,) */
static double F(gb_rescue_max)(const T *g, const T *zr, const T *gamma, const T *beta, int scale, T alpha,
                               const gb_scaled *s, int64_t N) {
    double m = -INFINITY, sgn;
    for (int64_t j = 0; j < N; j++) {
        const double ell = F(gb_rescue_ell)(g, zr, gamma, beta, scale, alpha, s, j, &sgn);
        m = ell > m ? ell : m;
    }
    return m;
}

/* one row of dz = sgn exp(ell - k ln2), rounded once to T; k = floor(top / ln 2), top the
 * row's largest ell. dz, g, zr (N,) */
static void F(gb_rescue_row)(T *dz, const T *g, const T *zr, const T *gamma, const T *beta, int scale,
                             T alpha, const gb_scaled *s, double top, int64_t k, int64_t N) {
    const double rem = gb_log_rem(top, k);
    double sgn;
    for (int64_t j = 0; j < N; j++) {
        const double ell = F(gb_rescue_ell)(g, zr, gamma, beta, scale, alpha, s, j, &sgn);
        dz[j] = (T)(sgn * exp((ell - top) + rem));
    }
}

/* x (n,) times 2^d, d <= 0, with ldexp's rounding: one or two products by powers of two
 * (gb_pow2_down), in loops that vectorise */
static void F(gb_scale_down)(T *x, int64_t n, int64_t d) {
    if (d != 0) F(gb_scale_down_into)(x, x, n, gb_clamp_exp(d));
}

#ifndef GB_ROWS_DEFINED /* not per type */
#define GB_ROWS_DEFINED
/* The no-exponent mark of the slots below: INT64_MIN (no row of that kind) */
#define GB_NOEXP INT64_MIN
/* the slots' fields (GB_SLOT int64 per thread, one cache line): the largest exponent of the
 * thread's non-zero rows and of all its rows, of G after the layer (0, 1), of dz (2, 3), of G
 * after a norm clip (5, 6); 4: the value clip acted on one of its rows; 7: the largest
 * exponent r + frow[l] of its rows where both dz and h_l are not all zero (dW's, dw_e) */
enum { GB_SL_GNZ, GB_SL_GALL, GB_SL_DNZ, GB_SL_DALL, GB_SL_ACTED, GB_SL_CNZ, GB_SL_CALL, GB_SL_WNZ, GB_SLOT = 8 };

/* E over the threads' slots (each of stride GB_SLOT): the largest field nz, or of field all
 * when no thread has a non-zero row */
static inline int64_t gb_slots_e(const int64_t *slots, int nth, int nz, int all) {
    int64_t m = GB_NOEXP, ma = GB_NOEXP;
    for (int t = 0; t < nth; t++) {
        const int64_t *s = slots + (size_t)t * GB_SLOT;
        m = s[nz] > m ? s[nz] : m;
        ma = s[all] > ma ? s[all] : ma;
    }
    return m != GB_NOEXP ? m : ma;
}
#endif

typedef struct {
    const gb_stack_arrays *a;
    GEMM_FN gemm;
    F(gb_cfg) cfg;
    T *dz[2];             /* (B,N) dL/dz_l (layer parity) */
    T *skip;              /* (B,N) dL/dh at the end of the current residual group */
    int64_t *rg;          /* (B,) the signal's row exponents */
    unsigned char *gnz;   /* (B,) the signal's row is not all zero */
    int64_t *skip_r;      /* (B,) the skip's row exponents */
    unsigned char *skip_nz; /* (B,) the skip's row is not all zero */
    int64_t *rdz;         /* (2,B) dz_l's row exponents (layer parity) */
    T *rpw;               /* (nth,2B) per thread: the rows' two factors to db's exponent (gb_colsum_rows) */
    gb_scaled_rows *scr;  /* (nth) per thread: its rows' activation setups of the layer */
    double *rsq;          /* (L+1,B) per row: sum of squares of dL/dh_l 2^-sig_e[l] */
    unsigned char *rbad;  /* (L+1,B) per row: dL/dh_l has a non-finite entry */
    double *rslope;       /* (L,B) per row: PReLU slope sums at exponent dw_e[l] (PReLU only) */
    double *gsq;          /* (L,N) per row of dW_l: sum of squares */
    int64_t *slot;        /* (2,nth,GB_SLOT) per thread: exponents and flags (layer parity) */
    double *rowacc;       /* (max(B,N),) the rows' sums of squares (clipping by norm), scratch */
    T *bnq;               /* (3,nq,N) batch norm: the blocks' parts of the mean of dy (2) and
                             their sums of dy xhat (1) */
    T *bnm;               /* (nth,2,N) batch norm, per thread: the layer's mean_B(dy), mean_B(dy xhat) */
} F(gb_bwd);

#if defined(GB_HAVE_VEC) && GB_VL == 4
/* 0 + lane 0 + ... + lane 7 in this order: gb_sumsq_row's sum for a row without a tail */
static GB_AINLINE double F(gb_lanes_in_order)(gb_vd a0, gb_vd a1) {
    double s = 0;
    for (int c = 0; c < 4; c++) s += a0[c];
    for (int c = 0; c < 4; c++) s += a1[c];
    return s;
}
#endif

/* out[r] = gb_sumsq_row(x + r N, N, 1, 1) for rows r of [r0, r1), 4 at a time, where N is a
 * multiple of 8 (no tail) and the vectors have 4 lanes (AVX2; AVX-512 has gb_sumsq_rows8): the
 * same operations per lane. Returns the first row left. A call per row cost ~60 instructions at
 * N = 32, 48 rows per layer (the signal's and dW's). */
static int64_t F(gb_sumsq_rows4)(const T *x, int64_t r0, int64_t r1, int64_t N, double *out) {
    int64_t r = r0;
#if defined(GB_HAVE_VEC) && GB_VL == 4
    if (N % 8) return r;
    for (; r + 4 <= r1; r += 4) {
        const T *x0 = x + r * N, *x1 = x0 + N, *x2 = x1 + N, *x3 = x2 + N;
        gb_vd a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};
        for (int64_t j = 0; j < N; j += 8) {
            gb_vd v;
            v = F(gb_loadv)(x0 + j), a00 += v * v;
            v = F(gb_loadv)(x0 + j + 4), a01 += v * v;
            v = F(gb_loadv)(x1 + j), a10 += v * v;
            v = F(gb_loadv)(x1 + j + 4), a11 += v * v;
            v = F(gb_loadv)(x2 + j), a20 += v * v;
            v = F(gb_loadv)(x2 + j + 4), a21 += v * v;
            v = F(gb_loadv)(x3 + j), a30 += v * v;
            v = F(gb_loadv)(x3 + j + 4), a31 += v * v;
        }
        out[r] = F(gb_lanes_in_order)(a00, a01);
        out[r + 1] = F(gb_lanes_in_order)(a10, a11);
        out[r + 2] = F(gb_lanes_in_order)(a20, a21);
        out[r + 3] = F(gb_lanes_in_order)(a30, a31);
    }
#else
    (void)x, (void)r1, (void)N, (void)out;
#endif
    return r;
}

/* Sum of squares of rows [r0, r1) into rsq[r] (8 lanes per row, then in order); finiteness */
static void F(gb_row_sumsq)(const T *g, int64_t r0, int64_t r1, int64_t N, double *rsq, unsigned char *rbad) {
    /* rows [r0, rg) 8 at a time (AVX-512) or 4 (AVX2) */
    const int64_t rg = F(gb_sumsq_rows4)(g, F(gb_sumsq_rows8)(g, r0, r1, N, rsq), r1, N, rsq);
    for (int64_t r = r0; r < r1; r++) {
        if (r >= rg) rsq[r] = F(gb_sumsq_row)(g + r * N, N, 1.0, 1.0);
        rbad[r] = !isfinite(rsq[r]) && !F(gb_all_finite)(g + r * N, N);
    }
}

/* normalise_row: row r of G scaled by 2^-e so that its max|.| (NaN ignored) lies in [0.5, 1),
 * e added to its exponent (nothing for a row of zeros or with an infinity); whether the row is
 * not all zero */
static void F(gb_norm_row)(F(gb_bwd) *st, int64_t r) {
    const int64_t N = st->a->N;
    st->gnz[r] = (unsigned char)F(gb_row_normalise)((T *)st->a->G + r * N, NULL, N, st->rg + r);
}

/* The thread's slot fields nz and all: the largest exponent of its non-zero rows and of its rows */
static void F(gb_rows_e)(const int64_t *re, const unsigned char *nz, int64_t r0, int64_t r1, int64_t *s,
                         int fnz, int fall) {
    int64_t m = GB_NOEXP, ma = GB_NOEXP;
    for (int64_t r = r0; r < r1; r++) {
        if (nz[r] && re[r] > m) m = re[r];
        ma = re[r] > ma ? re[r] : ma;
    }
    s[fnz] = m;
    s[fall] = ma;
}

/* The end of finish for rows [r0, r1) at the layer's exponent e: rows of zeros take e, the
 * sums of squares of the rows (unless summed: taken already) times 4^(rg - e) (what
 * ||G 2^(rg - e)|| sums, in row order after the layers), non-finite rows */
static void F(gb_finish_rows)(F(gb_bwd) *st, int64_t l, int64_t e, int64_t r0, int64_t r1, int summed) {
    const int64_t B = st->a->B, N = st->a->N;
    double *rsq = st->rsq + l * B;
    if (!summed) F(gb_row_sumsq)(st->a->G, r0, r1, N, rsq, st->rbad + l * B);
    for (int64_t r = r0; r < r1; r++) {
        if (!st->gnz[r]) st->rg[r] = e;
        const int64_t d = st->rg[r] - e;
        if (d) rsq[r] = gb_ldexp_d(rsq[r], 2 * gb_clamp_exp(d));
    }
}

/* dz columns [i0, i1) of every row r times 2^(rdz[r] - e) (the rows brought to the layer's
 * exponent for dW and db, or for batch norm): each thread its columns, those of its dW rows */
static void F(gb_dz_to_e)(T *dz, const int64_t *rdz, int64_t e, int64_t B, int64_t N, int64_t i0, int64_t i1) {
    for (int64_t r = 0; r < B; r++) F(gb_scale_down)(dz + r * N + i0, i1 - i0, rdz[r] - e);
}

/* Signal clipping by norm on the team, after the layer's barrier (every thread on its rows
 * [r0, r1) of G, normalised, at the layer's exponent e): ||G 2^(rg - e)|| from the rows' sums of
 * squares times 4^(rg - e), added in order after a barrier; where 2^e times it exceeds c, every
 * row G *= c / n, rg -= e, normalised again, and the new exponent from the slots after one
 * more barrier (the decision is the same on every thread). Returns the exponent. */
static int64_t F(gb_clip_norm_team)(F(gb_bwd) *st, int64_t e, int64_t r0, int64_t r1, int tid, int nth,
                                    gb_barrier *bar, int *sense, int64_t *slots, int64_t *acted) {
    const int64_t B = st->a->B, N = st->a->N;
    T *G = st->a->G;
    for (int64_t r = r0; r < r1; r++)
        st->rowacc[r] = gb_ldexp_d(F(gb_sumsq_row)(G + r * N, N, 1.0, 1.0), 2 * gb_clamp_exp(st->rg[r] - e));
    gb_barrier_wait(bar, sense);
    double total = 0;
    for (int64_t r = 0; r < B; r++) total += st->rowacc[r];
    const double nrm = sqrt(total);
    if (!(ldexp(nrm, gb_clamp_exp(e)) > st->cfg.c)) return e;
    const T s = (T)(st->cfg.c / nrm);
    for (int64_t r = r0; r < r1; r++) {
        T *g = G + r * N;
        for (int64_t j = 0; j < N; j++) g[j] *= s;
        st->rg[r] -= e;
        F(gb_norm_row)(st, r);
    }
    *acted = 1;
    F(gb_rows_e)(st->rg, st->gnz, r0, r1, slots + (size_t)tid * GB_SLOT, GB_SL_CNZ, GB_SL_CALL);
    gb_barrier_wait(bar, sense);
    return gb_slots_e(slots, nth, GB_SL_CNZ, GB_SL_CALL);
}

/* dW_l from dz_l (its rows at dW's exponent) and, with_db, db_l (the rows at db's, the same
 * then): dW rows [i0, i1) and db's entries there (own kernels, pf from part q of npf), or all of
 * them by BLAS */
static void F(gb_bwd_dw)(F(gb_bwd) *st, int64_t l, int64_t i0, int64_t i1, gb_pf *pf, int64_t q, int64_t npf,
                         int with_db) {
    const gb_stack_arrays *a = st->a;
    const int64_t B = a->B, N = a->N, BN = B * N, NN = N * N;
    T *dz = st->dz[l & 1], *dW = (T *)a->dW + l * NN, *db = (T *)a->db + l * N;
    const T *h = (const T *)a->H + l * BN;
    if (st->gemm) {
        F(gb_dense_dw_ctx)(st->gemm, dW, with_db ? db : NULL, dz, h, B, N);
        return;
    }
    F(gb_gemm_own_pf)(dW + i0 * N, dz + i0, 1, N, h, NULL, i1 - i0, N, B, pf, q, npf);
    if (with_db) F(gb_colsum)(db, dz, B, N, i0, i1);
}

/* The sums of squares of dW_l's rows [i0, i1) into gsq (8 or 4 rows at a time, then one by one) */
static void F(gb_dw_sumsq)(F(gb_bwd) *st, int64_t l, int64_t i0, int64_t i1) {
    const int64_t N = st->a->N;
    const T *dW = (const T *)st->a->dW + l * N * N;
    double *gsq = st->gsq + l * N;
    for (int64_t i = F(gb_sumsq_rows4)(dW, F(gb_sumsq_rows8)(dW, i0, i1, N, gsq), i1, N, gsq); i < i1; i++)
        gsq[i] = F(gb_sumsq_row)(dW + i * N, N, 1.0, 1.0);
}

/* Whether a row d (N,) of dz = da phi' for the identity and the ReLUs (da a normalised signal
 * row times alpha, |dz| < up) may have its max|d| beyond reference.DZ_FAR_EXP (far_rows): not
 * when up is below 2^far and an entry reaches 2^-far, found at the first entries of a usual row
 * (tracking the max in the activation's vector loop cost the ReLU stack 2-3 %). */
static int F(gb_may_be_far)(const T *d, int64_t N, double up, int f32) {
    const double lo = ldexp(1.0, -GB_DZ_FAR_EXP(f32)), hi = ldexp(1.0, GB_DZ_FAR_EXP(f32) - 1);
    if (!(up < hi)) return 1;
    for (int64_t j = 0; j < N; j++)
        if (fabs((double)d[j]) >= lo) return 0; /* NaN: False */
    return 1;
}

static void F(gb_backward_member)(void *arg, int tid, int nth, gb_barrier *bar) {
    F(gb_bwd) *st = arg;
    const gb_stack_arrays *a = st->a;
    const int64_t L = a->L, B = a->B, N = a->N, BN = B * N, NN = N * N, k = st->cfg.k;
    const T *W = a->W, *gamma = a->gamma, *beta = a->beta, *slope = a->slope;
    const T *H = a->H, *Z = a->Z;
    T *G = a->G, *dW = a->dW;
    int64_t *sig_e = a->sig_e, *rg = st->rg;
    const int64_t *fexp = a->fexp;
    const int f32 = sizeof(T) == sizeof(float);
    const int rescue = gb_rescue_act(st->cfg.act);
    int ec = 0;
    const double ct = st->cfg.clip == GB_CLIP_VALUE ? frexp(st->cfg.c, &ec) : 0; /* c = ct 2^ec */
    int64_t r0 = F(gb_part)(B, tid, nth), r1 = F(gb_part)(B, tid + 1, nth), nr = r1 - r0;
    int64_t i0 = F(gb_part)(N, tid, nth), i1 = F(gb_part)(N, tid + 1, nth);
    int sense = 0;
    /* the top signal: its rows normalised (the caller has clipped it), finish without the clip */
    int64_t *slots = st->slot + (size_t)(L & 1) * nth * GB_SLOT;
    const int64_t etop = sig_e[L]; /* read before the barrier: thread 0 writes it after */
    for (int64_t r = r0; r < r1; r++) {
        rg[r] = etop + a->row_e[r];
        F(gb_norm_row)(st, r);
    }
    F(gb_rows_e)(rg, st->gnz, r0, r1, slots + (size_t)tid * GB_SLOT, GB_SL_GNZ, GB_SL_GALL);
    gb_barrier_wait(bar, &sense);
    int64_t e = gb_slots_e(slots, nth, GB_SL_GNZ, GB_SL_GALL); /* E(rows) of dL/dh_{l+1} */
    F(gb_finish_rows)(st, L, e, r0, r1, 0);
    if (tid == 0) sig_e[L] = e;
    /* Work the layer's barrier can wait on (the first to arrive spun for the last): the sums of
     * squares of the thread's rows of dW of the layer before (pg: the layer, its rows pg0 to pg1;
     * taken at the next barrier at the latest) and of its rows of G once they are final (no
     * clipping by norm). Same values, in a wait that was spent spinning. */
    int64_t pg = -1, pg0 = 0, pg1 = 0;
#define GB_BWD_GSQ() (F(gb_dw_sumsq)(st, pg, pg0, pg1), pg = -1)
    for (int64_t l = L - 1; l >= 0; l--) {
        if (gb_team_solo(tid, &nth, &bar, &sense)) { /* the rest on thread 0 */
            if (pg >= 0) GB_BWD_GSQ();
            return;
        }
        r0 = F(gb_part)(B, tid, nth), r1 = F(gb_part)(B, tid + 1, nth), nr = r1 - r0;
        i0 = F(gb_part)(N, tid, nth), i1 = F(gb_part)(N, tid + 1, nth);
        slots = st->slot + (size_t)(l & 1) * nth * GB_SLOT;
        int64_t *my = slots + (size_t)tid * GB_SLOT;
        T *g = G + r0 * N;
        const double p = st->cfg.act == GB_PRELU ? (double)slope[l] : st->cfg.param;
        /* each row's phi' at its own forward exponent fexp[l] + frow[l, r] (gb_scaled_row) */
        const gb_scaled sc0 = gb_scaled_init(st->cfg.act, p, st->cfg.rescale, fexp[l], f32);
        gb_scaled_rows *scr = &st->scr[tid];
        gb_scaled_rows_reset(scr);
        const int64_t *ql = a->frow + l * B;
        const int end_group = k && (l + 1) % k == 0, start_group = k && l % k == 0;
        const T alpha = (T)st->cfg.alpha;
        const T *gam = st->cfg.bn ? gamma + l * N : NULL, *bet = st->cfg.bn ? beta + l * N : NULL;
        T *dz = st->dz[l & 1];
        int64_t *rdz = st->rdz + (l & 1) * B;
        if (end_group) { /* dL/dh_{l+1} also flows down the skip */
            memcpy(st->skip + r0 * N, g, sizeof(T) * (size_t)(nr * N));
            for (int64_t r = r0; r < r1; r++) st->skip_r[r] = rg[r], st->skip_nz[r] = st->gnz[r];
        }
        const T *Zl = Z + l * BN;
        /* layer l-1's W, z rows, h and dW rows, prefetched a share per activation row and per
         * block of the two products (own kernels) */
        gb_pf pf = {0};
        const int64_t nb1 = (nr + 3) / 4, nb2 = (i1 - i0 + 3) / 4, npf = nr + nb1 + nb2;
        if (l > 0 && !st->gemm) {
            gb_pf_add(&pf, W + (l - 1) * NN, NN * (int64_t)sizeof(T), 0);
            gb_pf_add(&pf, Zl - BN + r0 * N, nr * N * (int64_t)sizeof(T), 0);
            gb_pf_add(&pf, H + (l - 1) * BN, BN * (int64_t)sizeof(T), 0);
            gb_pf_add(&pf, dW + (l - 1) * NN + i0 * N, (i1 - i0) * N * (int64_t)sizeof(T), 1);
        }
        /* dz rows = da phi'(zl), each at its row's exponent, rescued where saturated; a row far
         * from 1 brought to [0.5, 1) (reference.far_rows; not PReLU, whose slope gradient shares
         * dW's exponent, nor batch norm). |dz| <= |da| max(1, |slope|) bounds the ReLUs' rows */
        const int far = !st->cfg.bn && st->cfg.act != GB_PRELU;
        const double far_up = st->cfg.act == GB_LEAKY_RELU ? GB_MAX(1.0, fabs(st->cfg.param)) : 1.0;
        const double far_up_group = far_up * fabs((double)alpha);
        int64_t dnz = GB_NOEXP, dall = GB_NOEXP, wnz = GB_NOEXP;
        for (int64_t r = r0; r < r1; r++) {
            gb_pf_part(&pf, r - r0, npf);
            const gb_scaled *sc = gb_scaled_row(scr, &sc0, fexp[l] + ql[r]);
            double mr = 0; /* max|dz row|, NaN ignored: the rescue's (without it, not tracked) */
            const double s = F(gb_act_backward_row)(dz + r * N, G + r * N, Zl + r * N, gam, bet, end_group,
                                                    alpha, sc, N, rescue ? &mr : NULL);
            if (far && !rescue && F(gb_may_be_far)(dz + r * N, N, end_group ? far_up_group : far_up, f32))
                mr = (double)F(gb_absmax)(dz + r * N, N, 0); /* the identity and the ReLUs: see gb_may_be_far */
            if (st->rslope) st->rslope[l * B + r] = s; /* at the row's exponent: brought to dz_e[l] below */
            int64_t re = rg[r];
            int nz = mr > 0, rescued = 0;
            if (rescue && mr < GB_RESCUE_BELOW(f32)) {
                const double top = F(gb_rescue_max)(G + r * N, Zl + r * N, gam, bet, end_group, alpha, sc, N);
                if (isfinite(top) && top >= GB_RESCUE_LN_MIN) { /* below: beyond any int64 exponent */
                    const int64_t kr = (int64_t)floor(top / GB_LN2);
                    F(gb_rescue_row)(dz + r * N, G + r * N, Zl + r * N, gam, bet, end_group, alpha, sc, top, kr, N);
                    re += kr;
                    nz = 1;
                    rescued = 1;
                }
            }
            if (far && !rescued) re += F(gb_far_row)(dz + r * N, N, (T)mr); /* mr: the row's max, a T */
            if (!nz) nz = F(gb_nonzero)(dz + r * N, N);
            rdz[r] = re;
            if (nz && re > dnz) dnz = re;
            dall = re > dall ? re : dall;
            /* dW's exponent: the rows where dz and h_l are both not all zero (batch norm: below) */
            if (nz && !st->cfg.bn && re + ql[r] > wnz && F(gb_nonzero)(H + l * BN + r * N, N)) wnz = re + ql[r];
        }
        my[GB_SL_DNZ] = dnz;
        my[GB_SL_DALL] = dall;
        int64_t edz = 0; /* E(rows) of dz_l: dz_e[l] */
        if (st->cfg.bn) { /* couples rows: all brought to E first; the column sums through the
            * blocks' sums (gb_bn_dy_blocks), each thread on its rows */
            const int64_t nq = GB_BN_NQ(B);
            T *mdy = st->bnm + (size_t)tid * 2 * N, *mdx = mdy + N, *px = st->bnq + 2 * nq * N;
            T *dgamma = (T *)a->dgamma + l * N, *dbeta = (T *)a->dbeta + l * N;
            gb_barrier_wait(bar, &sense); /* every row's exponent */
            edz = gb_slots_e(slots, nth, GB_SL_DNZ, GB_SL_DALL);
            F(gb_dz_to_e)(dz + r0 * N, rdz + r0, edz, nr, N, 0, N);
            F(gb_bn_dy_blocks)(st->bnq, px, dz, Zl, r0, r1, N);
            gb_barrier_wait(bar, &sense); /* every block's parts of the means of dy and dy xhat */
            F(gb_bn_mean)(mdy, st->bnq, B, N);
            F(gb_bn_total)(mdx, px, nq, N); /* dgamma, then its mean */
            for (int64_t i = i0; i < i1; i++) dbeta[i] = mdy[i] * (T)B, dgamma[i] = mdx[i];
            for (int64_t j = 0; j < N; j++) mdx[j] /= (T)B;
            F(gb_bn_dz)(dz, dz, Zl, mdy, mdx, (const T *)a->bn_rstd + l * N, gamma + l * N, r0, r1, N);
            for (int64_t r = r0; r < r1; r++) /* every row at edz now */
                if (edz + ql[r] > wnz && F(gb_nonzero)(dz + r * N, N) && F(gb_nonzero)(H + l * BN + r * N, N))
                    wnz = edz + ql[r];
        } else {
            T *dgamma = a->dgamma, *dbeta = a->dbeta;
            for (int64_t i = i0; i < i1; i++) dgamma[l * N + i] = dbeta[l * N + i] = 0;
        }
        /* dh rows = dz rows W (each row keeps its exponent) */
        if (st->gemm)
            F(gb_dense_dh_ctx)(st->gemm, G, dz, W + l * NN, B, N);
        else
            F(gb_gemm_own_pf)(g, dz + r0 * N, N, 1, W + l * NN, NULL, nr, N, N, &pf, nr, npf);
        /* the skip added row by row, at the larger exponent (a row of zeros takes the other's),
         * then finish: normalise, the value clip */
        int64_t acted = 0;
        for (int64_t r = r0; r < r1; r++) {
            int64_t ea = st->cfg.bn ? edz : rdz[r];
            if (start_group) {
                int64_t es = st->skip_r[r];
                T *gr = G + r * N;
                if (ea > es) {
                    if (!F(gb_nonzero)(gr, N)) ea = es; /* dh row of zeros: the skip's exponent */
                } else if (es > ea && !st->skip_nz[r] && F(gb_nonzero)(gr, N)) {
                    es = ea; /* skip row of zeros: dh's */
                }
                ea = F(gb_add_aligned_impl)(gr, ea, st->skip + r * N, es, 1.0, N, -1);
            }
            rg[r] = ea;
            F(gb_norm_row)(st, r);
            if (st->cfg.clip == GB_CLIP_VALUE && F(gb_clip_value_row)(G + r * N, NULL, N, rg + r, ec, ct)) {
                acted = 1;
                F(gb_norm_row)(st, r);
            }
        }
        F(gb_rows_e)(rg, st->gnz, r0, r1, my, GB_SL_GNZ, GB_SL_GALL);
        my[GB_SL_ACTED] = acted;
        my[GB_SL_WNZ] = wnz;
        int summed = 0; /* G's rows' sums of squares taken (gb_finish_rows) */
        if (bar && !gb_barrier_arrive(bar, &sense)) { /* every row of dz_l and of dL/dh_l, every slot written */
            while (!gb_barrier_passed(bar, sense) && (pg >= 0 || (!summed && st->cfg.clip != GB_CLIP_NORM))) {
                if (pg >= 0) {
                    GB_BWD_GSQ();
                } else {
                    F(gb_row_sumsq)(G, r0, r1, N, st->rsq + l * B, st->rbad + l * B);
                    summed = 1;
                }
            }
            gb_barrier_finish(bar, sense);
        }
        if (!st->cfg.bn) edz = gb_slots_e(slots, nth, GB_SL_DNZ, GB_SL_DALL);
        /* dW's exponent w (reference pair_top): the largest r + frow[l] over the rows where dz and
         * h_l are both not all zero, else dz's. The rows of dz go to db at 2^(r - edz) and to dW at
         * 2^(r + frow[l] - w) (batch norm: r = edz already), each shift at most 0 (a row of zeros
         * takes any: 0; a row of h_l of zeros adds nothing to dW, and dz times more would
         * overflow); one pass when the two agree on every row, else db from the rows as they are,
         * then the rows scaled for dW */
        int64_t w = GB_NOEXP;
        for (int t = 0; t < nth; t++) w = GB_MAX(w, slots[(size_t)t * GB_SLOT + GB_SL_WNZ]);
        if (w == GB_NOEXP) w = edz;
        const int64_t c0 = st->gemm ? 0 : i0, c1 = st->gemm ? N : i1; /* this thread's columns of dz */
#define GB_SH_DB(r) (st->cfg.bn ? 0 : GB_MIN(rdz[r] - edz, 0))
#define GB_SH_DW(r) GB_MIN((st->cfg.bn ? edz : rdz[r]) + ql[r] - w, 0)
        int same = 1;
        for (int64_t r = 0; r < B && same; r++) same = GB_SH_DB(r) == GB_SH_DW(r);
        if (!same) {
            T *pw = st->rpw + (size_t)tid * 2 * B;
            int far = 0;
            for (int64_t r = 0; r < B; r++) {
                T q[2];
                F(gb_pow2_down)(gb_clamp_exp(GB_SH_DB(r)), q);
                pw[r] = q[0];
                pw[B + r] = q[1];
                far |= q[1] != 1;
            }
            F(gb_colsum_rows)((T *)a->db + l * N, dz, pw, B, N, c0, c1, far);
        }
        for (int64_t r = 0; r < B; r++) F(gb_scale_down)(dz + r * N + c0, c1 - c0, GB_SH_DW(r));
#undef GB_SH_DB
#undef GB_SH_DW
        if (st->rslope) /* PReLU (never rescued): the rows' slope sums at dW's exponent, which labels them */
            for (int64_t r = r0; r < r1; r++)
                st->rslope[l * B + r] = gb_ldexp_d(st->rslope[l * B + r], gb_clamp_exp(rdz[r] + ql[r] - w));
        e = gb_slots_e(slots, nth, GB_SL_GNZ, GB_SL_GALL);
        for (int t = 0; t < nth; t++) acted |= slots[(size_t)t * GB_SLOT + GB_SL_ACTED];
        F(gb_bwd_dw)(st, l, i0, i1, &pf, nr + nb1, npf, same);
        if (pg >= 0) GB_BWD_GSQ(); /* at most one layer's pending */
        pg = l, pg0 = i0, pg1 = i1;
        if (!bar) GB_BWD_GSQ(); /* alone: nothing to wait on, the rows still in cache */
        if (st->cfg.clip == GB_CLIP_NORM)
            e = F(gb_clip_norm_team)(st, e, r0, r1, tid, nth, bar, &sense, slots, &acted);
        F(gb_finish_rows)(st, l, e, r0, r1, summed);
        if (tid == 0) {
            sig_e[l] = e;
            a->dz_e[l] = edz;
            a->dw_e[l] = w;
            a->clip_acted[l] = acted; /* [L] is the caller's: it clipped the top signal */
        }
    }
    if (pg >= 0) GB_BWD_GSQ();
#undef GB_BWD_GSQ
}

/* The backward driver: the contract of reference.stack_backward (arrays: abi.BACKWARD). */
int F(gb_stack_backward)(const gb_stack_arrays *a, const gb_opts *opts) {
    const int64_t L = a->L, B = a->B, N = a->N;
    F(gb_bwd) st;
    memset(&st, 0, sizeof st);
    st.a = a;
    int nth, rc = F(gb_setup)(a, opts, &st.cfg, &st.gemm, &nth);
    if (rc) return rc;
    const size_t BN = (size_t)(B * N), L1B = (size_t)((L + 1) * B);
    st.dz[0] = F(gb_alloc)(sizeof(T) * BN);
    st.dz[1] = F(gb_alloc)(sizeof(T) * BN);
    st.skip = st.cfg.k ? F(gb_alloc)(sizeof(T) * BN) : NULL;
    st.rg = F(gb_alloc)(sizeof(int64_t) * (size_t)B);
    st.gnz = F(gb_alloc)((size_t)B);
    st.skip_r = F(gb_alloc)(sizeof(int64_t) * (size_t)B);
    st.skip_nz = F(gb_alloc)((size_t)B);
    st.rdz = F(gb_alloc)(sizeof(int64_t) * 2 * (size_t)B);
    st.rpw = F(gb_alloc)(sizeof(T) * (size_t)nth * 2 * (size_t)B);
    st.scr = F(gb_alloc)(sizeof(gb_scaled_rows) * (size_t)nth);
    st.rsq = F(gb_alloc)(sizeof(double) * L1B);
    st.rbad = F(gb_alloc)(L1B);
    st.rslope = st.cfg.act == GB_PRELU ? F(gb_alloc)(sizeof(double) * (size_t)(L * B)) : NULL;
    st.gsq = F(gb_alloc)(sizeof(double) * (size_t)(L * N));
    st.slot = F(gb_alloc)(sizeof(int64_t) * 2 * (size_t)nth * GB_SLOT);
    st.rowacc = F(gb_alloc)(sizeof(double) * (size_t)GB_MAX(B, N));
    if (st.cfg.bn) { /* the blocks' sums (GB_BN_ROWS rows each) and the threads' means */
        const int64_t nq = GB_BN_NQ(B);
        st.bnq = F(gb_alloc)(sizeof(T) * (size_t)(3 * nq * N + 2 * nth * N));
        st.bnm = st.bnq ? st.bnq + 3 * nq * N : NULL;
    }
    rc = GB_ENOMEM;
    if (st.dz[0] && st.dz[1] && (!st.cfg.k || st.skip) && st.rg && st.gnz && st.skip_r && st.skip_nz && st.rdz && st.rpw && st.scr &&
        st.rsq && st.rbad && (st.cfg.act != GB_PRELU || st.rslope) && st.gsq && st.slot && st.rowacc &&
        (!st.cfg.bn || st.bnq)) {
        rc = GB_OK;
        gb_team_run(nth, F(gb_backward_member), &st, opts ? opts->solo_after : 0);
        /* norms, slope sums and the first non-finite signal: rows combined in order */
        a->info[GB_INFO_BACKWARD] = -1;
        for (int64_t l = L; l >= 0; l--) {
            double s = 0;
            int bad = 0;
            for (int64_t r = 0; r < B; r++) {
                s += st.rsq[l * B + r];
                bad |= st.rbad[l * B + r];
            }
            a->sig_m[l] = sqrt(s);
            if (bad && a->info[GB_INFO_BACKWARD] < 0) a->info[GB_INFO_BACKWARD] = l;
        }
        T *dslope = a->dslope;
        for (int64_t l = 0; l < L; l++) {
            double s = 0;
            if (st.rslope)
                for (int64_t r = 0; r < B; r++) s += st.rslope[l * B + r];
            dslope[l] = (T)s;
            double g = 0;
            for (int64_t i = 0; i < N; i++) g += st.gsq[l * N + i];
            int64_t ge = 0;
            if (g >= 0x1p-960 && g <= 0x1p960) /* else scaled (reference.norm_scaled) */
                a->gnorm_m[l] = sqrt(g);
            else
                a->gnorm_m[l] = F(gb_norm_scaled)((const T *)a->dW + l * N * N, N, N, st.rowacc, &ge);
            a->gnorm_e[l] = a->dw_e[l] + a->fexp[l] + ge;
        }
        for (int64_t r = 0; r < B; r++) a->row_e[r] = st.rg[r] - a->sig_e[0]; /* 0 for rows of zeros */
    }
    free(st.dz[0]);
    free(st.dz[1]);
    free(st.skip);
    free(st.rg);
    free(st.gnz);
    free(st.skip_r);
    free(st.skip_nz);
    free(st.rdz);
    free(st.rpw);
    free(st.bnq);
    free(st.scr);
    free(st.rsq);
    free(st.rbad);
    free(st.rslope);
    free(st.gsq);
    free(st.slot);
    free(st.rowacc);
    return rc;
}

/* ------------------------------------------------------------------ exported layer pairs */
#ifdef GB_LAYER_PAIRS
/* The static layer functions above, callable one at a time (tests compare them layer by layer
 * with the reference). One thread, no BLAS: the drivers' own kernels. */
int FP(gb_dense_forward)(T *z, const T *h, const T *W, const T *b, int64_t B, int64_t N) {
    if (B < 1 || N < 1) return GB_EBADARG;
    T *wt = F(gb_alloc)(sizeof(T) * (size_t)(N * N));
    if (!wt) return GB_ENOMEM;
    F(gb_dense_forward_ctx)(NULL, wt, z, h, W, b, B, N);
    free(wt);
    return GB_OK;
}

int FP(gb_dense_backward)(T *dh, T *dW, T *db, const T *dz, const T *h, const T *W, int64_t B, int64_t N) {
    if (B < 1 || N < 1) return GB_EBADARG;
    F(gb_dense_backward_ctx)(NULL, dh, dW, db, dz, h, W, B, N);
    return GB_OK;
}

int FP(gb_batchnorm_forward)(T *y, T *xhat, T *mean, T *rstd, const T *z, const T *gamma, const T *beta,
                            double eps, int64_t B, int64_t N) {
    if (B < 1 || N < 1) return GB_EBADARG;
    T *part = F(gb_alloc)(sizeof(T) * (size_t)(2 * GB_BN_NQ(B) * N));
    if (!part) return GB_ENOMEM;
    F(gb_batchnorm_forward_impl)(y, xhat, mean, rstd, z, gamma, beta, eps, B, N, part);
    free(part);
    return GB_OK;
}

int FP(gb_batchnorm_backward)(T *dz, T *dgamma, T *dbeta, const T *dy, const T *xhat, const T *rstd,
                             const T *gamma, int64_t B, int64_t N) {
    if (B < 1 || N < 1) return GB_EBADARG;
    T *part = F(gb_alloc)(sizeof(T) * (size_t)((3 * GB_BN_NQ(B) + 2) * N));
    if (!part) return GB_ENOMEM;
    F(gb_batchnorm_backward_impl)(dz, dgamma, dbeta, dy, xhat, rstd, gamma, B, N, part);
    free(part);
    return GB_OK;
}

int FP(gb_activation_forward)(T *a, const T *z, int64_t n, int act, double param, int rescale, int64_t f) {
    if (act < GB_IDENTITY || act > GB_GELU) return GB_EBADACT;
    if (n < 0 || (rescale && act == GB_SIGMOID)) return GB_EBADARG;
    const gb_scaled s = gb_scaled_init(act, param, rescale, f, sizeof(T) == sizeof(float));
    unsigned char dead[64];
    for (int64_t i = 0; i < n; i += 64) { /* rows of 64 (dead flags unused) */
        const int64_t m = GB_MIN(64, n - i);
        memset(dead, 1, sizeof dead);
        F(gb_act_forward_row)(a + i, z + i, m, &s, 0.0, dead);
    }
    return GB_OK;
}

int FP(gb_activation_backward)(T *dz, double *dslope, const T *da, const T *z, int64_t B, int64_t N,
                              int act, double param, int rescale, int64_t f) {
    if (act < GB_IDENTITY || act > GB_GELU) return GB_EBADACT;
    if (B < 1 || N < 1 || (rescale && act == GB_SIGMOID)) return GB_EBADARG;
    const gb_scaled s = gb_scaled_init(act, param, rescale, f, sizeof(T) == sizeof(float));
    double total = 0; /* rows in order, as the driver */
    for (int64_t r = 0; r < B; r++)
        total += F(gb_act_backward_row)(dz + r * N, da + r * N, z + r * N, NULL, NULL, 0, (T)1, &s, N, NULL);
    *dslope = total;
    return GB_OK;
}

int FP(gb_normalise)(T *g, int64_t n, int64_t *e) {
    if (n < 0) return GB_EBADARG;
    *e = F(gb_normalise)(g, n);
    return GB_OK;
}

int FP(gb_add_aligned)(T *a, int64_t ea, const T *s, int64_t es, double scale, int64_t n, int64_t *e) {
    if (n < 0) return GB_EBADARG;
    *e = F(gb_add_aligned_impl)(a, ea, s, es, scale, n, -1);
    return GB_OK;
}

int FP(gb_clip_signal)(T *g, int64_t e, int mode, double c, int64_t B, int64_t N, int64_t *e_out) {
    if (B < 1 || N < 1 || mode < GB_CLIP_NONE || mode > GB_CLIP_NORM) return GB_EBADARG;
    double *rowacc = F(gb_alloc)(sizeof(double) * (size_t)B);
    if (!rowacc) return GB_ENOMEM;
    *e_out = F(gb_clip_signal_impl)(g, e, mode, c, B, N, rowacc);
    free(rowacc);
    return GB_OK;
}

#endif /* GB_LAYER_PAIRS */

/* ---------------------------------------------------------------- the input check */
/* Whether every entry of x is finite (gb_check_finite): gradbench.inputs.check_array, before any
 * kernel runs.
 * NumPy's np.all(np.isfinite(W)) writes a bool per entry and reads it again (2.9 ms of a 43 ms
 * call at L = 10^4, N = 32); here one pass reads the array, on up to opts->nthreads threads of
 * the team for a large one, each a block. An all-ones exponent field marks inf and NaN, tested
 * on the integer bits (a float test, x - x or x == x, is dropped by a -ffast-math build): the
 * field plus one carries into the sign bit exactly then. */
#define GB_FINITE_PAR_MIN (1 << 20) /* entries per thread below which one thread checks */

typedef struct {
    const T *x;
    int64_t n;
    int bad[GB_MAX_THREADS];
} F(gb_finite_job);

static void F(gb_finite_member)(void *arg, int tid, int nth, gb_barrier *bar) {
    (void)bar;
    F(gb_finite_job) *job = arg;
    const int64_t i0 = job->n * tid / nth, i1 = job->n * (tid + 1) / nth;
    job->bad[tid] = !F(gb_finite_block)(job->x + i0, i1 - i0);
}

int F(gb_check_finite)(const T *x, int64_t n, const gb_opts *opts) {
    if (n < 0 || (n > 0 && !x)) return -GB_EBADARG;
    F(gb_finite_job) job;
    memset(&job, 0, sizeof job);
    job.x = x;
    job.n = n;
    int64_t nth = opts && opts->nthreads > 1 ? opts->nthreads : 1;
    if (nth > GB_MAX_THREADS) nth = GB_MAX_THREADS;
    if (nth > n / GB_FINITE_PAR_MIN) nth = n / GB_FINITE_PAR_MIN;
    if (nth < 1) nth = 1;
    gb_team_run((int)nth, F(gb_finite_member), &job, 0);
    for (int t = 0; t < nth; t++)
        if (job.bad[t]) return 0;
    return 1;
}

#undef F
#undef FP
#undef MADD

