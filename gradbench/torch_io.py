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
to gamma = 1, beta = 0.

gradbench's batch norm is train-mode batch normalisation (batch mean, biased batch variance), so
a ``BatchNorm1d`` is accepted in training mode, or in eval mode with
``track_running_stats=False`` (it then uses batch statistics too); a module in eval mode that
would use its running statistics is refused. Anything else (``Dropout``, ``LayerNorm``, a
``Linear`` of another width, mixed activations, ...) is refused with a message naming the first
module that cannot be mapped and why.
"""

from __future__ import annotations

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

from gradbench.params import GeneratedParams, Params, expected_shapes
from gradbench.spec import LOSSES, Stack, check_choice

__all__ = ["Residual", "from_torch", "to_torch", "loss_fn", "load", "SAFE_MODULES"]


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


def _np(t: torch.Tensor, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=dtype)


def _tensor(a: np.ndarray, dtype) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=dtype)


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

    Weights are copied (the stack's dtype); batch norm modules are in training mode (batch
    statistics, as gradbench). The loss is not part of the model: :func:`loss_fn` gives it.

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
        if stack.batch_norm:
            bn = nn.BatchNorm1d(N, eps=stack.bn_eps, dtype=dt)
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


def _unsupported_why(m: nn.Module) -> str:
    name = type(m).__name__
    if isinstance(m, nn.modules.dropout._DropoutNd):
        return f"{name} is not supported (gradbench computes one deterministic pass; remove it from the model)"
    if isinstance(m, nn.modules.batchnorm._NormBase) and not isinstance(m, nn.BatchNorm1d):
        return f"{name} is not supported (only BatchNorm1d after a Linear, on (batch, width) inputs)"
    return (f"{name} has no gradbench counterpart (supported: Linear, BatchNorm1d, Identity, Sigmoid, Tanh, ReLU, "
            "LeakyReLU, PReLU, ELU, SELU, SiLU, GELU and gradbench.torch_io.Residual)")


def _flatten(seq: nn.Sequential, prefix: str) -> list[tuple[str, nn.Module]]:
    """Children of ``seq`` with nested plain ``nn.Sequential`` containers flattened, with their paths."""
    out = []
    for name, m in seq.named_children():
        path = f"{prefix}{name}"
        if type(m) is nn.Sequential:
            out.extend(_flatten(m, path + "."))
        else:
            out.append((path, m))
    return out


def _chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules that ``model``'s forward applies one after the other (with their paths)."""
    if isinstance(model, nn.Sequential):
        return _flatten(model, "")
    if isinstance(model, Residual):
        return [("", model)]
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (an nn.Sequential), got {type(model).__name__}")
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
            if node.target in used:
                raise _Refused(f"{type(model).__name__}.forward uses module {node.target!r} twice (shared weights)")
            used.add(node.target)
            chain.append((node.target, model.get_submodule(node.target)))
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


def _parse_blocks(items: list[tuple[str, nn.Module]], width: int | None, what: str):
    """Split ``items`` into blocks Linear [BatchNorm1d] activation; returns (blocks, width)."""
    blocks, i = [], 0
    while i < len(items):
        path, m = items[i]
        where = f"{_describe(m)} at {what}{path!r}"
        if not isinstance(m, nn.Linear):
            if isinstance(m, _ACTIVATION_TYPES + (nn.BatchNorm1d,)):
                raise _Refused(f"{where}: expected a Linear here (a block is Linear(N, N), optional BatchNorm1d(N), "
                               "then one activation)")
            raise _Refused(f"{where}: {_unsupported_why(m)}")
        if m.in_features != m.out_features:
            raise _Refused(f"{where}: widths must be uniform inside the stack (Linear(N, N) blocks"
                           + (f", N = {width} here)" if width else ")"))
        if width is not None and m.in_features != width:
            raise _Refused(f"{where}: widths must be uniform inside the stack (N = {width} before it)")
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
            after = f"{_describe(act[1])} at {what}{act[0]!r}"
            if isinstance(act[1], (nn.Linear, nn.BatchNorm1d)):
                raise _Refused(f"{after} follows {where} without an activation: every block ends with one "
                               "activation (use nn.Identity() for a linear layer)")
            _activation_of(after, act[1])  # refuses it with the reason
        blocks.append((items[i - (1 if bn else 0)], bn, act))
        i += 2
    return blocks, width


def from_torch(model: nn.Module, dtype: str | None = None, *, loss=None) -> tuple[Stack, Params]:
    """The gradbench stack and parameters of a PyTorch model (module docstring for the mapping).

    Parameters
    ----------
    model : nn.Module
        An ``nn.Sequential`` (nested ``nn.Sequential`` containers are flattened) or a module
        whose forward is a plain chain of submodules (traced with ``torch.fx``).
    dtype : {"float64", "float32"}, optional
        Of the returned parameters; default: the model's (which must then be one of these).
    loss : str or torch loss module, optional
        Required when the model ends in a head ``Linear(N, O)``: ``"mse"``, ``"bce"`` (from
        logits) or ``"softmax_ce"``, or ``nn.MSELoss()``, ``nn.BCEWithLogitsLoss()``,
        ``nn.CrossEntropyLoss()`` with ``reduction='mean'``. Without a head the loss is
        ``sum_squares`` (``0.5 * ||h_L||^2``).

    Returns
    -------
    (Stack, Params)
        The weights copied; ``Stack.init`` is left at its default (it only matters for
        :func:`gradbench.init_params`).

    Raises
    ------
    ValueError
        Naming the first module that cannot be mapped and why.
    """
    if dtype is not None:
        check_choice("dtype", dtype, tuple(_TORCH_DTYPES))
    loss = _loss_name(loss)
    try:
        return _from_torch(model, dtype, loss)
    except _Refused as exc:
        raise ValueError(f"cannot map the model to a gradbench stack: {exc}") from None


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


