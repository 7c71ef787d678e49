"""Figures: gradient flow, per-layer histograms, loss and update-ratio curves.

Built on :class:`matplotlib.figure.Figure` without pyplot, so no window opens and no global
backend is switched (the Agg canvas renders PNG, SVG and PDF). Every function draws into
``ax`` when given (a matplotlib Axes: for subplots of your own), else into a new figure;
returns the figure; and, given ``path``, writes it atomically (temporary file +
``os.replace``) in the format of the path's suffix, at ``dpi`` for PNG. An argument of the wrong
kind (a recurrent net's diagnosis to :func:`gradient_flow`, a backprop Result to
:func:`loss_curves`) or out of range (:func:`theory_vs_simulation`'s ``window`` outside the
stack) is refused with a TypeError or ValueError naming the parameter and what it takes, before
anything is drawn.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import offset_copy

from gradbench._atomic import write_atomic
from gradbench.diagnose import Diagnosis, assess, diagnose
from gradbench.histograms import RelativeHistograms, check_has_histograms
from gradbench.report import fmt_rate
from gradbench.results import Result
from gradbench.verdict import FLOAT_LIMITS

DPI = 120


def _axes(ax, figsize):
    """(figure, axes): ``ax`` and its figure, or a new figure of ``figsize`` inches."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize)
    return fig, fig.add_subplot()


def save(fig: Figure, path, dpi: int = DPI) -> str:
    """Write ``fig`` to ``path`` atomically; the format is the suffix (.png, .svg, .pdf). Missing
    directories are created (:func:`gradbench._atomic.write_atomic`)."""
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


def _hint(item) -> str:
    """Where an item of the wrong kind is drawn instead, for the refusals of :func:`_checked_items`."""
    kind = type(item).__name__
    if kind in ("RecurrentDiagnosis", "RecurrentResult"):
        return " (a recurrent net's: gradbench.recurrent.plot.signal_vs_steps_back and run_figure draw it)"
    if kind in ("TrainResult", "RecurrentTrainResult"):
        return " (a training run's: loss_curves draws it)"
    if kind in ("Diagnosis", "Result"):
        return " (a backprop pass's: gradient_flow draws it)"
    return ""


def _checked_items(data, name: str, kinds: tuple, what: str) -> list[tuple[str, object]]:
    """:func:`_items` of ``data``, each an instance of ``kinds``: else a TypeError naming the
    parameter (``name``, ``name[label]`` for an item of a dict or list) and ``what`` it takes,
    before anything is drawn (a recurrent diagnosis given to gradient_flow was an AttributeError
    from inside matplotlib's drawing); an empty dict or list is a ValueError."""
    items = _items(data)
    several = isinstance(data, (Mapping, list, tuple))
    if several and not items:
        raise ValueError(f"{name} is empty: give {what}, or a dict label -> one of them")
    for label, item in items:
        if not isinstance(item, kinds):
            where = (f"{name}[{label!r}]" if isinstance(data, Mapping) else f"{name}[{label}]") if several else name
            raise TypeError(f"{where} must be {what}" + ("" if several else ", or a dict label -> one of them")
                            + f", got {type(item).__name__}{_hint(item)}")
    return items


