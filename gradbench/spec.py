"""The description of a deep stack: :class:`Stack`, validated once, frozen.

This module is the user-facing description only and depends on nothing of the backends; the
kernels see a stack as two small arrays of codes and floats (:func:`gradbench.abi.kernel_config`).

Model (dimension letters used throughout: L depth, B batch, N width, D input dim)::

    h_0 = x                                              (B, N)
    z_l = h_l W_l^T + b_l                                W_l (N, N)
    z_l <- gamma_l * (z_l - mean_B) * rstd_B + beta_l    if batch_norm (train mode)
    a_l = phi(z_l)
    h_{l+1} = a_l                                        plain
    h_{l+1} = h_{l+1-k} + residual_scale * a_l           at the end of every group of k layers
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import numpy as np

# The activations; their position in this tuple is their code in every backend (gradbench.abi).
ACTIVATIONS = (
    "identity", "sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "swish", "gelu",
)
# Default of the activation's own parameter (leaky slope, initial PReLU slope, ELU alpha).
ACT_PARAM_DEFAULT = {"leaky_relu": 0.01, "prelu": 0.25, "elu": 1.0}
# Positively homogeneous activations: phi(c z) = c phi(z) for c > 0.
HOMOGENEOUS = frozenset({"identity", "relu", "leaky_relu", "prelu"})
# The ReLU family: units with z <= 0 for the whole batch are "dead" (no or little gradient).
RELU_FAMILY = frozenset({"relu", "leaky_relu", "prelu"})
# Those whose phi' fades, so that a saturated fraction (|phi'| < 1 % of its largest value) says
# something: sigmoid and tanh at both ends, ELU, SELU, swish and GELU on the negative side.
SATURATING = frozenset(ACTIVATIONS) - RELU_FAMILY - {"identity"}

INITS = (
    "normal", "xavier_normal", "xavier_uniform", "he_normal", "he_uniform", "lecun_normal",
    "orthogonal",
)
# The PyTorch / Keras names of the same schemes; a Stack stores the canonical name.
INIT_ALIASES = {
    "kaiming_normal": "he_normal", "kaiming_uniform": "he_uniform",
    "glorot_normal": "xavier_normal", "glorot_uniform": "xavier_uniform",
}
LOSSES = ("sum_squares", "mse", "bce", "softmax_ce")
CLIP_MODES = ("value", "norm")
CLIP_TARGETS = ("signal", "layer", "global")
DTYPES = ("float64", "float32")
_NP_DTYPES = {name: np.dtype(name) for name in DTYPES}


# Other libraries' names of what gradbench calls otherwise: the hint for them names ours (a
# spelling match sent PyTorch's SiLU to 'selu').
KNOWN_AS = {"silu": "swish", "logistic": "sigmoid", "linear": "identity",
            "cross_entropy": "softmax_ce", "crossentropy": "softmax_ce", "categorical_crossentropy": "softmax_ce",
            "ce": "softmax_ce", "binary_cross_entropy": "bce", "binary_crossentropy": "bce",
            "bce_with_logits": "bce", "bcewithlogits": "bce", "mean_squared_error": "mse", "l2": "mse"}
# Names of other libraries that gradbench has no counterpart for, and why (no "did you mean" to
# another function: 'rmsprop' got "did you mean 'momentum'?").
NO_COUNTERPART = {
    "gelu_tanh": "gradbench's gelu is the exact erf form; the tanh approximation has no counterpart",
    "rmsprop": "gradbench's optimizers are sgd, momentum and adam",
    "adamw": "gradbench has no AdamW (decoupled weight decay); gb.train's adam takes weight_decay as coupled L2, "
             "as torch.optim.Adam does",
    "nll": "use softmax_ce on the logits (log-softmax and NLL in one)",
}
# A misspelling is corrected to a name at least this similar (difflib's ratio); nothing below it
HINT_CUTOFF = 0.6


def closest_hint(name: str, valid) -> str:
    """The hint for a wrong name: what other libraries call it (:data:`KNOWN_AS`), the valid name
    it matches ignoring case, else the closest one."""
    names = [v for v in valid if isinstance(v, str)]
    if not isinstance(name, str):  # None, a number: no spelling to correct
        return ""
    ours = KNOWN_AS.get(name.lower())
    if ours in names:
        return f"; {name!r} is gradbench's {ours!r} (the same function under another library's name)"
    if name.lower() in NO_COUNTERPART:
        return f"; {NO_COUNTERPART[name.lower()]}"
    lower = {v.lower(): v for v in names}
    key = str(name).lower()
    starts = [v for k, v in lower.items() if key and k.startswith(key)] if key not in lower else []
    if len(starts) > 1:  # 'he': he_normal or he_uniform (below the cutoff, it got no hint)
        return f"; did you mean {' or '.join(map(repr, starts))}?"
    match = ([lower[key]] if key in lower else starts or
             difflib.get_close_matches(key, list(lower), n=1, cutoff=HINT_CUTOFF))
    return f"; did you mean {lower.get(match[0], match[0])!r}?" if match else ""


def dead_below_zero(activation: str, activation_param: float | None) -> bool:
    """Whether units with z <= 0 pass no gradient: ReLU, or a leaky ReLU / PReLU of slope 0 (a
    PReLU as initialised: its slope is a parameter that training may move)."""
    return activation == "relu" or (activation in RELU_FAMILY and activation_param == 0)


def units_die(stack, slopes=None) -> bool:
    """:func:`dead_below_zero` of ``stack`` with the slopes the weights actually have: for PReLU,
    ``slopes`` (``params.slope``, a model's own or trained ones; None: the stack's
    ``activation_param``, which drawn weights take) all 0. A model's PReLU(init=0) whose slopes
    are 0.5 has no dead units."""
    if stack.activation == "prelu" and slopes is not None:
        return bool(np.all(np.asarray(slopes) == 0))
    return stack.dead_below_zero


def check_choice(param: str, value, valid) -> None:
    """Raise ``ValueError`` naming ``param``, the valid names and the closest one."""
    if value not in valid:
        raise ValueError(
            f"{param}={value!r} is not one of {', '.join(map(repr, valid))}{closest_hint(value, valid)}"
        )


def _check_int(param: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{param} must be an int, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{param} must be >= {low}, got {value}")


def _check_real(param: str, value, *, positive: bool = False, nonneg: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{param} must be a real number, got {type(value).__name__} {value!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int beyond any float (10**400)
        raise ValueError(f"{param} must be a finite float, got an integer of {len(str(abs(value)))} digits, "
                         "beyond the float range") from None
    if not finite:
        raise ValueError(f"{param} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{param} must be > 0, got {value}")
    if nonneg and value < 0:
        raise ValueError(f"{param} must be >= 0, got {value}")


def check_activation_param(activation: str, param) -> None:
    """The rules of an ``activation_param`` in every dtype (:class:`Stack`, :mod:`gradbench.theory`):
    None, or a finite real number for an activation that takes one (:data:`ACT_PARAM_DEFAULT`),
    and ELU's alpha > 0. Its range in a dtype: :data:`SCALE_RANGE`."""
    if param is None:
        return
    _check_real("activation_param", param)
    if activation not in ACT_PARAM_DEFAULT:
        raise ValueError(
            f"activation_param is only used by {', '.join(ACT_PARAM_DEFAULT)}; "
            f"activation={activation!r} takes none"
        )
    if activation == "elu" and param <= 0:
        raise ValueError(f"activation_param must be > 0 for elu (its alpha), got {param}")


