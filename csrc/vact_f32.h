/* tanh, sigmoid, ELU and SELU with their derivatives in float lanes: the float32 layer rows'
 * fast path (stack_impl.h: gb_vf_forward, gb_vf_backward).
 *
 * activations.h evaluates float32 values in double, 8 lanes per AVX-512 register, with exp to
 * double precision; a float32 tanh layer of width 64 spent ~40 % of its time there. Here
 * 2 GB_VL float lanes per vector (the bytes of one gb_vd) and a polynomial sized for float:
 *   y = -2|x| (tanh), -|x| (sigmoid) or min(x, 0) (ELU, SELU), clamped at -110; y = k ln2 + r
 *   (Cody-Waite, ln2 as a 16-bit head, so that k ln2_hi is exact for |k| <= 2^8, and a float
 *   tail); q = exp(r) - 1 = r + r^2 (1/2 + r/6 + ... + r^6/8!) (|r| <= ln2/2: truncation
 *   < 2^-30 relative; the exact r added last); c e^y = c (1 + q) 2^k, as 2^(k/2) 2^(k - k/2)
 *   below the normal floats (rounded once into the subnormals, as the double result is);
 *   m = expm1(y) = 2^k q + (2^k - 1) (no cancellation: tanh keeps its relative accuracy at
 *   small |x|);
 *   tanh x = sign(x) |m| / (1 + e),    tanh' = 4e / (1 + e (2 + e)) (4e formed as c e^y, c = 4)
 *   sigmoid x = 1/(1 + e) (x >= 0), e/(1 + e) (x < 0),    sigmoid' = e / (1 + e (2 + e))
 *   ELU: x, 1 (x > 0); p m, p e (x <= 0);  SELU: lambda times that with alpha_selu for p
 * ((1 + e)^2 as 1 + e (2 + e): rounded once instead of its factor twice). Within 3 ulps of
 * the exact values (2.4 measured; tests/test_vact.py checks every instruction set against the
 * reference's float64 evaluation), where the double evaluation rounded once is within 1:
 * float32 layers of these activations agree with the reference to a few float ulps, as their
 * matrix products do. phi' has the same bits whether phi is asked for too. Swish gained
 * nothing in float lanes (its derivative needed double to stay within 3 ulps) and GELU has
 * none; both keep the double functions, as do inf and NaN (gb_vf_ok is false for them: the
 * rows take the double functions for those lanes alone, so that every entry has one value
 * whatever vector it falls in). */
#ifndef GB_VACT_F32_H
#define GB_VACT_F32_H
#ifdef GB_HAVE_VEC
#include <float.h>

#define GB_VFL (2 * GB_VL) /* float lanes of one vector (the bytes of a gb_vd) */
typedef float gb_vf __attribute__((vector_size(GB_VL * 8)));
typedef int32_t gb_vfi __attribute__((vector_size(GB_VL * 8)));
typedef uint32_t gb_vfu __attribute__((vector_size(GB_VL * 8)));
typedef signed char gb_vfb __attribute__((vector_size(GB_VFL))); /* a byte per float lane */

#define GB_VF_LN2_HI 0x1.62e4p-1f
#define GB_VF_LN2_LO 0x1.7f7d1cp-20f /* ln2 - GB_VF_LN2_HI */
#define GB_VF_INV_LN2 0x1.715476p0f

static GB_AINLINE gb_vfi gb_vf_bits(gb_vf x) {
    gb_vfi b;
    memcpy(&b, &x, sizeof b);
    return b;
}

static GB_AINLINE gb_vf gb_vf_from_bits(gb_vfi b) {
    gb_vf x;
    memcpy(&x, &b, sizeof x);
    return x;
}

static GB_AINLINE gb_vfi gb_vf_blend_i(gb_vfi mask, gb_vfi a, gb_vfi b) { return (mask & a) | (~mask & b); }

static GB_AINLINE gb_vf gb_vf_blend(gb_vfi mask, gb_vf a, gb_vf b) { /* mask ? a : b */
    return gb_vf_from_bits(gb_vf_blend_i(mask, gb_vf_bits(a), gb_vf_bits(b)));
}

/* any lane of the mask m (lanes 0 or -1) set: the sign bits in one instruction where there is
 * one (AVX-512DQ, AVX), else a loop */
static GB_AINLINE int gb_vf_any(gb_vfi m) {
#if defined(__AVX512DQ__) && GB_VL == 8 && !defined(__clang__)
    return _mm512_movepi32_mask((__m512i)m) != 0;
#elif defined(__AVX__) && GB_VL == 4 && !defined(__clang__)
    return _mm256_movemask_ps((__m256)m) != 0;
#else
    int32_t a = 0;
    for (int i = 0; i < GB_VFL; i++) a |= m[i];
    return a != 0;
#endif
}

/* the activations with float lanes */
static inline int gb_vf_has(int act) {
    return act == GB_TANH || act == GB_SIGMOID || act == GB_ELU || act == GB_SELU;
}

/* the lanes gb_vf_act evaluates: finite x (inf and NaN: the double functions) */
static GB_AINLINE gb_vfi gb_vf_ok(gb_vf x) { return gb_vf_from_bits(gb_vf_bits(x) & 0x7fffffff) <= FLT_MAX; }

/* v > acc ? v : acc (NaN v: acc), as gb_vmax_keep */
static GB_AINLINE gb_vf gb_vf_max_keep(gb_vf v, gb_vf acc) { return gb_vf_blend(v > acc, v, acc); }

