"""gradbench.benchreport: the tables and the figure from a saved pytest-benchmark JSON."""

import json

import pytest

from gradbench import benchreport


def _bench(case, impl, kind, t, L=1000, n=64, B=64, family="size", dtype="float64"):
    return {
        "group": case, "name": f"test_backprop[{case}-{impl}]",
        "stats": {"min": t, "median": t * 1.1, "rounds": 3},
        "extra_info": {"case": case, "impl": impl, "kind": kind, "family": family, "L": L, "n": n,
                       "B": B, "dtype": dtype, "activation": "tanh", "flops": 6 * B * n * n * L,
                       "peak_rss_mib": 12.5, "first_call_s": None},
    }


@pytest.fixture
def saved(tmp_path):
    data = {
        "machine_info": {"cpu_model": "Test CPU", "cpu_count": 2, "python_version": "3.11",
                         "cpu": {"family": 25, "model": 17}},
        "datetime": "2026-01-01",
        "benchmarks": [
            _bench("a", "numpy", "backend", 2.0), _bench("a", "numba", "backend", 0.5),
            _bench("a", "torch", "peer", 1.0), _bench("a", "jax", "peer", 0.8),
            _bench("b", "numpy", "backend", 1.0, L=10, n=512, B=8),
            {"group": "compile", "name": "test_numba_cold_compile", "stats": {"min": 9.0, "median": 9.0, "rounds": 1},
             "extra_info": {"case": "compile", "impl": "numba", "kind": "compile", "cold_compile_s": 8.5,
                            "cached_load_s": 0.7}},
        ],
        "skipped": [{"case": "b", "impl": "c", "reason": "backend 'c' is registered but not available: no"}],
    }
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    return path


def test_ratios_are_speedups_against_numpy_and_the_best_peer(saved):
    rows = benchreport.rows_by_case(benchreport.load(str(saved)))
    r = benchreport.ratios(rows["a"])
    assert r["numba"]["numpy"] == pytest.approx(4.0) and r["numba"]["peer"] == pytest.approx(1.6)
    assert r["jax"]["peer"] == pytest.approx(1.0) and r["torch"]["peer"] == pytest.approx(0.8)
    assert r["numpy"]["numpy"] == pytest.approx(1.0)
    assert benchreport.ratios(rows["b"])["numpy"]["peer"] is None
    numba = next(x for x in rows["a"] if x["impl"] == "numba")
    assert numba["gflops"] == pytest.approx(6 * 64 * 64 * 64 * 1000 / 0.5 / 1e9)


