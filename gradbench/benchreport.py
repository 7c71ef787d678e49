"""Tables and a figure from a saved pytest-benchmark JSON (``make bench``, ``make bench-quick``).

Usage::

    python -m gradbench.benchreport benchmarks/results/bench-quick.json [--plot out/bench.png]
    gradbench bench benchmarks/results/bench-quick.json       (the CLI calls main(argv))

For every case (a pytest-benchmark group: all implementations on the same work) one table:
time (the minimum over rounds, the least disturbed on a shared machine), GF/s = 6 B N^2 L / time,
microseconds per layer, the speed-up against the NumPy reference and against the fastest peer
(t_other / t_this: 2.0x means twice as fast), peak memory and the first (warm-up, compiling)
call. Implementations that were skipped or failed their check are listed with the reason. Then one summary matrix of the speed-ups against NumPy,
and a figure of GF/s along the size grid (one line per implementation).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys

GRADBENCH = ("numpy", "numba", "c", "auto")
PLAIN_LOOP = "numpy-loop"  # the loop a user writes instead (gradbench.peers): the baseline that matters


def _fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.3f} s"


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None or not math.isfinite(r) else f"{r:.2f}x"


def load(path: str) -> dict:
    """A pytest-benchmark JSON; a ValueError naming ``path`` when it is not one (json's own
    message names only the line and column)."""
    with open(path) as f:
        try:
            data = json.load(f)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or "benchmarks" not in data:
        raise ValueError(f"{path} is not a pytest-benchmark JSON (no 'benchmarks' key)")
    return data


def rows_by_case(data: dict) -> dict[str, list[dict]]:
    """Case id -> rows {impl, kind, time, median, rounds, gflops, info} of the timed runs.

    A sweep row's time is its runs' ``seconds`` (benchmarks/test_sweep_throughput.py: the fastest
    of three fresh processes, cluster start and warm-up left out), not pytest-benchmark's time of
    the call, which spans all three processes and their starts."""
    cases: dict[str, list[dict]] = {}
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        case = info.get("case", b.get("group") or b["name"])
        t, median = float(b["stats"]["min"]), float(b["stats"]["median"])
        if info.get("kind") == "sweep" and info.get("seconds"):
            t = median = float(info["seconds"])
        flops = info.get("flops")
        cases.setdefault(case, []).append(dict(
            impl=info.get("impl", b["name"]), kind=info.get("kind", "?"), time=t,
            median=median, rounds=int(b["stats"]["rounds"]),
            gflops=flops / t / 1e9 if flops and t > 0 else None, info=info,
        ))
    return cases


def ratios(rows: list[dict]) -> dict[str, dict[str, float | None]]:
    """Per implementation: speed-up vs numpy and vs the fastest peer (t_other / t_this)."""
    t = {r["impl"]: r["time"] for r in rows}
    peer_times = [r["time"] for r in rows if r["kind"] == "peer"]
    best_peer = min(peer_times) if peer_times else None
    return {impl: {"numpy": t["numpy"] / ti if "numpy" in t else None,
                   "peer": best_peer / ti if best_peer else None} for impl, ti in t.items()}


def case_table(case: str, rows: list[dict], skipped: list[dict]) -> str:
    info = rows[0]["info"] if rows else {}
    head = case
    if "L" in info:
        head += (f"   (L={info['L']} n={info['n']} B={info['B']} {info['dtype']} {info['activation']}"
                 f"{' bn' if info.get('batch_norm') else ''}"
                 f"{' res' + str(info['residual']) if info.get('residual') else ''},"
                 f" {info['flops'] / 1e9:.3g} GFLOP)")
    if "plain_subnormal_layers" in info:
        head += f"\n  plain float32 has {info['plain_subnormal_layers']} of {info['L']} layers in subnormals"
    lines = [head]
    cols = ("impl", "time", "us/layer", "GF/s", "vs numpy", "vs best peer", "rounds", "peak MiB", "first call")
    table = [cols]
    rat = ratios(rows)
    for r in sorted(rows, key=lambda r: r["time"]):
        i = r["info"]
        peak = i.get("peak_rss_mib")
        table.append((
            r["impl"], _fmt_time(r["time"]),
            f"{r['time'] / (i['L'] * i.get('runs', 1)) * 1e6:.1f}" if i.get("L") else "-",  # a sweep: runs x L
            "-" if r["gflops"] is None else f"{r['gflops']:.2f}",
            _fmt_ratio(rat[r["impl"]]["numpy"]), _fmt_ratio(rat[r["impl"]]["peer"]), str(r["rounds"]),
            "-" if peak is None else f"{peak:.1f}",
            "-" if i.get("first_call_s") is None else _fmt_time(float(i["first_call_s"])),
        ))
    widths = [max(len(row[c]) for row in table) for c in range(len(cols))]
    for k, row in enumerate(table):
        lines.append("  " + "  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    for s in skipped:
        lines.append(f"  {s['impl']}: {'' if s.get('failed') else 'skipped: '}{s['reason']}")
    return "\n".join(lines)


def compile_table(rows: list[dict]) -> str:
    lines = ["compile"]
    for r in rows:
        i = r["info"]
        lines.append(f"  {r['impl']}: cold compile {i.get('cold_compile_s', float('nan')):.2f} s in a fresh "
                     f"cache (subprocess wall {_fmt_time(r['time'])}), from cache {i.get('cached_load_s', float('nan')):.2f} s")
    return "\n".join(lines)


def _impl_order(cases: dict[str, list[dict]]) -> list[str]:
    """Every implementation that appears in ``cases``: gradbench's backends first, then peers."""
    impls = []
    for rows in cases.values():
        for r in rows:
            if r["impl"] not in impls:
                impls.append(r["impl"])
    return [i for i in GRADBENCH if i in impls] + [i for i in impls if i not in GRADBENCH]


