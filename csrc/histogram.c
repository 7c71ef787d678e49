/* The streaming histogram of log10 |dW| per layer (stats_only runs): the C twin of
 * kernels/histogram.py histogram_fill, the same algorithm and the same counts, entry for entry.
 *
 * An entry v = m 2^k (1 <= m < 2) of a layer with exponent e lies in bin floor(y),
 * y = (k + e + log2 m) p log10 2: k + e exactly from the exponent bits, log2 m from the short
 * series 2 atanh s (s = (m - 1)/(m + 1), m brought into [sqrt(1/2), sqrt 2)), no call and no
 * table, so the loop vectorises. An entry whose y lies within tol of a bin edge, and every
 * subnormal one, is binned by floor((log10 v + e log10 2) p) with the C library's log10 (the
 * formula the Numba kernel and Python's math.log10 give); tol = 1e-6 bins + 64 ulps of the
 * largest term covers the series' error and every rounding of y (FMA or not), so the counts
 * are that formula's. Zeros and non-finite entries are counted apart.
 *
 * Compiled once as it is (GB_ISA v0, the build's flags; it also defines the exported
 * gb_histogram_fill, which calls the instance for the CPU) and included again by
 * histogram_v3.c / histogram_v4.c under AVX2+FMA / AVX-512 targets (dispatch.c's scheme).
 * The entries go 1024 at a time (float32 ones converted into a float64 block on the stack):
 * the temporaries are a few KiB on the stack and 4 (bins + 2) int64 tallies, whatever the
 * layer's size. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "gradbench.h"

#ifndef GB_ISA
#define GB_ISA v0
#define GB_HIST_EXPORT 1
#endif
#define GB_HCAT2(a, b) a##_##b
#define GB_HCAT(a, b) GB_HCAT2(a, b)
#define HF(name) GB_HCAT(name, GB_ISA) /* this instance's: gb_histogram_fill_v4 */

#define GB_HCHUNK 1024                       /* entries per block */
#define GB_HWAYS 4                           /* tallies, entries i mod 4 (no store-to-load chain) */
#define GB_HLOG10_2 0x1.34413509f79ffp-2     /* gradbench.logscaled.LOG10_2 */
#define GB_HINV_LN2 0x1.71547652b82fep+0     /* kernels/activations.py _INV_LN2 */
#define GB_HSQRT2 1.4142135623730951         /* math.sqrt(2.0) */
#define GB_HFRACTION 0x000FFFFFFFFFFFFFull   /* the fraction bits of a float64 */
#define GB_HONE 0x3FF0000000000000ull        /* 1.0 */
#define GB_HINF 0x7FF0000000000000ull        /* the smallest non-finite |v|, as bits */
#define GB_HABS 0x7FFFFFFFFFFFFFFFull
#define GB_HTOP_LIMIT (0x1p63 - 0x1p40)      /* gradbench.histograms.TOP_BIN_LIMIT */

/* a float64's bits and back (union punning: the loops still vectorise, as with no memcpy) */
typedef union {
    uint64_t u;
    double d;
} gb_hist_word;

static inline double gb_hist_double(uint64_t b) {
    gb_hist_word w = {.u = b};
    return w.d;
}

/* floor((log10 v + shift) per_decade) for v > 0 finite, as a double */
static inline double gb_hist_bin(double v, double shift, double per_decade) {
    return floor((log10(v) + shift) * per_decade);
}

/* floor(y) for |y| < 2^52, bit for bit (but the sign of a zero), in operations that vectorise
 * (GCC vectorises neither floor() nor selects of values that may trap under the default
 * -ftrapping-math): y + 2^52 - 2^52 (signs alike) is y rounded to an integer, exactly. Beyond
 * 2^52 it is not floor(y), and not needed: there tol >= 2^-46 |y| > 1, every entry is binned
 * with log10. */
static inline double gb_hist_floor(double y) {
    const double t = copysign(0x1p52, y);
    const double r = (y + t) - t;
    return r - gb_hist_double(GB_HONE & -(uint64_t)(r > y)); /* 1.0 or 0.0, from the bits */
}

/* The bits of entries [i0, i0 + n) of a layer's row, the sign bit included (GB_HABS clears
 * it): the float64 row itself, or buf with the float32 entries converted to float64 (exactly,
 * as the Numba kernel does). */
static inline const uint64_t *gb_hist_block(const void *row, int f32, int64_t i0, int64_t n, uint64_t *buf) {
    if (!f32) return (const uint64_t *)row + i0;
    const float *s = (const float *)row + i0;
    for (int64_t i = 0; i < n; i++) {
        gb_hist_word w = {.d = (double)s[i]};
        buf[i] = w.u;
    }
    return buf;
}

