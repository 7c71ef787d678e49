"""The PyTorch side of :mod:`gradbench.torch_io`: the modules gradbench maps (:class:`Residual`)
and the parser that reads a model into a stack (``from_torch``'s work; the mapping is in
:mod:`gradbench.torch_io`'s docstring).
"""

from __future__ import annotations

import dataclasses
import math
import operator

import numpy as np

try:
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - exercised in environments without torch
    raise ImportError(
        "gradbench.torch_io needs PyTorch: pip install 'gradbench[torch]' "
        "(torch==2.13.0; the CPU wheel is enough)"
    ) from exc

from gradbench.params import Params
from gradbench.spec import Stack

class Residual(nn.Module):
    """One residual group of a gradbench stack: ``h + scale * body(h)``.

    ``body`` is an ``nn.Sequential`` of k blocks ``Linear(N, N) [BatchNorm1d(N)] activation``;
    this is gradbench's ``h_{l+1} = h_{l+1-k} + residual_scale * a_l`` at the end of every
    group of k layers. :func:`to_torch` produces it and :func:`from_torch` accepts it.

    Parameters
    ----------
    body : nn.Sequential
        The k blocks of the group.
    scale : float
        The residual scale alpha (``Stack.residual_scale``).
    """

    def __init__(self, body: nn.Sequential, scale: float = 1.0):
        super().__init__()
        if not isinstance(body, nn.Sequential):
            raise TypeError(f"Residual body must be an nn.Sequential, got {type(body).__name__}")
        self.body = body
        self.scale = float(scale)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.scale * self.body(h)

    def extra_repr(self) -> str:
        return f"scale={self.scale!r}"


# The module classes a saved model may contain (torch.load(weights_only=True) allowlist).
SAFE_MODULES = (
    nn.Sequential, nn.Linear, nn.BatchNorm1d, nn.Identity, nn.Sigmoid, nn.Tanh, nn.ReLU, nn.LeakyReLU,
    nn.PReLU, nn.ELU, nn.SELU, nn.SiLU, nn.GELU, Residual,
)
_ACTIVATION_TYPES = (nn.Identity, nn.Sigmoid, nn.Tanh, nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU,
                     nn.SiLU, nn.GELU)
_TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32}
_LOSS_MODULES = {"mse": nn.MSELoss, "bce": nn.BCEWithLogitsLoss, "softmax_ce": nn.CrossEntropyLoss}


def _np(t: torch.Tensor, dtype: str, where: str = "the tensor") -> np.ndarray:
    """``t`` (the parameter ``where``) as a NumPy array of ``dtype``, or refuse it: a tensor not
    on the CPU (a meta tensor has no values; a CUDA one is not moved behind the caller's back),
    NaN or Inf (which the run refused later as "params.W contains NaN", an array the caller
    never named), or a value beyond float32's range when converting to float32 (NumPy's cast
    made 1e39 inf with only a RuntimeWarning, and 1e-50 0 without a word). The conversion goes through float64 in torch:
    NumPy has no bfloat16 (``.numpy()`` raised TypeError), and bfloat16, float16 and float32
    are exact in float64."""
    if t.device.type != "cpu":
        fix = ("the meta device, which holds no values: create or load the model on the CPU (or "
               "model.to_empty(device='cpu') and set its weights)" if t.device.type == "meta" else
               f"device {str(t.device)!r}: the model must be on the CPU; move it yourself with model.cpu()")
        raise _Refused(f"{where} is on {fix} (gradbench reads the weights on the CPU and moves nothing)")
    a = t.detach().to(torch.float64).numpy()

    def first(mask) -> tuple:  # the index of the first True entry
        return tuple(int(j) for j in np.argwhere(mask)[0])

    if not np.isfinite(a).all():
        i = first(~np.isfinite(a))
        raise _Refused(f"{where} contains {float(a[i])!r} (first at index {i}): gradbench maps finite weights only")
    if np.dtype(dtype) != np.float32:
        return np.ascontiguousarray(a, dtype=dtype)
    big = np.abs(a) > float(np.finfo(np.float32).max)
    if big.any():
        i = first(big)
        raise _Refused(f"{where} holds {float(a[i])!r} at index {i}, beyond float32's range (magnitudes up to "
                       f"{float(np.finfo(np.float32).max):.8g}): converting to float32 would make it inf; "
                       "keep dtype='float64' or scale the weights")
    a32 = np.ascontiguousarray(a, dtype=np.float32)  # cast once: checked for lost values, then returned
    lost = (a != 0) & (a32 == 0)
    if lost.any():
        i = first(lost)
        raise _Refused(f"{where} holds {float(a[i])!r} at index {i}, below float32's smallest number (about "
                       f"{float(np.finfo(np.float32).smallest_subnormal):.3g}): converting to float32 would make "
                       "it 0; keep dtype='float64' or set such weights to 0 yourself")
    return a32


