/* One power of two per row: the row helpers of the stacks' signal (stack_impl.h) and of the
 * recurrent cells' state (recurrent_impl.h), written once over T. Included by both with T, F(),
 * TLDEXP, TFABS and T_MAX_EXP defined (recurrent_impl.h: T = REAL, as for gemm_impl.h).
 *
 * A row is one segment (a stack's dL/dh) or two sharing one exponent (the LSTM's [dL/dh | dL/dc]:
 * gc, NULL for one segment): max|.| over both, one power of two for both. The reference's
 * normalise_rows and clip_rows (value) row by row, the sums of squares of its norms.
 *   gb_absmax:         max|g|, NaN ignored or propagated
 *   gb_times_pow2:     g *= 2^k exactly; gb_scale_pow2: g brought to max|g| in [0.5, 1)
 *   gb_pow2_down, gb_scale_down_into, gb_times_down: x 2^d (d <= 0) as ldexp rounds it, by products
 *   gb_scale_into:     y = x 2^k (either sign) as ldexp rounds it
 *   gb_row_normalise:  one row normalised, its exponent added to *r
 *   gb_clip_values / gb_clip_value_row: the value clip of one row at 2^*r
 *   gb_sumsq_row (the stacks'), gb_sumsq_row_at (the recurrent cells', rows at 2^d): sums of
 *                      squares in double, 8 lanes then the tail and the lanes in order */
#ifndef GB_AINLINE /* activations.h defines it with the vector code */
#define GB_AINLINE inline
#endif
#ifndef GB_ROWS_SHARED /* not per type */
#define GB_ROWS_SHARED
/* c + a b in double, fused in every instance with FMA, the plain expression without */
#ifdef __FMA__
#define GB_FMAD(a, b, c) fma(a, b, c)
#else
#define GB_FMAD(a, b, c) ((a) * (b) + (c))
#endif
#endif
#ifndef GB_ROWS_UNUSED /* a helper one includer does not call (stack_impl.h or recurrent_impl.h) */
#if defined(__GNUC__)
#define GB_ROWS_UNUSED __attribute__((unused))
#else
#define GB_ROWS_UNUSED
#endif
#endif
#ifndef GB_LDEXP_D_DEFINED /* not per type */
#define GB_LDEXP_D_DEFINED
/* ldexp(x, e): the product by 2^e where that is a normal double (rounded once, as ldexp; no
 * libm call per row) */
static inline double gb_ldexp_d(double x, int e) {
    return e >= -1022 && e <= 1023 ? x * gb_pow2_f64(e) : ldexp(x, e);
}
#endif

#ifdef GB_HAVE_VEC
typedef T F(gb_tv) __attribute__((vector_size(GB_VL * sizeof(T)))); /* GB_VL lanes of T */
typedef T F(gb_t8) __attribute__((vector_size(8 * sizeof(T))));     /* 8 lanes of T */

static inline gb_vd F(gb_loadv)(const T *x) { /* GB_VL entries, widened to double */
    F(gb_tv) v;
    memcpy(&v, x, sizeof v);
    return __builtin_convertvector(v, gb_vd);
}

static inline gb_vd F(gb_loadv_times)(const T *x, T p) { /* GB_VL entries times p (in T), widened */
    F(gb_tv) v;
    memcpy(&v, x, sizeof v);
    return __builtin_convertvector(v * p, gb_vd);
}

static inline gb_vd8 F(gb_load8)(const T *x) { /* 8 entries, widened (the reductions) */
    F(gb_t8) v;
    memcpy(&v, x, sizeof v);
    return __builtin_convertvector(v, gb_vd8);
}

static inline gb_vd8 F(gb_load8_times)(const T *x, T p) { /* 8 entries times p (in T), widened */
    F(gb_t8) v;
    memcpy(&v, x, sizeof v);
    return __builtin_convertvector(v * p, gb_vd8);
}
#endif

