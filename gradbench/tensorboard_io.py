"""TensorBoard event files of training runs and diagnoses, written with ``tensorboardX``.

tensorboardX is optional (``pip install 'gradbench[tensorboard]'``; it needs no torch) and
imported only here. View the files with ``tensorboard --logdir DIR``.

Training (``gb.train(..., tensorboard=DIR)``, ``gradbench train --tensorboard DIR``), step =
epoch (0: before training, e: after epoch e), L layers, tags with zero-padded layer numbers:

==================================== =========================================================
``loss/train``                       training loss during epoch e, its mini-batches weighted by size (steps 1..E)
``loss/eval``, ``accuracy``          on the whole data set (steps 0..E)
``grad_log10/layer_LL``              log10 ||dL/dW_l|| on the whole data set, exact
``update_ratio_percent/layer_LL``    100 ||Delta W_l|| / ||W_l|| during epoch e (steps 1..E);
                                     also ``update_ratio_percent/input`` and ``/head``
``grad_hist_log10/layer_LL``         histogram of log10 |dL/dW_l| entries (exact from mantissa
                                     and exponent; exact zeros left out), 30 bins
==================================== =========================================================

A diagnosis (``gradbench run --tensorboard DIR``, :func:`write_diagnosis`), step = layer l so
that the depth profile shows as a curve: ``depth/grad_log10``, ``depth/signal_log10``,
``depth/act_mean`` (the mean of h_{l+1}, only at layers where float32 holds it: it wrote inf for
3.4e+44 and 0 for 7.2e-52), ``depth/act_mean_log10`` (log10 |mean|, exact) with
``depth/act_mean_sign`` (+1, -1; 0 for an exact 0), ``depth/act_std_log10``,
``depth/saturation``, ``depth/dead`` (and
``depth/weight_log10`` when recorded), the histogram ``depth/grad_hist_log10`` of the
diagnosis' bins (counts exact; TensorBoard's sum and sum of squares from the bin centres) and
the verdict as text. A recurrent net's diagnosis (``gradbench run --cell ... --tensorboard DIR``,
the same function) has the time step t as the step: ``time/signal_log10`` (||dL/dh_t||),
``time/grad_log10`` (the norm of step t's dW_hh term), ``time/cell_log10`` (the LSTM's
||dL/dc_t||), ``time/state_log10`` (the LSTM's sqrt(||dL/dh_t||^2 + ||dL/dc_t||^2), what its
verdict and rate read; not with a loss at every step, whose carried ||dL_{T-1}/dc_t|| the
diagnosis does not keep), ``time/carried_log10`` (with a loss at every step: ||dL_{T-1}/dh_t||, what the
verdict reads, and ``time/carried_grad_log10``, its dW_hh step terms, what the reach reads), ``time/act_std_log10``, ``time/saturation``, ``time/gate_mean`` and
``time/gate_low`` (gated cells), and the verdict as text.

A directory that already holds event files is refused (:func:`refuse_old_events`): TensorBoard
reads a directory's event files as one run, so a second run there would draw as one curve with
the first. docs/formats.md describes the tags too.

TensorBoard stores scalars as float32: log10 norms keep 7 significant digits, which is why
the norms are written as their logarithms (a norm of 10^-30000 is the scalar -30000).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile

import numpy as np

HIST_BINS = 30


def old_events(logdir) -> list[str]:
    """The TensorBoard event files already in ``logdir`` (not in its subdirectories)."""
    try:
        return sorted(f for f in os.listdir(logdir) if f.startswith("events.out.tfevents"))
    except (FileNotFoundError, NotADirectoryError):
        return []


def refuse_old_events(logdir, name: str = "tensorboard=") -> None:
    """ValueError where ``logdir`` already holds event files: TensorBoard reads a directory's
    event files as one run, so a second run written there showed as one zig-zag curve with the
    first (its steps starting again from 0). ``name``: how the caller's option is spelled."""
    old = old_events(logdir)
    if old:
        raise ValueError(f"{name}{os.fspath(logdir)!r} already holds TensorBoard events ({len(old)} file"
                         f"{'s' if len(old) > 1 else ''}, {old[0]}{', ...' if len(old) > 1 else ''}): TensorBoard reads a "
                         "directory's events as one run, so another run there joins its curves, its steps starting "
                         "again from 0; give each run its own "
                         "directory (tensorboard --logdir on their parent shows them side by side), or delete the "
                         "old events")