/* Adds the zeros and non-finite entries of n entries (their bits) to *zeros and *nonfinite, and
 * raises *top to the largest finite one. Vectorised: integer selects. */
static void gb_hist_scan(const uint64_t *restrict x, int64_t n, int64_t *zeros, int64_t *nonfinite,
                         uint64_t *top) {
    int64_t nz = 0, nf = 0;
    int64_t t = (int64_t)*top;
    for (int64_t i = 0; i < n; i++) {
        const uint64_t b = x[i] & GB_HABS;
        nz += b == 0;
        nf += b >= GB_HINF;
    }
    for (int64_t i = 0; i < n; i++) { /* two loops, and signed (bits < 2^63): else GCC vectorises neither */
        const uint64_t b = x[i] & GB_HABS;
        const int64_t fin = b < GB_HINF ? (int64_t)b : 0;
        t = fin > t ? fin : t;
    }
    *zeros += nz;
    *nonfinite += nf;
    *top = (uint64_t)t;
}

/* The slots of n entries: 0 (zero, non-finite, near an edge or subnormal: not binned yet),
 * 1 (below the window), 2 + j (bin lo + j). Vectorised: selects only. */
static void gb_hist_slots(int32_t *restrict slot, const uint64_t *restrict x, int64_t n, double ek, double c,
                              double tol, double lo, double last) {
    for (int64_t i = 0; i < n; i++) {
        const uint64_t b = x[i] & GB_HABS;
        const int32_t kb = (int32_t)(b >> 52); /* biased exponent (the sign bit is 0) */
        const uint64_t mb = (b & GB_HFRACTION) | GB_HONE;
        const int32_t up = gb_hist_double(mb) > GB_HSQRT2;
        const double mm = gb_hist_double(mb - ((uint64_t)up << 52)); /* m / 2 when up: exact */
        const double kf = (double)(kb + up) + ek; /* k + e, exact (integers; with |e| >= 2^52 every entry is odd) */
        const double s = (mm - 1.0) / (mm + 1.0);
        const double s2 = s * s;
        const double ln =
            2.0 * s * (1.0 + s2 * (1.0 / 3.0 + s2 * (0.2 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0)))));
        const double y = (kf + ln * GB_HINV_LN2) * c;
        const double fl = gb_hist_floor(y);
        const double fr = y - fl;
        const int odd = (fr < tol) | (fr > 1.0 - tol) | (kb == 0) | (kb == 2047);
        double jf = fl - lo;
        jf = jf > -1.0 ? jf : -1.0; /* below the window: slot 1 (NaN too: then odd) */
        jf = jf < last ? jf : last; /* (never above it, but for rounding) */
        slot[i] = ((int32_t)jf + 2) & (odd - 1); /* 0 where odd */
    }
}

/* One layer: x its `size` entries (float64 or float32), tally 4 (bins + 2) zeroed int64. */
static int gb_hist_layer(const void *row, int f32, int64_t size, int64_t e, int64_t per_decade, int64_t bins,
                             int64_t *top, void *counts, int u16, int64_t *below, int64_t *zeros,
                             int64_t *nonfinite, int64_t *tally) {
    uint64_t buf[GB_HCHUNK];
    int32_t slot[GB_HCHUNK];
    const double pd = (double)per_decade, shift = (double)e * GB_HLOG10_2;
    int64_t nz = 0, nf = 0;
    uint64_t top_bits = 0; /* of the largest finite |v| */
    for (int64_t i0 = 0; i0 < size; i0 += GB_HCHUNK) {
        const int64_t n = size - i0 < GB_HCHUNK ? size - i0 : GB_HCHUNK;
        const uint64_t *x = gb_hist_block(row, f32, i0, n, buf);
        gb_hist_scan(x, n, &nz, &nf, &top_bits);
    }
    *zeros = nz;
    *nonfinite = nf;
    *below = 0;
    if (u16)
        memset(counts, 0, (size_t)bins * sizeof(uint16_t));
    else
        memset(counts, 0, (size_t)bins * sizeof(uint32_t));
    if (top_bits == 0) {
        *top = 0;
        return GB_OK;
    }
    const double tf = gb_hist_bin(gb_hist_double(top_bits), shift, pd); /* log10 is monotonic: the top entry's bin */
    if (!(fabs(tf) < GB_HTOP_LIMIT)) return GB_EBADARG; /* beyond int64 (fill_streaming names it) */
    const int64_t t = (int64_t)tf;
    *top = t;
    const double lo = (double)(t - bins + 1), last = (double)(bins - 1);
    const double tol = 1e-6 + 64.0 * 0x1p-52 * (fabs(shift) + 340.0) * pd;
    const double ek = (double)e - 1023.0, c = pd * GB_HLOG10_2;
    const int64_t width = bins + 2;
    for (int64_t i0 = 0; i0 < size; i0 += GB_HCHUNK) {
        const int64_t n = size - i0 < GB_HCHUNK ? size - i0 : GB_HCHUNK;
        const uint64_t *x = gb_hist_block(row, f32, i0, n, buf);
        gb_hist_slots(slot, x, n, ek, c, tol, lo, last);
        for (int64_t i = 0; i < n; i++) {
            int64_t s = slot[i];
            if (s == 0) { /* zeros and non-finite entries stay out; the rest binned with log10 */
                const uint64_t b = x[i] & GB_HABS;
                if (b != 0 && b < GB_HINF) {
                    double j = gb_hist_bin(gb_hist_double(b), shift, pd) - lo;
                    j = j > -1.0 ? j : -1.0;
                    s = (int64_t)(j < last ? j : last) + 2;
                }
            }
            tally[(i % GB_HWAYS) * width + s] += 1;
        }
    }
    int64_t b1 = 0;
    for (int w = 0; w < GB_HWAYS; w++) b1 += tally[w * width + 1];
    *below = b1;
    for (int64_t j = 0; j < bins; j++) {
        int64_t v = 0;
        for (int w = 0; w < GB_HWAYS; w++) v += tally[w * width + j + 2];
        if (u16)
            ((uint16_t *)counts)[j] = (uint16_t)v;
        else
            ((uint32_t *)counts)[j] = (uint32_t)v;
    }
    memset(tally, 0, (size_t)(GB_HWAYS * width) * sizeof *tally);
    return GB_OK;
}

