/* The activations in C: phi and phi' of one value for both dtypes, and an array tanh.
 *
 * One name per concept in every language: phi/dphi in gradbench/activations.py (NumPy, the
 * reference) and kernels/activations.py (Numba); here gb_phi_f64, gb_dphi_f64 (double) and
 * gb_phi_f32, gb_dphi_f32 (float, evaluated in double), the scaled forms gb_phi_scaled_f64/_f32
 * and gb_dphi_scaled_f64/_f32 (phi_scaled, dphi_scaled), and GB_VL lanes at a time gb_vact
 * (phi and phi' together; the layer rows in stack_impl.h use it).
 */
#ifndef GB_ACTIVATIONS_H
#define GB_ACTIVATIONS_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "gradbench.h"

#define GB_SELU_LAMBDA 1.0507009873554804934193349852946
#define GB_SELU_ALPHA 1.6732632423543772848170429916717
#define GB_SQRT_HALF 0.70710678118654752440084436210485
#define GB_SQRT_HALF_LO (-4.8336466567264567e-17) /* sqrt(1/2) - GB_SQRT_HALF */
#define GB_INV_SQRT_2PI 0.39894228040143267793994605993438
#define GB_INV_SQRT_PI 0.56418958354775628694807945156077

/* phi and phi' of one value, in double: the building blocks of every layer kernel. The
 * formulas are those of gradbench/activations.py (phi, dphi; the oracle), written without
 * cancellation so that saturated units keep their digits:
 *   sigmoid(z) = 1/(1+e) (z >= 0), e/(1+e) (z < 0), e = exp(-|z|);  sigmoid' = e/(1+e)^2
 *   tanh' = sech^2 z = 4e/(1+e)^2, e = exp(-2|z|)
 *   elu(z) = z (z > 0), p expm1(z);  elu' = 1 or p exp(z);  selu = lambda * elu(alpha_selu)
 *   swish(z) = z s(z);  swish' = s(z) (1 + z s(-z))
 *   gelu(z) = z Phi(z), Phi(z) = erfc(-z/sqrt2)/2;  gelu' = Phi(z) + z phi_N(z)
 * Phi and phi_N are evaluated a little more carefully than the reference: -z/sqrt2 and z^2
 * carry rounding errors that exp and erfc magnify by z^2 (hundreds of ulps at |z| ~ 30), so
 * the rounding error of each is computed with fma and corrected to first order. Float32
 * values are evaluated by these double functions and rounded once, as the reference does
 * (but for the float32 layers' tanh, sigmoid, ELU and SELU: csrc/vact_f32.h).
 * NaN stays NaN, so that non-finite values are reported (the min(z, 0) of np.minimum keeps
 * NaN). Static inline: in a layer loop with a constant activation the switch folds. */
static inline double gb_sigmoid_f64(double z) {
    double e = exp(-fabs(z));
    return z >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}

/* exp(-z^2/2) with z^2's rounding error p_lo = fma(z, z, -p) applied as the factor 1 - p_lo/2 */
static inline double gb_gauss_f64(double z) {
    const double p = z * z, p_lo = isfinite(p) ? fma(z, z, -p) : 0.0;
    return exp(-0.5 * p) * (1.0 - 0.5 * p_lo);
}

/* Phi(z) = erfc(t)/2, t = -z/sqrt2 = th + tl: erfc(th + tl) = erfc(th) - tl 2/sqrt(pi) exp(-th^2) */
static inline double gb_ncdf_f64(double z) {
    const double th = -z * GB_SQRT_HALF;
    const double tl = isfinite(th) ? fma(-z, GB_SQRT_HALF, -th) - z * GB_SQRT_HALF_LO : 0.0;
    return 0.5 * (erfc(th) - tl * (2.0 * GB_INV_SQRT_PI) * exp(-th * th));
}

static inline double gb_phi_f64(double z, int act, double p) {
    const double zn = (z < 0 || z != z) ? z : 0.0; /* np.minimum(z, 0) */
    switch (act) {
    case GB_IDENTITY: return z;
    case GB_SIGMOID: return gb_sigmoid_f64(z);
    case GB_TANH: return tanh(z);
    case GB_RELU: return (z > 0 || z != z) ? z : 0.0;
    case GB_LEAKY_RELU:
    case GB_PRELU: return z > 0 ? z : p * z;
    case GB_ELU: return z > 0 ? z : p * expm1(zn);
    case GB_SELU: return GB_SELU_LAMBDA * (z > 0 ? z : GB_SELU_ALPHA * expm1(zn));
    case GB_SWISH: return z * gb_sigmoid_f64(z);
    case GB_GELU: return z * gb_ncdf_f64(z);
    }
    return NAN;
}

static inline double gb_dphi_f64(double z, int act, double p) {
    const double zn = (z < 0 || z != z) ? z : 0.0;
    double e;
    switch (act) {
    case GB_IDENTITY: return 1.0;
    case GB_SIGMOID: e = exp(-fabs(z)); return e / ((1.0 + e) * (1.0 + e));
    case GB_TANH: e = exp(-2.0 * fabs(z)); return 4.0 * e / ((1.0 + e) * (1.0 + e));
    case GB_RELU: return z > 0 ? 1.0 : 0.0;
    case GB_LEAKY_RELU:
    case GB_PRELU: return z > 0 ? 1.0 : p;
    case GB_ELU: return z > 0 ? 1.0 : p * exp(zn);
    case GB_SELU: return GB_SELU_LAMBDA * (z > 0 ? 1.0 : GB_SELU_ALPHA * exp(zn));
    case GB_SWISH: return gb_sigmoid_f64(z) * (1.0 + z * gb_sigmoid_f64(-z));
    case GB_GELU: return gb_ncdf_f64(z) + z * gb_gauss_f64(z) * GB_INV_SQRT_2PI;
    }
    return NAN;
}

/* ln|phi'(x)| and the sign of phi'(x) (*sign, +-1) in double at any x including +-inf, for the
 * activations whose phi' can underflow while the chain should go on (the backward's
 * saturated-derivative rescue: sigmoid, tanh, elu, selu, swish, gelu); the twin of log_dphi in
 * gradbench/activations.py:
 *   sigmoid: -a - 2 log1p(e^-a);  tanh: ln4 - 2a - 2 log1p(e^-2a)  (a = |x|)
 *   elu, selu: ln(lambda) (x > 0), ln(lambda) + ln(alpha) + x (x <= 0; alpha <= 0: -inf)
 *   swish: ln s(x) + ln|1 + x s(-x)| (sign of the second factor); 0 at +inf, -inf at -inf
 *   gelu: ln|gb_dphi_f64(x)| for x >= -30; below, -x^2/2 - ln sqrt(2 pi) + ln(a - m(a)),
 *         a = -x, m the asymptotic Mills ratio to 6 terms (sign -); -inf at x = -inf.
 * NaN x gives NaN. Other activations: NAN (they are never rescued). */