def summary_writer(logdir):
    """A ``tensorboardX.SummaryWriter`` on ``logdir`` (created) once :func:`check_logdir` passes."""
    return check_logdir(logdir)(logdir=os.fspath(logdir))


def check_logdir(logdir):
    """Refuse ``logdir`` where it is no directory path or already holds events
    (:func:`refuse_old_events`), or where tensorboardX is missing (a clear ImportError); returns
    tensorboardX's ``SummaryWriter``."""
    if not isinstance(logdir, (str, os.PathLike)) or not os.fspath(logdir):
        raise TypeError(f"tensorboard must be a directory path (str or os.PathLike), got {logdir!r}")
    if os.path.exists(logdir) and not os.path.isdir(logdir):
        raise ValueError(f"tensorboard={os.fspath(logdir)!r} exists and is not a directory")
    refuse_old_events(logdir)
    try:
        from tensorboardX import SummaryWriter
    except ImportError as exc:
        raise ImportError("TensorBoard output needs tensorboardX: pip install tensorboardX "
                          "(or pip install 'gradbench[tensorboard]')") from exc
    return SummaryWriter


def _layer_tag(prefix: str, l: int, L: int) -> str:
    return f"{prefix}/layer_{l:0{max(2, len(str(L - 1)))}d}"


def log10_abs(g) -> np.ndarray:
    """log10 |entries| of a LogScaled array, exact, with exact zeros and non-finite entries left out."""
    v = np.asarray(g.log10(), dtype=np.float64).reshape(-1)
    return v[np.isfinite(v)]


class TrainWriter:
    """Writes one training run as it goes (used by :func:`gradbench.train`; module docstring)."""

    def __init__(self, logdir, stack):
        self.writer = summary_writer(logdir)
        self.L = stack.depth

    def evaluation(self, epoch: int, res, accuracy: float) -> None:
        """The full-data pass before training (epoch 0) and after each epoch."""
        w, L = self.writer, self.L
        w.add_scalar("loss/eval", float(res.loss), epoch)
        w.add_scalar("accuracy", float(accuracy), epoch)
        g = res.derivative_norm.log10()  # dL/dW_l, before parameter-gradient clipping
        for l in range(L):
            if np.isfinite(g[l]):
                w.add_scalar(_layer_tag("grad_log10", l, L), float(g[l]), epoch)
            if res.grads is not None:
                v = log10_abs(res.grads.W[l])
                if v.size:
                    w.add_histogram(_layer_tag("grad_hist_log10", l, L), v, epoch, bins=HIST_BINS)

    def epoch(self, epoch: int, loss: float, ratio: np.ndarray, ratio_in: float, ratio_out: float) -> None:
        """Epoch ``epoch`` (1-based) has finished: its mean loss and update ratios."""
        w, L = self.writer, self.L
        if math.isfinite(loss):
            w.add_scalar("loss/train", float(loss), epoch)
        for l in range(L):
            if np.isfinite(ratio[l]):
                w.add_scalar(_layer_tag("update_ratio_percent", l, L), float(ratio[l]), epoch)
        if np.isfinite(ratio_in):
            w.add_scalar("update_ratio_percent/input", float(ratio_in), epoch)
        if np.isfinite(ratio_out):
            w.add_scalar("update_ratio_percent/head", float(ratio_out), epoch)
        w.flush()

    def close(self) -> None:
        self.writer.close()


def _write_series(w, prefix: str, series: dict) -> None:
    """One scalar curve per entry, the array index as the step; non-finite values left out."""
    for name, values in series.items():
        for i, v in enumerate(np.asarray(values, dtype=np.float64)):
            if math.isfinite(v):
                w.add_scalar(f"{prefix}/{name}", float(v), i)


def write_diagnosis(d, logdir) -> str:
    """Write a :class:`~gradbench.Diagnosis` with the layer index as the step, or a
    :class:`~gradbench.recurrent.diagnose.RecurrentDiagnosis` with the time step as the step
    (module docstring).

    Returns the directory. Non-finite values (an exact zero's log10 -inf, NaN) are left out.
    """
    from gradbench.recurrent.diagnose import RecurrentDiagnosis

    check_logdir(logdir)
    os.makedirs(logdir, exist_ok=True)
    # written whole into a hidden directory inside, then moved in: an interrupted write (Ctrl-C,
    # SIGTERM while the events of 10^4 layers are written) left a part of a file, which then
    # refused the rerun as a directory that holds events
    stage = tempfile.mkdtemp(prefix=".partial-", dir=logdir)
    try:
        w = summary_writer(stage)
        try:
            rate = (_recurrent_events if isinstance(d, RecurrentDiagnosis) else _depth_events)(w, d)
            w.add_text("verdict", f"**{d.verdict}** ({rate}; negative: vanishing): {d.explanation}", 0)
        finally:
            w.close()
        for name in os.listdir(stage):
            os.replace(os.path.join(stage, name), os.path.join(logdir, name))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return os.fspath(logdir)


