"""Mean field's fixed point where the length map's q = 0 repels: zero-bias ELU, SELU and tanh just
above their critical gain have a small q* > 0, which the rule "below q = 1e-3 and still falling"
read as 0 (ELU at sigma_w = 1.01: q* = 0, chi_1 = 1.0201, "chaotic", a depth scale of 50 layers,
where q* = 6.4e-4, chi_1 = 1.00008 and the depth scale is ~12,800). Against the length map
iterated with scipy's quadrature (an independent implementation of the Gaussian expectations)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, optimize

from gradbench import theory

SELU_L, SELU_A = 1.0507009873554805, 1.6732632423543772
PHI = {
    "tanh": (np.tanh, lambda z: 1 / np.cosh(z) ** 2),
    "elu": (lambda z: z if z > 0 else math.expm1(z), lambda z: 1.0 if z > 0 else math.exp(z)),
    "selu": (lambda z: SELU_L * (z if z > 0 else SELU_A * math.expm1(z)),
             lambda z: SELU_L * (1.0 if z > 0 else SELU_A * math.exp(z))),
}


def _gauss(f, q):
    """E[f(z)], z ~ N(0, q), by quadrature on each side of 0 (the kink of ELU and SELU)."""
    s = math.sqrt(q)
    dens = lambda u: math.exp(-u * u / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    return sum(integrate.quad(lambda u: f(s * u) * dens(u), a, b, epsabs=0, epsrel=1e-13, limit=200)[0]
               for a, b in ((-np.inf, 0), (0, np.inf)))


def _q_star(activation, sigma_w):
    """The positive root of sigma_w^2 E[phi(z)^2] / q = 1 (q = 0 repels here: the ratio's q -> 0
    limit is above 1), bracketed between 1e-12 and 1."""
    phi = PHI[activation][0]
    g = lambda lq: math.log(sigma_w ** 2 * _gauss(lambda z: phi(z) ** 2, math.exp(lq))) - lq  # noqa: E731
    return math.exp(optimize.brentq(g, math.log(1e-12), 0.0, xtol=1e-14))


@pytest.mark.parametrize("activation, sigma_w", [("elu", 1.01), ("elu", 1.005), ("selu", 0.7), ("selu", 0.695),
                                                 ("tanh", 1.0005)])
def test_a_small_positive_fixed_point_is_found_where_q_zero_repels(activation, sigma_w):
    want = _q_star(activation, sigma_w)
    chi1 = sigma_w ** 2 * _gauss(lambda z: PHI[activation][1](z) ** 2, want)
    m = theory.mean_field(activation, sigma_w=sigma_w)
    assert 0 < want < 1e-3
    # the iteration stopped at a step below 1e-13, ~1e-7 short of q* here; a map still moving after 200
    # steps now has its q* found by its root: 5e-13 to 6e-12 of scipy's
    assert m.q_star == pytest.approx(want, rel=1e-10)
    assert m.chi1 == pytest.approx(chi1, rel=1e-8)
    assert abs(chi1 - 1) < 2e-4 and m.phase.startswith("critical")


@pytest.mark.parametrize("activation, lo, hi", [("elu", 0.995, 1.03), ("selu", 0.68, 0.72), ("tanh", 0.999, 1.003)])
def test_chi1_rises_with_the_gain_through_the_edge_of_chaos(activation, lo, hi):
    """The phase ran backwards: ELU read "chaotic" from 1.001 to 1.011, then "critical" from 1.013."""
    gains = np.linspace(lo, hi, 21)
    chi = [theory.mean_field(activation, sigma_w=float(w)).chi1 for w in gains]
    assert all(b >= a - 1e-12 for a, b in zip(chi, chi[1:])), chi
    # q* = 0 exactly where the ratio's limit sigma_w^2 (phi'(0-)^2 + phi'(0+)^2) / 2 is at most 1
    slope0 = {"tanh": 1.0, "elu": 1.0, "selu": SELU_L ** 2 * (1 + SELU_A ** 2) / 2}[activation]
    for w in gains:
        assert (theory.mean_field(activation, sigma_w=float(w)).q_star == 0) == (w * w * slope0 <= 1), w


def _chi1_quad(activation, sigma_w, sigma_b):
    """chi_1 at the fixed point reached from q0 = sigma_w^2 + sigma_b^2, the length map iterated
    with quadrature (GELU and swish, smooth: one quad over the line)."""
    from scipy.special import erf, expit

    phi, dphi = {
        "gelu": (lambda z: 0.5 * z * (1 + erf(z / math.sqrt(2))),
                 lambda z: 0.5 * (1 + erf(z / math.sqrt(2))) + z * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)),
        "swish": (lambda z: z * expit(z), lambda z: expit(z) * (1 + z * (1 - expit(z)))),
    }[activation]
    q = sigma_w ** 2 + sigma_b ** 2
    for _ in range(20_000):
        new = sigma_w ** 2 * _gauss(lambda z: phi(z) ** 2, q) + sigma_b ** 2
        if abs(new - q) < 1e-13 * q:
            break
        q = new
    return sigma_w ** 2 * _gauss(lambda z: dphi(z) ** 2, q)


@pytest.mark.parametrize("activation, sigma_b", [("gelu", 0.5), ("swish", 1.0)])
def test_the_critical_line_crosses_below_sqrt2_where_chi1_only_touches_1_there(activation, sigma_b):
    """critical_sigma_w returned sqrt 2, where q* -> inf and chi_1 -> 1 from above without crossing
    (its NaN read as "on the line"), while `theory --activation gelu --sigma-w 1.405 --sigma-b 0.5`
    printed chi_1 = 1.00918, chaotic, beside "critical sigma_w 1.41421". The crossing: chi_1 by
    quadrature below and above the root."""
    root = theory.critical_sigma_w(activation, sigma_b)
    assert root < math.sqrt(2) - 5e-3
    assert _chi1_quad(activation, root * (1 - 1e-3), sigma_b) < 1 < _chi1_quad(activation, root * (1 + 1e-3), sigma_b)


@pytest.mark.parametrize("activation, edge", [
    ("tanh", "1"), ("elu", "1"),
    # sqrt(2 / (lambda^2 + (lambda alpha)^2)): SELU's slopes either side of 0
    ("selu", "0.690486073634184817713072285211")])
def test_the_critical_sigma_w_without_bias_is_where_zero_stops_attracting(activation, edge):
    """Without bias the critical line is where q = 0 stops attracting the length map: sigma_w^2
    (phi'(0-)^2 + phi'(0+)^2) / 2 = 1 (below it q* = 0 and chi_1 is that ratio; above it chi_1 > 1).
    Brent's method found it to 4e-11 (tanh: 1.0000000000367) and 3e-9 (SELU), probing a region
    where each chi_1 took ~0.5 s (10 s for tanh). Checked against the closed form in mpmath, and
    chi_1 by quadrature on either side."""
    import mpmath as mp

    mp.mp.dps = 30
    if activation == "selu":  # the constant above is the closed form's with the exact lambda and alpha
        lam, alpha = mp.mpf("1.0507009873554804934193349852946"), mp.mpf("1.6732632423543772848170429916717")
        assert abs(mp.sqrt(2 / (lam ** 2 * (1 + alpha ** 2))) - mp.mpf(edge)) < mp.mpf("1e-29")
    want = float(mp.mpf(edge))
    got = theory.critical_sigma_w(activation, 0.0)
    assert abs(got - want) <= 2.3e-16 * want, (got, want)  # an ulp (float lambda, alpha)
    # a crossing: below, q* = 0 and chi_1 is the ratio at 0, below 1; above, chi_1 > 1 by quadrature at
    # the small positive q* (the ratio at 0 is then above 1: q = 0 repels)
    dphi = PHI[activation][1]
    below, above = got * (1 - 1e-6), got * (1 + 1e-3)
    assert below ** 2 * (dphi(-1e-300) ** 2 + dphi(1e-300) ** 2) / 2 < 1
    assert above ** 2 * _gauss(lambda z: dphi(z) ** 2, _q_star(activation, above)) > 1


def test_the_critical_sigma_w_at_a_small_bias_is_the_crossing_mpmath_finds():
    """tanh at sigma_b = 1e-3: near the line the length map approaches q* ~ 0.009 slowly, and the
    iteration's stopping rule (a step below 1e-13) stopped short of it: critical_sigma_w returned
    1.0090850405742, where chi_1 - 1 = +1.0e-11 by mpmath (the crossing is at 1.00908504027722),
    and took 0.37 s (4 s at sigma_b = 1e-8, ~3300 steps a point). Independent: q* and chi_1 by
    mpmath quadrature at 30 digits, chi_1 - 1 changing sign within 1e-11 of the returned value."""
    import mpmath as mp

    mp.mp.dps = 30
    sb = mp.mpf("1e-3")

    def expect(f, q):  # E[f(sqrt(q) z)^2], z ~ N(0, 1)
        s = mp.sqrt(q)
        return mp.quad(lambda z: f(s * z) ** 2 * mp.exp(-z * z / 2), [-mp.inf, -5, 0, 5, mp.inf]) / mp.sqrt(2 * mp.pi)

    def chi1_minus_1(sw):
        sw = mp.mpf(sw)
        q = mp.findroot(lambda q: sw ** 2 * expect(mp.tanh, q) + sb ** 2 - q, mp.mpf("0.00925"))
        return sw ** 2 * expect(lambda x: 1 / mp.cosh(x) ** 2, q) - 1  # phi' = sech^2

    got = theory.critical_sigma_w("tanh", 1e-3)
    assert chi1_minus_1(got * (1 - 1e-11)) < 0 < chi1_minus_1(got * (1 + 1e-11)), got


# A fixed point at a tiny q where the map's ratio is 1 - O(q) or 1 - O(sqrt q) (tanh at sigma_w = 1:
# q' = q - 2 q^2 + sigma_b^2 + ..., q* ~ sigma_b / sqrt 2; ELU at sigma_w = 1 and SELU at its critical
# gain: q' = q - c q^1.5 + sigma_b^2, q* = (sigma_b^2 / c)^(2/3)). Their references: mpmath at 40 to
# 80 digits, the map's root in q (tanh by quadrature, ELU and SELU in closed form), never fixed_point.
SELU_CRITICAL = 0.690486073634184817713072285211  # sqrt(2 / (lambda^2 (1 + alpha^2))): q = 0 marginal


def _mp_tanh_q_star(sigma_b):
    """q* of tanh at sigma_w = 1: the root of E[tanh(sqrt(q) z)^2] + sigma_b^2 - q, scaled by sigma_b^2
    (its terms cancel to O(q^2) = O(sigma_b^2)), by mpmath quadrature at 40 digits; and chi_1 there."""
    import mpmath as mp

    with mp.workdps(40):
        b = mp.mpf(sigma_b)

        def expect(f, q):  # E[f(sqrt(q) z)], z ~ N(0, 1)
            s = mp.sqrt(q)
            return mp.quad(lambda z: f(s * z) * mp.exp(-z * z / 2), [-mp.inf, -4, 0, 4, mp.inf]) / mp.sqrt(2 * mp.pi)

        # in x = q / (sigma_b / sqrt 2): near 1
        q0 = b / mp.sqrt(2)
        x = mp.findroot(lambda x: (expect(lambda u: mp.tanh(u) ** 2, x * q0) + b * b - x * q0) / (b * b), mp.mpf(1))
        q = x * q0
        return q, expect(lambda u: 1 / mp.cosh(u) ** 4, q)


@pytest.mark.parametrize("sigma_b", [1e-6, 1e-9, 1e-12])
def test_tanh_at_sigma_w_1_has_its_tiny_fixed_point_where_float64_resolves_it(sigma_b):
    """tanh at sigma_w = 1 with sigma_b = 1e-12 read NaN ("not resolved"), where q* = 7.07e-13 and the
    map's ratio falls by 4 q* = 2.8e-12 per unit of ln q through it (2.8e-15, ~13 ulps of 1, over 0.1 %
    of q* either side); the ratio was taken as ln q_{l+1} - ln q_l at |ln q| = 28, whose rounding (and
    a quadrature bias of 6.7e-15) hid that. At 1e-9 and 1e-6 q* was off by 2.0e-6 and 2.3e-9 (mostly
    that bias over 4 q*). Against mpmath; the reference itself against the series q* = q0 (1 + 17/12 q0),
    q0 = sigma_b / sqrt 2, good to O(q0^2)."""
    import mpmath as mp

    want, chi = _mp_tanh_q_star(sigma_b)
    q0 = sigma_b / math.sqrt(2)
    assert abs(float(want) / (q0 * (1 + 17 / 12 * q0)) - 1) < 10 * q0 * q0 + 1e-15
    # float64 places q* to ~1e-16 of the ratio over its slope 4 q*: 4e-5 at 1e-12, 4e-11 at 1e-6
    rel = 1e-15 / (4 * q0)
    assert theory.fixed_point("tanh", 1.0, sigma_b) == pytest.approx(float(want), rel=rel, abs=0)
    assert theory.mean_field("tanh", 1.0, sigma_b).q_star == pytest.approx(float(want), rel=rel, abs=0)
    # chi_1 = 1 - 2 q* + ...: its distance from 1 to ~1e-16 (the error of q* times 2 q*)
    got = theory.chi1("tanh", 1.0, sigma_b)
    assert abs((got - 1) - float(chi - 1)) < 4e-16 + 4 * q0 * rel, (got, chi)
    assert mp.mpf(got) < 1


@pytest.mark.parametrize("activation, sigma_w", [("elu", 1.0), ("selu", SELU_CRITICAL)])
def test_elu_and_selu_at_their_critical_gain_have_their_tiny_fixed_point(activation, sigma_w):
    """ELU at sigma_w = 1 and SELU at sqrt(2 / (lambda^2 (1 + alpha^2))) with sigma_b = 1e-15 read NaN:
    there q' = q - c q^1.5 + sigma_b^2 (the kink at 0), q* ~ 1e-20 and the ratio falls by 1.5 c sqrt(q*)
    ~ 1.3e-10 per unit of ln q through it, far above rounding. Against mpmath's closed form of the
    ELU map, E[phi(s z)^2] = lambda^2 (s^2 / 2 + alpha^2 (1/2 - erfcx(s / sqrt 2) + erfcx(sqrt 2 s) / 2)),
    at 80 digits (its terms cancel to q^1.5)."""
    import mpmath as mp

    with mp.workdps(80):
        if activation == "elu":
            lam, alpha = mp.mpf(1), mp.mpf(1)
        else:
            lam, alpha = mp.mpf(SELU_L), mp.mpf(SELU_A)  # the floats gradbench's SELU uses
        sw2, b2 = mp.mpf(sigma_w) ** 2, mp.mpf("1e-15") ** 2

        def step(q):
            s = mp.sqrt(q)
            neg = mp.mpf(1) / 2 - mp.erfc(s / mp.sqrt(2)) * mp.exp(q / 2) + mp.erfc(mp.sqrt(2) * s) * mp.exp(2 * q) / 2
            return sw2 * lam ** 2 * (q / 2 + alpha ** 2 * neg) + b2

        # q' - q ~ -c q^1.5 + sigma_b^2 (the ratio's q -> 0 limit is 1 to the rounding of the float
        # sigma_w): the root near (sigma_b^2 / c)^(2/3), with c = sigma_w^2 lambda^2 alpha^2 E[|z|^3] / 2
        guess = (b2 / (sw2 * lam ** 2 * alpha ** 2 * mp.sqrt(2 / mp.pi))) ** (mp.mpf(2) / 3)
        x = mp.findroot(lambda x: (step(x * guess) - x * guess) / b2, mp.mpf(1))
        want = float(x * guess)
    assert 1e-21 < want < 1e-19
    # the ratio's slope 1.5 c sqrt(q*) ~ 1e-10 places q* to ~1e-5
    assert theory.fixed_point(activation, sigma_w, 1e-15) == pytest.approx(want, rel=1e-4, abs=0)


def test_a_fixed_point_where_the_ratio_is_1_to_rounding_stays_nan():
    """Below float64's resolution NaN stays: tanh at sigma_w = 1 with sigma_b = 1e-20 has q* ~ 7.1e-21,
    where the ratio moves by 4 q* 1e-3 = 2.8e-23 over 0.1 % of q* (the series of the tests above),
    far below an ulp of 1; ELU at sigma_w = 1 with sigma_b = 1e-50, q* ~ 1e-67: 1.5 sqrt(2 / pi) sqrt(q*)
    1e-3 ~ 4e-37. Both below a thousandth of an ulp of 1."""
    ulp = np.finfo(np.float64).eps
    assert 4 * (1e-20 / math.sqrt(2)) * 1e-3 < 1e-3 * ulp and 1.5 * 0.8 * math.sqrt(1.2e-67) * 1e-3 < 1e-3 * ulp
    for activation, sigma_b in (("tanh", 1e-20), ("elu", 1e-50)):
        assert math.isnan(theory.fixed_point(activation, 1.0, sigma_b)), activation
        assert theory.mean_field(activation, 1.0, sigma_b).phase == "unresolved"