def best_versus(rows: list[dict]) -> tuple[float | None, float | None]:
    """Gradbench's fastest backend against the plain loop and against the fastest peer
    (t_other / t_ours; None where either side did not run)."""
    t = {r["impl"]: r["time"] for r in rows}
    ours = min((t[i] for i in GRADBENCH if i in t), default=None)
    theirs = [r["time"] for r in rows if r["kind"] == "peer"]
    loop = t[PLAIN_LOOP] / ours if ours and PLAIN_LOOP in t else None
    return loop, (min(theirs) / ours if ours and theirs else None)


def summary(cases: dict[str, list[dict]]) -> str:
    """One line per case: speed-up of every implementation against the NumPy reference, and of
    gradbench's fastest backend against the plain loop and against the fastest peer."""
    order = _impl_order(cases)
    cols = ["case"] + order + ["best gradbench vs plain loop", "best gradbench vs best peer"]
    table = [cols]
    for case, rows in cases.items():
        rat = ratios(rows)
        loop, vs = best_versus(rows)
        table.append([case] + [_fmt_ratio(rat[i]["numpy"]) if i in rat else "" for i in order]
                     + [_fmt_ratio(loop), _fmt_ratio(vs)])
    widths = [max(len(row[c]) for row in table) for c in range(len(cols))]
    lines = ["speed-up against the NumPy reference (t_numpy / t; min over rounds)"]
    for k, row in enumerate(table):
        lines.append("  " + "  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def targets_table(rows: list[dict]) -> str:
    """The speed targets (benchmarks/test_targets.py): measured ratio, what is wanted, whether it holds."""
    lines = ["targets (ratios measured in this run; benchmarks/test_targets.py)"]
    for r in rows:
        i = r["info"]
        mark = "ok  " if i.get("ok") else "MISS"
        lines.append(f"  {mark} {i.get('target')}: {i.get('value')} (want {i.get('want')})")
        detail = i.get("detail") or {}
        rows_ = detail.get("rows", [])
        if isinstance(rows_, dict):  # {label: row}: the label as the row's first column
            rows_ = [{"run": k, **v} for k, v in rows_.items()]
        for d in rows_:
            keys = [k for k in d if k not in ("L", "N", "B", "times", "want")]
            size = f"L={d.get('L')} n={d.get('N')} B={d.get('B')}" if "L" in d else ""
            lines.append(f"         {size}: " + ", ".join(
                f"{k} {d[k]:.3g}" if isinstance(d[k], float) else f"{k} {d[k]}" for k in keys))
        extra = {k: v for k, v in detail.items() if k != "rows"}
        if extra:
            lines.append("         " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in extra.items()))
    return "\n".join(lines)