/* 1 when some entry of x (n,) is not 0 (NaN and inf are not), looked at from the first on (a
 * non-zero row has a non-zero first entry as a rule; rows of zeros are rare) */
GB_ROWS_UNUSED static int F(gb_nonzero)(const T *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (x[i] != 0) return 1;
    return 0;
}

/* max |g| (NaN entries ignored); with track_nan, *nan |= whether an entry is NaN (a constant
 * at every call: inlined, the loop is unswitched). */
static GB_AINLINE double F(gb_absmax_core)(const T *g, int64_t n, int track_nan, int *nan_out) {
    double m = 0;
    int nan = 0;
    int64_t i = 0;
#ifdef GB_HAVE_VEC
    gb_vd acc = {0}, acc1 = {0}, acc2 = {0}, acc3 = {0}; /* four chains: max is exact, any order */
    gb_vi vnan = {0};
    for (; i + 4 * GB_VL <= n; i += 4 * GB_VL) {
        const gb_vd v0 = gb_vabs(F(gb_loadv)(g + i)), v1 = gb_vabs(F(gb_loadv)(g + i + GB_VL));
        const gb_vd v2 = gb_vabs(F(gb_loadv)(g + i + 2 * GB_VL)), v3 = gb_vabs(F(gb_loadv)(g + i + 3 * GB_VL));
        if (track_nan) vnan |= (v0 != v0) | (v1 != v1) | (v2 != v2) | (v3 != v3);
        acc = gb_vmax_keep(v0, acc);
        acc1 = gb_vmax_keep(v1, acc1);
        acc2 = gb_vmax_keep(v2, acc2);
        acc3 = gb_vmax_keep(v3, acc3);
    }
    acc = gb_vmax_keep(acc1, acc);
    acc2 = gb_vmax_keep(acc3, acc2);
    acc = gb_vmax_keep(acc2, acc);
    for (; i + GB_VL <= n; i += GB_VL) {
        const gb_vd v = gb_vabs(F(gb_loadv)(g + i));
        if (track_nan) vnan |= v != v;
        acc = gb_vmax_keep(v, acc);
    }
    nan = gb_any(vnan);
    m = gb_hmax_nonneg(acc);
#endif
    for (; i < n; i++) {
        const double v = (double)TFABS(g[i]);
        nan |= v != v;
        m = v > m ? v : m;
    }
    if (track_nan) *nan_out |= nan;
    return m;
}

/* max |g| ignoring NaN (propagate_nan = 0) or NaN if any entry is NaN (propagate_nan = 1). */
GB_ROWS_UNUSED static T F(gb_absmax)(const T *g, int64_t n, int propagate_nan) {
    int nan = 0;
    const double m = propagate_nan ? F(gb_absmax_core)(g, n, 1, &nan) : F(gb_absmax_core)(g, n, 0, &nan);
    return nan ? (T)NAN : (T)m;
}

/* g *= 2^k exactly (in two steps when 2^k is not a finite T) */
static GB_AINLINE void F(gb_times_pow2)(T *g, int64_t n, int k) {
    if (k <= T_MAX_EXP) {
        const T s = (T)gb_pow2_f64(k); /* 2^k below T's range: rounded as ldexp rounds it */
        for (int64_t i = 0; i < n; i++) g[i] *= s;
    } else {
        const int k1 = k / 2;
        const T s1 = (T)ldexp(1.0, k1), s2 = (T)ldexp(1.0, k - k1);
        for (int64_t i = 0; i < n; i++) g[i] = (g[i] * s1) * s2;
    }
}