#define GB_LN4 1.3862943611198906188344642429164
#define GB_HALF_LN_2PI 0x1.d67f1c864beb4p-1 /* 0.5 * math.log(2 * math.pi) in Python (1 ulp low) */
#define GB_GELU_ASYMPTOTIC (-30.0)
/* a m(a), m the asymptotic Mills ratio Phi(-a) / phi(a) to 6 terms (r = 1/a^2) */
static inline double gb_mills_series(double r) {
    return 1.0 - r * (1.0 - r * (3.0 - r * (15.0 - r * (105.0 - r * 945.0))));
}
static inline double gb_log_dphi_f64(double x, int act, double p, double *sign) {
    const double a = fabs(x);
    *sign = 1.0;
    switch (act) {
    case GB_SIGMOID: return -a - 2.0 * log1p(exp(-a));
    case GB_TANH: return GB_LN4 - 2.0 * a - 2.0 * log1p(exp(-2.0 * a));
    case GB_ELU:
    case GB_SELU: {
        const double lam = act == GB_ELU ? 1.0 : GB_SELU_LAMBDA, al = act == GB_ELU ? p : GB_SELU_ALPHA;
        const double ln_alpha = al > 0 ? log(al) : -INFINITY;
        if (x > 0) return log(lam);
        return log(lam) + ln_alpha + ((x < 0 || x != x) ? x : 0.0); /* np.minimum(x, 0) */
    }
    case GB_SWISH: {
        if (isinf(x)) return x > 0 ? 0.0 : -INFINITY;
        const double ls = x >= 0 ? -log1p(exp(-a)) : x - log1p(exp((x < 0 || x != x) ? x : 0.0));
        const double t = 1.0 + x / (1.0 + exp(x));
        *sign = t > 0 ? 1.0 : (t < 0 ? -1.0 : (t == 0 ? 0.0 : NAN));
        return ls + log(fabs(t));
    }
    case GB_GELU: {
        if (x < GB_GELU_ASYMPTOTIC) {
            *sign = -1.0;
            if (isinf(x)) return -INFINITY;
            const double r = 1.0 / (a * a);
            const double mills = gb_mills_series(r) / a;
            return -0.5 * a * a - GB_HALF_LN_2PI + log(a - mills);
        }
        const double d = gb_dphi_f64(x, GB_GELU, p);
        *sign = d > 0 ? 1.0 : (d < 0 ? -1.0 : (d == 0 ? 0.0 : NAN));
        return log(fabs(d));
    }
    }
    *sign = NAN;
    return NAN;
}

/* ln|phi(x)| and the sign of phi(x) in double at any x, +-inf included, for the activations whose
 * phi itself underflows for finite x (the forward's rescue: swish, gelu); the twin of log_phi in
 * gradbench/activations.py:
 *   swish: ln|x| + ln s(x);  gelu: ln|x Phi(x)| (gb_phi_f64) for x >= -30, below
 *          -x^2/2 - ln sqrt(2 pi) + ln(1 - r(1 - r(3 - r(15 - r(105 - 945 r))))), r = 1/x^2.
 * 0 gives -inf (sign 0). Other activations: NAN. */
static inline double gb_log_phi_f64(double x, int act, double p, double *sign) {
    *sign = x > 0 ? 1.0 : (x < 0 ? -1.0 : (x == 0 ? 0.0 : NAN));
    if (x == 0) return -INFINITY;
    if (act == GB_ELU || act == GB_SELU) { /* ln(lambda x) above 0, ln(lambda alpha) + ln(-expm1 x) below */
        const double lam = act == GB_ELU ? 1.0 : GB_SELU_LAMBDA;
        if (x > 0) return log(x) + log(lam);
        return log(lam * (act == GB_ELU ? p : GB_SELU_ALPHA)) + log(-expm1(x)); /* -inf: the limit */
    }
    if (isinf(x)) return x;
    const double a = fabs(x);
    if (act == GB_SWISH) return log(a) + (x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x)));
    if (act != GB_GELU) {
        *sign = NAN;
        return NAN;
    }
    if (x >= GB_GELU_ASYMPTOTIC) return log(fabs(gb_phi_f64(x, GB_GELU, p)));
    const double r = 1.0 / (a * a);
    return -0.5 * a * a - GB_HALF_LN_2PI + log(gb_mills_series(r));
}

/* float32: evaluated in double, rounded once (the reference's float64 evaluation) */
static inline float gb_phi_f32(float z, int act, double p) { return (float)gb_phi_f64(z, act, p); }
static inline float gb_dphi_f32(float z, int act, double p) { return (float)gb_dphi_f64(z, act, p); }

/* ------------------------------------------------------------------ scaled evaluation
 * The C twin of phi_scaled / dphi_scaled / linear_coefficients / TINY in
 * gradbench/activations.py. With forward rescaling a pre-activation is a mantissa u at an
 * int64 exponent f, z = u 2^f (possibly far outside the float range):
 *   |z| < tiny            phi = c0 u (c0 by the sign of u), phi' = c0        (linear term)
 *   u 2^f overflows       phi = c_inf u + k 2^-f, phi' = c_inf                (limit form)
 *   otherwise             phi = phi(z) 2^-f, phi' = phi'(z)
 * and the result is phi's mantissa at the same exponent f. Homogeneous activations (identity,
 * the ReLU family) need none of this: phi(u 2^f) = phi(u) 2^f exactly. */
/* how the vector code evaluates a layer (gb_vact_scaled): phi as it is; z = u 2^f by one product
 * (|f| <= 1000); every finite u tiny (f < -2200) or overflowing (f > 2200); or z = u 2^f and
 * phi 2^-f by three products each (1000 < |f| <= 2200: ldexp's bits), with the scalar functions
 * for GB_VL lanes of which one is neither tiny, overflowing nor saturated */
enum { GB_VM_PLAIN, GB_VM_MUL, GB_VM_TINY, GB_VM_OVER, GB_VM_LDEXP };