def markdown(data: dict) -> str:
    """The summary as a Markdown table: min time and speed-up vs NumPy per implementation."""
    cases = {c: r for c, r in rows_by_case(data).items() if c not in ("compile", "targets")}
    order = _impl_order(cases)
    skipped = {(x["case"], x["impl"]): "failed" if x.get("failed") else "skipped" for x in data.get("skipped", [])}
    lines = ["| case | " + " | ".join(order) + " | best gradbench vs best peer |",
             "|---|" + "---:|" * (len(order) + 1)]
    for case, rows in cases.items():
        rat = ratios(rows)
        t = {r["impl"]: r["time"] for r in rows}
        cells = [f"{_fmt_time(t[i])} ({_fmt_ratio(rat[i]['numpy'])})" if i in t
                 else skipped.get((case, i), "") for i in order]
        lines.append(f"| {case} | " + " | ".join(cells) + f" | {_fmt_ratio(best_versus(rows)[1])} |")
    return "\n".join(lines)


def _label(info: dict) -> str:
    """A grid case as the README names it: its family or regime (subnormal, vanished, exploding),
    what differs from tanh, then the sizes and dtype."""
    options = [name for name, on in (("batch norm", info.get("batch_norm")),
                                     (f"residual k={info.get('residual')}", info.get("residual"))) if on]
    words = ([] if info.get("activation") == "tanh" else [str(info.get("activation"))]) + [" + ".join(options)]
    tag = "subnormal" if info.get("family") == "subnormal" else info.get("regime")
    if tag:
        words.insert(0, f"{tag}:")
    size = f"L={info['L']:,} N={info['n']} B={info['B']} {'f64' if info['dtype'] == 'float64' else 'f32'}"
    return " ".join([w for w in words if w] + [size])


README_COLUMNS = (("numba", "numba"), ("c", "c"), (PLAIN_LOOP, "plain loop"), ("torch", "torch"), ("jax", "jax"))


def readme_tables(data: dict) -> str:
    """The top-level README's Performance tables, from one run: the stack grid (the NumPy
    reference's time, every other implementation's speed-up against it, gradbench's fastest
    backend against the plain loop and against the fastest peer; "-" where an implementation
    did not run) and the recurrent cells (C against torch and the NumPy reference, Numba against
    torch). Cases whose reference did not run are left out; a table without any case says so
    (a targets-only JSON has none: the README's tables come from `make bench`'s bench.json)."""
    grid = ["| case (tanh unless named) | numpy | "
            + " | ".join(name for _, name in README_COLUMNS) + " | best vs plain loop | best vs best peer |",
            "|---|" + "---:|" * (len(README_COLUMNS) + 3)]
    cells = ["| case (float64) | C time | C GF/s | vs torch | vs NumPy | Numba vs torch |",
             "|---|---:|---:|---:|---:|---:|"]
    for case, rows in rows_by_case(data).items():
        t = {r["impl"]: r["time"] for r in rows}
        info = rows[0]["info"]
        if "numpy" not in t or "L" not in info:
            continue
        if info.get("family") == "recurrent":
            if "c" not in t:
                continue
            gflops = next(r["gflops"] for r in rows if r["impl"] == "c")
            vs = {i: _fmt_ratio(t["torch"] / t[i]) if "torch" in t and i in t else "-" for i in ("c", "numba")}
            cells.append(f"| {info['activation']} T={info['L']:,} H={info['n']} B={info['B']} | {_fmt_time(t['c'])} | "
                         f"{'-' if gflops is None else f'{gflops:.1f}'} | {vs['c']} | {t['numpy'] / t['c']:.1f}x | "
                         f"{vs['numba']} |")
            continue
        loop, peer = best_versus(rows)
        grid.append(f"| {_label(info)} | {_fmt_time(t['numpy'])} | "
                    + " | ".join(_fmt_ratio(t["numpy"] / t[i]) if i in t else "-" for i, _ in README_COLUMNS)
                    + f" | {_fmt_ratio(loop)} | {_fmt_ratio(peer)} |")
    if len(grid) == 2:
        grid = ["(no stack-grid case with the NumPy reference's time in these results)"]
    if len(cells) == 2:
        cells = ["(no recurrent case with the NumPy reference's and C's times in these results)"]
    return "\n".join(grid + [""] + cells)