def _tensor(a: np.ndarray, dtype) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=dtype)


# ------------------------------------------------------------------ torch -> gradbench
class _Refused(ValueError):
    pass


def _describe(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return f"Linear({m.in_features}, {m.out_features})"
    if isinstance(m, nn.BatchNorm1d):
        return f"BatchNorm1d({m.num_features})"
    if isinstance(m, Residual):
        return f"Residual(scale={m.scale})"
    if isinstance(m, nn.LeakyReLU):
        return f"LeakyReLU({m.negative_slope:g})"
    if isinstance(m, nn.ELU):
        return f"ELU(alpha={m.alpha:g})"
    return type(m).__name__


def _activation_of(where: str, m: nn.Module) -> tuple[str, float | None]:
    """(gradbench activation name, its parameter) of an activation module, or refuse it."""
    if isinstance(m, nn.Identity):
        return "identity", None
    if isinstance(m, nn.Sigmoid):
        return "sigmoid", None
    if isinstance(m, nn.Tanh):
        return "tanh", None
    if isinstance(m, nn.ReLU):
        return "relu", None
    if isinstance(m, nn.LeakyReLU):
        return "leaky_relu", float(m.negative_slope)
    if isinstance(m, nn.PReLU):
        if m.num_parameters != 1:
            raise _Refused(f"{where}: PReLU(num_parameters={m.num_parameters}) has one slope per unit; gradbench's "
                           "PReLU has one learnable slope per layer (nn.PReLU() with num_parameters=1)")
        return "prelu", float(getattr(m, "init", 0.25))
    if isinstance(m, nn.ELU):
        return "elu", float(m.alpha)
    if isinstance(m, nn.SELU):
        return "selu", None
    if isinstance(m, nn.SiLU):
        return "swish", None
    if isinstance(m, nn.GELU):
        if m.approximate != "none":
            raise _Refused(f"{where}: GELU(approximate={m.approximate!r}) is not gradbench's gelu, which is the "
                           "erf form: use nn.GELU() (approximate='none')")
        return "gelu", None
    raise _Refused(f"{where}: {_unsupported_why(m)}")


_BLOCK = "Linear(N, N) [BatchNorm1d(N)] activation"


def _recurrent_why(m: nn.Module) -> str:
    """A torch recurrent layer: gradbench has its counterpart, gb.Recurrent, in torch's layout."""
    name = type(m).__name__
    cell = {"RNN": "rnn", "LSTM": "lstm", "GRU": "gru"}.get(name)
    if cell is None or getattr(m, "num_layers", 1) != 1 or getattr(m, "bidirectional", False):
        return (f"{name} is a recurrent layer; gb.from_torch maps feed-forward stacks, and gradbench's recurrent "
                "nets (gb.Recurrent) are single-layer, one-direction nn.RNN, nn.LSTM and nn.GRU")
    proj = f", proj_size={m.proj_size}" if getattr(m, "proj_size", 0) else ""
    if proj:
        return f"{name}({proj[2:]}) is a recurrent layer with a projection, which gb.Recurrent does not have"
    act = ", activation='relu'" if getattr(m, "nonlinearity", "tanh") == "relu" else ""
    bias = "bias_ih_l0, b_hh=bias_hh_l0" if m.bias else "zeros (bias=False), b_hh=zeros"
    order = "; gradbench's sequences are (steps, batch, features): transpose batch_first input" if m.batch_first else ""
    return (f"{name} is a recurrent layer; gb.from_torch maps feed-forward stacks. gradbench runs it as "
            f"gb.Recurrent(cell={cell!r}, steps=T, hidden={m.hidden_size}, input_dim={m.input_size}{act}) with "
            f"gb.RecurrentParams(W_ih=weight_ih_l0, W_hh=weight_hh_l0, b_ih={bias}, origin='the weights of my "
            f"{name}') as NumPy arrays (torch's layout and gate order){order}")


def _unsupported_why(m: nn.Module) -> str:
    name = type(m).__name__
    if isinstance(m, nn.RNNBase):
        return _recurrent_why(m)
    if isinstance(m, nn.modules.dropout._DropoutNd):
        if not m.training:
            return (f"{name} is not supported, in eval mode either (where it passes its input through): remove it "
                    "from the model, which then computes the same")
        return f"{name} is not supported (gradbench computes one deterministic pass; remove it from the model)"
    if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
        return (f"{name} is not supported: gradbench's softmax_ce loss applies the softmax itself (as "
                "nn.CrossEntropyLoss); end the model with the head Linear(N, O) and pass loss='softmax_ce'")
    if isinstance(m, nn.modules.batchnorm._NormBase) and not isinstance(m, nn.BatchNorm1d):
        return f"{name} is not supported (only BatchNorm1d after a Linear, on (batch, width) inputs)"
    return (f"{name} has no gradbench counterpart (supported: Linear, BatchNorm1d, Identity, Sigmoid, Tanh, ReLU, "
            "LeakyReLU, PReLU, ELU, SELU, SiLU, GELU and gradbench.torch_io.Residual)")


# The kinds gradbench maps, each with the forward it assumes (a subclass may not replace it).
_MAPPED_KINDS = (nn.Sequential, nn.Linear, nn.BatchNorm1d, Residual) + _ACTIVATION_TYPES


def _check_plain(path: str, m: nn.Module) -> None:
    """Refuse a module that would not compute what its kind does: one with hooks (a forward hook
    that scales the output was read as the plain module), or a subclass of a mapped kind whose
    class replaces that kind's forward (``class MyTanh(nn.Tanh)`` with tanh(2x)): gradbench reads
    the weights and the kind, never runs the forward. A subclass that keeps the forward is fine."""
    where = f"{type(m).__name__} at {path or 'the model'!r}"
    hooks = [n for n in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
             if getattr(m, n, None)]
    if hooks:
        raise _Refused(f"{where} has hooks ({', '.join(h.strip('_') for h in hooks)}), which gradbench would not run "
                       "(it maps the module's kind and weights): remove them (handle.remove())")
    for kind in _MAPPED_KINDS:
        if isinstance(m, kind) and type(m).forward is not kind.forward:
            raise _Refused(f"{where} replaces {kind.__name__}.forward, which gradbench does not run: it maps the "
                           f"module as a plain {kind.__name__}; use {kind.__name__} itself (or put the extra "
                           "computation in modules of its own)")


def _check_global_hooks() -> None:
    """Hooks registered for every module (torch.nn.modules.module.register_module_forward_hook)."""
    from torch.nn.modules import module as _module

    names = [n for n in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                         "_global_backward_pre_hooks") if getattr(_module, n, None)]
    if names:
        raise _Refused(f"global module hooks are registered ({', '.join(n.strip('_') for n in names)}), which "
                       "gradbench would not run: remove them before mapping the model")