def gradient_flow(data, path=None, *, title: str = "Gradient flow", limits: bool = True, ax=None,
                  dpi: int = DPI, signal: bool = True) -> Figure:
    """log10 ||dL/dW_l|| against layer l, one line per configuration, and beside it the backward
    signal log10 ||dL/dh_l||.

    Parameters
    ----------
    data : Diagnosis, Result, or a dict label -> Diagnosis / Result
        A Result needs no histograms (a ``stats_only`` run with ``hist_bins=0`` will do): its
        rates and verdict are :func:`gradbench.diagnose.assess`'s.
    limits : bool
        Draw the smallest normal and largest finite float64/float32 where they fall inside the
        plotted range (a plain chain loses gradients beyond them); limits closer together than
        2 % of the axis are drawn as one band.
    ax : matplotlib Axes, or a pair of them, optional
        One Axes takes ||dL/dW_l|| alone; a pair takes both panels.
    signal : bool
        Draw the second panel, ||dL/dh_l|| (default; a figure of its own only: see ``ax``).

    Each line's legend entry gives its verdict and both rates in decades per layer going down
    (:mod:`gradbench.verdict`): of the backward signal ||dL/dh_l|| and of ||dL/dW_l||. The signal
    has a panel of its own because ||dL/dW_l|| = ||dL/dz_l|| ||h_l|| for one sample also follows
    the forward norm: in a zero-bias ReLU stack it is flat while the signal, whose rate decides
    the verdict, explodes (the demo's "relu, base init" read "exploding" beside a flat line).
    Lines that coincide stay distinguishable: each has its own dash pattern, marker shape (at
    positions staggered from line to line) and width. Layers whose value is exactly 0 (triangles)
    or not finite (crosses: NaN or inf) have no place on the log scale: they are marked in a
    strip below the x axis, a row per line and kind, in the line's colour (one legend entry
    each). A dtype other than float64 is said: in the title when every line has it, else in the
    labels of the lines that have it. A label naming the stack's init scheme (``stack_label``)
    names instead where the weights came from when the scheme did not draw them
    (:func:`_origin_label`: a torch model's file, weights given by the caller).
    """
    items = _checked_items(data, "data", (Diagnosis, Result), "a Diagnosis or Result (gb.diagnose / gb.backprop of a "
                                                              "gb.Stack)")
    items = [(_origin_label(label, item), item) for label, item in items]  # never an init that drew nothing
    dtypes = [_dtype(item) for _, item in items]
    if len(set(dtypes)) == 1:
        title = _with_dtype(title, dtypes[0])
    else:
        items = [(_with_dtype(label, dt), item) for (label, item), dt in zip(items, dtypes)]
    many = len(items) > 4
    height = 5.0 + (0.22 * ((len(items) + 1) // 2) if many else 0)
    if ax is None and signal:
        fig = Figure(figsize=(15.0, height))
        axes = list(fig.subplots(1, 2))
    elif ax is not None and not hasattr(ax, "plot"):  # a pair of Axes
        axes = list(ax)
        if len(axes) != 2:
            raise ValueError(f"ax: give one Axes (||dL/dW_l|| alone) or two (both panels), got {len(axes)}")
        fig = axes[0].figure
    else:
        fig, one = _axes(ax, (9.0, height))
        axes = [one]
    numbers = [_flow_numbers(item) for _, item in items]
    labels = [_flow_label(label, *n) for (label, _), n in zip(items, numbers)]
    rooms = []
    for k, a in enumerate(axes):
        strip = []  # (layers, colour, kind): exact zeros and non-finite values, drawn under the axis
        lo, hi, depth = math.inf, -math.inf, 1
        for i, ((g, s, *_), label) in enumerate(zip(numbers, labels)):
            y = g if k == 0 else s
            ok = np.isfinite(y)
            depth = max(depth, len(y))
            line = _flow_line(a, y, i, len(items), label)
            if ok.any():
                lo, hi = min(lo, y[ok].min()), max(hi, y[ok].max())
            strip += _off_scale(y, line.get_color())
        rooms.append(_strip(a, strip, "gradient" if k == 0 else "signal"))
        quantity = "||dW_l||" if k == 0 else "||dL/dh_l||"
        if math.isfinite(lo):
            pad = max(0.5, 0.05 * (hi - lo))
            a.set_ylim(lo - pad, hi + pad)
            if limits:
                _float_limits(a, lo - pad, hi + pad)
        else:
            _no_finite_values(a, f"no finite, nonzero {quantity} at any layer: each is marked below the axis")
        a.set_xlim(-0.5 if depth <= 30 else 0, depth - 0.5 if depth <= 30 else depth - 1)
        a.set_xlabel("layer l (0 = input side; backprop runs right to left)")
        _whole_numbers(a.xaxis)
        a.grid(True, alpha=0.3)
    axes[0].set_ylabel(r"$\log_{10}\,\|\partial L/\partial W_l\|_F$ (exact)")
    axes[0].set_title(title)
    if len(axes) == 2:
        axes[1].set_ylabel(r"$\log_{10}\,\|\partial L/\partial h_l\|_F$ (exact)")
        axes[1].set_title("the backward signal, whose rate the verdict reads")
        # the lines' entries are the first panel's legend; this one says what its strip's marks are
        marks = [(h, t) for h, t in zip(*axes[1].get_legend_handles_labels()) if ": below the axis" in t]
        if marks:
            axes[1].legend(*zip(*marks), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False,
                           bbox_transform=offset_copy(axes[1].transAxes, fig=fig, y=-rooms[1], units="points"))
    _legend(axes[0], room=rooms[0], ncol=2, below=many)  # many lines: below the axes, so that no curve hides
    if path is not None:
        save(fig, path, dpi)
    return fig


def _legend(ax, *, room: float = 0.0, ncol: int = 1, below: bool = False, fontsize: float = 8):
    """The axes' legend: inside, at matplotlib's "best" place, when it fits there; else (or when
    ``below``) under the axes, past the strip's ``room`` points (:func:`_strip`) and the x axis's
    label, in ``ncol`` columns. A legend wider than the axes (one run whose label gives its whole
    configuration, its verdict and both rates) reached out of them over the y tick labels."""
    if not below:
        legend = ax.legend(fontsize=fontsize, loc="best")
        box, frame = legend.get_window_extent(), ax.get_window_extent()
        if box.width <= 0.95 * frame.width and box.height <= 0.9 * frame.height:
            return legend
    return ax.legend(fontsize=fontsize, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=ncol, frameon=False,
                     bbox_transform=offset_copy(ax.transAxes, fig=ax.figure, y=-room, units="points"))


def _dtype(item) -> str:
    """The floating-point type a Result, Diagnosis or RelativeHistograms was computed in
    ("float64" when it does not say)."""
    stack = getattr(item, "stack", None)
    dt = stack.get("dtype") if isinstance(stack, dict) else getattr(stack, "dtype", None)
    return dt or "float64"


def _with_dtype(text: str, dtype: str) -> str:
    """``text`` with ', float32' (any dtype but float64) unless it names it already."""
    return text if dtype == "float64" or dtype in text or not text else f"{text}, {dtype}"


def _weights_origin(item) -> str | None:
    """Where the weights of a Result or Diagnosis came from when ``Stack.init`` did not draw them
    (the params' ``origin``: "the weights of model.pt"; the Result's ``extras["weights"]``, the
    Diagnosis's ``weights``), None when it did."""
    w = getattr(item, "weights", None)
    if not isinstance(w, str):
        w = (getattr(item, "extras", None) or {}).get("weights")
    return w if isinstance(w, str) and w else None


def _origin_label(label: str, item) -> str:
    """``label`` with the stack's init scheme, where it names it as one of its comma-separated
    parts (:func:`gradbench.cli.common.stack_label`), replaced by the weights' origin when the
    scheme did not draw them (:func:`_weights_origin`), and the gains it drew with left out:
    ``run --torch model.pt --plot`` drew "depth 10, width 16, sigmoid, xavier_normal, ..." for a
    model with torch's default init."""
    origin = _weights_origin(item)
    stack = getattr(item, "stack", None)
    init = stack.get("init") if isinstance(stack, dict) else getattr(stack, "init", None)
    if origin is None or not label or not init or origin in label:
        return label
    parts = label.split(", ")
    if init not in parts:
        return label
    return ", ".join(origin if p == init else p for p in parts if not p.startswith(("sigma_w=", "sigma_b=")))


def _flow_numbers(item) -> tuple[np.ndarray, np.ndarray, str, float, float]:
    """(grad_log10, signal_log10, verdict, rate of ||dW_l||, rate of the signal) of a Diagnosis,
    or of a Result by :func:`gradbench.diagnose.assess` (the same numbers as its diagnosis,
    without histograms)."""
    d = item if isinstance(item, Diagnosis) else assess(item)
    return (np.asarray(d.grad_log10, dtype=np.float64), np.asarray(d.signal_log10, dtype=np.float64), d.verdict,
            d.decades_per_layer, d.signal_decades_per_layer)


def _flow_label(label: str, g, s, verdict: str, rate: float, signal_rate: float) -> str:
    """A gradient-flow line's legend entry: its label, verdict and rates (none for one finite
    ||dW_l||: no trend, as the text says); a "no gradient" run's finite norms (batch norm over 2
    equal or cancelling samples) said to be rounding of an exact 0 (they were drawn as an exact slope)."""
    finite = np.isfinite(g)
    rates = _rates(rate, signal_rate) if np.count_nonzero(finite) >= 2 else ""
    if verdict == "no gradient" and finite.any():
        rates = "; the norms drawn are rounding of an exact 0"
    return f"{label}  ({verdict}{rates})" if label else f"{verdict}{rates}"


def _rates(rate: float, signal_rate: float) -> str:
    """'; signal +0.145, ||dW|| -0.010 dec/layer': to 3 decimals, as the compare table
    (gradbench.report.fmt_rate, -0.000 read as +0.000); the finite ones, '' when neither is."""
    parts = [f"{name} {fmt_rate(v)}" for name, v in (("signal", signal_rate), ("||dW||", rate)) if math.isfinite(v)]
    return f"; {', '.join(parts)} dec/layer" if parts else ""


# kind -> (marker, legend text with {} for the quantity)
_STRIP = {"zero": ("v", "exact zero {}"), "nonfinite": ("x", "non-finite {} (NaN or inf)")}
_STRIP_STEP = 7.0  # points between the strip's rows


def _off_scale(log10, color, x=None) -> list[tuple[np.ndarray, str, str]]:
    """The strip's rows (positions, colour, kind) for the entries of ``log10`` off the log
    scale: exact zeros (-inf) and non-finite values (NaN, +inf); at positions ``x`` (default:
    the indices)."""
    g = np.asarray(log10, dtype=np.float64)
    x = np.arange(len(g)) if x is None else np.asarray(x)
    rows = []
    for kind, off in (("zero", g == -np.inf), ("nonfinite", np.isnan(g) | (g == np.inf))):
        if off.any():
            rows.append((x[off], color, kind))
    return rows


def _strip(ax, marks, what: str = "gradient") -> float:
    """Markers for layers off the log scale, a row per (layers, colour, kind) in ``marks``, in a
    strip between the x axis and its tick labels: at fixed points under the axis, not at a y
    value, so that they cannot be read as a gradient. The tick labels move down to make room;
    returns that room in points. ``what``: the quantity the legend entries name."""
    if not marks:
        return 0.0
    labelled = set()
    for j, (layers, color, kind) in enumerate(marks):
        marker, text = _STRIP[kind]
        below = offset_copy(ax.get_xaxis_transform(), fig=ax.figure, y=-_STRIP_STEP * (j + 1), units="points")
        ax.plot(layers, np.zeros(len(layers)), transform=below, ls="none", marker=marker, color=color, ms=5,
                zorder=5, clip_on=False,
                label="_nolegend_" if kind in labelled else f"{text.format(what)}: below the axis, coloured as its line")
        labelled.add(kind)
    # x range: the marks count as data (a run with nothing finite autoscaled to -0.055..0.055, its marks
    # far outside the axes; a tight bounding box around them made a 30 000-pixel-wide PNG)
    xs = np.concatenate([np.asarray(layers, dtype=np.float64) for layers, _, _ in marks])
    ax.update_datalim(np.column_stack([xs, np.zeros(xs.size)]), updatey=False)
    ax.autoscale_view(scaley=False)
    room = _STRIP_STEP * len(marks)
    ax.tick_params(axis="x", pad=3.5 + room)
    return room


_STYLES = ("-", "--", "-.", ":")
# "v" and "x" (and "X", like it) mark exact zeros and non-finite values
_MARKERS = ("o", "s", "^", "D", "P", "p", "*", "<", ">", "h")


def _no_finite_values(ax, text: str) -> None:
    """Say on the axes that there is nothing on the y scale (rather than invent a range for it)."""
    ax.set_yticks([])
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.3", wrap=True)


def _flow_line(ax, g: np.ndarray, i: int, n: int, label: str):
    """Line i of n: its own dash pattern, marker shape and width (the first lines widest, so a
    later line lying on top of an earlier one leaves its edges visible)."""
    L = len(g)
    every = 1 if L <= 30 else max(1, L // 12)
    offset = (i * every) // max(n, 1) if every > 1 else 0
    (line,) = ax.plot(np.arange(L), np.where(np.isfinite(g), g, np.nan), ls=_STYLES[i % len(_STYLES)],
                      lw=1.3 + 1.5 * (n - 1 - i) / max(n - 1, 1), marker=_MARKERS[i % len(_MARKERS)],
                      markevery=(offset, every), ms=4, label=label)
    return line


def _whole_numbers(axis) -> None:
    """Ticks at whole numbers only on an axis of layers, steps or epochs (a depth-3 stack's axis
    read 'layer 0.5', 1.5, 2.5)."""
    axis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10], integer=True, min_n_ticks=1))


