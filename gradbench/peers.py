"""Peers: the same stack through the plain NumPy loop a user would write, PyTorch (eager
autograd) and JAX (jit + lax.scan).

Each peer computes, on the same weights and input as gradbench, the quantities that a gradbench
run reports and that a benchmark compares:

    loss          0.5 * ||h_L||^2                 (``sum_squares``)
    grad_norm[l]  ||dL/dW_l||_F                   for l = 0..L-1

by plain framework autograd: no rescaling, so a peer is only comparable where nothing under- or
overflows the dtype (see :func:`representable`). Gradients of b (and of gamma and beta under
batch norm) are computed too, as in training, so a peer does the same work as gradbench. :func:`check` compares a
peer's numbers with the NumPy reference; benchmarks call it before timing a peer.

``numpy-loop`` is the code a user writes instead of gradbench: forward ``h = phi(h @ W.T + b)``
storing every h, backward ``g *= phi'(...)`` from the stored values, ``dW = g.T @ h_prev``,
``||dW||`` (a float64 sum of squares), ``g = g @ W``; no exact rescaling, no statistics. It is always available
and it is the baseline that matters.

Peers cover what the benchmark cases use: tanh, sigmoid, relu, identity, elu, selu, swish and
gelu (the frameworks' own functions: ``F.elu``/``jax.nn.elu`` with the stack's alpha, ``selu``,
``silu``, the exact ``gelu``; the plain loop's GELU with ``scipy.special.erf``); batch norm (train
mode, biased batch variance) and residual groups on or off; ``sum_squares``; no input layer, no
clipping. torch and JAX are optional (``pip install .[peers]``): :func:`peer_status` says why
one is missing.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from gradbench.activations import SELU_ALPHA, SELU_LAMBDA
from gradbench.params import Params
from gradbench.spec import Stack

PEERS = ("numpy-loop", "torch", "jax")
ACTIVATIONS = ("identity", "tanh", "sigmoid", "relu", "elu", "selu", "swish", "gelu")


@dataclass(frozen=True)
class PeerResult:
    """What one peer run gives: the loss and ||dL/dW_l||_F per layer (float64 copies)."""

    loss: float
    grad_norm: np.ndarray


# ------------------------------------------------------------------ availability
@functools.lru_cache(maxsize=None)
def _import(name: str):
    if name == "numpy-loop":
        return np, None
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        return None, f"{name} is not installed ({exc}); pip install '.[peers]'"
    if name == "jax":
        # float64 needs x64; float32 arrays stay float32 because every array gets its dtype.
        module.config.update("jax_enable_x64", True)
    return module, None


def peer_status() -> dict[str, str]:
    """Every peer with "available" or the reason it is not."""
    return {name: _import(name)[1] or "available" for name in PEERS}


def peers() -> list[str]:
    """Names of the peers installed here."""
    return [name for name in PEERS if _import(name)[0] is not None]


def unsupported(stack: Stack) -> str | None:
    """Why the peers cannot run ``stack`` (None when they can)."""
    if stack.activation not in ACTIVATIONS:
        return f"peers implement {', '.join(ACTIVATIONS)}, not {stack.activation}"
    if stack.has_head or stack.has_input_layer:
        return "peers implement loss='sum_squares' without input layer only"
    if stack.clip is not None:
        return "peers do not clip"
    return None


def representable(stack: Stack, reference) -> str | None:
    """Why a plain (unrescaled) run cannot reproduce ``reference`` (None when it can).

    Plain arithmetic agrees with the exact chain only while every backpropagated signal, every
    ||dL/dW_l|| and the activations stay in the normal range of the dtype, with a margin of
    2^24 for the rounding of subnormal partial products.
    """
    info = np.finfo(stack.np_dtype)
    lo, hi = np.log10(float(info.tiny)) + 24 * np.log10(2.0), np.log10(float(info.max)) - 3
    for what, value in (("||dL/dW_l||", reference.grad_norm), ("||dL/dh_l||", reference.signal_norm),
                        ("std of h_l", reference.act_std)):
        lg = value.log10()
        lg = lg[np.isfinite(lg)]
        if lg.size and (lg.min() < lo or lg.max() > hi):
            return (f"plain {stack.dtype} cannot hold this case: {what} spans 10^{lg.min():.0f} .. "
                    f"10^{lg.max():.0f}, outside [10^{lo:.0f}, 10^{hi:.0f}]")
    if not np.isfinite(reference.loss):
        return "the loss overflows"
    sumsq = (getattr(reference, "extras", None) or {}).get("bn_sumsq_log10")
    if sumsq is not None and np.max(sumsq, initial=-np.inf) > hi:
        return (f"plain {stack.dtype} cannot hold this case: batch norm's sum of squared deviations reaches "
                f"10^{np.max(sumsq):.0f}, beyond 10^{hi:.0f}")
    return None


def prepare(name: str, stack: Stack, params: Params, x: np.ndarray, **options) -> Callable[[], PeerResult]:
    """A function that runs peer ``name`` once on (stack, params, x) and returns a PeerResult.

    Conversion of the weights to the framework's arrays and (for JAX) compilation happen here
    or on the first call, so a benchmark times only the forward and backward pass after one
    warm-up call. ``options``: ``flush_denormal`` (torch: run with denormals flushed to zero).
    """
    reason = unsupported(stack)
    if reason:
        raise ValueError(reason)
    module, why = _import(name) if name in PEERS else (None, f"unknown peer {name!r}; peers are {PEERS}")
    if module is None:
        raise RuntimeError(why)
    return {"numpy-loop": _prepare_numpy_loop, "torch": _prepare_torch,
            "jax": _prepare_jax}[name](module, stack, params, x, **options)


# ------------------------------------------------------------------ the plain NumPy loop
def _prepare_numpy_loop(np_, stack: Stack, params: Params, x: np.ndarray):
    """The loop a user writes (module docstring): every h kept, phi' from the stored values."""
    act = stack.activation
    L, k, alpha, eps = stack.depth, stack.residual, stack.residual_scale, stack.bn_eps
    bn = stack.batch_norm
    W, b, gamma, beta = params.W, params.b, params.gamma, params.beta

    lam, alpha_e = {"elu": (1.0, stack.act_param), "selu": (SELU_LAMBDA, SELU_ALPHA)}.get(act, (1.0, 0.0))
    if act == "gelu":
        from scipy.special import erf  # what a user would write GELU with (NumPy has no erf)

    def phi(z):
        if act == "tanh":
            return np.tanh(z)
        if act == "sigmoid":
            return 1 / (1 + np.exp(-z))
        if act == "relu":
            return np.maximum(z, 0)
        if act in ("elu", "selu"):
            return lam * np.where(z > 0, z, alpha_e * np.expm1(np.minimum(z, 0)))
        if act == "swish":
            return z / (1 + np.exp(-z))
        if act == "gelu":
            return 0.5 * z * (1 + erf(z / np.sqrt(2)))
        return z

    def dphi(a, z):  # from the stored output a (tanh, sigmoid) or pre-activation z (the others)
        if act == "tanh":
            return 1 - a * a
        if act == "sigmoid":
            return a * (1 - a)
        if act == "relu":
            return z > 0
        if act in ("elu", "selu"):
            return lam * np.where(z > 0, 1.0, alpha_e * np.exp(np.minimum(z, 0)))
        if act == "swish":
            s = 1 / (1 + np.exp(-z))
            return s * (1 + z * (1 - s))
        if act == "gelu":
            return 0.5 * (1 + erf(z / np.sqrt(2))) + z * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
        return 1

    def run() -> PeerResult:
        hs, zs, xs, rs, skips = [x], [], [], [], []
        h = skip = x
        for l in range(L):
            if k and l % k == 0:
                skip = h
            z = h @ W[l].T + b[l]
            zs.append(z)
            if bn:
                mu = z.mean(axis=0)
                r = 1 / np.sqrt(z.var(axis=0) + eps)
                xh = (z - mu) * r
                xs.append(xh)
                rs.append(r)
                z = gamma[l] * xh + beta[l]
            a = phi(z)
            skips.append(a)
            h = skip + alpha * a if k and (l + 1) % k == 0 else a
            hs.append(h)
        loss = 0.5 * float(np.sum(h * h))
        g, norms, g_skip = h.copy(), np.empty(L), None
        for l in range(L - 1, -1, -1):
            if k and (l + 1) % k == 0:
                g_skip, g = g, alpha * g
            pre = gamma[l] * xs[l] + beta[l] if bn else zs[l]
            g = g * dphi(skips[l], pre)
            if bn:  # train-mode batch norm backward
                g = gamma[l] * rs[l] * (g - g.mean(axis=0) - xs[l] * (g * xs[l]).mean(axis=0))
            dW = g.T @ hs[l]
            # a float64 sum of squares, as gradbench's and the other peers': in float32 a square of
            # 1e-25 is already 0 and the plain chain would look worse than it is
            norms[l] = np.sqrt(np.sum(np.square(dW, dtype=np.float64)))
            g = g @ W[l]
            if k and l % k == 0:
                g = g + g_skip
        return PeerResult(loss, norms.astype(np.float64))

    return run


