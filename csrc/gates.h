/* The gate activations of the recurrent cells, each with its derivative from one exponential:
 *
 *   sigmoid  e = exp(-|z|), s = 1/(1+e) for z >= 0, e/(1+e) otherwise (as gb_sigmoid_f64),
 *            s' = e/(1+e)^2 = sigma(z) sigma(-z)
 *   tanh     t = tanh z = sign(z) (-m)/(2 + m), m = expm1(-2|z|); t' = sech^2 z = 4e/(1+e)^2, e = exp(-2|z|)
 *
 * The derivatives keep full relative accuracy in saturation: 1 - tanh^2 rounds to 0 from
 * |z| ~ 19 and s (1 - s) from z ~ 37, while the true values (1e-17, 1e-16) still carry an exact
 * chain through time. gradbench.activations.phi/dphi (NumPy) is the reference; tests compare
 * these against it. Arrays of n values, out may be in (the derivative is written first).
 *   gb_sigmoid_grad_f64 / _f32,  gb_tanh_grad_f64 / _f32
 * With the GCC/Clang vector extension, 8 doubles at a time, e and m from one
 * polynomial (gb_vexpm1_neg: within a few ulp of exp, expm1; tanh within 4 ulp of libm's, tests
 * compare with NumPy); float is widened to double. Without it: libm's exp and tanh.
 */
#ifndef GB_GATES_H
#define GB_GATES_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include "activations.h"

#if defined(__GNUC__) && !defined(GB_PLAIN_C)
#define GB_GATES_VEC 1
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi" /* the vector helpers are static inline: no vector crosses an ABI */
#endif
/* 8 double lanes whatever the instance (AVX-512: one register; AVX2 and the baseline: several) */
typedef double gb_gv __attribute__((vector_size(64)));
typedef int64_t gb_gvi __attribute__((vector_size(64)));
typedef float gb_gvf __attribute__((vector_size(32)));

static inline gb_gv gb_gblend(gb_gvi mask, gb_gv a, gb_gv b) { /* mask ? a : b */
    gb_gvi ia, ib, r;
    gb_gv out;
    memcpy(&ia, &a, sizeof ia);
    memcpy(&ib, &b, sizeof ib);
    r = (mask & ia) | (~mask & ib);
    memcpy(&out, &r, sizeof out);
    return out;
}

/* e = exp(y) and m = expm1(y) for y <= 0 (NaN stays NaN), from one polynomial: y = k ln2 + r
 * (Cody-Waite, |r| <= ln2/2), p = expm1(r) by Taylor to r^13 (truncation < 1e-17 relative),
 * e = 2^k (1 + p) with 2^k applied as 2^k1 2^k2 (a subnormal e rounds once; y < -745.2: 0),
 * m = p for k = 0 (full relative accuracy near 0), e - 1 otherwise (|m| >= 0.29: no cancellation). */
static inline void gb_vexpm1_neg(gb_gv y, gb_gv *e_out, gb_gv *m_out) {
    const gb_gv zero = {0};
    const gb_gvi nan = y != y, tiny = y < -745.2;
    const gb_gv ys = gb_gblend(nan | tiny, zero, y);
    const gb_gv shift = zero + 0x1.8p52;
    const gb_gv kf = (ys * 0x1.71547652b82fep0 + shift) - shift;
    const gb_gv r = (ys - kf * 0x1.62e42fee00000p-1) - kf * 0x1.a39ef35793c76p-33;
    gb_gv p = zero + 1.0 / 6227020800.0; /* 1/13! */
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
    p = r + r * (r * p); /* expm1(r) */
    const gb_gvi k = __builtin_convertvector(kf, gb_gvi); /* -1075 <= k <= 0 */
    const gb_gvi k1 = k >> 1, k2 = k - k1;
    const gb_gvi b1 = (k1 + 1023) << 52, b2 = (k2 + 1023) << 52;
    gb_gv s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    const gb_gv e = gb_gblend(tiny, zero, ((1.0 + p) * s1) * s2);
    *e_out = gb_gblend(nan, y, e);
    *m_out = gb_gblend(nan, y, gb_gblend(tiny, zero - 1.0, gb_gblend(k == 0, p, e - 1.0)));
}

static inline gb_gv gb_gabs(gb_gv x) {
    gb_gvi b;
    memcpy(&b, &x, sizeof b);
    b &= ~((gb_gvi){0} + INT64_MIN);
    memcpy(&x, &b, sizeof x);
    return x;
}

/* s = sigma(z), ds = sigma'(z) for 8 values */
static inline void gb_vsigmoid_grad(gb_gv z, gb_gv *s, gb_gv *ds) {
    gb_gv e, m;
    gb_vexpm1_neg(-gb_gabs(z), &e, &m);
    const gb_gv q = 1.0 + e;
    *s = gb_gblend(z >= 0.0, 1.0 / q, e / q);
    *ds = e / (q * q);
}