def _flatten(seq: nn.Sequential, prefix: str) -> list[tuple[str, nn.Module]]:
    """Children of ``seq`` with nested plain ``nn.Sequential`` containers flattened, with their paths.

    Every entry, as ``seq``'s forward applies them: a module placed twice (``Sequential(*[block] * 5)``)
    is listed twice (``named_children`` yields each instance once; :func:`_refuse_tied` then
    refuses shared weights)."""
    out = []
    for name, m in seq._modules.items():
        if m is None:
            continue
        path = f"{prefix}{name}"
        if type(m) is nn.Sequential:
            _check_plain(path, m)
            out.extend(_flatten(m, path + "."))
        else:
            out.append((path, m))
    return out


def _chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules that ``model``'s forward applies one after the other (with their paths)."""
    if isinstance(model, nn.Module):
        _check_global_hooks()
        if getattr(model, "_forward_hooks", None) or getattr(model, "_forward_pre_hooks", None) or (
                isinstance(model, _MAPPED_KINDS) and not isinstance(model, nn.Sequential)):
            _check_plain("", model)
    if isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward:
        return _flatten(model, "")
    if isinstance(model, Residual):
        return [("", model)]
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (an nn.Sequential), got {type(model).__name__}")
    if isinstance(model, nn.RNNBase):  # its forward does not trace: said as what it is, not as fx's error
        raise _Refused(_recurrent_why(model))
    import torch.fx

    class _Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, Residual) or (super().is_leaf_module(m, qualname) and not isinstance(m, nn.Sequential))

    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: not a plain chain
        raise _Refused(f"{type(model).__name__}.forward could not be traced as a chain of modules "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                       "pass an nn.Sequential") from None
    chain, prev, used = [], None, set()
    for node in graph.nodes:
        if node.op == "placeholder":
            if prev is not None:
                raise _Refused(f"{type(model).__name__}.forward takes more than one input; gradbench maps one")
            prev = node
        elif node.op == "call_module":
            if node.args != (prev,) or node.kwargs:
                raise _Refused(f"{type(model).__name__}.forward: module {node.target!r} does not take the previous "
                               "module's output as its only input; only a plain chain of modules can be mapped")
            m = model.get_submodule(node.target)
            if node.target in used and any(True for _ in m.parameters()):  # one nn.Tanh() applied twice is fine
                raise _Refused(f"{type(model).__name__}.forward uses module {node.target!r} twice (shared weights)")
            used.add(node.target)
            chain.append((node.target, m))
            prev = node
        elif node.op == "output":
            if node.args[0] is not prev:
                raise _Refused(f"{type(model).__name__}.forward does not return the last module's output")
        else:
            what = getattr(node.target, "__name__", str(node.target))
            if node.target in (operator.add, operator.mul):
                what = f"arithmetic ({what})"
            raise _Refused(f"{type(model).__name__}.forward calls {what} outside a module; only a plain chain of "
                           "modules can be mapped (use nn.Sequential, nn.ReLU(), gradbench.torch_io.Residual)")
    return chain


