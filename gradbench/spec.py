"""The description of a deep stack: :class:`Stack`, validated once, frozen.

Every backend receives the same stack, turned into two small arrays of codes and floats
(:func:`kernel_config`) so that a compiled kernel never touches a Python object.

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
import functools
import math
from dataclasses import dataclass

import numpy as np

# Activation codes shared by every backend (NumPy, Numba, C). Order is part of the ABI.
ACTIVATIONS = (
    "identity", "sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "swish", "gelu",
)
ACT_CODE = {name: code for code, name in enumerate(ACTIVATIONS)}
# Default of the activation's own parameter (leaky slope, initial PReLU slope, ELU alpha).
ACT_PARAM_DEFAULT = {"leaky_relu": 0.01, "prelu": 0.25, "elu": 1.0}
# Positively homogeneous activations: phi(c z) = c phi(z) for c > 0.
HOMOGENEOUS = frozenset({"identity", "relu", "leaky_relu", "prelu"})
RELU_FAMILY = frozenset({"relu", "leaky_relu", "prelu"})

SELU_LAMBDA = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717

INITS = (
    "normal", "xavier_normal", "xavier_uniform", "he_normal", "he_uniform", "lecun_normal",
    "orthogonal",
)
LOSSES = ("sum_squares", "mse", "bce", "softmax_ce")
CLIP_MODES = ("value", "norm")
CLIP_TARGETS = ("signal", "layer", "global")
DTYPES = ("float64", "float32")

# Integer codes of the signal clipping inside the backward kernels.
CLIP_NONE, CLIP_VALUE, CLIP_NORM = 0, 1, 2


def _closest(name: str, valid) -> str:
    names = [v for v in valid if isinstance(v, str)]
    match = difflib.get_close_matches(str(name), names, n=1, cutoff=0.0)
    return f"; did you mean {match[0]!r}?" if match else ""


def check_choice(param: str, value, valid) -> None:
    """Raise ``ValueError`` naming ``param``, the valid names and the closest one."""
    if value not in valid:
        raise ValueError(
            f"{param}={value!r} is not one of {', '.join(map(repr, valid))}{_closest(value, valid)}"
        )


def _check_int(param: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{param} must be an int, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{param} must be >= {low}, got {value}")


def _check_real(param: str, value, *, positive: bool = False, nonneg: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{param} must be a real number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{param} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{param} must be > 0, got {value}")
    if nonneg and value < 0:
        raise ValueError(f"{param} must be >= 0, got {value}")


@dataclass(frozen=True)
class Stack:
    """A deep dense stack, its remedies and its loss.

    Parameters
    ----------
    depth, width : int
        Number of layers L >= 1 and units per layer N >= 1.
    activation : str
        One of :data:`ACTIVATIONS`.
    activation_param : float, optional
        Leaky-ReLU slope (default 0.01), initial PReLU slope (0.25) or ELU alpha (1.0).
    init : str
        Weight initialisation, one of :data:`INITS`. Each scheme is a distribution family
        (normal, uniform, orthogonal) with a default gain ``sigma_w``: the weight variance is
        ``sigma_w**2 / fan_in`` (xavier: ``2 / (fan_in + fan_out)``).
    sigma_w : float, optional
        Override of the gain: variance ``sigma_w**2 / fan_in`` whatever the scheme's default.
    sigma_b : float
        Standard deviation of the biases (normal); 0 gives zero biases.
    batch_norm : bool
        Batch normalisation (train mode, batch statistics) after each linear map.
    bn_eps : float
        The epsilon of batch normalisation.
    residual : int
        Group size k of residual connections; 0 disables them. ``depth % k == 0`` is required.
    residual_scale : float
        The alpha in ``h_{l+1} = h_{l+1-k} + alpha * a_l``.
    clip : {"value", "norm"} or None
        Gradient clipping mode and ``clip_threshold`` c > 0.
    clip_on : {"signal", "layer", "global"}
        ``signal``: the backpropagated signal dL/dh_l is clipped at every layer (value:
        elementwise to [-c, c]; norm: Frobenius norm over the batch <= c). ``layer``: each
        layer's parameter gradients (W, b, gamma, beta, slope together). ``global``: all
        parameter gradients together, as ``clip_grad_norm_`` does.
    loss : str
        ``sum_squares`` (0.5 ||h_L||^2, no head) or a linear head to ``output_dim`` with
        ``mse``, ``bce`` (from logits) or ``softmax_ce``.
    input_dim : int, optional
        Data dimension D. When it differs from ``width`` a linear input layer
        ``h_0 = x W_in^T + b_in`` maps it to the width.
    output_dim : int
        Outputs of the head (classes for ``softmax_ce``).
    dtype : {"float64", "float32"}
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
        check_choice("activation", self.activation, ACTIVATIONS)
        if self.activation_param is not None:
            _check_real("activation_param", self.activation_param)
            if self.activation not in ACT_PARAM_DEFAULT:
                raise ValueError(
                    f"activation_param is only used by {', '.join(ACT_PARAM_DEFAULT)}; "
                    f"activation={self.activation!r} takes none"
                )
            if self.activation == "elu" and self.activation_param <= 0:
                raise ValueError(f"activation_param (ELU alpha) must be > 0, got {self.activation_param}")
        check_choice("init", self.init, INITS)
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
            _check_real("clip_threshold", self.clip_threshold, positive=True)
        check_choice("clip_on", self.clip_on, CLIP_TARGETS)
        check_choice("loss", self.loss, LOSSES)
        if self.input_dim is not None:
            _check_int("input_dim", self.input_dim, 1)
        _check_int("output_dim", self.output_dim, 1)
        if self.loss == "softmax_ce" and self.output_dim < 2:
            raise ValueError("loss='softmax_ce' needs output_dim >= 2 (the number of classes)")
        check_choice("dtype", self.dtype, DTYPES)

    # ----------------------------------------------------------------- derived
    @property
    def d_in(self) -> int:
        """The data dimension D (``input_dim`` or ``width``)."""
        return self.width if self.input_dim is None else self.input_dim

    @property
    def has_input_layer(self) -> bool:
        return self.d_in != self.width

    @property
    def has_head(self) -> bool:
        return self.loss != "sum_squares"

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def act_param(self) -> float:
        """The activation's parameter with its default filled in (0 where it has none)."""
        if self.activation_param is not None:
            return float(self.activation_param)
        return float(ACT_PARAM_DEFAULT.get(self.activation, 0.0))

    @property
    def gain(self) -> float:
        """The weight gain sigma_w: variance sigma_w**2 / fan_in (square layers)."""
        if self.sigma_w is not None:
            return float(self.sigma_w)
        return math.sqrt(2.0) if self.init.startswith("he_") else 1.0

    @property
    def signal_clip(self) -> int:
        if self.clip is None or self.clip_on != "signal":
            return CLIP_NONE
        return CLIP_VALUE if self.clip == "value" else CLIP_NORM

    def replace(self, **changes) -> "Stack":
        """A copy with some fields changed (validated again)."""
        from dataclasses import replace

        return replace(self, **changes)