typedef struct gb_scaled {
    int act;       /* activation code */
    int vmode;     /* GB_VM_* */
    double pf, pmf; /* 2^f and 2^-f (ldexp(1, f), 0 or inf beyond the range) */
    int on;        /* 1: the three regimes above; 0: phi(u) as it is (homogeneous, or no rescaling) */
    int f, mf;     /* the exponent and its negative, clamped to +-100000 (np.ldexp's int) */
    double p;      /* the activation parameter */
    double tiny;   /* TINY[dtype][act] */
    double c0p, c0m, cip, cim, kp, km; /* linear_coefficients: slopes at 0 (u > 0, u <= 0), at
                                          +-inf, and the limit constants at +inf, -inf */
    double lkp, lkm;      /* ldexp(kp, -f), ldexp(km, -f) (GB_VM_LDEXP) */
    double tiny_u;        /* tiny 2^-f (inf beyond the doubles): |u| below it is in the linear
                             form (f < -60; the float32 rows' float lanes, stack_impl.h) */
    double zq[3], rq[3];  /* ldexp(., f) and ldexp(., -f) as three products (gb_scaled_factors;
                             GB_VM_LDEXP) */
    int layer_over;       /* the layer's exponent (gb_scaled_init's f) above 60: the float32 rows'
                             float lanes stay off for every row of it (stack_impl.h gb_vf_mode) */
} gb_scaled;

/* ldexp(1, e): built from the bits for a normal result (a call per layer otherwise) */
static inline double gb_pow2_f64(int e) {
    if (e < -1022 || e > 1023) return ldexp(1.0, e);
    const uint64_t b = (uint64_t)(e + 1023) << 52;
    double d;
    memcpy(&d, &b, sizeof d);
    return d;
}

/* TINY of gradbench/activations.py: |z| below which phi(z) = c z to the last bit (float32: f32 = 1) */
static inline double gb_tiny(int act, int f32) {
    if (act == GB_TANH) return f32 ? 0x1p-16 : 0x1p-30;
    return f32 ? 0x1p-28 : 0x1p-57; /* gelu, swish, elu, selu */
}

/* ldexp(x, e) for |e| <= 3066 as ((x q[0]) q[1]) q[2], each q a normal power of two, bit for bit
 * for every x (0, subnormal, inf and NaN included): e >= 0: the magnitude only grows, every
 * product is exact until it overflows to inf, as ldexp; e < 0: q[2] = 2^max(e, -1022), then
 * q[1] = 2^max(e - e2, -1022), q[0] the rest (>= 2^-1022): there is an intermediate only when
 * q[2] = 2^-1022, so that one below the normal range (rounded) leaves a result and an exact
 * x 2^e below 2^-2044 that both round to 0 (signed as x); otherwise only the last product
 * rounds, once. */
static inline void gb_scaled_factors(int e, double q[3]) {
    int e2, e1, e0;
    if (e >= 0) {
        e2 = e > 1023 ? 1023 : e;
        e1 = e - e2 > 1023 ? 1023 : e - e2;
    } else {
        e2 = e < -1022 ? -1022 : e;
        e1 = e - e2 < -1022 ? -1022 : e - e2;
    }
    e0 = e - e2 - e1;
    q[0] = gb_pow2_f64(e0);
    q[1] = gb_pow2_f64(e1);
    q[2] = gb_pow2_f64(e2);
}

/* The scaled-evaluation setup for one layer: activation, parameter, rescaling on/off, exponent
 * f of the layer's pre-activation mantissas, dtype (f32 = 1 for float). */
/* The fields of s that depend on the exponent f (s->on, tiny and the constants already set). */
static inline void gb_scaled_set_f(gb_scaled *s, int64_t f) {
    f = f > 100000 ? 100000 : (f < -100000 ? -100000 : f);
    s->f = (int)f;
    s->mf = (int)-f;
    s->pf = gb_pow2_f64(s->f);
    s->pmf = gb_pow2_f64(s->mf);
    s->vmode = !s->on ? GB_VM_PLAIN
               : f < -2200 ? GB_VM_TINY
               : f > 2200 ? GB_VM_OVER
               : (f >= -1000 && f <= 1000) ? GB_VM_MUL : GB_VM_LDEXP;
    s->tiny_u = s->on && s->f < -60 ? ldexp(s->tiny, s->mf) : 0;
    if (s->vmode == GB_VM_LDEXP) { /* (a few calls per layer: only where used) */
        gb_scaled_factors(s->f, s->zq);
        gb_scaled_factors(s->mf, s->rq);
        s->lkp = ldexp(s->kp, s->mf);
        s->lkm = ldexp(s->km, s->mf);
    }
}

static inline gb_scaled gb_scaled_init(int act, double p, int rescale, int64_t f, int f32) {
    gb_scaled s;
    memset(&s, 0, sizeof s);
    s.act = act;
    s.p = p;
    s.on = rescale && (act == GB_TANH || act == GB_ELU || act == GB_SELU || act == GB_SWISH ||
                       act == GB_GELU);
    s.tiny = gb_tiny(act, f32);
    switch (act) {
    case GB_TANH: s.c0p = s.c0m = 1.0; s.kp = 1.0; s.km = -1.0; break;
    case GB_GELU:
    case GB_SWISH: s.c0p = s.c0m = 0.5; s.cip = 1.0; break;
    case GB_ELU: s.c0p = 1.0; s.c0m = p; s.cip = 1.0; s.km = -p; break;
    case GB_SELU:
        s.c0p = s.cip = GB_SELU_LAMBDA;
        s.c0m = GB_SELU_LAMBDA * GB_SELU_ALPHA;
        s.km = -GB_SELU_LAMBDA * GB_SELU_ALPHA;
        break;
    }
    gb_scaled_set_f(&s, f);
    s.layer_over = s.on && s.f > 60;
    return s;
}

/* s (from gb_scaled_init) made the setup for exponent f instead: the fields that depend on f,
 * as gb_scaled_init sets them (the others, unused in the new mode, may keep old values), but
 * layer_over, the layer's. The stacks' rows each carry their own exponent (frow): a row whose f
 * is the previous row's costs one comparison; homogeneous activations and unscaled layers
 * ignore f. */
static inline void gb_scaled_refit(gb_scaled *s, int64_t f) {
    if (!s->on) return;
    if ((f > 100000 ? 100000 : (f < -100000 ? -100000 : f)) == s->f) return;
    gb_scaled_set_f(s, f);
}

/* The setups of a layer's rows (the stacks' frow: a few distinct exponents per layer, as a
 * rule): direct-mapped by f mod 8, each made once per layer from the layer's (gb_scaled_refit);
 * gb_scaled_rows_reset before a layer's first row. */
typedef struct {
    gb_scaled s[8];
    int64_t key[8];
} gb_scaled_rows;

static inline void gb_scaled_rows_reset(gb_scaled_rows *c) {
    for (int i = 0; i < 8; i++) c->key[i] = INT64_MIN;
}