def _check_kinds(items, group: str | None = None) -> None:
    """Refuse the first module (residual bodies opened) that is no kind gradbench maps, before the
    structure is looked at: a Dropout or a LayerNorm has to go whatever the order of the rest."""
    for path, m in items:
        where = f"{_describe(m)} at {path!r}"
        _check_plain(path, m)
        if isinstance(m, Residual):
            _check_plain(f"{path}.body", m.body)
            if group is not None:
                raise _Refused(f"{where}: a Residual inside a Residual's body ({group!r}) is not supported: a group's "
                               f"body is a chain of blocks {_BLOCK}; place the groups one after the other "
                               "(nn.Sequential(Residual(...), Residual(...)))")
            body = _flatten(m.body, f"{path}.body.")
            if not body:
                raise _Refused(f"{where}: its body is empty; a group's body is k >= 1 blocks {_BLOCK}")
            _check_kinds(body, path)
        elif isinstance(m, _ACTIVATION_TYPES):
            _activation_of(where, m)  # refuses the variants gradbench does not have
        elif not isinstance(m, (nn.Linear, nn.BatchNorm1d)):
            raise _Refused(f"{where}: {_unsupported_why(m)}")


def _parse_blocks(items: list[tuple[str, nn.Module]], width: int | None, start: str):
    """Split ``items`` into blocks Linear [BatchNorm1d] activation; returns (blocks, width).
    ``start`` says where ``items`` begin (the model, a residual body), for the messages."""
    blocks, i = [], 0
    while i < len(items):
        path, m = items[i]
        where = f"{_describe(m)} at {path!r}"
        if not isinstance(m, nn.Linear):
            if isinstance(m, _ACTIVATION_TYPES + (nn.BatchNorm1d,)):
                before = (f"after {_describe(items[i - 1][1])} at {items[i - 1][0]!r}, which ends a block" if i
                          else f"at the start of {start}")
                fix = ("a BatchNorm1d goes between a block's Linear and its activation" if isinstance(m, nn.BatchNorm1d)
                       else "one activation per block, after its Linear: remove it or put a Linear(N, N) before it")
                raise _Refused(f"{where}: expected a Linear here, {before} (a block is Linear(N, N), optional "
                               f"BatchNorm1d(N), then one activation; {fix})")
            raise _Refused(f"{where}: {_unsupported_why(m)}")
        n = width if width is not None else m.in_features
        if m.in_features != m.out_features or m.in_features != n:
            if m.in_features == n:
                hint = "; a head Linear(N, O) can only be the model's last module"
            else:
                hint = f" (N = {n} before it)"
            raise _Refused(f"{where}: widths must be uniform inside the stack: expected Linear({n}, {n}) here, every "
                           f"block is Linear(N, N) with one N{hint}")
        width = m.in_features
        bn = None
        if i + 1 < len(items) and isinstance(items[i + 1][1], nn.BatchNorm1d):
            bn = items[i + 1]
            i += 1
        if i + 1 >= len(items):
            raise _Refused(f"{where}: a block Linear(N, N) [BatchNorm1d(N)] must end with an activation "
                           "(use nn.Identity() for a linear layer)")
        act = items[i + 1]
        if not isinstance(act[1], _ACTIVATION_TYPES):
            after = f"{_describe(act[1])} at {act[0]!r}"
            if isinstance(act[1], (nn.Linear, nn.BatchNorm1d)):
                raise _Refused(f"{after} follows {where} without an activation: every block ends with one "
                               "activation (use nn.Identity() for a linear layer)")
            _activation_of(after, act[1])  # refuses it with the reason
        blocks.append((items[i - (1 if bn else 0)], bn, act))
        i += 2
    return blocks, width


