"""Greedy layer-wise pretraining: every layer in turn as an autoencoder, then fine-tuning.

The "multi-level hierarchy" remedy of the lecture notes (Hinton et al. 2006, Bengio et al.
2007): before backpropagation through the whole stack, each layer is trained on its own to
reconstruct its input, on the codes of the layers below it, so no gradient has to cross more
than one layer. :func:`pretrain` returns :class:`~gradbench.Params` that
:func:`gradbench.train` fine-tunes (``train(stack, X, y, params=pretrained)``).

Layer l (L layers, width N, B samples; h_0 = the input layer's output ``X W_in^T + b_in``, or
``X`` without an input layer; the input layer and the head keep their initial values)::

    c = phi(h_l W_l^T + b_l)                 the code: the stack's own layer (encoder)
    r = psi(c V^T + d)                       the reconstruction (decoder), V (N, N), d (N,)
    V = W_l^T (tied) or a matrix of its own (untied, same init as W_l)
    loss_l = mean over B x N of (r - h_l)^2  minimised over W_l, b_l (and V), d

psi is the sigmoid when the layer's input is sigmoid codes (layers l >= 1 of a sigmoid stack:
values in (0, 1)) and the identity otherwise (``decoder_activation="auto"``). Then
``h_{l+1} = phi(h_l W_l^T + b_l)`` with the trained W_l, b_l is the next layer's data.
Gradients are written out by hand below (NumPy, float64) and tested against finite
differences and torch autograd.
"""

from __future__ import annotations

import math

import numpy as np

from gradbench import activations
from gradbench.abi import ACT_CODE
from gradbench.inputs import check_array, check_stored_params
from gradbench.optim import OPTIMIZERS, SGD, Adam, resolve_momentum
from gradbench.params import Params, after, init_params
from gradbench.plan import check_history
from gradbench.spec import Stack, check_choice

DECODER_ACTIVATIONS = ("auto", "sigmoid", "identity")


def _phi(stack: Stack, z: np.ndarray, slope: float) -> tuple[np.ndarray, np.ndarray]:
    code = ACT_CODE[stack.activation]
    p = slope if stack.activation == "prelu" else stack.act_param
    return activations.phi(z, code, p), activations.dphi(z, code, p)


def _sigmoid(u: np.ndarray) -> np.ndarray:
    return activations.sigmoid(u)


def _optimizer(name: str, lr: float, momentum: float):
    """A fresh optimiser of :mod:`gradbench.optim` (as ``gradbench.train.make_optimizer``)."""
    check_choice("optimizer", name, OPTIMIZERS)
    if name == "adam":
        return Adam(lr=lr)
    return SGD(lr=lr, momentum=momentum if name == "momentum" else 0.0)


def autoencoder_loss_and_grads(h, W, b, V, d, stack: Stack, slope: float, decoder: str, tied: bool):
    """Reconstruction loss of one layer and its gradients (module docstring).

    Parameters
    ----------
    h : (B, N) the layer's input; W (N, N), b (N,) the encoder (the stack's layer);
    V : (N, N) the decoder matrix (ignored when ``tied``: V = W^T); d (N,) the decoder bias.
    decoder : "sigmoid" or "identity" (psi).

    Returns
    -------
    loss, dW, db, dV (None when tied), dd
    """
    B, N = h.shape
    z = h @ W.T + b
    c, dphi = _phi(stack, z, slope)
    Vm = W.T if tied else V
    u = c @ Vm.T + d
    r = _sigmoid(u) if decoder == "sigmoid" else u
    diff = r - h
    loss = float(np.mean(diff * diff))
    dr = 2.0 * diff / diff.size
    du = dr * r * (1.0 - r) if decoder == "sigmoid" else dr
    dV = du.T @ c                   # (N_in, N_code): dL/dV for r = psi(c V^T + d)
    dd = du.sum(axis=0)
    dz = (du @ Vm) * dphi
    dW = dz.T @ h
    db = dz.sum(axis=0)
    if tied:
        dW = dW + dV.T              # V = W^T: both uses of W
        return loss, dW, db, None, dd
    return loss, dW, db, dV, dd