def _float_limits(ax, ymin: float, ymax: float) -> None:
    """The float32/float64 limits inside [ymin, ymax]; limits closer than 2 % of the axis become one band."""
    styles = {"float64": ("0.35", "--"), "float32": ("0.6", ":")}
    shown = sorted((v, name, what) for name, (tiny, big) in FLOAT_LIMITS.items()
                   for v, what in ((tiny, "smallest normal"), (big, "largest")) if ymin <= v <= ymax)
    groups: list[list] = []
    for v in shown:
        if groups and v[0] - groups[-1][-1][0] < 0.02 * (ymax - ymin):
            groups[-1].append(v)
        else:
            groups.append([v])
    for group in groups:
        if len(group) == 1:
            v, name, what = group[0]
            color, ls = styles[name]
            ax.axhline(v, color=color, ls=ls, lw=1)
            text = f"{name} {what} (10^{v:.1f})"
        else:
            v, top = group[0][0], group[-1][0]
            ax.axhspan(v, top, color="0.85", lw=0, zorder=0)
            # each dtype's own (the band's ends alone were float64's, read as both dtypes')
            text = "limits: " + ", ".join(
                f"{name} " + " ... ".join(f"10^{u:.1f}" for u, n, _ in group if n == name)
                for name in sorted({n for _, n, _ in group}, reverse=True))
        ax.annotate(text, (0.01, v), xycoords=("axes fraction", "data"), textcoords="offset points", xytext=(2, 3),
                    fontsize=8, color="0.3")
    # a range wholly beyond a dtype's limits: said, as no line of it falls inside (a float32 run at
    # 10^98 everywhere showed no limit and no word)
    beyond = [f"above {name}'s largest (10^{big:.1f})" if ymin > big
              else f"below {name}'s smallest normal (10^{tiny:.1f})"
              for name, (tiny, big) in FLOAT_LIMITS.items() if ymin > big or ymax < tiny]
    if beyond:
        ax.annotate("every value lies " + "; ".join(beyond), (0.01, 0.98), xycoords="axes fraction", va="top",
                    fontsize=8, color="0.3")


