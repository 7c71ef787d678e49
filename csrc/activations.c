/* phi and phi' of every activation, written once for both dtypes through a macro over the
 * real type. The formulas are those of gradbench/reference.py (the oracle):
 *   sigmoid(z) = 1/(1+exp(-z)) for z >= 0, exp(z)/(1+exp(z)) otherwise (no overflow)
 *   elu(z) = z (z > 0), alpha*expm1(z);  selu = lambda * elu with alpha_selu
 *   swish(z) = z*sigmoid(z);  gelu(z) = 0.5*z*(1+erf(z/sqrt(2)))
 * NaN stays NaN, so that non-finite values are reported.
 */
#include <math.h>
#include "gradbench.h"
#include "gb_internal.h"

#define DEFINE_ACTIVATIONS(T, SUFFIX, EXP, EXPM1, TANH, ERF)                                   \
    static inline T gb_sigmoid_##SUFFIX(T z) {                                                 \
        T e = EXP(-(z >= 0 ? z : -z));                                                         \
        return z >= 0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e);                                   \
    }                                                                                          \
    T gb_phi_##SUFFIX(T z, int act, T p) {                                                     \
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
    T gb_dphi_##SUFFIX(T z, int act, T p) {                                                    \
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
    }                                                                                          \
    /* a (n,), z (n,) */                                                                       \
    int gb_activation_forward_##SUFFIX(T *a, const T *z, int64_t n, int act, double param) {   \
        if (act < GB_IDENTITY || act > GB_GELU) return GB_EBADACT;                             \
        if (n < 0) return GB_EBADARG;                                                          \
        for (int64_t i = 0; i < n; i++) a[i] = gb_phi_##SUFFIX(z[i], act, (T)param);           \
        return GB_OK;                                                                          \
    }                                                                                          \
    /* dz (n,), da (n,), z (n,) */                                                             \
    int gb_activation_backward_##SUFFIX(T *dz, const T *da, const T *z, int64_t n, int act,    \
                                        double param) {                                        \
        if (act < GB_IDENTITY || act > GB_GELU) return GB_EBADACT;                             \
        if (n < 0) return GB_EBADARG;                                                          \
        for (int64_t i = 0; i < n; i++) dz[i] = da[i] * gb_dphi_##SUFFIX(z[i], act, (T)param); \
        return GB_OK;                                                                          \
    }

DEFINE_ACTIVATIONS(double, f64, exp, expm1, tanh, erf)
DEFINE_ACTIVATIONS(float, f32, expf, expm1f, tanhf, erff)