def _leaves(items):
    """(path, module) of every module the chain applies, residual bodies opened."""
    for path, m in items:
        if isinstance(m, Residual):
            yield from _leaves(_flatten(m.body, f"{path}.body."))
        else:
            yield path, m


def _refuse_tied(items) -> None:
    """Refuse a parameter that two places of the chain share (one module placed twice, or one
    tensor assigned to two modules): gradbench gives every layer its own parameters, and would
    map such a model to a different net (``Sequential(*[block] * 5)`` read as one layer)."""
    owner: dict[int, str] = {}
    for path, m in _leaves(items):
        for name, p in m.named_parameters():
            where = f"{path}.{name}" if path else name
            if id(p) in owner:
                raise _Refused(f"{where} is the same tensor as {owner[id(p)]} (shared weights): gradbench gives every "
                               "layer its own parameters; build the model from separate modules "
                               "(e.g. copy.deepcopy(block) for each repetition)")
            owner[id(p)] = where


def _from_torch(model, dtype, loss):
    items = _chain(model)
    if not items:
        raise _Refused(f"the model has no modules: gradbench needs at least one block {_BLOCK}, "
                       "e.g. nn.Sequential(nn.Linear(16, 16), nn.Tanh())")
    # the most fundamental problem first: a module of a kind gradbench does not have, then the
    # structure, then the arguments (the loss, the dtype: a model with no Linear has no parameters)
    _check_kinds(items)
    _refuse_tied(items)
    input_layer, items, head = _split_ends(items)
    blocks, width, k, scale = _blocks_of(items)
    act_name, act_param, bn_eps = _check_blocks(blocks, width)
    _check_ends(input_layer, head, loss, width, blocks)
    dtype = _model_dtype(model, dtype)
    L = len(blocks)
    try:
        stack = Stack(
            depth=L, width=width, activation=act_name,
            activation_param=act_param if act_name in ("leaky_relu", "prelu", "elu") else None,
            batch_norm=blocks[0][1] is not None, bn_eps=bn_eps if bn_eps is not None else 1e-5,
            residual=k, residual_scale=float(scale),
            loss=loss if head is not None else "sum_squares",
            input_dim=None if input_layer is None else input_layer[1].in_features,
            output_dim=1 if head is None else head[1].out_features,
            dtype=dtype,
        )
    except ValueError as exc:  # a value gradbench does not take (ELU alpha 0): said as the model's module
        raise _Refused(f"{_module_of(str(exc), blocks, items, head)}{exc}") from None
    _warn_untrainable(items, input_layer, head)
    params = _params_of(blocks, input_layer, head, act_name, width, dtype)
    # the report names these weights, not Stack.init's default, which never drew them
    return stack, dataclasses.replace(params, origin=f"the weights of {type(model).__name__}")