/* Two powers of two p[0], p[1], each a T (normal or subnormal), with (x p[0]) p[1] = ldexp(x, s)
 * for every x of T and every s <= 0 (clamped at twice the smallest subnormal's exponent m, below
 * which every finite product is 0 as it is for ldexp): a product by a power of two that is a T
 * rounds once, as ldexp. Where 2^s is a T, p = (2^s, 1); below, p = (2^(s - m), 2^m): the first
 * product is exact while it stays normal, and where it does not, x 2^s is below 2^-126 2^m (float;
 * 2^-1022 2^m double), far under half the smallest subnormal, so both give 0 (signed as x). The
 * rows far below a layer's exponent took ldexp per entry, a libm call each (a float32 swish stack
 * at sigma_w = 1.46 spent 41 % of its time there, 2026-12-06). */
static inline void F(gb_pow2_down)(int s, T p[2]) {
    const int m = sizeof(T) == sizeof(float) ? FLT_MIN_EXP - FLT_MANT_DIG : DBL_MIN_EXP - DBL_MANT_DIG;
    s = s < 2 * m ? 2 * m : s;
    p[0] = (T)gb_pow2_f64(s >= m ? s : s - m);
    p[1] = s >= m ? (T)1 : (T)gb_pow2_f64(m);
}

/* y (n,) = x 2^d for d <= 0 with ldexp's rounding (y may be x): one or two products by powers of
 * two (gb_pow2_down), in loops that vectorise */
GB_ROWS_UNUSED static void F(gb_scale_down_into)(T *y, const T *x, int64_t n, int d) {
    T p[2];
    F(gb_pow2_down)(d, p);
    if (p[1] == 1) {
        for (int64_t i = 0; i < n; i++) y[i] = x[i] * p[0];
    } else {
        for (int64_t i = 0; i < n; i++) y[i] = (x[i] * p[0]) * p[1];
    }
}

#ifndef GB_OPAQUE /* without the vector extension: a plain C build contracts nothing it is not told to */
#define GB_OPAQUE(v) ((void)0)
#endif
/* x 2^s (s <= 0) from gb_pow2_down's factors p, rounded as ldexp rounds it and kept apart from
 * what it is added to (GB_OPAQUE: never fused into a sum, as an ldexp call's result is not) */
static GB_AINLINE T F(gb_times_down)(T x, const T p[2]) {
    T y = (x * p[0]) * p[1];
    GB_OPAQUE(y);
    return y;
}

/* 2^k as a T when it is a normal number of T (then x * 2^k is exactly ldexp(x, k), the
 * correctly rounded x 2^k), else 0 */
static inline T F(gb_pow2)(int k) {
    return (k >= 1 - T_MAX_EXP && k <= T_MAX_EXP) ? (T)gb_pow2_f64(k) : (T)0;
}

/* y = x 2^k for n values, with ldexp's rounding (y may be x) */
GB_ROWS_UNUSED static void F(gb_scale_into)(T *y, const T *x, int64_t n, int k) {
    const T s = F(gb_pow2)(k);
    if (k == 0) {
        if (y != x) memcpy(y, x, sizeof(T) * (size_t)n);
    } else if (s != 0) {
        for (int64_t i = 0; i < n; i++) y[i] = x[i] * s;
    } else if (k < 0) { /* below T's normal powers of two */
        F(gb_scale_down_into)(y, x, n, k);
    } else {
        for (int64_t i = 0; i < n; i++) y[i] = TLDEXP(x[i], k);
    }
}

/* Scale g (n,) in place by 2^-e, e the exponent of m (m = max|g|, maybe over several threads'
 * rows), so that max|g| lies in [0.5, 1); return e (0 when m is 0 or not finite). Exact: 2^-e
 * is applied in two steps when it is not a finite T (max|g| subnormal). */
static GB_AINLINE int64_t F(gb_scale_pow2)(T *g, int64_t n, T m) {
    if (!(m > 0) || !isfinite(m)) return 0;
    int e;
    const double md = (double)m;
    uint64_t mb;
    memcpy(&mb, &md, sizeof mb);
    if (mb >> 52) /* normal (m > 0): frexp's exponent from the bits */
        e = (int)(mb >> 52) - 1022;
    else
        frexp(md, &e); /* m is finite and non-zero here: frexp is well defined */
    if (e == 0) return 0; /* max|g| in [0.5, 1) already: g * 1 is g */
    F(gb_times_pow2)(g, n, -e);
    return e;
}