# ------------------------------------------------------------------ PyTorch, eager autograd
def _prepare_torch(torch, stack: Stack, params: Params, x: np.ndarray, *, flush_denormal: bool = False):
    F = torch.nn.functional
    act = {"identity": lambda z: z, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu,
           "elu": lambda z: F.elu(z, alpha=stack.act_param), "selu": F.selu, "swish": F.silu,
           "gelu": F.gelu}[stack.activation]
    L, k, alpha, eps = stack.depth, stack.residual, stack.residual_scale, stack.bn_eps
    bn = stack.batch_norm

    def leaves(a):
        # one leaf per layer: indexing one (L, ...) leaf would make autograd scatter every layer's
        # gradient into a full (L, ...) zero tensor, O(L^2) work that no one would write.
        return [t.requires_grad_() for t in torch.from_numpy(a.copy()).unbind(0)]

    W, b = leaves(params.W), leaves(params.b)
    gamma, beta = (leaves(params.gamma), leaves(params.beta)) if bn else ([], [])
    inputs = W + b + gamma + beta
    h0 = torch.from_numpy(x.copy())

    def forward_backward():
        h, skip = h0, h0
        for l in range(L):
            if k and l % k == 0:
                skip = h
            z = F.linear(h, W[l], b[l])
            if bn:
                z = F.batch_norm(z, None, None, gamma[l], beta[l], training=True, eps=eps)
            h = act(z)
            if k and (l + 1) % k == 0:
                h = skip + alpha * h
        loss = 0.5 * torch.sum(h * h)
        grads = torch.autograd.grad(loss, inputs)
        # float64 sums of squares, as gradbench's: a float32 square of 1e-25 is already 0
        norms = torch.linalg.vector_norm(torch.stack(grads[:L]), dim=(1, 2), dtype=torch.float64)
        return loss, norms

    def run() -> PeerResult:
        if flush_denormal:
            torch.set_flush_denormal(True)
        try:
            with torch.enable_grad():
                loss, norms = forward_backward()
        finally:
            if flush_denormal:
                torch.set_flush_denormal(False)
        return PeerResult(float(loss.detach()), norms.detach().numpy().astype(np.float64))

    return run


