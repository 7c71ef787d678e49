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
_LN_Q_LARGE = math.log(1e12)  # past this q, an unbounded activation's length map is in its linear regime


@functools.lru_cache(maxsize=1)
def _legendre():
    return np.polynomial.legendre.leggauss(_NODES)


def _rho(z):
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _log_expect(f, log_s: float) -> float:
    """ln E_z[f(s z)], z ~ N(0, 1), for f >= 0 and the scale s = exp(log_s) (0 <= s <= inf).

    Gauss-Hermite converges slowly for the kinks of the ReLU family, ELU and SELU at z = 0
    (201 Hermite points give chi_1 = 0.91 instead of 1 for ReLU at sigma_w^2 = 2), so every panel
    starts at the kink: Gauss-Legendre with the normal density as weight, symmetric about 0.
    For s <= 40 / 12 one panel, [0, 12]. For larger s the activation's transition lies in
    |z| < 40 / s, which the nodes of one panel would miss once s passes ~10^3 (they put tanh'^2
    at sigma_w = 10^4 four decades low): it gets its own panel, integrated in x = s z over
    [0, 40] with the factor 1/s carried as a logarithm, and [40 / s, 12] a second. So the result
    holds for any s up to and past the largest float (bounded activations at sigma_w ~ 1e300).
    """
    x, w = _legendre()
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        if log_s <= math.log(_TRANSITION / _Z_MAX):
            s = math.exp(log_s)
            z = 0.5 * _Z_MAX * (x + 1.0)
            wz = 0.5 * _Z_MAX * w * _rho(z)
            return float(np.log(np.sum(wz * (f(s * z) + f(-s * z)))) - np.log(2 * np.sum(wz)))
        inv_s = math.exp(-log_s)
        s = math.exp(log_s) if log_s < 709.0 else math.inf
        xs = 0.5 * _TRANSITION * (x + 1.0)  # panel 1, in x = s z: the transition
        wx = 0.5 * _TRANSITION * w * _rho(xs * inv_s)
        a = _TRANSITION * inv_s  # panel 2, in z: the asymptotes
        z = a + 0.5 * (_Z_MAX - a) * (x + 1.0)
        wz = 0.5 * (_Z_MAX - a) * w * _rho(z)
        fz = f(s * z) + f(-s * z) if math.isfinite(s) else f(np.full_like(z, np.inf)) + f(np.full_like(z, -np.inf))
        value = np.logaddexp(np.log(np.sum(wx * (f(xs) + f(-xs)))) - log_s, np.log(np.sum(wz * fz)))
        norm = np.logaddexp(np.log(2 * np.sum(wx)) - log_s, np.log(2 * np.sum(wz)))
        return float(value - norm)


def _phi(activation: str, param: float):
    code = abi.ACT_CODE[activation]
    return (lambda z: phi(z, code, param)), (lambda z: dphi(z, code, param))


def _param(activation: str, param: float | None) -> float:
    spec.check_choice("activation", activation, spec.ACTIVATIONS)
    return float(spec.ACT_PARAM_DEFAULT.get(activation, 0.0) if param is None else param)