int HF(gb_histogram_fill)(const void *dW, int f32, int64_t m, int64_t size, const int64_t *e, int64_t per_decade,
                          int64_t bins, int64_t *top, void *counts, int u16, int64_t *below, int64_t *zeros,
                          int64_t *nonfinite) {
    int64_t *tally = calloc((size_t)(GB_HWAYS * (bins + 2)), sizeof *tally);
    if (!tally) return GB_ENOMEM;
    const size_t row_bytes = (size_t)size * (f32 ? sizeof(float) : sizeof(double));
    const size_t count_bytes = (size_t)bins * (u16 ? sizeof(uint16_t) : sizeof(uint32_t));
    int rc = GB_OK;
    for (int64_t l = 0; l < m && rc == GB_OK; l++)
        rc = gb_hist_layer((const char *)dW + (size_t)l * row_bytes, f32, size, e[l], per_decade, bins, top + l,
                               (char *)counts + (size_t)l * count_bytes, u16, below + l, zeros + l, nonfinite + l,
                               tally);
    free(tally);
    return rc;
}

#ifdef GB_HIST_EXPORT
#if defined(__x86_64__) && defined(__GNUC__)
int gb_histogram_fill_v3(const void *, int, int64_t, int64_t, const int64_t *, int64_t, int64_t, int64_t *, void *,
                         int, int64_t *, int64_t *, int64_t *);
int gb_histogram_fill_v4(const void *, int, int64_t, int64_t, const int64_t *, int64_t, int64_t, int64_t *, void *,
                         int, int64_t *, int64_t *, int64_t *);
#endif

int gb_histogram_fill(const void *dW, int f32, int64_t m, int64_t size, const int64_t *e, int64_t per_decade,
                      int64_t bins, int64_t *top, void *counts, int u16, int64_t *below, int64_t *zeros,
                      int64_t *nonfinite, int64_t isa) {
    if (m < 0 || size < 0 || per_decade < 1 || bins < 1 || bins > INT32_MAX - 2 ||
        (m > 0 && (!e || !top || !counts || !below || !zeros || !nonfinite || (size > 0 && !dW))))
        return GB_EBADARG;
    if (u16 && size > UINT16_MAX) return GB_EBADARG; /* a bin could hold more than uint16 counts */
    gb_opts o;
    memset(&o, 0, sizeof o);
    o.isa = isa;
    switch (gb_isa(&o)) {
#if defined(__x86_64__) && defined(__GNUC__)
    case 4: return gb_histogram_fill_v4(dW, f32, m, size, e, per_decade, bins, top, counts, u16, below, zeros, nonfinite);
    case 3: return gb_histogram_fill_v3(dW, f32, m, size, e, per_decade, bins, top, counts, u16, below, zeros, nonfinite);
#endif
    default: return gb_histogram_fill_v0(dW, f32, m, size, e, per_decade, bins, top, counts, u16, below, zeros, nonfinite);
    }
}
#endif
