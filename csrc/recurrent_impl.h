/* The recurrent cells (vanilla RNN, LSTM, GRU) through time, written once over the real type REAL.
 *
 * Included by recurrent_f64.c (REAL = double) and recurrent_f32.c (REAL = float), which define REAL (the
 * real type: T is the number of steps here, as in gb_recurrent_arrays), SFX (f64/f32), GB_ISA
 * (v0/v3/v4: the instruction-set instance, as the stack's, see dispatch.c), TLDEXP, TFABS,
 * T_MAX_EXP (the largest e with 2^e finite in REAL), GEMM_FN, GEMM_FIELD (the BLAS pointer of
 * gb_opts) and BLAS_MIN_FIELD (its width threshold). recurrent_dispatch.c exports the drivers.
 *
 * The contract is gradbench/recurrent/reference.py (the NumPy oracle, same names and steps) over
 * the arrays of gradbench/recurrent/abi.py (gb_recurrent_arrays). Dimension letters: T steps,
 * B batch, N hidden units, D inputs, GN = G N gate rows. The elementwise formulas are evaluated
 * in the reference's order; the matrix products go to the own kernels (the stacks' tiles, on the
 * call's team of threads: gb_rjob, gb_rteam) or to BLAS (through gb_opts, where gb_blas_for says);
 * a step's element-wise gate work goes to the team by rows of the batch (gb_rstep, gb_rrows).
 *
 * Forward: the input projection of all steps is one product U = X W_ih^T + b (into Z, which then
 * holds the pre-activations step by step); per step only the recurrent product h_{t-1} W_hh^T.
 *
 * Backward: the state (dL/dh_t, and the LSTM's part of dL/dc_t carried back through c_{t+1})
 * carries one power of two per row (sample) of the batch, cx->r (on entry sig_e[T] + row_e, on
 * exit row_e = r - sig_e[0]), as the stacks' backward signal does. Per step the elementwise
 * backward of the cell (phi' and the gates recomputed from Z; a vanilla row whose every dz lies
 * below GB_RESCUE_BELOW taken in log form, gb_rnn_rescue, its shift added to the row's exponent),
 * the recurrent product dz W_hh (each row keeps its exponent) and the exact chain, row by row:
 * each row of [dL/dh | dL/dc] normalised jointly, signal clipping on the true magnitudes (by value
 * each row, by norm the batch's), recorded in clip_acted[t] where it changed the state, the
 * every-step loss's dL/dh_t added to each row at the larger of the two exponents (gb_rfinish,
 * gb_radd_loss). sig_e[t] is the largest non-zero row's exponent, and the recorded norms
 * (||dL/dh_t||, the LSTM's ||dL/dc_t|| of the total dc = carried part + dL/dh_t o_t tanh'(c_t))
 * take every row at it. The parameter gradients are sums over steps and rows of terms with
 * different exponents: the steps' dz rows are collected in chunks of K steps (icfg[GB_RI_CHUNK];
 * chunk c holds the steps [cK, cK + K), so a call over a segment of a multiple of K steps chunks
 * as the whole run); each accumulator's exponent for the chunk is the largest over the chunk's
 * (step, row) pairs it adds (dW_ih: rows whose dz and x_t rows are both not all zero; dW_hh: dz
 * and h_{t-1}, plus the vanilla cell's fexp[t]; the biases: dz's non-zero rows), each row scaled
 * by 2^(its exponent - that) <= 1 (the reference's aligned add, applied before instead of after
 * the product, which is the same numbers unless a product is subnormal), and dW_ih = Z^T X,
 * dW_hh = Z^T H become products over K*B rows, added to the running (mantissa, exponent)
 * accumulators by the aligned rule (gb_chunk_flush). The norm of step t's dW_hh term,
 * ||dz_t^T h_{t-1}||_F (its rows at the step's largest pair exponent), is computed from the
 * B x B Gram matrices, sum((dz dz^T) o (h h^T)), when that is cheaper than the (GN, N) product
 * itself (B (GN + N) / 2 < GN N) and their sum keeps more than 2^-26 of its terms' magnitudes
 * (gb_step_norm_plain), else directly.
 *
 * The exact-chain helpers (normalise, clip, norm) repeat those of stack_impl.h over the joint
 * rows [dL/dh | dL/dc], so that the LSTM's two parts share each row's exponent; they are static
 * there, and this file is a separate translation unit.
 */
#include <stdlib.h>
#include <string.h>
#include "gb_internal.h"
#include "gates.h"

#define GB_CAT2(a, b) a##_##b
#define GB_CAT(a, b) GB_CAT2(a, b)
#define F(name) GB_CAT(GB_CAT(name, SFX), GB_ISA) /* this instance's: gb_lstm_forward_f64_v4 */
#define FP(name) GB_CAT(name, SFX)                /* the headers' and the exported ones: gb_tanh_grad_f64 */
#define GB_MIN(a, b) ((a) < (b) ? (a) : (b))
#define GB_MAX(a, b) ((a) > (b) ? (a) : (b))
/* c + a b of the sums below (in double: GB_FMAD, rows_impl.h), fused in every instance with FMA
 * (v3, v4) however the compiler vectorises the loop (-ffp-contract=fast left it to that: AVX-512
 * vectorised the products of a sum apart from its in-order additions, unfused, where AVX2 fused
 * them: the two instances' step norms differed in the last bits), the plain expression without.
 * The 8-lane sums are written on vectors (GB_HAVE_VEC; the Gram matrices' of 8 lanes, the rows'
 * sums of squares in rows_impl.h of the instance's width): acc = a b + acc, one contraction per
 * lane in every instance with FMA (the scalar fma of each lane was not vectorised). */
#ifdef __FMA__
#define GB_RFMA(a, b, c) TFMA(a, b, c)
#else
#define GB_RFMA(a, b, c) ((a) * (b) + (c))
#endif

/* ------------------------------------------------------------------ products */
/* C (m,n) = op(A) op(Bm) + beta C in column-major through BLAS (the Fortran contract, alpha = 1,
 * beta 0 or 1). Row-major X (r, c) is column-major X^T (c, r). */
static void F(gb_rgemm)(GEMM_FN gemm, char ta, char tb, int64_t m, int64_t n, int64_t k, const REAL *A,
                        int64_t lda, const REAL *Bm, int64_t ldb, int beta, REAL *C, int64_t ldc) {
    int im = (int)m, in = (int)n, ik = (int)k, ia = (int)lda, ib = (int)ldb, ic = (int)ldc;
    REAL one = 1, bt = (REAL)beta;
    gemm(&ta, &tb, &im, &in, &ik, &one, (REAL *)A, &ia, (REAL *)Bm, &ib, &bt, C, &ic);
}

/* The own products: the stack drivers' register tiles and blocks of k (gemm_impl.h, over T; T is
 * REAL there and again the number of steps, a->T, after it). */
#define T REAL
#include "gemm_impl.h"
#include "rows_impl.h" /* the row helpers, shared with the stacks (one segment there, two here) */
#undef T

/* An operand the own products read at every step (W_hh^T, W_hh; W_ih^T once) is packed once per
 * call in column panels of GB_RPW columns (the last narrower), each panel its K rows of its
 * width, next to each other: entry (k, c) of panel n0 at n0 K + k nw + c - n0. A panel's block
 * of GB_KC rows (gemm_impl.h) stays in L2 while every row of the product goes by, where the
 * operand's own rows, GN or N apart (a power of two), fell onto few cache sets. The threads of a
 * call take whole panels (gb_rjob), so a panel's columns are cut into the same tiles whatever
 * the thread count. 64 columns: two AVX-512 float64 tiles, a few panels even at N = 128. */
#define GB_RPW 64

/* The packed B (K, Nc) of W (trans: B = W^T, W (Nc, K); else B = W, (K, Nc)); NULL on ENOMEM */
static REAL *F(gb_rpack)(const REAL *W, int64_t K, int64_t Nc, int trans) {
    REAL *P = aligned_alloc(64, (sizeof(REAL) * (size_t)(K * Nc) + 63) / 64 * 64);
    if (!P) return NULL;
    for (int64_t n0 = 0; n0 < Nc; n0 += GB_RPW) {
        const int64_t nw = GB_MIN(GB_RPW, Nc - n0);
        REAL *p = P + n0 * K;
        for (int64_t k = 0; k < K; k++)
            for (int64_t c = 0; c < nw; c++) p[k * nw + c] = trans ? W[(n0 + c) * K + k] : W[k * Nc + n0 + c];
    }
    return P;
}

/* One own product C (M,Nc) [+]= A (M,K) B (K,Nc), A(m,k) = A[m sam + k sak], C's rows ldc apart;
 * B packed (pk, gb_rpack) or its rows ldb apart (Bm). The threads take blocks of 4 rows where
 * there are more rows than columns (the input projection's T B, dW's GN), else panels of columns
 * (a step's B rows: each thread reads only its share of W_hh). Every entry is computed by the same tile code and
 * the same blocks of k whatever the split: the bits do not depend on the thread count. */
typedef struct {
    REAL *C;
    const REAL *A, *Bm, *pk;
    int64_t ldc, sam, sak, ldb, M, Nc, K;
    int beta;
} F(gb_rjob);

/* rows [m0, m1) x column panels from n0 to n1 of a job: B's blocks of GB_KC rows x GB_RPW columns,
 * from pk, or copied into the thread's scratch block (K > GB_KC), or read in place */
static void F(gb_rjob_part)(const F(gb_rjob) *j, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    const int64_t K = j->K;
    REAL *pack = !j->pk && K > GB_KC ? gb_thread_scratch(GB_KC * GB_RPW * sizeof(REAL)) : NULL;
    for (int64_t c0 = n0; c0 < n1; c0 += GB_RPW) {
        const int64_t nw = GB_MIN(GB_RPW, j->Nc - c0);
        int64_t k0 = 0;
        do { /* K = 0 cannot occur (gb_rcheck): one pass at least */
            const int64_t k1 = j->pk || pack ? GB_MIN(K, k0 + GB_KC) : K;
            const REAL *b = j->pk ? j->pk + c0 * K + k0 * nw : pack ? pack : j->Bm + c0;
            const int64_t ldb = j->pk || pack ? nw : j->ldb;
            if (pack)
                for (int64_t k = k0; k < k1; k++) memcpy(pack + (k - k0) * nw, j->Bm + k * j->ldb + c0, nw * sizeof(REAL));
            for (int64_t m = m0; m < m1; m += 4)
                F(gb_gemm_block)(j->C + m * j->ldc + c0, j->A + m * j->sam, j->sam, j->sak, b, NULL,
                                 GB_MIN(4, m1 - m), nw, k0, k1, K, j->ldc, ldb, j->beta);
            k0 = k1;
        } while (k0 < K);
    }
}

/* thread tid's share of n units (blocks of rows or panels): [n tid / nth, n (tid + 1) / nth) */
static inline int64_t F(gb_rshare)(int64_t n, int tid, int nth) { return n * tid / nth; }

static void F(gb_rjob_share)(const F(gb_rjob) *j, int tid, int nth) {
    if (j->M > j->Nc) {
        const int64_t nb = (j->M + 3) / 4, b0 = F(gb_rshare)(nb, tid, nth), b1 = F(gb_rshare)(nb, tid + 1, nth);
        F(gb_rjob_part)(j, 4 * b0, GB_MIN(j->M, 4 * b1), 0, j->Nc);
    } else {
        const int64_t np = (j->Nc + GB_RPW - 1) / GB_RPW, p0 = F(gb_rshare)(np, tid, nth),
                      p1 = F(gb_rshare)(np, tid + 1, nth);
        F(gb_rjob_part)(j, 0, j->M, p0 * GB_RPW, GB_MIN(j->Nc, p1 * GB_RPW));
    }
}

