"""Theory to check simulations against: mean field and Lyapunov exponents (docs/design.md section 7).

Mean field (Poole et al. 2016, Schoenholz et al. 2017), for W ~ N(0, sigma_w^2 / N) and
b ~ N(0, sigma_b^2) at large width N::

    q_{l+1} = sigma_w^2 E_z[phi(sqrt(q_l) z)^2] + sigma_b^2        (the length map)
    chi_1   = sigma_w^2 E_z[phi'(sqrt(q*) z)^2]                     (at its fixed point q*)

chi_1 is the expected factor by which ||dL/dh||^2 changes per layer: chi_1 < 1 vanishes
(ordered phase), > 1 explodes (chaotic), = 1 is the edge of chaos. The gradient norm then
changes by ``0.5 * log10(chi_1)`` decades per layer, over a depth scale ``-1 / ln(chi_1)``.
Gaussian expectations use quadrature split at z = 0 (see ``_gauss``).

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
from scipy.optimize import brentq
from scipy.special import digamma

from gradbench import abi, reference, spec
from gradbench.activations import dphi, phi
from gradbench.spec import Stack

_GH_POINTS = 201


@functools.lru_cache(maxsize=1)
def _gauss():
    """Nodes and weights for E_z[f(z)], z ~ N(0, 1).

    Gauss-Hermite converges slowly for the kinks of the ReLU family, ELU and SELU at z = 0
    (201 Hermite points give chi_1 = 0.91 instead of 1 for ReLU at sigma_w^2 = 2), so the
    expectation is split at the kink: Gauss-Legendre on [-12, 0] and [0, 12] with the normal
    density as weight (the tails beyond 12 weigh < 1e-32). Smooth activations agree with
    Gauss-Hermite to 1e-14.
    """
    x, w = np.polynomial.legendre.leggauss(_GH_POINTS)
    half = 6.0 * (x + 1.0)  # [0, 12]
    z = np.concatenate([-half[::-1], half])
    wz = np.concatenate([w[::-1], w]) * 6.0 * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return z, wz / wz.sum()


def _phi(activation: str, param: float):
    code = abi.ACT_CODE[activation]
    return (lambda z: phi(z, code, param)), (lambda z: dphi(z, code, param))


def length_map(q: float, activation: str, sigma_w: float, sigma_b: float = 0.0, param: float | None = None) -> float:
    """One step of the length map q -> sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2."""
    param = _param(activation, param)
    phi, _ = _phi(activation, param)
    z, w = _gauss()
    return float(sigma_w**2 * np.sum(w * phi(math.sqrt(q) * z) ** 2) + sigma_b**2)


def _param(activation: str, param: float | None) -> float:
    spec.check_choice("activation", activation, spec.ACTIVATIONS)
    return float(spec.ACT_PARAM_DEFAULT.get(activation, 0.0) if param is None else param)


def fixed_point(activation: str, sigma_w: float, sigma_b: float = 0.0, param: float | None = None,
                q0: float = 1.0, tol: float = 1e-13, max_iter: int = 5_000) -> float:
    """The fixed point q* of the length map, by iteration from ``q0``.

    Returns 0 where lengths shrink to zero (e.g. tanh with sigma_b = 0 and sigma_w <= 1, where
    the approach is algebraic, q_l ~ 1/l, and is recognised once q < 1e-3 and still falling),
    and ``inf`` where they grow without bound (e.g. ReLU above sigma_w^2 = 2).
    """
    q = q0
    for _ in range(max_iter):
        q_new = length_map(q, activation, sigma_w, sigma_b, param)
        if not math.isfinite(q_new) or q_new > 1e12:
            return math.inf
        if abs(q_new - q) <= tol * max(1.0, q):
            return q_new
        if sigma_b == 0 and q_new < 1e-3 and q_new < q:
            return 0.0
        q = q_new
    return q


def chi1(activation: str, sigma_w: float, sigma_b: float = 0.0, param: float | None = None,
         q: float | None = None) -> float:
    """chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]: the per-layer factor of the squared gradient norm."""
    param = _param(activation, param)
    if q is None:
        q = fixed_point(activation, sigma_w, sigma_b, param)
    _, dphi = _phi(activation, param)
    z, w = _gauss()
    if activation in spec.HOMOGENEOUS and (q == 0 or not math.isfinite(q)):
        q = 1.0  # phi' of a homogeneous activation does not depend on the scale
    elif math.isinf(q):
        # lengths grow without bound (gelu, swish, elu, selu above their growth threshold):
        # the limit of phi'(sqrt(q) z) as q -> inf, evaluated at a scale where it has converged
        q = 1e300
    return float(sigma_w**2 * np.sum(w * dphi(math.sqrt(q) * z) ** 2))


@dataclass(frozen=True)
class MeanField:
    """Mean-field predictions for one (activation, sigma_w, sigma_b)."""

    activation: str
    sigma_w: float
    sigma_b: float
    q_star: float
    chi1: float

    @property
    def decades_per_layer(self) -> float:
        """Expected change of log10 ||dL/dh|| per layer going down the stack: 0.5 log10 chi_1."""
        return 0.5 * math.log10(self.chi1) if self.chi1 > 0 else -math.inf

    @property
    def depth_scale(self) -> float:
        """Layers over which the squared gradient norm changes by a factor e: 1 / |ln chi_1|."""
        if abs(self.chi1 - 1) < 1e-12:  # critical to rounding: no finite depth scale
            return math.inf
        return 1.0 / abs(math.log(self.chi1))

    @property
    def phase(self) -> str:
        if abs(self.chi1 - 1) < 1e-3:
            return "critical"
        return "ordered (vanishing)" if self.chi1 < 1 else "chaotic (exploding)"


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
    q = fixed_point(activation, sigma_w, sigma_b, param)
    return MeanField(activation, float(sigma_w), float(sigma_b), q, chi1(activation, sigma_w, sigma_b, param, q))


def critical_sigma_w(activation: str, sigma_b: float = 0.0, param: float | None = None,
                     bracket: tuple[float, float] = (0.05, 20.0)) -> float:
    """The sigma_w on the critical line chi_1(sigma_w, sigma_b) = 1 (Brent's method)."""
    f = lambda s: chi1(activation, s, sigma_b, param) - 1.0  # noqa: E731
    lo, hi = bracket
    if f(lo) * f(hi) > 0:
        raise ValueError(f"chi_1 - 1 does not change sign for sigma_w in {bracket} ({activation}, sigma_b={sigma_b})")
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
    return 0.5 * (math.log(2 * sigma_w**2 / width) + float(digamma(width / 2)))


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