/* g (n,) normalised: max|g| in [0.5, 1) (see gb_scale_pow2); returns the exponent taken out */
GB_ROWS_UNUSED static int64_t F(gb_normalise)(T *g, int64_t n) { return F(gb_scale_pow2)(g, n, F(gb_absmax)(g, n, 0)); }

/* reference.far_rows on one row g (n,) of dz whose max|g| is m: where m is finite, not 0, and its
 * frexp exponent lies beyond +-GB_DZ_FAR_EXP, g brought to [0.5, 1) in place (gb_scale_pow2);
 * returns the exponent taken out (0: untouched), which the row's exponent takes. The stacks' rows
 * before dz W_l, a recurrent step's before they meet x_t and h_{t-1}. */
GB_ROWS_UNUSED static int64_t F(gb_far_row)(T *g, int64_t n, T m) {
    if (!(m > 0) || !isfinite((double)m)) return 0;
    int ex;
    frexp((double)m, &ex);
    const int far = GB_DZ_FAR_EXP(sizeof(T) == sizeof(float));
    return ex > far || ex < -far ? F(gb_scale_pow2)(g, n, m) : 0;
}

/* normalise_rows on one row [g | gc] (gc NULL: g alone): max|.| (NaN ignored) brought to
 * [0.5, 1), its exponent added to *r; a row of zeros, or whose max is not finite, unchanged.
 * Returns whether the row is not all zero (NaN is not zero). */
static GB_AINLINE int F(gb_row_normalise)(T *g, T *gc, int64_t N, int64_t *r) {
    T m = F(gb_absmax)(g, N, 0);
    if (gc) {
        const T mc = F(gb_absmax)(gc, N, 0);
        m = mc > m ? mc : m;
    }
    if (!(m > 0)) return F(gb_nonzero)(g, N) || (gc && F(gb_nonzero)(gc, N)); /* NaN entries alone */
    const int64_t e = F(gb_scale_pow2)(g, N, m);
    if (gc && e) F(gb_times_pow2)(gc, N, (int)-e);
    *r += e;
    return 1;
}

/* g = clamp(g 2^sh, -t, t), g 2^sh rounded to T first. 2^sh as a normal power of two of T
 * (the product rounds as ldexp does, and the loop vectorises), else ldexp per entry. g (n,) */
GB_ROWS_UNUSED static void F(gb_clip_values)(T *g, int64_t n, int sh, double t) {
    if (sh >= 1 - T_MAX_EXP && sh <= T_MAX_EXP) {
        const T p = TLDEXP((T)1, sh);
        for (int64_t i = 0; i < n; i++) {
            const double v = (double)(g[i] * p);
            g[i] = (T)(v > t ? t : (v < -t ? -t : v));
        }
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        const double v = (double)TLDEXP(g[i], sh);
        g[i] = (T)(v > t ? t : (v < -t ? -t : v));
    }
}

/* clip_rows' value clip of one row [g | gc] (gc NULL: g alone) at 2^*r: where its true max
 * exceeds c = t 2^ec (a NaN entry: no), the row times 2^(*r - ec) (ldexp's rounding) clipped to
 * [-t, t] and *r = ec; returns whether it acted */
GB_ROWS_UNUSED static int F(gb_clip_value_row)(T *g, T *gc, int64_t N, int64_t *r, int ec, double t) {
    double m = (double)F(gb_absmax)(g, N, 1);
    if (gc) {
        const double mc = (double)F(gb_absmax)(gc, N, 1);
        m = (mc > m || mc != mc) ? mc : m;
    }
    const int sh = gb_clamp_exp(*r - ec);
    if (!(gb_ldexp_d(m, sh) > t)) return 0;
    F(gb_clip_values)(g, N, sh, t);
    if (gc) F(gb_clip_values)(gc, N, sh, t);
    *r = ec;
    return 1;
}