def scheme_gain(init: str, sigma_w: float | None = None) -> float:
    """The gain of a weight scheme: ``sigma_w`` when given, else the scheme's default
    (sqrt 2 for he_*, else 1)."""
    if sigma_w is not None:
        return float(sigma_w)
    return math.sqrt(2.0) if init.startswith("he_") else 1.0


# The weight and bias scales whose draws a dtype holds as normal numbers: entries ~ sigma_w /
# sqrt(fan_in) (or sigma_b) times a standard normal draw (|z| up to ~6, fan_in up to ~1e8) stay
# far inside [tiny, max]. Beyond them the draw itself would round to 0 or overflow to inf (a float32
# stack at sigma_w = 1e-50 had all-zero weights and "no gradient"; at 1e39 it was refused as
# "params.W contains NaN or Inf", naming an array the caller never passed).
# A nonzero activation_param (leaky or PReLU slope, ELU alpha) keeps to the same range in
# magnitude: it multiplies the pre-activations (or exp(z) - 1) as the gain multiplies the draws, and
# the range leaves the same margin, so its products with values from ~1e-8 to ~1e8 stay normal
# numbers (1e-18 to 1e18 in float64). Beyond it a float32 stack gave a NaN loss (a leaky slope of
# 1e300, which float32 does not hold) or drew its PReLU slope as inf (1e39). The first layer's
# products with pre-activations of ~sigma_w |x| must fit as well: a float32 leaky stack with slope and
# sigma_w both 1e20 overflows there, reported as first_nonfinite_forward = 0.
# In float32 the other scales keep to the same range (a nonzero one in magnitude): bn_eps,
# residual_scale, clip_threshold and the gated cells' forget_bias and update_bias enter the kernels' arithmetic as
# float32 numbers (a norm clip at 1e-50 scaled the signal to 0 and read "no gradient"; bn_eps or
# residual_scale of 1e39 became inf). float64 takes any finite value of them.
SCALE_RANGE = {"float64": (1e-290, 1e290), "float32": (1e-30, 1e30)}
POSITIVE_SCALES = ("bn_eps", "clip_threshold")