def pretrain_with_history(stack: Stack, X: np.ndarray, *, epochs: int = 50, batch_size: int = 20,
                          optimizer: str = "sgd", lr: float = 0.1, momentum: float | None = None, tied: bool = True,
                          decoder_activation: str = "auto", seed: int = 0,
                          params: Params | None = None) -> tuple[Params, np.ndarray]:
    """:func:`pretrain`, also returning the reconstruction losses (L, epochs + 1).

    ``history[l, e]`` is layer l's reconstruction loss on the whole data set after e epochs of
    its own training (e = 0: before).
    """
    if not isinstance(stack, Stack):
        raise TypeError(f"stack must be a gradbench.Stack, got {type(stack).__name__}")
    if stack.batch_norm:
        raise ValueError("pretrain needs a stack without batch norm (batch_norm=True): a layer's autoencoder "
                         "would normalise with statistics that fine-tuning changes")
    if stack.residual:
        raise ValueError(f"pretrain needs a plain stack (residual={stack.residual}): a residual group is not "
                         "one layer that can reconstruct its input")
    check_choice("decoder_activation", decoder_activation, DECODER_ACTIVATIONS)
    if not isinstance(tied, (bool, np.bool_)):
        raise TypeError(f"tied must be a bool, got {tied!r}")
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    check_history(epochs, 8 * stack.depth, "the pretraining history")  # (L, epochs + 1) losses
    epochs, batch_size = int(epochs), int(batch_size)
    X = check_array("X", X, None, stack.np_dtype)  # the data gb.train takes: the stack's dtype, finite
    if X.ndim != 2 or X.shape[1] != stack.d_in or len(X) < 1:
        raise ValueError(f"X has shape {X.shape}, expected (samples, {stack.d_in}) (the stack's input_dim)")
    check_choice("optimizer", optimizer, OPTIMIZERS)
    momentum = resolve_momentum(optimizer, momentum)  # refused beside sgd/adam, not ignored
    _optimizer(optimizer, lr, momentum)  # validates optimizer, lr and momentum before any work
    if params is not None:  # shapes, dtype and values against the stack, before any work
        check_stored_params(stack, params, "pretraining")
    out = init_params(stack, seed) if params is None else params.copy()
    h = X.astype(np.float64)
    if stack.has_input_layer:
        h = h @ out.W_in.T.astype(np.float64) + out.b_in
    L, N, B = stack.depth, stack.width, len(X)
    history = np.full((L, epochs + 1), np.nan)
    rng = np.random.default_rng([seed, 3])
    for l in range(L):
        decoder = decoder_activation
        if decoder == "auto":
            decoder = "sigmoid" if (l > 0 and stack.activation == "sigmoid") else "identity"
        slope = float(out.slope[l])
        p = {"W": out.W[l].astype(np.float64), "b": out.b[l].astype(np.float64), "d": np.zeros(N)}
        if not tied:
            p["V"] = init_params(stack.replace(depth=1), rng).W[0].T.astype(np.float64)
        opt = _optimizer(optimizer, lr, momentum)

        def full_loss():
            return autoencoder_loss_and_grads(h, p["W"], p["b"], p.get("V"), p["d"], stack, slope, decoder, tied)[0]

        with np.errstate(all="ignore"):  # a diverging layer is refused below, in words
            history[l, 0] = full_loss()
            for e in range(epochs):
                order = rng.permutation(B)
                for s in range(0, B, batch_size):
                    idx = order[s:s + batch_size]
                    _, dW, db, dV, dd = autoencoder_loss_and_grads(
                        h[idx], p["W"], p["b"], p.get("V"), p["d"], stack, slope, decoder, tied)
                    grads = {"W": dW, "b": db, "d": dd}
                    if not tied:
                        grads["V"] = dV
                    opt.step(p, grads)
                history[l, e + 1] = full_loss()
        if not math.isfinite(history[l, -1]):
            raise FloatingPointError(f"pretraining layer {l} diverged (reconstruction loss {history[l, -1]}): "
                                     f"lower lr (now {lr})")
        out.W[l] = p["W"].astype(out.W.dtype)
        out.b[l] = p["b"].astype(out.b.dtype)
        h = _phi(stack, h @ p["W"].T + p["b"], slope)[0]
    return after(out, stack, f"layer-wise pretraining ({epochs} epoch{'s' if epochs != 1 else ''} a layer)"), history


def pretrain(stack: Stack, X: np.ndarray, *, epochs: int = 50, batch_size: int = 20, optimizer: str = "sgd",
             lr: float = 0.1, momentum: float | None = None, tied: bool = True, decoder_activation: str = "auto",
             seed: int = 0, params: Params | None = None) -> Params:
    """Greedy layer-wise pretraining of ``stack`` on the features ``X`` (no labels).

    Parameters
    ----------
    stack : Stack
        A plain stack (no batch norm, no residual); with an input layer when ``X`` has
        ``input_dim != width`` features. Its gradient clipping (``clip``) is not applied here:
        each layer's autoencoder is a one-layer problem with its own loss, and the clip acts
        in the fine-tuning (``gb.train`` with the same stack).
    X : ndarray (B, D)
        The training features.
    epochs, batch_size, optimizer, lr, momentum
        Training of each layer's autoencoder (mini-batches, :mod:`gradbench.optim`).
    tied : bool
        Decoder ``V = W_l^T`` (tied, the classic choice) or a matrix of its own.
    decoder_activation : {"auto", "sigmoid", "identity"}
        psi of the reconstruction (module docstring).
    seed : int
        The starting parameters ``init_params(stack, seed)`` (unless ``params`` is given), the
        untied decoders and the mini-batch order.
    params : Params, optional
        Start from these instead (copied; checked against the stack: shapes, dtype, finite).

    Returns
    -------
    Params
        W and b of every layer pretrained; the input layer, the head, gamma, beta and slopes
        as they started. Fine-tune with ``gb.train(stack, X, y, params=...)``.
    """
    return pretrain_with_history(stack, X, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                                 momentum=momentum, tied=tied, decoder_activation=decoder_activation, seed=seed,
                                 params=params)[0]
