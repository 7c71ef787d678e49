"""The phase diagram of a sweep: measured decades per layer over two swept axes, and the theory.

:func:`phase_diagram` draws, for each value of the other swept fields (e.g. each activation),
a heat map of the measured rate (mean over the seeds with a finite rate: :func:`cells`) on a
diverging colour map centred on 0 (blue: vanishing, red: exploding, in the package's one sign
convention: negative = vanishing), cells without a finite rate drawn by why (no gradient,
non-finite) and cells whose mean leaves seeds out hatched with ``k/n``, each in the legend
under the map; the mean-field critical line chi_1 = 1
(:func:`gradbench.theory.critical_sigma_w`) over it when one axis is ``sigma_w`` and
``sigma_b`` is the other axis or fixed, and a last panel of measured against predicted rate
for every run with the identity line. Axes spanning decades are drawn in log or one cell per
value (:class:`_Axis`). Built on
:class:`matplotlib.figure.Figure` without pyplot, written atomically by
:func:`gradbench.plot.save`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from matplotlib.colors import CenteredNorm
from matplotlib.figure import Figure

from gradbench import theory
from gradbench.plot import save
from gradbench.spec import HOMOGENEOUS, Stack

_LABELS = {
    "decades_per_layer": r"$\log_{10}\|\partial L/\partial W_l\|$",
    "signal_decades_per_layer": r"$\log_{10}\|\partial L/\partial h_l\|$",
}


def _config_columns(table) -> list[str]:
    """The configuration columns of a sweep table: those before ``seed``."""
    cols = list(table.columns)
    if "seed" not in cols or "theory_decades_per_layer" not in cols:
        raise ValueError("table must be a gb.sweep() table (with 'seed' and the theory columns)")
    return cols[: cols.index("seed")]


def _groups(table, x: str, y: str) -> list[tuple[str, object]]:
    """(title, sub-table) for each combination of the other varying configuration columns."""
    others = [c for c in _config_columns(table) if c not in (x, y) and table[c].nunique(dropna=False) > 1]
    if not others:
        return [("", table)]
    return [(", ".join(f"{c} = {v}" for c, v in zip(others, key if isinstance(key, tuple) else (key,))), sub)
            for key, sub in table.groupby(others, sort=False, dropna=False)]


def _edges(v: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres ``v``: midpoints, half a step beyond the ends."""
    if len(v) == 1:
        e = np.array([v[0] - 0.5, v[0] + 0.5]) if v[0] == 0 else v[0] * np.array([0.9, 1.1])
    else:
        mid = (v[1:] + v[:-1]) / 2
        e = np.concatenate([[2 * v[0] - mid[0]], mid, [2 * v[-1] - mid[-1]]])
    if v[0] >= 0 > e[0]:  # sigma_b, sigma_w, depth, ...: no cell reaches below 0
        e[0] = 0.0
    return e


# An axis whose positive values span this many decades or more is not drawn linearly: its small
# values got slivers (sigma_w 0.5, 1.4, 3, 1e3: three cells in the first 0.2 % of the width).
SPAN_DECADES = 2.0
# A log axis where its values are spaced evenly in log, steps within this factor of each other.
LOG_STEPS = 3.0


