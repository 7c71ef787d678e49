"""PyTorch in and out: a gradbench stack as a ``torch.nn.Sequential``, and back.

Needs PyTorch (``pip install 'gradbench[torch]'``, torch 2.13.0, the CPU wheel is enough); the
rest of gradbench never imports torch.

The mapping (L layers, width N, data dimension D, O outputs; ``Stack`` fields in brackets)::

    nn.Linear(D, N)                              the input layer (W_in, b_in), only when D != N
    nn.Linear(N, N) [nn.BatchNorm1d(N)] ACT      one layer l (W[l], b[l], gamma[l], beta[l])
    Residual(nn.Sequential(k such blocks), a)    one residual group (residual=k, residual_scale=a)
    nn.Linear(N, O)                              the head (W_out, b_out); the loss is an argument

ACT is the same for every layer: ``nn.Identity`` (identity), ``nn.Sigmoid``, ``nn.Tanh``,
``nn.ReLU``, ``nn.LeakyReLU(slope)`` (leaky_relu, activation_param=slope), ``nn.PReLU()``
(prelu: one learnable slope per layer, ``params.slope[l]``), ``nn.ELU(alpha)`` (elu,
activation_param=alpha), ``nn.SELU``, ``nn.SiLU`` (swish), ``nn.GELU()`` (gelu, erf form:
``approximate='none'``). Losses: ``sum_squares`` = ``0.5 * (out ** 2).sum()``, ``mse`` =
``nn.MSELoss()``, ``bce`` = ``nn.BCEWithLogitsLoss()``, ``softmax_ce`` = ``nn.CrossEntropyLoss()``
(:func:`loss_fn`). A linear layer without bias maps to zero biases; ``BatchNorm1d(affine=False)``
to gamma = 1, beta = 0; these and frozen parameters (``requires_grad=False``) become trainable
parameters, which :func:`from_torch` warns about (the gradients are the same; gradbench.train
trains them all). A parametrized weight (``spectral_norm``, ``weight_norm``, ...) is copied as
computed at the call, and its gradients are with respect to that weight, not the
parametrization's original (a warning says so).

gradbench's batch norm is train-mode batch normalisation (batch mean, biased batch variance), so
a ``BatchNorm1d`` is accepted in training mode, or in eval mode with
``track_running_stats=False`` (it then uses batch statistics too); a module in eval mode that
would use its running statistics is refused. Anything else (``Dropout``, ``LayerNorm``, a
``Linear`` of another width, mixed activations, ...) is refused with a message naming a module
(its path), what was expected there and what to use. The most fundamental problem comes first:
a module of a kind gradbench does not have (``Dropout``, ``Softmax``, a ``Residual`` inside a
``Residual``), then the structure, then the loss and the dtype. A value of a module that gradbench
does not take (``BatchNorm1d(eps=0)``, a NaN residual scale, a ``softmax_ce`` head with one
output) is refused naming that module. The weights are read through float64 in torch (exact
for bfloat16, float16 and float32, which NumPy's ``.numpy()`` could not take for bfloat16); a
parameter holding NaN or Inf, one beyond float32's range (magnitude above 3.4028235e38) when
converting to float32, or one not on the CPU (a meta tensor, a CUDA tensor: nothing is moved)
is refused naming the parameter (``'2.weight'``) and, for values, the first index.
"""

from __future__ import annotations

import operator

import numpy as np

from gradbench.params import GeneratedParams, Params, expected_shapes
from gradbench.spec import LOSSES, Stack, check_choice
# torch itself comes through torch_model, whose import says what to install when it is missing
from gradbench.torch_model import (  # noqa: F401  (Residual and SAFE_MODULES are part of this module's API)
    _LOSS_MODULES, _TORCH_DTYPES, SAFE_MODULES, Residual, _from_torch, _np, _Refused, _tensor, nn, torch,
)

__all__ = ["Residual", "from_torch", "to_torch", "loss_fn", "load", "SAFE_MODULES"]


# ------------------------------------------------------------------ gradbench -> torch
def _activation_module(stack: Stack, slope=None) -> nn.Module:
    name, p = stack.activation, stack.act_param
    if name == "prelu":
        dt = _TORCH_DTYPES[stack.dtype]
        m = nn.PReLU(num_parameters=1, init=p, dtype=dt)
        with torch.no_grad():
            m.weight.copy_(_tensor(np.reshape(slope, (1,)), dt))
        return m
    return {
        "identity": nn.Identity, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU,
        "leaky_relu": lambda: nn.LeakyReLU(negative_slope=p), "elu": lambda: nn.ELU(alpha=p),
        "selu": nn.SELU, "swish": nn.SiLU, "gelu": lambda: nn.GELU(approximate="none"),
    }[name]()


