"""The description of a recurrent net unrolled through time: :class:`Recurrent`, validated once, frozen.

Conventions follow ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` (one layer, ``batch_first=False``) so that
parameters map 1:1. Dimension letters: T steps, B batch, N hidden units (torch's ``hidden_size``),
D input dimension, G gates (1 rnn, 4 lstm, 3 gru), GN = G * N rows of the weight matrices::

    rnn   h_t = phi(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
    lstm  i, f, g, o = sigma, sigma, tanh, sigma of the four N-blocks (in that order) of
          x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh
          c_t = f * c_{t-1} + i * g,  h_t = o * tanh(c_t)
    gru   r, z = sigma of the first two N-blocks of x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh
          n = tanh(x_t W_in^T + b_in + r * (h_{t-1} W_hn^T + b_hn))
          h_t = (1 - z) * n + z * h_{t-1}

``W_ih`` (GN, D), ``W_hh`` (GN, N), ``b_ih``, ``b_hh`` (GN,), h_{-1} = c_{-1} = 0 unless given.
Steps are numbered t = 0 .. T-1; step t reads x_t and h_{t-1} and writes h_t.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradbench.spec import (
    ACT_PARAM_DEFAULT, ACTIVATIONS, CLIP_MODES, DTYPES, HOMOGENEOUS, INITS, LOSSES, _check_int, _check_real, _Net,
    check_choice, scheme_gain,
)

CELLS = ("rnn", "lstm", "gru")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
# Gate names of each cell in torch's order (the N-blocks of W_ih, W_hh, b_ih, b_hh).
GATE_NAMES = {"rnn": ("h",), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}
# Activations of a vanilla rnn cell: every stack activation but PReLU (a learnable slope per
# layer has no single meaning in a cell whose weights are shared by all steps).
RNN_ACTIVATIONS = tuple(a for a in ACTIVATIONS if a != "prelu")
# Initialisations of W_hh: the stack schemes (per gate block) and the identity (IRNN, Le et al. 2015).
RECURRENT_INITS = INITS + ("identity",)
LOSS_ON = ("last", "every")
CLIP_TARGETS = ("signal", "matrix", "global")


@dataclass(frozen=True, kw_only=True)
class Recurrent(_Net):
    """A one-layer recurrent net (vanilla RNN, LSTM or GRU) unrolled over ``steps`` steps.

    Parameters
    ----------
    cell : {"rnn", "lstm", "gru"}
    steps, hidden : int
        Sequence length T >= 1 and hidden units N >= 1.
    input_dim : int, optional
        Input features D per step (default: ``hidden``).
    activation : str, optional
        The nonlinearity phi of a vanilla ``rnn`` cell (default ``tanh``; any stack activation
        but ``prelu``). LSTM and GRU cells have theirs fixed (sigmoid gates, tanh) and take none.
    activation_param : float, optional
        Leaky-ReLU slope or ELU alpha of the rnn cell.
    init : str
        Scheme of ``W_ih`` (and of the head), one of the stack inits, per gate block
        (fan_in D, fan_out N).
    recurrent_init : str
        Scheme of ``W_hh`` per gate block (N, N): a stack init, or ``identity`` (gain * I).
        ``orthogonal`` and ``identity`` make a linear cell norm-preserving at gain 1.
    sigma_w : float, optional
        Gain of ``W_hh`` (variance sigma_w^2 / N for the normal schemes; the factor of the
        orthogonal and identity matrices), overriding the scheme's default (1; sqrt 2 for he_*).
    sigma_b : float
        Standard deviation of ``b_ih`` and ``b_hh`` (normal); 0 gives zero biases.
    forget_bias : float, optional
        LSTM only: added to the forget-gate block of ``b_ih`` at init (default 1.0).
    update_bias : float, optional
        GRU only: added to the update-gate (z) block of ``b_ih`` at init (default 0). The GRU
        keeps z h_{t-1} + (1 - z) n_t, so a large bias (z near 1) carries the state and its
        gradient across many steps: the GRU's counterpart of the LSTM's forget-gate bias.
    loss : str
        ``sum_squares`` (0.5 ||h_{T-1}||^2, no head) or a linear head ``y_t = h_t W_out^T + b_out``
        to ``output_dim`` outputs with ``mse``, ``bce`` (from logits) or ``softmax_ce``.
    loss_on : {"last", "every"}
        The head reads the last step only, or every step (then the loss is the mean over the
        steps and the batch, and every step receives a gradient from it).
    clip : {"value", "norm"} or None
        Clipping mode and ``clip_threshold`` c > 0.
    clip_on : {"signal", "matrix", "global"}
        ``signal``: the backpropagated state (dL/dh_t, with the LSTM's part of dL/dc_t carried
        back through c_{t+1}: value clipping elementwise on both, norm clipping on their joint
        norm over the batch) at every step;
        ``matrix``: each parameter gradient (W_ih, W_hh, b_ih, b_hh, W_out, b_out) on its own;
        ``global``: all of them by one factor, as ``torch.nn.utils.clip_grad_norm_``.
    dtype : {"float64", "float32"}
    """

    cell: str = "rnn"
    steps: int
    hidden: int
    input_dim: int | None = None
    activation: str | None = None
    activation_param: float | None = None
    init: str = "xavier_normal"
    recurrent_init: str = "orthogonal"
    sigma_w: float | None = None
    sigma_b: float = 0.0
    forget_bias: float | None = None
    update_bias: float | None = None
    loss: str = "sum_squares"
    loss_on: str = "last"
    output_dim: int = 1
    clip: str | None = None
    clip_threshold: float = 1.0
    clip_on: str = "signal"
    dtype: str = "float64"

    def __post_init__(self):
        check_choice("cell", self.cell, CELLS)
        _check_int("steps", self.steps, 1)
        _check_int("hidden", self.hidden, 1)
        if self.input_dim is not None:
            _check_int("input_dim", self.input_dim, 1)
        if self.cell == "rnn":
            if self.activation is not None:
                if self.activation == "prelu":
                    raise ValueError("activation='prelu' is not valid for cell='rnn' (a learnable slope per layer has "
                                     f"no meaning in a cell shared by all steps); choose one of {', '.join(RNN_ACTIVATIONS)}")
                check_choice("activation", self.activation, RNN_ACTIVATIONS)
        elif self.activation is not None:
            raise ValueError(f"activation={self.activation!r} is not valid for cell={self.cell!r}: its nonlinearities "
                             "are fixed (sigmoid gates, tanh); activation applies to cell='rnn' only")
        if self.activation_param is not None:
            _check_real("activation_param", self.activation_param)
            if self.cell != "rnn" or self.act not in ACT_PARAM_DEFAULT:
                raise ValueError(f"activation_param is only used by the rnn activations {', '.join(a for a in ACT_PARAM_DEFAULT if a != 'prelu')}; "
                                 f"cell={self.cell!r} with activation={self.act!r} takes none")
            if self.act == "elu" and self.activation_param <= 0:
                raise ValueError(f"activation_param must be > 0 for elu (its alpha), got {self.activation_param}")
        check_choice("init", self.init, INITS)
        check_choice("recurrent_init", self.recurrent_init, RECURRENT_INITS)
        if self.sigma_w is not None:
            _check_real("sigma_w", self.sigma_w, positive=True)
        _check_real("sigma_b", self.sigma_b, nonneg=True)
        if self.forget_bias is not None:
            if self.cell != "lstm":
                raise ValueError(f"forget_bias is only valid for cell='lstm' (it shifts the forget gate); "
                                 f"cell={self.cell!r} has no forget gate")
            _check_real("forget_bias", self.forget_bias)
        if self.update_bias is not None:
            if self.cell != "gru":
                lstm = "; for the LSTM, forget_bias is its counterpart" if self.cell == "lstm" else ""
                raise ValueError(f"update_bias is only valid for cell='gru' (it shifts the update gate); "
                                 f"cell={self.cell!r} has none{lstm}")
            _check_real("update_bias", self.update_bias)
        check_choice("loss", self.loss, LOSSES)
        check_choice("loss_on", self.loss_on, LOSS_ON)
        if self.loss == "sum_squares" and self.loss_on != "last":
            raise ValueError("loss_on='every' needs a head: loss='mse', 'bce' or 'softmax_ce' (sum_squares is "
                             "0.5 ||h_{T-1}||^2 on the last step)")
        _check_int("output_dim", self.output_dim, 1)
        if self.loss == "softmax_ce" and self.output_dim < 2:
            raise ValueError("loss='softmax_ce' needs output_dim >= 2 (the number of classes)")
        if self.clip is not None:
            check_choice("clip", self.clip, CLIP_MODES + (None,))
        # checked with or without clip, as Stack does: clip_threshold and clip_on are kept unused
        # without a clip (and output_dim without a head) so that .replace(clip=...) (.replace(loss=...))
        # can switch one on, but a value that no clip could use (-1, nan) is refused here
        _check_real("clip_threshold", self.clip_threshold, positive=True)
        check_choice("clip_on", self.clip_on, CLIP_TARGETS)
        self._dtype_as_name()
        check_choice("dtype", self.dtype, DTYPES)
        self._check_scales()
        self._normalise()

    def _normalise(self) -> None:
        """NumPy scalars become Python ints and floats, as :class:`~gradbench.Stack`'s (np.int32
        steps * hidden wrapped around in the memory estimate, which then let a 2 TiB run through)."""
        for f in ("steps", "hidden", "input_dim", "output_dim"):
            v = getattr(self, f)
            if v is not None:
                object.__setattr__(self, f, int(v))
        for f in ("activation_param", "sigma_w", "sigma_b", "forget_bias", "update_bias", "clip_threshold"):
            v = getattr(self, f)
            if v is not None:
                object.__setattr__(self, f, float(v) + 0.0)  # -0.0 as 0.0

    # ----------------------------------------------------------------- derived
    @property
    def gates(self) -> int:
        """G: 1 (rnn), 4 (lstm), 3 (gru)."""
        return GATES[self.cell]

    @property
    def d_in(self) -> int:
        """The input dimension D (``input_dim`` or ``hidden``)."""
        return self.hidden if self.input_dim is None else self.input_dim

    @property
    def act(self) -> str:
        """The rnn cell's activation with its default filled in (``tanh`` for lstm/gru: their candidate)."""
        return self.activation or "tanh"

    @property
    def act_param(self) -> float:
        if self.activation_param is not None:
            return float(self.activation_param)
        return float(ACT_PARAM_DEFAULT.get(self.act, 0.0)) if self.cell == "rnn" else 0.0

    @property
    def lstm_forget_bias(self) -> float:
        """The forget-gate bias shift (1.0 by default for the LSTM, 0 otherwise)."""
        if self.cell != "lstm":
            return 0.0
        return 1.0 if self.forget_bias is None else float(self.forget_bias)

    @property
    def gru_update_bias(self) -> float:
        """The update-gate bias shift (0 by default; 0 for the other cells)."""
        return float(self.update_bias or 0.0) if self.cell == "gru" else 0.0

    @property
    def gain(self) -> float:
        """The gain of W_hh: sigma_w, or the recurrent scheme's default (sqrt 2 for he_*, else 1)."""
        return scheme_gain(self.recurrent_init, self.sigma_w)

    @property
    def input_gain(self) -> float:
        """The gain of W_ih and the head (the init scheme's default: sqrt 2 for he_*, else 1)."""
        return scheme_gain(self.init)

    @property
    def homogeneous(self) -> bool:
        """A vanilla cell with a positively homogeneous activation (identity, relu, leaky_relu):
        its forward state can carry a power-of-two exponent (see :mod:`gradbench.recurrent.reference`)."""
        return self.cell == "rnn" and self.act in HOMOGENEOUS

    def replace(self, **changes) -> "Recurrent":
        """A copy with some fields changed (validated again)."""
        from dataclasses import replace

        return replace(self, **changes)