/* the setup for exponent f: base itself when it ignores f (no rescaling, homogeneous) */
static inline const gb_scaled *gb_scaled_row(gb_scaled_rows *c, const gb_scaled *base, int64_t f) {
    if (!base->on) return base;
    const int i = (int)(f & 7);
    if (c->key[i] != f) {
        c->s[i] = *base;
        gb_scaled_refit(&c->s[i], f);
        c->key[i] = f;
    }
    return &c->s[i];
}

static inline double gb_phi_scaled_f64(double u, const gb_scaled *s) {
    if (!s->on) return gb_phi_f64(u, s->act, s->p);
    const double z = ldexp(u, s->f);
    if (fabs(z) < s->tiny) return (u > 0 ? s->c0p : s->c0m) * u;
    const double pz = isinf(z) ? 0.0 : gb_phi_f64(z, s->act, s->p);
    if ((isinf(z) || isinf(pz)) && isfinite(u)) /* SELU: lambda z overflows below z's overflow */
        return (u > 0 ? s->cip : s->cim) * u + ldexp(u > 0 ? s->kp : s->km, s->mf);
    return ldexp(pz, s->mf);
}

static inline double gb_dphi_scaled_f64(double u, const gb_scaled *s) {
    if (!s->on) return gb_dphi_f64(u, s->act, s->p);
    const double z = ldexp(u, s->f);
    if (fabs(z) < s->tiny) return u > 0 ? s->c0p : s->c0m;
    if (isinf(z) && isfinite(u)) return u > 0 ? s->cip : s->cim;
    return gb_dphi_f64(z, s->act, s->p);
}

static inline float gb_phi_scaled_f32(float u, const gb_scaled *s) { return (float)gb_phi_scaled_f64(u, s); }
static inline float gb_dphi_scaled_f32(float u, const gb_scaled *s) { return (float)gb_dphi_scaled_f64(u, s); }


/* ------------------------------------------------------------------ vector activations
 * phi and phi' of GB_VL doubles at once (both dtypes: float is widened, as in the scalar
 * functions), through the GCC/Clang vector extension: AVX-512, AVX2 or SSE2 code depending on
 * the target the including file is compiled for. Every activation is written with gb_vexp2
 * (exp, expm1) and the formulas above, GELU with exp(-z^2/2) reduced the same way and a
 * piecewise polynomial for erfcx (gb_vgelu), within a few ulps of the scalar ones
 * (tests/test_c.py checks both against mpmath and the reference; tests/test_vact.py each
 * instruction set's gb_vact lanes):
 *   gb_vexp2: exp(x) = 2^k exp(r), k = round(x/ln2), r = x - k ln2 (Cody-Waite, |r| <= ln2/2),
 *     exp(r) - 1 by Taylor to r^13 (truncation < 1e-17); 2^k applied as 2^(k/2) 2^(k - k/2),
 *     so that results in the subnormal range are rounded once, as libm's; overflow gives inf;
 *     expm1(x) (x <= 0) from the same reduction, 2^k (exp(r) - 1) + (2^k - 1).
 *   tanh: -m/(2 + m), m = expm1(-2|x|), sign restored; sech^2 = 4e/(1+e)^2, e = exp(-2|x|).
 * NaN stays NaN. Without the vector extension (GB_PLAIN_C) the layer loops call the scalar
 * functions. */
/* Cody-Waite: ln2 = GB_LN2_HI + GB_LN2_LO, GB_LN2_HI with 32 significant bits (k GB_LN2_HI is
 * exact for |k| < 2^21); outside the vector code: gb_internal.h's gb_log_rem needs them too */
#define GB_INV_LN2 0x1.71547652b82fep0
#define GB_LN2_HI 0x1.62e42fee00000p-1
#define GB_LN2_LO 0x1.a39ef35793c76p-33

#if defined(__GNUC__) && !defined(GB_PLAIN_C)
#define GB_HAVE_VEC 1
#if !defined(__clang__)
/* the vector helpers are static inline: no vector crosses an external ABI */
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
/* GB_VL double lanes: the width of the instance's registers (AVX-512 8, AVX2 4); the
 * baseline's SSE2 takes 4 too, as two registers (2 lanes made GCC 12 fail on the float rows) */
#if defined(__AVX512F__)
#define GB_VL 8
#else
#define GB_VL 4
#endif
/* The vector helpers are inlined into the row loops of stack_impl.h (always: a call per GB_VL
 * lanes kept the lanes' latency from overlapping), and their few FMA contractions are fixed in
 * the source (GB_OPAQUE below), not left to where the compiler inlines them. */
#define GB_AINLINE __attribute__((always_inline)) inline
/* v through an empty asm: the compiler cannot contract the product that made v into a later
 * sum (x86 without FMA contracts nothing; other targets: through memory) */
#if (defined(__x86_64__) || defined(__i386__)) && !defined(__clang__)
#if defined(__FMA__)
#define GB_OPAQUE(v) __asm__("" : "+v"(v))
#else
#define GB_OPAQUE(v) ((void)0)
#endif
#else
#define GB_OPAQUE(v) __asm__("" : "+m"(v))
#endif
#if defined(__AVX__) && !defined(__clang__)
#include <immintrin.h>
#endif
typedef double gb_vd __attribute__((vector_size(GB_VL * 8)));
typedef int64_t gb_vi __attribute__((vector_size(GB_VL * 8)));
/* 8 lanes whatever the instance: the fixed order of the reductions (stack_impl.h) */
typedef double gb_vd8 __attribute__((vector_size(64)));

static GB_AINLINE gb_vd gb_blend(gb_vi mask, gb_vd a, gb_vd b) { /* mask ? a : b */
#if defined(__AVX512F__) && defined(__AVX512DQ__) && GB_VL == 8 && !defined(__clang__)
    /* one masked move (the mask goes back to a mask register; the compares that make it put it there) */
    return (gb_vd)_mm512_mask_blend_pd(_mm512_movepi64_mask((__m512i)mask), (__m512d)b, (__m512d)a);
#endif
    gb_vi ia, ib, r;
    gb_vd out;
    memcpy(&ia, &a, sizeof ia);
    memcpy(&ib, &b, sizeof ib);
    r = (mask & ia) | (~mask & ib);
    memcpy(&out, &r, sizeof out);
    return out;
}

/* v > acc ? v : acc (NaN v: acc), the running max of the reductions: one max instruction
 * where its NaN and tie rule is exactly this one (x86 maxpd returns the second operand when
 * either is NaN or they are equal), else a compare and a blend */
static GB_AINLINE gb_vd gb_vmax_keep(gb_vd v, gb_vd acc) {
#if defined(__AVX512F__) && GB_VL == 8 && !defined(__clang__)
    return (gb_vd)_mm512_max_pd((__m512d)v, (__m512d)acc);
#elif defined(__AVX__) && GB_VL == 4 && !defined(__clang__)
    return (gb_vd)_mm256_max_pd((__m256d)v, (__m256d)acc);
#else
    return gb_blend(v > acc, v, acc);
#endif
}