def test_main_prints_tables_skips_and_draws(saved, tmp_path, capsys):
    png = tmp_path / "fig.png"
    assert benchreport.main([str(saved), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "Test CPU (family 25, model 17), 2 cores" in out and "4.00x" in out and "1.60x" in out
    assert "c: skipped: backend 'c' is registered but not available" in out
    assert "cold compile 8.50 s" in out
    assert "speed-up against the NumPy reference" in out
    assert png.stat().st_size > 1000
    assert benchreport.main([str(saved), "--no-plot", "--markdown"]) == 0
    md = capsys.readouterr().out
    assert "| case | numpy | numba | torch | jax |" in md and "| a | 2.000 s (1.00x) | 500.00 ms (4.00x)" in md
    assert "| b | 1.000 s (1.00x) |  |  |  |" in md  # nothing ran there, and no c column


def test_readme_tables_take_ratios_from_the_run(tmp_path, capsys):
    def rec(case, impl, kind, t, **info):
        b = _bench(case, impl, kind, t, **{k: info.pop(k) for k in ("L", "n", "B", "family", "dtype") if k in info})
        b["extra_info"].update(info)
        return b

    data = {"benchmarks": [
        rec("g", "numpy", "backend", 3.0), rec("g", "numba", "backend", 1.5), rec("g", "c", "backend", 0.6),
        rec("g", "numpy-loop", "peer", 0.9), rec("g", "torch", "peer", 2.0), rec("g", "jax", "peer", 0.75),
        rec("r", "numpy", "backend", 0.4, dtype="float32", batch_norm=True, residual=2, activation="relu", L=1234),
        rec("r", "c", "backend", 0.1, dtype="float32", batch_norm=True, residual=2, activation="relu", L=1234),
        rec("s", "numpy", "backend", 1.0, family="subnormal", dtype="float32"),
        rec("s", "numba", "backend", 0.25, family="subnormal", dtype="float32"),
        rec("s", "jax", "peer", 0.5, family="subnormal", dtype="float32"),
        rec("u", "numpy", "backend", 0.5, family="recurrent", activation="lstm", L=100, n=32, B=16),
        rec("u", "c", "backend", 0.05, family="recurrent", activation="lstm", L=100, n=32, B=16),
        rec("u", "numba", "backend", 0.2, family="recurrent", activation="lstm", L=100, n=32, B=16),
        rec("u", "torch", "peer", 0.1, family="recurrent", activation="lstm", L=100, n=32, B=16),
        rec("vanished-gelu-L1000-n64-B64-f64", "numpy", "backend", 2.0, family="option", activation="gelu",
            regime="vanished"),
        rec("vanished-gelu-L1000-n64-B64-f64", "c", "backend", 0.5, family="option", activation="gelu",
            regime="vanished"),
        rec("v", "c", "backend", 0.1),  # no reference time: left out
    ]}
    lines = benchreport.readme_tables(data).splitlines()
    # speed-ups against numpy (3.0 / t), then the fastest of numba, c (0.6) against the plain loop
    # (0.9 / 0.6) and against the fastest peer, jax (0.75 / 0.6)
    assert "| L=1,000 N=64 B=64 f64 | 3.000 s | 2.00x | 5.00x | 3.33x | 1.50x | 4.00x | 1.50x | 1.25x |" in lines
    assert "| relu batch norm + residual k=2 L=1,234 N=64 B=64 f32 | 400.00 ms | - | 4.00x | - | - | - | - | - |" in lines
    assert "| subnormal: L=1,000 N=64 B=64 f32 | 1.000 s | 4.00x | - | - | - | 2.00x | - | 2.00x |" in lines
    # C: 6 B N^2 L / t GF/s (the test's flops), against torch 0.1 / 0.05, numpy 0.5 / 0.05; Numba 0.1 / 0.2
    # a regime case is named by its regime (the benchmark's extra_info), not mistaken for the order-one case of its activation
    assert "| vanished: gelu L=1,000 N=64 B=64 f64 | 2.000 s | - | 4.00x | - | - | - | - | - |" in lines
    gf = 6 * 16 * 32 * 32 * 100 / 0.05 / 1e9
    assert f"| lstm T=100 H=32 B=16 | 50.00 ms | {gf:.1f} | 2.00x | 10.0x | 0.50x |" in lines
    assert not any(line.startswith("| v ") or "L=1,000 N=64 B=64 f64 | -" in line for line in lines)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    assert benchreport.main([str(path), "--no-plot", "--readme"]) == 0
    assert "| lstm T=100 H=32 B=16 | 50.00 ms |" in capsys.readouterr().out
    # a JSON with neither kind of case (the targets' own file) says so instead of empty tables
    only_grid = {"benchmarks": data["benchmarks"][:6]}
    out = benchreport.readme_tables(only_grid)
    assert "| L=1,000 N=64 B=64 f64 |" in out and "(no recurrent case" in out and "(no stack-grid" not in out
    out = benchreport.readme_tables({"benchmarks": [rec("t", "c", "target", 0.1)]})
    assert out.splitlines() == ["(no stack-grid case with the NumPy reference's time in these results)", "",
                                "(no recurrent case with the NumPy reference's and C's times in these results)"]


def test_a_sweep_row_times_its_runs_not_its_processes():
    """test_sweep_throughput's call spans three processes and their cluster starts; the row's
    time is the fastest process's runs (extra_info seconds), as its ratios are."""
    b = _bench("sweep-tanh", "sweep-2", "sweep", 12.2, family="sweep")
    b["extra_info"].update(seconds=2.0, runs=200)
    row, = benchreport.rows_by_case({"benchmarks": [b]})["sweep-tanh"]
    assert row["time"] == row["median"] == 2.0
    assert row["gflops"] == pytest.approx(b["extra_info"]["flops"] / 2.0 / 1e9)
    row, = benchreport.rows_by_case({"benchmarks": [_bench("a", "c", "backend", 0.5)]})["a"]
    assert row["time"] == 0.5 and row["median"] == 0.55
    # its time per layer is over every run's layers: 2 s / (200 runs x 1000 layers) = 10 us
    table = benchreport.case_table("sweep-tanh", benchreport.rows_by_case({"benchmarks": [b]})["sweep-tanh"], [])
    assert table.splitlines()[-1].split()[:4] == ["sweep-2", "2.000", "s", "10.0"]


def test_main_fails_with_a_message_on_a_bad_file(tmp_path, capsys):
    assert benchreport.main([str(tmp_path / "missing.json"), "--no-plot"]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert benchreport.main([str(bad), "--no-plot"]) == 2
    assert "not a pytest-benchmark JSON" in capsys.readouterr().err


@pytest.mark.parametrize("content,reason", [("xx", "is not JSON: Expecting value: line 1 column 1"),
                                            ("3", "is not a pytest-benchmark JSON"),
                                            (b"\xff\xfe", "is not JSON: 'utf-8' codec can't decode"),
                                            (None, "Is a directory")])
def test_every_read_error_names_the_file(saved, tmp_path, capsys, content, reason):
    # before: "cannot read : Expecting value: ..." with no name, and a JSON number raised a TypeError
    bad = tmp_path / "second.json"
    if content is None:
        bad.mkdir()
    elif isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        bad.write_text(content)
    assert benchreport.main([str(saved), str(bad), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and reason in err and str(saved) not in err, err


def test_plot_in_a_missing_directory_is_refused_before_the_report(saved, tmp_path, capsys):
    """bench had no --mkdir and silently made newdir/sub/ for --plot newdir/sub/b.png: a missing
    directory is now one line naming --plot (exit 2, nothing printed or made), as in every command."""
    png = tmp_path / "newdir" / "sub" / "b.png"
    assert benchreport.main([str(saved), "--plot", str(png)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and not (tmp_path / "newdir").exists()
    assert err.startswith("gradbench bench: --plot ") and "does not exist (create it, or pass --mkdir)" in err
    assert benchreport.main([str(saved), "--plot", str(png), "--mkdir"]) == 0
    assert png.stat().st_size > 1000
    assert benchreport.main([str(saved), "--plot", str(tmp_path / "b.jpg")]) == 2
    assert "--plot" in capsys.readouterr().err


def test_plot_is_written_atomically(saved, tmp_path, capsys, monkeypatch):
    """A figure whose write fails leaves the previous file as it was and no partial file (the
    package's atomic writer, gradbench.plot.save); the failure is one line (exit 1)."""
    from matplotlib.figure import Figure

    png = tmp_path / "b.png"
    png.write_bytes(b"the previous figure")

    def full_disk(self, fname, *args, **kwargs):
        if hasattr(fname, "write"):
            fname.write(b"half a figure")
        else:
            with open(fname, "wb") as f:
                f.write(b"half a figure")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    assert benchreport.main([str(saved), "--plot", str(png)]) == 1
    assert "cannot write" in capsys.readouterr().err
    assert png.read_bytes() == b"the previous figure" and sorted(p.name for p in tmp_path.iterdir()) == ["b.png", "r.json"]


def test_the_figure_is_one_panel_per_dtype_along_the_size_grid(saved, tmp_path, monkeypatch):
    """The size grid moves depth, width and batch together: GF/s against width and against depth
    were one curve drawn twice. One panel per dtype now, each tick naming its whole case."""
    import matplotlib.pyplot as plt

    figs = []
    monkeypatch.setattr(plt, "close", figs.append)  # keep the figure to look at
    data = json.loads(saved.read_text())
    assert benchreport.plot(data, str(tmp_path / "f.png"))
    axes = figs[0].axes
    assert len(axes) == len({b["extra_info"]["dtype"] for b in data["benchmarks"]
                             if b["extra_info"].get("family") == "size"})
    ticks = [t.get_text() for t in axes[0].get_xticklabels()]
    assert ticks and all(t.startswith("N=") and "\nL=" in t and "\nB=" in t for t in ticks), ticks