def _module_of(msg: str, blocks, items, head) -> str:
    """"KIND at 'PATH': " of the module holding the Stack field that ``msg`` (Stack's refusal)
    names: the first activation, batch norm or residual group (they agree on the value), or the
    head; "" for a field no module holds."""
    at = None
    if "activation_param" in msg:
        at = blocks[0][2]
    elif "bn_eps" in msg and blocks[0][1] is not None:
        at = blocks[0][1]
    elif "residual_scale" in msg and items and isinstance(items[0][1], Residual):
        at = items[0]
    elif "output_dim" in msg and head is not None:
        at = head
    return "" if at is None else f"{_describe(at[1])} at {at[0]!r}: "


def _warn_untrainable(items, input_layer, head) -> None:
    """Warn where the model holds parameters fixed that gradbench makes trainable: a frozen
    parameter (requires_grad=False), a Linear without bias (zero biases) and a BatchNorm1d
    without affine (gamma 1, beta 0). The gradients are the same; :func:`gradbench.train` would
    train them all (a frozen W_in moved by 0.016, a bias-free layer got biases) and
    :func:`~gradbench.torch_io.to_torch` gives every one back as a trainable parameter."""
    import warnings

    leaves = list(_leaves(items)) + [x for x in (input_layer, head) if x is not None]
    fixed = []
    for path, m in leaves:
        fixed += [f"{path}.{n}" for n, p in m.named_parameters(recurse=False) if not p.requires_grad]
        if isinstance(m, nn.Linear) and m.bias is None:
            fixed.append(f"{path}.bias (none: zeros)")
        if isinstance(m, nn.BatchNorm1d) and not m.affine:
            fixed.append(f"{path} affine=False (gamma 1, beta 0)")
    if fixed:
        shown = ", ".join(fixed[:4]) + (f" and {len(fixed) - 4} more" if len(fixed) > 4 else "")
        warnings.warn(f"from_torch: the model holds fixed {shown}; gradbench makes every parameter trainable: the "
                      "gradients are the same, but gradbench.train trains these too and to_torch gives them back "
                      "as trainable parameters", UserWarning, stacklevel=4)  # the caller of from_torch
    from torch.nn.utils import parametrize

    shaped = [f"{path}.{name}" for path, m in leaves if parametrize.is_parametrized(m)
              for name in m.parametrizations]
    if shaped:
        shown = ", ".join(shaped[:4]) + (f" and {len(shaped) - 4} more" if len(shaped) > 4 else "")
        warnings.warn(f"from_torch: {shown} {'is' if len(shaped) == 1 else 'are'} parametrized (spectral_norm, "
                      "weight_norm, orthogonal, ...); gradbench copies the weight as computed now, a snapshot "
                      "(spectral_norm's power iteration moves it at every forward in training mode), and its "
                      "gradients are with respect to that weight, not to the parametrization's original (torch's "
                      "parameter .grad): gradbench.train trains the weight itself", UserWarning, stacklevel=4)


def _model_dtype(model, dtype):
    """gradbench's dtype of the model's parameters (or the one asked for, converting them)."""
    if dtype is not None:
        return dtype
    params_dtypes = {p.dtype for p in model.parameters()}
    names = {v: k for k, v in _TORCH_DTYPES.items()}
    bad = [d for d in params_dtypes if d not in names]
    if bad or len(params_dtypes) != 1:
        raise _Refused(f"the model's parameters have dtype(s) {sorted(map(str, params_dtypes))}; pass dtype="
                       "'float64' or 'float32' (gradbench's dtypes) to convert them")
    return names[params_dtypes.pop()]