/* the largest lane of v, whose lanes are >= 0 and not NaN (the running maxima above): the
 * same value in any order, so by a tree of shuffles and maxima instead of a chain of GB_VL
 * scalar compares (one per activation row) */
static GB_AINLINE double gb_hmax_nonneg(gb_vd v) {
#if defined(__AVX512F__) && GB_VL == 8 && !defined(__clang__)
    return _mm512_reduce_max_pd((__m512d)v);
#elif defined(__AVX__) && GB_VL == 4 && !defined(__clang__)
    const __m128d h = _mm_max_pd(_mm256_castpd256_pd128((__m256d)v), _mm256_extractf128_pd((__m256d)v, 1));
    return _mm_cvtsd_f64(_mm_max_sd(h, _mm_unpackhi_pd(h, h)));
#else
    double m = 0;
    for (int c = 0; c < GB_VL; c++) m = v[c] > m ? v[c] : m;
    return m;
#endif
}

static GB_AINLINE int gb_any(gb_vi m) {
    int64_t a = 0;
    for (int i = 0; i < GB_VL; i++) a |= m[i];
    return a != 0;
}

/* any lane of k below c */
static GB_AINLINE int gb_any_below(gb_vi k, int64_t c) {
#if defined(__AVX512F__) && GB_VL == 8 && !defined(__clang__)
    return _mm512_cmplt_epi64_mask((__m512i)k, _mm512_set1_epi64(c)) != 0;
#elif defined(__AVX2__) && GB_VL == 4 && !defined(__clang__)
    return _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(_mm256_set1_epi64x(c), (__m256i)k))) != 0;
#else
    return gb_any(k < c);
#endif
}

static GB_AINLINE gb_vd gb_vabs(gb_vd x) {
    gb_vi b;
    memcpy(&b, &x, sizeof b);
    b &= ~((gb_vi){0} + INT64_MIN);
    memcpy(&x, &b, sizeof x);
    return x;
}

static GB_AINLINE gb_vd gb_vpow2(gb_vi k) { /* 2^k for k in [-1022, 1023] */
    gb_vi b = (k + 1023) << 52;
    gb_vd out;
    memcpy(&out, &b, sizeof out);
    return out;
}

/* exp(r) - 1 for |r| <= ln2/2 (and a little beyond): r P(r), P(r) = sum_{n=0..12} r^n / (n+1)!,
 * by Estrin's scheme (a few dependent steps instead of Horner's 13: the lanes' latency, not the
 * arithmetic, bounded the loop) */
static GB_AINLINE gb_vd gb_vexpm1_r(gb_vd r) {
    const gb_vd r2 = r * r, r4 = r2 * r2, r8 = r4 * r4;
    const gb_vd p01 = 1.0 + r * 0.5, p23 = 1.0 / 6.0 + r * (1.0 / 24.0);
    const gb_vd p45 = 1.0 / 120.0 + r * (1.0 / 720.0), p67 = 1.0 / 5040.0 + r * (1.0 / 40320.0);
    const gb_vd p89 = 1.0 / 362880.0 + r * (1.0 / 3628800.0);
    const gb_vd p1011 = 1.0 / 39916800.0 + r * (1.0 / 479001600.0);
    const gb_vd s0 = (p01 + r2 * p23) + r4 * (p45 + r2 * p67);
    const gb_vd s1 = (p89 + r2 * p1011) + r4 * (1.0 / 6227020800.0);
    return r * (s0 + r8 * s1);
}

/* exp(x) into *e and, for x <= 0, expm1(x) into *m (either may be NULL), from one range
 * reduction: x = k ln2 + r, q = exp(r) - 1 by Taylor to r^13 (no constant term), then
 * e = 2^k (1 + q) (as 2^(k/2) 2^(k - k/2): subnormal results rounded once) and
 * m = 2^k q + (2^k - 1) (exact scalings, one rounding; -1 once 2^k is below the last bit).
 * For x <= 0 or NaN only (the activations' arguments). With FMA, 1 + q is one fused r P(r) + 1 when only e is asked for, and q is rounded first when
 * m is asked for too (the results of the first vector code, whose compiler chose so). Called with
 * e and m known at compile time (always inlined). */
static GB_AINLINE void gb_vexp2(gb_vd x, gb_vd *e, gb_vd *m) {
    const gb_vd zero = {0};
    const gb_vi nan = x != x; /* x <= 0 in every caller (-|z|, -2|z|, min(z, 0)): no upper clamp */
    /* y = x, or -1100 below it or for NaN: one max where the instruction's NaN rule is that one
     * (x86 maxpd returns the second operand when either is NaN, and on ties) */
#if defined(__AVX512F__) && GB_VL == 8 && !defined(__clang__)
    const gb_vd y = (gb_vd)_mm512_max_pd((__m512d)x, (__m512d)(zero - 1100.0));
#elif defined(__AVX__) && GB_VL == 4 && !defined(__clang__)
    const gb_vd y = (gb_vd)_mm256_max_pd((__m256d)x, (__m256d)(zero - 1100.0));
#else
    const gb_vd y = gb_blend((x < -1100.0) | nan, zero - 1100.0, x);
#endif
    const gb_vd shift = zero + 0x1.8p52;
    const gb_vd kf = (y * GB_INV_LN2 + shift) - shift;
    const gb_vd r = (y - kf * GB_LN2_HI) - kf * GB_LN2_LO;
    const gb_vd q = gb_vexpm1_r(r); /* exp(r) - 1 */
    const gb_vi k = __builtin_convertvector(kf, gb_vi);
    gb_vd q1 = zero; /* 1 + q, formed here: GCC fuses a product only into a sum of the same block */
    if (e) {
        gb_vd qe = q;
        if (m) GB_OPAQUE(qe);
        q1 = 1.0 + qe;
    }
    if (!gb_any_below(k, -1020)) {
        /* every lane has k in [-1020, 0] (so no NaN x, whose y is -1100): 2^k is normal and so
         * is (1 + q) 2^k (1 + q > 1/2), the two exact products below are one exact product,
         * and 2^k serves m too: the same values with fewer instructions */
        const gb_vd p2 = gb_vpow2(k);
        if (e) *e = q1 * p2;
        if (m) {
            const gb_vi low = k < -60; /* 2^k below the last bit of 1: m = -1 */
            const gb_vd t = gb_blend(low, zero + 0x1p-60, p2);
            *m = t * q + (t - 1.0);
        }
        return;
    }
    if (e) {
        /* k <= -1076: 2^k (1 + q) < 2^-1075.5 rounds to +0, which these lanes get without the
         * products (k = 0 in them): a product that underflows takes a microcode assist per
         * vector (an exploding ELU or swish stack, half its lanes at z ~ -2^100: the activation
         * passes 1.9x slower) */
        const gb_vi zero_lane = k < -1075, kk = k & ~zero_lane, k1 = kk >> 1;
        *e = gb_blend(nan, x, gb_blend(zero_lane, zero, (q1 * gb_vpow2(k1)) * gb_vpow2(kk - k1)));
    }
    if (m) {
        const gb_vi low = k < -60; /* 2^k below the last bit of 1: m = -1 */
        const gb_vd t = gb_vpow2((low & -60) | (~low & k));
        *m = gb_blend(nan, x, t * q + (t - 1.0));
    }
}