def histogram_heatmap(item, path=None, *, title: str | None = None, relative: bool = True, verdict: str | None = None,
                      ax=None, dpi: int = DPI) -> Figure:
    """Per-layer histograms of the entries of dW_l as a heat map (layers up, decades across).

    Parameters
    ----------
    item : Result, Diagnosis or RelativeHistograms
        A Result needs gradients or histograms (not ``stats_only`` with ``hist_bins=0``).
    relative : bool
        Each layer's log10 |dW_l entries| relative to its own norm, log10 ||dW_l||_F (default):
        every layer's shape stays visible at any depth. From a Result this is exact (for a
        ``stats_only`` run, each entry at most one 1/4-decade bin from its own); from a
        Diagnosis each entry is at most one bin from its own, on bins at least as wide as the
        diagnosis's, and a diagnosis whose bins are too coarse for a layer's distribution (a
        deep stack's) is refused with what to pass instead
        (:meth:`~gradbench.histograms.RelativeHistograms.from_diagnosis`). ``False``: the
        diagnosis's common absolute bins.
    verdict : str, optional
        Shown in the default title (a Diagnosis brings its own).
    ax : matplotlib Axes, optional

    Colours are fractions of all the layer's entries; those not in a cell (exact zeros,
    non-finite entries, entries outside the bins or below the relative grid, entries whose
    place is unknown) are counted under the x axis.
    """
    if not isinstance(item, (Result, Diagnosis, RelativeHistograms)):  # one item: its own map
        raise TypeError(f"item must be a Result, Diagnosis or RelativeHistograms of a gb.Stack (one of them: a map "
                        f"each), got {type(item).__name__}{_hint(item)}")
    stack = item.stack if hasattr(item, "stack") else None
    if isinstance(item, Diagnosis):
        verdict = verdict or item.verdict
    elif not isinstance(item, RelativeHistograms):
        check_has_histograms(item, "histogram_heatmap")
    if not relative:
        return _absolute_heatmap(_as_diagnosis(item), path, title=title, ax=ax, dpi=dpi)
    if isinstance(item, RelativeHistograms):
        rel = item
    elif isinstance(item, Diagnosis):
        rel = RelativeHistograms.from_diagnosis(item)
    else:
        rel = RelativeHistograms.from_result(item)
    fig, ax = _axes(ax, (8.5, 5.0))
    counts, rows = _row_groups(rel.counts)
    apart = {"exact zeros": rel.zeros, "non-finite entries (NaN or inf)": rel.nonfinite,
             # re-binned (a stats-only run): a bin across the edge is drawn whole in the lowest bin,
             # so only the bins wholly below it are counted here: a lower bound
             (f"entries below 10^{rel.edges[0]:g} of the norm" if rel.exact else
              f"or more entries below 10^{rel.edges[0]:g} of the norm (those within a bin of it are drawn in the "
              "lowest bin)"): rel.outside,
             "entries of unknown place (outside the bins they were counted in, or in a layer with non-finite "
             "entries)": rel.unplaced}
    _heatmap(fig, ax, rel.edges, counts, counts.sum(axis=1) + _row_sums(apart.values()), rows, rel.counts.shape[0])
    ax.set_xlabel(r"$\log_{10}\,|\partial L/\partial W_l| - \log_{10}\,\|\partial L/\partial W_l\|_F$"
                  " per entry " + ("(exact)" if rel.exact else "(each at most one bin from its own)"))
    act = stack["activation"] if isinstance(stack, dict) else getattr(stack, "activation", "")
    depth = rel.counts.shape[0]
    ax.set_title(title or _with_dtype(f"dW entries relative to each layer's norm: {act}, depth {depth}", _dtype(item))
                 + (f" ({verdict})" if verdict else ""))
    _not_shown(ax, apart)
    if path is not None:
        save(fig, path, dpi)
    return fig


