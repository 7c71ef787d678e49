/* The activations in C: phi and phi' of one value for both dtypes, and an array tanh.
 *
 * One name per concept in every language: phi/dphi in gradbench/activations.py (NumPy, the
 * reference) and kernels/activations.py (Numba). Here GB_DEFINE_PHI token-pastes, for each
 * dtype suffix, the functions
 *     gb_sigmoid_f64, gb_phi_f64, gb_dphi_f64   (double)
 *     gb_sigmoid_f32, gb_phi_f32, gb_dphi_f32   (float)
 * and the array tanh is gb_tanh_f64 / gb_tanh_f32 (vectorised through gb_vtanh).
 */
#ifndef GB_ACTIVATIONS_H
#define GB_ACTIVATIONS_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include "gradbench.h"

#define GB_SELU_LAMBDA 1.0507009873554804934193349852946
#define GB_SELU_ALPHA 1.6732632423543772848170429916717
#define GB_SQRT_HALF 0.70710678118654752440084436210485
#define GB_INV_SQRT_2PI 0.39894228040143267793994605993438

/* phi and phi' of one value: the building blocks of every layer kernel, written once for both
 * dtypes through a macro over the real type. The formulas are those of gradbench/reference.py
 * (the oracle):
 *   sigmoid(z) = 1/(1+exp(-z)) for z >= 0, exp(z)/(1+exp(z)) otherwise (no overflow)
 *   elu(z) = z (z > 0), alpha*expm1(z);  selu = lambda * elu with alpha_selu
 *   swish(z) = z*sigmoid(z);  gelu(z) = 0.5*z*(1+erf(z/sqrt(2)))
 * NaN stays NaN, so that non-finite values are reported (min(z, 0) keeps NaN, as np.minimum). They are static inline so that a
 * layer loop with a constant activation code compiles to straight code (the switch folds). */
#define GB_DEFINE_PHI(T, SUFFIX, EXP, EXPM1, TANH, ERF)                                         \
    static inline T gb_sigmoid_##SUFFIX(T z) {                                                 \
        T e = EXP(-(z >= 0 ? z : -z));                                                         \
        return z >= 0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e);                                   \
    }                                                                                          \
    static inline T gb_phi_##SUFFIX(T z, int act, T p) {                                       \
        switch (act) {                                                                         \
        case GB_IDENTITY: return z;                                                            \
        case GB_SIGMOID: return gb_sigmoid_##SUFFIX(z);                                        \
        case GB_TANH: return TANH(z);                                                          \
        case GB_RELU: return (z > 0 || z != z) ? z : (T)0;                                     \
        case GB_LEAKY_RELU:                                                                    \
        case GB_PRELU: return z > 0 ? z : p * z;                                               \
        case GB_ELU: return z > 0 ? z : p * EXPM1((z < 0 || z != z) ? z : (T)0);                           \
        case GB_SELU:                                                                          \
            return (T)GB_SELU_LAMBDA * (z > 0 ? z : (T)GB_SELU_ALPHA * EXPM1((z < 0 || z != z) ? z : (T)0)); \
        case GB_SWISH: return z * gb_sigmoid_##SUFFIX(z);                                      \
        case GB_GELU: return (T)0.5 * z * ((T)1 + ERF(z * (T)GB_SQRT_HALF));                   \
        }                                                                                      \
        return (T)NAN;                                                                         \
    }                                                                                          \
    static inline T gb_dphi_##SUFFIX(T z, int act, T p) {                                      \
        T s, t;                                                                                \
        switch (act) {                                                                         \
        case GB_IDENTITY: return (T)1;                                                         \
        case GB_SIGMOID: s = gb_sigmoid_##SUFFIX(z); return s * ((T)1 - s);                    \
        case GB_TANH: t = TANH(z); return (T)1 - t * t;                                        \
        case GB_RELU: return z > 0 ? (T)1 : (T)0;                                              \
        case GB_LEAKY_RELU:                                                                    \
        case GB_PRELU: return z > 0 ? (T)1 : p;                                                \
        case GB_ELU: return z > 0 ? (T)1 : p * EXP((z < 0 || z != z) ? z : (T)0);                          \
        case GB_SELU:                                                                          \
            return (T)GB_SELU_LAMBDA * (z > 0 ? (T)1 : (T)GB_SELU_ALPHA * EXP((z < 0 || z != z) ? z : (T)0)); \
        case GB_SWISH: s = gb_sigmoid_##SUFFIX(z); return s + z * s * ((T)1 - s);              \
        case GB_GELU:                                                                          \
            return (T)0.5 * ((T)1 + ERF(z * (T)GB_SQRT_HALF)) +                                \
                   z * EXP((T)-0.5 * z * z) * (T)GB_INV_SQRT_2PI;                              \
        }                                                                                      \
        return (T)NAN;                                                                         \
    }

GB_DEFINE_PHI(double, f64, exp, expm1, tanh, erf)
GB_DEFINE_PHI(float, f32, expf, expm1f, tanhf, erff)