static GB_AINLINE gb_vd gb_vexp(gb_vd x) {
    gb_vd e;
    gb_vexp2(x, &e, NULL);
    return e;
}

/* tanh x = -m r with r = 1/(2 + m) (or 1/(1 + e), e = m + 1: one division shared with
 * sech^2 = 4 e r^2), m = expm1(-2|x|) (no cancellation at any |x|), sign restored */
static GB_AINLINE gb_vd gb_vtanh_r(gb_vd x, gb_vd m, gb_vd r) {
    gb_vd t = -m * r;
    gb_vi xb, tb;
    memcpy(&xb, &x, sizeof xb);
    memcpy(&tb, &t, sizeof tb);
    tb |= xb & ((gb_vi){0} + INT64_MIN);
    memcpy(&t, &tb, sizeof t);
    return gb_blend(x != x, x, t);
}

static GB_AINLINE gb_vd gb_vtanh_m(gb_vd x, gb_vd m) { return gb_vtanh_r(x, m, 1.0 / (2.0 + m)); }

/* GELU: Phi(z) = erfc(-z/sqrt2)/2 and phi_N(z) through w = |z| (exact), E = exp(-w^2/2) and
 * F(w) = exp(w^2/2) Phi(-w) = erfcx(w/sqrt2)/2, smooth and in [0.009, 0.5] for w <= 44:
 *   z <= 0: Phi = E F,      gelu = -(w E F),       gelu' = E (F - w c)
 *   z > 0:  Phi = 1 - E F,  gelu = z (1 - E F),    gelu' = 1 - E (F - w c),   c = 1/sqrt(2 pi)
 * (Phi(-w) = 1 - Phi(w), phi_N(z) = c E). F is a polynomial of degree GB_GELU_DEG in w - centre
 * on each of 14 pieces of [0, 44] (csrc/gelu_table.h, written by csrc/gen_gelu_table.py from
 * mpmath: relative error < 2^-55; c0 as two doubles), the piece read off the bits of w + 4.
 * exp(-w^2/2) keeps its relative accuracy at any w as in fdlibm's erfc (s_erf.c, which rounds
 * x to 32 bits for exp(-x^2)): wh = w with its low 27 bits cleared, so that wh^2 is exact and
 * w^2 = wh^2 + (w - wh)(w + wh), the second term small and rounded once; the reduction of
 * gb_vexp2 takes -wh^2/2 (k = round(-w^2/(2 ln2))) and the small term is added to r. E F, the
 * products with z and (F - w c) are formed on E's mantissa 1 + q = exp(r) and scaled by 2^k as
 * 2^(k/2) 2^(k - k/2), exactly but for one rounding where the result is subnormal (the lower
 * tail, z < -37.5, down to 0 at z ~ -38.6). Beyond w = 44 (and for inf, NaN) E is 0 (2^(k/2)
 * set to 0) and F is F(44): Phi is 0 or 1 (gelu' -0 below, where the scalar function has +0;
 * gb_vact_ldexp adds +0 where it needs the scalar bits: an add here cost 8% of a GELU layer),
 * and +-inf give the scalar function's NaN (inf * 0) but gelu(+inf) = inf; NaN stays NaN.
 * Each output is written from the shared F, q and scales with no value of one used by the
 * other, so phi' has the same bits whether phi is asked for too. */
#include "gelu_table.h"

/* row j of the GELU table at each lane's piece (idx in [0, 15]) */
static GB_AINLINE gb_vd gb_gelu_row(int j, gb_vi idx) {
#if defined(__AVX512F__) && GB_VL == 8 && !defined(__clang__)
    return (gb_vd)_mm512_permutex2var_pd(_mm512_load_pd(gb_gelu_tab[j]), (__m512i)idx,
                                         _mm512_load_pd(gb_gelu_tab[j] + 8));
#elif defined(__AVX2__) && GB_VL == 4 && !defined(__clang__)
    return (gb_vd)_mm256_i64gather_pd(gb_gelu_tab[j], (__m256i)idx, 8);
#else
    gb_vd c = {0};
    for (int i = 0; i < GB_VL; i++) c[i] = gb_gelu_tab[j][idx[i]];
    return c;
#endif
}

