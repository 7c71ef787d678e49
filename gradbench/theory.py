"""Theory to check simulations against: mean field and Lyapunov exponents (docs/design.md section 7).

Mean field (Poole et al. 2016, Schoenholz et al. 2017), for W ~ N(0, sigma_w^2 / N) and
b ~ N(0, sigma_b^2) at large width N::

    q_{l+1} = sigma_w^2 E_z[phi(sqrt(q_l) z)^2] + sigma_b^2        (the length map)
    chi_1   = sigma_w^2 E_z[phi'(sqrt(q*) z)^2]                     (at its fixed point q*)

chi_1 is the expected factor by which ||dL/dh||^2 changes per layer: chi_1 < 1 vanishes
(ordered phase), > 1 explodes (chaotic), = 1 is the edge of chaos. The gradient norm then
changes by ``0.5 * log10(chi_1)`` decades per layer, over a depth scale ``-1 / ln(chi_1)``.
Gaussian expectations use quadrature split at z = 0 and at the activation's transition
(see ``_log_expect``), in logarithms so that any sigma_w holds.

The iteration starts where a stack does: at q0, the variance of its first pre-activation,
``sigma_w^2 E[x^2] + sigma_b^2`` (:func:`first_q`; ``sigma_w^2 + sigma_b^2`` for the standard
normal input that ``gaussian_input``, the CLI and sweeps feed). Most maps have one attractor and
q0 does not matter, but GELU and swish with zero bias for sqrt(2) < sigma_w < 2 (and a small
sigma_b) have two: q -> 0 (a small q* with a bias; chi_1 < 1) and q -> inf (chi_1 > 1). Which
one a stack reaches, and so its phase, depends on whether q0 lies below or above the unstable
fixed point between them (:func:`bistability`).

Linear Gaussian stacks: the growth rate of log ||g|| per layer is the top Lyapunov exponent of
the random matrix product (Newman 1986)::

    lambda_1 = (ln(2 sigma^2 / N) + digamma(N / 2)) / 2

and the whole spectrum of an actual stack's Jacobians comes from the QR (Benettin) method.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from gradbench import abi, reference, spec
from gradbench.activations import dphi, phi
from gradbench.spec import Stack

_NODES = 201  # Gauss-Legendre points per panel
_Z_MAX = 12.0  # the normal tails beyond |z| = 12 weigh < 1e-32
# Every activation here reaches its asymptotes (phi'^2 within 1e-34 of its limit) by |x| = 40:
# the transition of phi(s z) in z is 40 / s wide and gets a panel of its own.
_TRANSITION = 40.0
_BOUNDED = frozenset({"sigmoid", "tanh"})  # q* <= sigma_w^2 + sigma_b^2: the length map cannot diverge
# |phi'| of the bounded activations is at least half its largest value for |u| <= acosh(sqrt 2)
# (tanh: sech^2 u >= 1/2) and twice that (sigmoid: phi' = sech^2(u / 2) / 4): a unit is "open" there
_HALF_OPEN = {"tanh": math.acosh(math.sqrt(2.0)), "sigmoid": 2.0 * math.acosh(math.sqrt(2.0))}
# past this q (for ELU with alpha > 1, alpha^2 times it: _ln_elu_scale), an unbounded activation's
# length map is in its linear regime
_LN_Q_LARGE = math.log(1e12)
# The length map's ratio q_{l+1} / q_l in its limits q -> 0 and q -> inf is read at these q (the
# limits of phi(s z) / s in z are reached there; past a large sigma_b or ELU alpha: _ln_q_huge).
_LN_Q_TINY, _LN_Q_HUGE = math.log(1e-200), math.log(1e200)
# Past |x| = _X_TAIL every activation here is its asymptote to double precision, a line (c x) or a
# constant (_tail): where s z passes it (s > ~1e298) phi(s z) / s is read from the asymptote instead
# of from phi at s z, which overflows (ELU, SELU, GELU and swish read inf or NaN for s > 1e307).
_X_TAIL = 1e300
# Values of phi or phi' whose squares, times the quadrature weights, stay normal floats when the
# largest of them lies in this range; beyond it they are summed relative to the largest (_log_panel).
_SQUARE_RANGE = (1e-150, 1e150)


@functools.lru_cache(maxsize=1)
def _legendre():
    return np.polynomial.legendre.leggauss(_NODES)


def _rho(z):
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _log_expect(g, log_s: float, relative: bool = False) -> float:
    """ln E_z[g(s z)^2], z ~ N(0, 1), for the scale s = exp(log_s) (0 <= s <= inf); with
    ``relative`` ln E_z[(g(s z) / s)^2], what the length map's ratio q_{l+1} / q_l needs
    (:func:`_log_ratio`).

    Gauss-Hermite converges slowly for the kinks of the ReLU family, ELU and SELU at z = 0
    (201 Hermite points give chi_1 = 0.91 instead of 1 for ReLU at sigma_w^2 = 2), so every panel
    starts at the kink: Gauss-Legendre with the normal density as weight, symmetric about 0.
    For s <= 40 / 12 one panel, [0, 12]. For larger s the activation's transition lies in
    |z| < 40 / s, which the nodes of one panel would miss once s passes ~10^3 (they put tanh'^2
    at sigma_w = 10^4 four decades low): it gets its own panel, integrated in x = s z over
    [0, 40] with the factor 1/s carried as a logarithm, and [40 / s, 12] a second. So the result
    holds for any s up to and past the largest float (bounded activations at sigma_w ~ 1e300).
    Each panel's squares are summed by :func:`_log_panel`, which keeps them in the float range.

    ``relative`` divides the values by s before they are squared, so the result carries no
    2 ln s: near a fixed point at a tiny (or huge) q the ratio differs from 1 by far less than the
    rounding of ln q (tanh at sigma_w = 1, sigma_b = 1e-12: q* = 7.07e-13, the ratio moves by
    2.8e-12 per unit of ln q, an ulp of |ln q| = 28 is 3.6e-15). It is normalised by the
    quadrature's own E[z^2] (the mass of the weight z^2 rho) rather than its E[1]: the two differ by
    6.7e-15 with these nodes, and only the first gives the limit s -> 0 of a phi with phi(0) = 0,
    (phi'(0-)^2 + phi'(0+)^2) / 2 (:func:`_ln_ratio_at_zero`), to rounding (s -> inf alike for the
    activations that tend to linear), where a bias of 6.7e-15 moved tanh's q* at sigma_b = 1e-9 by
    2e-6. Near the ends of the floats (s < 1e-299 or s > 1e304, where s z or g(s z) / s leave
    them) it is the plain form less 2 ln s. Where s z passes _X_TAIL the second panel reads g from
    its asymptotes there (:func:`_tail`): where g tends to a line on a side (ELU, SELU, GELU, swish
    to +inf) it sums g(s z) / s and adds 2 ln s (g(s z) itself overflows), else g(X) stands for
    g(s z) (GELU' and swish' read NaN at inf).
    """
    if relative and not -690.0 < log_s < 700.0:
        return _log_expect(g, log_s) - 2 * log_s
    x, w = _legendre()
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        if log_s <= math.log(_TRANSITION / _Z_MAX):
            s = math.exp(log_s)
            z = 0.5 * _Z_MAX * (x + 1.0)
            wz = 0.5 * _Z_MAX * w * _rho(z)
            if relative:
                return float(_log_panel(wz, g(s * z) / s, g(-s * z) / s) - np.log(2 * np.sum(wz * z * z)))
            return float(_log_panel(wz, g(s * z), g(-s * z)) - np.log(2 * np.sum(wz)))
        inv_s = math.exp(-log_s)
        s = math.exp(log_s) if log_s < 709.0 else math.inf
        xs = 0.5 * _TRANSITION * (x + 1.0)  # panel 1, in x = s z: the transition
        wx = 0.5 * _TRANSITION * w * _rho(xs * inv_s)
        a = _TRANSITION * inv_s  # panel 2, in z: the asymptotes
        z = a + 0.5 * (_Z_MAX - a) * (x + 1.0)
        wz = 0.5 * (_Z_MAX - a) * w * _rho(z)
        if relative:  # panel 1's dz = dx / s and its values / s: 3 ln s; panel 2's values / s
            value = np.logaddexp(_log_panel(wx, g(xs), g(-xs)) - 3 * log_s, _log_panel(wz, g(s * z) / s, g(-s * z) / s))
            norm = np.logaddexp(np.log(2 * np.sum(wx * xs * xs)) - 3 * log_s, np.log(2 * np.sum(wz * z * z)))
            return float(value - norm)
        tails = (_tail(g, 1.0), _tail(g, -1.0)) if s * _Z_MAX > _X_TAIL else (None, None)
        if None not in tails and "line" in (tails[0][0], tails[1][0]):  # phi(s z) / s, then 2 ln s
            panel2 = _log_panel(wz, *(_over_s(g, sign, s, inv_s, z, tail) for sign, tail in zip((1.0, -1.0), tails)))
            value = np.logaddexp(_log_panel(wx, g(xs), g(-xs)) - log_s, panel2 + 2 * log_s)
        else:
            if None not in tails:  # both asymptotes flat: g(s z) is g(X) past X (GELU' at inf reads NaN)
                x = np.minimum(s * z, _X_TAIL)
                gz = (g(x), g(-x))
            elif math.isfinite(s):
                gz = (g(s * z), g(-s * z))
            else:
                gz = (g(np.full_like(z, np.inf)), g(np.full_like(z, -np.inf)))
            value = np.logaddexp(_log_panel(wx, g(xs), g(-xs)) - log_s, _log_panel(wz, *gz))
        norm = np.logaddexp(np.log(2 * np.sum(wx)) - log_s, np.log(2 * np.sum(wz)))
        return float(value - norm)


def _tail(g, sign: float):
    """g's asymptote towards sign * inf, read at _X_TAIL: ("flat", g(X)) where g(2X) = g(X) (tanh,
    sigmoid; ELU and SELU to -inf; 0 for GELU and swish there), ("line", g(X) / X) where
    g(2X) = 2 g(X) (to +inf: ELU, SELU, GELU, swish; leaky ReLU both ways), else None."""
    a, b = (float(g(np.array([k * sign * _X_TAIL]))[0]) for k in (1.0, 2.0))
    if b == a:
        return "flat", a
    return ("line", a / _X_TAIL) if b == 2 * a else None


def _over_s(g, sign: float, s: float, inv_s: float, z, tail):
    """g(sign s z) / s at the nodes z > 0: from g where s z <= _X_TAIL, from the asymptote past it
    (z times the line's g(sign X) / X, or the constant times 1 / s); s may be inf."""
    x = s * z
    near = x <= _X_TAIL
    far = z * tail[1] if tail[0] == "line" else np.full_like(z, tail[1] * inv_s)
    return np.where(near, g(sign * np.where(near, x, 0.0)) * inv_s, far)


def _log_panel(w, g_pos, g_neg):
    """ln sum_i w_i (g_pos_i^2 + g_neg_i^2): one panel of :func:`_log_expect`, from the values of g
    at its nodes on either side of 0. Where their largest magnitude m lies outside
    :data:`_SQUARE_RANGE` their squares would leave the float range (a leaky slope or ELU alpha of
    1e160 squares to inf, as does s z past 1e154): they are taken relative to m, and 2 ln m added.
    Relative to m, the values that underflow are below 1e-154 m and weigh nothing in the sum."""
    m = float(np.max(np.abs(np.concatenate([g_pos, g_neg]))))
    if 0 < m < math.inf and not _SQUARE_RANGE[0] <= m <= _SQUARE_RANGE[1]:
        return np.log(np.sum(w * ((g_pos / m) ** 2 + (g_neg / m) ** 2))) + 2 * math.log(m)
    return np.log(np.sum(w * (g_pos ** 2 + g_neg ** 2)))


def _phi(activation: str, param: float):
    code = abi.ACT_CODE[activation]
    return (lambda z: phi(z, code, param)), (lambda z: dphi(z, code, param))


def _param(activation: str, param: float | None) -> float:
    """The activation's parameter with its default filled in (0 where it takes none)."""
    return float(spec.ACT_PARAM_DEFAULT.get(activation, 0.0) if param is None else param)


def _real(name: str, value, *, positive: bool = False, nonneg: bool = False) -> float:
    """``value`` as a Python float once it is a finite real number (not a bool), > 0 with
    ``positive``, >= 0 with ``nonneg``: a TypeError or ValueError naming ``name`` otherwise."""
    spec._check_real(name, value, positive=positive, nonneg=nonneg)
    return float(value)


def _inputs(activation: str, sigma_w, sigma_b, param) -> tuple[float, float, float]:
    """(sigma_w, sigma_b, param) as floats, the param's default filled in, once they are valid as a
    float64 :class:`Stack` takes them (param: :func:`gradbench.spec.check_activation_param` and
    :data:`gradbench.spec.SCALE_RANGE`), except that any finite sigma_w > 0 and sigma_b >= 0 is
    valid: the maps run in logarithms (a negative sigma_w read as chi_1 = 0, "ordered")."""
    sigma_b, param = _activation_inputs(activation, sigma_b, param)
    return _real("sigma_w", sigma_w, positive=True), sigma_b, param


def _activation_inputs(activation: str, sigma_b, param) -> tuple[float, float]:
    """(sigma_b, param) of :func:`_inputs`, for the functions that take no sigma_w."""
    spec.check_choice("activation", activation, spec.ACTIVATIONS)
    sigma_b = _real("sigma_b", sigma_b, nonneg=True)
    spec.check_activation_param(activation, param)
    spec.check_param_range(param, "float64")
    return sigma_b, _param(activation, param)


def _log_q(name: str, q) -> float | None:
    """ln q of a variance given as ``q0`` or ``q`` (None stays None): a finite number >= 0
    (0: a zero input, as ``x`` of zeros gives)."""
    return None if q is None else _ln(_real(name, q, nonneg=True))


def _check_stack(stack) -> None:
    """A TypeError unless ``stack`` is a :class:`Stack`."""
    if not isinstance(stack, Stack):
        raise TypeError(f"stack must be a gradbench.Stack, got {type(stack).__name__}")


def _ln(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def _exp(t: float) -> float:
    """exp(t), inf past the largest float (instead of math.exp's OverflowError); NaN stays NaN."""
    return math.exp(t) if t < 709.78 or math.isnan(t) else math.inf


def _log_variance(t: float, activation: str, sigma_w: float, param: float) -> float:
    """ln(sigma_w^2 E[phi(sqrt(q) z)^2]) at t = ln q: the weights' part of the length map."""
    f, _ = _phi(activation, param)
    if activation in spec.HOMOGENEOUS:  # E[phi(s z)^2] = s^2 E[phi(z)^2], without overflowing s^2
        return 2 * _ln(sigma_w) + t + _log_expect(f, 0.0)
    return 2 * _ln(sigma_w) + _log_expect(f, 0.5 * t)


def _log_ratio(u: float, activation: str, sigma_w: float, sigma_b: float, param: float) -> float:
    """ln(q_{l+1} / q_l) at q_l = e^u: ln(sigma_w^2 E[(phi(s z) / s)^2] + sigma_b^2 / q_l), s = sqrt(q_l),
    without ln q_l taken from ln q_{l+1} (:func:`_log_expect`'s ``relative``). That difference of two
    logarithms of size |u| carries their rounding, ~|u| ulps of 1, which hid a ratio within ~1e-13 of 1
    (tanh at sigma_w = 1 with sigma_b = 1e-12, ELU at sigma_w = 1 with sigma_b = 1e-15: q* NaN)."""
    f, _ = _phi(activation, param)
    log_s = 0.0 if activation in spec.HOMOGENEOUS else 0.5 * u  # E[phi(s z)^2] / s^2 = E[phi(z)^2]
    return float(np.logaddexp(2 * _ln(sigma_w) + _log_expect(f, log_s, relative=True), 2 * _ln(sigma_b) - u))


def length_map(q: float, activation: str, sigma_w: float, sigma_b: float = 0.0, param: float | None = None) -> float:
    """One step of the length map q -> sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2 (``inf`` past the
    largest float)."""
    sigma_w, sigma_b, param = _inputs(activation, sigma_w, sigma_b, param)
    t = _log_q("q", q)
    return _exp(float(np.logaddexp(_log_variance(t, activation, sigma_w, param), 2 * _ln(sigma_b))))


def _log_q0(sigma_w: float, sigma_b: float, log_ms: float = 0.0) -> float:
    """ln q0 = ln(sigma_w^2 E[h^2] + sigma_b^2), the variance of a first pre-activation whose
    layer's input h has mean square E[h^2] = exp(log_ms) (without overflowing sigma_w^2)."""
    return float(np.logaddexp(2 * _ln(sigma_w) + log_ms, 2 * _ln(sigma_b)))


def _log_mean_square(x) -> float:
    """ln E[x^2] of an input array; 0 (E[x^2] = 1, the standard normal input) for None."""
    if x is None:
        return 0.0
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError("x must be a non-empty array of finite numbers")
    top = float(np.max(np.abs(x)))
    return -math.inf if top == 0 else 2 * math.log(top) + math.log(float(np.mean(np.square(x / top))))


def _log_first_q(stack: Stack, sigma_w: float, sigma_b: float, log_ms: float) -> float:
    """ln q0 of ``stack`` with these sigma_w, sigma_b and input mean square exp(log_ms): its
    input layer (input_dim != width), when it has one, maps E[x^2] to E[h_0^2] first."""
    if stack.has_input_layer:
        D, N = stack.d_in, stack.width
        if stack.init == "orthogonal":  # gain times a (semi-)orthogonal N x D matrix
            factor = min(D, N) / N
        elif stack.init.startswith("xavier"):  # variance gain^2 2 / (D + N) over D inputs
            factor = 2 * D / (D + N)
        else:  # variance gain^2 / D
            factor = 1.0
        log_ms = _log_q0(sigma_w, sigma_b, log_ms + math.log(factor))
    return _log_q0(sigma_w, sigma_b, log_ms)


def first_q(stack: Stack, x=None) -> float:
    """q0, the variance of ``stack``'s first pre-activation z_0 = h_0 W_0^T + b_0: where its
    length map starts. ``sigma_w^2 E[h_0^2] + sigma_b^2`` with h_0 the input ``x`` (E[x^2] the
    mean of ``x**2``; by default 1, the standard normal input of :func:`gradbench.gaussian_input`
    that the CLI and sweeps feed) or, when ``input_dim != width``, the input layer's output.
    ``inf`` past the largest float (sigma_w or sigma_b > ~1e154)."""
    _check_stack(stack)
    return _exp(_log_first_q(stack, stack.gain, stack.sigma_b, _log_mean_square(x)))


def _log_fixed_point(activation: str, sigma_w: float, sigma_b: float, param: float, t0: float,
                     tol: float = 1e-13, max_iter: int = 5_000) -> float:
    """ln q* by iterating the length map in t = ln q from t0 = ln q0 (no overflow for any finite sigma_w)."""
    t, t_b = t0, 2 * _ln(sigma_b)
    if activation in spec.HOMOGENEOUS:  # q_{l+1} = r q_l + sigma_b^2: closed form
        ln_r = _log_variance(0.0, activation, sigma_w, param)
        if abs(ln_r) < 1e-12:  # r = 1 to rounding: q stays (sigma_b = 0) or grows by sigma_b^2 a layer
            return t if sigma_b == 0 else math.inf
        if ln_r > 0:
            return math.inf
        return -math.inf if sigma_b == 0 else t_b - math.log(-math.expm1(ln_r))  # sigma_b^2 / (1 - r)
    shrinks = _shrinks_to_zero(activation, sigma_w, param)
    t_linear = _LN_Q_LARGE + _ln_elu_scale(activation, param)
    for i in range(max_iter):
        if i == _SLOW_AFTER and max_iter > 2 * _SLOW_AFTER:
            # a slow approach (a ratio near 1: near the critical line, tiny sigma_b): the root the
            # iteration is approaching, where float64 resolves it (else iterate on as before)
            root = _log_root(activation, sigma_w, sigma_b, param, t)
            if math.isfinite(root):
                return root
        t_w = _log_variance(t, activation, sigma_w, param)
        t_new = float(np.logaddexp(t_w, t_b))
        if math.isnan(t_new) or t_new == math.inf:
            return math.inf
        if activation not in _BOUNDED and t_new > t_linear and t_w > t:
            return math.inf  # linear regime and the weights alone enlarge q: it grows without bound
        # before the convergence test, which a start q0 below tol passed in one step (q* = q_1, not 0)
        if sigma_b == 0 and shrinks and t_new < math.log(1e-3) and t_new < t:
            return -math.inf  # (with phi(0) != 0, sigmoid, q stays near sigma_w^2 phi(0)^2 instead)
        if t_new == t or _converged(t, t_new, tol):
            return t_new
        t = t_new
    return _log_root(activation, sigma_w, sigma_b, param, t)


# iterations of the length map after which a fixed point still moving is found by its root
# (_log_root): tanh at sigma_b = 1e-8 took ~3300 a point near sigma_w = 1, 4 s for its critical line
_SLOW_AFTER = 200


def _shrinks_to_zero(activation: str, sigma_w: float, param: float) -> bool:
    """Whether without bias q = 0 attracts the length map from below q ~ 1e-3: phi(0) = 0 and the
    ratio's q -> 0 limit (:func:`_ln_ratio_at_zero`) is at most 1."""
    return _phi(activation, param)[0](0.0) == 0 and _ln_ratio_at_zero(activation, sigma_w, param) <= 0


def _ln_ratio_at_zero(activation: str, sigma_w: float, param: float) -> float:
    """ln of the length map's ratio q_{l+1} / q_l as q -> 0 without bias, for phi(0) = 0:
    sigma_w^2 (phi'(0-)^2 + phi'(0+)^2) / 2 (phi ~ its slopes on either side of 0; SELU's differ).
    At most 0: lengths shrink to zero (tanh at sigma_w <= 1, algebraically at 1); above, q = 0
    repels and q* > 0, however small: ELU at sigma_w = 1.01 has q* = 6.4e-4 (chi_1 = 1.00008), which
    the rule "below q = 1e-3 and still falling" read as 0 (chi_1 = 1.0201, "chaotic")."""
    dphi = _phi(activation, param)[1]
    left, right = (2 * _ln(abs(float(dphi(z)))) for z in (-1e-300, 1e-300))  # ELU's alpha up to 1e160
    return 2 * _ln(sigma_w) + float(np.logaddexp(left, right)) - math.log(2)


def _ln_elu_scale(activation: str, param: float) -> float:
    """2 ln alpha for ELU with alpha > 1, else 0: ln of the q up to which ELU's negative side,
    which saturates at -alpha, keeps its length map off its linear asymptote. It adds up to
    alpha^2 / 2 to E[phi^2] (alpha = 1e7 at sigma_w = 1 has its fixed point at q* ~ 1e14, which
    the rule 'past q = 1e12 the map is linear' called unbounded) and
    ~alpha^2 / (2 sqrt(2 pi q)) to E[phi'^2]."""
    return 2 * max(0.0, math.log(param)) if activation == "elu" else 0.0


def _ln_q_huge(activation: str, sigma_b: float, param: float) -> float:
    """ln of a q where the length map's ratio q_{l+1} / q_l has reached its limit q -> inf: 1e200,
    or 1e24 times the map's own scale where that is larger (ELU's alpha^2, sigma_b^2: at
    sigma_b = 1e160 the ratio at q = 1e200 is ~1e120, not its limit)."""
    return max(_LN_Q_HUGE, 2 * _LN_Q_LARGE + max(_ln_elu_scale(activation, param), 2 * _ln(sigma_b)))


def _log_root(activation: str, sigma_w: float, sigma_b: float, param: float, t: float) -> float:
    """ln q* where the iteration ran out of steps at t = ln q, still moving: the root of
    g(u) = ln(q_{l+1} / q_l) at q_l = e^u, bracketed by stepping from t the way the map moves q,
    in doubling steps (the first root that way is the fixed point the iteration approaches).

    The slow approaches end here: geometric with a ratio near 1 (tanh at sigma_w = 0.9 with
    sigma_b = 1e-300 shrinks q by 0.81 a layer down to q* = 5e-600: 6600 layers) and algebraic,
    where the ratio tends to 1 (tanh at sigma_w = 1, q_l ~ 1 / (2 l): with sigma_b = 1e-5 the
    iteration stopped at 1e-4, not at q* = 7.07e-6). ``inf`` where q grows into the linear regime
    with the weights alone enlarging it, ``-inf`` where without bias it falls past the q -> 0
    limit. NaN where the root is not resolved: g does not differ from 0 by more than its rounding
    error a factor e^0.001 either side, so float64 cannot place q* even to 0.1 % (the ratio is 1 to
    rounding around it: ELU at sigma_w = 1 with sigma_b = 1e-300 has q* ~ 1e-400, where the ratio
    differs from 1 by 1e-200).
    """
    t_b = 2 * _ln(sigma_b)
    t_linear = _LN_Q_LARGE + _ln_elu_scale(activation, param)

    def g(u):
        return _log_ratio(u, activation, sigma_w, sigma_b, param)

    g_t = g(t)
    if g_t == 0:
        return t
    up, a, step = g_t > 0, t, 1e-3
    while True:
        if up:  # the first step past the linear regime's start lands just past it, as the iteration's does
            b = t_linear + 1e-3 if a <= t_linear < a + step else a + step
        else:
            b = max(a - step, t_b)  # q_{l+1} >= sigma_b^2: g(t_b) >= 0
        g_b = g(b)
        if math.isnan(g_b):
            return math.nan
        if (g_b <= 0) if up else (g_b >= 0):
            break
        if up and activation not in _BOUNDED and b > t_linear:
            t_w = _log_variance(b, activation, sigma_w, param)
            # as in the iteration, the weights alone enlarge q; or they keep it to rounding while the
            # bias adds sigma_b^2 a layer, as a homogeneous map at r = 1 does (GELU at sigma_w = sqrt 2)
            if t_w > b or (sigma_b > 0 and t_w > b - 1e-12):
                return math.inf
        if not up and sigma_b == 0 and b < _LN_Q_TINY and _shrinks_to_zero(activation, sigma_w, param):
            return -math.inf  # the ratio's q -> 0 limit is at most 1: lengths shrink to zero
        a, step = b, 2 * step
    from scipy.optimize import brentq

    root = float(brentq(g, min(a, b), max(a, b), xtol=1e-13))
    # rounding of g (:func:`_log_ratio`): ~9 ulps of 1, and of 2 ln sigma_w, which cancels against the
    # ratio's own logarithm at the root (tanh at sigma_w = 1e50). Around 504 roots (7 activations,
    # sigma_w 0.5 to 1e50, sigma_b 1e-300 to 1e100) g scattered by at most 3.1 ulps (1 + |2 ln sigma_w|)
    noise = 2e-15 * (1 + abs(2 * _ln(sigma_w)))
    if g(root - 1e-3) > noise and g(root + 1e-3) < -noise:
        return root
    return math.nan


def _converged(t: float, t_new: float, tol: float) -> bool:
    """Whether a step of the length map from q = e^t to e^t_new has converged: it changed q by at
    most ``tol`` (relative above q = 1, absolute below) and by at most 0.1 % of q itself. Without
    the second condition a start q0 below ``tol`` passed in one step: tanh at sigma_w = 1.5 from
    q0 = 1e-14 read q* = 2.25e-14 and chi_1 = 2.25, where its lengths reach 0.793 and chi_1 = 1.14."""
    if max(t, t_new) >= 700.0:
        return abs(t_new - t) <= tol
    return abs(_exp(t_new) - _exp(t)) <= tol * max(1.0, _exp(t)) and abs(t_new - t) <= 1e-3


def fixed_point(activation: str, sigma_w: float, sigma_b: float = 0.0, param: float | None = None,
                q0: float | None = None, tol: float = 1e-13, max_iter: int = 5_000) -> float:
    """The fixed point q* of the length map, by iteration from ``q0``: by default
    ``sigma_w^2 + sigma_b^2``, the first pre-activation's variance for a standard normal input
    (:func:`first_q`). Where the map has two attractors (:func:`bistability`: zero-bias GELU and
    swish for sqrt(2) < sigma_w < 2) the result depends on ``q0``.

    Returns 0 where lengths shrink to zero (e.g. tanh with sigma_b = 0 and sigma_w <= 1, where
    the approach is algebraic, q_l ~ 1/l, and is recognised once q < 1e-3 and still falling, where
    the ratio q_{l+1} / q_l tends to at most 1 as q -> 0: :func:`_ln_ratio_at_zero`; above, q* > 0
    however small, as ELU's 6.4e-4 at sigma_w = 1.01),
    and ``inf`` where they grow without bound (e.g. ReLU above sigma_w^2 = 2; recognised once
    q > 1e12, for ELU with alpha > 1 once q > 1e12 alpha^2, and the weights alone still enlarge
    it). ``inf`` also reads a finite q* past the largest float (tanh at sigma_b = 1e160: q* = 1e320;
    a bounded activation, tanh or sigmoid, has q* <= sigma_w^2 + sigma_b^2 and never grows without
    bound); :func:`mean_field` keeps its logarithm, which tells the two apart. ``tol``: the change
    of q (relative above q = 1, absolute below) at which the iteration stops; ``max_iter``: the
    steps after which an iteration still moving (a slow approach: tanh at sigma_w = 1 with
    sigma_b = 1e-5 has q_l ~ 1 / (2 l) until q* = 7.07e-6) has its fixed point found by bracketing
    instead; with ``max_iter`` above 400 that is tried after 200 steps already, and kept where it
    is resolved (finite: the iteration goes on otherwise). NaN where that fixed point is not resolved in float64: the map's ratio
    q_{l+1} / q_l is 1 to rounding around it, so that it cannot be placed to 0.1 % (ELU at sigma_w = 1
    with sigma_b = 1e-300, whose q* ~ 1e-400 is set by a term 1e-200 of the ratio). The ratio is
    taken without ln q (:func:`_log_ratio`) and resolved to ~1e-15: tanh at sigma_w = 1 (ratio
    1 - 2 q + sigma_b^2 / q) has its q* ~ sigma_b / sqrt 2 down to sigma_b = 1e-12 (7.07e-13) and NaN
    from ~3e-13 on, ELU at sigma_w = 1 (1 - sqrt(2 / pi) q^0.5 + sigma_b^2 / q) down to sigma_b ~ 3e-18
    (q* ~ 5e-24).
    """
    sigma_w, sigma_b, param = _inputs(activation, sigma_w, sigma_b, param)
    tol = _real("tol", tol, positive=True)
    spec._check_int("max_iter", max_iter, 1)
    t0 = _log_q("q0", q0)
    t0 = _log_q0(sigma_w, sigma_b) if t0 is None else t0
    return _exp(_log_fixed_point(activation, sigma_w, sigma_b, param, t0, tol, int(max_iter)))


def _log_chi1(activation: str, sigma_w: float, param: float, t: float) -> float:
    """ln chi_1 at t = ln q."""
    _, df = _phi(activation, param)
    if activation in spec.HOMOGENEOUS and not math.isfinite(t):
        t = 0.0  # phi' of a homogeneous activation does not depend on the scale
    elif math.isnan(t):
        return math.nan  # q* not resolved (_log_root)
    elif t == math.inf:
        # lengths grow without bound (gelu, swish, elu, selu above their growth threshold):
        # the limit of phi'(sqrt(q) z) as q -> inf, evaluated at a scale where it has converged
        # (for ELU with alpha > 1 past alpha^4 too: E[phi'^2] = 1/2 + ~alpha^2 / (2 sqrt(2 pi q)))
        t = math.log(1e300) + 2 * _ln_elu_scale(activation, param)
    elif t == -math.inf:
        # lengths shrink to zero: the limit q -> 0+, where a kink at 0 (SELU) counts both its sides
        t = math.log(1e-300)
    return 2 * _ln(sigma_w) + _log_expect(df, 0.5 * t)


def chi1(activation: str, sigma_w: float, sigma_b: float = 0.0, param: float | None = None,
         q: float | None = None, q0: float | None = None) -> float:
    """chi_1 = sigma_w^2 E[phi'(sqrt(q) z)^2]: the per-layer factor of the squared gradient norm,
    at ``q`` or by default at the fixed point q* reached from ``q0`` (as in :func:`fixed_point`).

    0 or ``inf`` where chi_1 itself under- or overflows a float (sigma_w ~ 1e-200 or 1e300, a leaky
    slope of 1e160); :func:`mean_field` keeps its logarithm. NaN where the fixed point is not
    resolved (:func:`fixed_point`). Give ``q`` or ``q0``, not both.
    """
    sigma_w, sigma_b, param = _inputs(activation, sigma_w, sigma_b, param)
    if q is not None and q0 is not None:
        raise ValueError("give q (where chi_1 is taken) or q0 (where the length map starts), not both")
    t, t0 = _log_q("q", q), _log_q("q0", q0)
    if t is None:
        t0 = _log_q0(sigma_w, sigma_b) if t0 is None else t0
        t = _log_fixed_point(activation, sigma_w, sigma_b, param, t0)
    return _exp(_log_chi1(activation, sigma_w, param, t))


@dataclass(frozen=True)
class Bistability:
    """A length map with two attractors (:func:`bistability`): a stack whose first pre-activation
    variance q0 lies below ``q_separatrix`` settles at ``q_low`` (0 with zero bias: the forward
    pass dies out) with ``chi1_low`` < 1 (vanishing); one above it grows without bound (q -> inf)
    with ``chi1_high`` > 1 (exploding)."""

    q_separatrix: float
    q_low: float
    chi1_low: float
    chi1_high: float

    def explain(self, q0: float) -> str:
        """In words: the two attractors, the point between them, and which side ``q0`` is on."""
        low = f"{'dies out' if self.q_low == 0 else 'settles'} (q* = {self.q_low:.4g}"
        side = "below" if q0 < self.q_separatrix else "above" if q0 > self.q_separatrix else "at"
        return (f"two attractors: a stack whose first pre-activation variance q0 is below {self.q_separatrix:.6g} "
                f"{low}, chi_1 = {self.chi1_low:.4g}: vanishing), one above it grows without bound (q* = inf, "
                f"chi_1 = {self.chi1_high:.4g}: exploding); q0 = {q0:.6g} is {side} it")


def _log_bistable(activation: str, sigma_w: float, sigma_b: float, param: float) -> tuple[float, float] | None:
    """(ln q_low, ln q_separatrix) where the length map has two attractors, else None.

    q -> inf attracts where the map's ratio q_{l+1} / q_l exceeds 1 in its limit q -> inf (an
    unbounded activation that is not homogeneous). The low attractor is q = 0 where phi(0) = 0,
    sigma_b = 0 and the ratio's limit q -> 0 is below 1; otherwise the fixed point the iteration
    reaches from q = 0, if it is finite. Between them lies the map's unstable fixed point.
    """
    if activation in spec.HOMOGENEOUS or activation in _BOUNDED:
        return None
    t_b = 2 * _ln(sigma_b)

    def g(t):  # ln(q_{l+1} / q_l) at q = e^t
        return _log_ratio(t, activation, sigma_w, sigma_b, param)

    t_huge = _ln_q_huge(activation, sigma_b, param)
    if not g(t_huge) > 0:  # q -> inf does not attract
        return None
    t1 = float(np.logaddexp(_log_variance(-math.inf, activation, sigma_w, param), t_b))  # one step from q = 0
    if t1 == -math.inf:  # phi(0) = 0 and sigma_b = 0: q = 0 is a fixed point
        if not g(_LN_Q_TINY) < 0:
            return None  # ... that repels
        t_low, lo = -math.inf, _LN_Q_TINY
    else:
        t_low = _log_fixed_point(activation, sigma_w, sigma_b, param, t1)
        if not math.isfinite(t_low):
            return None  # from q = 0 too the lengths grow without bound: one attractor
        lo = t_low + 1e-6
        if not g(lo) < 0:
            return None  # a marginal low fixed point (where the two meet): no separating point to find
    from scipy.optimize import brentq

    return t_low, float(brentq(g, lo, t_huge, xtol=1e-13))


def bistability(activation: str, sigma_w: float, sigma_b: float = 0.0,
                param: float | None = None) -> Bistability | None:
    """Whether the length map has two attractors, and where they and the point between them lie.

    None where it has one (and q0 does not matter). Of the activations here only GELU and swish
    have two: at zero bias for sqrt(2) < sigma_w < 2 (the map's ratio q_{l+1} / q_l is
    sigma_w^2 / 4 as q -> 0 and sigma_w^2 / 2 as q -> inf), and for a small sigma_b.
    """
    sigma_w, sigma_b, param = _inputs(activation, sigma_w, sigma_b, param)
    found = _log_bistable(activation, sigma_w, sigma_b, param)
    if found is None:
        return None
    t_low, t_sep = found
    return Bistability(_exp(t_sep), _exp(t_low), _exp(_log_chi1(activation, sigma_w, param, t_low)),
                       _exp(_log_chi1(activation, sigma_w, param, math.inf)))


@dataclass(frozen=True)
class MeanField:
    """Mean-field predictions for one (activation, sigma_w, sigma_b), iterated from ``q0``.

    ``q_star`` and ``chi1`` are floats, 0 or ``inf`` where they under- or overflow (sigma_w of
    1e-200 or 1e200, sigma_b or an activation param of 1e160); ``log10_q_star`` and ``log10_chi1``
    hold them at any sigma_w, and every derived quantity is computed from the logarithms. So
    ``q_star = inf`` is a fixed point past the largest float where ``log10_q_star`` is finite (tanh
    at sigma_b = 1e160: 320.0), and lengths that grow without bound where it is ``inf`` too (ReLU
    above sigma_w^2 = 2; chi_1 is then its limit q -> inf, finite in ``log10_chi1``). ``q_star``
    and ``log10_q_star`` are NaN where float64 cannot resolve the fixed point (:func:`fixed_point`);
    ``chi1`` and the quantities derived from it are then NaN too, and ``phase`` is "unresolved".
    ``q0`` (``log10_q0``) is where the length map started: the first pre-activation's variance
    (:func:`first_q`). ``depends_on_q0`` says whether another q0 would change q*: where the map
    has two attractors (``q_separatrix``, the unstable fixed point between them, is then finite,
    else NaN; :func:`bistability`) and where it leaves q unchanged (a homogeneous activation at
    r = 1 with zero bias: q* = q0).
    """

    activation: str
    sigma_w: float
    sigma_b: float
    q_star: float
    chi1: float
    log10_q_star: float = math.nan
    log10_chi1: float = math.nan
    q0: float = math.nan
    log10_q0: float = math.nan
    q_separatrix: float = math.nan
    depends_on_q0: bool = False

    def __post_init__(self):
        for name, value in (("log10_q_star", self.q_star), ("log10_chi1", self.chi1), ("log10_q0", self.q0)):
            if math.isnan(getattr(self, name)) and not math.isnan(value):  # built from the floats alone
                object.__setattr__(self, name, math.log10(value) if value > 0 else -math.inf)

    @property
    def bistable(self) -> bool:
        """Whether the map has two attractors and q0 picks the phase (``q_separatrix`` is finite)."""
        return not math.isnan(self.q_separatrix)

    @property
    def decades_per_layer(self) -> float:
        """Expected change of log10 ||dL/dh|| per layer going down the stack: 0.5 log10 chi_1."""
        return 0.5 * self.log10_chi1

    @property
    def depth_scale(self) -> float:
        """Layers over which the squared gradient norm changes by a factor e: 1 / |ln chi_1|."""
        ln_chi = self.log10_chi1 * math.log(10)
        if abs(ln_chi) < 1e-12:  # critical to rounding: no finite depth scale
            return math.inf
        return 1.0 / abs(ln_chi)

    @property
    def open_fraction(self) -> float:
        """The probability that a unit at q* is open (:func:`open_fraction`; NaN but for tanh and
        sigmoid): mean field holds for widths well above its inverse."""
        return open_fraction(self.activation, self.log10_q_star)

    @property
    def phase(self) -> str:
        """"critical", "ordered (vanishing)" or "chaotic (exploding)" by chi_1; "unresolved" where
        chi_1 is NaN (its fixed point is not resolved in float64)."""
        ln_chi = self.log10_chi1 * math.log(10)
        if math.isnan(ln_chi):
            return "unresolved"
        if abs(ln_chi) < 0.01 and abs(math.expm1(ln_chi)) < 1e-3:
            return "critical"
        return "ordered (vanishing)" if ln_chi < 0 else "chaotic (exploding)"


def open_fraction(activation: str, log10_q: float) -> float:
    """The probability that a unit whose pre-activation has variance q = 10^``log10_q`` is open:
    |phi'(z)| at least half its largest value (tanh, sigmoid; NaN for the other activations,
    whose phi' does not fade on both sides, and for a NaN q).

    chi_1 = sigma_w^2 E[phi'(z)^2] of a saturating layer is an average dominated by its few open
    units, so mean field, the limit of infinitely many of them, holds only where a layer has many:
    widths well above 1 / open_fraction. Below that a stack's rate falls short of 0.5 log10 chi_1
    (an average of logarithms against the logarithm of the average), to the other sign: tanh at
    sigma_w = 1000 has q* = 10^6, one unit in ~1,400 open, and at width 64 its gradients vanish by
    ~10 decades a layer where mean field says +1.36 (chaotic)."""
    c = _HALF_OPEN.get(activation)
    if c is None or math.isnan(log10_q):
        return math.nan
    x_log10 = math.log10(c / math.sqrt(2.0)) - 0.5 * log10_q  # the half-width in standard deviations, log10
    return 1.0 if x_log10 > 2 else math.erf(10.0**x_log10)


def mean_field(stack_or_activation, sigma_w: float | None = None, sigma_b: float | None = None,
               param: float | None = None, q0: float | None = None, x=None) -> MeanField:
    """Mean-field predictions for a :class:`Stack` (its activation and its param, gain and sigma_b,
    unless ``param``, ``sigma_w`` or ``sigma_b`` replace them) or an activation name.

    The mean field describes plain stacks, each layer phi(h W^T + b): a stack with ``residual``,
    ``batch_norm`` or ``clip`` is refused (ValueError naming them), since they change how its
    lengths or gradients go from layer to layer (a tanh stack at sigma_w = 1, sigma_b = 0.3 with
    residual=1 measures +0.019 decades per layer, where this map reads -0.077). Pass
    ``stack.replace(residual=0, batch_norm=False, clip=None)`` for the plain stack's prediction.

    The length map starts at ``q0``, by default the first pre-activation's variance of the stack
    fed ``x`` (:func:`first_q`; without ``x`` the standard normal input of
    :func:`gradbench.gaussian_input`, E[x^2] = 1): ``sigma_w^2 E[x^2] + sigma_b^2`` (through the
    input layer, when a stack has one). It matters where the map has two attractors
    (:func:`bistability`): zero-bias GELU at sigma_w = 1.5 reaches q* = inf (chi_1 = 1.125,
    exploding) from q0 = 2.25 but q* = 0 (chi_1 = 0.5625, vanishing) from q0 = 1.
    """
    activation, sigma_w, sigma_b, param, t0 = _resolve(stack_or_activation, sigma_w, sigma_b, param, q0, x)
    t = _log_fixed_point(activation, sigma_w, sigma_b, param, t0)
    ln_chi = _log_chi1(activation, sigma_w, param, t)
    two = _log_bistable(activation, sigma_w, sigma_b, param)
    # r = 1 without bias (homogeneous): q stays at q0, so q* = q0
    neutral = activation in spec.HOMOGENEOUS and sigma_b == 0 and abs(_log_variance(0.0, activation, sigma_w, param)) < 1e-12
    ln10 = math.log(10)
    return MeanField(activation, float(sigma_w), float(sigma_b), _exp(t), _exp(ln_chi), t / ln10, ln_chi / ln10,
                     _exp(t0), t0 / ln10, math.nan if two is None else _exp(two[1]), two is not None or neutral)


def _resolve(stack_or_activation, sigma_w, sigma_b, param, q0, x) -> tuple[str, float, float, float, float]:
    """(activation, sigma_w, sigma_b, param, ln q0) of :func:`mean_field`'s arguments, checked."""
    if q0 is not None and x is not None:
        raise ValueError("give q0 or x, not both")
    stack = stack_or_activation if isinstance(stack_or_activation, Stack) else None
    if stack is not None:
        _check_plain(stack)
        activation = stack.activation
        param = stack.activation_param if param is None else param
        sigma_w = stack.gain if sigma_w is None else sigma_w
        sigma_b = stack.sigma_b if sigma_b is None else sigma_b
    else:
        activation = stack_or_activation
        if not isinstance(activation, str):  # mean_field(42) said "sigma_w is required when an activation name is given"
            raise TypeError(f"the first argument must be a gradbench.Stack or an activation name ("
                            f"{', '.join(spec.ACTIVATIONS)}), got {type(activation).__name__}")
        if sigma_w is None:
            raise ValueError("sigma_w is required when an activation name is given")
        sigma_b = 0.0 if sigma_b is None else sigma_b
    sigma_w, sigma_b, param = _inputs(activation, sigma_w, sigma_b, param)
    t0 = _log_q("q0", q0)
    if t0 is None:
        log_ms = _log_mean_square(x)
        t0 = _log_q0(sigma_w, sigma_b, log_ms) if stack is None else _log_first_q(stack, sigma_w, sigma_b, log_ms)
    return activation, sigma_w, sigma_b, param, t0


@dataclass(frozen=True)
class AlongStack:
    """The mean field layer by layer over a finite stack (:func:`along_stack`).

    ``log10_q[l]``: log10 of the variance of layer l's pre-activation z_l, the length map
    iterated from q0; ``decades[l]``: 0.5 log10 chi_1(q_l), the predicted change of log10
    ||dL/dh|| across layer l going down (from h_{l+1} to h_l, through phi'(z_l)).
    """

    log10_q: np.ndarray
    decades: np.ndarray

    def signal_log10(self, top: float = 0.0) -> np.ndarray:
        """Predicted log10 ||dL/dh_l||, l = 0..L-1, anchored at ``top`` for h_{L-1} (the layer
        below the top): top + decades[l] + ... + decades[L-2]."""
        d = self.decades[:-1]
        return top + np.append(np.cumsum(d[::-1])[::-1], 0.0)

    def fitted_rate(self, lo: int = 0, hi: int | None = None) -> float:
        """The least-squares rate (decades per layer going down) of :meth:`signal_log10` over
        layers [lo, hi): what a fit of a simulation's signal over the same layers compares with.
        ``lo`` and ``hi`` are layer indices with 0 <= lo < hi <= the number of points (``hi``
        None: to the end); anything else is refused, not sliced into another window."""
        s = self.signal_log10()
        n = len(s)
        hi = n if hi is None else hi
        for name, v in (("lo", lo), ("hi", hi)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"fitted_rate's {name} must be a layer index (an int), got {v!r}")
        if not 0 <= lo < hi <= n:
            raise ValueError(f"fitted_rate needs 0 <= lo < hi <= {n} (the points of signal_log10), got lo={lo}, hi={hi}")
        s = s[lo:hi]
        if len(s) < 2 or not np.all(np.isfinite(s)):
            return math.nan if len(s) >= 2 else 0.0
        return -float(np.polyfit(np.arange(len(s)), s, 1)[0])


def along_stack(stack_or_activation, depth: int | None = None, sigma_w: float | None = None,
                sigma_b: float | None = None, param: float | None = None, q0: float | None = None,
                x=None) -> AlongStack:
    """The mean field of a stack of ``depth`` layers (a Stack's own by default), layer by layer:
    the length map from q0 (as :func:`mean_field`, same arguments) and chi_1 at each layer's q_l,
    not only at the fixed point.

    They differ where the lengths approach q* slowly or not at all. ELU at sigma_w = sqrt(2)
    (He), zero bias: q grows by about a constant a layer without bound, so q* = inf and chi_1 at
    q* is 1 ("critical"), but chi_1(q_l) = 2 E[phi'(sqrt(q_l) z)^2] stays above 1 at every finite
    q_l: over 200 layers the signal grows by +0.0102 decades a layer fitted over layers 20-179
    (+0.0109 over all 200; a simulation at width 256: +0.011), where chi_1 at q* predicts 0.
    """
    if depth is None:
        if not isinstance(stack_or_activation, Stack):
            raise ValueError("depth is required when an activation name is given")
        depth = stack_or_activation.depth
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth must be an int >= 1, got {depth!r}")
    activation, sigma_w, sigma_b, param, t = _resolve(stack_or_activation, sigma_w, sigma_b, param, q0, x)
    t_b, ln10 = 2 * _ln(sigma_b), math.log(10)
    log_q, chi = np.empty(depth), np.empty(depth)
    for l in range(depth):
        log_q[l], chi[l] = t, _log_chi1(activation, sigma_w, param, t)
        if math.isfinite(t):  # +-inf: the limits, which _log_chi1 takes
            t = float(np.logaddexp(_log_variance(t, activation, sigma_w, param), t_b))
    return AlongStack(log_q / ln10, 0.5 * chi / ln10)


def _check_plain(stack: Stack) -> None:
    """Refuse a stack with residual, batch_norm or clip: the mean field does not describe it."""
    fields = [f"{f}={getattr(stack, f)!r}" for f in ("residual", "batch_norm", "clip") if getattr(stack, f)]
    if fields:
        raise ValueError(
            f"the mean field (mean_field, along_stack) describes plain stacks (each layer phi(h W^T + b), Poole et al. 2016, Schoenholz et al. "
            f"2017), not this stack's {', '.join(fields)} (each changes how lengths or gradients go from layer to "
            "layer); for the plain stack's prediction pass stack.replace(residual=0, batch_norm=False, clip=None)"
        )


def _bistable_range(activation: str, param: float) -> tuple[float, float] | None:
    """The sigma_w at which zero-bias lengths have two attractors, q -> 0 and q -> inf: between
    1 / sqrt(ratio at q -> inf) and 1 / sqrt(ratio at q -> 0) of the map at sigma_w = 1."""
    if activation in spec.HOMOGENEOUS or activation in _BOUNDED or _phi(activation, param)[0](0.0) != 0:
        return None
    t_huge = _ln_q_huge(activation, 0.0, param)
    lo = math.exp(-0.5 * (_log_variance(t_huge, activation, 1.0, param) - t_huge))
    hi = math.exp(-0.5 * (_log_variance(_LN_Q_TINY, activation, 1.0, param) - _LN_Q_TINY))
    return (lo, hi) if lo < hi else None


# The default search of critical_sigma_w: this bracket, its upper end widened 100-fold at a time
# up to _WIDEST while chi_1 - 1 keeps its sign (tanh at sigma_b = 1000 is critical at 43.4, at
# sigma_b = 1e100 near 1.4e50: chi_1 ~ sigma_w^2 0.53 / sigma_b there)
_BRACKET, _WIDEST = (0.05, 20.0), 1e150


def critical_sigma_w(activation: str, sigma_b: float = 0.0, param: float | None = None,
                     bracket: tuple[float, float] | None = None) -> float:
    """The sigma_w on the critical line chi_1(sigma_w, sigma_b) = 1 (Brent's method, to 1e-12, times
    hi where hi < 1), with the length map started at each sigma_w from q0 = sigma_w^2 + sigma_b^2
    (a standard normal input), searched for within ``bracket``, two sigma_w with 0 < lo < hi; by
    default within (0.05, 20), its upper end widened 100-fold at a time up to 1e150 while chi_1 - 1
    does not change sign (the bounded activations' line rises with sigma_b: tanh 43.4 at
    sigma_b = 1000)."""
    sigma_b, p = _activation_inputs(activation, sigma_b, param)
    lo, hi = _bracket(_BRACKET if bracket is None else bracket)

    def f(s):
        value = chi1(activation, s, sigma_b, param)
        # NaN: q* not resolved, where the map's ratio q_{l+1} / q_l is 1 to rounding around it. That
        # happens where phi is linear to rounding at sqrt(q*) (q* -> 0: tanh at sigma_w = 1 with
        # sigma_b = 1e-300; q* -> inf), and there chi_1 is that ratio: the point is on the line
        return 0.0 if math.isnan(value) else value - 1.0

    if sigma_b == 0 and activation not in spec.HOMOGENEOUS and _phi(activation, p)[0](0.0) == 0:
        # without bias the line is where q = 0 stops attracting (_ln_ratio_at_zero = 0): below it
        # q* = 0 and chi_1 is that ratio, < 1; above it chi_1 > 1 where it is read. Brent's method
        # probed there at ~0.5 s a point (q* > 0 tiny, a slow approach): tanh took 10 s and gave
        # 1.0000000000367 for 1
        edge = math.exp(-0.5 * _ln_ratio_at_zero(activation, 1.0, p))
        if lo < edge * (1 - 1e-9) and edge * (1 + 1e-6) < hi and f(edge * (1 - 1e-9)) < 0 < f(edge * (1 + 1e-6)):
            return edge
    f_lo, f_hi = f(lo), f(hi)
    while bracket is None and f_lo * f_hi > 0 and hi < _WIDEST:
        lo, f_lo, hi = hi, f_hi, min(100.0 * hi, _WIDEST)
        f_hi = f(hi)
    if f_lo * f_hi > 0:
        searched = bracket if bracket is not None else (_BRACKET[0], hi)
        raise ValueError(f"chi_1 - 1 does not change sign for sigma_w in {searched} ({activation}, sigma_b={sigma_b})")
    from scipy.optimize import brentq  # SciPy is imported where it is used (CLI start-up time)

    # xtol relative below 1 (leaky slope 1e160: ~1e-160)
    found = brentq(f, lo, hi, xtol=1e-12 * min(1.0, hi), maxiter=200, full_output=True, disp=False)[1]
    if not found.converged:  # chi_1 - 1 changes sign back and forth: rounding noise, not a line
        raise ValueError(f"the critical sigma_w of {activation} at sigma_b={sigma_b:g} is not resolved in float64: "
                         f"chi_1 - 1 is rounding noise near sigma_w = {found.root:.6g} (its fixed point q* is "
                         "where the length map's ratio is 1 to rounding)")
    root = float(found.root)
    for _ in range(8):
        # a point where f reads 0 from a NaN can be a touch, not a crossing: GELU at sigma_b = 0.5
        # and swish at 0.8-1.2 have chi_1 -> 1 from above where q* -> inf at sqrt 2, and chi_1 > 1 on
        # both sides of it; their line crosses below it (GELU at sigma_b = 0.5: 1.399868, not sqrt 2)
        f_below, f_above = f(root * (1 - 1e-6)), f(root * (1 + 1e-6))
        if not (f_below > 0 and f_above > 0 and f_lo < 0) and not (f_below < 0 and f_above < 0 and f_hi > 0):
            break
        a, b = (lo, root * (1 - 1e-6)) if f_below > 0 else (root * (1 + 1e-6), hi)
        found = brentq(f, a, b, xtol=1e-12 * min(1.0, b), maxiter=200, full_output=True, disp=False)[1]
        root = float(found.root)
    below, above = chi1(activation, root * (1 - 1e-6), sigma_b, param), chi1(activation, root * (1 + 1e-6), sigma_b, param)
    if abs(above - below) > 1e-2:
        q_lo = fixed_point(activation, root * (1 - 1e-6), sigma_b, param)
        q_hi = fixed_point(activation, root * (1 + 1e-6), sigma_b, param)
        jump = (f"from q0 = sigma_w^2 + sigma_b^2 (a standard normal input) q* jumps from {q_lo:.3g} to {q_hi:.3g} "
                f"at sigma_w = {root:.6g} and chi_1 from {below:.4g} to {above:.4g}, past 1")
        if bistability(activation, root, sigma_b, param) is None:
            raise ValueError(f"{activation} at sigma_b={sigma_b:g} has no edge of chaos: {jump} (the forward pass "
                             "either dies out or grows without bound); mean field predicts no critical line there")
        span = _bistable_range(activation, p) if sigma_b == 0 else None
        where = f" for {span[0]:.6g} < sigma_w < {span[1]:.6g}" if span else " there"
        raise ValueError(
            f"{activation} at sigma_b={sigma_b:g} has no edge of chaos: its length map is bistable{where} (from a "
            f"small first pre-activation variance q0 lengths stay small, chi_1 < 1; from a large one they grow without "
            f"bound, chi_1 > 1), so the phase depends on q0; {jump}; mean field predicts no critical line there"
        )
    return root


def _bracket(bracket) -> tuple[float, float]:
    """(lo, hi) of a sigma_w bracket once it is two finite numbers with 0 < lo < hi."""
    try:
        lo, hi = bracket
    except (TypeError, ValueError):
        raise TypeError(f"bracket must be two sigma_w (lo, hi), got {bracket!r}") from None
    lo, hi = _real("bracket[0]", lo, positive=True), _real("bracket[1]", hi, positive=True)
    if not lo < hi:
        raise ValueError(f"bracket must be (lo, hi) with lo < hi, got {bracket!r}")
    return lo, hi


def newman_lambda1(width: int, sigma_w: float = 1.0) -> float:
    """Top Lyapunov exponent (natural log, per layer) of a product of N x N Gaussian matrices
    with entry variance sigma_w^2 / N (Newman 1986): ``width`` N an int >= 1, any finite
    ``sigma_w`` > 0."""
    spec._check_int("width", width, 1)
    sigma_w = _real("sigma_w", sigma_w, positive=True)
    width = int(width)
    from scipy.special import digamma

    return 0.5 * (math.log(2 / width) + 2 * math.log(sigma_w) + float(digamma(width / 2)))


def finite_width_lambda1(activation: str, width: int, sigma_w: float = 1.0, param: float | None = None) -> float:
    """The mean change of ln ||h|| per layer (natural log) of a zero-bias stack of ``width`` N
    with Gaussian weights (variance sigma_w^2 / N) and a piecewise-linear activation: identity,
    relu, leaky_relu or prelu (at its slope ``param``), exact at any width. Mean field's
    0.5 ln chi_1 is its N -> inf limit; at width 32 ReLU at the He gain drifts by -0.0413 nats
    (-0.0179 decades) a layer, where mean field says 0 (Hanin 2018; Newman 1986 for identity,
    which this equals there). The backward signal ||dL/dh_l|| drifts at the same rate when its
    weights act as independent of the forward's (as mean field assumes).

    A layer maps h to phi(z), z = h W^T with N independent N(0, sigma_w^2 ||h||^2 / N) entries, so
    ||phi(z)||^2 / ||h||^2 = (sigma_w^2 / N) S with S = sum_i phi(xi_i)^2 over N standard normal
    xi_i, and E ln S = int_0^inf (e^-t - M(t)^N) dt / t (Frullani) with M(t) = E exp(-t phi(xi)^2)
    = ((1 + 2t)^-1/2 + (1 + 2 a^2 t)^-1/2) / 2 for slope a on the negative side. For relu (a = 0)
    it is taken given S > 0: a layer with every unit off (probability 2^-N a sample) ends the
    chain at 0 instead.
    """
    if activation not in spec.HOMOGENEOUS:
        raise ValueError(f"finite_width_lambda1 takes a piecewise-linear activation ({', '.join(sorted(spec.HOMOGENEOUS))}), "
                         f"got {activation!r}")
    spec._check_int("width", width, 1)
    sigma_w = _real("sigma_w", sigma_w, positive=True)
    a = {"identity": 1.0, "relu": 0.0}.get(activation, _param(activation, param))
    a = _real("param", a)
    n = int(width)
    if a * a == 1.0:  # |phi(x)| = |x|: Newman's linear stack
        return newman_lambda1(n, sigma_w)
    a2, ln2 = a * a, math.log(2)
    from scipy import integrate

    # E ln S = ln c + int_0^inf (e^-ct - M(t)^N) dt / t with c = N E[phi^2] = N (1 + a^2) / 2: the
    # integral is the finite-width part alone (M^N = e^-ct to first order in t), so nothing of
    # size ln N cancels in it, and near t ~ 1 / N the difference is taken as e^-ct (1 - M^N e^ct)
    # from ln M = log1p(M - 1). t = e^x; it changes near t ~ 1 / N, t ~ 1 (and 1 / a^2).
    c = n * (1 + a2) / 2
    q = 2.0**-n if a2 == 0 and n <= 60 else 0.0  # relu given S > 0 (past 60 units 2^-N < 1e-18)

    def f(x: float) -> float:
        t = math.exp(x)
        u, v = -0.5 * math.log1p(2 * t), -0.5 * math.log1p(2 * a2 * t)
        m = 0.5 * (math.expm1(u) + math.expm1(v))  # M - 1
        ln_m = math.log1p(m) if m > -0.5 else float(np.logaddexp(u, v)) - ln2
        d = n * ln_m + c * t  # ln(M^N e^ct) >= 0
        diff = math.exp(-c * t) * -math.expm1(d) if d < 1 else math.exp(-c * t) - math.exp(n * ln_m)
        # given S > 0: e^-ct - (M^N - q) / (1 - q) = (e^-ct - M^N + q (1 - e^-ct)) / (1 - q)
        return (diff + q * -math.expm1(-c * t)) / (1 - q) if q else diff

    marks = sorted({-math.log(n), 0.0, *([-math.log(a2)] if 0 < a2 else [])})
    edges = [-80.0, *[m for m in marks if -80 < m < 80], 80.0]
    part = sum(integrate.quad(f, lo, hi, limit=400, epsabs=1e-15, epsrel=1e-12)[0] for lo, hi in zip(edges, edges[1:]))
    return 0.5 * (2 * math.log(sigma_w) + math.log((1 + a2) / 2) + part)


def walk_slope_se(layers, log10_norm) -> float:
    """The standard error of the least-squares slope of ``log10_norm`` against ``layers`` when
    the log-norm is a random walk (each layer multiplies the signal by an independent random
    factor: a finite-width stack's ||dL/dh_l||), decades per layer; NaN with fewer than 3 steps.
    Not for ||dL/dW_l|| = ||dz_l^T h_l||, which adds each layer's own product to its walk: the
    increments then overstate the walk (4x for a ReLU stack at width 64).

    A walk's residuals about its line are correlated, so the textbook SE (independent errors)
    understates the spread of the slope from seed to seed; for n equally spaced steps with
    increments of variance s^2 the slope's variance is 6 s^2 / (5 n) (to O(1/n^2)), with s from
    the increments between consecutive ``layers`` (each over its gap: s^2 per layer)."""
    l = np.asarray(layers, dtype=np.float64)
    y = np.asarray(log10_norm, dtype=np.float64)
    gap = np.diff(l)
    if len(gap) < 2 or not np.all(gap > 0):
        return math.nan
    inc = np.diff(y) / np.sqrt(gap)  # each of variance s^2 under the walk
    s2 = float(np.var(inc - np.sum(np.diff(y)) / np.sum(gap) * np.sqrt(gap), ddof=1))
    return math.sqrt(6.0 * s2 / (5.0 * (l[-1] - l[0])))


def lyapunov_spectrum(stack: Stack, params, x: np.ndarray, k: int | None = None) -> np.ndarray:
    """Lyapunov exponents (natural log per layer) of the stack's Jacobians dh_{l+1}/dh_l at
    one input sample ``x`` (shape (N,) or (1, N)), by the QR (Benettin) method.

    The Jacobian of a plain layer is diag(phi'(z_l)) W_l; a residual group contributes
    I + alpha * (its layers' Jacobian product). Returns the top ``k`` exponents (all N by default),
    largest first. Batch norm is not supported (its Jacobian couples the samples of a batch).

    The layers run in float64: an exponent reads -inf where the Jacobians' product is 0 in float64
    (dead ReLUs, or units saturated so far that phi' underflows: tanh at |z| > ~370, ELU's negative
    side at z < ~-700), and a forward pass whose pre-activations leave the float range (ReLU at
    sigma_w = 1e160 reaches 1e320 in two layers) is refused with a ValueError naming the layer.
    """
    _check_stack(stack)
    if stack.batch_norm:
        raise ValueError("lyapunov_spectrum: batch_norm=True is not supported (the Jacobian couples samples)")
    if stack.has_input_layer:
        raise ValueError("lyapunov_spectrum: input_dim must equal width")
    N = stack.width
    if k is not None:
        spec._check_int("k", k, 1)
    k = N if k is None else int(k)
    if not 1 <= k <= N:
        raise ValueError(f"k must be in [1, {N}], got {k}")
    h = np.asarray(x, dtype=np.float64)
    if h.size != N:
        raise ValueError(f"x must be one sample of the stack's width {N} (shape ({N},) or (1, {N})), got shape {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError("x must be finite numbers")
    h = h.reshape(1, N)
    code, p = abi.ACT_CODE[stack.activation], stack.act_param
    V = np.eye(N, k)  # tangent vectors pushed through the layers since the last QR
    group_h, group_Q = h, V
    logs = np.zeros(k)
    z = np.empty_like(h)
    for l in range(stack.depth):
        W = params.W[l].astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            reference.dense_forward(z, h, W, params.b[l].astype(np.float64))
        if not np.all(np.isfinite(z)):
            raise ValueError(
                f"lyapunov_spectrum runs the layers in float64, and the pre-activations of layer {l} leave its range "
                f"(past 1.8e308: sigma_w={stack.gain:g}, sigma_b={stack.sigma_b:g}, activation={stack.activation!r}"
                f"{f', activation_param={stack.act_param:g}' if stack.activation_param is not None else ''}); its "
                "exponents need a stack whose forward pass stays below that")
        lp = params.slope[l] if stack.activation == "prelu" else p
        d = dphi(z, code, lp)[0]
        h = phi(z, code, lp)
        V = d[:, None] * (W @ V)
        if stack.residual:
            if (l + 1) % stack.residual:
                continue  # inside a group: the skip needs the group's linear map, no QR yet
            h = group_h + stack.residual_scale * h
            V = group_Q + stack.residual_scale * V
        Q, R = np.linalg.qr(V)
        diag = np.diag(R)
        logs += np.log(np.abs(diag))
        V = Q * np.sign(np.where(diag == 0, 1.0, diag))
        group_h, group_Q = h, V
    return np.sort(logs / stack.depth)[::-1]