/* The call's team (csrc/team.c): thread 0 runs the driver and posts each own product as a job
 * (gb_rrun); the helpers wait for it (gb_progress_await: an idle helper is not a late partner),
 * take their share and meet thread 0 at a barrier, which judges the team (a partner without a
 * CPU of its own: solo, the rest of the call on thread 0, the same bits). A step's element-wise
 * work on the gates (rows of the batch, each computed by the same code whoever takes it: the
 * same bits on any number of threads) and the Gram matrices of its norm are posted the same way
 * (gb_rrun_fn: a function over thread tid's share); their sums over the batch stay on thread 0.
 * Measured (GRU, B = 64, T = 100, float64, two threads, perf): that work was ~18 % of the
 * samples, on thread 0 while its partner waited. */
typedef void (*F(gb_rfn))(void *ctx, int tid, int nth);

typedef struct {
    gb_progress posted; /* the number of the last job posted (stop: the helpers leave) */
    gb_barrier *bar;    /* NULL: thread 0 alone (no team, or solo) */
    int nth, sense, stop;
    F(gb_rjob) job;
    F(gb_rfn) fn; /* non-NULL: the job is fn(ctx, tid, nth), not a product */
    void *ctx;
} F(gb_rteam);

static void F(gb_rpost)(F(gb_rteam) *tm) {
    gb_progress_set(tm->bar, &tm->posted, atomic_load_explicit(&tm->posted.step, memory_order_relaxed) + 1);
}

static void F(gb_rmeet)(F(gb_rteam) *tm) {
    gb_barrier_wait(tm->bar, &tm->sense); /* every share written; the job may change */
    if (tm->bar->solo) tm->bar = NULL;   /* the helpers read the same flag after this barrier */
}

static void F(gb_rrun)(F(gb_rteam) *tm, const F(gb_rjob) *j) {
    if (!tm || !tm->bar) {
        F(gb_rjob_share)(j, 0, 1);
        return;
    }
    tm->job = *j;
    tm->fn = NULL;
    F(gb_rpost)(tm);
    F(gb_rjob_share)(&tm->job, 0, tm->nth);
    F(gb_rmeet)(tm);
}

/* fn(ctx, tid, nth) on every thread of the team (thread 0 alone: fn(ctx, 0, 1)) */
static void F(gb_rrun_fn)(F(gb_rteam) *tm, F(gb_rfn) fn, void *ctx) {
    if (!tm || !tm->bar) {
        fn(ctx, 0, 1);
        return;
    }
    tm->fn = fn;
    tm->ctx = ctx;
    F(gb_rpost)(tm);
    fn(ctx, 0, tm->nth);
    F(gb_rmeet)(tm);
}

static void F(gb_rserve)(F(gb_rteam) *tm, int tid, int nth, gb_barrier *bar) {
    int sense = 0;
    for (int64_t seq = 1;; seq++) {
        gb_progress_await(bar, &tm->posted, seq);
        if (tm->stop) return;
        if (tm->fn)
            tm->fn(tm->ctx, tid, nth);
        else
            F(gb_rjob_share)(&tm->job, tid, nth);
        gb_barrier_wait(bar, &sense);
        if (bar->solo) return;
    }
}

/* Row-major products, named for what they compute (all alpha = 1); own (gb_rjob, on the team)
 * or BLAS, mm->own as gb_blas_for decides for the cell's width N:
 *   rows_times_wT:  Y (R,GN) [+]= Xr (R,K) W^T, W (GN,K); WTp = W^T packed for own   x W^T, h W_hh^T
 *   rows_times_w:   Y (R,K)  [+]= Z (R,GN) W,   W (GN,K); Wp = W packed for own      dz W_hh
 *   zT_times_rows:  Y (GN,K)  = Z^T Xr, Z (R,GN), Xr (R,K)                         dW = dz^T x, dz^T h
 *   gram:           Y (R,R)   = Xr Xr^T, Xr (R,K)                                   the step norms */
typedef struct {
    GEMM_FN gemm;
    int own;
    F(gb_rteam) *tm;
} F(gb_rmm);

static void F(gb_rows_times_wT)(const F(gb_rmm) *mm, REAL *Y, const REAL *Xr, const REAL *W, const REAL *WTp,
                                int64_t R, int64_t K, int64_t GN, int beta) {
    if (mm->own) {
        const F(gb_rjob) j = {.C = Y, .A = Xr, .pk = WTp, .ldc = GN, .sam = K, .sak = 1,
                              .M = R, .Nc = GN, .K = K, .beta = beta};
        F(gb_rrun)(mm->tm, &j);
        return;
    }
    const int64_t CH = 1 << 20; /* rows per call: int dimensions for BLAS */
    for (int64_t r0 = 0; r0 < R; r0 += CH)
        F(gb_rgemm)(mm->gemm, 'T', 'N', GN, GB_MIN(CH, R - r0), K, W, K, Xr + r0 * K, K, beta, Y + r0 * GN, GN);
}

static void F(gb_rows_times_w)(const F(gb_rmm) *mm, REAL *Y, const REAL *Z, const REAL *W, const REAL *Wp, int64_t R,
                               int64_t K, int64_t GN, int beta) {
    if (mm->own) {
        const F(gb_rjob) j = {.C = Y, .A = Z, .pk = Wp, .ldc = K, .sam = GN, .sak = 1,
                              .M = R, .Nc = K, .K = GN, .beta = beta};
        F(gb_rrun)(mm->tm, &j);
    } else {
        F(gb_rgemm)(mm->gemm, 'N', 'N', K, R, GN, W, K, Z, GN, beta, Y, K);
    }
}

static void F(gb_zT_times_rows)(const F(gb_rmm) *mm, REAL *Y, const REAL *Z, const REAL *Xr, int64_t R, int64_t K,
                                int64_t GN) {
    if (mm->own) {
        const F(gb_rjob) j = {.C = Y, .A = Z, .Bm = Xr, .ldc = K, .sam = 1, .sak = GN, .ldb = K,
                              .M = GN, .Nc = K, .K = R};
        F(gb_rrun)(mm->tm, &j);
    } else {
        F(gb_rgemm)(mm->gemm, 'N', 'T', K, GN, R, Xr, K, Z, GN, 0, Y, K);
    }
}

/* The Gram matrix's rows [i0, i1): entries (i, j <= i) and their mirror images, each the same
 * 8-lane dot product whoever computes it */
typedef struct {
    REAL *Y;
    const REAL *Xr;
    int64_t R, K;
} F(gb_gram_job);

/* the first row of thread tid's share of the lower triangle: about equal numbers of entries */
static int64_t F(gb_gram_cut)(int64_t R, int tid, int nth) {
    return tid >= nth ? R : (int64_t)((double)R * sqrt((double)tid / (double)nth));
}

static void F(gb_gram_rows)(void *ctx, int tid, int nth) {
    const F(gb_gram_job) *g = ctx;
    const int64_t K = g->K, R = g->R;
    for (int64_t i = F(gb_gram_cut)(R, tid, nth); i < F(gb_gram_cut)(R, tid + 1, nth); i++)
        for (int64_t j = 0; j <= i; j++) {
            const REAL *a = g->Xr + i * K, *b = g->Xr + j * K;
            REAL lane[8] = {0}, s = 0;
            int64_t k = 0;
#ifdef GB_HAVE_VEC
            F(gb_t8) acc = {0};
            for (; k + 8 <= K; k += 8) {
                F(gb_t8) va, vb;
                memcpy(&va, a + k, sizeof va);
                memcpy(&vb, b + k, sizeof vb);
                acc = va * vb + acc;
            }
            memcpy(lane, &acc, sizeof lane);
#else
            for (; k + 8 <= K; k += 8)
                for (int c = 0; c < 8; c++) lane[c] = GB_RFMA(a[k + c], b[k + c], lane[c]);
#endif
            for (; k < K; k++) s = GB_RFMA(a[k], b[k], s);
            for (int c = 0; c < 8; c++) s += lane[c];
            g->Y[i * R + j] = g->Y[j * R + i] = s;
        }
}

static void F(gb_gram)(const F(gb_rmm) *mm, REAL *Y, const REAL *Xr, int64_t R, int64_t K) {
    if (!mm->own) {
        F(gb_rgemm)(mm->gemm, 'T', 'N', R, R, K, Xr, K, Xr, K, 0, Y, R);
        return;
    }
    F(gb_gram_job) g = {.Y = Y, .Xr = Xr, .R = R, .K = K};
    F(gb_rrun_fn)(mm->tm, F(gb_gram_rows), &g);
}

/* Own kernels for width N? (no BLAS, or N below the width from which the options use it) */
static int F(gb_use_own)(const gb_opts *opts, int64_t N) { return !gb_blas_for(opts, N, sizeof(REAL) == sizeof(float)); }

/* The packed operand for the own products (gb_rpack), NULL when BLAS does them; *rc = GB_ENOMEM
 * when it cannot be had */
static REAL *F(gb_rpacked)(const REAL *W, int64_t K, int64_t Nc, int trans, int own, int *rc) {
    if (!own) return NULL;
    REAL *P = F(gb_rpack)(W, K, Nc, trans);
    if (!P) *rc = GB_ENOMEM;
    return P;
}

/* ------------------------------------------------------------------ the exact chain */
/* sum (x s1 s2)^2 in double, rows of N in order (gb_sumsq_row_at's sums, rows_impl.h).    x (M,N) */
static double F(gb_rsumsq)(const REAL *x, int64_t M, int64_t N, double s1, double s2) {
    double total = 0;
    for (int64_t r = 0; r < M; r++) total += F(gb_sumsq_row_at)(x + r * N, N, 0, s1, s2);
    return total;
}

/* ||x|| with no square lost to under- or overflow (the reference's _snorm): the plain sum of
 * squares when it lies in [2^-960, 2^960], else the entries scaled by 2^-e (e the exponent of
 * max|x|, in two exact steps) and the norm scaled back, one double.    x (M,N) */
static double F(gb_rnorm)(const REAL *x, int64_t M, int64_t N) {
    const double s = F(gb_rsumsq)(x, M, N, 1.0, 1.0);
    if (s >= 0x1p-960 && s <= 0x1p960) return sqrt(s);
    const double a = (double)F(gb_absmax)(x, M * N, 0);
    if (!(a > 0) || !isfinite(a)) return sqrt(s);
    int e;
    frexp(a, &e);
    const int e1 = -e / 2, e2 = -e - e1;
    return ldexp(sqrt(F(gb_rsumsq)(x, M, N, ldexp(1.0, e1), ldexp(1.0, e2))), e);
}

