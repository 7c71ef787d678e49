"""The phase diagram of a sweep: measured decades per layer over two swept axes, and the theory.

:func:`phase_diagram` draws, for each value of the other swept fields (e.g. each activation),
a heat map of the measured rate (mean over seeds) on a diverging colour map centred on 0
(blue: vanishing, red: exploding, in the package's one sign convention: negative = vanishing),
the mean-field critical line chi_1 = 1 (:func:`gradbench.theory.critical_sigma_w`) over it
when one axis is ``sigma_w`` and ``sigma_b`` is the other axis or fixed, and a last panel of
measured against predicted rate for every run with the identity line. Built on
:class:`matplotlib.figure.Figure` without pyplot, written atomically by
:func:`gradbench.plot.save`.
"""

from __future__ import annotations

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


def _heatmap(ax, sub, x: str, y: str, value: str, norm):
    grid = sub.pivot_table(index=y, columns=x, values=value, aggfunc="mean", dropna=False).sort_index()
    grid = grid[sorted(grid.columns)]
    xs, ys = grid.columns.to_numpy(float), grid.index.to_numpy(float)
    z = np.ma.masked_invalid(grid.to_numpy(float))
    cmap = _cmap()
    mesh = ax.pcolormesh(_edges(xs), _edges(ys), z, cmap=cmap, norm=norm, shading="flat")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    return mesh, xs, ys, z


def _cmap():
    from matplotlib import colormaps

    # low (vanishing) blue, high (exploding) red; grey: cells without a finite rate (a non-finite run)
    return colormaps["RdBu_r"].with_extremes(bad="0.75")


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


def _critical_line(ax, sub, x: str, y: str, ys: np.ndarray) -> bool:
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
        lo, hi = _edges(ys)[[0, -1]]
        sb = np.linspace(max(lo, 0.0), hi, 25) if len(ys) > 1 else ys
    else:
        fixed = _default(sub, "sigma_b")
        if fixed is None:
            return False
        sb = np.array([float(fixed)])
    if activation in HOMOGENEOUS:  # chi_1 = sigma_w^2 E[phi'(z)^2] whatever q*: a vertical line
        sb = sb[[0, -1]]
    sw = np.array([_critical(activation, float(b), param) for b in sb])
    if not np.isfinite(sw).any():
        return False
    style = dict(color="k", lw=2.2, ls="--", label=r"mean field: $\chi_1 = 1$ (edge of chaos)")
    if other == "sigma_b" and len(sb) > 1:
        ax.plot(*((sw, sb) if x == "sigma_w" else (sb, sw)), **style)
    elif x == "sigma_w":  # one sigma_b: the critical sigma_w across the map (one point drew nothing)
        ax.axvline(sw[0], **style)
    else:
        ax.axhline(sw[0], **style)
    return True


def _measured_edge(ax, xs: np.ndarray, ys: np.ndarray, z, along_y: bool = False) -> None:
    """Where the measured rate crosses 0 along each row (each column if ``along_y``: sigma_w is
    the y axis), by linear interpolation between cell centres; a cell whose rate is exactly 0
    (tanh at sigma_w = 1, sigma_b = 0) is a crossing itself."""
    a_vals, b_vals, zz = (ys, xs, z.T) if along_y else (xs, ys, z)
    pa, pb = [], []
    for i, b in enumerate(b_vals):
        line = np.ma.filled(zz[i].astype(float), np.nan)
        for j in range(len(a_vals)):
            if line[j] == 0:
                pa.append(a_vals[j])
                pb.append(b)
        for j in range(len(a_vals) - 1):
            u, v = line[j], line[j + 1]
            if np.isfinite(u) and np.isfinite(v) and u * v < 0:
                pa.append(a_vals[j] - u * (a_vals[j + 1] - a_vals[j]) / (v - u))
                pb.append(b)
    if pa:
        ax.plot(*((pb, pa) if along_y else (pa, pb)), ls="none", marker="o", ms=6, mfc="gold", mec="k", mew=0.8,
                label="measured: rate = 0 (interpolated)")