def _row_sums(counts) -> np.ndarray:
    """The sum of per-layer counts (each (L,), of any integer type), over the rows of :func:`_row_groups`."""
    return _row_groups(sum(np.asarray(v, dtype=np.int64) for v in counts)[:, None])[0][:, 0]


def _not_shown(ax, counts: dict) -> None:
    """'not shown: 12 exact zeros, 3 non-finite entries (NaN or inf)' under the x axis, for
    the kinds (name -> per-layer counts) that occur."""
    notes = [f"{int(v.sum())} {_singular(name) if int(v.sum()) == 1 else name}" for name, v in counts.items() if v.sum()]
    if notes:
        _note_below(ax, "not shown: " + ", ".join(notes))


def _singular(kind: str) -> str:
    """'exact zero', 'entry below ...', 'non-finite entry (NaN or inf)' for a count of 1 ('1 or more
    entries' stays)."""
    if kind.startswith("or more"):
        return kind
    return kind.replace("exact zeros", "exact zero").replace("entries", "entry", 1)


def _note_below(ax, text: str) -> None:
    """A note under the x axis's label (inside the axes it covered the heat map's cells)."""
    ax.set_xlabel(f"{ax.get_xlabel()}\n{text}")


def _row_groups(a: np.ndarray, most: int = 2000) -> tuple[np.ndarray, int]:
    """Rows summed in groups of ``g`` so that at most ``most`` are drawn; returns (rows, g)."""
    L = a.shape[0]
    g = max(1, math.ceil(L / most))
    if g == 1:
        return a, 1
    full = L // g * g  # whole groups from a view; the last, partial group on its own (no padded copy)
    rows = a[:full].reshape(-1, g, *a.shape[1:]).sum(axis=1)
    if full < L:
        rows = np.concatenate([rows, a[full:].sum(axis=0, keepdims=True)])
    return rows, g