def report(data: dict) -> str:
    cases = rows_by_case(data)
    skipped: dict[str, list[dict]] = {}
    for s in data.get("skipped", []):
        skipped.setdefault(s["case"], []).append(s)
    mi = data.get("machine_info", {})
    cpu = mi.get("cpu", {}) if isinstance(mi.get("cpu"), dict) else {}
    # a VM's brand ("AMD EPYC") hides the generation, which moves every ratio (one core's FMA
    # peak: 55 GF/s on family 25 model 17, Zen 4, against 136 on a Zen 5 under the same brand)
    gen = f" (family {cpu['family']}, model {cpu['model']})" if "family" in cpu and "model" in cpu else ""
    out = [f"machine: {mi.get('cpu_model') or cpu.get('brand_raw', '?')}{gen}, "
           f"{mi.get('cpu_count', cpu.get('count', '?'))} cores; "
           f"python {mi.get('python_version', '?')}; {data.get('datetime', '')}"]
    if mi.get("versions"):
        out.append("versions: " + ", ".join(f"{k} {v}" for k, v in mi["versions"].items()))
    timed = {c: r for c, r in cases.items() if c not in ("compile", "targets")}
    for case, rows in timed.items():
        out.append("")
        out.append(case_table(case, rows, skipped.pop(case, [])))
    for case, rows in skipped.items():  # cases where nothing ran
        out.append("")
        out.append(case_table(case, [], rows))
    if "compile" in cases:
        out += ["", compile_table(cases["compile"])]
    if timed:
        out += ["", summary(timed)]
    if "targets" in cases:
        out += ["", targets_table(cases["targets"])]
    return "\n".join(out)


