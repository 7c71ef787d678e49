"""Parameters of a stack: created once in Python from a seeded generator, shared by every backend.

All arrays are C-contiguous, of the stack's dtype, stacked per layer::

    W      (L, N, N)   b (L, N)   gamma (L, N)   beta (L, N)   slope (L,)
    W_in   (N, D)      b_in (N,)                  only when input_dim != width
    W_out  (O, N)      b_out (O,)                 only with a head (loss other than sum_squares)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from gradbench.spec import Stack

LAYER_FIELDS = ("W", "b", "gamma", "beta", "slope")
EXTRA_FIELDS = ("W_in", "b_in", "W_out", "b_out")


@dataclass(frozen=True, eq=False)
class Params:
    """The parameters of a :class:`~gradbench.Stack` (see the module docstring for shapes)."""

    W: np.ndarray
    b: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    slope: np.ndarray
    W_in: np.ndarray | None = None
    b_in: np.ndarray | None = None
    W_out: np.ndarray | None = None
    b_out: np.ndarray | None = None

    def items(self):
        """(name, array) for every array present."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                yield f.name, value

    def copy(self) -> "Params":
        return Params(**{name: a.copy() for name, a in self.items()})


def expected_shapes(stack: Stack) -> dict[str, tuple[int, ...] | None]:
    L, N, D, O = stack.depth, stack.width, stack.d_in, stack.output_dim
    return {
        "W": (L, N, N),
        "b": (L, N),
        "gamma": (L, N),
        "beta": (L, N),
        "slope": (L,),
        "W_in": (N, D) if stack.has_input_layer else None,
        "b_in": (N,) if stack.has_input_layer else None,
        "W_out": (O, N) if stack.has_head else None,
        "b_out": (O,) if stack.has_head else None,
    }


def _weights(rng: np.random.Generator, init: str, gain: float, shape, fan_in: int, fan_out: int):
    """Weights (..., fan_out, fan_in) of one scheme: variance gain**2 / fan_in (xavier: 2/(in+out))."""
    if init.startswith("xavier"):
        std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    else:
        std = gain / math.sqrt(fan_in)
    if init.endswith("_uniform"):
        bound = std * math.sqrt(3.0)
        return rng.uniform(-bound, bound, size=shape)
    if init == "orthogonal":
        return gain * _orthogonal(rng, shape)
    return std * rng.standard_normal(shape)


def _orthogonal(rng: np.random.Generator, shape) -> np.ndarray:
    """(Semi-)orthogonal matrices by QR of a Gaussian with the sign of diag(R) fixed."""
    *lead, rows, cols = shape
    g = rng.standard_normal((*lead, max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
    return q if rows >= cols else np.swapaxes(q, -1, -2)


def init_params(stack: Stack, seed: int | np.random.Generator = 0) -> Params:
    """Draw the parameters of ``stack`` from ``numpy.random.default_rng(seed)``.

    W_l ~ the stack's init scheme (variance ``sigma_w**2 / fan_in``, see :class:`Stack`),
    b_l ~ N(0, sigma_b^2), gamma = 1, beta = 0, PReLU slopes = ``activation_param``.
    The input layer and the head (when present) use the same scheme. Draw order: W, b,
    W_in, b_in, W_out, b_out.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    L, N, D, O = stack.depth, stack.width, stack.d_in, stack.output_dim
    dt = stack.np_dtype
    gain = stack.gain

    def arr(a):
        return np.ascontiguousarray(a, dtype=dt)

    def bias(shape):
        return stack.sigma_b * rng.standard_normal(shape) if stack.sigma_b else np.zeros(shape)

    p = dict(
        W=arr(_weights(rng, stack.init, gain, (L, N, N), N, N)),
        b=arr(bias((L, N))),
        gamma=arr(np.ones((L, N))),
        beta=arr(np.zeros((L, N))),
        slope=arr(np.full(L, stack.act_param if stack.activation == "prelu" else 0.0)),
    )
    if stack.has_input_layer:
        p["W_in"] = arr(_weights(rng, stack.init, gain, (N, D), D, N))
        p["b_in"] = arr(bias(N))
    if stack.has_head:
        p["W_out"] = arr(_weights(rng, stack.init, gain, (O, N), N, O))
        p["b_out"] = arr(bias(O))
    return Params(**p)


def gaussian_input(stack: Stack, batch: int, seed: int | np.random.Generator = 1) -> np.ndarray:
    """A standard normal input x of shape (batch, input_dim) in the stack's dtype."""
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return np.ascontiguousarray(rng.standard_normal((batch, stack.d_in)), dtype=stack.np_dtype)