class _Axis:
    """Where one heat-map axis puts its values: ``linear``; when its positive values span
    :data:`SPAN_DECADES` or more, ``log`` if they are all positive and about evenly spaced in log
    (:data:`LOG_STEPS`), else ``index``: evenly spaced cells labelled by value (a log axis
    cannot show 0, and gave 1, 1e3, 1e30 a sliver for 1). Overlays (the critical line, the
    crossings) are placed with :meth:`place`: on an index axis by linear interpolation between
    the cell centres."""

    def __init__(self, values: np.ndarray):
        self.values = v = np.asarray(values, dtype=float)
        pos = v[v > 0]
        wide = len(pos) >= 2 and np.log10(pos.max() / pos.min()) >= SPAN_DECADES - 1e-9
        steps = np.diff(np.log10(pos))
        even = len(pos) == len(v) and steps.max() <= LOG_STEPS * steps.min() if wide else False
        self.kind = "linear" if not wide else "log" if even else "index"
        if self.kind == "linear":
            self.edges = _edges(v)
        elif self.kind == "log":
            lv = np.log10(v)
            self.edges = 10 ** np.concatenate([[1.5 * lv[0] - 0.5 * lv[1]], (lv[1:] + lv[:-1]) / 2,
                                               [1.5 * lv[-1] - 0.5 * lv[-2]]])
        else:
            self.edges = np.arange(len(v) + 1) - 0.5
        self.centres = np.arange(len(v), dtype=float) if self.kind == "index" else v

    def place(self, u) -> np.ndarray:
        """Values ``u`` of the field as coordinates of this axis (beyond the ends: extended linearly)."""
        u = np.asarray(u, dtype=float)
        if self.kind != "index":
            return u
        v, i = self.values, self.centres
        out = np.interp(u, v, i)
        lo, hi = u < v[0], u > v[-1]
        out[lo] = (u[lo] - v[0]) / (v[1] - v[0])
        out[hi] = len(v) - 1 + (u[hi] - v[-1]) / (v[-1] - v[-2])
        return out

    def between(self, j: int, t: float) -> float:
        """The coordinate a fraction ``t`` of the way from cell ``j``'s centre to cell ``j + 1``'s."""
        c = self.centres
        if self.kind == "log":
            return float(10 ** (np.log10(c[j]) + t * (np.log10(c[j + 1]) - np.log10(c[j]))))
        return float(c[j] + t * (c[j + 1] - c[j]))

    def middle(self, j: int) -> float:
        """The middle of cell ``j`` (a cell at 0 starts there: its value is at its edge)."""
        a, b = self.edges[j], self.edges[j + 1]
        return float(np.sqrt(a * b) if self.kind == "log" else (a + b) / 2)

    def samples(self) -> np.ndarray:
        """Values of the field across the axis, for a curve over it (>= 0: sigma_b)."""
        lo, hi = self.edges[[0, -1]]
        if self.kind == "log":
            return np.geomspace(lo, hi, 25)
        if self.kind == "linear":
            return np.linspace(max(lo, 0.0), hi, 25)
        u = np.linspace(lo, hi, 8 * len(self.values) + 1)  # index coordinates back to values
        v = np.interp(u, self.centres, self.values)
        v[u < 0] = self.values[0] + u[u < 0] * (self.values[1] - self.values[0])
        top = u > len(self.values) - 1
        v[top] = self.values[-1] + (u[top] - len(self.values) + 1) * (self.values[-1] - self.values[-2])
        return v[v >= 0]

    def draw(self, ax, which: str) -> None:
        """The axis's scale, limits and, for an index axis, value labels at the cells."""
        set_scale, set_lim = getattr(ax, f"set_{which}scale"), getattr(ax, f"set_{which}lim")
        if self.kind == "log":
            set_scale("log")
        elif self.kind == "index":
            getattr(ax, f"set_{which}ticks")(self.centres, [f"{x:g}" for x in self.values])
        set_lim(*self.edges[[0, -1]])