static GB_AINLINE float gb_vf_hmax_nonneg(gb_vf v) {
    float m = 0;
    for (int i = 0; i < GB_VFL; i++) m = v[i] > m ? v[i] : m;
    return m;
}

/* c exp(y) and, when m, expm1(y) into *m, for y <= 0 (-inf included; not NaN): c e^y rounded
 * once where it is a normal float, through 2^(k/2) 2^(k - k/2) where it falls below (rounded
 * once into the subnormals, 0 below y ~ -104) */
static GB_AINLINE gb_vf gb_vf_expneg(gb_vf y, float c, gb_vf *m) {
    const gb_vf zero = {0}, shift = zero + 0x1.8p23f;
    /* max(y, -110): exp(-110) rounds to 0 already (one instruction where there is one; NaN
     * lanes are the caller's to discard) */
#if defined(__AVX512F__) && GB_VL == 8 && !defined(__clang__)
    y = (gb_vf)_mm512_max_ps((__m512)y, (__m512)(zero - 110.0f));
#elif defined(__AVX__) && GB_VL == 4 && !defined(__clang__)
    y = (gb_vf)_mm256_max_ps((__m256)y, (__m256)(zero - 110.0f));
#else
    y = gb_vf_blend(y < -110.0f, zero - 110.0f, y);
#endif
    const gb_vf kf = (y * GB_VF_INV_LN2 + shift) - shift;
    const gb_vf r = (y - kf * GB_VF_LN2_HI) - kf * GB_VF_LN2_LO;
    const gb_vf r2 = r * r, r4 = r2 * r2;
    /* exp(r) - 1 = r + r^2 (1/2 + r/6 + ... + r^6/8!): the exact r added last */
    const gb_vf c0 = 0.5f + r * (1.0f / 6.0f), c1 = (1.0f / 24.0f) + r * (1.0f / 120.0f);
    const gb_vf c2 = (1.0f / 720.0f) + r * (1.0f / 5040.0f);
    const gb_vf q = r + r2 * ((c0 + r2 * c1) + r4 * (c2 + r2 * (1.0f / 40320.0f)));
    const gb_vfi k = __builtin_convertvector(kf, gb_vfi); /* in [-159, 0] */
    const gb_vfi low = k < -125;
    /* 2^k where k >= -125 (the other lanes' bits are never used: unsigned, the shift is defined) */
    const gb_vf p2 = gb_vf_from_bits((gb_vfi)((gb_vfu)(k + 127) << 23));
    if (m) {
        /* 2^k - 1 is -1 to the last bit once 2^k < 2^-25: 2^-30 there keeps 2^k q + (2^k - 1) */
        const gb_vf t = gb_vf_blend(k < -30, zero + 0x1p-30f, p2);
        *m = t * q + (t - 1.0f);
    }
    const gb_vf ce = c * (1.0f + q);
    if (!gb_vf_any(low)) return ce * p2;
    const gb_vfi k1 = k >> 1, k2 = k - k1; /* both in [-80, 0] */
    return gb_vf_blend(low, (ce * gb_vf_from_bits((k1 + 127) << 23)) * gb_vf_from_bits((k2 + 127) << 23), ce * p2);
}

/* phi(x) into *a (may be NULL) and phi'(x) into *d for act GB_TANH, GB_SIGMOID, GB_ELU or GB_SELU
 * (p: ELU's alpha), the formulas of activations.h, for finite x (others: meaningless values) */
static GB_AINLINE void gb_vf_act(gb_vf x, const int act, float p, gb_vf *a, gb_vf *d) {
    const gb_vfi sign = gb_vf_bits(x) & INT32_MIN;
    const gb_vf ax = gb_vf_from_bits(gb_vf_bits(x) & 0x7fffffff), zero = {0};
    if (act == GB_SIGMOID) {
        const gb_vf e = gb_vf_expneg(-ax, 1.0f, NULL), q = 1.0f + e;
        if (a) *a = gb_vf_blend(sign != 0, e / q, 1.0f / q); /* 1/(1+e) at x >= 0 (and -0) */
        *d = e / (1.0f + e * (2.0f + e)); /* (1+e)^2 rounded once, not its factor 1 + e twice */
        return;
    }
    if (act == GB_ELU || act == GB_SELU) {
        const gb_vfi pos = x > 0.0f;
        const float c = act == GB_ELU ? p : (float)(GB_SELU_LAMBDA * GB_SELU_ALPHA);
        const float l = act == GB_ELU ? 1.0f : (float)GB_SELU_LAMBDA;
        gb_vf m;
        const gb_vf ce = gb_vf_expneg(gb_vf_blend(pos, zero, x), c, a ? &m : NULL); /* c e^min(x, 0) */
        if (a) *a = gb_vf_blend(pos, act == GB_ELU ? x : l * x, c * m);
        *d = gb_vf_blend(pos, zero + l, ce);
        return;
    }
    gb_vf m;
    const gb_vf e4 = gb_vf_expneg(-2.0f * ax, 4.0f, a ? &m : NULL), e = 0.25f * e4; /* 4 e^-2|x| */
    if (a) *a = gb_vf_from_bits((gb_vf_bits(m / (1.0f + e)) & 0x7fffffff) | sign); /* |m|/(1+e), x's sign */
    *d = e4 / (1.0f + e * (2.0f + e));
}

#endif
#endif