/* t = tanh z = sign(z) (-m)/(2 + m), m = expm1(-2|z|) (accurate near 0 and in saturation);
 * dt = sech^2 z = 4e/(1+e)^2, e = exp(-2|z|) */
static inline void gb_vtanh_grad(gb_gv z, gb_gv *t, gb_gv *dt) {
    const gb_gv a = gb_gabs(z);
    gb_gv e, m;
    gb_vexpm1_neg(-2.0 * a, &e, &m);
    const gb_gv q = 1.0 + e;
    *dt = (4.0 * e) / (q * q);
    gb_gv ta = -m / (2.0 + m);
    gb_gvi tb, zb;
    memcpy(&tb, &ta, sizeof tb);
    memcpy(&zb, &z, sizeof zb);
    tb |= zb & ((gb_gvi){0} + INT64_MIN); /* tanh(-0) = -0, NaN stays NaN (m is NaN) */
    memcpy(t, &tb, sizeof tb);
}

/* The body runs on 8 values zin at a time and stores m (8, or the tail) of them with GB_STORE:
 * fixed-size copies for whole vectors (plain vector loads and stores), libc's for the tail. */
#define GB_GATE_LOOP(TYPE, VEC, ...)                                                           \
    for (int64_t i = 0; i < n; i += 8) {                                                       \
        const int64_t m = n - i < 8 ? n - i : 8;                                               \
        VEC zin = {0};                                                                         \
        if (m == 8)                                                                            \
            memcpy(&zin, z + i, sizeof zin);                                                   \
        else                                                                                   \
            memcpy(&zin, z + i, sizeof(TYPE) * (size_t)m);                                     \
        __VA_ARGS__                                                                            \
    }
#define GB_STORE(dst, src)                                                                     \
    do {                                                                                       \
        if (m == 8)                                                                            \
            memcpy((dst) + i, &(src), sizeof(src));                                            \
        else                                                                                   \
            memcpy((dst) + i, &(src), sizeof((dst)[0]) * (size_t)m);                           \
    } while (0)
#endif

static inline void gb_sigmoid_grad_f64(double *s, double *ds, const double *z, int64_t n) {
#ifdef GB_GATES_VEC
    GB_GATE_LOOP(double, gb_gv, {
        gb_gv sv, dv;
        gb_vsigmoid_grad(zin, &sv, &dv);
        GB_STORE(ds, dv);
        GB_STORE(s, sv);
    })
#else
    for (int64_t i = 0; i < n; i++) {
        const double zi = z[i], e = exp(-fabs(zi)), q = 1.0 + e;
        ds[i] = e / (q * q);
        s[i] = zi >= 0 ? 1.0 / q : e / q;
    }
#endif
}

static inline void gb_sigmoid_grad_f32(float *s, float *ds, const float *z, int64_t n) {
#ifdef GB_GATES_VEC
    GB_GATE_LOOP(float, gb_gvf, {
        gb_gv sv, dv;
        gb_vsigmoid_grad(__builtin_convertvector(zin, gb_gv), &sv, &dv);
        const gb_gvf sf = __builtin_convertvector(sv, gb_gvf), df = __builtin_convertvector(dv, gb_gvf);
        GB_STORE(ds, df);
        GB_STORE(s, sf);
    })
#else
    for (int64_t i = 0; i < n; i++) {
        const double zi = z[i], e = exp(-fabs(zi)), q = 1.0 + e;
        ds[i] = (float)(e / (q * q));
        s[i] = (float)(zi >= 0 ? 1.0 / q : e / q);
    }
#endif
}

static inline void gb_tanh_grad_f64(double *t, double *dt, const double *z, int64_t n) {
#ifdef GB_GATES_VEC
    GB_GATE_LOOP(double, gb_gv, {
        gb_gv tv, dv;
        gb_vtanh_grad(zin, &tv, &dv);
        GB_STORE(dt, dv);
        GB_STORE(t, tv);
    })
#else
    for (int64_t i = 0; i < n; i++) {
        const double zi = z[i], e = exp(-2.0 * fabs(zi)), q = 1.0 + e;
        dt[i] = 4.0 * e / (q * q);
        t[i] = tanh(zi);
    }
#endif
}

static inline void gb_tanh_grad_f32(float *t, float *dt, const float *z, int64_t n) {
#ifdef GB_GATES_VEC
    GB_GATE_LOOP(float, gb_gvf, {
        gb_gv tv, dv;
        gb_vtanh_grad(__builtin_convertvector(zin, gb_gv), &tv, &dv);
        const gb_gvf df = __builtin_convertvector(dv, gb_gvf);
        const gb_gvf tf = __builtin_convertvector(tv, gb_gvf);
        GB_STORE(dt, df);
        GB_STORE(t, tf);
    })
#else
    for (int64_t i = 0; i < n; i++) {
        const double zi = z[i], e = exp(-2.0 * fabs(zi)), q = 1.0 + e;
        dt[i] = (float)(4.0 * e / (q * q));
        t[i] = (float)tanh(zi); /* zi: z may be dt */
    }
#endif
}

#endif