# ------------------------------------------------------------------ JAX, jit + lax.scan
@functools.lru_cache(maxsize=32)
def _jax_step(activation: str, L: int, N: int, k: int, residual: bool, alpha: float, bn: bool,
              eps: float, dtype: str, act_param: float = 0.0):
    """The jitted forward + backward of one stack configuration (cached: jit then reuses its
    compilation for the same shapes)."""
    jax, _ = _import("jax")
    jnp, lax = jax.numpy, jax.lax
    act = {"identity": lambda z: z, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu,
           "elu": lambda z: jax.nn.elu(z, act_param), "selu": jax.nn.selu, "swish": jax.nn.silu,
           "gelu": lambda z: jax.nn.gelu(z, approximate=False)}[activation]
    dt = np.dtype(dtype)

    def layer(h, W, b, g, be):
        z = h @ W.T + b
        if bn:
            mean = jnp.mean(z, axis=0)
            var = jnp.mean(jnp.square(z - mean), axis=0)
            z = g * (z - mean) * lax.rsqrt(var + jnp.asarray(eps, dt)) + be
        return act(z)

    def group(h, p):
        W, b, g, be = p
        a = h
        for j in range(k):
            a = layer(a, W[j], b[j], g[j], be[j])
        return (h + jnp.asarray(alpha, dt) * a if residual else a), None

    def loss_fn(P, h0):
        h, _ = lax.scan(group, h0, P)
        return 0.5 * jnp.sum(h * h)

    @jax.jit
    def step(P, h0):
        loss, grads = jax.value_and_grad(loss_fn)(P, h0)
        dW = grads[0].reshape(L, N, N)
        # float64 sums of squares, as gradbench's: a float32 square of 1e-25 is already 0
        return loss, jnp.sqrt(jnp.sum(jnp.square(dW.astype(jnp.float64)), axis=(1, 2)))

    return step