# float32's smallest normal and largest finite: TensorBoard's scalars are float32
_F32 = np.finfo(np.float32)


def float32_faithful(values) -> np.ndarray:
    """``values`` (float64) where float32 holds them (0, or a magnitude within float32's normal
    range), NaN elsewhere: TensorBoard stores scalars as float32, and ``depth/act_mean`` read inf
    at layers 31-59 of a ReLU stack at sigma_w 30 whose means were 3.386e+44 .. 8.662e+74, and 0.0
    at layers 29-39 at sigma_w 0.05 (7.2e-52 at layer 32)."""
    v = np.asarray(values, dtype=np.float64)
    a = np.abs(v)
    ok = (v == 0) | ((a >= float(_F32.tiny)) & (a <= float(_F32.max)))
    return np.where(ok, v, np.nan)


def mean_sign(mean, mean_log10) -> np.ndarray:
    """+1, -1 or 0 for each mean: the sign of ``mean`` (float64; an underflowed one keeps its sign as
    -0.0), 0 where ``mean_log10`` is -inf (exactly 0), NaN where it is NaN."""
    m = np.asarray(mean, dtype=np.float64)
    lg = np.asarray(mean_log10, dtype=np.float64)
    return np.where(lg == -np.inf, 0.0, np.where(np.isnan(lg), np.nan, np.copysign(1.0, m)))


def _depth_events(w, d) -> str:
    """A stack's profile over the layers; returns its rate in words."""
    series = {"grad_log10": d.grad_log10, "signal_log10": d.signal_log10,
              # the mean itself only where float32 holds it; its exact size and sign as log10 |mean| and +-1
              "act_mean": float32_faithful(d.act_mean), "act_mean_log10": d.act_mean_log10,
              "act_mean_sign": mean_sign(d.act_mean, d.act_mean_log10),
              "act_std_log10": d.act_std_log10, "saturation": d.saturation, "dead": d.dead}
    if len(d.weight_log10) == d.depth:
        series["weight_log10"] = d.weight_log10
    _write_series(w, "depth", series)
    edges = np.asarray(d.hist_edges, dtype=np.float64)
    centres = 0.5 * (edges[:-1] + edges[1:])
    for l, counts in enumerate(np.asarray(d.hist_counts)):
        nz = np.flatnonzero(counts)
        if nz.size == 0:
            continue
        n = int(counts.sum())
        w.add_histogram_raw(
            "depth/grad_hist_log10", min=float(edges[nz[0]]), max=float(edges[nz[-1] + 1]), num=n,
            sum=float(np.dot(counts, centres)), sum_squares=float(np.dot(counts, centres * centres)),
            bucket_limits=edges[1:].tolist(), bucket_counts=counts.astype(float).tolist(), global_step=l)
    return f"{d.decades_per_layer:+.4g} decades per layer going down towards the input"


def _recurrent_events(w, d) -> str:
    """A recurrent net's profile over the time steps; returns its rate in words."""
    series = {"signal_log10": d.signal_log10, "grad_log10": d.grad_log10, "act_std_log10": d.act_std_log10,
              "saturation": d.saturation}
    if len(d.cell_log10):
        series["cell_log10"] = d.cell_log10
    from gradbench.recurrent.diagnose import verdict_signal

    state, name, read = verdict_signal(d)
    if read and "dc_t" in name:  # the LSTM's state pair: the curve its verdict and rate (the text's) read
        series["state_log10"] = state
    if len(d.carried_log10):  # a loss at every step: the verdict's signal, the last step's loss alone
        series["carried_log10"] = d.carried_log10
        series["carried_grad_log10"] = d.carried_grad_log10  # its dW_hh step terms, which the reach reads
    if np.any(np.isfinite(np.asarray(d.gate_mean, dtype=np.float64))):
        series.update(gate_mean=d.gate_mean, gate_low=d.gate_low)
    _write_series(w, "time", series)
    return f"{d.decades_per_step:+.4g} decades per step going back in time"