def _split_ends(items):
    """(input layer, the blocks' items, head): the Linear layers not followed by a batch norm or
    an activation at either end."""
    input_layer = head = None
    if (len(items) >= 2 and isinstance(items[0][1], nn.Linear)
            and isinstance(items[1][1], (nn.Linear, Residual))):
        input_layer = items.pop(0)
    elif (isinstance(items[0][1], nn.Linear) and items[0][1].in_features != items[0][1].out_features
          and len(items) >= 2 and isinstance(items[1][1], _ACTIVATION_TYPES + (nn.BatchNorm1d,))):
        m = items[0][1]
        raise _Refused(f"{_describe(m)} at {items[0][0]!r} is followed by {_describe(items[1][1])}: gradbench's "
                       f"input layer (D -> N) is linear; write it as Linear({m.in_features}, {m.out_features}) "
                       f"followed by the first block Linear({m.out_features}, {m.out_features}), ...")
    if (len(items) >= 3 and isinstance(items[-1][1], _ACTIVATION_TYPES) and isinstance(items[-2][1], nn.Linear)
            and items[-2][1].in_features != items[-2][1].out_features
            and any(isinstance(m, nn.Linear) and m.out_features == items[-2][1].in_features for _, m in items[:-2])):
        # a head Linear(N, O) followed by an activation (nn.Sigmoid() before nn.BCELoss): said as that, not as
        # a width that changes inside the stack
        (path, m), (apath, act) = items[-2], items[-1]
        fix = ("gradbench's loss='bce' takes the head's outputs as logits, as nn.BCEWithLogitsLoss does (which is "
               "nn.BCELoss after the sigmoid): remove the Sigmoid and pass loss='bce'" if isinstance(act, nn.Sigmoid)
               else "gradbench's head is linear and its loss ('mse', 'bce' from logits, 'softmax_ce') reads the "
               "head's outputs: remove it")
        raise _Refused(f"{_describe(act)} at {apath!r} follows the head {_describe(m)} at {path!r} as the model's "
                       f"last module; {fix}")
    if len(items) >= 2 and isinstance(items[-1][1], nn.Linear) and not isinstance(items[-2][1], nn.Linear):
        head = items.pop()
    elif len(items) == 1 and isinstance(items[0][1], nn.Linear):
        path, m = items[0]
        where = f"{_describe(m)} at {path!r}"
        n = m.out_features
        if input_layer is not None:
            raise _Refused(f"{where} follows the input layer {_describe(input_layer[1])} at {input_layer[0]!r} with no "
                           f"block between them: put blocks Linear({m.in_features}, {m.in_features}) "
                           "[BatchNorm1d] activation before the head")
        if m.in_features == n:
            raise _Refused(f"{where}: a model with no block ({_BLOCK}) is not a stack: put an activation after it "
                           "(nn.Identity() for a linear layer)")
        raise _Refused(f"{where}: a model with no block ({_BLOCK}) is not a stack: put blocks Linear({n}, {n}) "
                       "[BatchNorm1d] activation after it (it is then the input layer)")
    return input_layer, items, head


def _blocks_of(items):
    """(blocks, width, residual group size, residual scale) of the stack's items."""
    residual_groups = [isinstance(m, Residual) for _, m in items]
    if not any(residual_groups):
        blocks, width = _parse_blocks(items, None, "the model")
        return blocks, width, 0, 1.0
    if not all(residual_groups):
        path, m = items[residual_groups.index(not residual_groups[0])]
        raise _Refused(f"{_describe(m)} at {path!r}: residual groups and plain blocks are mixed; gradbench needs "
                       "every layer in a residual group of the same size")
    blocks, width, k, scale = [], None, None, None
    for path, r in items:
        inner, width = _parse_blocks(_flatten(r.body, f"{path}.body."), width, f"the body of the Residual at {path!r}")
        if k is None:
            k, scale = len(inner), r.scale
        elif len(inner) != k:
            raise _Refused(f"{_describe(r)} at {path!r} holds {len(inner)} blocks, the first group {k}: "
                           "residual groups must all have the same size")
        elif r.scale != scale and not (math.isnan(r.scale) and math.isnan(scale)):  # NaN: Stack refuses it
            raise _Refused(f"{_describe(r)} at {path!r}: residual scales must be equal (first group: {scale})")
        blocks.extend(inner)
    return blocks, width, k, scale


def _check_blocks(blocks, width):
    """One activation, batch norm everywhere or nowhere, in train mode, one eps; returns
    (activation name, its parameter, the batch norms' eps or None)."""
    first_act = None
    bn_eps = None
    for lin, bn, (apath, act) in blocks:
        where = f"{_describe(act)} at {apath!r}"
        name, p = _activation_of(where, act)
        if first_act is None:
            first_act = (name, p, apath)
        elif name != first_act[0] or (name != "prelu" and p != first_act[1]):
            raise _Refused(f"{where}: activations must be the same in every layer (the first is "
                           f"{_describe(blocks[0][2][1])} at {first_act[2]!r})")
        if (bn is None) != (blocks[0][1] is None):
            raise _Refused(f"{_describe(lin[1])} at {lin[0]!r}: batch norm must follow every Linear(N, N) or none")
        if bn is not None:
            bn_eps = _check_batchnorm(bn, width, bn_eps)
    return first_act[0], first_act[1], bn_eps