static GB_AINLINE void gb_vgelu(gb_vd z, gb_vd *a, gb_vd *d) {
    typedef uint64_t gb_vu __attribute__((vector_size(GB_VL * 8)));
    const gb_vd zero = {0};
    const gb_vi pos = z > 0.0;
    const gb_vd w = gb_vabs(z);
    const gb_vi far = ~(w <= GB_GELU_WMAX); /* beyond the table, inf or NaN */
    const gb_vd wc = gb_blend(far, zero + GB_GELU_WMAX, w);
    /* the piece: exponent (2..5) and two leading mantissa bits of wc + 4; 48 (wc = 44) -> 13 */
    const gb_vd u = wc + 4.0;
    gb_vu ub;
    memcpy(&ub, &u, sizeof ub);
    gb_vi idx = (gb_vi)(ub >> 50) - ((1023 + 2) << 2);
    const gb_vi top = idx > 13;
    idx = (idx & ~top) | (top & 13);
    /* F(wc): c0 + (c0_lo + dx (c1 + dx (c2 + dx R))), R = c3 + ... + c15 dx^12 by Estrin's scheme */
    const gb_vd dx = wc - gb_gelu_row(GB_GELU_DEG + 2, idx);
    const gb_vd dx2 = dx * dx, dx4 = dx2 * dx2, dx8 = dx4 * dx4;
    const gb_vd t3 = gb_gelu_row(3, idx) + dx * gb_gelu_row(4, idx);
    const gb_vd t5 = gb_gelu_row(5, idx) + dx * gb_gelu_row(6, idx);
    const gb_vd t7 = gb_gelu_row(7, idx) + dx * gb_gelu_row(8, idx);
    const gb_vd t9 = gb_gelu_row(9, idx) + dx * gb_gelu_row(10, idx);
    const gb_vd t11 = gb_gelu_row(11, idx) + dx * gb_gelu_row(12, idx);
    const gb_vd t13 = gb_gelu_row(13, idx) + dx * gb_gelu_row(14, idx);
    const gb_vd u11 = t11 + dx2 * t13;
    const gb_vd R = ((t3 + dx2 * t5) + dx4 * (t7 + dx2 * t9)) + dx8 * (u11 + dx4 * gb_gelu_row(15, idx));
    const gb_vd S = gb_gelu_row(1, idx) + dx * (gb_gelu_row(2, idx) + dx * R);
    const gb_vd F = gb_gelu_row(0, idx) + (gb_gelu_row(GB_GELU_DEG + 1, idx) + dx * S);
    /* E = exp(-wc^2/2) = (1 + q) 2^k: -wc^2/2 = hi + lo, hi = -wh^2/2 exact */
    gb_vi wb;
    memcpy(&wb, &wc, sizeof wb);
    wb &= ~((gb_vi){0} + ((1 << 27) - 1));
    gb_vd wh;
    memcpy(&wh, &wb, sizeof wh);
    const gb_vd hi = -0.5 * (wh * wh), lo = -0.5 * ((wc - wh) * (wc + wh));
    const gb_vd shift = zero + 0x1.8p52;
    const gb_vd kf = (hi * GB_INV_LN2 + shift) - shift;
    const gb_vd r = (hi - kf * GB_LN2_HI) + (lo - kf * GB_LN2_LO);
    const gb_vd q = gb_vexpm1_r(r); /* exp(r) - 1 */
    const gb_vi k = __builtin_convertvector(kf, gb_vi), k1 = k >> 1; /* k in [-1397, 0] */
    const gb_vd s1 = gb_blend(far, zero, gb_vpow2(k1)), s2 = gb_vpow2(k - k1);
    if (a) {
        const gb_vd g = ((F + F * q) * s1) * s2; /* E F */
        const gb_vd wf = w * F;
        gb_vd an = ((wf + wf * q) * s1) * s2; /* |z| E F (>= +0), z's sign below (-0 stays -0) */
        gb_vi ab, zb;
        memcpy(&ab, &an, sizeof ab);
        memcpy(&zb, &z, sizeof zb);
        ab |= zb & ((gb_vi){0} + INT64_MIN);
        memcpy(&an, &ab, sizeof an);
        *a = gb_blend(pos, z * (1.0 - g), an);
    }
    if (d) {
        const gb_vd f = F - w * GB_INV_SQRT_2PI;
        const gb_vd h = ((f + f * q) * s1) * s2; /* E (F - w c) */
        *d = gb_blend(pos, 1.0 - h, h);
    }
}

/* phi(z) into *a and phi'(z) into *d, GB_VL lanes (either pointer may be NULL; both known at
 * compile time where it is inlined, act too where the caller is specialised) */
static GB_AINLINE void gb_vact(gb_vd z, int act, double p, gb_vd *a, gb_vd *d) {
    const gb_vd zero = {0}, one = zero + 1.0;
    const gb_vi pos = z > 0.0, nan = z != z;
    const gb_vd zn = gb_blend(pos, zero, z); /* np.minimum(z, 0), NaN kept */
    gb_vd e, q;
    switch (act) {
    case GB_IDENTITY:
        if (a) *a = z;
        if (d) *d = one;
        return;
    case GB_RELU:
        if (a) *a = gb_blend(pos | nan, z, zero);
        if (d) *d = gb_blend(pos, one, zero);
        return;
    case GB_LEAKY_RELU:
    case GB_PRELU:
        if (a) *a = gb_blend(pos, z, p * z);
        if (d) *d = gb_blend(pos, one, zero + p);
        return;
    case GB_SIGMOID:
    case GB_SWISH: {
        e = gb_vexp(-gb_vabs(z));
        q = 1.0 + e;
        const gb_vi nonneg = z >= 0.0;
        const gb_vd s = gb_blend(nonneg, 1.0 / q, e / q); /* sigmoid(z) */
        if (act == GB_SIGMOID) {
            if (a) *a = s;
            if (d) *d = e / (q * q);
        } else {
            if (a) *a = z * s;
            if (d) *d = s * (1.0 + z * gb_blend(nonneg, e / q, 1.0 / q)); /* s(z)(1 + z s(-z)) */
        }
        return;
    }
    case GB_TANH: {
        gb_vd m;
        gb_vexp2(-2.0 * gb_vabs(z), &e, a ? &m : NULL);
        if (a && d) { /* both (the forward: phi and its saturation count): one division */
            const gb_vd r = 1.0 / (1.0 + e);
            *a = gb_vtanh_r(z, m, r);
            *d = (4.0 * e) * (r * r);
            return;
        }
        if (a) *a = gb_vtanh_m(z, m);
        if (d) *d = 4.0 * e / ((1.0 + e) * (1.0 + e));
        return;
    }
    case GB_ELU:
    case GB_SELU: {
        const double c = act == GB_ELU ? p : GB_SELU_ALPHA, l = act == GB_ELU ? 1.0 : GB_SELU_LAMBDA;
        gb_vd m;
        gb_vexp2(zn, d ? &e : NULL, a ? &m : NULL);
        if (a) {
            const gb_vd v = gb_blend(pos, z, c * m);
            *a = act == GB_ELU ? v : l * v;
        }
        if (d) {
            const gb_vd v = gb_blend(pos, one, c * e);
            *d = act == GB_ELU ? v : l * v;
        }
        return;
    }
    case GB_GELU:
        gb_vgelu(z, a, d);
        return;
    default: /* anything else: the scalar functions, lane by lane */
        if (a) *a = zero;
        if (d) *d = zero;
        for (int i = 0; i < GB_VL; i++) {
            if (a) (*a)[i] = gb_phi_f64(z[i], act, p);
            if (d) (*d)[i] = gb_dphi_f64(z[i], act, p);
        }
    }
}

/* every lane x (zero + x would turn -0 into +0) */
static GB_AINLINE gb_vd gb_splat(double x) {
    gb_vd v;
    for (int i = 0; i < GB_VL; i++) v[i] = x;
    return v;
}

/* ((x q0) q1) q2: ldexp(x, e) with gb_scaled_factors' q */
static GB_AINLINE gb_vd gb_vldexp(gb_vd x, const double q[3]) { return ((x * q[0]) * q[1]) * q[2]; }

