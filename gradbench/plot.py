"""Figures: gradient flow, per-layer histograms, loss and update-ratio curves.

Built on :class:`matplotlib.figure.Figure` without pyplot, so no window opens and no global
backend is switched (the Agg canvas renders PNG, SVG and PDF). Every function returns the
figure and, given ``path``, writes it atomically (temporary file + ``os.replace``) in the
format of the path's suffix.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from gradbench._atomic import write_atomic
from gradbench.diagnose import Diagnosis, diagnose
from gradbench.verdict import FLOAT_LIMITS

LN2 = math.log(2.0)


def save(fig: Figure, path, dpi: int = 120) -> str:
    """Write ``fig`` to ``path`` atomically; the format is the suffix (.png, .svg, .pdf)."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower().lstrip(".")
    if suffix not in ("png", "svg", "pdf"):
        raise ValueError(f"plot path {path!r} must end in .png, .svg or .pdf")
    write_atomic(path, lambda f: fig.savefig(f, format=suffix, dpi=dpi, bbox_inches="tight"),
                 binary=True, suffix="." + suffix)
    return path


def _as_diagnosis(item) -> Diagnosis:
    return item if isinstance(item, Diagnosis) else diagnose(item)


def _items(data) -> list[tuple[str, object]]:
    if isinstance(data, Mapping):
        return list(data.items())
    if isinstance(data, (list, tuple)):
        return [(str(i), d) for i, d in enumerate(data)]
    return [("", data)]