def _num(x: float) -> str:
    return f"{x:.3g}".replace("e+", "e")


def check_param_range(param, dtype: str) -> None:
    """A nonzero ``activation_param`` (None: the default) within :data:`SCALE_RANGE` of ``dtype``
    in magnitude."""
    lo, hi = SCALE_RANGE[dtype]
    if param is None or param == 0 or lo <= abs(float(param)) <= hi:
        return
    other = "" if dtype == "float64" else " (float64: 1e-290 to 1e290)"
    raise ValueError(f"activation_param={_num(param)} is beyond what {dtype} holds: its products with the "
                     f"pre-activations would {'underflow' if abs(float(param)) < lo else 'overflow to inf'}; in "
                     f"{dtype} activation_param must be 0 or between {_num(lo)} and {_num(hi)} in magnitude{other}")


class _Net:
    """What a :class:`Stack` and a :class:`~gradbench.Recurrent` derive alike from their
    ``loss`` and ``dtype`` fields."""

    def _dtype_as_name(self) -> None:
        """A NumPy dtype or scalar type (``np.dtype("float32")``, ``np.float32``) becomes its name,
        as the dtype's name is what every file and report holds; anything else stays as given."""
        d = self.dtype
        if isinstance(d, np.dtype) or (isinstance(d, type) and issubclass(d, np.generic)):
            object.__setattr__(self, "dtype", np.dtype(d).name)

    def _check_scales(self) -> None:
        """The dtype (a NumPy dtype, ``np.dtype("float32")``, becomes its name, as NumPy scalars
        become Python numbers) and, within :data:`SCALE_RANGE` of it, ``sigma_w``, a nonzero
        ``sigma_b`` and the magnitude of a nonzero ``activation_param``; in float32 also of
        ``bn_eps``, ``residual_scale``, ``clip_threshold``, ``forget_bias`` and ``update_bias`` (those the net
        has). Called once the dtype is one of :data:`DTYPES`."""
        if isinstance(self.dtype, np.dtype):
            object.__setattr__(self, "dtype", self.dtype.name)
        lo, hi = SCALE_RANGE[self.dtype]
        for name in ("sigma_w", "sigma_b"):
            v = getattr(self, name, None)
            if v is None or v == 0 or lo <= float(v) <= hi:
                continue
            other = "" if self.dtype == "float64" else f"; float64 holds 1e-290 <= {name} <= 1e290"
            raise ValueError(f"{name}={_num(v)} is beyond what {self.dtype} weights hold: its draws would "
                             f"{'round to 0' if float(v) < lo else 'overflow to inf'}; {self.dtype} holds "
                             f"{_num(lo)} <= {name} <= {_num(hi)}{other}")
        check_param_range(getattr(self, "activation_param", None), self.dtype)
        for name in ("bn_eps", "residual_scale", "clip_threshold", "forget_bias", "update_bias"):
            v = getattr(self, name, None)
            if self.dtype == "float64" or v is None or v == 0 or lo <= abs(float(v)) <= hi:
                continue  # float64 holds any finite value (clip_threshold=1e300: never clip)
            other = "; float64 holds any finite value"
            raise ValueError(f"{name}={_num(v)} is beyond what {self.dtype} holds: the kernels' arithmetic with it would "
                             f"{'underflow' if abs(float(v)) < lo else 'overflow to inf'}; in {self.dtype} {name} must "
                             f"be {'' if name in POSITIVE_SCALES else '0 or '}between {_num(lo)} and {_num(hi)}"
                             f"{' in magnitude' if name not in POSITIVE_SCALES else ''}{other}")

    @property
    def has_head(self) -> bool:
        return self.loss != "sum_squares"

    @property
    def np_dtype(self) -> np.dtype:
        return _NP_DTYPES.get(self.dtype) or np.dtype(self.dtype)


