"""What a pass returns: :class:`Result` and its :class:`Grads`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gradbench._fields import PresentFields, short_repr
from gradbench.histograms import GradHistogram
from gradbench.logscaled import LogScaled
from gradbench.spec import Stack


@dataclass(frozen=True, eq=False)
class Grads(PresentFields):
    """Gradients of the loss, exact at any depth, one :class:`LogScaled` per parameter.

    ``W`` (L, N, N), ``b``/``gamma``/``beta`` (L, N), ``slope`` (L,), each with one exponent per
    layer; ``W_in``, ``b_in``, ``W_out``, ``b_out`` when the stack has them (one exponent).
    """

    W: LogScaled
    b: LogScaled
    gamma: LogScaled
    beta: LogScaled
    slope: LogScaled
    W_in: LogScaled | None = None
    b_in: LogScaled | None = None
    W_out: LogScaled | None = None
    b_out: LogScaled | None = None


@dataclass(frozen=True, eq=False)
class Result:
    """What one forward + backward pass through a stack gives.

    Layers are numbered l = 0 (at the input) to L - 1 (at the top); h_l is the input of layer l,
    h_L the output of the stack (docs/design.md section 2 has the definitions).

    Attributes
    ----------
    stack : Stack
        The stack that ran.
    backend : str
        The concrete backend that ran ("numpy", "numba" or "c").
    loss : float
        The loss as a float (inf or 0 if it does not fit; ``loss_exact`` holds it exactly).
    loss_exact : LogScaled ()
        The loss as mantissa and exponent: exact at any depth for the sum_squares probe.
    grads : Grads or None
        dL/dparams, after parameter-gradient clipping when the stack asks for it; ``None`` for
        ``stats_only=True`` runs, which keep the per-layer statistics only.
    grad_norm : LogScaled (L,)
        ||dL/dW_l||_F of ``grads.W``.
    signal_norm : LogScaled (L,)
        ||dL/dh_l||_F, the backpropagated signal at the input of layer l (after signal clipping).
    act_mean, act_std : LogScaled (L,)
        Mean and standard deviation of h_{l+1} over batch and units.
    saturation : ndarray (L,)
        Fraction of z_l entries with phi'(z) < 0.01 * max phi'; NaN for a layer with a NaN z
        (and for swish or GELU with a z = -inf, whose phi' evaluates to inf * 0): the forward
        overflowed and those entries cannot be counted. Other infinite z count by their limits.
    dead : ndarray (L,)
        Fraction of units with z <= 0 for every sample of the batch: dead units of the ReLU
        family (relu, leaky_relu, prelu); NaN for other activations, where z <= 0 kills nothing,
        and for a layer with a NaN z (z = +inf counts as live, -inf as dead).
    input_grad : LogScaled (B, D)
        dL/dx, the gradient with respect to the input batch (through the input layer if any),
        one exponent per sample (``exponent`` of shape (B,)): each sample's chain keeps its own
        power of two through the backward, however far the samples drift apart.
    output : LogScaled (B, N)
        h_L, the output of the stack (before the head), with its forward exponents: one per
        sample (exponent (B,), row i at ``exponent[i]``).
    first_nonfinite_forward, first_nonfinite_backward : int or None
        First layer whose output (forward) or backpropagated signal (backward) is not finite.
    forward_rescaled : bool
        Whether the forward pass carried power-of-two exponents (then the activations and the
        statistics of h are exact at any depth too).
    extras : dict
        How the run was done: ``checkpoint`` (segment length or None), ``segments``,
        ``stats_only``, ``generated`` (weights), ``weights_probe`` (the sums of each layer's first,
        middle and last row of W in float64, (L, 3), or the seed of generated weights: what
        :func:`gradbench.diagnose` checks its ``params`` against), ``weights`` (the params'
        ``origin``: where the weights came from, as "the weights of Sequential", or None),
        ``weight_log10_sampled`` (log10 ||W_l|| per layer estimated from those three rows, for
        :func:`gradbench.diagnose` without params; None for generated weights),
        ``weights_kept`` (generated weights all kept, each drawn once), ``memory_estimate`` (bytes) and ``seconds``
        spent in forward, backward (including recomputation), weight generation and statistics;
        ``lost_samples``: samples of the batch whose backward signal is non-zero at the top and
        exactly zero at the input (an exact zero in its own chain: dead units, or units saturated
        beyond any int64 exponent; each sample carries its own power of two in the backward, so
        the batch's other samples do not flush it; the diagnosis names the cause);
        ``forward_lost_samples``:
        samples of a batch whose top activations are exactly 0 though their input is not (an
        exact zero in the sample's own chain: GELU or swish below 2^(-2^62); each sample carries
        its own power of two in the forward too; not counted for ReLU
        stacks, whose dead units give true zeros, nor under batch norm); ``bn_pair_difference``
        (batch norm over a batch of 2 only): how far apart the two samples' gradients into the top
        layer's batch norm are, the largest over its units of |dy_1 - dy_2| / (|dy_1| + |dy_2|)
        (:func:`gradbench.engine.bn_pair_difference`): over 2 samples batch norm passes only that
        difference, and where it is rounding the diagnosis reads no gradient
        (:func:`gradbench.verdict.bn_pair_cancels`); ``identical_samples`` (batch norm only): every
        sample of x is the same input, bit for bit, which batch norm maps to beta whatever the
        weights (:func:`gradbench.verdict.bn_identical`: no gradient); ``bn_sumsq_log10`` (batch
        norm only, (L,)): log10 of each layer's largest sum of squared deviations from the batch
        mean, where a plain batch norm's overflows (:func:`gradbench.engine.bn_sumsq_log10`); ``flushed_outputs``
        (sigmoid only, (L,) ints): how many of each layer's outputs underflowed to 0 or a
        subnormal, where the numbers that read them are not exact
        (:func:`gradbench.engine.flushed_outputs`, :func:`gradbench.verdict.partial_underflow_words`).
    grad_hist : GradHistogram or None
        Histograms of log10 |dW_l| (``stats_only=True`` runs; otherwise ``None``: use
        ``gradbench.diagnose`` on ``grads``).
    grad_norm_unclipped : LogScaled (L,) or None
        ||dL/dW_l||_F before parameter-gradient clipping (``clip_on`` "layer" or "global"; else
        ``None``: ``grad_norm`` is the gradient itself). Clipping bounds the update, not the
        derivative: how much a change of W_l moves the loss (the verdict's elasticity) is this.
    bn_share : ndarray (L, 2) or None
        With batch norm, the median (the upper one for an even width) and the largest over layer
        l's units of eps / (var_B + eps): the share of a unit's gradient along its own normalised
        output that batch norm's backward lets through (:func:`gradbench.engine.bn_shares`). Over
        a batch of 2 that is the unit's whole gradient, and the diagnosis names it
        (:func:`gradbench.verdict.small_batch_norm`). ``None`` without batch norm.
    signal_clip_acted : ndarray (L + 1,) of bool, or None
        With signal clipping (``clip_on="signal"``): entry l is True where the clip changed
        dL/dh_l, l = 0 .. L, by the clip's own test (value: some |entry| of the true signal
        exceeded ``clip_threshold``; norm: ||dL/dh_l|| exceeded it). Entries 0 .. L - 1 pair with
        ``signal_norm`` (``signal_clip_acted[:L]``); entry L is the top signal dL/dh_L, which the
        engine clips before the backward pass (``signal_norm`` has no entry for it). The same on
        every backend, dtype, segmentation and thread count. ``None`` when the stack does not
        clip its signal (no clip, or ``clip_on`` "layer"/"global": see ``extras["param_clip_acted"]``).
    """

    __repr__ = short_repr  # arrays as their shapes (gradbench._fields.short_repr)

    stack: Stack
    backend: str
    loss: float
    loss_exact: LogScaled
    grads: Grads | None
    grad_norm: LogScaled
    signal_norm: LogScaled
    input_grad: LogScaled
    output: LogScaled
    act_mean: LogScaled
    act_std: LogScaled
    saturation: np.ndarray
    dead: np.ndarray
    first_nonfinite_forward: int | None
    first_nonfinite_backward: int | None
    forward_rescaled: bool
    extras: dict = field(default_factory=dict)
    grad_hist: GradHistogram | None = None
    grad_norm_unclipped: LogScaled | None = None
    bn_share: np.ndarray | None = None
    signal_clip_acted: np.ndarray | None = None

    @property
    def derivative_norm(self) -> LogScaled:
        """||dL/dW_l||: the derivative, before the stack's parameter-gradient clipping
        (``grad_norm_unclipped`` where it clipped, else ``grad_norm``)."""
        return self.grad_norm if self.grad_norm_unclipped is None else self.grad_norm_unclipped

    def to_frame(self):
        """One row per layer as a pandas DataFrame (:func:`gradbench.frames.result_frame`)."""
        from gradbench.frames import result_frame

        return result_frame(self)