def gradient_flow(data, path=None, *, title: str = "Gradient flow", limits: bool = True) -> Figure:
    """log10 ||dL/dW_l|| against layer l, one line per configuration.

    Parameters
    ----------
    data : Diagnosis, Result, or a dict label -> Diagnosis / Result
    limits : bool
        Draw the smallest normal and largest finite float64/float32 where they fall inside the
        plotted range (a plain chain loses gradients beyond them).
    """
    items = _items(data)
    many = len(items) > 4
    fig = Figure(figsize=(9.0, 5.0 + (0.22 * ((len(items) + 1) // 2) if many else 0)))
    ax = fig.add_subplot()
    lo, hi = math.inf, -math.inf
    depth = 1
    zeros = []  # layers whose gradient is exactly 0 (log10 = -inf), drawn at the bottom edge
    for i, (label, item) in enumerate(items):
        d = _as_diagnosis(item)
        g = d.grad_log10
        l = np.arange(len(g))
        ok = np.isfinite(g)
        depth = max(depth, len(g))
        marker = "o" if len(g) <= 30 else None
        # Several stable configurations overlap near one value: vary the dash pattern too.
        (line,) = ax.plot(l, np.where(ok, g, np.nan), marker=marker, ms=3, lw=1.6, ls=_STYLES[i % len(_STYLES)],
                label=f"{label}  ({d.verdict}, {d.decades_per_layer:+.2g} dec/layer)" if label else
                f"{d.verdict}, {d.decades_per_layer:+.2g} decades/layer")
        if ok.any():
            lo, hi = min(lo, g[ok].min()), max(hi, g[ok].max())
        zero = np.flatnonzero(g == -np.inf)
        if zero.size:
            zeros.append((zero, line.get_color()))
    if not math.isfinite(lo):
        lo, hi = -1.0, 1.0
    pad = max(0.5, 0.05 * (hi - lo))
    ax.set_ylim(lo - pad, hi + pad)
    for zero, color in zeros:
        ax.plot(zero, np.full(zero.size, lo - 0.8 * pad), ls="none", marker="v", color=color, ms=5,
                label="exact zero gradient")
    if limits:
        styles = {"float64": ("0.35", "--"), "float32": ("0.6", ":")}
        shown = []  # labels closer than 4 % of the axis to one already drawn would overprint it
        span = (hi + pad) - (lo - pad)
        for name, (tiny, big) in FLOAT_LIMITS.items():
            color, ls = styles[name]
            for v, what in ((tiny, "smallest normal"), (big, "largest")):
                if lo - pad <= v <= hi + pad:
                    ax.axhline(v, color=color, ls=ls, lw=1)
                    if all(abs(v - u) > 0.04 * span for u in shown):
                        shown.append(v)
                        ax.annotate(f"{name} {what} (10^{v:.1f})", (0.01, v), xycoords=("axes fraction", "data"),
                                    textcoords="offset points", xytext=(2, 3), fontsize=8, color=color)
    ax.set_xlim(-0.5 if depth <= 30 else 0, depth - 0.5 if depth <= 30 else depth - 1)
    ax.set_xlabel("layer l (0 = input side; backprop runs right to left)")
    ax.set_ylabel(r"$\log_{10}\,\|\partial L/\partial W_l\|_F$ (exact)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if many:  # below the axes, so that no curve hides behind it
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    else:
        ax.legend(fontsize=8, loc="best")
    if path is not None:
        save(fig, path)
    return fig


_STYLES = ("-", "--", "-.", ":")


def histogram_heatmap(item, path=None, *, title: str | None = None) -> Figure:
    """Per-layer histograms of log10 |dW_l| entries as a heat map (layers up, decades across)."""
    d = _as_diagnosis(item)
    counts = d.hist_counts.astype(np.float64)
    L = counts.shape[0]
    total = np.maximum(counts.sum(axis=1, keepdims=True) + d.hist_zeros[:, None], 1)
    frac = counts / total
    fig = Figure(figsize=(8.5, 5.0))
    ax = fig.add_subplot()
    e = d.hist_edges
    positive = frac[frac > 0]
    norm = LogNorm(vmin=max(positive.min(), 1e-4), vmax=positive.max()) if positive.size else None
    mesh = ax.pcolormesh(e, np.arange(L + 1) - 0.5, np.where(frac > 0, frac, np.nan), norm=norm,
                         cmap="viridis", shading="flat", rasterized=True)
    fig.colorbar(mesh, ax=ax, label="fraction of the layer's entries")
    ax.set_xlabel(r"$\log_{10}\,|\partial L/\partial W_l|$ per entry (exact)")
    ax.set_ylabel("layer l (0 = input side)")
    ax.set_title(title or f"Gradient histograms per layer: {d.stack['activation']}, depth {L} ({d.verdict})")
    if d.hist_zeros.any():
        ax.text(0.99, 0.01, f"exact zeros not shown: {int(d.hist_zeros.sum())}", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=8, color="0.3")
    if path is not None:
        save(fig, path)
    return fig


def _curve_items(data):
    return _items(data)


def loss_curves(data, path=None, *, title: str = "Training loss", log: bool = True) -> Figure:
    """Mean mini-batch loss per epoch of one or several :class:`~gradbench.train.TrainResult`.

    A run that diverged ends with a cross at the epoch where its loss turned non-finite.
    """
    items = _curve_items(data)
    many = len(items) > 4
    fig = Figure(figsize=(8.5, 5.0 + (0.22 * ((len(items) + 1) // 2) if many else 0)))
    ax = fig.add_subplot()
    top = 0.0
    for label, r in items:
        loss = np.asarray(r.loss, dtype=np.float64)
        epochs = np.arange(1, len(loss) + 1)
        finite = np.isfinite(loss)
        (line,) = ax.plot(epochs[finite], loss[finite], lw=1.6, label=label or r.settings.get("name", ""))
        if finite.any():
            top = max(top, float(loss[finite].max()))
        if r.diverged_epoch is not None:
            e = r.diverged_epoch
            y = float(r.eval_loss[0]) if not finite.any() else float(loss[finite][-1])
            ax.plot([e + 1], [y], marker="X", ms=11, color=line.get_color(), ls="none")
            ax.annotate(f"{label}: loss non-finite in epoch {e + 1}", (e + 1, y), textcoords="offset points",
                        xytext=(8, 0), fontsize=8, color=line.get_color(), va="center")
            line.set_label(f"{label} (diverged)")
    ax.axhline(LN2, color="0.4", ls="--", lw=1)
    # labelled in the right margin, where no curve can hide it
    ax.annotate("ln 2", (1.0, LN2), xycoords=("axes fraction", "data"), xytext=(3, 0),
                textcoords="offset points", ha="left", va="center", fontsize=9, color="0.3")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean mini-batch loss" + (" (log scale)" if log else "") + "; dashed: ln 2 = 0.693")
    ax.set_title(title)
    ax.grid(True, which="both" if log else "major", alpha=0.3)
    if many:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, frameon=False)
    else:
        ax.legend(fontsize=8, loc="best")
    if path is not None:
        save(fig, path)
    return fig


def update_ratio_curves(data, path=None, *,
                        title: str = "How much the weights move per epoch (solid: first layer, dashed: top)") -> Figure:
    """100 * ||Delta W|| / ||W|| per epoch for the first weight matrix (solid) and the top layer (dashed)."""
    fig = Figure(figsize=(8.5, 5.0))
    ax = fig.add_subplot()
    for label, r in _curve_items(data):
        first = np.asarray(r.first_layer_ratio, dtype=np.float64)
        topl = np.asarray(r.update_ratio[:, -1], dtype=np.float64)
        epochs = np.arange(1, len(first) + 1)
        name = label or r.settings.get("name", "")
        (line,) = ax.plot(epochs, np.where(first > 0, first, np.nan), lw=1.6, label=f"{name}: first layer")
        ax.plot(epochs, np.where(topl > 0, topl, np.nan), lw=1.0, ls="--", color=line.get_color(),
                label=f"{name}: top layer")
    ax.axhline(0.01, color="0.4", ls=":", lw=1)
    ax.annotate("0.01 %", (0.99, 0.01), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                fontsize=8, color="0.3")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(r"$100\,\|\Delta W_l\| / \|W_l\|$ per epoch  (%, log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    if path is not None:
        save(fig, path)
    return fig


def theory_vs_simulation(res, prediction, path=None, *, title: str | None = None) -> Figure:
    """Simulated log10 ||dL/dh_l|| against layer with the theory's straight line.

    Parameters
    ----------
    res : Result
        A backprop result (its exact signal norms are plotted).
    prediction : float
        Predicted change of log10 ||dL/dh|| per layer going down the stack (e.g.
        ``theory.mean_field(stack).decades_per_layer`` or ``newman_lambda1 / ln 10``).
        The line is anchored at the top layer.
    """
    s = res.signal_norm.log10()
    L = len(s)
    l = np.arange(L)
    predicted = s[L - 1] + (L - 1 - l) * prediction
    fig = Figure(figsize=(9.0, 5.0))
    ax = fig.add_subplot()
    ax.plot(l, np.where(np.isfinite(s), s, np.nan), lw=1.6, label="simulated (exact chain)")
    ax.plot(l, predicted, ls="--", color="k", lw=1.2, label=f"theory: {prediction:+.4g} decades per layer going down")
    ax.set_xlabel("layer l (0 = input side; backprop runs right to left)")
    ax.set_ylabel(r"$\log_{10}\,\|\partial L/\partial h_l\|_F$ (exact)")
    stack = res.stack
    ax.set_title(title or f"Theory vs simulation: {stack.activation}, depth {stack.depth}, width {stack.width}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    if path is not None:
        save(fig, path)
    return fig