def _heatmap(fig, ax, edges, counts, totals, group: int, layers: int) -> None:
    """Fractions of each row's entries (rows of ``group`` of the ``layers`` layers) as a
    log-coloured mesh with a colour bar."""
    frac = counts / np.maximum(totals, 1)[:, None]
    positive = frac[frac > 0]
    # each row spans its own layers: the last, partial group ends at the last layer (layer 2000 alone
    # of depth 2001 in rows of 2 spanned 1999.5-2001.5, the axis going to 2001.5)
    rows = np.minimum(np.arange(counts.shape[0] + 1) * group, layers) - 0.5
    if positive.size:
        norm = LogNorm(vmin=max(positive.min(), 1e-4), vmax=positive.max())
        mesh = ax.pcolormesh(edges, rows, np.where(frac > 0, frac, np.nan), norm=norm, cmap="viridis",
                             shading="flat", rasterized=True)
        # fractions below the scale's floor (1e-4: single entries of rows of many layers) take its lowest
        # colour; the bar's pointed end says so
        fig.colorbar(mesh, ax=ax, label="fraction of the layer's entries",
                     extend="min" if positive.min() < norm.vmin else "neither")
    else:  # no colour scale to give (it read -0.1 ... 0.1)
        ax.set_xlim(edges[0], edges[-1])
        ax.set_ylim(rows[0], rows[-1])
        ax.text(0.5, 0.5, "no finite, nonzero entry to place in a cell: every entry is counted under the axis",
                transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.3")
    ax.set_ylabel("layer l (0 = input side)" + (f"; rows of {group} layers" if group > 1 else ""))
    _whole_numbers(ax.yaxis)


def _absolute_heatmap(d: Diagnosis, path, *, title, ax, dpi) -> Figure:
    fig, ax = _axes(ax, (8.5, 5.0))
    counts, group = _row_groups(d.hist_counts)  # integer sums, exact; float only once grouped
    counts = counts.astype(np.float64)
    apart = {"exact zeros": d.hist_zeros, "non-finite entries (NaN or inf)": d.hist_nonfinite,
             f"entries outside the bins' range [10^{d.hist_edges[0]:.4g}, 10^{d.hist_edges[-1]:.4g}]": d.hist_outside}
    _heatmap(fig, ax, d.hist_edges, counts, counts.sum(axis=1) + _row_sums(apart.values()), group,
             d.hist_counts.shape[0])
    ax.set_xlabel(r"$\log_{10}\,|\partial L/\partial W_l|$ per entry "
                  + ("(exact)" if d.hist_exact else "(each within one streaming bin of its own)"))
    what = f"Gradient histograms per layer: {d.stack['activation']}, depth {d.depth}"
    ax.set_title(title or _with_dtype(what, _dtype(d))
                 + f" ({d.verdict})")
    _not_shown(ax, apart)
    if path is not None:
        save(fig, path, dpi)
    return fig


def _curve_items(data, kinds: str = "any"):
    """The training runs of ``data`` (:func:`_items`): TrainResult or RecurrentTrainResult, or
    ``kinds="stack"`` TrainResult only (the update ratios are the stacks' layers'); else a
    TypeError naming ``data`` and what it takes (loss_curves of a backprop Result was a TypeError
    from inside NumPy)."""
    from gradbench.recurrent.train import RecurrentTrainResult
    from gradbench.train import TrainResult

    if kinds == "stack":
        return _checked_items(data, "data", (TrainResult,), "a TrainResult (gb.train of a gb.Stack)")
    return _checked_items(data, "data", (TrainResult, RecurrentTrainResult),
                          "a TrainResult or RecurrentTrainResult (gb.train)")


def _chance(r):
    """(name, value, note) of the loss that knows nothing for a training result (TrainResult or a
    recurrent one), None when unknown (gradbench.train.chance_loss)."""
    from gradbench.train import chance_loss

    net = getattr(r, "stack", None) or getattr(r, "rnn", None)
    extras = getattr(r, "extras", None) or {}
    return None if net is None else chance_loss(net.loss, net.output_dim, extras.get("mean_prediction_loss"))


def loss_curves(data, path=None, *, title: str = "Training loss", log: bool = True, ax=None,
                dpi: int = DPI) -> Figure:
    """The loss before training and after each epoch (``eval_loss``: a stack's on the whole data
    set, a recurrent net's on its held-out data; epoch 0 is before training) of one or several
    :class:`~gradbench.train.TrainResult` (or recurrent ones): the numbers the summaries and the
    demo table print. (The mean of an epoch's mini-batch losses, ``loss``, was drawn: 0.081 where
    the batchnorm demo's summary said 0.0168, the weights moving during the epoch.)

    Each run has, besides its colour, its own line style and marker shape (markers at a few
    epochs, staggered from run to run), so that the runs are told apart in greyscale and without
    telling colours apart. A run that diverged has a cross below the x axis, in its colour, at
    the epoch where it did (its loss is not finite there: it has no height on the scale) and
    says so in its legend entry; a finite point without a finite neighbour has a dot.
    """
    items = _curve_items(data)
    many = len(items) > 4
    fig, ax = _axes(ax, (8.5, 5.0 + (0.22 * ((len(items) + 1) // 2) if many else 0)))
    strip = []
    for i, (label, r) in enumerate(items):
        loss = np.asarray(r.eval_loss, dtype=np.float64)
        line = _loss_line(ax, np.arange(len(loss)), loss, label or r.settings.get("name", ""),
                          **_curve_style(i, len(items), len(loss)))
        strip += _diverged(line, r.diverged_epoch)
    ref = _chance_line(ax, [r for _, r in items])
    room = _strip(ax, strip, "loss")
    if log:
        ax.set_yscale("log")
    from gradbench.train import TrainResult

    ax.set_xlabel("epoch (0: before training)")
    kinds = {isinstance(r, TrainResult) for _, r in items}
    what = ("loss on the whole data set" if kinds == {True} else "held-out loss" if kinds == {False}
            else "loss on the whole data set (recurrent nets: held-out)")
    # two lines: in one, the label ran past the axes' height (and off the figure) at the default size
    tail = "; ".join((["log scale"] if log else []) + ([] if ref is None else [f"dashed: {ref[0]} = {ref[1]:.3g}"]))
    ax.set_ylabel(f"{what}, mean per sample" + (f"\n({tail})" if tail else ""))
    ax.set_title(title)
    ax.grid(True, which="both" if log else "major", alpha=0.3)
    _legend(ax, room=room, ncol=3, below=many)
    if path is not None:
        save(fig, path, dpi)
    return fig


# dashed ("--") is the loss that knows nothing (_chance_line)
_CURVE_STYLES = ("-", "-.", ":")


def _curve_style(i: int, n: int, epochs: int, marks: int = 8) -> dict:
    """Curve i of n over ``epochs`` epochs: a line style and marker shape of its own (unique for
    the first 30 curves; the colours repeat after 10), markers at about ``marks`` epochs, shifted
    from curve to curve so that they do not sit on each other. Without them the demo's 10
    training runs were told apart by colour alone."""
    every = max(1, round(epochs / marks))
    offset = (i * every) // max(n, 1) if every > 1 else 0
    return dict(ls=_CURVE_STYLES[i % len(_CURVE_STYLES)], marker=_MARKERS[i % len(_MARKERS)],
                markevery=(offset, every), ms=4.5)


def _loss_line(ax, epochs: np.ndarray, loss: np.ndarray, label: str, **style):
    """A training curve, with a dot on each finite point without a finite neighbour (a run that
    diverged in its second epoch has one finite point: a line alone would draw nothing)."""
    ok = np.isfinite(loss)
    lone = ok & ~np.r_[False, ok[:-1]] & ~np.r_[ok[1:], False]
    (line,) = ax.plot(epochs, np.where(ok, loss, np.nan), lw=style.pop("lw", 1.6), label=label, **style)
    if len(epochs):  # every epoch on the x axis, also those without a finite loss
        ax.update_datalim(np.column_stack([epochs[[0, -1]], [0, 0]]), updatey=False)
        ax.autoscale_view(scaley=False)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if lone.any():  # apart from the line, whose legend entry keeps no marker
        ax.plot(epochs[lone], loss[lone], ls="none", marker="o", ms=5, color=line.get_color(), label="_nolegend_")
    return line


def _diverged(line, epoch: int | None) -> list:
    """A run that diverged in 0-based epoch ``epoch`` (None: it did not): '(diverged in epoch N)'
    in its line's legend entry, and the strip's row (:func:`_strip`, kind "nonfinite") for a
    cross at x = N, the epoch where its loss is not finite."""
    if epoch is None:
        return []
    line.set_label(f"{line.get_label()} (diverged in epoch {epoch + 1})")
    return [(np.array([epoch + 1]), line.get_color(), "nonfinite")]


def _chance_line(ax, results) -> tuple | None:
    """The loss that knows nothing (:func:`_chance`) as a dashed line labelled in the right
    margin, when every run in ``results`` has the same one; returns it (name, value, note), or
    None (none drawn: runs that differ, or a loss without one, mse without its targets' mean)."""
    chance = {_chance(r) for r in results}
    ref = chance.pop() if len(chance) == 1 else None
    if ref is not None:
        ax.axhline(ref[1], color="0.4", ls="--", lw=1)
        # labelled in the right margin, where no curve can hide it
        ax.annotate(ref[0] if ref[0].startswith("ln") else "chance", (1.0, ref[1]),
                    xycoords=("axes fraction", "data"), xytext=(3, 0), textcoords="offset points", ha="left",
                    va="center", fontsize=9, color="0.3")
    return ref


def update_ratio_curves(data, path=None, *,
                        title: str = "How much the weights move per epoch (solid: first layer, dashed: top)",
                        ax=None, dpi: int = DPI) -> Figure:
    """100 * ||Delta W|| / ||W|| per epoch for the first weight matrix (solid) and the top layer (dashed).

    A run that diverged has no ratio from the epoch where it turned non-finite on: a dotted
    vertical line in its colour marks that epoch (legend: "diverged in epoch N"), and its
    curves without a finite point have no legend entry.
    """
    items = _curve_items(data, "stack")
    fig, ax = _axes(ax, (8.5, 5.0))
    strip, any_shown = [], False
    for label, r in items:
        first = np.asarray(r.first_layer_ratio, dtype=np.float64)
        topl = np.asarray(r.update_ratio[:, -1], dtype=np.float64)
        epochs = np.arange(1, len(first) + 1)
        name = label or r.settings.get("name", "")
        diverged, color = r.diverged_epoch is not None, None
        ran = epochs <= (r.diverged_epoch if diverged else len(epochs))  # the epochs that finished
        for ratio, what, style in ((first, "first layer", dict(lw=1.6)), (topl, "top layer", dict(lw=1.0, ls="--"))):
            shown = np.where(ratio > 0, ratio, np.nan)
            empty = diverged and not np.isfinite(shown).any()
            # every epoch on the axis and a dot on a ratio without a finite neighbour (a run that stopped
            # after its first epoch drew nothing and an axis of epoch 1 alone)
            line = _loss_line(ax, epochs, shown, "_nolegend_" if empty else f"{name}: {what}", color=color, **style)
            color = line.get_color()
            any_shown = any_shown or bool(np.isfinite(shown).any())
            # weights that did not move at all (ratio exactly 0) have no place on the log scale
            if (zero := ran & (ratio == 0)).any():
                strip.append((epochs[zero], color, "zero"))
        if diverged:
            e = r.diverged_epoch + 1
            ax.axvline(e, color=color, ls=":", lw=1.2, label=f"{name}: diverged in epoch {e} (no ratio from there on)")
    ax.set_yscale("log")
    if any_shown:
        ax.axhline(0.01, color="0.4", ls=":", lw=1)
        ax.annotate("0.01 %", (0.99, 0.01), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                    fontsize=8, color="0.3")
    else:  # no scale to give: the log axis's minor ticks read 9.6e-3 ... 1.04e-2 around the 0.01 % line
        _no_finite_values(ax, "no weight moved in any epoch shown: every ratio is exactly 0 or not finite")
        ax.set_yticks([], minor=True)
    room = _strip(ax, strip, "ratio (the weights did not move)")
    ax.set_xlabel("epoch")
    _whole_numbers(ax.xaxis)
    ax.set_ylabel(r"$100\,\|\Delta W_l\| / \|W_l\|$ per epoch  (%, log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False,
              bbox_transform=offset_copy(ax.transAxes, fig=fig, y=-room, units="points"))
    if path is not None:
        save(fig, path, dpi)
    return fig


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _theory_args(res, prediction, curve, window):
    """(log10 ||dL/dh_l||, prediction, curve as float64 or None, window) of
    :func:`theory_vs_simulation`'s arguments, each refused naming it before anything is drawn: a
    Diagnosis was an AttributeError, a prediction "0.1" a NumPy ufunc error and NaN drew no line
    beside "+nan decades per layer", a curve of the wrong length a broadcast error; window (3, 99)
    of 10 layers was cut to "fitted layers 3-9" and (7, 2) or (-5, 4) ignored."""
    if not isinstance(res, Result):
        raise TypeError(f"res must be a Result (gb.backprop of a gb.Stack), got {type(res).__name__}{_hint(res)}")
    s = np.asarray(res.signal_norm.log10(), dtype=np.float64)
    L = len(s)
    if isinstance(prediction, (bool, np.bool_)) or not isinstance(prediction, (int, float, np.integer, np.floating)):
        raise TypeError(f"prediction must be a real number (decades per layer going down, e.g. "
                        f"theory.mean_field(...).decades_per_layer), got {type(prediction).__name__} {prediction!r}")
    prediction = float(prediction)
    if curve is None and not math.isfinite(prediction):
        raise ValueError(f"prediction must be finite (decades per layer going down): {prediction!r} draws no line")
    if curve is not None:
        try:
            curve = np.asarray(curve, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"curve must be an array of {L} numbers (the predicted log10 ||dL/dh_l||, one per layer), "
                            f"got {type(curve).__name__}") from None
        if curve.shape != (L,):
            raise ValueError(f"curve must have shape ({L},), one predicted log10 ||dL/dh_l|| per layer of the "
                             f"result, got shape {curve.shape}")
        if not np.isfinite(curve).any():
            raise ValueError("curve has no finite entry: nothing to draw")
    if window is not None:
        ok = isinstance(window, (tuple, list)) and len(window) == 2 and all(_is_int(v) for v in window)
        if not ok or not 0 <= window[0] < window[1] <= L:
            raise ValueError(f"window must be None or a pair of whole numbers (lo, hi): the layers [lo, hi) fitted, "
                             f"0 <= lo < hi <= {L} (the result's depth), got {window!r}")
        window = (int(window[0]), int(window[1]))
    return s, prediction, curve, window


def theory_vs_simulation(res, prediction, path=None, *, title: str | None = None, ax=None,
                         dpi: int = DPI, curve=None, window: tuple[int, int] | None = None) -> Figure:
    """Simulated log10 ||dL/dh_l|| against layer with the theory's prediction.

    Parameters
    ----------
    res : Result
        A backprop result (its exact signal norms are plotted).
    prediction : float
        Predicted change of log10 ||dL/dh|| per layer going down the stack (e.g.
        ``theory.mean_field(stack).decades_per_layer`` or ``newman_lambda1 / ln 10``): a straight
        line.
    curve : array (L,), optional
        The predicted log10 ||dL/dh_l|| itself, up to a constant (e.g.
        ``theory.along_stack(stack).signal_log10()``: chi_1 at each layer's own length), drawn
        instead of the straight line.
    window : (lo, hi), optional
        The layers [lo, hi) a slope was fitted over, 0 <= lo < hi <= depth; the prediction is
        placed at the simulation's height there (least squares: the same mean over those layers),
        not at the top layer, whose signal carries the loss's own start. Default: every layer.

    Each argument of the wrong type or out of range is refused naming it (TypeError, ValueError)
    before anything is drawn: a ``prediction`` that is not finite without a ``curve`` (no line
    to draw), a ``curve`` of another length than the result's depth, a ``window`` outside it.
    """
    s, prediction, curve, window = _theory_args(res, prediction, curve, window)
    L = len(s)
    l = np.arange(L)
    predicted = (L - 1 - l) * prediction if curve is None else curve
    lo, hi = window or (0, L)
    used = lo + np.flatnonzero(np.isfinite(s[lo:hi]) & np.isfinite(predicted[lo:hi]))  # the layers placed over
    anchor = float(np.mean(s[used] - predicted[used])) if used.size else s[L - 1] - predicted[L - 1]
    predicted = predicted + anchor
    fig, ax = _axes(ax, (9.0, 5.0))
    (sim,) = ax.plot(l, np.where(np.isfinite(s), s, np.nan), lw=1.6, label="simulated (exact chain)")
    label = (f"theory: {prediction:+.4g} decades per layer going down" if curve is None else
             "theory: chi_1 at each layer's own length"
             + (f" ({prediction:+.4g} decades per layer fitted)" if math.isfinite(prediction) else ""))
    if np.isfinite(s).any():
        ax.plot(l, predicted, ls="--", color="k", lw=1.2, label=label)
    else:
        _no_finite_values(ax, "no finite, nonzero ||dL/dh_l|| at any layer (each is marked below the axis):\n"
                              "nothing to place the prediction against")
    if window is not None and used.size >= 2 and (used[0], used[-1]) != (0, L - 1):
        # the layers of the window with a finite signal: those a fit can have used, not the window's ends
        gaps = used.size < used[-1] - used[0] + 1
        ax.axvspan(used[0], used[-1], color="0.9", zorder=0,
                   label=f"fitted layers {used[0]}-{used[-1]}" + (" (the finite ones)" if gaps else ""))
    room = _strip(ax, _off_scale(s, sim.get_color()), r"$\|\partial L/\partial h_l\|$")
    ax.set_xlabel("layer l (0 = input side; backprop runs right to left)")
    _whole_numbers(ax.xaxis)
    ax.set_ylabel(r"$\log_{10}\,\|\partial L/\partial h_l\|_F$ (exact)")
    stack = res.stack
    # the gain and bias are what mean field's prediction is a function of: said, where the stack sets them
    gains = ([f"sigma_w {stack.sigma_w:g}"] if stack.sigma_w is not None else []) + (
        [f"sigma_b {stack.sigma_b:g}"] if stack.sigma_b else [])
    ax.set_title(title or f"Theory vs simulation: {', '.join([stack.activation] + gains)}, depth {stack.depth}, "
                          f"width {stack.width}")
    ax.grid(True, alpha=0.3)
    _legend(ax, room=room, fontsize=9)
    if path is not None:
        save(fig, path, dpi)
    return fig