@dataclasses.dataclass
class Cells:
    """What one heat map shows, per cell (rows: the y values, columns: the x values).

    ``mean``: the mean rate over the cell's seeds with a finite rate (NaN: none); ``finite``,
    ``runs``: how many seeds have a finite rate, of how many; ``zero``: seeds without any
    gradient (verdict "no gradient": every ||dW_l|| 0 in exact arithmetic), ``nonfinite``: seeds whose
    forward or backward pass was not finite (``first_nonfinite`` set), both among those without
    a finite rate; ``dies``: seeds whose gradient is exactly 0 at layer 0 though not everywhere
    (``log10_grad_first`` -inf: dead units cut the chain), whose rate, fitted over the few
    layers above the cut, is left out of the mean (a width-2 ReLU stack's last 2-4 of 1,500
    layers coloured its cells deep red, "exploding", for runs whose verdict was vanishing)."""

    xs: np.ndarray
    ys: np.ndarray
    mean: np.ndarray
    finite: np.ndarray
    runs: np.ndarray
    zero: np.ndarray
    nonfinite: np.ndarray
    dies: np.ndarray

    def kind(self) -> np.ndarray:
        """Each cell's kind: "rate" (some seed has a finite rate), "partial" (a rate from only
        some of its seeds: marked), "no gradient" (every seed), "non-finite" (some seed, the
        others no gradient), "no rate" (other seeds without a finite rate) or "" (no run)."""
        out = np.full(self.mean.shape, "", dtype=object)
        none = (self.finite == 0) & (self.runs > 0)
        out[self.finite > 0] = "rate"
        out[(self.finite > 0) & (self.finite < self.runs)] = "partial"
        out[none] = "no rate"
        out[none & (self.zero == self.runs)] = "no gradient"
        out[none & (self.nonfinite > 0) & (self.zero + self.nonfinite == self.runs)] = "non-finite"
        out[none & (self.dies > 0) & (self.zero + self.dies == self.runs)] = "dies"
        return out


def _cut(table) -> np.ndarray:
    """Per row: a chain cut to exactly 0 below its top layers (``log10_grad_first`` -inf; dead
    units), whose rate is a fit over the layers above the cut, not the stack's (Cells.dies)."""
    if "log10_grad_first" not in table:
        return np.zeros(len(table), bool)
    return table["log10_grad_first"].to_numpy(float) == -np.inf


def cells(sub, x: str, y: str, value: str) -> Cells:
    """The cells of a heat map of ``sub`` (one group of a sweep table) over ``x`` and ``y``: the
    mean of the finite rates and how many seeds have none, and why (:class:`Cells`)."""
    rate = sub[value].to_numpy(float)
    dies = _cut(sub)
    ok = np.isfinite(rate) & ~dies
    verdict = sub["verdict"].to_numpy(object) if "verdict" in sub else np.full(len(sub), None)
    first = sub["first_nonfinite"].notna().to_numpy() if "first_nonfinite" in sub else np.zeros(len(sub), bool)
    xs, ys = np.unique(sub[x].to_numpy(float)), np.unique(sub[y].to_numpy(float))
    i, j = np.searchsorted(ys, sub[y].to_numpy(float)), np.searchsorted(xs, sub[x].to_numpy(float))
    shape = (len(ys), len(xs))

    def count(mask):
        out = np.zeros(shape, dtype=np.int64)
        np.add.at(out, (i[mask], j[mask]), 1)
        return out

    total = np.zeros(shape)
    np.add.at(total, (i[ok], j[ok]), rate[ok])
    finite = count(ok)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite > 0, total / np.maximum(finite, 1), np.nan)
    return Cells(xs, ys, mean, finite, count(np.ones(len(sub), bool)), count(~ok & (verdict == "no gradient")),
                 count(~ok & first & (verdict != "no gradient")), count(dies & (verdict != "no gradient")))


# How cells without a finite rate look, and what the legend calls them.
_EMPTY = {
    "no gradient": dict(facecolor="0.86", hatch=None, label="no gradient: every $\\|dW_l\\|$ 0 in exact arithmetic"),
    "non-finite": dict(facecolor="0.25", hatch="xx", label="non-finite: overflow (first_nonfinite set)"),
    "no rate": dict(facecolor="0.6", hatch="..", label="no finite rate"),
    "dies": dict(facecolor="#08306b", hatch="\\\\", label="dies: $\\|dW_0\\|$ exactly 0 (dead units cut the chain)"),
}
_PARTIAL = "rate of k of n seeds (k/n): the others have none"
# Cells at most this many get their "k/n" written in; beyond, the hatch alone marks them.
_NOTE_CELLS = 150