def to_torch(stack: Stack, params: Params) -> nn.Sequential:
    """The ``nn.Sequential`` that computes what ``stack`` with ``params`` computes.

    Weights are copied (the stack's dtype); batch norm modules use batch statistics, as
    gradbench, in training and in eval mode alike (``track_running_stats=False``: gradbench has
    no running statistics, and default ones of mean 0, variance 1 took a trained net from loss
    0.007 to 4.06 after ``model.eval()``). The loss is not part of the model: :func:`loss_fn`
    gives it.

    Parameters
    ----------
    stack : Stack
        Without clipping (clipping is part of gradbench's backward pass and training, not of
        the model).
    params : Params or GeneratedParams
        Parameters of that stack (from :func:`gradbench.init_params`, training, or generated
        per layer: then materialised, so they must fit in memory).

    Returns
    -------
    nn.Sequential
        Input layer (if any), the L blocks (grouped in :class:`Residual` modules when
        ``stack.residual``), the head (if any).
    """
    if not isinstance(stack, Stack):
        raise TypeError(f"stack must be a gradbench.Stack, got {type(stack).__name__}")
    if isinstance(params, GeneratedParams):
        if params.stack != stack:
            raise ValueError("GeneratedParams was made for a different stack: pass GeneratedParams(stack, seed)")
        params = params.materialize()
    if not isinstance(params, Params):
        raise TypeError(f"params must be gradbench.Params or GeneratedParams, got {type(params).__name__}")
    if stack.clip is not None:
        raise ValueError(
            f"stack.clip={stack.clip!r} (on {stack.clip_on!r}) is part of gradbench's backward pass, not of the "
            "model, and has no nn.Module counterpart: pass stack.replace(clip=None) and clip in torch"
        )
    for name, shape in expected_shapes(stack).items():
        a = getattr(params, name)
        if (a is None) != (shape is None) or (a is not None and a.shape != shape):
            got = None if a is None else a.shape
            raise ValueError(f"params.{name} has shape {got}, the stack needs {shape} (mismatched params/stack)")
        if a is not None and a.dtype != stack.np_dtype:
            raise TypeError(f"params.{name} has dtype {a.dtype}, the stack's dtype is {stack.dtype}")
    dt = _TORCH_DTYPES[stack.dtype]
    L, N = stack.depth, stack.width

    def linear(W, b):
        m = nn.Linear(W.shape[1], W.shape[0], dtype=dt)
        with torch.no_grad():
            m.weight.copy_(_tensor(W, dt))
            m.bias.copy_(_tensor(b, dt))
        return m

    blocks = []
    for l in range(L):
        block = [linear(params.W[l], params.b[l])]
        if stack.batch_norm:  # batch statistics in eval mode too: gradbench has no running statistics
            bn = nn.BatchNorm1d(N, eps=stack.bn_eps, dtype=dt, track_running_stats=False)
            with torch.no_grad():
                bn.weight.copy_(_tensor(params.gamma[l], dt))
                bn.bias.copy_(_tensor(params.beta[l], dt))
            block.append(bn)
        act = _activation_module(stack, params.slope[l] if stack.activation == "prelu" else None)
        block.append(act)
        blocks.append(block)
    modules: list[nn.Module] = []
    if stack.has_input_layer:
        modules.append(linear(params.W_in, params.b_in))
    k = stack.residual
    if k:
        for g in range(0, L, k):
            modules.append(Residual(nn.Sequential(*[m for block in blocks[g:g + k] for m in block]),
                                    stack.residual_scale))
    else:
        modules.extend(m for block in blocks for m in block)
    if stack.has_head:
        modules.append(linear(params.W_out, params.b_out))
    return nn.Sequential(*modules).train()


def loss_fn(stack: Stack):
    """The torch loss of ``stack``: ``loss_fn(stack)(output, targets)`` (module docstring)."""
    if stack.loss == "sum_squares":
        return lambda out, target=None: 0.5 * (out * out).sum()
    return _LOSS_MODULES[stack.loss]()


def from_torch(model: nn.Module, dtype: str | None = None, *, loss=None) -> tuple[Stack, Params]:
    """The gradbench stack and parameters of a PyTorch model (module docstring for the mapping).

    Parameters
    ----------
    model : nn.Module
        An ``nn.Sequential`` (nested ``nn.Sequential`` containers are flattened) or a module
        whose forward is a plain chain of submodules (traced with ``torch.fx``).
    dtype : {"float64", "float32"}, optional
        Of the returned parameters (or the NumPy dtype, ``np.float32``, or the torch dtype,
        ``torch.float32``); default: the model's (which must then be one of these). The weights
        are converted through float64, which holds bfloat16, float16 and float32 exactly.
    loss : str or torch loss module, optional
        Required when the model ends in a head ``Linear(N, O)``: ``"mse"``, ``"bce"`` (from
        logits) or ``"softmax_ce"``, or ``nn.MSELoss()``, ``nn.BCEWithLogitsLoss()``,
        ``nn.CrossEntropyLoss()`` with ``reduction='mean'``. Without a head the loss is
        ``sum_squares`` (``0.5 * ||h_L||^2``).

    Returns
    -------
    (Stack, Params)
        The weights copied, with ``origin`` "the weights of CLASS" (the model's class name,
        which the report names in place of an init scheme); ``Stack.init`` is left at its
        default (it only matters for :func:`gradbench.init_params`).

    Raises
    ------
    ValueError
        Naming the module that cannot be mapped, what was expected there and what to use (a module
        of a kind gradbench does not have before a structural problem, the dtype last), or the
        parameter (``'2.weight'``) that holds NaN or Inf, a value beyond float32's range when
        converting to float32, or that is not on the CPU (a meta or CUDA tensor: nothing is moved).
    """
    dtype = _dtype_name(dtype)
    loss = _loss_name(loss)
    try:
        return _from_torch(model, dtype, loss)
    except _Refused as exc:
        raise ValueError(f"cannot map the model to a gradbench stack: {exc}") from None