/* sum ((x p) s1 s2)^2 in double of one row, x p rounded to T (scaled; else p unused): 8 lane
 * sums (entries j = c mod 8), then the tail and the lanes in order. fused: the tail's (and a
 * plain C build's lanes') c + v v by GB_FMAD (the recurrent cells'), else as written (the
 * stacks': -ffp-contract=fast leaves it to how the compiler vectorises the loop). scaled and
 * fused are constants at every call (inlined: the other branches go). */
static GB_AINLINE double F(gb_sumsq_row_core)(const T *x, int64_t N, T p, int scaled, double s1, double s2,
                                             int fused) {
    double lane[8] = {0}, s = 0;
    int64_t j = 0;
#if defined(GB_HAVE_VEC) && GB_VL == 4
    /* the 8 lanes as two vectors of the instance's width: a 64-byte vector without AVX-512 went
     * through the stack on every step (GCC 12; ~26 instructions per 8 entries, ~8 so) */
    gb_vd acc0 = {0}, acc1 = {0};
    for (; j + 8 <= N; j += 8) {
        const gb_vd u0 = scaled ? F(gb_loadv_times)(x + j, p) : F(gb_loadv)(x + j);
        const gb_vd u1 = scaled ? F(gb_loadv_times)(x + j + 4, p) : F(gb_loadv)(x + j + 4);
        const gb_vd v0 = (u0 * s1) * s2, v1 = (u1 * s1) * s2;
        acc0 += v0 * v0;
        acc1 += v1 * v1;
    }
    memcpy(lane, &acc0, sizeof acc0);
    memcpy(lane + 4, &acc1, sizeof acc1);
#elif defined(GB_HAVE_VEC)
    gb_vd8 acc = {0};
    for (; j + 8 <= N; j += 8) {
        const gb_vd8 v = ((scaled ? F(gb_load8_times)(x + j, p) : F(gb_load8)(x + j)) * s1) * s2;
        acc += v * v;
    }
    memcpy(lane, &acc, sizeof lane);
#else
    for (; j + 8 <= N; j += 8)
        for (int c = 0; c < 8; c++) {
            const double v = ((double)(scaled ? x[j + c] * p : x[j + c]) * s1) * s2;
            if (fused)
                lane[c] = GB_FMAD(v, v, lane[c]);
            else
                lane[c] += v * v;
        }
#endif
    for (; j < N; j++) {
        const double v = ((double)(scaled ? x[j] * p : x[j]) * s1) * s2;
        if (fused)
            s = GB_FMAD(v, v, s);
        else
            s += v * v;
    }
    for (int c = 0; c < 8; c++) s += lane[c];
    return s;
}

/* sum (x 2^k)^2 in double of one row (the stacks'); 2^k = s1 s2 (both 1 but in the scaled
 * norm), applied to each entry exactly. */
GB_ROWS_UNUSED static double F(gb_sumsq_row)(const T *x, int64_t N, double s1, double s2) {
    return F(gb_sumsq_row_core)(x, N, (T)1, 0, s1, s2, 0);
}

/* sum (y s1 s2)^2 in double of one row, y = x 2^d rounded to T (reference.scaled_rows: ldexp,
 * here the product by 2^d where that is a normal T; beyond, ldexp and one sum in order) (the
 * recurrent cells': fused) */
GB_ROWS_UNUSED static double F(gb_sumsq_row_at)(const T *x, int64_t N, int d, double s1, double s2) {
    const T p = F(gb_pow2)(d);
    if (p != 0) return F(gb_sumsq_row_core)(x, N, p, 1, s1, s2, 1);
    double s = 0;
    for (int64_t j = 0; j < N; j++) {
        const double v = ((double)TLDEXP(x[j], d) * s1) * s2;
        s = GB_FMAD(v, v, s);
    }
    return s;
}