@functools.lru_cache(maxsize=64)
def dphi_max(activation: str, param: float) -> float:
    """max_z phi'(z): the scale of the saturation threshold 0.01 * max phi'."""
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
    # swish and gelu: maximise phi' on a fine grid (both peak near z = 2.4 and 1.4).
    from gradbench import reference

    z = np.linspace(0.0, 6.0, 600001)
    return float(reference.activation_grad(z, ACT_CODE[activation], param).max())


# Layout of the configuration arrays passed to every kernel.
I_ACT, I_BN, I_RESIDUAL, I_CLIP, I_RESCALE_FWD, I_SIZE = range(6)
F_ACT_PARAM, F_RES_SCALE, F_CLIP, F_BN_EPS, F_SAT, F_SIZE = range(6)


def kernel_config(stack: Stack, rescale_forward: bool) -> tuple[np.ndarray, np.ndarray]:
    """Integer and float configuration arrays, the only view of the stack a kernel gets.

    ``icfg``: activation code, batch norm (0/1), residual group size, signal clip mode,
    forward rescaling (0/1). ``fcfg``: activation parameter, residual scale, clip threshold,
    batch-norm eps, saturation threshold (0.01 * max phi').
    """
    icfg = np.zeros(I_SIZE, dtype=np.int64)
    icfg[I_ACT] = ACT_CODE[stack.activation]
    icfg[I_BN] = int(bool(stack.batch_norm))
    icfg[I_RESIDUAL] = stack.residual
    icfg[I_CLIP] = stack.signal_clip
    icfg[I_RESCALE_FWD] = int(bool(rescale_forward))
    fcfg = np.zeros(F_SIZE, dtype=np.float64)
    fcfg[F_ACT_PARAM] = stack.act_param
    fcfg[F_RES_SCALE] = stack.residual_scale
    fcfg[F_CLIP] = stack.clip_threshold
    fcfg[F_BN_EPS] = stack.bn_eps
    fcfg[F_SAT] = 0.01 * dphi_max(stack.activation, stack.act_param)
    return icfg, fcfg