def _label_phases(ax, xs: np.ndarray, ys: np.ndarray, z) -> None:
    """'vanishing' and 'exploding' written on the cells of each sign (their centroid)."""
    X, Y = np.meshgrid(xs, ys)
    for sign, word in ((-1, "vanishing"), (1, "exploding")):
        cells = ~np.ma.getmaskarray(z) & (np.sign(np.ma.filled(z, 0.0)) == sign)
        if cells.sum() >= 2:
            ax.text(X[cells].mean(), Y[cells].mean(), word, ha="center", va="center", fontsize=10,
                    fontweight="bold", color="navy" if sign < 0 else "darkred",
                    bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="none", alpha=0.75))


def _scatter(ax, groups, value: str) -> None:
    """Measured against predicted rate, every run, with the identity line."""
    lo, hi = math.inf, -math.inf
    for title, sub in groups:
        t = sub["theory_decades_per_layer"].to_numpy(float)
        m = sub[value].to_numpy(float)
        ok = np.isfinite(t) & np.isfinite(m)
        if ok.any():
            ax.scatter(t[ok], m[ok], s=12, alpha=0.7, label=title or None)
            lo, hi = min(lo, t[ok].min(), m[ok].min()), max(hi, t[ok].max(), m[ok].max())
    if math.isfinite(lo):
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="k", lw=1, ls="--", label="measured = predicted")
        ax.annotate("exploding", (hi, hi), xytext=(-6, 0), textcoords="offset points", ha="right", va="bottom",
                    color="darkred", fontsize=9, fontweight="bold")
        ax.annotate("vanishing", (lo, lo), xytext=(6, 0), textcoords="offset points", ha="left", va="top",
                    color="navy", fontsize=9, fontweight="bold")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set_xlabel(r"mean field $\frac{1}{2}\log_{10}\chi_1$ (decades per layer)")
    ax.set_ylabel(f"measured {_LABELS.get(value, value)} (decades per layer)")
    ax.set_title("measured vs predicted, every run")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 0.08))


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
        Write the figure there (.png, .svg, .pdf), atomically.
    ax : Axes or sequence of Axes, optional
        Draw into these: one Axes per heat map, then one for measured vs predicted (a single
        Axes takes the heat map of a table with one group, without the second panel).
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
    if value not in table.columns or value not in _LABELS:
        raise ValueError(f"value={value!r} is not one of {', '.join(map(repr, _LABELS))}")
    groups = _groups(table, x, y)
    axes = _axes(ax, len(groups))
    finite = np.abs(table[value].to_numpy(float))
    finite = finite[np.isfinite(finite)]
    norm = CenteredNorm(0.0, float(np.percentile(finite, 98)) if finite.size and finite.max() > 0 else 1.0)
    mesh = None
    for a, (name, sub) in zip(axes, groups):
        mesh, xs, ys, z = _heatmap(a, sub, x, y, value, norm)
        _critical_line(a, sub, x, y, ys)
        _measured_edge(a, xs, ys, z, along_y=(y == "sigma_w"))
        _label_phases(a, xs, ys, z)
        a.set_xlim(_edges(xs)[[0, -1]])
        a.set_ylim(_edges(ys)[[0, -1]])
        a.set_title(name or "measured rate")
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8, loc="upper right", framealpha=0.85)
    fig = axes[0].figure
    bar = fig.colorbar(mesh, ax=list(axes[: len(groups)]), fraction=0.05, pad=0.02)
    bar.set_label(f"{_LABELS[value]}: decades per layer going down")
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


def _axes(ax, n_groups: int) -> list:
    """The Axes to draw on: given (one per heat map, then the scatter), or a new figure's row."""
    if ax is None:
        fig = Figure(figsize=(5.4 * n_groups + 5.8, 5.0), layout="constrained")
        fig.get_layout_engine().set(w_pad=0.08, wspace=0.06)
        return list(fig.subplots(1, n_groups + 1, squeeze=False)[0])
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