def _prepare_jax(jax, stack: Stack, params: Params, x: np.ndarray):
    jnp = jax.numpy
    L = stack.depth
    k = stack.residual or 1  # scan over groups of k layers; the k layers of a group are unrolled
    step = _jax_step(stack.activation, L, stack.width, k, bool(stack.residual), float(stack.residual_scale),
                     bool(stack.batch_norm), float(stack.bn_eps), stack.dtype, stack.act_param)
    dt = stack.np_dtype

    def stacked(a):
        return jax.device_put(jnp.asarray(a.reshape((L // k, k) + a.shape[1:]), dtype=dt))

    P = tuple(stacked(a) for a in (params.W, params.b, params.gamma, params.beta))
    h0 = jax.device_put(jnp.asarray(x, dtype=dt))

    def run() -> PeerResult:
        loss, norms = step(P, h0)
        loss.block_until_ready()
        norms.block_until_ready()
        return PeerResult(float(loss), np.asarray(norms, dtype=np.float64))

    return run


# ------------------------------------------------------------------ checking against the reference
# Relative tolerances of a peer against the reference, by dtype: the loss and ||dL/dW_l||.
# They absorb different summation orders (BLAS blocking) amplified through the depth.
RTOL = {"float64": 1e-7, "float32": 2e-2}


def check(name: str, stack: Stack, got: PeerResult, reference, rtol: float | None = None,
          partial: bool = False) -> None:
    """Raise AssertionError unless ``got`` matches the gradbench ``reference`` Result.

    ``partial``: the plain chain is known to underflow (a subnormal demonstration); compare only
    the layers whose reference ||dL/dW_l|| is at least 2^24 * the dtype's smallest normal, and
    require the others to be below that bound (flushed or subnormal), as plain arithmetic gives.
    """
    rtol = RTOL[stack.dtype] if rtol is None else rtol
    ref_loss = float(reference.loss)
    if not np.isclose(got.loss, ref_loss, rtol=rtol, atol=0):
        raise AssertionError(f"{name}: loss {got.loss!r} != reference {ref_loss!r} (rtol {rtol})")
    ref_gn = reference.grad_norm.log10()
    bound = np.log10(float(np.finfo(stack.np_dtype).tiny)) + 24 * np.log10(2.0)
    if got.grad_norm.shape != ref_gn.shape:
        raise AssertionError(f"{name}: grad_norm has shape {got.grad_norm.shape}, expected {ref_gn.shape}")
    mask = ref_gn >= bound if partial else np.ones(ref_gn.shape, bool)
    if partial:
        below = np.flatnonzero(~mask & (got.grad_norm > 10.0 ** (bound + 1)))
        if below.size:
            l = int(below[0])
            raise AssertionError(f"{name}: layer {l} has ||dL/dW|| = {got.grad_norm[l]:.3e} but the "
                                 f"exact value is 10^{ref_gn[l]:.1f}, below the float range")
    with np.errstate(divide="ignore"):
        got_lg = np.log10(got.grad_norm)
    # compare in log10: rel. error r is |d log10| ~ r / ln 10
    err = np.abs(got_lg - ref_gn)
    err[~mask] = 0.0
    bad = np.flatnonzero(~(err <= rtol / np.log(10)) & mask)
    if bad.size:
        l = int(bad[0])
        raise AssertionError(
            f"{name}: ||dL/dW_l|| differs from the reference at {bad.size} layers, first l={l}: "
            f"got {got.grad_norm[l]:.9e}, reference 10^{ref_gn[l]:.9f} (rtol {rtol})"
        )
