/* Declarations shared between the C sources but not bound by cffi. */
#ifndef GB_INTERNAL_H
#define GB_INTERNAL_H

#include <math.h>
#include <stdint.h>
#include "gradbench.h"

#define GB_SELU_LAMBDA 1.0507009873554804934193349852946
#define GB_SELU_ALPHA 1.6732632423543772848170429916717
#define GB_SQRT_HALF 0.70710678118654752440084436210485
#define GB_INV_SQRT_2PI 0.39894228040143267793994605993438

/* Beyond +-4000 every float is 0 or inf already (the reference's _EXP_CLAMP). */
#define GB_EXP_CLAMP 4000

static inline int gb_clamp_exp(int64_t e) {
    return e > GB_EXP_CLAMP ? GB_EXP_CLAMP : (e < -GB_EXP_CLAMP ? -GB_EXP_CLAMP : (int)e);
}

/* phi and phi' of one value: the building blocks of every layer kernel, written once for both
 * dtypes through a macro over the real type. The formulas are those of gradbench/reference.py
 * (the oracle):
 *   sigmoid(z) = 1/(1+exp(-z)) for z >= 0, exp(z)/(1+exp(z)) otherwise (no overflow)
 *   elu(z) = z (z > 0), alpha*expm1(z);  selu = lambda * elu with alpha_selu
 *   swish(z) = z*sigmoid(z);  gelu(z) = 0.5*z*(1+erf(z/sqrt(2)))
 * NaN stays NaN, so that non-finite values are reported. They are static inline so that a
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
        case GB_ELU: return z > 0 ? z : p * EXPM1(z < 0 ? z : (T)0);                           \
        case GB_SELU:                                                                          \
            return (T)GB_SELU_LAMBDA * (z > 0 ? z : (T)GB_SELU_ALPHA * EXPM1(z < 0 ? z : (T)0)); \
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
        case GB_ELU: return z > 0 ? (T)1 : p * EXP(z < 0 ? z : (T)0);                          \
        case GB_SELU:                                                                          \
            return (T)GB_SELU_LAMBDA * (z > 0 ? (T)1 : (T)GB_SELU_ALPHA * EXP(z < 0 ? z : (T)0)); \
        case GB_SWISH: s = gb_sigmoid_##SUFFIX(z); return s + z * s * ((T)1 - s);              \
        case GB_GELU:                                                                          \
            return (T)0.5 * ((T)1 + ERF(z * (T)GB_SQRT_HALF)) +                                \
                   z * EXP((T)-0.5 * z * z) * (T)GB_INV_SQRT_2PI;                              \
        }                                                                                      \
        return (T)NAN;                                                                         \
    }

GB_DEFINE_PHI(double, f64, exp, expm1, tanh, erf)
GB_DEFINE_PHI(float, f32, expf, expm1f, tanhf, erff)

#endif