def _dtype_name(dtype) -> str | None:
    """gradbench's name of ``dtype``: "float64" or "float32" as given, or as a NumPy dtype or type
    (``np.float32``, ``np.dtype("float32")``, as :class:`gradbench.Stack` takes them) or a torch
    dtype (``torch.float32``); anything else is refused saying what was given."""
    if dtype is None or isinstance(dtype, str):
        if dtype is not None:
            check_choice("dtype", dtype, tuple(_TORCH_DTYPES))
        return dtype
    for name, td in _TORCH_DTYPES.items():
        if dtype is td:
            return name
    if isinstance(dtype, np.dtype) or (isinstance(dtype, type) and issubclass(dtype, np.generic)):
        name = np.dtype(dtype).name
        if name in _TORCH_DTYPES:
            return name
    raise ValueError(f"dtype={dtype!r} is not one of 'float64', 'float32' (also accepted: np.float64, np.float32, "
                     "np.dtype('float64'), np.dtype('float32'), torch.float64, torch.float32)")


def _loss_name(loss) -> str | None:
    if loss is None or isinstance(loss, str):
        if loss is not None:
            check_choice("loss", loss, LOSSES)
        return loss
    for name, cls in _LOSS_MODULES.items():
        if type(loss) is cls:
            if loss.reduction != "mean":
                raise ValueError(f"loss={type(loss).__name__}(reduction={loss.reduction!r}): gradbench's losses are "
                                 "means over the batch (reduction='mean')")
            extra = [a for a in ("weight", "pos_weight") if getattr(loss, a, None) is not None]
            if extra or getattr(loss, "label_smoothing", 0.0) or getattr(loss, "ignore_index", -100) != -100:
                raise ValueError(f"loss={type(loss).__name__} with weights, label smoothing or ignore_index has no "
                                 "gradbench counterpart")
            return name
    raise ValueError(f"loss={loss!r} is not one of {', '.join(map(repr, LOSSES))} or nn.MSELoss(), "
                     "nn.BCEWithLogitsLoss(), nn.CrossEntropyLoss()")


# ------------------------------------------------------------------ files
def load(path) -> nn.Module:
    """A model saved with ``torch.save(model, path)``, loaded with ``weights_only=True``.

    Only the module classes gradbench can map (:data:`SAFE_MODULES`: ``nn.Sequential``,
    ``nn.Linear``, ``nn.BatchNorm1d``, the activations and :class:`Residual`) are allowlisted
    (``torch.serialization.safe_globals``); a file holding any other class, or code, is
    refused by torch's weights-only unpickler before anything in it runs.
    """
    try:
        with torch.serialization.safe_globals(list(SAFE_MODULES)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError/RuntimeError variants
        msg = str(exc)
        marker = "Unsupported global: GLOBAL "
        if marker in msg:
            what = msg.split(marker, 1)[1].split()[0]
            fix = ("; remove the Dropout (gradbench computes one deterministic pass) and save the model again"
                   if "dropout" in what.lower() else
                   "; a recurrent layer runs as gb.Recurrent (cell, hidden, input_dim) with gb.RecurrentParams built "
                   "from its weight_ih_l0, weight_hh_l0, bias_ih_l0 and bias_hh_l0 (gb.from_torch(module) prints the "
                   "line); gradbench run --cell runs a cell of that shape with weights of its own"
                   if what.rsplit(".", 1)[-1] in ("RNN", "LSTM", "GRU") else "")
            raise ValueError(f"{path}: the file holds {what}, which gradbench does not load (only nn.Sequential, "
                             "Linear, BatchNorm1d, the activations and gradbench.torch_io.Residual are allowed; "
                             f"torch.load weights_only=True){fix}") from None
        first = msg.splitlines()[0].split(". ")[0][:200] if msg else ""
        raise ValueError(f"{path}: not a model saved with torch.save(model, path) ({type(exc).__name__}: {first})") from None
    if not isinstance(obj, nn.Module):
        kind = type(obj).__name__
        raise ValueError(f"{path} holds {'an' if kind[:1] in 'AEIOU' else 'a'} {kind}, not a model: save the module itself with "
                         "torch.save(model, path) (a state_dict has no architecture)")
    return obj
