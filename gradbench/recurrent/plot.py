"""Figures of recurrent runs: the gradient through time (||dL/dh_t||; an LSTM's state pair), one
line per net, and training curves.

Built on :class:`matplotlib.figure.Figure` (no pyplot, no window) and written atomically through
:func:`gradbench.plot.save`, like the stacks' figures.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from gradbench.plot import (_CURVE_STYLES, DPI, _chance_line, _diverged, _legend, _loss_line, _no_finite_values,
                            _off_scale, _strip, _whole_numbers, _with_dtype, save)
from gradbench.report import count, fmt_rate
from gradbench.recurrent.diagnose import FLOAT_LIMITS, RecurrentDiagnosis, diagnose, verdict_signal

_STYLES = ("-", "--", "-.", ":")


def _limits(ax, lo, hi):
    for name, (tiny, big) in FLOAT_LIMITS.items():
        for v, what in ((tiny, "smallest normal"), (big, "largest")):
            if lo - 5 < v < hi + 5:
                ax.axhline(v, color="grey", lw=0.8, ls=":")
                ax.text(ax.get_xlim()[1], v, f" {name} {what}", va="center", ha="left", fontsize=7, color="grey")


PAIR_WORDS = "||(dL/dh_t, dL/dc_t)|| = sqrt(||dL/dh_t||^2 + ||dL/dc_t||^2): the LSTM's backward state, which its verdict reads"


_NET_WORDS = "a RecurrentDiagnosis or RecurrentResult (gb.diagnose / gb.backprop of a gb.Recurrent)"


def _not_a_net(where: str, item) -> TypeError:
    """The refusal of ``item`` given as ``where`` (a stack's Diagnosis or Result: where it is drawn)."""
    kind = type(item).__name__
    hint = " (a feed-forward stack's: gradbench.plot.gradient_flow draws it)" if kind in ("Diagnosis", "Result") else ""
    return TypeError(f"{where} must be {_NET_WORDS}, got {kind}{hint}")


def _nets(data, name: str = "data") -> dict:
    """label -> RecurrentDiagnosis or RecurrentResult from a dict of them, or one of them alone
    (label ""), as :func:`gradbench.plot.gradient_flow` takes one item; anything else is refused
    naming what is taken."""
    from gradbench.recurrent.results import RecurrentResult

    kinds = (RecurrentDiagnosis, RecurrentResult)
    if isinstance(data, kinds):
        return {"": data}
    if not isinstance(data, dict):
        raise TypeError(f"{name} must be {_NET_WORDS} or a dict label -> one of them, got {type(data).__name__}")
    if not data:
        raise ValueError(f"{name} is an empty dict: give at least one label -> RecurrentDiagnosis or RecurrentResult")
    for k, v in data.items():
        if not isinstance(v, kinds):
            raise _not_a_net(f"{name}[{k!r}]", v)
    return {str(k): v for k, v in data.items()}


def _one_net(item, name: str) -> RecurrentDiagnosis:
    """``item``'s diagnosis (a RecurrentResult is diagnosed), else a TypeError naming ``name``."""
    from gradbench.recurrent.results import RecurrentResult

    if isinstance(item, RecurrentResult):
        return diagnose(item)
    if not isinstance(item, RecurrentDiagnosis):
        raise _not_a_net(name, item)
    return item


def signal_vs_steps_back(data, path=None, *, title: str = "Gradient through time", dpi: int = DPI) -> Figure:
    """log10 of the gradient each net's verdict reads against the number of steps back from the
    last step, one line per net.

    ``data``: label -> RecurrentDiagnosis or RecurrentResult, or one of them alone. Each line is
    the curve its verdict and rate are read from (:func:`gradbench.recurrent.diagnose.verdict_signal`):
    ||dL/dh_t||, but for the LSTM its backward state's norm sqrt(||dL/dh_t||^2 + ||dL/dc_t||^2),
    named ||(dL/dh_t, dL/dc_t)|| on the y axis or, beside other cells, in its legend entry, and
    defined under the title (an
    LSTM's ||dL/dh_t|| fell 3.6 decades in its first step back under a legend "stable, -0.0057
    dec/step", the pair's). A net with a loss at every step shows what its recurrence carries back
    from the last step's loss (``carried_log10``, which its verdict and rate read), not each
    step's own loss term; such an LSTM's carried ||dL_{T-1}/dc_t|| is in its result, not its
    diagnosis: from a diagnosis its ||dL_{T-1}/dh_t|| is drawn and its legend entry says that its
    rate is the pair's, not drawn. Its rate is given as the compare table gives it (4 decimals).
    Steps whose norm is exactly 0 (triangles) or not finite (crosses) have no place on the log
    scale: they are marked below the x axis in the line's colour, as
    :func:`gradbench.plot.gradient_flow` marks layers, and counted in its legend entry.
    """
    nets = _nets(data)
    fig = Figure(figsize=(9.0, 5.0))
    ax = fig.add_subplot()
    lo, hi = math.inf, -math.inf
    strip = []
    diags, curves = {}, {}
    for label, item in nets.items():
        d = item if isinstance(item, RecurrentDiagnosis) else diagnose(item)
        diags[label] = d
        curves[label] = verdict_signal(d, None if item is d else item)
    names = {name for _, name, _ in curves.values()}
    common = names.pop() if len(names) == 1 else None
    # a dtype other than float64 is said, as the stacks' figures say it: in the title when every net has it
    dtypes = {label: d.rnn.get("dtype") or "float64" for label, d in diags.items()}
    mixed = len(set(dtypes.values())) > 1
    if not mixed:
        title = _with_dtype(title, next(iter(dtypes.values())))
    for i, (label, d) in enumerate(diags.items()):
        s, name, read = curves[label]
        shown = label
        if mixed:
            shown = _with_dtype(shown, dtypes[label])
        if common is None or not read:  # the norm drawn, where the y axis cannot name it for every line
            shown = f"{shown}: {name}" if shown else name
        if len(d.carried_log10):
            shown = f"{shown}, carried from the last step's loss"
        back = np.arange(len(s))[::-1]  # step t is T-1-t steps back
        ok = np.isfinite(s)
        notes = [fmt_rate(d.decades_per_step, 4) + " dec/step"] if math.isfinite(d.decades_per_step) else []
        if notes and not read:
            notes[0] += " of ||(dL_{T-1}/dh_t, dL_{T-1}/dc_t)||, not drawn (its dL_{T-1}/dc_t is in the result)"
        notes += [f"{count(n, 'step')} {what}" for n, what in ((int(np.sum(s == -np.inf)), "exactly 0"),
                                                       (int(np.sum(np.isnan(s) | (s == np.inf))), "not finite")) if n]
        (line,) = ax.plot(back, np.where(ok, s, np.nan), lw=1.6, ls=_STYLES[i % len(_STYLES)],
                          label=f"{shown}  ({', '.join([d.verdict] + notes)})" if shown else ", ".join([d.verdict] + notes))
        strip += _off_scale(s, line.get_color(), back)
        if ok.any():
            lo, hi = min(lo, s[ok].min()), max(hi, s[ok].max())
    room = _strip(ax, strip, common or "norm")
    ax.set_xlabel("steps back from the last step (T - 1 - t)")
    _whole_numbers(ax.xaxis)
    pair = any("dc_t" in name for _, name, _ in curves.values())
    ax.set_ylabel(f"log10 {common}  (exact)" if common else
                  "log10 of the backward state's norm, as each legend entry names it  (exact)")
    # the pair's definition under the title (beside the y axis's label it ran out of the figure)
    ax.set_title(f"{title}\n{PAIR_WORDS}" if pair else title, fontsize=10 if pair else None)
    ax.grid(True, alpha=0.3)
    if math.isfinite(lo):
        _limits(ax, lo, hi)
    _legend(ax, room=room)  # under the axes when too wide for them (it covered the y tick labels)
    if path is not None:
        save(fig, path, dpi)
    return fig


def run_figure(d: RecurrentDiagnosis, path=None, *, title: str | None = None, dpi: int = DPI) -> Figure:
    """One run: log10 ||dL/dh_t|| (and for the LSTM ||dL/dc_t|| and the pair's norm
    sqrt(||dL/dh_t||^2 + ||dL/dc_t||^2), which its verdict in the title reads) and log10 of step
    t's contribution to dL/dW_hh against t; gate statistics below. ``d``: a RecurrentDiagnosis, or the
    RecurrentResult it is read from (anything else is refused naming ``d``; a stack's Diagnosis was
    an AttributeError)."""
    d = _one_net(d, "d")
    fig = Figure(figsize=(9.0, 6.5))
    ax, bx = fig.subplots(2, 1, sharex=True, gridspec_kw=dict(height_ratios=[3, 1]))
    t = np.arange(d.steps)
    strip, finite = [], False
    state, name, read = verdict_signal(d)
    # an LSTM's verdict reads its state pair: drawn too, so that the title's verdict has its curve
    pair = (state, f"{name}: the verdict's") if read and "dc_t" in name else (np.zeros(0), "")
    g = np.asarray(d.grad_log10, dtype=np.float64)
    # step 0's term dz_0 h_{-1}^T is exactly 0 from a zero initial state: its triangle said nothing of why
    term = "||step t's dW_hh term||" + (" (0 at step 0 from h_{-1} = 0)" if len(g) > 1 and g[0] == -np.inf
                                        and np.isfinite(g[1:]).any() else "")
    curves = [(np.asarray(y, dtype=np.float64), label) for y, label in (
        (d.signal_log10, "||dL/dh_t||"), (d.carried_log10, "||dL_{T-1}/dh_t|| (carried back)"),
        (d.cell_log10, "||dL/dc_t||"), pair, (g, term),
        (d.carried_grad_log10, "||step t's dL_{T-1}/dW_hh term|| (carried back; the reach's)")) if len(y)]
    for i, (y, label) in enumerate(curves):
        # the first curves widest: one lying on an earlier one (an rnn's ||dL/dh_t|| under its dW_hh terms over
        # 10^4 steps, the LSTM's pair under ||dL/dc_t||) leaves that one's edges visible
        dashed = pair[1] and label == pair[1]  # it lies on ||dL/dc_t|| where that leads
        (line,) = ax.plot(t, np.where(np.isfinite(y), y, np.nan), lw=1.2 + 1.2 * (len(curves) - 1 - i), label=label,
                          ls="--" if dashed else "-")
        # steps exactly 0 or not finite have no place on the log scale: marked under the axis, as
        # signal_vs_steps_back and the stacks' figures mark them (they were dropped without a word)
        strip += _off_scale(y, line.get_color(), t)
        finite = finite or bool(np.isfinite(y).any())
    if not finite:
        _no_finite_values(ax, "no finite, nonzero norm at any step: each is marked below the axis")
    _strip(ax, strip, "norm")
    ax.set_ylabel("log10 (exact)")
    ax.set_title(title or _with_dtype(f"{d.rnn['cell']}, {count(d.steps, 'step')}", d.rnn.get("dtype") or "float64")
                 + f": {d.verdict}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    bx.plot(t, 100 * d.saturation, lw=1, label="saturated %")
    if d.rnn["cell"] != "rnn":
        gate = "forget" if d.rnn["cell"] == "lstm" else "update"
        bx.plot(t, 100 * d.gate_mean, lw=1, label=f"mean {gate} gate x100")
    bx.set_xlabel("step t")
    bx.set_ylabel("%")  # saturated entries, and the gate's mean times 100
    _whole_numbers(bx.xaxis)
    bx.grid(True, alpha=0.3)
    bx.legend(fontsize=7)
    if path is not None:
        save(fig, path, dpi)
    return fig


def _state_label(lstm: bool) -> str:
    """The y label of the training figure's right panel: log10 of the backward state's norm
    relative to the last step's (signal_start; an LSTM's is the pair with dL/dc_t)."""
    h = r"$\log_{10}\,\|\partial L/\partial h_t\| - \log_{10}\,\|\partial L/\partial h_{T-1}\|$"
    if not lstm:
        return h
    return h + "\n" + r"(lstm: of $\|(\partial L/\partial h_t, \partial L/\partial c_t)\|$)"


def training_figure(results: dict, path=None, *, title: str | None = None, dpi: int = DPI) -> Figure:
    """Held-out loss per epoch (left; epoch 0: before training) and, at the start of training,
    log10 ||dL/dh_t|| against steps back (right): the curve that explains who learns.

    A run that diverged has a cross below the x axis at the epoch where it did and says so in
    its legend entry, as in :func:`gradbench.plot.loss_curves`; the loss that knows nothing
    (ln 2 for bce) is dashed where every run has the same one (mse without its targets' mean
    has none).
    """
    from gradbench.recurrent.train import RecurrentTrainResult

    if not isinstance(results, dict) or not results:
        raise TypeError(f"results must be a non-empty dict name -> RecurrentTrainResult (gb.train of a gb.Recurrent), "
                        f"got {type(results).__name__}" + (" (empty)" if isinstance(results, dict) else ""))
    for name, r in results.items():
        if not isinstance(r, RecurrentTrainResult):
            raise TypeError(f"results[{name!r}] must be a RecurrentTrainResult (gb.train of a gb.Recurrent), got "
                            f"{type(r).__name__}")
    fig = Figure(figsize=(12.0, 4.8))
    ax, bx = fig.subplots(1, 2)
    n = len(results)
    strip, back_strip = [], []
    for i, (name, r) in enumerate(results.items()):
        # coinciding lines show; never dashed, the chance line's style (memory-lstm's run was dashed beside
        # "dashed: ln 2")
        style = dict(ls=_CURVE_STYLES[i % len(_CURVE_STYLES)], lw=1.3 + 1.5 * (n - 1 - i) / max(n - 1, 1))
        loss = np.asarray(r.eval_loss, dtype=np.float64)
        line = _loss_line(ax, np.arange(len(loss)), loss, name, **style)
        strip += _diverged(line, r.diverged_epoch)
        s = np.asarray(r.signal_start, dtype=np.float64)
        back = np.arange(len(s))[::-1]
        rel = s - s[-1] if len(s) and np.isfinite(s[-1]) else np.full(len(s), np.nan)
        (sline,) = bx.plot(back, np.where(np.isfinite(rel), rel, np.nan), color=line.get_color(), label=name, **style)
        back_strip += _off_scale(s, sline.get_color(), back)
    ref = _chance_line(ax, list(results.values()))
    rooms = _strip(ax, strip, "loss"), _strip(bx, back_strip, "||dL/dh_t||")
    ax.set_yscale("log")
    ax.set_xlabel("epoch (0: before training)")
    ax.set_ylabel("held-out loss (log scale)" + ("" if ref is None else f"; dashed: {ref[0]} = {ref[1]:.3g}"))
    ax.set_title("Held-out loss")
    bx.set_xlabel("steps back from the last step (T - 1 - t)")
    _whole_numbers(bx.xaxis)
    bx.set_ylabel(_state_label(any(r.rnn.cell == "lstm" for r in results.values())))
    bx.set_title("Gradient through time before training (exact)")
    fig.suptitle(title or "Training through time: " + ", ".join(results))
    for a, room in zip((ax, bx), rooms):
        a.grid(True, alpha=0.3)
        _legend(a, room=room)
    if path is not None:
        save(fig, path, dpi)
    return fig