def _from_torch(model, dtype, loss):
    items = _chain(model)
    if not items:
        raise _Refused("the model has no modules")
    params_dtypes = {p.dtype for p in model.parameters()}
    names = {v: k for k, v in _TORCH_DTYPES.items()}
    if dtype is None:
        bad = [d for d in params_dtypes if d not in names]
        if bad or len(params_dtypes) != 1:
            raise _Refused(f"the model's parameters have dtype(s) {sorted(map(str, params_dtypes))}; pass dtype="
                           "'float64' or 'float32' (gradbench's dtypes) to convert them")
        dtype = names[params_dtypes.pop()]
    # the input layer and the head: Linear layers not followed by a batch norm or an activation
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
    if len(items) >= 2 and isinstance(items[-1][1], nn.Linear) and not isinstance(items[-2][1], nn.Linear):
        head = items.pop()
    elif len(items) == 1 and isinstance(items[0][1], nn.Linear):
        raise _Refused(f"{_describe(items[0][1])} at {items[0][0]!r}: a model with no block "
                       "(Linear(N, N) [BatchNorm1d(N)] activation) is not a stack")
    if not items:
        raise _Refused("the model has no block Linear(N, N) [BatchNorm1d(N)] activation between its input layer "
                       "and head")
    residual_groups = [isinstance(m, Residual) for _, m in items]
    if any(residual_groups):
        if not all(residual_groups):
            path, m = items[residual_groups.index(not residual_groups[0])]
            raise _Refused(f"{_describe(m)} at {path!r}: residual groups and plain blocks are mixed; gradbench needs "
                           "every layer in a residual group of the same size")
        blocks, width, k, scale = [], None, None, None
        for path, r in items:
            inner, width = _parse_blocks(_flatten(r.body, f"{path}.body."), width, "")
            if k is None:
                k, scale = len(inner), r.scale
            elif len(inner) != k:
                raise _Refused(f"{_describe(r)} at {path!r} holds {len(inner)} blocks, the first group {k}: "
                               "residual groups must all have the same size")
            elif r.scale != scale:
                raise _Refused(f"{_describe(r)} at {path!r}: residual scales must be equal (first group: {scale})")
            blocks.extend(inner)
    else:
        blocks, width = _parse_blocks(items, None, "")
        k, scale = 0, 1.0
    # one activation, batch norm everywhere or nowhere, one eps
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
            bpath = lin[0]
            raise _Refused(f"{_describe(lin[1])} at {bpath!r}: batch norm must follow every Linear(N, N) or none")
        if bn is not None:
            bpath, b = bn
            bw = f"BatchNorm1d({b.num_features}) at {bpath!r}"
            if b.num_features != width:
                raise _Refused(f"{bw}: its width must be the stack's ({width})")
            if not b.training and b.track_running_stats:
                raise _Refused(f"{bw} is in eval mode and would use its running statistics; gradbench's batch norm "
                               "uses batch statistics (train mode): call model.train() or use "
                               "BatchNorm1d(..., track_running_stats=False)")
            if bn_eps is None:
                bn_eps = float(b.eps)
            elif float(b.eps) != bn_eps:
                raise _Refused(f"{bw}: eps={b.eps} differs from the first batch norm's eps={bn_eps}")
    act_name, act_param, _ = first_act
    if input_layer is not None:
        path, m = input_layer
        if m.out_features != width:
            raise _Refused(f"{_describe(m)} at {path!r}: the input layer must map to the stack's width {width}")
        if m.in_features == width:
            raise _Refused(f"{_describe(m)} at {path!r} is an input layer of the stack's own width: gradbench has "
                           "an input layer only when input_dim != width (and it is linear)")
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
                       f"the model ends in {_describe(blocks[-1][2][1])}")
    L = len(blocks)
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

    def bias(m, n):
        return _np(m.bias, dtype) if m.bias is not None else np.zeros(n, dtype=dtype)

    N = width
    W = np.stack([_np(lin[1].weight, dtype) for lin, _, _ in blocks])
    b = np.stack([bias(lin[1], N) for lin, _, _ in blocks])
    gamma = np.ones((L, N), dtype=dtype)
    beta = np.zeros((L, N), dtype=dtype)
    for l, (_, bn, _) in enumerate(blocks):
        if bn is not None and bn[1].affine:
            gamma[l] = _np(bn[1].weight, dtype)
            beta[l] = _np(bn[1].bias, dtype)
    slope = np.zeros(L, dtype=dtype)
    if act_name == "prelu":
        slope[:] = [float(act[1].weight.detach().reshape(())) for _, _, act in blocks]
    p = dict(W=np.ascontiguousarray(W), b=np.ascontiguousarray(b), gamma=gamma, beta=beta, slope=slope)
    if input_layer is not None:
        p["W_in"] = _np(input_layer[1].weight, dtype)
        p["b_in"] = bias(input_layer[1], N)
    if head is not None:
        p["W_out"] = _np(head[1].weight, dtype)
        p["b_out"] = bias(head[1], head[1].out_features)
    return stack, Params(**p)


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
            raise ValueError(f"{path}: the file holds {what}, which gradbench does not load (only nn.Sequential, "
                             "Linear, BatchNorm1d, the activations and gradbench.torch_io.Residual are allowed; "
                             "torch.load weights_only=True)") from None
        first = msg.splitlines()[0].split(". ")[0][:200] if msg else ""
        raise ValueError(f"{path}: not a model saved with torch.save(model, path) ({type(exc).__name__}: {first})") from None
    if not isinstance(obj, nn.Module):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a model: save the module itself with "
                         "torch.save(model, path) (a state_dict has no architecture)")
    return obj