def plot(data: dict, path: str) -> str | None:
    """GF/s along the size grid's cases (width, depth and batch together, one tick each), one panel
    per dtype; returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    cases = rows_by_case(data)
    points: dict[tuple[str, str], list[tuple[int, int, int, float]]] = {}
    for rows in cases.values():
        for r in rows:
            i = r["info"]
            if i.get("family") == "size" and r["gflops"]:
                points.setdefault((i["dtype"], r["impl"]), []).append((i["n"], i["L"], i["B"], r["gflops"]))
    if not points:
        return None
    dtypes = sorted({d for d, _ in points}, reverse=True)
    # one panel per dtype: the size grid moves depth, width and batch together (deep and narrow to
    # shallow and wide), so GF/s against width and against depth were one curve drawn twice
    fig, axes = plt.subplots(len(dtypes), 1, figsize=(9, 4.4 * len(dtypes)), squeeze=False)
    for row, dt in enumerate(dtypes):
        ax = axes[row][0]
        for (d, impl), pts in sorted(points.items()):
            if d != dt:
                continue
            pts = sorted(pts)
            ax.plot([p[0] for p in pts], [p[3] for p in pts], marker="o",
                    linestyle="-" if impl in GRADBENCH else "--", label=impl)
        ax.set_xscale("log")
        ax.set_yscale("log")
        sizes = sorted({p[:3] for (d, _), pts in points.items() if d == dt for p in pts})
        ax.set_xticks([n for n, _, _ in sizes], [f"N={n:,}\nL={L:,}\nB={B:,}" for n, L, B in sizes], fontsize=8)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("the size grid: width N, depth L, batch B")
        ax.set_ylabel("GF/s (6 B N^2 L / time)")
        ax.set_title(f"{dt}: GF/s from deep and narrow to shallow and wide")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    from gradbench.plot import save  # atomic: a temporary file beside it, then a rename

    try:
        return save(fig, path, dpi=110)
    finally:
        plt.close(fig)


def _latest(directory: str = os.path.join("benchmarks", "results")) -> str | None:
    files = glob.glob(os.path.join(directory, "*.json"))
    return max(files, key=os.path.getmtime) if files else None


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``gradbench bench``."""
    parser = argparse.ArgumentParser(
        prog="gradbench bench",
        description="Tables (time, GF/s, speed-up vs NumPy and vs the best peer) and a GF/s figure "
                    "from a pytest-benchmark JSON saved by `make bench` or `make bench-quick`.",
        epilog="examples:\n"
               "  make bench-quick && gradbench bench benchmarks/results/bench-quick.json\n"
               "  gradbench bench --no-plot --markdown                 the newest JSON in benchmarks/results/\n"
               "  gradbench bench bench.json bench-targets.json --readme   the README's Performance tables",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("json", nargs="*",
                        help="the JSON (default: the newest in benchmarks/results/); several are merged")
    parser.add_argument("--plot", metavar="PNG", help="where to draw the figure (.png, .svg or .pdf; its directory "
                        "must exist unless --mkdir; default: out/<json name>.png, out/ created if missing)")
    parser.add_argument("--mkdir", action="store_true",
                        help="create the missing directories of --plot (without it a missing directory is an error: "
                             "a typo should not make a tree)")
    parser.add_argument("--no-plot", action="store_true", help="tables only")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the summary as a Markdown table (time and speed-up vs NumPy)")
    parser.add_argument("--readme", action="store_true",
                        help="also print the README's Performance tables (the stack grid and the recurrent cells)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Print the tables of a saved benchmark JSON and draw the figure; returns an exit code."""
    args = build_parser().parse_args(argv)
    paths = args.json or ([_latest()] if _latest() else [])
    if not paths:
        print("gradbench bench: no JSON given and none in benchmarks/results/: run `make bench-quick` first",
              file=sys.stderr)
        return 2
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        print(f"gradbench bench: {missing[0]} does not exist: benchmark results are written by `make bench-quick` "
              "(benchmarks/results/bench-quick.json) or `make bench` (bench.json)", file=sys.stderr)
        return 2
    parts = []
    for p in paths:
        try:
            parts.append(load(p))
        except OSError as exc:
            print(f"gradbench bench: cannot read {p}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        except ValueError as exc:  # names the file
            print(f"gradbench bench: {exc}", file=sys.stderr)
            return 2
    out = None
    if not args.no_plot:
        out = args.plot or os.path.join("out", os.path.splitext(os.path.basename(paths[0]))[0] + ".png")
        from gradbench.cli.output import PLOTS, check_outputs
        from gradbench.cli.process import UsageError

        try:  # before the report, as every command checks its outputs; the default out/ is created
            check_outputs([("--plot", out, PLOTS)], mkdir=args.mkdir or args.plot is None)
        except UsageError as exc:
            print(f"gradbench bench: {exc}", file=sys.stderr)
            return 2
    data = dict(parts[0])
    data["benchmarks"] = [b for d in parts for b in d["benchmarks"]]
    data["skipped"] = [x for d in parts for x in d.get("skipped", [])]
    print(f"results: {', '.join(paths)}")
    print(report(data))
    if args.markdown:
        print("\n" + markdown(data))
    if args.readme:
        print("\n" + readme_tables(data))
    if out is not None:
        try:
            written = plot(data, out)
        except OSError as exc:
            print(f"gradbench bench: cannot write {out!r}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"\nfigure: {written}" if written else "\nfigure: no size-grid cases to draw")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