/* phi_scaled and dphi_scaled of GB_VL mantissas u where 1000 < |f| <= 2200 (GB_VM_LDEXP), the
 * bits of gb_phi_scaled_f64 / gb_dphi_scaled_f64: z = ldexp(u, f) and phi(z) 2^-f = ldexp(phi(z),
 * -f) by the three products of gb_scaled_factors, lanes below TINY by their linear term,
 * overflowing ones by the limit form with the scalar's ldexp(k, -f), the rest only beyond
 * GB_SATURATED, where phi and phi' are their limits in gb_vact and the scalar functions alike
 * (tanh +-1 and 0: exp(-2|z|) is 0; elu, selu z or -alpha; swish and gelu z or -0, phi' 1 or 0,
 * the signs of zero alike once gelu' has + 0): 0 (the scalar functions) for GB_VL lanes of which
 * one is none of these. Not inlined: layers in this regime are few, and the rows' hot loops
 * (GB_VM_PLAIN, GB_VM_MUL) ran a few % slower with it inlined beside them. */
#define GB_SATURATED 1024.0
static __attribute__((noinline)) int gb_vact_ldexp(gb_vd u, const gb_scaled *s, gb_vd *a, gb_vd *d) {
    const gb_vd zero = {0};
    if (gb_any(~(gb_vabs(u) <= DBL_MAX))) return 0;
    const gb_vd z = gb_vldexp(u, s->zq), az = gb_vabs(z);
    const gb_vi tiny = az < s->tiny, over = az > DBL_MAX;
    if (gb_any(~(tiny | over) & (az < GB_SATURATED))) return 0;
    const gb_vi pos = u > 0.0;
    const gb_vd c0 = gb_blend(pos, zero + s->c0p, zero + s->c0m);
    if (!gb_any(~tiny)) { /* every lane in its linear form (a vanished signal): no polynomial */
        if (a) *a = c0 * u;
        *d = c0;
        return 1;
    }
    const gb_vd ci = gb_blend(pos, zero + s->cip, zero + s->cim);
    gb_vd pa = zero, pd = zero;
    gb_vact(gb_blend(tiny | over, zero, z), s->act, s->p, a ? &pa : NULL, &pd);
    if (a) {
        const gb_vd lim = ci * u + gb_blend(pos, gb_splat(s->lkp), gb_splat(s->lkm)); /* -0 kept */
        const gb_vi big = over | (gb_vabs(pa) > DBL_MAX); /* SELU's lambda z past the max */
        *a = gb_blend(tiny, c0 * u, gb_blend(big, lim, gb_vldexp(pa, s->rq)));
    }
    if (s->act == GB_GELU) pd = pd + 0.0; /* gelu' +0 where gb_vgelu has -0 (the far lower tail) */
    *d = gb_blend(tiny, c0, gb_blend(over, ci, pd));
    return 1;
}

/* GB_VM_MUL for finite u (the caller checks): z = u 2^f and 2^-f are plain products (= ldexp),
 * with the tiny and overflowing lanes in their linear forms */
static GB_AINLINE void gb_vact_mul(gb_vd u, const gb_scaled *s, const int act, gb_vd *a, gb_vd *d) {
    const gb_vd zero = {0};
    const gb_vd z = u * s->pf;
    const gb_vi tiny = gb_vabs(z) < s->tiny, over = gb_vabs(z) > DBL_MAX;
    gb_vd pa = zero, pd = zero;
    if (!gb_any(tiny | over)) { /* the usual vector: the blends below would pick these */
        gb_vact(z, act, s->p, a ? &pa : NULL, d ? &pd : NULL);
        /* SELU: lambda z overflows for z up to 1.05x below the max (the limit form below) */
        if (act != GB_SELU || !a || !gb_any(gb_vabs(pa) > DBL_MAX)) {
            if (a) *a = pa * s->pmf;
            if (d) *d = pd;
            return;
        }
    }
    const gb_vi pos = u > 0.0;
    const gb_vd c0 = gb_blend(pos, zero + s->c0p, zero + s->c0m);
    if (!gb_any(~tiny)) { /* a vanished signal (zero-bias stacks below the edge of chaos): every
                           * lane in its linear form, no polynomial (GELU 2.3x, swish 1.5x a layer) */
        if (a) *a = c0 * u;
        if (d) *d = c0;
        return;
    }
    const gb_vd ci = gb_blend(pos, zero + s->cip, zero + s->cim);
    const gb_vd lim = ci * u + gb_blend(pos, zero + s->kp, zero + s->km) * s->pmf;
    gb_vact(gb_blend(tiny | over, zero, z), act, s->p, a ? &pa : NULL, d ? &pd : NULL);
    if (a) *a = gb_blend(tiny, c0 * u, gb_blend(over | (gb_vabs(pa) > DBL_MAX), lim, pa * s->pmf));
    if (d) *d = gb_blend(tiny, c0, gb_blend(over, ci, pd));
}

/* every lane of u finite */
static GB_AINLINE int gb_vfinite(gb_vd u) { return !gb_any(~(gb_vabs(u) <= DBL_MAX)); }

/* phi_scaled and dphi_scaled of GB_VL mantissas u (gb_scaled's vector modes): the bits of the
 * scalar functions but for phi(z) itself (from gb_vact) in GB_VM_MUL; 0 when these lanes need
 * the scalar functions (a non-finite u, or see gb_vact_ldexp). act is s->act (a constant in the
 * specialised rows of stack_impl.h); d is never NULL. */
static GB_AINLINE int gb_vact_scaled(gb_vd u, const gb_scaled *s, const int act, gb_vd *a, gb_vd *d) {
    if (s->vmode == GB_VM_PLAIN) {
        gb_vact(u, act, s->p, a, d);
        return 1;
    }
    if (s->vmode == GB_VM_LDEXP) return gb_vact_ldexp(u, s, a, d);
    if (!gb_vfinite(u)) return 0;
    if (s->vmode == GB_VM_MUL) {
        gb_vact_mul(u, s, act, a, d);
        return 1;
    }
    const gb_vd zero = {0};
    const gb_vi pos = u > 0.0;
    const gb_vd c0 = gb_blend(pos, zero + s->c0p, zero + s->c0m);
    const gb_vd ci = gb_blend(pos, zero + s->cip, zero + s->cim);
    gb_vd va = zero, vd = zero;
    if (s->vmode == GB_VM_TINY) { /* every finite u 2^f is below TINY */
        va = c0 * u;
        vd = c0;
    } else { /* GB_VM_OVER: every finite non-zero u 2^f overflows */
        const gb_vi z0 = u == 0.0;
        va = gb_blend(z0, c0 * u, ci * u + gb_blend(pos, zero + s->kp, zero + s->km) * s->pmf);
        vd = gb_blend(z0, c0, ci);
    }
    if (a) *a = va;
    if (d) *d = vd;
    return 1;
}
#endif

#endif