def _heatmap(ax, sub, x: str, y: str, value: str, norm):
    c = cells(sub, x, y, value)
    ax_x, ax_y = _Axis(c.xs), _Axis(c.ys)
    mesh = ax.pcolormesh(ax_x.edges, ax_y.edges, np.ma.masked_invalid(c.mean), cmap=_cmap(), norm=norm,
                         shading="flat")
    kind = c.kind()
    for name, style in _EMPTY.items():
        _mark(ax, ax_x, ax_y, kind == name, dict(facecolor=style["facecolor"], hatch=style["hatch"],
                                                   edgecolor="0.95" if style["facecolor"] in ("0.25", "#08306b") else "0.35",
                                                   linewidth=0.0, label=style["label"]))
    partial = kind == "partial"
    _mark(ax, ax_x, ax_y, partial, dict(facecolor="none", hatch="///", edgecolor="0.2", linewidth=0.0,
                                        label=_PARTIAL))
    if partial.sum() and kind.size <= _NOTE_CELLS:
        for i, j in zip(*np.nonzero(partial)):
            ax.text(ax_x.middle(j), ax_y.middle(i), f"{c.finite[i, j]}/{c.runs[i, j]}", ha="center",
                    va="center", fontsize=7, fontweight="bold",
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
    ax_x.draw(ax, "x")
    ax_y.draw(ax, "y")
    ax.set_xlabel(_axis_label(x, ax_x))
    ax.set_ylabel(_axis_label(y, ax_y))
    return mesh, ax_x, ax_y, np.ma.masked_invalid(c.mean)


def _axis_label(name: str, axis: _Axis) -> str:
    """An axis's label, saying when it is not linear."""
    return {"linear": name, "log": f"{name} (log scale)", "index": f"{name} (one cell per value)"}[axis.kind]


def _mark(ax, ax_x: _Axis, ax_y: _Axis, where: np.ndarray, style: dict) -> None:
    """Rectangles over the cells ``where`` (one collection, one legend entry)."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    if not where.any():
        return
    ex, ey = ax_x.edges, ax_y.edges
    boxes = [Rectangle((ex[j], ey[i]), ex[j + 1] - ex[j], ey[i + 1] - ey[i]) for i, j in zip(*np.nonzero(where))]
    label = style.pop("label")
    ax.add_collection(PatchCollection(boxes, match_original=False, **style, label=label))


def _cmap():
    from matplotlib import colormaps

    # low (vanishing) blue, high (exploding) red; cells without a finite rate: drawn over (_EMPTY)
    return colormaps["RdBu_r"].with_extremes(bad=(0, 0, 0, 0))


def _default(sub, name: str):
    """The one value of ``name`` in ``sub``; the Stack default when it is not a column; None if it varies."""
    if name not in sub.columns:
        return Stack.__dataclass_fields__[name].default
    if sub[name].nunique(dropna=False) != 1:
        return None
    v = sub[name].iloc[0]
    return None if isinstance(v, float) and math.isnan(v) else v


def _critical(activation: str, sigma_b: float, param) -> float:
    """The critical sigma_w at ``sigma_b``; NaN where chi_1 - 1 does not change sign."""
    try:
        return theory.critical_sigma_w(activation, sigma_b, None if param is None else float(param))
    except ValueError:
        return math.nan


def _critical_line(ax, sub, x: str, y: str, ax_x: _Axis, ax_y: _Axis) -> bool:
    """chi_1 = 1 over the heat map; False when the axes or the stacks do not allow it.

    Drawn when one axis is ``sigma_w`` and ``sigma_b`` is the other axis or has one value, for
    stacks mean field describes (finite theory columns) of one activation.
    """
    if "sigma_w" not in (x, y) or not np.isfinite(sub["theory_decades_per_layer"].to_numpy(float)).any():
        return False
    other = y if x == "sigma_w" else x
    activation = _default(sub, "activation")
    if activation is None:
        return False
    param = _default(sub, "activation_param")
    if other == "sigma_b":
        across = ax_y if x == "sigma_w" else ax_x
        sb = across.samples() if len(across.values) > 1 else across.values
    else:
        fixed = _default(sub, "sigma_b")
        if fixed is None:
            return False
        sb = np.array([float(fixed)])
    if activation in HOMOGENEOUS:  # chi_1 = sigma_w^2 E[phi'(z)^2] whatever q*: a vertical line
        sb = sb[[0, -1]]
    sw = np.array([_critical(activation, float(b), param) for b in sb])
    # not drawn (nor named in the legend) where it lies outside the map: the legend named a line
    # that tanh's sigma_w 0.5-0.9 map did not show (its chi_1 = 1 near 1)
    axis = ax_x if x == "sigma_w" else ax_y  # its edges are in placed coordinates
    at = axis.place(np.where(np.isfinite(sw), sw, np.nan))
    if not np.any((at >= min(axis.edges[0], axis.edges[-1])) & (at <= max(axis.edges[0], axis.edges[-1]))):
        return False
    style = dict(color="k", lw=2.2, ls="--", label=r"mean field: $\chi_1 = 1$ (edge of chaos)")
    if other == "sigma_b" and len(sb) > 1:
        if x == "sigma_w":
            ax.plot(ax_x.place(sw), ax_y.place(sb), **style)
        else:
            ax.plot(ax_x.place(sb), ax_y.place(sw), **style)
    elif x == "sigma_w":  # one sigma_b: the critical sigma_w across the map (one point drew nothing)
        ax.axvline(float(ax_x.place(sw[:1])[0]), **style)
    else:
        ax.axhline(float(ax_y.place(sw[:1])[0]), **style)
    return True


def _measured_edge(ax, ax_x: _Axis, ax_y: _Axis, z, along_y: bool = False) -> None:
    """Where the measured rate crosses 0 along each row (each column if ``along_y``: sigma_w is
    the y axis), by linear interpolation between cell centres (on a log axis between their
    logarithms); a cell whose rate is exactly 0 (tanh at sigma_w = 1, sigma_b = 0) is a
    crossing itself."""
    a_axis, b_axis, zz = (ax_y, ax_x, z.T) if along_y else (ax_x, ax_y, z)
    pa, pb = [], []
    for i, b in enumerate(b_axis.centres):
        line = np.ma.filled(zz[i].astype(float), np.nan)
        for j in range(len(a_axis.centres)):
            if line[j] == 0:
                pa.append(a_axis.centres[j])
                pb.append(b)
        for j in range(len(a_axis.centres) - 1):
            u, v = line[j], line[j + 1]
            if np.isfinite(u) and np.isfinite(v) and u * v < 0:
                pa.append(a_axis.between(j, u / (u - v)))
                pb.append(b)
    if pa:
        ax.plot(*((pb, pa) if along_y else (pa, pb)), ls="none", marker="o", ms=6, mfc="gold", mec="k", mew=0.8,
                label="measured: rate = 0 (interpolated)")


def _phase_keys(z, norm) -> list:
    """Legend entries that name the colours of the phases present: 'vanishing' and 'exploding'
    (they were written on the cells, over the data)."""
    from matplotlib.patches import Patch

    keys = []
    values = np.ma.filled(z, np.nan)
    for sign, word in ((-1, "vanishing"), (1, "exploding")):
        if (np.sign(values) == sign).any():
            keys.append(Patch(facecolor=_cmap()(norm(0.8 * sign * norm.halfrange)),
                              label=f"{word}: rate {'<' if sign < 0 else '>'} 0"))
    return keys


def _scatter(ax, groups, value: str) -> None:
    """Measured against predicted rate, every run, with the identity line."""
    lo, hi = math.inf, -math.inf
    for title, sub in groups:
        t = sub["theory_decades_per_layer"].to_numpy(float)
        m = sub[value].to_numpy(float)
        ok = np.isfinite(t) & np.isfinite(m)
        ok &= ~_cut(sub)  # not a chain cut to 0: its fit is over the layers above the cut
        if ok.any():
            ax.scatter(t[ok], m[ok], s=12, alpha=0.7, label=title or None)
            lo, hi = min(lo, t[ok].min(), m[ok].min()), max(hi, t[ok].max(), m[ok].max())
    if math.isfinite(lo):
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="k", lw=1, ls="--", label="measured = predicted")
        # each label where its rates are (a map of vanishing runs only put "exploding" at its top
        # corner, below 0)
        if hi > 0:
            ax.annotate("exploding", (hi, hi), xytext=(-6, 0), textcoords="offset points", ha="right", va="bottom",
                        color="darkred", fontsize=9, fontweight="bold")
        if lo < 0:
            ax.annotate("vanishing", (lo, lo), xytext=(6, 0), textcoords="offset points", ha="left", va="top",
                        color="navy", fontsize=9, fontweight="bold")
    else:  # an empty box and matplotlib's "No artists with labels" warning said nothing of why
        ax.text(0.5, 0.5, "no run has both a finite measured rate\nand a prediction (every chain cut to 0,\n"
                "or no mean-field prediction for these runs)", transform=ax.transAxes, ha="center", va="center",
                fontsize=9, color="0.3")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set_xlabel(r"mean field $\frac{1}{2}\log_{10}\chi_1$ (decades per layer)")
    ax.set_ylabel(f"measured {_LABELS.get(value, value)} (decades per layer)")
    ax.set_title("measured vs predicted, every run")
    ax.grid(True, alpha=0.3)
    if math.isfinite(lo):
        _legend_below(ax)


def _legend_below(ax, handles=None):
    """The legend under the axes, in two columns, or one where two are wider than the axes (the
    panels of a small figure of the caller's: constrained layout squeezed the maps to make room
    for them)."""
    style = dict(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    legend = ax.legend(ncols=2, **style)
    if legend.get_window_extent().width > ax.get_window_extent().width:
        legend = ax.legend(ncols=1, **style)
    return legend


def phase_diagram(table, x: str = "sigma_w", y: str = "sigma_b", path=None, ax=None, *,
                  value: str = "signal_decades_per_layer", title: str | None = None) -> Figure:
    """Measured decades per layer over two swept axes, the chi_1 = 1 line, and measured vs predicted.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`gradbench.sweep`. Every other configuration column that varies (e.g.
        ``activation``) gives a heat map of its own.
    x, y : str
        Two swept numeric columns (default ``sigma_w`` across, ``sigma_b`` up).
    path : str, optional
        Write the figure there (.png, .svg, .pdf), atomically (missing directories are created,
        as by every writer of the API; the command line asks for ``--mkdir``).
    ax : Axes or sequence of Axes, optional
        Draw into these: one Axes per heat map, then one for measured vs predicted (a single
        Axes takes the heat map of a table with one group, without the second panel). A figure
        without a layout engine (``plt.figure()``) is given constrained layout, so that the colour
        bar, its label and the legends under the panels have room; one with its own is left so.
    value : str
        The measured rate: ``signal_decades_per_layer`` (of ||dL/dh_l||, what chi_1 predicts;
        the default) or ``decades_per_layer`` (diagnose's, of ||dL/dW_l|| = ||g_l|| ||h_l|| for one
        sample: it also follows the forward norm, so it is flat wherever the forward pass has no
        finite fixed point, e.g. zero-bias ReLU stacks under the 0.5 ||h_L||^2 probe).
    title : str, optional
        Default: the fixed fields and the number of runs.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from pandas.api.types import is_numeric_dtype

    cols = _config_columns(table)
    for name, v in (("x", x), ("y", y)):
        if v not in cols:
            raise ValueError(f"{name}={v!r} is not a configuration column of the table; one of {', '.join(cols)}")
        if not is_numeric_dtype(table[v]):
            raise ValueError(f"{name}={v!r} is not numeric; numeric columns: "
                             f"{', '.join(c for c in cols if is_numeric_dtype(table[c]))}")
    if x == y:
        raise ValueError(f"x and y must differ, both are {x!r}")
    if value not in _LABELS:
        raise ValueError(f"value={value!r} is not one of {', '.join(map(repr, _LABELS))}")
    if value not in table.columns:  # a valid name that this table lacks (it said "is not one of" it)
        have = [v for v in _LABELS if v in table.columns]
        raise ValueError(f"value={value!r}: the table has no {value!r} column"
                         + (f"; it has {', '.join(map(repr, have))}" if have else ""))
    if not len(table):  # it failed in the cell edges with "index 0 is out of bounds"
        raise ValueError("table has no rows: nothing to draw (a sweep's table, or a selection of it, with runs)")
    groups = _groups(table, x, y)
    axes = _axes(ax, len(groups))
    finite = np.abs(table[value].to_numpy(float))
    finite = finite[np.isfinite(finite) & ~_cut(table)]  # not the rates of chains cut to 0, which no cell shows
    norm = CenteredNorm(0.0, float(np.percentile(finite, 98)) if finite.size and finite.max() > 0 else 1.0)
    mesh = None
    for a, (name, sub) in zip(axes, groups):
        mesh, ax_x, ax_y, z = _heatmap(a, sub, x, y, value, norm)
        _critical_line(a, sub, x, y, ax_x, ax_y)
        _measured_edge(a, ax_x, ax_y, z, along_y=(y == "sigma_w"))
        a.set_title(name or "measured rate")
        handles = a.get_legend_handles_labels()[0] + _phase_keys(z, norm)
        # below the map, not on it: the legend covered cells (and the phase words, cells too)
        _legend_below(a, handles)
    fig = axes[0].figure
    if fig.get_layout_engine() is None:
        # axes of the caller's plain figure (plt.figure(), no layout engine): the colour bar's label sat
        # on the neighbouring panel's tick labels and the legends under the maps fell off the figure
        fig.set_layout_engine("constrained")
    bar = fig.colorbar(mesh, ax=list(axes[: len(groups)]), fraction=0.05, pad=0.02)
    bar.set_label(f"{_LABELS[value]}:\ndecades per layer going down")  # two lines: as long as a short bar
    bar.ax.text(0.5, 1.01, "exploding", transform=bar.ax.transAxes, ha="center", va="bottom", color="darkred",
                fontsize=9, fontweight="bold")
    bar.ax.text(0.5, -0.01, "vanishing", transform=bar.ax.transAxes, ha="center", va="top", color="navy",
                fontsize=9, fontweight="bold")
    if len(axes) > len(groups):
        _scatter(axes[-1], groups, value)
    if ax is None:
        fig.suptitle(title or _describe(table, cols, x, y), fontsize=11)
    if path is not None:
        save(fig, path)
    return fig


#: Panels (heat maps and the scatter) a new figure puts in one row; more wrap into rows of this
#: many (32 panels in one row made an image 21,563 pixels wide).
MAX_PANELS_A_ROW = 4


def _axes(ax, n_groups: int) -> list:
    """The Axes to draw on: given (one per heat map, then the scatter), or a new figure's row (rows
    of :data:`MAX_PANELS_A_ROW` where there are more panels; the spare places of the last row stay
    empty)."""
    if ax is None:
        n = n_groups + 1
        cols = min(n, MAX_PANELS_A_ROW)
        rows = -(-n // cols)
        fig = Figure(figsize=(5.4 * (cols - 1) + 5.8, 6.0 * rows), layout="constrained")
        fig.get_layout_engine().set(w_pad=0.08, wspace=0.06)
        grid = list(fig.subplots(rows, cols, squeeze=False).ravel())
        for spare in grid[n:]:
            fig.delaxes(spare)
        return grid[:n]
    axes = [ax] if not isinstance(ax, Sequence) and not isinstance(ax, np.ndarray) else list(np.ravel(ax))
    if len(axes) not in (n_groups, n_groups + 1):
        raise ValueError(f"ax: {len(axes)} Axes given, the table needs {n_groups} heat map(s) "
                         f"(+ 1 for measured vs predicted)")
    return axes


def _describe(table, cols: list[str], x: str, y: str) -> str:
    """The title: what is fixed, and how many runs."""
    fixed = [f"{c} {table[c].iloc[0]}" for c in cols if c not in (x, y) and table[c].nunique(dropna=False) == 1]
    seeds = table["seed"].nunique()
    return f"Phase diagram: {', '.join(fixed)}; {len(table)} exact runs ({seeds} seed{'s' if seeds > 1 else ''})"