def _check_batchnorm(bn, width, bn_eps):
    bpath, b = bn
    bw = f"BatchNorm1d({b.num_features}) at {bpath!r}"
    if b.num_features != width:
        raise _Refused(f"{bw}: its width must be the stack's ({width})")
    if not b.training and (b.running_mean is not None or b.running_var is not None):  # what torch's forward reads
        raise _Refused(f"{bw} is in eval mode and would use its running statistics; gradbench's batch norm "
                       "uses batch statistics (train mode): call model.train() or use "
                       "BatchNorm1d(..., track_running_stats=False)")
    if bn_eps is not None and float(b.eps) != bn_eps:
        raise _Refused(f"{bw}: eps={b.eps} differs from the first batch norm's eps={bn_eps}")
    return float(b.eps)


def _check_ends(input_layer, head, loss, width, blocks):
    if input_layer is not None:
        path, m = input_layer
        if m.out_features != width:
            raise _Refused(f"{_describe(m)} at {path!r}: the input layer must map to the stack's width {width}")
        if m.in_features == width:
            raise _Refused(f"{_describe(m)} at {path!r} is an input layer of the stack's own width: gradbench has "
                           "an input layer only when input_dim != width (and it is linear); to make it a block, put an "
                           "activation after it (nn.Identity() for a linear layer)")
    if head is not None:
        path, m = head
        if m.in_features != width:
            raise _Refused(f"{_describe(m)} at {path!r}: the head must read the stack's width {width}")
        if loss is None:
            raise _Refused(f"the model ends in a head {_describe(m)} at {path!r}: give loss='mse', 'bce' or "
                           "'softmax_ce' (the loss is not part of nn.Sequential)")
        if loss == "sum_squares":
            raise _Refused(f"loss='sum_squares' is 0.5 ||h_L||^2 of the stack's top with no head, but the model "
                           f"ends in a head {_describe(m)} at {path!r}: use 'mse', 'bce' or 'softmax_ce'")
    elif loss not in (None, "sum_squares"):
        raise _Refused(f"loss={loss!r} needs a head Linear(N, O) as the model's last module; "
                       f"the model ends in {_describe(blocks[-1][2][1])} at {blocks[-1][2][0]!r}")


def _params_of(blocks, input_layer, head, act_name, width, dtype) -> Params:
    """The weights, copied into gradbench's layout."""
    def name(path, attr):
        return f"{path}.{attr}" if path else attr

    def bias(path, m, n):
        return _np(m.bias, dtype, name(path, "bias")) if m.bias is not None else np.zeros(n, dtype=dtype)

    L, N = len(blocks), width
    W = np.stack([_np(lin[1].weight, dtype, name(lin[0], "weight")) for lin, _, _ in blocks])
    b = np.stack([bias(*lin, N) for lin, _, _ in blocks])
    gamma = np.ones((L, N), dtype=dtype)
    beta = np.zeros((L, N), dtype=dtype)
    for l, (_, bn, _) in enumerate(blocks):
        if bn is not None and bn[1].affine:
            gamma[l] = _np(bn[1].weight, dtype, name(bn[0], "weight"))
            beta[l] = _np(bn[1].bias, dtype, name(bn[0], "bias"))
    slope = np.zeros(L, dtype=dtype)
    if act_name == "prelu":
        slope[:] = [_np(act[1].weight, dtype, name(act[0], "weight")).reshape(()) for _, _, act in blocks]
    p = dict(W=np.ascontiguousarray(W), b=np.ascontiguousarray(b), gamma=gamma, beta=beta, slope=slope)
    if input_layer is not None:
        p["W_in"] = _np(input_layer[1].weight, dtype, name(input_layer[0], "weight"))
        p["b_in"] = bias(*input_layer, N)
    if head is not None:
        p["W_out"] = _np(head[1].weight, dtype, name(head[0], "weight"))
        p["b_out"] = bias(*head, head[1].out_features)
    return Params(**p)


