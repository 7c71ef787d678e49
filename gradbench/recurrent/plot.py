"""Figures of recurrent runs: ||dL/dh_t|| through time, one line per net, and training curves.

Built on :class:`matplotlib.figure.Figure` (no pyplot, no window) and written atomically through
:func:`gradbench.plot.save`, like the stacks' figures.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from gradbench.plot import DPI, save
from gradbench.recurrent.diagnose import FLOAT_LIMITS, RecurrentDiagnosis, diagnose

_STYLES = ("-", "--", "-.", ":")


def _limits(ax, lo, hi):
    for name, (tiny, big) in FLOAT_LIMITS.items():
        for v, what in ((tiny, "smallest normal"), (big, "largest")):
            if lo - 5 < v < hi + 5:
                ax.axhline(v, color="grey", lw=0.8, ls=":")
                ax.text(ax.get_xlim()[1], v, f" {name} {what}", va="center", ha="left", fontsize=7, color="grey")


def signal_vs_steps_back(data: dict, path=None, *, title: str = "Gradient through time", dpi: int = DPI) -> Figure:
    """log10 ||dL/dh_t|| against the number of steps back from the last step, one line per net.

    ``data``: label -> RecurrentDiagnosis or RecurrentResult. A net with a loss at every step
    shows what its recurrence carries back from the last step's loss (``carried_log10``, which
    its verdict and rate read), not each step's own loss term.
    """
    fig = Figure(figsize=(9.0, 5.0))
    ax = fig.add_subplot()
    lo, hi = math.inf, -math.inf
    for i, (label, item) in enumerate(data.items()):
        d = item if isinstance(item, RecurrentDiagnosis) else diagnose(item)
        s = d.carried_log10 if len(d.carried_log10) else d.signal_log10
        if len(d.carried_log10):
            label = f"{label}, carried from the last step's loss"
        back = np.arange(len(s))[::-1]  # step t is T-1-t steps back
        ok = np.isfinite(s)
        rate = f"{d.decades_per_step:+.3g} dec/step" if math.isfinite(d.decades_per_step) else ""
        ax.plot(back, np.where(ok, s, np.nan), lw=1.6, ls=_STYLES[i % len(_STYLES)],
                label=f"{label}  ({d.verdict}{', ' + rate if rate else ''})")
        if ok.any():
            lo, hi = min(lo, s[ok].min()), max(hi, s[ok].max())
    ax.set_xlabel("steps back from the last step (T - 1 - t)")
    ax.set_ylabel("log10 ||dL/dh_t||  (exact)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if math.isfinite(lo):
        _limits(ax, lo, hi)
    ax.legend(loc="best", fontsize=8)
    if path is not None:
        save(fig, path, dpi)
    return fig


def run_figure(d: RecurrentDiagnosis, path=None, *, title: str | None = None, dpi: int = DPI) -> Figure:
    """One run: log10 ||dL/dh_t|| (and ||dL/dc_t|| for the LSTM) and log10 of step t's
    contribution to dL/dW_hh against t; gate statistics below."""
    fig = Figure(figsize=(9.0, 6.5))
    ax, bx = fig.subplots(2, 1, sharex=True, gridspec_kw=dict(height_ratios=[3, 1]))
    t = np.arange(d.steps)
    for y, label in ((d.signal_log10, "||dL/dh_t||"), (d.carried_log10, "||dL_{T-1}/dh_t|| (carried back)"),
                     (d.cell_log10, "||dL/dc_t||"), (d.grad_log10, "||step t's dW_hh term||")):
        if len(y):
            ax.plot(t, np.where(np.isfinite(y), y, np.nan), lw=1.4, label=label)
    ax.set_ylabel("log10 (exact)")
    ax.set_title(title or f"{d.rnn['cell']}, {d.steps} steps: {d.verdict}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    bx.plot(t, 100 * d.saturation, lw=1, label="saturated %")
    if d.rnn["cell"] != "rnn":
        gate = "forget" if d.rnn["cell"] == "lstm" else "update"
        bx.plot(t, 100 * d.gate_mean, lw=1, label=f"mean {gate} gate x100")
    bx.set_xlabel("step t")
    bx.grid(True, alpha=0.3)
    bx.legend(fontsize=7)
    if path is not None:
        save(fig, path, dpi)
    return fig


def training_figure(results: dict, path=None, *, dpi: int = DPI) -> Figure:
    """Held-out loss per epoch (left) and, at the start of training, log10 ||dL/dh_t|| against
    steps back (right): the curve that explains who learns."""
    fig = Figure(figsize=(12.0, 4.8))
    ax, bx = fig.subplots(1, 2)
    for i, (name, r) in enumerate(results.items()):
        ls = _STYLES[i % len(_STYLES)]
        ax.plot(np.arange(len(r.eval_loss)), r.eval_loss, ls=ls, label=name)
        s = r.signal_start
        bx.plot(np.arange(len(s))[::-1], np.where(np.isfinite(s), s - s[-1], np.nan), ls=ls, label=name)
    ax.axhline(math.log(2), color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out loss (chance ln 2 dotted)")
    bx.set_xlabel("steps back from the last step")
    bx.set_ylabel("log10 ||dL/dh_t|| / ||dL/dh_{T-1}|| at the start")
    for a in (ax, bx):
        a.grid(True, alpha=0.3)
        a.legend(fontsize=8)
    if path is not None:
        save(fig, path, dpi)
    return fig