static int F(gb_rall_finite)(const REAL *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* ------------------------------------------------------------------ one exponent per row
 * The backward state carries a power of two per row (sample) of the batch: row i of dL/dh (and
 * of the LSTM's carried dL/dc, which shares it) is its mantissas times 2^r[i] (the reference's
 * signal_rows, normalise_rows, clip_rows, scaled_rows, row_top). A row's operations are its
 * own; sums over the batch (norms, the parameter gradients) take the rows at the largest
 * exponent of those they add, each row scaled by 2^(r[i] - that) <= 1. */
#define GB_RNOEXP INT64_MIN /* no row yet */

/* ||rows of x (B,N) each times 2^(r[i] - e)|| (rounded to REAL row by row, as scaled_rows), one
 * double with no square lost: the plain sum of squares when it lies in [2^-960, 2^960], else
 * the scaled rows once more times 2^-m (m the exponent of their largest entry, two exact steps)
 * and the norm times 2^m (gb_rnorm's rule) */
static double F(gb_rrows_norm)(const REAL *x, int64_t B, int64_t N, const int64_t *r, int64_t e) {
    double s = 0;
    for (int64_t i = 0; i < B; i++) s += F(gb_sumsq_row_at)(x + i * N, N, gb_clamp_exp(r[i] - e), 1.0, 1.0);
    if (s >= 0x1p-960 && s <= 0x1p960) return sqrt(s);
    double a = 0;
    for (int64_t i = 0; i < B; i++) {
        const REAL m = F(gb_absmax)(x + i * N, N, 0);
        const double y = fabs((double)TLDEXP(m, gb_clamp_exp(r[i] - e))); /* the row's scaled max */
        a = y > a ? y : a;
    }
    if (!(a > 0) || !isfinite(a)) return sqrt(s);
    int m;
    frexp(a, &m);
    const int m1 = -m / 2, m2 = -m - m1;
    s = 0;
    for (int64_t i = 0; i < B; i++)
        s += F(gb_sumsq_row_at)(x + i * N, N, gb_clamp_exp(r[i] - e), ldexp(1.0, m1), ldexp(1.0, m2));
    return ldexp(sqrt(s), m);
}

/* acc 2^E + term 2^e into acc at the larger exponent (E = GB_EXP_EMPTY: acc becomes the term);
 * an all-zero term is skipped. */
static void F(gb_racc)(REAL *acc, int64_t *E, const REAL *term, int64_t e, int64_t n) {
    int nz = 0;
    for (int64_t i = 0; i < n; i++) nz |= term[i] != 0;
    if (!nz) return;
    if (*E == GB_EXP_EMPTY) {
        memcpy(acc, term, sizeof(REAL) * (size_t)n);
        *E = e;
        return;
    }
    const int64_t em = GB_MAX(*E, e);
    const int da = gb_clamp_exp(*E - em), ds = gb_clamp_exp(e - em);
    const REAL sa = F(gb_pow2)(da), ss = F(gb_pow2)(ds); /* one of da, ds is 0 */
    if (sa != 0 && ss != 0) {
        for (int64_t i = 0; i < n; i++) acc[i] = acc[i] * sa + term[i] * ss;
    } else { /* a shift below REAL's normal powers of two: two products each (gb_pow2_down), no ldexp call
              * per entry (23 % of a float32 LSTM's perf samples at T = 20,000, 2026-12-07) */
        REAL pa[2], ps[2];
        F(gb_pow2_down)(da, pa);
        F(gb_pow2_down)(ds, ps);
        for (int64_t i = 0; i < n; i++) acc[i] = F(gb_times_down)(acc[i], pa) + F(gb_times_down)(term[i], ps);
    }
    *E = em;
}

/* ------------------------------------------------------------------ per-call state */
/* The chunk's flags of a (step, row) pair (cx->fl): its dz row for W_ih/b_ih not all zero, its
 * dz row for W_hh/b_hh not all zero, its x_t row and its h_{t-1} row not all zero */
enum { GB_RF_ZX = 1, GB_RF_ZH = 2, GB_RF_X = 4, GB_RF_H = 8 };

typedef struct {
    F(gb_rmm) mm;      /* BLAS or the own products (on the call's team) */
    REAL *Wp;          /* W_hh packed for the own products (gb_rpack), else NULL */
    int64_t K;         /* steps per chunk of the parameter-gradient products */
    REAL *zx, *zh;     /* (K,B,GN) dz rows of the chunk for W_ih/b_ih and W_hh/b_hh (zh may be zx) */
    int64_t *rd, *rdh; /* (K,B) their rows' exponents (rdh is rd where zh is zx) */
    unsigned char *fl; /* (K,B) the pairs' flags (GB_RF_*) */
    int64_t *fe;       /* (K,) the steps' fexp[t] (the vanilla cell's h_{t-1}; else 0) */
    REAL *zs;          /* (K,B,GN) rows scaled to a sum's exponent (the chunk's products, a step's norm) */
    REAL *tmp;         /* (GN, max(N, D)) */
    REAL *tb;          /* (GN,) */
    REAL *gram;        /* (2, B, B) */
    REAL *gg;          /* (2, B, N) the state [dL/dh; dL/dc] */
    int64_t *r;        /* (B,) its rows' exponents */
    int64_t *rt;       /* (B,) a step's dz rows' exponents (the vanilla cell's rescue shifts first) */
    unsigned char *nz; /* (B,) the state's row not all zero */
    REAL *ga, *gda;    /* (B, GN) gate values and derivatives recomputed from Z */
    REAL *tc, *dtc;    /* (B, N) tanh(c_t), tanh'(c_t) (then the LSTM backward's total dL/dc_t) */
    int gram_norms;    /* step norms from the Gram matrices */
} F(gb_rctx);

static void *F(gb_ralloc)(size_t bytes) {
    size_t n = (bytes + 63) / 64 * 64;
    return aligned_alloc(64, n ? n : 64);
}

static void F(gb_rctx_free)(F(gb_rctx) *cx) {
    if (cx->zh != cx->zx) free(cx->zh);
    free(cx->zx);
    if (cx->rdh != cx->rd) free(cx->rdh);
    free(cx->rd);
    free(cx->fl);
    free(cx->fe);
    free(cx->zs);
    free(cx->tmp);
    free(cx->tb);
    free(cx->gram);
    free(cx->gg);
    free(cx->r);
    free(cx->rt);
    free(cx->nz);
    free(cx->ga);
    free(cx->tc);
    free(cx->Wp);
}

static int F(gb_rctx_init)(F(gb_rctx) *cx, const gb_opts *opts, F(gb_rteam) *tm, const gb_recurrent_arrays *a,
                           int separate_zh) {
    const int64_t T_ = a->T, B = a->B, N = a->N, D = a->D, GN = a->GN;
    memset(cx, 0, sizeof *cx);
    cx->mm = (F(gb_rmm)){.gemm = opts ? opts->GEMM_FIELD : NULL, .own = F(gb_use_own)(opts, N), .tm = tm};
    cx->K = a->icfg[GB_RI_CHUNK]; /* slot of step t: t % K; at most T slots are used */
    const int64_t slots = GB_MIN(cx->K, T_);
    const size_t zrows = (size_t)(slots * B * GN);
    cx->zx = F(gb_ralloc)(sizeof(REAL) * zrows);
    cx->zh = separate_zh ? F(gb_ralloc)(sizeof(REAL) * zrows) : cx->zx;
    cx->rd = F(gb_ralloc)(sizeof(int64_t) * (size_t)(slots * B));
    cx->rdh = separate_zh ? F(gb_ralloc)(sizeof(int64_t) * (size_t)(slots * B)) : cx->rd;
    cx->fl = F(gb_ralloc)((size_t)(slots * B));
    cx->fe = F(gb_ralloc)(sizeof(int64_t) * (size_t)slots);
    cx->zs = F(gb_ralloc)(sizeof(REAL) * zrows);
    cx->tmp = F(gb_ralloc)(sizeof(REAL) * (size_t)(GN * GB_MAX(N, D)));
    cx->tb = F(gb_ralloc)(sizeof(REAL) * (size_t)GN);
    cx->gram = F(gb_ralloc)(sizeof(REAL) * (size_t)(2 * B * B));
    cx->gg = F(gb_ralloc)(sizeof(REAL) * (size_t)(2 * B * N));
    cx->r = F(gb_ralloc)(sizeof(int64_t) * (size_t)B);
    cx->rt = F(gb_ralloc)(sizeof(int64_t) * (size_t)B);
    cx->nz = F(gb_ralloc)((size_t)B);
    cx->ga = F(gb_ralloc)(sizeof(REAL) * (size_t)(2 * B * GN));
    cx->gda = cx->ga ? cx->ga + B * GN : NULL;
    cx->tc = F(gb_ralloc)(sizeof(REAL) * (size_t)(2 * B * N));
    cx->dtc = cx->tc ? cx->tc + B * N : NULL;
    cx->gram_norms = B * (GN + N) < 2 * GN * N; /* the Gram matrices are symmetric: half of each */
    int rc = GB_OK;
    cx->Wp = F(gb_rpacked)(((const REAL *)a->W_hh), GN, N, 0, cx->mm.own, &rc);
    if (rc || !cx->zx || !cx->zh || !cx->rd || !cx->rdh || !cx->fl || !cx->fe || !cx->zs || !cx->tmp || !cx->tb || !cx->gram ||
        !cx->gg || !cx->r || !cx->rt || !cx->nz || !cx->ga || !cx->tc)
        return GB_ENOMEM;
    for (int64_t i = 0; i < B; i++) cx->rt[i] = 0;
    return GB_OK;
}

static int F(gb_rcheck)(const gb_recurrent_arrays *a, int G, int need_dh) {
    if (a->T < 1 || a->B < 1 || a->N < 1 || a->D < 1 || a->GN != G * a->N) return GB_EBADARG;
    if (a->B * a->GN > INT32_MAX / 2 || a->GN * GB_MAX(a->N, a->D) > INT32_MAX / 2) return GB_EBADARG;
    const int64_t act = a->icfg[GB_RI_ACT], clip = a->icfg[GB_RI_CLIP];
    if (act < GB_IDENTITY || act > GB_GELU || act == GB_PRELU) return GB_EBADACT;
    if (clip < GB_CLIP_NONE || clip > GB_CLIP_NORM || a->icfg[GB_RI_CHUNK] < 1) return GB_EBADARG;
    if (need_dh && a->S != (a->icfg[GB_RI_LOSS_EVERY] ? a->T : 1)) return GB_EBADARG;
    return GB_OK;
}

/* ------------------------------------------------------------------ statistics */
/* mean and standard deviation of h (B*N values), two passes in double, rows in order */
static void F(gb_rmoments)(const REAL *h, int64_t B, int64_t N, double *mean, double *std) {
    double s = 0;
    for (int64_t r = 0; r < B; r++) {
        double rs = 0;
        for (int64_t j = 0; j < N; j++) rs += (double)h[r * N + j];
        s += rs;
    }
    const double m = s / (double)(B * N);
    double v = 0;
    for (int64_t r = 0; r < B; r++) {
        double rv = 0;
        for (int64_t j = 0; j < N; j++) {
            const double d = (double)h[r * N + j] - m;
            rv += d * d;
        }
        v += rv;
    }
    *mean = m;
    *std = sqrt(v / (double)(B * N));
}

/* the reference's _gate_stats: saturation over all gate entries (the tanh block against
 * RF_SAT, the sigmoid ones against RF_SAT_GATE), the mean of block 1 (forget / update gate)
 * and its fraction below RF_GATE_LOW.    a, da (B,GN) */
static void F(gb_gate_stats)(const REAL *a, const REAL *da, int64_t B, int64_t N, int G, int tanh_block, const double *fcfg,
                             double *sat, double *gmean, double *glow) {
    int64_t nsat = 0, nlow = 0;
    double s = 0;
    for (int64_t r = 0; r < B; r++) {
        double rs = 0;
        for (int k = 0; k < G; k++) {
            const double thr = k == tanh_block ? fcfg[GB_RF_SAT] : fcfg[GB_RF_SAT_GATE];
            const REAL *d = da + r * G * N + k * N;
            for (int64_t j = 0; j < N; j++) nsat += (double)d[j] < thr;
        }
        const REAL *g = a + r * G * N + N;
        for (int64_t j = 0; j < N; j++) {
            rs += (double)g[j];
            nlow += (double)g[j] < fcfg[GB_RF_GATE_LOW];
        }
        s += rs;
    }
    *sat = (double)nsat / (double)(B * G * N);
    *gmean = s / (double)(B * N);
    *glow = (double)nlow / (double)(B * N);
}

static void F(gb_record_forward)(const REAL *h, int64_t t, int64_t B, int64_t N, double *act_mean, double *act_std,
                                  int64_t *info) {
    F(gb_rmoments)(h, B, N, act_mean + t, act_std + t);
    if (info[GB_INFO_FORWARD] < 0 && !isfinite(act_mean[t]) && !F(gb_rall_finite)(h, B * N))
        info[GB_INFO_FORWARD] = t;
}

/* U (R,GN) = X (R,D) W_ih^T + bias */
/* (one product over all T B rows: the own kernels for few inputs D, where BLAS would split the
 * thin product over threads, else BLAS) */
static int F(gb_input_projection)(const gb_opts *opts, F(gb_rteam) *tm, REAL *U, const REAL *X, const REAL *W_ih,
                                  const REAL *bias, int64_t R, int64_t D, int64_t GN) {
    int rc = GB_OK;
    const F(gb_rmm) mm = {.gemm = opts ? opts->GEMM_FIELD : NULL, .own = F(gb_use_own)(opts, D), .tm = tm};
    REAL *WTp = F(gb_rpacked)(W_ih, D, GN, 1, mm.own, &rc);
    if (rc) return rc;
    for (int64_t r = 0; r < R; r++) memcpy(U + r * GN, bias, sizeof(REAL) * (size_t)GN);
    F(gb_rows_times_wT)(&mm, U, X, W_ih, WTp, R, D, GN, 1);
    free(WTp);
    return GB_OK;
}

/* ------------------------------------------------------------------ a step's rows on the team */
/* One step's element-wise work, rows [r0, r1) of the batch (a thread's share of B, gb_rrows):
 * the loops of the cells' bodies, row by row, so that a row's values do not depend
 * on who computes it. Arrays of the step (B rows): Z (B,GN) pre-activations, P (B,GN) the GRU's
 * h W_hh^T, ga/gda (B,GN) gate values and derivatives, h/hp (B,N) h_t and h_{t-1}, hn (B,N) the
 * GRU's h W_hn^T + b_hn, c/cp (B,N) c_t and c_{t-1}, tc/dtc (B,N) tanh(c_t) and tanh'(c_t) (the
 * LSTM backward leaves its total dL/dc_t in dtc), g (B,N) dL/dh_t (then the part carried to
 * h_{t-1}), gc (B,N) the LSTM's part of dL/dc_t carried through c_{t+1} (then to c_{t-1}), dz and
 * dzh (B,GN) the backward's rows for W_ih and for W_hh. The vanilla cell (GN = N): act and p its
 * phi; the forward's Z z_t and P h_{t-1} W_hh^T where it rescales (z = su z + sp P, or by du and
 * dp where a factor is not a normal number), then phi'(z_t); thr the saturation threshold and
 * nsat (B,) each row's count below it; the backward's ga/gda phi and phi' recomputed from Z,
 * dz = g phi', each row rescued on its own where rescue (pd: the activation's parameter in
 * double) and kr (B,) its shift. Each function takes rows [r0, r1). */
typedef struct {
    int64_t B, N;
    REAL *Z, *P, *ga, *gda, *h, *hn, *c, *tc, *dtc, *g, *gc, *dz, *dzh;
    const REAL *hp, *cp, *bias;
    int64_t *nsat, *kr;
    int act, rescale, du, dp, rescue;
    REAL p, su, sp;
    double thr, pd;
} F(gb_rstep);

/* a step's rows [r0, r1) of one of the row functions below, and thread tid's share of the B rows */
typedef void (*F(gb_rrowfn))(const F(gb_rstep) *st, int64_t r0, int64_t r1);
typedef struct {
    const F(gb_rstep) *st;
    F(gb_rrowfn) fn;
} F(gb_rrowjob);

static void F(gb_rrows_share)(void *ctx, int tid, int nth) {
    const F(gb_rrowjob) *j = ctx;
    j->fn(j->st, F(gb_rshare)(j->st->B, tid, nth), F(gb_rshare)(j->st->B, tid + 1, nth));
}

/* a step's rows on the team where each thread gets GB_RROWS_MIN of them at least, else on thread 0.
 * No bound on the work besides the team's own (B N GN, gradbench/recurrent/cbackend.py): the
 * vanilla cell's rows, the least work a row, measured on two threads, the team's rows against
 * thread 0's (ms, alternating processes, pairs where the team did not go solo): N = 256, B = 4,
 * T = 1000 (1024 values a step) 38.7 / 39.2; N = 128, B = 16, T = 400 19.8, 20.3 / 21.6, 21.6;
 * N = 64, B = 64, T = 100 9.4-10.0 / 9.3-10.3 (three pairs). */
#define GB_RROWS_MIN 2
static void F(gb_rrows)(F(gb_rteam) *tm, F(gb_rrowfn) fn, const F(gb_rstep) *st) {
    F(gb_rrowjob) j = {.st = st, .fn = fn};
    if (tm && tm->bar && st->B >= GB_RROWS_MIN * tm->nth)
        F(gb_rrun_fn)(tm, F(gb_rrows_share), &j);
    else
        fn(st, 0, st->B);
}

/* ------------------------------------------------------------------ the vanilla cell */
/* h = phi(z), da = phi'(z): the forward's h and the backward's phi', the same bits in both. */
static void F(gb_rnn_activation)(REAL *h, REAL *da, const REAL *z, int64_t n, int act, REAL p) {
    if (act == GB_TANH) {
        FP(gb_tanh_grad)(h, da, z, n);
    } else if (act == GB_SIGMOID) {
        FP(gb_sigmoid_grad)(h, da, z, n);
    } else {
        for (int64_t i = 0; i < n; i++) {
            const REAL zi = z[i];
            h[i] = FP(gb_phi)(zi, act, p);
            da[i] = FP(gb_dphi)(zi, act, p);
        }
    }
}

/* The vanilla forward's rows: z_t (rescaled: from 2^-e U_t and 2^(fexp - e) h_{t-1} W_hh^T),
 * h = phi(z), phi'(z) and the row's count of |phi'| < thr (summed on thread 0: integers, any
 * order). Row by row, the same bits as the whole B N array at once (gates.h: a row's tail takes
 * the same 8-lane code; phi, phi' are per element). */
static void F(gb_rnn_forward_rows)(const F(gb_rstep) *st, int64_t r0, int64_t r1) {
    const int64_t N = st->N;
    const REAL su = st->su, sp = st->sp; /* locals: a store to z may alias a REAL member */
    const int du = st->du, dp = st->dp;
    const double thr = st->thr;
    for (int64_t r = r0; r < r1; r++) {
        REAL *z = st->Z + r * N, *zb = st->P + r * N;
        if (st->rescale) { /* one of du, dp is 0 */
            if (su != 0 && sp != 0) {
                for (int64_t j = 0; j < N; j++) z[j] = z[j] * su + zb[j] * sp;
            } else {
                for (int64_t j = 0; j < N; j++) z[j] = TLDEXP(z[j], du) + TLDEXP(zb[j], dp);
            }
        }
        F(gb_rnn_activation)(st->h + r * N, zb, z, N, st->act, st->p); /* zb: phi'(z) */
        int64_t nsat = 0;
        for (int64_t j = 0; j < N; j++) nsat += fabs((double)zb[j]) < thr;
        st->nsat[r] = nsat;
    }
}

/* The saturated-derivative rescue of a vanilla row (reference.rescue_rows, as the stacks'
 * layers): when every dz = g phi'(z) of the row lies below GB_RESCUE_BELOW (NaN ignored), dz is
 * recomputed in log form, ell = ln|g| + ln|phi'(z)|, k = floor(max ell / ln2), dz = sign
 * exp(ell - k ln2), rounded once; returns k, which the row's exponent takes (0: dz untouched).
 * The caller decides on max|dz|, found while forming dz.    dz, g, z (n,) */
static int64_t F(gb_rnn_rescue)(REAL *dz, const REAL *g, const REAL *z, int64_t n, int act, double p) {
    double top = -INFINITY, sgn;
    for (int64_t i = 0; i < n; i++) {
        const double ell = gb_rescue_term((double)g[i], (double)z[i], act, p, &sgn);
        top = ell > top ? ell : top;
    }
    if (!(top >= GB_RESCUE_LN_MIN && top < INFINITY)) return 0; /* beyond any int64 exponent: stays 0 */
    const int64_t k = (int64_t)floor(top / GB_LN2);
    const double rem = gb_log_rem(top, k);
    for (int64_t i = 0; i < n; i++) {
        const double ell = gb_rescue_term((double)g[i], (double)z[i], act, p, &sgn);
        dz[i] = (REAL)(sgn * exp((ell - top) + rem));
    }
    return k;
}

/* The vanilla backward's rows: phi' recomputed from z_t (ga: phi, unused), dz = g phi', the
 * row's max|dz| (NaN ignored) and, where every entry lies below GB_RESCUE_BELOW (rescue), the row
 * in log form (gb_rnn_rescue), then a row far from 1 brought to [0.5, 1) (gb_far_row): their
 * shifts in kr */
static void F(gb_rnn_backward_rows)(const F(gb_rstep) *st, int64_t r0, int64_t r1) {
    const int64_t N = st->N;
    const double below = GB_RESCUE_BELOW(sizeof(REAL) == sizeof(float));
    for (int64_t r = r0; r < r1; r++) {
        const REAL *da = st->gda + r * N, *g = st->g + r * N;
        REAL *dz = st->dz + r * N, m = 0;
        F(gb_rnn_activation)(st->ga + r * N, st->gda + r * N, st->Z + r * N, N, st->act, st->p);
        for (int64_t j = 0; j < N; j++) {
            dz[j] = g[j] * da[j];
            m = TFABS(dz[j]) > m ? TFABS(dz[j]) : m;
        }
        const int rescued = st->rescue && (double)m < below;
        st->kr[r] = rescued ? F(gb_rnn_rescue)(dz, g, st->Z + r * N, N, st->act, st->pd) : 0;
        /* a row far from 1 to [0.5, 1) before it meets W_hh (the reference's rnn_step_backward) */
        st->kr[r] += F(gb_far_row)(dz, N, rescued ? F(gb_absmax)(dz, N, 0) : m);
    }
}

static int F(gb_rnn_forward_body)(const gb_recurrent_arrays *a, const gb_opts *opts, F(gb_rteam) *tm) {
    int rc = GB_OK;
    const int64_t T_ = a->T, B = a->B, N = a->N, D = a->D, BN = B * N;
    const int act = (int)a->icfg[GB_RI_ACT], rescale = a->icfg[GB_RI_RESCALE_FWD] != 0;
    const REAL p = (REAL)a->fcfg[GB_RF_ACT_PARAM];
    const double thr = a->fcfg[GB_RF_SAT];
    const REAL *W_hh = ((REAL *)a->W_hh), *b_ih = ((REAL *)a->b_ih), *b_hh = ((REAL *)a->b_hh);
    REAL *H = ((REAL *)a->H), *Z = ((REAL *)a->Z);
    int64_t *fexp = a->fexp, *info = a->info;
    const F(gb_rmm) mm = {.gemm = opts ? opts->GEMM_FIELD : NULL, .own = F(gb_use_own)(opts, N), .tm = tm};
    REAL *bias = F(gb_ralloc)(sizeof(REAL) * (size_t)N), *zb = F(gb_ralloc)(sizeof(REAL) * (size_t)BN);
    int64_t *nsat = F(gb_ralloc)(sizeof(int64_t) * (size_t)B); /* each row's saturated count */
    REAL *WT = F(gb_rpacked)(W_hh, N, N, 1, mm.own, &rc);
    if (!bias || !zb || !nsat || rc) {
        free(bias);
        free(zb);
        free(nsat);
        free(WT);
        return GB_ENOMEM;
    }
    for (int64_t j = 0; j < N; j++) bias[j] = b_ih[j] + b_hh[j];
    rc = F(gb_input_projection)(opts, tm, Z, ((REAL *)a->X), ((REAL *)a->W_ih), bias, T_ * B, D, N); /* U, then z_t */
    info[GB_INFO_FORWARD] = -1;
    for (int64_t t = 0; t < T_ && rc == GB_OK; t++) {
        REAL *hp = H + t * BN, *h = H + (t + 1) * BN, *z = Z + t * BN;
        int64_t e = fexp[t];
        F(gb_rstep) st = {.B = B, .N = N, .Z = z, .P = zb, .h = h, .nsat = nsat, .act = act, .p = p, .thr = thr,
                          .rescale = rescale};
        if (rescale) { /* z = 2^-e U_t + 2^(fexp - e) h_{t-1} W_hh^T, e = max(0, fexp) */
            F(gb_rows_times_wT)(&mm, zb, hp, W_hh, WT, B, N, N, 0);
            e = GB_MAX(0, fexp[t]);
            st.du = gb_clamp_exp(-e); /* one of du, dp is 0 */
            st.dp = gb_clamp_exp(fexp[t] - e);
            st.su = F(gb_pow2)(st.du);
            st.sp = F(gb_pow2)(st.dp);
        } else {
            F(gb_rows_times_wT)(&mm, z, hp, W_hh, WT, B, N, N, 1);
        }
        F(gb_rrows)(tm, F(gb_rnn_forward_rows), &st); /* zb: phi'(z), for the saturated fraction */
        int64_t nsat_all = 0;
        for (int64_t r = 0; r < B; r++) nsat_all += nsat[r];
        fexp[t + 1] = e + (rescale ? F(gb_normalise)(h, BN) : 0);
        a->saturation[t] = (double)nsat_all / (double)BN;
        a->gate_mean[t] = a->gate_low[t] = NAN;
        F(gb_record_forward)(h, t, B, N, a->act_mean, a->act_std, info);
    }
    free(bias);
    free(zb);
    free(nsat);
    free(WT);
    return rc;
}

/* ------------------------------------------------------------------ gated cells */
/* 1 - s of a sigmoid gate s without cancellation (the reference's one_minus): s'/s where s > 1/2 */
static inline REAL F(gb_one_minus)(REAL s, REAL ds) { return s > (REAL)0.5 ? ds / s : (REAL)1 - s; }

/* The gate values a and derivatives da of one row of pre-activations z (G blocks of N; the
 * tanh block is 2, the others sigmoid): the reference's gates().    a, da, z (G N,) */
static void F(gb_gates_row)(REAL *a, REAL *da, const REAL *z, int64_t N, int G) {
    FP(gb_sigmoid_grad)(a, da, z, 2 * N);
    FP(gb_tanh_grad)(a + 2 * N, da + 2 * N, z + 2 * N, N);
    if (G == 4) FP(gb_sigmoid_grad)(a + 3 * N, da + 3 * N, z + 3 * N, N);
}



/* GRU forward: z_r, z_z += P; hn = P_n + b_hn; r, z; z_n += r hn; n; h = (1 - z) n + z h_{t-1} */
static void F(gb_gru_forward_rows)(const F(gb_rstep) *st, int64_t r0, int64_t r1) {
    const int64_t N = st->N, GN = 3 * N;
    for (int64_t r = r0; r < r1; r++) {
        REAL *zr = st->Z + r * GN, *ar = st->ga + r * GN, *dr = st->gda + r * GN, *hr = st->hn + r * N;
        const REAL *pr = st->P + r * GN;
        for (int64_t j = 0; j < 2 * N; j++) zr[j] = zr[j] + pr[j];          /* z_r, z_z */
        for (int64_t j = 0; j < N; j++) hr[j] = pr[2 * N + j] + st->bias[j]; /* hn */
        FP(gb_sigmoid_grad)(ar, dr, zr, 2 * N);                              /* r, z */
        for (int64_t j = 0; j < N; j++) zr[2 * N + j] = zr[2 * N + j] + ar[j] * hr[j]; /* z_n */
        FP(gb_tanh_grad)(ar + 2 * N, dr + 2 * N, zr + 2 * N, N);            /* n */
        const REAL *z = ar + N, *n = ar + 2 * N, *hpr = st->hp + r * N;
        for (int64_t j = 0; j < N; j++) st->h[r * N + j] = F(gb_one_minus)(z[j], dr[N + j]) * n[j] + z[j] * hpr[j];
    }
}

/* LSTM forward: the gates, c_t = f c_{t-1} + i g, tanh(c_t) as the backward recomputes it, h = o tanh(c_t) */
static void F(gb_lstm_forward_rows)(const F(gb_rstep) *st, int64_t r0, int64_t r1) {
    const int64_t N = st->N, GN = 4 * N;
    for (int64_t r = r0; r < r1; r++) {
        REAL *ar = st->ga + r * GN, *c = st->c + r * N, *tc = st->tc + r * N;
        const REAL *cp = st->cp + r * N;
        F(gb_gates_row)(ar, st->gda + r * GN, st->Z + r * GN, N, 4);
        const REAL *i = ar, *f = ar + N, *gg = ar + 2 * N, *o = ar + 3 * N;
        for (int64_t j = 0; j < N; j++) c[j] = f[j] * cp[j] + i[j] * gg[j];
        FP(gb_tanh_grad)(tc, st->dtc + r * N, c, N);
        for (int64_t j = 0; j < N; j++) st->h[r * N + j] = o[j] * tc[j];
    }
}

/* LSTM backward: the gates and tanh(c_t) recomputed; dc = gc + g o tanh'(c_t); dz_i = dc g~ i',
 * dz_f = dc c_{t-1} f', dz_g = dc i g~', dz_o = g tanh(c_t) o'; gc = dc f; dtc keeps dc */
static void F(gb_lstm_backward_rows)(const F(gb_rstep) *st, int64_t r0, int64_t r1) {
    const int64_t N = st->N, GN = 4 * N;
    for (int64_t r = r0; r < r1; r++) {
        F(gb_gates_row)(st->ga + r * GN, st->gda + r * GN, st->Z + r * GN, N, 4);
        FP(gb_tanh_grad)(st->tc + r * N, st->dtc + r * N, st->c + r * N, N);
        const REAL *i = st->ga + r * GN, *f = i + N, *gg = i + 2 * N, *o = i + 3 * N;
        const REAL *di = st->gda + r * GN, *df = di + N, *dg = di + 2 * N, *dout = di + 3 * N;
        REAL *zr = st->dz + r * GN;
        for (int64_t j = 0; j < N; j++) {
            const int64_t x = r * N + j;
            const REAL g = st->g[x];
            const REAL dc = st->gc[x] + g * o[j] * st->dtc[x];
            zr[j] = dc * gg[j] * di[j];
            zr[N + j] = dc * st->cp[x] * df[j];
            zr[2 * N + j] = dc * i[j] * dg[j];
            zr[3 * N + j] = g * st->tc[x] * dout[j];
            st->gc[x] = dc * f[j];
            st->dtc[x] = dc; /* tanh'(c_t) read above: the slot keeps the total dL/dc_t */
        }
    }
}

/* GRU backward: the gates recomputed; dn = g (1 - z) n'; dz rows for W_ih (dz) and W_hh (dzh:
 * the n block times r); g = g z, the part carried straight to h_{t-1} */
static void F(gb_gru_backward_rows)(const F(gb_rstep) *st, int64_t r0, int64_t r1) {
    const int64_t N = st->N, GN = 3 * N;
    for (int64_t r = r0; r < r1; r++) {
        REAL *ar = st->ga + r * GN, *dr = st->gda + r * GN;
        F(gb_gates_row)(ar, dr, st->Z + r * GN, N, 3);
        const REAL *rr = ar, *z = ar + N, *n = ar + 2 * N, *dzg = dr + N, *dn_ = dr + 2 * N;
        REAL *xr = st->dz + r * GN, *hr = st->dzh + r * GN;
        for (int64_t j = 0; j < N; j++) {
            const int64_t x = r * N + j;
            const REAL g = st->g[x];
            const REAL dn = g * F(gb_one_minus)(z[j], dzg[j]) * dn_[j];
            xr[j] = dn * st->hn[x] * dr[j];
            xr[N + j] = g * (st->hp[x] - n[j]) * dzg[j];
            xr[2 * N + j] = dn;
            hr[j] = xr[j];
            hr[N + j] = xr[N + j];
            hr[2 * N + j] = dn * rr[j];
            st->g[x] = g * z[j];
        }
    }
}


static int F(gb_lstm_forward_body)(const gb_recurrent_arrays *a, const gb_opts *opts, F(gb_rteam) *tm) {
    int rc = GB_OK;
    const int64_t T_ = a->T, B = a->B, N = a->N, D = a->D, GN = 4 * N, BN = B * N;
    const REAL *W_hh = ((REAL *)a->W_hh);
    REAL *H = ((REAL *)a->H), *C = ((REAL *)a->C), *Z = ((REAL *)a->Z);
    const F(gb_rmm) mm = {.gemm = opts ? opts->GEMM_FIELD : NULL, .own = F(gb_use_own)(opts, N), .tm = tm};
    REAL *bias = F(gb_ralloc)(sizeof(REAL) * (size_t)GN), *ga = F(gb_ralloc)(sizeof(REAL) * (size_t)(2 * B * GN));
    REAL *tc = F(gb_ralloc)(sizeof(REAL) * (size_t)(2 * BN));
    REAL *WT = F(gb_rpacked)(W_hh, N, GN, 1, mm.own, &rc);
    if (!bias || !ga || !tc || rc) {
        free(bias);
        free(ga);
        free(tc);
        free(WT);
        return GB_ENOMEM;
    }
    REAL *gda = ga + B * GN;
    for (int64_t j = 0; j < GN; j++) bias[j] = ((REAL *)a->b_ih)[j] + ((REAL *)a->b_hh)[j];
    rc = F(gb_input_projection)(opts, tm, Z, ((REAL *)a->X), ((REAL *)a->W_ih), bias, T_ * B, D, GN); /* U, then z_t */
    a->info[GB_INFO_FORWARD] = -1;
    for (int64_t t = 0; t < T_ && rc == GB_OK; t++) {
        REAL *Zt = Z + t * B * GN;
        const REAL *cp = C + t * BN;
        REAL *c = C + (t + 1) * BN, *h = H + (t + 1) * BN;
        F(gb_rows_times_wT)(&mm, Zt, H + t * BN, W_hh, WT, B, N, GN, 1); /* z_t = U_t + h_{t-1} W_hh^T */
        F(gb_rstep) st = {.B = B, .N = N, .Z = Zt, .ga = ga, .gda = gda, .h = h, .c = c, .cp = cp, .tc = tc,
                          .dtc = tc + BN};
        F(gb_rrows)(tm, F(gb_lstm_forward_rows), &st);
        F(gb_gate_stats)(ga, gda, B, N, 4, 2, a->fcfg, a->saturation + t, a->gate_mean + t, a->gate_low + t);
        F(gb_record_forward)(h, t, B, N, a->act_mean, a->act_std, a->info);
    }
    free(bias);
    free(ga);
    free(tc);
    free(WT);
    return rc;
}

static int F(gb_gru_forward_body)(const gb_recurrent_arrays *a, const gb_opts *opts, F(gb_rteam) *tm) {
    int rc = GB_OK;
    const int64_t T_ = a->T, B = a->B, N = a->N, D = a->D, GN = 3 * N, BN = B * N;
    const REAL *W_hh = ((REAL *)a->W_hh), *b_hn = ((REAL *)a->b_hh) + 2 * N;
    REAL *H = ((REAL *)a->H), *Z = ((REAL *)a->Z), *HN = ((REAL *)a->HN);
    const F(gb_rmm) mm = {.gemm = opts ? opts->GEMM_FIELD : NULL, .own = F(gb_use_own)(opts, N), .tm = tm};
    REAL *bias = F(gb_ralloc)(sizeof(REAL) * (size_t)GN), *P = F(gb_ralloc)(sizeof(REAL) * (size_t)(3 * B * GN));
    REAL *WT = F(gb_rpacked)(W_hh, N, GN, 1, mm.own, &rc);
    if (!bias || !P || rc) {
        free(bias);
        free(P);
        free(WT);
        return GB_ENOMEM;
    }
    REAL *ga = P + B * GN, *gda = P + 2 * B * GN;
    /* b_hn stays inside r * (h W_hn^T + b_hn): the n block of the bias is b_in alone */
    for (int64_t j = 0; j < GN; j++) bias[j] = ((REAL *)a->b_ih)[j] + (j < 2 * N ? ((REAL *)a->b_hh)[j] : (REAL)0);
    for (int64_t j = 2 * N; j < GN; j++) bias[j] = ((REAL *)a->b_ih)[j];
    rc = F(gb_input_projection)(opts, tm, Z, ((REAL *)a->X), ((REAL *)a->W_ih), bias, T_ * B, D, GN); /* U, then z_t */
    free(bias);
    a->info[GB_INFO_FORWARD] = -1;
    for (int64_t t = 0; t < T_ && rc == GB_OK; t++) {
        REAL *Zt = Z + t * B * GN, *hn = HN + t * BN, *h = H + (t + 1) * BN;
        const REAL *hp = H + t * BN;
        F(gb_rows_times_wT)(&mm, P, hp, W_hh, WT, B, N, GN, 0);
        F(gb_rstep) st = {.B = B, .N = N, .Z = Zt, .P = P, .ga = ga, .gda = gda, .h = h, .hp = hp, .hn = hn,
                          .bias = b_hn};
        F(gb_rrows)(tm, F(gb_gru_forward_rows), &st);
        F(gb_gate_stats)(ga, gda, B, N, 3, 2, a->fcfg, a->saturation + t, a->gate_mean + t, a->gate_low + t);
        F(gb_record_forward)(h, t, B, N, a->act_mean, a->act_std, a->info);
    }
    free(P);
    free(WT);
    return rc;
}

/* ------------------------------------------------------------------ backward: shared */
/* ||dz^T h||_F for one step: from the Gram matrices (dz dz^T) o (h h^T), where their sum keeps
 * more than 2^-26 of its terms' magnitudes (kernels/recurrent.py GRAM_TRUST); else, and without
 * the Gram matrices, from the product dz^T h (gb_rnorm: nothing lost to its squares). Below that
 * share the samples' terms cancel (one input twice with opposite targets: the Gram sum gave sqrt
 * of rounding noise, 1e-8 of the terms, where the product gives 1e-16) or underflowed in h h^T
 * (a sample 10^200 below another's h_{t-1}: 0 where the product holds 10^-213). */
static double F(gb_step_norm_plain)(F(gb_rctx) *cx, const REAL *dz, const REAL *hp, int64_t B, int64_t N,
                                    int64_t GN) {
    if (cx->gram_norms) {
        REAL *zz = cx->gram, *hh = cx->gram + B * B;
        F(gb_gram)(&cx->mm, zz, dz, B, GN);
        F(gb_gram)(&cx->mm, hh, hp, B, N);
        double s = 0, a = 0;
        for (int64_t i = 0; i < B * B; i++) {
            s = GB_FMAD((double)zz[i], (double)hh[i], s);
            a += fabs((double)zz[i] * (double)hh[i]);
        }
        if (s != s) return s; /* a NaN step stays NaN */
        if (s > a * 0x1p-26) return sqrt(s);
    }
    F(gb_zT_times_rows)(&cx->mm, cx->tmp, dz, hp, B, N, GN);
    return F(gb_rnorm)(cx->tmp, GN, N);
}

/* ||dz^T h||_F with the product formed in double, entry by entry: the reference's when a side
 * holds an inf (it forms the product in float64, unscaled). The norm is then inf, or NaN where an
 * entry is (inf * 0, inf - inf): the Gram sum's cross terms meet infs that cancel in dz^T h (NaN
 * for inf), and a float product's finite terms can overflow (inf - inf for a finite sum). */
static double F(gb_step_norm_wide)(const REAL *dz, const REAL *hp, int64_t B, int64_t N, int64_t GN) {
    double s = 0;
    for (int64_t i = 0; i < GN; i++)
        for (int64_t j = 0; j < N; j++) {
            double p = 0;
            for (int64_t b = 0; b < B; b++) p += (double)dz[b * GN + i] * (double)hp[b * N + j];
            s += p * p;
        }
    return sqrt(s);
}

/* ||dz^T h||_F = m 2^*e: in REAL while max|dz| and max|h| lie in [2^-S, 2^S] (S = 240; float32:
 * 40: no product or square under- or overflows), else from copies scaled by the powers of two
 * of their largest entries (the reference's step_norm; the copies in cx->ga, free by now); with an
 * inf on either side from the product in double (gb_step_norm_wide), as the reference. */
static double F(gb_step_norm)(F(gb_rctx) *cx, const REAL *dz, const REAL *hp, int64_t B, int64_t N, int64_t GN,
                              int64_t *e_out) {
    const double az = (double)F(gb_absmax)(dz, B * GN, 0), ah = (double)F(gb_absmax)(hp, B * N, 0);
    const double lo = sizeof(REAL) == sizeof(float) ? 0x1p-40 : 0x1p-240, hi = 1.0 / lo;
    *e_out = 0;
    /* an all-zero side is in range, its partner may not be (h_0 ~ 1e155 with dz = 0: h h^T
     * overflows, and 0 * inf in the Gram sum read NaN for a norm of 0); frexp(0) gives 0 */
    const int zin = az == 0 || (az >= lo && az <= hi), hin = ah == 0 || (ah >= lo && ah <= hi);
    if (!(isfinite(az) && isfinite(ah))) return F(gb_step_norm_wide)(dz, hp, B, N, GN); /* an inf (NaN: any path) */
    if (zin && hin) return F(gb_step_norm_plain)(cx, dz, hp, B, N, GN);
    int ez, eh;
    frexp(az, &ez);
    frexp(ah, &eh);
    REAL *zs = cx->ga, *hs = cx->gda;
    for (int64_t i = 0; i < B * GN; i++) zs[i] = TLDEXP(dz[i], gb_clamp_exp(-ez));
    for (int64_t i = 0; i < B * N; i++) hs[i] = TLDEXP(hp[i], gb_clamp_exp(-eh));
    *e_out = (int64_t)ez + eh;
    return F(gb_step_norm_plain)(cx, zs, hs, B, N, GN);
}

/* The shift of the chunk's row q toward a sum at 2^e: rd (+ fexp, with_fe) - e where its flag f
 * is set, never above 0 (a row whose partner is all zero may lie above e: it adds 0 to the
 * product whatever its scale, and more could overflow); 0 for the other rows (zeros). */
static inline int F(gb_chunk_shift)(const F(gb_rctx) *cx, int64_t q, int64_t B, unsigned f, int64_t e, int with_fe) {
    if (!(cx->fl[q] & f)) return 0;
    const int64_t rq = f == GB_RF_ZH ? cx->rdh[q] : cx->rd[q]; /* zh's rows: rdh */
    return gb_clamp_exp(GB_MIN(rq + (with_fe ? cx->fe[q / B] : 0) - e, 0));
}

/* The chunk's R = m B rows z, each times 2^(its gb_chunk_shift): in place (inplace: z is not
 * read again), else into cx->zs; z itself where no row moves */
static const REAL *F(gb_chunk_scaled)(F(gb_rctx) *cx, REAL *z, int64_t R, int64_t B, int64_t GN, unsigned f, int64_t e,
                                      int with_fe, int inplace) {
    int any = 0;
    for (int64_t q = 0; q < R && !any; q++) any = F(gb_chunk_shift)(cx, q, B, f, e, with_fe) != 0;
    if (!any) return z;
    REAL *y = inplace ? z : cx->zs;
    for (int64_t q = 0; q < R; q++) F(gb_scale_into)(y + q * GN, z + q * GN, GN, F(gb_chunk_shift)(cx, q, B, f, e, with_fe));
    return y;
}

/* cx->tb = the sum of the chunk's R rows z whose flag f is set, each times 2^(rd - e) <= 1
 * (ldexp's rounding: the product by 2^(rd - e) where that is a normal REAL), rows in order */
static void F(gb_chunk_bias)(F(gb_rctx) *cx, const REAL *z, const int64_t *rd, int64_t R, int64_t GN, unsigned f,
                             int64_t e) {
    REAL *tb = cx->tb;
    for (int64_t j = 0; j < GN; j++) tb[j] = 0;
    for (int64_t q = 0; q < R; q++) {
        if (!(cx->fl[q] & f)) continue;
        const REAL *zq = z + q * GN;
        const int sh = gb_clamp_exp(GB_MIN(rd[q] - e, 0));
        const REAL p = F(gb_pow2)(sh);
        if (sh == 0) {
            for (int64_t j = 0; j < GN; j++) tb[j] += zq[j];
        } else if (p != 0) {
            for (int64_t j = 0; j < GN; j++) tb[j] = GB_RFMA(zq[j], p, tb[j]);
        } else {
            REAL p2[2];
            F(gb_pow2_down)(sh, p2);
            for (int64_t j = 0; j < GN; j++) tb[j] += F(gb_times_down)(zq[j], p2);
        }
    }
}

/* The chunk of steps [t0, t0 + m): each sum's exponent is the largest over the chunk's
 * (step, row) pairs it adds (W_ih: the rows where dz and x_t are both not all zero; W_hh: dzh
 * and h_{t-1}, plus fexp[t]; b_ih, b_hh: dz's, dzh's rows not all zero; with no pair: dz's, the
 * term then 0 but for a non-finite dz, and skipped), each row brought to it (gb_chunk_scaled,
 * gb_chunk_bias), one product over the chunk's m B rows, added to the accumulators by the
 * aligned rule (gb_racc). db_hh is db_ih's term unless zh has rows of its own (the GRU). */
static void F(gb_chunk_flush)(F(gb_rctx) *cx, const gb_recurrent_arrays *a, int64_t t0, int64_t m) {
    const int64_t B = a->B, N = a->N, D = a->D, GN = a->GN, R = m * B;
    const int own_bias = cx->zh != cx->zx;
    int64_t wx = GB_RNOEXP, wh = GB_RNOEXP, bx = GB_RNOEXP, bh = GB_RNOEXP, bhf = GB_RNOEXP;
    for (int64_t q = 0; q < R; q++) {
        const unsigned f = cx->fl[q];
        const int64_t e = cx->rd[q], eh = cx->rdh[q], ef = eh + cx->fe[q / B];
        if (f & GB_RF_ZX) {
            bx = GB_MAX(bx, e);
            if (f & GB_RF_X) wx = GB_MAX(wx, e);
        }
        if (f & GB_RF_ZH) {
            bh = GB_MAX(bh, eh);
            bhf = GB_MAX(bhf, ef);
            if (f & GB_RF_H) wh = GB_MAX(wh, ef);
        }
    }
    if (bx != GB_RNOEXP) {
        F(gb_chunk_bias)(cx, cx->zx, cx->rd, R, GN, GB_RF_ZX, bx);
        F(gb_racc)(a->db_ih, a->dexp + GB_DE_B_IH, cx->tb, bx, GN);
        if (!own_bias) F(gb_racc)(a->db_hh, a->dexp + GB_DE_B_HH, cx->tb, bx, GN);
        if (wx == GB_RNOEXP) wx = bx;
    }
    if (bh != GB_RNOEXP) {
        if (own_bias) {
            F(gb_chunk_bias)(cx, cx->zh, cx->rdh, R, GN, GB_RF_ZH, bh);
            F(gb_racc)(a->db_hh, a->dexp + GB_DE_B_HH, cx->tb, bh, GN);
        }
        if (wh == GB_RNOEXP) wh = bhf;
    }
    /* one set of scaled rows for both products where zh is zx and every row's two shifts agree;
     * else dW_hh's first, from a copy where zh is zx (dW_ih's rows then scaled in place) */
    int same = !own_bias && bx != GB_RNOEXP;
    for (int64_t q = 0; q < R && same; q++)
        same = F(gb_chunk_shift)(cx, q, B, GB_RF_ZX, wx, 0) == F(gb_chunk_shift)(cx, q, B, GB_RF_ZH, wh, 1);
    if (bh != GB_RNOEXP && !same) {
        const REAL *z = F(gb_chunk_scaled)(cx, cx->zh, R, B, GN, GB_RF_ZH, wh, 1, own_bias);
        F(gb_zT_times_rows)(&cx->mm, cx->tmp, z, ((REAL *)a->H) + t0 * B * N, R, N, GN);
        F(gb_racc)(a->dW_hh, a->dexp + GB_DE_W_HH, cx->tmp, wh, GN * N);
    }
    if (bx != GB_RNOEXP) {
        const REAL *z = F(gb_chunk_scaled)(cx, cx->zx, R, B, GN, GB_RF_ZX, wx, 0, 1);
        F(gb_zT_times_rows)(&cx->mm, cx->tmp, z, ((REAL *)a->X) + t0 * B * D, R, D, GN);
        F(gb_racc)(a->dW_ih, a->dexp + GB_DE_W_IH, cx->tmp, wx, GN * D);
        if (same) {
            F(gb_zT_times_rows)(&cx->mm, cx->tmp, z, ((REAL *)a->H) + t0 * B * N, R, N, GN);
            F(gb_racc)(a->dW_hh, a->dexp + GB_DE_W_HH, cx->tmp, wh, GN * N);
        }
    }
}

/* Step t's dz rows are in chunk slot k = t % K at exponents rd (B,); fe = fexp[t] for the
 * vanilla cell (h_{t-1}'s, which its W_hh term carries), else 0. The pairs' flags, the norm of
 * the step's W_hh term (its rows brought to the largest exponent w of a pair of dzh and h_{t-1}
 * rows, never up), the rows far from 1 normalised (gb_far_row), then the chunk's sums where it
 * starts (the backward runs down). The rows are
 * brought to w in place (their exponents set to w: the same values, the chunk's sums scale them
 * again) where every sum that adds them is taken at w or above: zh's own rows (the GRU), or, zh
 * being zx, no row of dz with a zero x_t row (W_ih's pairs could lie below w); else a copy. */
static void F(gb_step_done)(F(gb_rctx) *cx, const gb_recurrent_arrays *a, int64_t t, const int64_t *rd, int64_t fe) {
    const int64_t B = a->B, N = a->N, D = a->D, GN = a->GN, k = t % cx->K, n = B * GN;
    const REAL *zx = cx->zx + k * n, *x = ((const REAL *)a->X) + t * B * D, *hp = ((const REAL *)a->H) + t * B * N;
    REAL *zh = cx->zh + k * n;
    int64_t *rk = cx->rd + k * B, *rkh = cx->rdh + k * B;
    unsigned char *fl = cx->fl + k * B;
    int64_t w = GB_RNOEXP, wz = GB_RNOEXP; /* the largest exponent of a pair, of a row of dzh */
    int xall = 1;                          /* every row of dz not all zero has an x_t row that is not */
    for (int64_t i = 0; i < B; i++) {
        const int nx = F(gb_nonzero)(zx + i * GN, GN), nh = zh == zx ? nx : F(gb_nonzero)(zh + i * GN, GN);
        const int px = F(gb_nonzero)(x + i * D, D), ph = F(gb_nonzero)(hp + i * N, N);
        rk[i] = rkh[i] = rd[i];
        fl[i] = (unsigned char)((nx ? GB_RF_ZX : 0) | (nh ? GB_RF_ZH : 0) | (px ? GB_RF_X : 0) | (ph ? GB_RF_H : 0));
        xall &= px || !nx;
        if (nh && rd[i] > wz) wz = rd[i];
        if (nh && ph && rd[i] > w) w = rd[i];
    }
    cx->fe[k] = fe;
    if (wz == GB_RNOEXP) { /* dzh all zero: so is the term */
        a->gnorm_m[t] = 0;
        a->gnorm_e[t] = 0;
    } else {
        if (w == GB_RNOEXP) w = wz; /* no pair: 0 but for a non-finite dzh */
        const REAL *z = zh;
        int any = 0;
        for (int64_t i = 0; i < B && !any; i++) any = (fl[i] & GB_RF_ZH) && rd[i] < w;
        if (any) {
            const int inplace = zh != zx || xall;
            REAL *zs = inplace ? zh : cx->zs;
            for (int64_t i = 0; i < B; i++) {
                const int sh = (fl[i] & GB_RF_ZH) && rd[i] < w ? gb_clamp_exp(rd[i] - w) : 0;
                if (inplace && sh) rkh[i] = w;
                if (!inplace || sh) F(gb_scale_into)(zs + i * GN, zh + i * GN, GN, sh);
            }
            z = zs;
        }
        int64_t en;
        a->gnorm_m[t] = F(gb_step_norm)(cx, z, hp, B, N, GN, &en);
        a->gnorm_e[t] = w + fe + en;
    }
    /* rows far from 1 (a gate's derivative of 1e-174 times the normalised state) to [0.5, 1)
     * for the chunk's products, their shifts into the rows' exponents (the reference's
     * accumulate_step): dz 2^-580 times h_{t-1} 1e-174 underflowed to 0 there. The gated cells'
     * state took dz W_hh as it was (the vanilla cell's rows are there already,
     * gb_rnn_backward_rows); zh's rows (the GRU's) their own, else rkh is rk. */
    for (int64_t i = 0; i < B; i++) {
        REAL *zxi = cx->zx + k * n + i * GN, *zhi = zh + i * GN; /* (max|.|: NaN ignored) */
        if (fl[i] & GB_RF_ZX) rk[i] += F(gb_far_row)(zxi, GN, F(gb_absmax)(zxi, GN, 0));
        if (zh != zx && (fl[i] & GB_RF_ZH)) rkh[i] += F(gb_far_row)(zhi, GN, F(gb_absmax)(zhi, GN, 0));
    }
    if (k == 0) F(gb_chunk_flush)(cx, a, t, GB_MIN(cx->K, a->T - t));
}

/* The state [dL/dh; dL/dc] into the workspace (rows at sig_e[T] + row_e) and back (row_e
 * relative to sig_e[0]). */
static void F(gb_state_in)(F(gb_rctx) *cx, const gb_recurrent_arrays *a, int lstm) {
    const int64_t BN = a->B * a->N, top = a->sig_e[a->T];
    memcpy(cx->gg, ((REAL *)a->G), sizeof(REAL) * (size_t)BN);
    if (lstm) memcpy(cx->gg + BN, ((REAL *)a->GC), sizeof(REAL) * (size_t)BN);
    for (int64_t i = 0; i < a->B; i++) cx->r[i] = top + a->row_e[i];
}

static void F(gb_state_out)(F(gb_rctx) *cx, const gb_recurrent_arrays *a, int lstm) {
    const int64_t BN = a->B * a->N;
    memcpy(a->G, cx->gg, sizeof(REAL) * (size_t)BN);
    if (lstm) memcpy(a->GC, cx->gg + BN, sizeof(REAL) * (size_t)BN);
    for (int64_t i = 0; i < a->B; i++) a->row_e[i] = cx->r[i] - a->sig_e[0];
}

/* row_top of the state: the largest exponent of its rows not all zero (cx->nz: which), else
 * of all rows */
static int64_t F(gb_rrow_top)(const F(gb_rctx) *cx, int64_t B) {
    int64_t e = GB_RNOEXP, ea = GB_RNOEXP;
    for (int64_t i = 0; i < B; i++) {
        if (cx->nz[i] && cx->r[i] > e) e = cx->r[i];
        ea = GB_MAX(ea, cx->r[i]);
    }
    return e != GB_RNOEXP ? e : ea;
}

/* every row of the state [G | GC] normalised (gb_row_normalise), cx->nz whether it is not zero */
static void F(gb_rrows_normalise)(F(gb_rctx) *cx, int64_t B, int64_t N, REAL *g, REAL *gc) {
    for (int64_t i = 0; i < B; i++)
        cx->nz[i] = (unsigned char)F(gb_row_normalise)(g + i * N, gc ? gc + i * N : NULL, N, cx->r + i);
}

/* finish(j), the state dL/dH[j] complete (the reference's signal_rows and norms): each row of
 * [G | GC] normalised, then for j < T the signal clip (clip_rows: value, each row on its own;
 * norm, the batch's norm) and the rows normalised again, clip_acted[j] whether it acted; rows
 * of zeros given the largest non-zero row's exponent, sig_e[j]; sig_m[j] (csig_m[j]) the norm
 * of G's (GC's) rows at it; info's first non-finite j. */
static void F(gb_rfinish)(F(gb_rctx) *cx, const gb_recurrent_arrays *a, int64_t j, int lstm) {
    const int64_t B = a->B, N = a->N, BN = B * N, n = lstm ? 2 * BN : BN;
    const int clip = j < a->T ? (int)a->icfg[GB_RI_CLIP] : GB_CLIP_NONE;
    const double c = a->fcfg[GB_RF_CLIP];
    REAL *g = cx->gg, *gc = lstm ? cx->gg + BN : NULL;
    int64_t *r = cx->r;
    F(gb_rrows_normalise)(cx, B, N, g, gc);
    int64_t acted = 0;
    if (clip == GB_CLIP_VALUE) {
        int ec;
        const double t = frexp(c, &ec); /* c = t 2^ec, t in [0.5, 1) */
        for (int64_t i = 0; i < B; i++) acted |= F(gb_clip_value_row)(g + i * N, gc ? gc + i * N : NULL, N, r + i, ec, t);
    } else if (clip == GB_CLIP_NORM) {
        const int64_t e = F(gb_rrow_top)(cx, B);
        double s = 0;
        for (int64_t i = 0; i < B; i++) {
            const int d = gb_clamp_exp(r[i] - e);
            s += F(gb_sumsq_row_at)(g + i * N, N, d, 1.0, 1.0);
            if (gc) s += F(gb_sumsq_row_at)(gc + i * N, N, d, 1.0, 1.0);
        }
        const double nrm = sqrt(s);
        if (ldexp(nrm, gb_clamp_exp(e)) > c) {
            const REAL sc = (REAL)(c / nrm);
            for (int64_t k = 0; k < n; k++) g[k] *= sc;
            for (int64_t i = 0; i < B; i++) r[i] -= e;
            acted = 1;
        }
    }
    if (clip) F(gb_rrows_normalise)(cx, B, N, g, gc);
    if (j < a->T) a->clip_acted[j] = acted; /* [T] is the caller's: it clipped the top */
    const int64_t e = F(gb_rrow_top)(cx, B);
    for (int64_t i = 0; i < B; i++)
        if (!cx->nz[i]) r[i] = e;
    a->sig_e[j] = e;
    a->sig_m[j] = F(gb_rrows_norm)(g, B, N, r, e);
    if (lstm) a->csig_m[j] = F(gb_rrows_norm)(gc, B, N, r, e);
    /* every row normalised (|entries| < 1) or holding a non-finite entry: the norms are finite
     * exactly where every entry is */
    if (a->info[GB_INFO_BACKWARD] < 0 && !(isfinite(a->sig_m[j]) && (!lstm || isfinite(a->csig_m[j]))))
        a->info[GB_INFO_BACKWARD] = j;
}

/* The every-step loss: dL/dH[t] = dh (B,N), at exponent 0, added to the state row by row (the
 * reference's rule): q the exponent of max|dh row| (NaN ignored; 0 where it is not finite), the
 * sum at q where the state's row (G's and GC's) is all zero, at r where dh's row is (NaN is
 * not zero), else at max(r, q); G = dh 2^-em + G 2^(r - em), GC's row times 2^(r - em). */
static void F(gb_radd_loss)(F(gb_rctx) *cx, const gb_recurrent_arrays *a, int64_t t, int lstm) {
    const int64_t B = a->B, N = a->N, BN = B * N;
    const REAL *dh = ((const REAL *)a->DH) + t * BN;
    REAL *g = cx->gg, *gc = lstm ? cx->gg + BN : NULL;
    for (int64_t i = 0; i < B; i++) {
        REAL *gi = g + i * N, *gci = gc ? gc + i * N : NULL;
        const REAL *di = dh + i * N;
        const REAL m = F(gb_absmax)(di, N, 0);
        int q = 0;
        if (m > 0 && isfinite(m)) frexp((double)m, &q);
        const int64_t ri = cx->r[i];
        int64_t em;
        if (!F(gb_nonzero)(gi, N) && !(gci && F(gb_nonzero)(gci, N)))
            em = q;
        else if (!F(gb_nonzero)(di, N))
            em = ri;
        else
            em = GB_MAX(ri, (int64_t)q);
        const int dg = gb_clamp_exp(ri - em), dd = gb_clamp_exp(-em);
        const REAL sd = F(gb_pow2)(dd), sg = F(gb_pow2)(dg); /* 0 where 2^k is not a normal REAL */
        if (sd != 0 && sg != 0) {
            for (int64_t j = 0; j < N; j++) gi[j] = di[j] * sd + gi[j] * sg;
        } else {
            for (int64_t j = 0; j < N; j++) gi[j] = TLDEXP(di[j], dd) + TLDEXP(gi[j], dg);
        }
        if (gci) F(gb_scale_into)(gci, gci, N, dg);
        cx->r[i] = em;
    }
}

/* After the recurrence of step t: the every-step loss, then finish(t). */
static void F(gb_state_finish)(F(gb_rctx) *cx, const gb_recurrent_arrays *a, int64_t t, int lstm) {
    if (a->icfg[GB_RI_LOSS_EVERY]) F(gb_radd_loss)(cx, a, t, lstm);
    F(gb_rfinish)(cx, a, t, lstm);
}

/* ------------------------------------------------------------------ backward: the cells */
/* The state's rows at cx.r; a step's dz rows at cx.rt (the vanilla cell: r plus each rescued
 * or far row's shift; the gated cells: r), which dL/dh_{t-1} = dz W_hh (+ the GRU's g z) keeps. */
static int F(gb_rnn_backward_body)(const gb_recurrent_arrays *a, const gb_opts *opts, F(gb_rteam) *tm) {
    const int64_t T_ = a->T, B = a->B, N = a->N, BN = B * N;
    F(gb_rctx) cx;
    const int rc = F(gb_rctx_init)(&cx, opts, tm, a, 0);
    if (rc) {
        F(gb_rctx_free)(&cx);
        return rc;
    }
    a->info[GB_INFO_BACKWARD] = -1;
    F(gb_state_in)(&cx, a, 0);
    F(gb_rfinish)(&cx, a, T_, 0);
    const int act = (int)a->icfg[GB_RI_ACT];
    for (int64_t t = T_ - 1; t >= 0; t--) {
        const int64_t k = t % cx.K;
        const REAL *z = ((REAL *)a->Z) + t * BN;
        REAL *dz = cx.zx + k * BN;
        const F(gb_rstep) st = {.B = B, .N = N, .Z = (REAL *)z, .ga = cx.ga, .gda = cx.gda, .g = cx.gg, .dz = dz,
                                .kr = cx.rt, .act = act, .rescue = gb_rescue_act(act),
                                .p = (REAL)a->fcfg[GB_RF_ACT_PARAM], .pd = a->fcfg[GB_RF_ACT_PARAM]};
        F(gb_rrows)(tm, F(gb_rnn_backward_rows), &st); /* ga: unused phi(z); rt: the rows' rescue shifts */
        for (int64_t i = 0; i < B; i++) cx.rt[i] += cx.r[i];
        F(gb_rows_times_w)(&cx.mm, cx.gg, dz, ((REAL *)a->W_hh), cx.Wp, B, N, N, 0);
        F(gb_step_done)(&cx, a, t, cx.rt, a->fexp[t]);
        memcpy(cx.r, cx.rt, sizeof(int64_t) * (size_t)B);
        F(gb_state_finish)(&cx, a, t, 0);
    }
    F(gb_state_out)(&cx, a, 0);
    F(gb_rctx_free)(&cx);
    return GB_OK;
}

static int F(gb_lstm_backward_body)(const gb_recurrent_arrays *a, const gb_opts *opts, F(gb_rteam) *tm) {
    const int64_t T_ = a->T, B = a->B, N = a->N, GN = 4 * N, BN = B * N;
    F(gb_rctx) cx;
    const int rc = F(gb_rctx_init)(&cx, opts, tm, a, 0);
    if (rc) {
        F(gb_rctx_free)(&cx);
        return rc;
    }
    a->info[GB_INFO_BACKWARD] = -1;
    F(gb_state_in)(&cx, a, 1);
    F(gb_rfinish)(&cx, a, T_, 1);
    for (int64_t t = T_ - 1; t >= 0; t--) {
        const int64_t k = t % cx.K;
        const REAL *Zt = ((REAL *)a->Z) + t * B * GN, *cp = ((REAL *)a->C) + t * BN;
        REAL *dz = cx.zx + k * B * GN, *gh = cx.gg, *gc = cx.gg + BN, *dtc = cx.dtc;
        F(gb_rstep) st = {.B = B, .N = N, .Z = (REAL *)Zt, .ga = cx.ga, .gda = cx.gda, .c = ((REAL *)a->C) + (t + 1) * BN,
                          .cp = cp, .tc = cx.tc, .dtc = dtc, .g = gh, .gc = gc, .dz = dz};
        F(gb_rrows)(tm, F(gb_lstm_backward_rows), &st);
        /* ||total dL/dC[t+1]||, its rows at the state's exponents, relative to sig_e[t+1] */
        a->csig_m[t + 1] = F(gb_rrows_norm)(dtc, B, N, cx.r, a->sig_e[t + 1]);
        F(gb_rows_times_w)(&cx.mm, gh, dz, ((REAL *)a->W_hh), cx.Wp, B, N, GN, 0);
        F(gb_step_done)(&cx, a, t, cx.r, 0);
        F(gb_state_finish)(&cx, a, t, 1);
    }
    F(gb_state_out)(&cx, a, 1);
    F(gb_rctx_free)(&cx);
    return GB_OK;
}

static int F(gb_gru_backward_body)(const gb_recurrent_arrays *a, const gb_opts *opts, F(gb_rteam) *tm) {
    const int64_t T_ = a->T, B = a->B, N = a->N, GN = 3 * N, BN = B * N;
    F(gb_rctx) cx;
    const int rc = F(gb_rctx_init)(&cx, opts, tm, a, 1);
    if (rc) {
        F(gb_rctx_free)(&cx);
        return rc;
    }
    a->info[GB_INFO_BACKWARD] = -1;
    F(gb_state_in)(&cx, a, 0);
    F(gb_rfinish)(&cx, a, T_, 0);
    for (int64_t t = T_ - 1; t >= 0; t--) {
        const int64_t k = t % cx.K;
        const REAL *Zt = ((REAL *)a->Z) + t * B * GN, *hn = ((REAL *)a->HN) + t * BN, *hp = ((REAL *)a->H) + t * BN;
        REAL *zx = cx.zx + k * B * GN, *zh = cx.zh + k * B * GN, *gh = cx.gg;
        F(gb_rstep) st = {.B = B, .N = N, .Z = (REAL *)Zt, .ga = cx.ga, .gda = cx.gda, .hp = hp, .hn = (REAL *)hn,
                          .g = gh, .dz = zx, .dzh = zh};
        F(gb_rrows)(tm, F(gb_gru_backward_rows), &st);
        F(gb_rows_times_w)(&cx.mm, gh, zh, ((REAL *)a->W_hh), cx.Wp, B, N, GN, 1);
        F(gb_step_done)(&cx, a, t, cx.r, 0);
        F(gb_state_finish)(&cx, a, t, 0);
    }
    F(gb_state_out)(&cx, a, 0);
    F(gb_rctx_free)(&cx);
    return GB_OK;
}

/* ------------------------------------------------------------------ the drivers */
/* A driver's body runs on thread 0 of the call's team (gb_rteam; NULL: one thread), whose
 * helpers serve its own products (gb_rserve) until it posts `stop`. */
typedef int (*F(gb_rbody))(const gb_recurrent_arrays *a, const gb_opts *opts, F(gb_rteam) *tm);

typedef struct {
    F(gb_rteam) tm;
    F(gb_rbody) body;
    const gb_recurrent_arrays *a;
    const gb_opts *opts;
    int rc;
} F(gb_rcall);

static void F(gb_rmember)(void *arg, int tid, int nth, gb_barrier *bar) {
    F(gb_rcall) *c = arg;
    if (tid) {
        F(gb_rserve)(&c->tm, tid, nth, bar);
        return;
    }
    c->tm.bar = bar;
    c->tm.nth = nth;
    c->rc = c->body(c->a, c->opts, &c->tm);
    if (c->tm.bar) { /* the helpers still serve (not solo): let them go */
        c->tm.stop = 1;
        gb_progress_set(bar, &c->tm.posted, atomic_load_explicit(&c->tm.posted.step, memory_order_relaxed) + 1);
    }
}

/* Check the arrays (G gate blocks), then run the body on the threads gb_recurrent_threads gives
 * (recurrent_dispatch.c) */
static int F(gb_rdrive)(F(gb_rbody) body, const gb_recurrent_arrays *a, const gb_opts *opts, int G, int need_dh) {
    const int rc = F(gb_rcheck)(a, G, need_dh);
    if (rc) return rc;
    F(gb_rcall) c;
    memset(&c, 0, sizeof c);
    atomic_init(&c.tm.posted.step, 0);
    c.body = body;
    c.a = a;
    c.opts = opts;
    const int nth = gb_recurrent_threads(opts, a->T, a->B, a->N, G, sizeof(REAL) == sizeof(float));
    gb_team_run(nth, F(gb_rmember), &c, opts ? opts->solo_after : 0);
    return c.rc;
}

#define GB_RDRIVER(cell, dir, G, need_dh)                                                        \
    int F(gb_##cell##_##dir)(const gb_recurrent_arrays *a, const gb_opts *opts) {              \
        return F(gb_rdrive)(F(gb_##cell##_##dir##_body), a, opts, G, need_dh);                 \
    }
GB_RDRIVER(rnn, forward, 1, 0)
GB_RDRIVER(rnn, backward, 1, 1)
GB_RDRIVER(lstm, forward, 4, 0)
GB_RDRIVER(lstm, backward, 4, 1)
GB_RDRIVER(gru, forward, 3, 0)
GB_RDRIVER(gru, backward, 3, 1)
#undef GB_RDRIVER

/* ------------------------------------------------------------------ exported for tests */
#ifdef GB_RECURRENT_EXPORTS
int FP(gb_gates)(REAL *a, REAL *da, const REAL *z, int64_t n, int kind) {
    if (n < 0 || kind < 0 || kind > 1) return GB_EBADARG;
    if (kind == 0)
        FP(gb_sigmoid_grad)(a, da, z, n);
    else
        FP(gb_tanh_grad)(a, da, z, n);
    return GB_OK;
}
#endif

#undef F
#undef FP
#undef GB_MIN
#undef GB_MAX
#undef GB_RFMA
