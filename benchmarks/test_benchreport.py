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


def test_main_fails_with_a_message_on_a_bad_file(tmp_path, capsys):
    assert benchreport.main([str(tmp_path / "missing.json"), "--no-plot"]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert benchreport.main([str(bad), "--no-plot"]) == 2
    assert "not a pytest-benchmark JSON" in capsys.readouterr().err