@dataclass(frozen=True)
class Stack(_Net):
    """A deep dense stack, its remedies and its loss.

    A field that only acts with another (``bn_eps`` with ``batch_norm``, ``residual_scale`` with
    ``residual``, ``clip_threshold`` and ``clip_on`` with ``clip``) is kept as given without it and
    does nothing there, so that ``stack.replace(batch_norm=False)`` and back keeps it; the command
    line, where such an option can only be a mistake, refuses it (``--bn-eps`` without
    ``--batch-norm``). ``activation_param`` is the exception: an activation without a parameter
    refuses one.

    Parameters
    ----------
    depth, width : int
        Number of layers L >= 1 and units per layer N >= 1.
    activation : str
        One of :data:`ACTIVATIONS` (formulas in :mod:`gradbench.activations`). The ReLU family
        (relu, leaky_relu, prelu) uses its left derivative at 0: phi'(0) = 0 (relu) or the slope.
    activation_param : float, optional
        Leaky-ReLU slope (default 0.01), initial PReLU slope (0.25) or ELU alpha (1.0): for
        leaky_relu and prelu 0 or, in magnitude, within :data:`SCALE_RANGE` of the dtype (1e-30 ..
        1e30 in float32); ELU's alpha > 0 within it.
    init : str
        Weight initialisation, one of :data:`INITS` (or a PyTorch/Keras name of
        :data:`INIT_ALIASES`, stored as the canonical name). Each scheme is a distribution family
        (normal, uniform, orthogonal) with a default gain ``sigma_w``: the weight variance is
        ``sigma_w**2 / fan_in`` (xavier: ``2 / (fan_in + fan_out)``).
    sigma_w : float, optional
        Override of the scheme's default gain: variance ``sigma_w**2 / fan_in``, for xavier
        ``sigma_w**2 * 2 / (fan_in + fan_out)`` (the same for the square stack layers; it differs
        for a non-square input layer and head).
    sigma_b : float
        Standard deviation of the biases (normal); 0 gives zero biases.
    batch_norm : bool
        Batch normalisation (train mode: batch mean and biased batch variance, as PyTorch's
        training forward) after each linear map; gamma = 1 and beta = 0 at init. Needs a
        batch of at least 2.
    bn_eps : float
        The epsilon of batch normalisation.
    residual : int
        Group size k of residual connections; 0 disables them. ``depth % k == 0`` is required.
    residual_scale : float
        The alpha in ``h_{l+1} = h_{l+1-k} + alpha * a_l``.
    clip : {"value", "norm"} or None
        Gradient clipping mode and ``clip_threshold`` c > 0.
    clip_on : {"signal", "layer", "global"}
        ``signal`` (the default): the backpropagated signal dL/dh_l is clipped at every layer,
        from dL/dh_L at the top down to dL/dh_0 (value: elementwise to [-c, c]; norm:
        Frobenius norm over the batch <= c). ``layer``: each layer's parameter gradients
        (W, b, gamma, beta, slope together; the input layer and the head count as one layer
        each). ``global``: all parameter gradients together, as PyTorch's ``clip_grad_norm_``,
        but scaled by exactly c / total (PyTorch uses c / (total + 1e-6)). Clipping acts on
        the exact values, at any depth.
    loss : str
        ``sum_squares`` (0.5 ||h_L||^2 summed over the batch, no head) or a linear head
        y = h_L W_out^T + b_out to ``output_dim`` with ``mse`` (mean over batch x outputs of
        (y - t)^2), ``bce`` (from logits, mean over batch x outputs) or ``softmax_ce`` (mean
        over the batch).
    input_dim : int, optional
        Data dimension D. When it differs from ``width`` a linear input layer
        ``h_0 = x W_in^T + b_in`` maps it to the width.
    output_dim : int
        Outputs of the head (classes for ``softmax_ce``).
    dtype : {"float64", "float32"}
        Or the NumPy dtype (``np.dtype("float32")``), stored as its name.
    """

    depth: int
    width: int
    activation: str = "tanh"
    activation_param: float | None = None
    init: str = "xavier_normal"
    sigma_w: float | None = None
    sigma_b: float = 0.0
    batch_norm: bool = False
    bn_eps: float = 1e-5
    residual: int = 0
    residual_scale: float = 1.0
    clip: str | None = None
    clip_threshold: float = 1.0
    clip_on: str = "signal"
    loss: str = "sum_squares"
    input_dim: int | None = None
    output_dim: int = 1
    dtype: str = "float64"

    def __post_init__(self):
        _check_int("depth", self.depth, 1)
        _check_int("width", self.width, 1)
        if self.init in INIT_ALIASES:
            object.__setattr__(self, "init", INIT_ALIASES[self.init])
        check_choice("activation", self.activation, ACTIVATIONS)
        check_activation_param(self.activation, self.activation_param)
        check_choice("init", self.init, INITS + tuple(INIT_ALIASES))
        if self.sigma_w is not None:
            _check_real("sigma_w", self.sigma_w, positive=True)
        _check_real("sigma_b", self.sigma_b, nonneg=True)
        if not isinstance(self.batch_norm, (bool, np.bool_)):
            raise TypeError(f"batch_norm must be a bool, got {self.batch_norm!r}")
        _check_real("bn_eps", self.bn_eps, positive=True)
        _check_int("residual", self.residual, 0)
        if self.residual and self.depth % self.residual:
            raise ValueError(
                f"residual={self.residual} must divide depth={self.depth} "
                "(every layer belongs to one residual group)"
            )
        _check_real("residual_scale", self.residual_scale)
        if self.clip is not None:
            check_choice("clip", self.clip, CLIP_MODES + (None,))
        _check_real("clip_threshold", self.clip_threshold, positive=True)  # also unused: .replace(clip=...)
        check_choice("clip_on", self.clip_on, CLIP_TARGETS)
        check_choice("loss", self.loss, LOSSES)
        if self.input_dim is not None:
            _check_int("input_dim", self.input_dim, 1)
        _check_int("output_dim", self.output_dim, 1)
        if self.loss == "softmax_ce" and self.output_dim < 2:
            raise ValueError("loss='softmax_ce' needs output_dim >= 2 (the number of classes)")
        self._dtype_as_name()
        check_choice("dtype", self.dtype, DTYPES)
        self._check_scales()
        self._normalise()

    def _normalise(self) -> None:
        """NumPy scalars become Python ints, floats and bools (np.int32 depth * width * width
        would wrap around in size estimates, and the fields go into JSON as they are)."""
        for f in ("depth", "width", "residual", "input_dim", "output_dim"):
            v = getattr(self, f)
            if v is not None:
                object.__setattr__(self, f, int(v))
        for f in ("activation_param", "sigma_w", "sigma_b", "bn_eps", "residual_scale", "clip_threshold"):
            v = getattr(self, f)
            if v is not None:
                object.__setattr__(self, f, float(v) + 0.0)  # -0.0 as 0.0 (it read "slope -0")
        object.__setattr__(self, "batch_norm", bool(self.batch_norm))

    # ----------------------------------------------------------------- derived
    @property
    def d_in(self) -> int:
        """The data dimension D (``input_dim`` or ``width``)."""
        return self.width if self.input_dim is None else self.input_dim

    @property
    def has_input_layer(self) -> bool:
        return self.d_in != self.width

    @property
    def act_param(self) -> float:
        """The activation's parameter with its default filled in (0 where it has none)."""
        if self.activation_param is not None:
            return float(self.activation_param)
        return float(ACT_PARAM_DEFAULT.get(self.activation, 0.0))

    @property
    def dead_below_zero(self) -> bool:
        """:func:`dead_below_zero` of this stack's activation."""
        return dead_below_zero(self.activation, self.activation_param)

    @property
    def gain(self) -> float:
        """The weight gain sigma_w: variance sigma_w**2 / fan_in (square layers)."""
        return scheme_gain(self.init, self.sigma_w)

    def replace(self, **changes) -> "Stack":
        """A copy with some fields changed (validated again)."""
        from dataclasses import replace

        return replace(self, **changes)