def _ln(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


def _exp(t: float) -> float:
    """exp(t), inf past the largest float (instead of math.exp's OverflowError)."""
    return math.exp(t) if t < 709.78 else math.inf


def _log_variance(t: float, activation: str, sigma_w: float, param: float) -> float:
    """ln(sigma_w^2 E[phi(sqrt(q) z)^2]) at t = ln q: the weights' part of the length map."""
    f, _ = _phi(activation, param)
    if activation in spec.HOMOGENEOUS:  # E[phi(s z)^2] = s^2 E[phi(z)^2], without overflowing s^2
        return 2 * _ln(sigma_w) + t + _log_expect(lambda z: f(z) ** 2, 0.0)
    return 2 * _ln(sigma_w) + _log_expect(lambda z: f(z) ** 2, 0.5 * t)


def length_map(q: float, activation: str, sigma_w: float, sigma_b: float = 0.0, param: float | None = None) -> float:
    """One step of the length map q -> sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2."""
    param = _param(activation, param)
    return _exp(float(np.logaddexp(_log_variance(_ln(q), activation, sigma_w, param), 2 * _ln(sigma_b))))


def _log_fixed_point(activation: str, sigma_w: float, sigma_b: float, param: float, q0: float = 1.0,
                     tol: float = 1e-13, max_iter: int = 5_000) -> float:
    """ln q* by iterating the length map in t = ln q (no overflow for any finite sigma_w)."""
    t, t_b = _ln(q0), 2 * _ln(sigma_b)
    if activation in spec.HOMOGENEOUS:  # q_{l+1} = r q_l + sigma_b^2: closed form
        ln_r = _log_variance(0.0, activation, sigma_w, param)
        if abs(ln_r) < 1e-12:  # r = 1 to rounding: q stays (sigma_b = 0) or grows by sigma_b^2 a layer
            return t if sigma_b == 0 else math.inf
        if ln_r > 0:
            return math.inf
        return -math.inf if sigma_b == 0 else t_b - math.log(-math.expm1(ln_r))  # sigma_b^2 / (1 - r)
    phi0_zero = _phi(activation, param)[0](0.0) == 0
    for _ in range(max_iter):
        t_w = _log_variance(t, activation, sigma_w, param)
        t_new = float(np.logaddexp(t_w, t_b))
        if math.isnan(t_new) or t_new == math.inf:
            return math.inf
        if activation not in _BOUNDED and t_new > _LN_Q_LARGE and t_w > t:
            return math.inf  # linear regime and the weights alone enlarge q: it grows without bound
        if max(t, t_new) < 700.0:
            if abs(_exp(t_new) - _exp(t)) <= tol * max(1.0, _exp(t)):
                return t_new
        elif abs(t_new - t) <= tol:
            return t_new
        if sigma_b == 0 and phi0_zero and t_new < math.log(1e-3) and t_new < t:
            return -math.inf  # (with phi(0) != 0, sigmoid, q stays near sigma_w^2 phi(0)^2 instead)
        t = t_new
    return t


def fixed_point(activation: str, sigma_w: float, sigma_b: float = 0.0, param: float | None = None,
                q0: float = 1.0, tol: float = 1e-13, max_iter: int = 5_000) -> float:
    """The fixed point q* of the length map, by iteration from ``q0``.

    Returns 0 where lengths shrink to zero (e.g. tanh with sigma_b = 0 and sigma_w <= 1, where
    the approach is algebraic, q_l ~ 1/l, and is recognised once q < 1e-3 and still falling),
    and ``inf`` where they grow without bound (e.g. ReLU above sigma_w^2 = 2; recognised once
    q > 1e12 and the weights alone still enlarge it). A bounded activation (tanh, sigmoid) has
    q* <= sigma_w^2 + sigma_b^2, which reads ``inf`` only past the largest float (sigma_w > ~1e154);
    :func:`mean_field` keeps its logarithm.
    """
    param = _param(activation, param)
    return _exp(_log_fixed_point(activation, sigma_w, sigma_b, param, q0, tol, max_iter))


def _log_chi1(activation: str, sigma_w: float, param: float, t: float) -> float:
    """ln chi_1 at t = ln q."""
    _, df = _phi(activation, param)
    if activation in spec.HOMOGENEOUS and not math.isfinite(t):
        t = 0.0  # phi' of a homogeneous activation does not depend on the scale
    elif t == math.inf:
        # lengths grow without bound (gelu, swish, elu, selu above their growth threshold):
        # the limit of phi'(sqrt(q) z) as q -> inf, evaluated at a scale where it has converged
        t = math.log(1e300)
    elif t == -math.inf:
        # lengths shrink to zero: the limit q -> 0+, where a kink at 0 (SELU) counts both its sides
        t = math.log(1e-300)
    return 2 * _ln(sigma_w) + _log_expect(lambda z: df(z) ** 2, 0.5 * t)


def chi1(activation: str, sigma_w: float, sigma_b: float = 0.0, param: float | None = None,
         q: float | None = None) -> float:
    """chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]: the per-layer factor of the squared gradient norm.

    0 or ``inf`` where chi_1 itself under- or overflows a float (sigma_w ~ 1e-200 or 1e300);
    :func:`mean_field` keeps its logarithm.
    """
    param = _param(activation, param)
    t = _log_fixed_point(activation, sigma_w, sigma_b, param) if q is None else _ln(q)
    return _exp(_log_chi1(activation, sigma_w, param, t))


@dataclass(frozen=True)
class MeanField:
    """Mean-field predictions for one (activation, sigma_w, sigma_b).

    ``q_star`` and ``chi1`` are floats, 0 or ``inf`` where they under- or overflow (sigma_w of
    1e-200 or 1e200); ``log10_q_star`` and ``log10_chi1`` hold them at any sigma_w, and every
    derived quantity is computed from the logarithms.
    """

    activation: str
    sigma_w: float
    sigma_b: float
    q_star: float
    chi1: float
    log10_q_star: float = math.nan
    log10_chi1: float = math.nan

    def __post_init__(self):
        for name, value in (("log10_q_star", self.q_star), ("log10_chi1", self.chi1)):
            if math.isnan(getattr(self, name)):  # built from the floats alone
                object.__setattr__(self, name, math.log10(value) if value > 0 else -math.inf)

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
    def phase(self) -> str:
        ln_chi = self.log10_chi1 * math.log(10)
        if abs(ln_chi) < 0.01 and abs(math.expm1(ln_chi)) < 1e-3:
            return "critical"
        return "ordered (vanishing)" if ln_chi < 0 else "chaotic (exploding)"


def mean_field(stack_or_activation, sigma_w: float | None = None, sigma_b: float | None = None,
               param: float | None = None) -> MeanField:
    """Mean-field predictions for a :class:`Stack` (its gain and sigma_b) or an activation name."""
    if isinstance(stack_or_activation, Stack):
        s = stack_or_activation
        activation, param = s.activation, s.act_param
        sigma_w = s.gain if sigma_w is None else sigma_w
        sigma_b = s.sigma_b if sigma_b is None else sigma_b
    else:
        activation = stack_or_activation
        if sigma_w is None:
            raise ValueError("sigma_w is required when an activation name is given")
        sigma_b = 0.0 if sigma_b is None else sigma_b
    param = _param(activation, param)
    t = _log_fixed_point(activation, sigma_w, sigma_b, param)
    ln_chi = _log_chi1(activation, sigma_w, param, t)
    ln10 = math.log(10)
    return MeanField(activation, float(sigma_w), float(sigma_b), _exp(t), _exp(ln_chi), t / ln10, ln_chi / ln10)


def critical_sigma_w(activation: str, sigma_b: float = 0.0, param: float | None = None,
                     bracket: tuple[float, float] = (0.05, 20.0)) -> float:
    """The sigma_w on the critical line chi_1(sigma_w, sigma_b) = 1 (Brent's method)."""
    f = lambda s: chi1(activation, s, sigma_b, param) - 1.0  # noqa: E731
    lo, hi = bracket
    if f(lo) * f(hi) > 0:
        raise ValueError(f"chi_1 - 1 does not change sign for sigma_w in {bracket} ({activation}, sigma_b={sigma_b})")
    from scipy.optimize import brentq  # SciPy is imported where it is used (CLI start-up time)

    root = float(brentq(f, lo, hi, xtol=1e-12))
    below, above = chi1(activation, root * (1 - 1e-6), sigma_b, param), chi1(activation, root * (1 + 1e-6), sigma_b, param)
    if abs(above - below) > 1e-2:
        q_lo = fixed_point(activation, root * (1 - 1e-6), sigma_b, param)
        q_hi = fixed_point(activation, root * (1 + 1e-6), sigma_b, param)
        raise ValueError(
            f"{activation} at sigma_b={sigma_b:g} has no edge of chaos: at sigma_w = {root:.6g} the fixed point q* "
            f"jumps from {q_lo:.3g} to {q_hi:.3g} (the forward pass either dies out or grows without bound) and "
            f"chi_1 jumps from {below:.4g} to {above:.4g}, past 1; mean field predicts no critical line there"
        )
    return root


def newman_lambda1(width: int, sigma_w: float = 1.0) -> float:
    """Top Lyapunov exponent (natural log, per layer) of a product of N x N Gaussian matrices
    with entry variance sigma_w^2 / N (Newman 1986)."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    from scipy.special import digamma

    return 0.5 * (math.log(2 / width) + 2 * math.log(sigma_w) + float(digamma(width / 2)))


def lyapunov_spectrum(stack: Stack, params, x: np.ndarray, k: int | None = None) -> np.ndarray:
    """Lyapunov exponents (natural log per layer) of the stack's Jacobians dh_{l+1}/dh_l at
    one input sample ``x`` (shape (N,) or (1, N)), by the QR (Benettin) method.

    The Jacobian of a plain layer is diag(phi'(z_l)) W_l; a residual group contributes
    I + alpha * (its layers' Jacobian product). Returns the top ``k`` exponents (all N by default),
    largest first. Batch norm is not supported (its Jacobian couples the samples of a batch).
    """
    if stack.batch_norm:
        raise ValueError("lyapunov_spectrum: batch_norm=True is not supported (the Jacobian couples samples)")
    if stack.has_input_layer:
        raise ValueError("lyapunov_spectrum: input_dim must equal width")
    N = stack.width
    k = N if k is None else int(k)
    if not 1 <= k <= N:
        raise ValueError(f"k must be in [1, {N}], got {k}")
    h = np.asarray(x, dtype=np.float64).reshape(1, N)
    code, p = abi.ACT_CODE[stack.activation], stack.act_param
    V = np.eye(N, k)  # tangent vectors pushed through the layers since the last QR
    group_h, group_Q = h, V
    logs = np.zeros(k)
    z = np.empty_like(h)
    for l in range(stack.depth):
        W = params.W[l].astype(np.float64)
        reference.dense_forward(z, h, W, params.b[l].astype(np.float64))
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