/* tanh over an array: the activation every benchmark uses, so it gets a vector version.
 * With the GCC/Clang vector extension, 8 double lanes at a time (float is widened to double):
 *   |x| < 0.55:  tanh = -m / (2 + m), m = expm1(-2|x|) by its Taylor series (22 terms)
 *   |x| >= 0.55: tanh = (1 - e) / (1 + e), e = exp(-2|x|) = 2^k * exp(r), |r| <= ln2/2
 *   |x| > 20: 1;  sign restored; NaN stays NaN.
 * Error within 4 ulp of the true tanh (tests/test_c.py checks against NumPy over a grid).
 * Without the extension: libm's tanh. out may be in. */
#if defined(__GNUC__) && !defined(GB_PLAIN_C)
#define GB_HAVE_VTANH 1
typedef double gb_vd8 __attribute__((vector_size(64)));
typedef int64_t gb_vi8 __attribute__((vector_size(64)));
typedef float gb_vf8 __attribute__((vector_size(32)));

static inline gb_vd8 gb_blend(gb_vi8 mask, gb_vd8 a, gb_vd8 b) { /* mask ? a : b */
    gb_vi8 ia, ib, r;
    gb_vd8 out;
    memcpy(&ia, &a, sizeof ia);
    memcpy(&ib, &b, sizeof ib);
    r = (mask & ia) | (~mask & ib);
    memcpy(&out, &r, sizeof out);
    return out;
}

static inline gb_vd8 gb_vtanh(gb_vd8 x) {
    const gb_vd8 zero = {0};
    gb_vi8 xb, ab, sign;
    gb_vd8 a;
    memcpy(&xb, &x, sizeof xb);
    sign = xb & ((gb_vi8){0} + INT64_MIN);
    ab = xb & ~((gb_vi8){0} + INT64_MIN);
    memcpy(&a, &ab, sizeof a);
    const gb_vi8 nan = x != x, big = a > 20.0, small = a < 0.55;
    a = gb_blend(big | nan, zero + 20.0, a);
    const gb_vd8 y = -2.0 * a; /* exact */
    /* e = exp(y): k = round(y / ln2) by the 1.5*2^52 trick, r = y - k ln2 in two parts */
    const gb_vd8 shift = zero + 0x1.8p52;
    const gb_vd8 kf = (y * 0x1.71547652b82fep0 + shift) - shift;
    const gb_vd8 r = (y - kf * 0x1.62e42fee00000p-1) - kf * 0x1.a39ef35793c76p-33;
    gb_vd8 p = zero + 1.0 / 6227020800.0; /* 1/13! */
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    gb_vi8 kb = (__builtin_convertvector(kf, gb_vi8) + 1023) << 52;
    gb_vd8 two_k;
    memcpy(&two_k, &kb, sizeof two_k);
    const gb_vd8 e = p * two_k;
    gb_vd8 t = (1.0 - e) / (1.0 + e);
    if (small[0] | small[1] | small[2] | small[3] | small[4] | small[5] | small[6] | small[7]) {
        static const double inv[23] = {0, 1, 1. / 2, 1. / 3, 1. / 4, 1. / 5, 1. / 6, 1. / 7,
                                       1. / 8, 1. / 9, 1. / 10, 1. / 11, 1. / 12, 1. / 13,
                                       1. / 14, 1. / 15, 1. / 16, 1. / 17, 1. / 18, 1. / 19,
                                       1. / 20, 1. / 21, 1. / 22};
        gb_vd8 q = zero + 1.0;
        for (int n = 22; n >= 2; n--) q = 1.0 + y * (q * inv[n]);
        const gb_vd8 m = y * q;
        t = gb_blend(small, -m / (2.0 + m), t);
    }
    t = gb_blend(big, zero + 1.0, t);
    gb_vi8 tb;
    memcpy(&tb, &t, sizeof tb);
    tb |= sign;
    memcpy(&t, &tb, sizeof t);
    return gb_blend(nan, x, t);
}
#endif

static inline void gb_tanh_f64(double *out, const double *in, int64_t n) {
#ifdef GB_HAVE_VTANH
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        gb_vd8 v;
        memcpy(&v, in + i, sizeof v);
        v = gb_vtanh(v);
        memcpy(out + i, &v, sizeof v);
    }
    if (i < n) {
        gb_vd8 v = {0};
        memcpy(&v, in + i, sizeof(double) * (size_t)(n - i));
        v = gb_vtanh(v);
        memcpy(out + i, &v, sizeof(double) * (size_t)(n - i));
    }
#else
    for (int64_t i = 0; i < n; i++) out[i] = tanh(in[i]);
#endif
}

static inline void gb_tanh_f32(float *out, const float *in, int64_t n) {
#ifdef GB_HAVE_VTANH
    for (int64_t i = 0; i < n; i += 8) {
        const int64_t m = n - i < 8 ? n - i : 8;
        gb_vf8 v = {0};
        memcpy(&v, in + i, sizeof(float) * (size_t)m);
        v = __builtin_convertvector(gb_vtanh(__builtin_convertvector(v, gb_vd8)), gb_vf8);
        memcpy(out + i, &v, sizeof(float) * (size_t)m);
    }
#else
    for (int64_t i = 0; i < n; i++) out[i] = tanhf(in[i]);
#endif
}

#endif
