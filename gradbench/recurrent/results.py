"""What a pass through a recurrent net returns: :class:`RecurrentResult` and its :class:`RecurrentGrads`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gradbench._fields import PresentFields, short_repr
from gradbench.logscaled import LogScaled
from gradbench.recurrent.spec import Recurrent


@dataclass(frozen=True, eq=False)
class RecurrentGrads(PresentFields):
    """Gradients of the loss, exact to rounding at any length: one :class:`LogScaled` per
    parameter, each a mantissa array with one exponent (``.to_float()``, ``.log10()``).

    ``W_ih`` (GN, D), ``W_hh`` (GN, N), ``b_ih``, ``b_hh`` (GN,); ``W_out`` (O, N), ``b_out`` (O,)
    with a head.
    """

    W_ih: LogScaled
    W_hh: LogScaled
    b_ih: LogScaled
    b_hh: LogScaled
    W_out: LogScaled | None = None
    b_out: LogScaled | None = None


@dataclass(frozen=True, eq=False)
class RecurrentResult:
    """What one forward + backward pass through time gives (steps t = 0 .. T-1, h_t the state
    written by step t).

    Attributes
    ----------
    rnn : Recurrent
    backend : str
    loss : float
        The loss as a float: 0 or inf where float64 cannot hold it. ``loss_exact`` holds it as
        mantissa and exponent, exact there too: the sum_squares probe 0.5 ||h_{T-1}||^2 of every
        cell from a scaled sum of squares (a GELU cell's 10^325), a head's loss from its terms'
        logarithms below float64's range and from terms scaled by a power of two where their
        float sum overflows (mse: squares of differences beyond ~1e154).
    grads : RecurrentGrads
        dL/dparams (after parameter-gradient clipping when the net asks for it).
    signal_norm : LogScaled (T,)
        ||dL/dh_t||_F over the batch, exact: the backpropagated signal reaching step t (after
        signal clipping), including the every-step loss's own gradient at t.
    cell_signal_norm : LogScaled (T,) or None
        ||dL/dc_t||_F over the batch of the LSTM, exact (None for the other cells): the whole
        gradient reaching the cell state c_t, through h_t (dL/dh_t o_t tanh'(c_t)) and through
        c_{t+1} (the part carried back by the forget gate), as torch's ``c_t.grad``; not 0 at
        the last step.
    grad_norm : LogScaled (T,)
        ||dz_t^T h_{t-1}||_F: the norm of step t's contribution to dL/dW_hh, "how far back
        learning reaches".
    h0_grad, c0_grad : LogScaled (B, N)
        dL/dh_{-1} (and dL/dc_{-1} for the LSTM; None otherwise), one exponent per sample (B,):
        each sample's backward chain through time is its own, however far below the others it
        falls. The forward of identity/ReLU/leaky-ReLU cells (with the sum_squares probe) carries
        one exponent per step for the whole batch, so a sample whose state lies more than the
        dtype's range below the batch's largest reads 0 from that step on (inputs of 1e200 and
        1e-200 in one batch: the second sample's dL/dh_{-1} reads 0, 10^-201.03 when run alone).
    output : LogScaled (B, N)
        h_{T-1} with its forward exponent.
    act_mean, act_std : LogScaled (T,)
        Mean and standard deviation of h_t over batch and units.
    saturation : ndarray (T,)
        Fraction of the step's activation entries with |phi'| below 1 % of its largest value (all gates);
        NaN for a step with a NaN pre-activation (or a swish or GELU cell's z = -inf).
    gate_mean, gate_low : ndarray (T,)
        Mean forget gate (LSTM) / update gate z (GRU) and the fraction of them below 0.1; NaN
        for the vanilla cell, and where a gate is NaN.
    first_nonfinite_forward, first_nonfinite_backward : int or None
        First step whose state (forward) or backpropagated signal (backward) is not finite; the
        backward's -1: only the initial state's gradient dL/dh_{-1} (``h0_grad``) is not.
    forward_rescaled : bool
        Whether the forward state carried power-of-two exponents (identity and ReLU-family cells
        with the sum_squares probe).
    extras : dict
        ``checkpoint``, ``segments``, ``memory_estimate``, ``seconds``, ``weights`` (the
        params' ``origin``, as "... after 5 epochs of training", or None), ``lost_samples``
        (samples whose backward state is non-zero at the last step and exactly 0 at the initial
        state: dead units, or an exact zero of the sample's own chain, never the batch's other
        samples (each carries its own power of two); with a loss at every step,
        those of the carried pass, the last step's loss alone, and None without that pass,
        ``carried=False``); for an LSTM with a
        carried pass also ``carried_cell_signal_norm`` (LogScaled (T,), as ``cell_signal_norm``
        for the last step's loss alone).
    carried_signal_norm, carried_grad_norm : LogScaled (T,) or None
        With ``loss_on="every"`` (unless ``backprop(..., carried=False)``): ||dL_{T-1}/dh_t|| and
        the norm of step t's contribution to dL_{T-1}/dW_hh for the last step's loss L_{T-1}
        alone, exact: the gradient that the recurrence carries back, without each step's own
        loss term (which keeps ``signal_norm`` flat however fast this vanishes). None otherwise
        (:func:`gradbench.diagnose` refuses an every-step result without them).
    signal_clip_acted : ndarray (T + 1,) of bool, or None
        With signal clipping (``clip_on="signal"``): whether the clip changed the backward state
        at each place of the chain, by the clip's own test on the state it clips (value: some
        |entry| exceeded ``clip_threshold``; norm: the state's norm exceeded it), where the
        state is dL/dh (the vanilla cell, the GRU) or, for the LSTM, dL/dh together with the
        part of dL/dc carried back through the next cell state (clipped as one). Indexed as the
        backward's states H[j]: entry t + 1 is step t's state dL/dh_t (``signal_clip_acted[1:]``
        pairs with ``signal_norm``; entry T, the last step's, is clipped by the engine before the
        backward pass), entry 0 the initial state's dL/dh_{-1} (``h0_grad``, ``c0_grad``). The
        same on every backend, dtype, segmentation and thread count. ``None`` when the net does
        not clip its signal (no clip, or ``clip_on`` "matrix"/"global").
    carried_signal_clip_acted : ndarray (T + 1,) of bool, or None
        The same record for the carried pass (``carried_signal_norm``: the last step's loss
        alone), indexed the same way; its entry T is ``signal_clip_acted[T]`` (both passes start
        from the same clipped state). None without a carried pass or without signal clipping.
    """

    __repr__ = short_repr  # arrays as their shapes (gradbench._fields.short_repr)

    rnn: Recurrent
    backend: str
    loss: float
    loss_exact: LogScaled
    grads: RecurrentGrads
    signal_norm: LogScaled
    cell_signal_norm: LogScaled | None
    grad_norm: LogScaled
    h0_grad: LogScaled
    c0_grad: LogScaled | None
    output: LogScaled
    act_mean: LogScaled
    act_std: LogScaled
    saturation: np.ndarray
    gate_mean: np.ndarray
    gate_low: np.ndarray
    first_nonfinite_forward: int | None
    first_nonfinite_backward: int | None
    forward_rescaled: bool
    extras: dict = field(default_factory=dict)
    carried_signal_norm: LogScaled | None = None
    carried_grad_norm: LogScaled | None = None
    signal_clip_acted: np.ndarray | None = None
    carried_signal_clip_acted: np.ndarray | None = None

    def to_frame(self):
        """One row per time step as a pandas DataFrame (:func:`gradbench.frames.recurrent_result_frame`)."""
        from gradbench.frames import recurrent_result_frame

        return recurrent_result_frame(self)

    @property
    def stack(self) -> Recurrent:
        """The net (the name a stack's Result uses for its spec)."""
        return self.rnn
