"""The activations, written once in NumPy: ``phi`` and its derivative ``dphi`` (the reference).

One name per concept in every language: ``phi``/``dphi`` here (NumPy), ``phi``/``dphi`` in
``kernels/activations.py`` (Numba), ``gb_phi_f64``/``gb_dphi_f64`` and ``gb_phi_f32``/
``gb_dphi_f32`` in ``csrc/activations.h`` (C, token-pasted from one macro). ``grep -rn dphi``
finds all of them. Activation codes are positions in :data:`gradbench.spec.ACTIVATIONS`.

Formulas (``p`` is the activation's parameter: leaky slope, PReLU slope, ELU alpha)::

    identity  z                                   1
    sigmoid   1 / (1 + exp(-z))                   s (1 - s)
    tanh      tanh z                              1 - tanh(z)^2
    relu      max(z, 0)                           1 if z > 0 else 0
    leaky / prelu   z if z > 0 else p z           1 if z > 0 else p
    elu       z if z > 0 else p expm1(z)          1 if z > 0 else p exp(z)
    selu      lambda * elu with alpha_selu        lambda (1 if z > 0 else alpha exp(z))
    swish     z s(z)                              s + z s (1 - s)
    gelu      z Phi(z) = z (1 + erf(z/sqrt2)) / 2   Phi(z) + z phi_N(z)

At the kink of the ReLU family the left derivative is used (z <= 0). NaN stays NaN in phi so
that non-finite values are reported.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy.special import erf

from gradbench.spec import ACTIVATIONS

SELU_LAMBDA = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)), written so that neither branch overflows; keeps z's dtype."""
    z = np.asarray(z)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype)


def phi(z: np.ndarray, code: int, param: float) -> np.ndarray:
    """phi(z) for activation ``code`` (a position in :data:`gradbench.spec.ACTIVATIONS`)."""
    name = ACTIVATIONS[code]
    with np.errstate(over="ignore", invalid="ignore"):
        if name == "identity":
            return z.copy()
        if name == "sigmoid":
            return sigmoid(z)
        if name == "tanh":
            return np.tanh(z)
        if name == "relu":  # NaN stays NaN so that non-finite values are reported
            return np.where((z > 0) | np.isnan(z), z, 0.0).astype(z.dtype)
        if name in ("leaky_relu", "prelu"):
            return np.where(z > 0, z, param * z).astype(z.dtype)
        if name == "elu":
            return np.where(z > 0, z, param * np.expm1(np.minimum(z, 0))).astype(z.dtype)
        if name == "selu":
            neg = SELU_ALPHA * np.expm1(np.minimum(z, 0))
            return (SELU_LAMBDA * np.where(z > 0, z, neg)).astype(z.dtype)
        if name == "swish":
            return z * sigmoid(z)
        if name == "gelu":
            return (0.5 * z * (1.0 + erf(z * np.sqrt(0.5)))).astype(z.dtype)
    raise ValueError(f"unknown activation code {code}")


def dphi(z: np.ndarray, code: int, param: float) -> np.ndarray:
    """phi'(z); at the kink of the ReLU family the left derivative (z <= 0) is used."""
    name = ACTIVATIONS[code]
    with np.errstate(over="ignore", invalid="ignore"):
        if name == "identity":
            return np.ones_like(z)
        if name == "sigmoid":
            s = sigmoid(z)
            return s * (1 - s)
        if name == "tanh":
            t = np.tanh(z)
            return 1 - t * t
        if name == "relu":
            return (z > 0).astype(z.dtype)
        if name in ("leaky_relu", "prelu"):
            return np.where(z > 0, 1.0, param).astype(z.dtype)
        if name == "elu":
            return np.where(z > 0, 1.0, param * np.exp(np.minimum(z, 0))).astype(z.dtype)
        if name == "selu":
            return (SELU_LAMBDA * np.where(z > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(z, 0)))).astype(z.dtype)
        if name == "swish":
            s = sigmoid(z)
            return s + z * s * (1 - s)
        if name == "gelu":
            cdf = 0.5 * (1.0 + erf(z * np.sqrt(0.5)))
            pdf = np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
            return (cdf + z * pdf).astype(z.dtype)
    raise ValueError(f"unknown activation code {code}")


# ------------------------------------------------------------------ max phi'
def _swish_argmax() -> float:
    """The z where swish' peaks: the root of swish'' = s(1-s)(2 + z(1 - 2s)), i.e. z tanh(z/2) = 2."""
    z = 2.4
    for _ in range(50):  # Newton on f(z) = z tanh(z/2) - 2, converges in a few steps
        t = math.tanh(z / 2)
        step = (z * t - 2) / (t + z * (1 - t * t) / 2)
        z -= step
        if abs(step) < 1e-16:
            break
    return z


@functools.lru_cache(maxsize=64)
def dphi_max(activation: str, param: float) -> float:
    """max_z phi'(z) in closed form: the scale of the saturation threshold 0.01 * max phi'.

    gelu: gelu'' = phi_N(z) (2 - z^2) vanishes at z = sqrt 2, so max = Phi(sqrt 2) + sqrt 2
    phi_N(sqrt 2); swish: at the root of z tanh(z/2) = 2 (z = 2.3994...), max = s (1 + z (1 - s)).
    """
    if activation == "sigmoid":
        return 0.25
    if activation in ("identity", "tanh", "relu"):
        return 1.0
    if activation in ("leaky_relu", "prelu"):
        return max(1.0, abs(param))
    if activation == "elu":
        return max(1.0, param)
    if activation == "selu":
        return SELU_LAMBDA * SELU_ALPHA
    if activation == "gelu":
        r = math.sqrt(2.0)
        return 0.5 * (1.0 + math.erf(1.0)) + r * math.exp(-1.0) / math.sqrt(2 * math.pi)
    if activation == "swish":
        z = _swish_argmax()
        s = 1.0 / (1.0 + math.exp(-z))
        return s * (1.0 + z * (1.0 - s))
    raise ValueError(f"unknown activation {activation!r}")
