"""gb.sweep on a real Dask cluster (worker processes, not mocks).

The table is compared with a serial loop over ``gb.backprop`` (full gradients, not stats-only)
and ``gb.diagnose`` written out here; the standard error and the signal rate with SciPy's
``linregress``; resume is tested by SIGKILLing a client process mid-sweep, and retries by
SIGKILLing a worker process mid-sweep.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import distributed
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import gradbench as gb
from gradbench import theory
from gradbench.diagnose import assess
from gradbench.sweep import COLUMNS, task_size
from gradbench.sweep.execute import execute, split
from gradbench.sweep.grid import plan
from tests.helpers import Tripwire

GRID = {"activation": ["tanh", "relu"], "sigma_w": [0.8, 1.5, 1.8, 40.0]}
FIXED = dict(depth=250, width=16, batch=8, sigma_b=0.1, init="normal")
SEEDS = (0, 1)
MEASURED_EXACT = ["decades_per_layer", "log10_grad_first", "log10_grad_last", "loss_log10", "saturation", "dead"]


@pytest.fixture(scope="module")
def cluster():
    """A real LocalCluster: 2 worker processes of one thread each (the sweep's own layout)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, \
            distributed.Client(lc) as client:
        yield client


def serial(grid: dict, seeds, **fixed) -> list[dict]:
    """What each row must hold, from a plain loop in this process (last axis fastest, seeds innermost)."""
    names = list(grid)
    points = [{}]
    for name in names:
        points = [{**p, name: v} for p in points for v in grid[name]]
    rows = []
    for point in points:
        settings = {**fixed, **point}
        batch = settings.pop("batch")
        stack = gb.Stack(**settings)
        mf = theory.mean_field(stack)
        for seed in seeds:
            # the network of `gradbench run --seed`, stored here, and a plain (not stats-only) run
            params = gb.GeneratedParams(stack, seed).materialize()
            x = gb.gaussian_input(stack, batch, seed=np.random.default_rng([seed, 1]))
            res = gb.backprop(stack, params, x)
            d = gb.diagnose(res)
            rule = assess(res).rule
            nonfinite = res.first_nonfinite_forward
            if nonfinite is None:
                nonfinite = res.first_nonfinite_backward
            rows.append({**point, "seed": seed, "decades_per_layer": d.decades_per_layer,
                         "grad_log10": d.grad_log10, "signal_log10": d.signal_log10,
                         "log10_grad_first": d.grad_log10[0], "log10_grad_last": d.grad_log10[-1],
                         "loss_log10": d.loss_log10, "saturation": np.mean(res.saturation),
                         "dead": np.mean(res.dead), "verdict": d.verdict, "rule": rule, "first_nonfinite": nonfinite,
                         "backend": res.backend, "q_star": mf.q_star, "chi1": mf.chi1,
                         "theory_decades_per_layer": mf.decades_per_layer, "depth_scale": mf.depth_scale,
                         "phase": mf.phase})
    return rows


def assert_matches_serial(table: pd.DataFrame, ref: list[dict], names: list[str]) -> None:
    assert len(table) == len(ref)
    for name in names + ["seed"]:
        assert table[name].tolist() == [r[name] for r in ref], name
    for name in MEASURED_EXACT + ["q_star", "chi1", "theory_decades_per_layer", "depth_scale"]:
        # bitwise: the same computation on the workers as here (NaN == NaN)
        np.testing.assert_array_equal(table[name].to_numpy(dtype=float), np.array([r[name] for r in ref], float),
                                      err_msg=name)
    for name in ("verdict", "rule", "phase", "backend"):
        assert table[name].tolist() == [r[name] for r in ref], name
    assert [None if pd.isna(v) else int(v) for v in table["first_nonfinite"]] == [r["first_nonfinite"] for r in ref]
    # the standard error and the signal rate against SciPy's regression
    for got_se, got_signal, r in zip(table["decades_per_layer_se"], table["signal_decades_per_layer"], ref):
        for y, got, key in ((r["grad_log10"], got_se, "stderr"), (r["signal_log10"], got_signal, "slope")):
            ok = np.isfinite(y)
            if ok.sum() < 3:
                assert math.isnan(got)
                continue
            fit = stats.linregress(np.flatnonzero(ok), y[ok])
            want = fit.stderr if key == "stderr" else -fit.slope  # going down towards the input
            assert got == pytest.approx(want, rel=1e-9, abs=1e-15), (key, r)


# ---------------------------------------------------------------- a LocalCluster of the call's own
def test_table_equals_a_serial_loop_on_a_local_cluster_of_two_worker_processes():
    table = gb.sweep(GRID, seeds=SEEDS, workers=2, **FIXED)
    assert list(table.columns) == ["activation", "sigma_w", "depth", "width", "init", "sigma_b", "batch", "seed",
                                   *COLUMNS]
    assert table.dtypes["first_nonfinite"] == "Int64"
    ref = serial(GRID, SEEDS, **FIXED)
    assert_matches_serial(table, ref, list(GRID))
    # the grid covers every phase, and the exploding ReLU (sigma_w = 40, biases) is carried past
    # float64 by the forward's exponents (its forward overflowed until 2026-12-07)
    assert set(table.verdict) == {"vanishing", "stable", "exploding"}
    blown = table.loc[(table.activation == "relu") & (table.sigma_w == 40.0)]
    assert blown.first_nonfinite.isna().all() and (blown.loss_log10 > 400).all()
    assert (table.seconds > 0).all()


# ---------------------------------------------------------------- validation before anything runs
@pytest.mark.parametrize("grid,kwargs,error,match", [
    ({"sigma": [1.0]}, {}, ValueError, r"grid field='sigma' is not one of .*did you mean"),
    ({"activation": "tanh"}, {}, TypeError, r"grid\['activation'\] must be a list"),
    ({"activation": ["tanh", "sigmod"]}, {}, ValueError,
     r"activation='sigmod' is not one of .*did you mean 'sigmoid'\? \(at grid point activation='sigmod'\)"),
    ({"sigma_w": [1.0, -1.0]}, {}, ValueError, r"sigma_w must be > 0, got -1.0 \(at grid point sigma_w=-1.0\)"),
    ({"residual": [2, 3]}, {}, ValueError, r"residual=3 must divide depth=10"),
    ({"sigma_w": [1.0, 1.0]}, {}, ValueError, r"grid\['sigma_w'\] has repeated values 1.0"),
    ({"sigma_w": []}, {}, ValueError, r"grid\['sigma_w'\] is empty"),
    ({"sigma_w": np.ones((2, 2))}, {}, ValueError, r"one-dimensional"),
    ({"sigma_w": [1.0, [2.0]]}, {}, TypeError, r"values must be numbers"),
    ({"sigma_w": [1.0]}, {"sigma_w": 2.0}, ValueError, r"sigma_w given both as a grid axis and as a fixed value"),
    ({"sigma_w": [1.0]}, {"width": [4, 8]}, TypeError, r"width=\[4, 8\]: a fixed field takes one value"),
    ({"sigma_w": [1.0]}, {"widht": 4}, ValueError, r"fixed field='widht' is not one of .*did you mean 'width'"),
    ({"sigma_w": [1.0]}, {"depth": None}, ValueError, r"depth is required"),
    ({"batch": [4, 0]}, {}, ValueError, r"batch must be an int >= 1, got 0 \(at grid point batch=0\)"),
    ({"clip": ["norm"]}, {"clip_on": "global"}, ValueError, r"clip_on='layer'"),
    ({"init": ["kaiming_normal", "he_normal"]}, {}, ValueError,
     r"grid\['init'\] names one scheme twice: 'kaiming_normal' and 'he_normal'"),
    # what backprop refuses, before the cluster starts (it crashed the sweep as an 'internal error')
    ({"batch_norm": [False, True]}, {"batch": 1}, ValueError,
     r"batch_norm=True needs a batch of at least 2, got batch=1: .* \(at grid point batch_norm=True\)"),
    ({"sigma_w": [1.0]}, {"seeds": 3}, TypeError, r"seeds must be an iterable of ints such as range\(3\)"),
    ({"sigma_w": [1.0]}, {"seeds": [0, 0]}, ValueError, r"seeds has repeated values"),
    ({"sigma_w": [1.0]}, {"seeds": [-1]}, ValueError, r"seeds must be ints in \[0, 2\*\*63\)"),
    # checked before any run: 2**64 ran the sweep, then failed building the table; 2**64 - 1 read -1 there
    ({"sigma_w": [1.0]}, {"seeds": [2**63]}, ValueError, r"seeds must be ints in \[0, 2\*\*63\) .*got 9223372036854775808"),
    ({"sigma_w": [1.0]}, {"backend": "cuda"}, ValueError, r"backend='cuda' is not one of"),
    ({"sigma_w": [1.0]}, {"runs_per_task": 0}, ValueError, r"runs_per_task must be an int >= 1"),
    ({"sigma_w": [1.0]}, {"progress": "yes"}, TypeError, r"progress must be a bool or a callable"),
    ({"sigma_w": [1.0]}, {"workers": 2}, ValueError, r"workers= sizes the LocalCluster .* give one or the other"),
])
def test_bad_input_is_refused_before_the_client_is_touched(grid, kwargs, error, match):
    kw = dict(depth=10, width=4, client=Tripwire()) | kwargs
    if kw["depth"] is None:
        del kw["depth"]
    with pytest.raises(error, match=match):
        gb.sweep(grid, **kw)


def test_a_scheduler_address_that_dask_cannot_parse_is_refused_before_connecting():
    for address, match in [("foo", "missing port number"), ("bar://x:1", "unknown address scheme 'bar'")]:
        with pytest.raises(ValueError, match=f"client='{address}' is not a scheduler address .*{match}"):
            gb.sweep({"sigma_w": [1.0]}, depth=4, width=4, client=address)


def test_bad_workers_and_client_values():
    with pytest.raises(ValueError, match="workers must be an int >= 1, got 0"):
        gb.sweep({"sigma_w": [1.0]}, depth=4, width=4, workers=0)
    with pytest.raises(TypeError, match="client must be a distributed.Client, a scheduler address or None"):
        gb.sweep({"sigma_w": [1.0]}, depth=4, width=4, client=8786)


def test_an_out_directory_that_is_not_a_sweeps_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="non-empty directory without sweep.json"):
        gb.sweep({"sigma_w": [1.0]}, depth=4, width=4, out=tmp_path, client=Tripwire())
    with pytest.raises(ValueError, match="is a file, not a directory"):
        gb.sweep({"sigma_w": [1.0]}, depth=4, width=4, out=tmp_path / "notes.txt", client=Tripwire())


def test_a_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'gradbench\[sweep\]'"):
        gb.sweep({"sigma_w": [1.0]}, depth=4, width=4)


def test_task_size_balances_and_bounds_the_work_of_a_task():
    small = plan({"sigma_w": list(np.linspace(0.5, 3.0, 200))}, {"depth": 500, "width": 64, "batch": 32}, [0]).runs()
    assert task_size(small, 2) == math.ceil(200 / 16)  # 8 tasks per worker
    assert task_size(small, 1) == 25
    assert task_size(small[:3], 2) == 1
    # 6 B N^2 L = 8.6e12 FLOPs a run (~70 min estimated): one run per task, however many runs
    huge = plan({"sigma_w": [1.0, 1.1]}, {"depth": 10**6, "width": 1024, "batch": 1400}, range(400)).runs()
    assert task_size(huge, 2) == 1
    big = plan({"sigma_w": [1.0]}, {"depth": 2000, "width": 512, "batch": 64}, range(1000)).runs()
    est = 2e-3 + 6.0 * 64 * 512**2 * 2000 / 2e9  # ~100 s: no more than one such run in a task
    assert task_size(big, 2) == max(1, int(60 // est)) == 1


def test_split_keeps_the_order_and_shrinks_only_the_last_tasks():
    todo = list(range(200))
    for workers in (1, 2, 3, 8):
        k = task_size(plan({"sigma_w": list(np.linspace(0.5, 3.0, 200))},
                           {"depth": 500, "width": 64, "batch": 32}, [0]).runs(), workers)
        tasks = split(todo, k, workers)
        assert [r for t in tasks for r in t] == todo  # every run once, in order
        done = 0
        for t in tasks:  # never more than k, nor more than the rest over twice the workers (at least 1)
            assert 1 <= len(t) <= min(k, max(1, math.ceil((200 - done) / (2 * workers))))
            done += len(t)
        assert len(tasks[-1]) == 1 and len(tasks[0]) == k
    # an explicit runs_per_task: tasks of exactly that many (the last one the rest)
    assert [len(t) for t in split(todo[:7], 3, 2, guided=False)] == [3, 3, 1]
    assert split([], 5, 2) == []


def test_missing_pandas_is_named_before_the_client_is_touched(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    for out in (None, tmp_path / "s"):
        with pytest.raises(ImportError, match=r"pandas and pyarrow .*pip install 'gradbench\[sweep\]'"):
            gb.sweep({"sigma_w": [1.0]}, depth=4, width=4, out=out, client=Tripwire())


def test_the_client_works_only_once_every_task_is_submitted(cluster, monkeypatch):
    p = plan({"sigma_w": [0.9, 1.1, 1.3]}, {"depth": 6, "width": 4, "batch": 2}, range(3))
    submitted, seen = [], []
    real = cluster.submit
    monkeypatch.setattr(cluster, "submit", lambda *a, **k: submitted.append(1) or real(*a, **k))
    rows = execute(cluster, p.runs(), p, None, 2, lambda: seen.append(len(submitted)) or pd, lambda n: None)
    assert seen == [5]  # 9 runs in tasks of 2: all 5 submitted before the client's own work
    assert sorted(r["run_key"] for r in rows) == sorted(r.key for r in p.runs())


# ---------------------------------------------------------------- resume after the client dies
KILL_CLIENT = textwrap.dedent("""
    import os, signal, sys
    import gradbench as gb
    address, out = sys.argv[1], sys.argv[2]

    def progress(done, total):
        if done >= 4:  # two tasks of two runs are written: die here, as a crash or a lost machine would
            os.kill(os.getpid(), signal.SIGKILL)

    gb.sweep({"activation": ["tanh", "relu"], "sigma_w": [0.8, 1.3, 1.8]}, seeds=(0, 1), depth=60, width=16,
             batch=8, sigma_b=0.1, init="normal", out=out, client=address, runs_per_task=2, progress=progress)
    print("the sweep finished: the kill did not happen")
""")


def _files(out) -> dict:
    return {n: (os.stat(os.path.join(out, n)).st_mtime_ns, open(os.path.join(out, n), "rb").read())
            for n in sorted(os.listdir(out)) if n.startswith("rows-")}


def test_resume_after_the_client_process_is_killed_runs_only_what_is_missing(cluster, tmp_path):
    out = tmp_path / "sweep"
    grid = {"activation": ["tanh", "relu"], "sigma_w": [0.8, 1.3, 1.8]}
    fixed = dict(depth=60, width=16, batch=8, sigma_b=0.1, init="normal")
    proc = subprocess.run([sys.executable, "-c", KILL_CLIENT, cluster.scheduler.address, str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    before = _files(out)
    assert len(before) == 2  # the two finished tasks, written whole; nothing half-written
    assert not [n for n in os.listdir(out) if n.startswith(".gradbench-")]
    done_rows = pd.concat([pd.read_parquet(out / n) for n in before])
    assert len(done_rows) == 4

    calls = []
    table = gb.sweep(grid, seeds=(0, 1), out=out, client=cluster, runs_per_task=2,
                     progress=lambda done, total: calls.append((done, total)), **fixed)
    assert calls[0] == (4, 12)  # 4 runs found on disk ...
    assert [c[0] for c in calls[1:]] == [6, 8, 10, 12]  # ... and only the 8 missing ones run, in 4 tasks
    after = _files(out)
    assert {n: after[n] for n in before} == before  # the finished tasks' files untouched
    assert len(after) == 6
    on_disk = pd.concat([pd.read_parquet(out / n) for n in after])
    assert len(on_disk) == 12 and on_disk.run_key.is_unique
    # the resumed rows are the ones from disk (their timings too), and the table is complete
    merged = table.merge(done_rows.drop(columns="run_key"), on=["activation", "sigma_w", "seed"], suffixes=("", "_0"))
    assert len(merged) == 4 and (merged.seconds == merged.seconds_0).all()
    assert_matches_serial(table, serial(grid, (0, 1), **fixed), list(grid))

    # a third call finds everything done: no cluster needed, the same table
    again = gb.sweep(grid, seeds=(0, 1), out=out, client=Tripwire(), **fixed)
    pd.testing.assert_frame_equal(again, table)
    # fewer seeds: the rows of those seeds only
    assert len(gb.sweep(grid, seeds=(1,), out=out, client=Tripwire(), **fixed)) == 6
    # another grid or other fixed fields: refused, naming what differs
    with pytest.raises(ValueError, match=r"different grid or fixed fields \(differs in axis sigma_w: the axis "
                                         r"\[0\.8, 1\.3, 1\.8\] in the directory, the axis \[0\.8, 1\.3\] here\)"):
        gb.sweep({**grid, "sigma_w": [0.8, 1.3]}, seeds=(0, 1), out=out, client=Tripwire(), **fixed)
    with pytest.raises(ValueError, match=r"differs in fixed field depth: 60 in the directory, 61 here"):
        gb.sweep(grid, seeds=(0, 1), out=out, client=Tripwire(), **(fixed | {"depth": 61}))


def test_the_rule_column_names_why_a_residual_stack_with_flat_rates_vanishes(cluster, tmp_path):
    # ten sigmoid layers per residual branch: the skip path keeps the rates at ~0, while each
    # branch loses decades inside (rule "branch"); the plain stack vanishes by its trend
    out = tmp_path / "sweep"
    grid = {"residual": [0, 10]}
    fixed = dict(depth=100, width=16, activation="sigmoid", init="xavier_normal")
    table = gb.sweep(grid, seeds=(0,), out=out, client=cluster, runs_per_task=1, **fixed)
    assert table.columns.get_loc("rule") == table.columns.get_loc("verdict") + 1
    assert table.verdict.tolist() == ["vanishing", "vanishing"]
    assert table.rule.tolist() == ["trend", "branch"]
    assert abs(table.decades_per_layer[1]) < 0.01 < abs(table.decades_per_layer[0])
    # rows of a gradbench without the column: resumed, the column missing there, in its place
    files = sorted(_files(out))
    old = pd.read_parquet(out / files[0]).drop(columns="rule")
    old.to_parquet(out / files[0], index=False)
    os.remove(out / files[1])
    again = gb.sweep(grid, seeds=(0,), out=out, client=cluster, runs_per_task=1, **fixed)
    assert list(again.columns) == list(table.columns)
    kept = again.residual == int(old.residual.item())  # the old file's run, read back
    assert again.rule[kept].isna().all()
    assert again.rule[~kept].tolist() == table.rule[~kept].tolist()  # the deleted one, run again


# ---------------------------------------------------------------- theory
def _crossing(x: np.ndarray, y: np.ndarray) -> float:
    """The x where y (one sign change) crosses 0, by linear interpolation."""
    s = np.flatnonzero(np.sign(y[:-1]) != np.sign(y[1:]))
    assert len(s) == 1, f"expected one sign change, got {y}"
    i = s[0]
    return float(x[i] - y[i] * (x[i + 1] - x[i]) / (y[i + 1] - y[i]))


def _theory_agreement(client, points: int, seeds, batch: int):
    sb2 = 0.05
    sw2 = np.linspace(1.0, 3.0, points)
    table = gb.sweep({"sigma_w": np.sqrt(sw2)}, seeds=seeds, depth=200, width=256, batch=batch,
                     activation="tanh", init="normal", sigma_b=math.sqrt(sb2), client=client)
    mean = table.groupby("sigma_w", sort=True)[["decades_per_layer", "signal_decades_per_layer"]].mean()
    crit = theory.critical_sigma_w("tanh", math.sqrt(sb2)) ** 2  # 1.761 (Schoenholz et al.: 1.76)
    return sw2, mean, crit, table


def test_the_measured_edge_of_chaos_is_where_mean_field_puts_it(cluster):
    # tanh, sigma_b^2 = 0.05, sigma_w^2 in [1, 3], width 256, depth 200, batch 16
    sw2, mean, crit, table = _theory_agreement(cluster, 11, (0,), 16)
    # the rate of ||dL/dh_l||, what chi_1 predicts, crosses 0 at sigma_w^2 = 1.80 (finite width)
    assert abs(_crossing(sw2, mean["signal_decades_per_layer"].to_numpy()) - crit) < 0.06
    # away from the edge it has the sign mean field predicts (negative = vanishing) ...
    far = np.abs(table.theory_decades_per_layer) > 0.01
    assert (np.sign(table.signal_decades_per_layer[far]) == np.sign(table.theory_decades_per_layer[far])).all()
    # ... and its size, to 0.01 decades per layer
    np.testing.assert_allclose(table.signal_decades_per_layer, table.theory_decades_per_layer, atol=0.01)
    # diagnose's rate of ||dW_l|| crosses at 1.86 here (1.86 at batch 1 too): the finite-width bias of
    # log ||g|| (~0.0025 decades per layer at N = 256) and, for batch > 1, the drift of the samples'
    # correlations in ||dW_l||^2 = sum_ij (g_i.g_j)(h_i.h_j) move it by ~0.1 in sigma_w^2
    assert abs(_crossing(sw2, mean["decades_per_layer"].to_numpy()) - crit) < 0.15


def test_the_phase_label_of_zero_bias_gelu_and_swish_agrees_with_the_verdict(cluster):
    # two attractors for sqrt(2) < sigma_w < 2: mean field must start where the runs do, at
    # q0 = sigma_w^2 (their standard normal input). From q0 = 1 it labelled gelu 1.5 and swish 1.6
    # "ordered (vanishing)" (q* = 0) beside the verdict "exploding"; 1.42 (both) and swish 1.5 lie
    # on the other side of the jump and vanish.
    table = gb.sweep({"activation": ["gelu", "swish"], "sigma_w": [1.42, 1.5, 1.6]}, depth=200, width=64,
                     client=cluster)
    want = {("gelu", 1.42): "vanishing", ("gelu", 1.5): "exploding", ("gelu", 1.6): "exploding",
            ("swish", 1.42): "vanishing", ("swish", 1.5): "vanishing", ("swish", 1.6): "exploding"}
    label = {"vanishing": "ordered (vanishing)", "exploding": "chaotic (exploding)"}
    for row in table.itertuples():
        verdict = want[(row.activation, row.sigma_w)]
        assert (row.verdict, row.phase) == (verdict, label[verdict]), row
        assert row.q_star == (math.inf if verdict == "exploding" else 0.0)
        assert abs(row.signal_decades_per_layer - row.theory_decades_per_layer) < 0.01, row


def _diagnose_says_vanishing_is_positive() -> bool:
    """Whether gb.diagnose still reports a vanishing stack (sigmoid, depth 30) with a positive rate."""
    stack = gb.Stack(depth=30, width=8, activation="sigmoid")
    d = gb.diagnose(gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 4, 1), backend="numpy"))
    assert d.verdict == "vanishing"
    return d.decades_per_layer > 0


@pytest.mark.xfail(_diagnose_says_vanishing_is_positive(), strict=True,
                   reason="diagnose still reports positive = vanishing; the package's one convention "
                          "(DESIGN section 6, gradbench.theory) is negative = vanishing")
def test_measured_and_predicted_rates_follow_one_sign_convention(cluster):
    # tanh, sigma_b^2 = 0.05: sigma_w^2 = 1 vanishes, 3 explodes; both columns negative = vanishing
    table = gb.sweep({"sigma_w": [1.0, math.sqrt(3.0)]}, sigma_b=math.sqrt(0.05), depth=100, width=64,
                     client=cluster)
    assert table.verdict.tolist() == ["vanishing", "exploding"]
    for name in ("decades_per_layer", "signal_decades_per_layer", "theory_decades_per_layer"):
        assert table[name].iloc[0] < 0 < table[name].iloc[1], name


@pytest.mark.slow
def test_the_measured_edge_of_chaos_over_more_points_and_seeds(cluster):
    sw2, mean, crit, _ = _theory_agreement(cluster, 21, range(3), 16)
    assert abs(_crossing(sw2, mean["signal_decades_per_layer"].to_numpy()) - crit) < 0.06
    assert abs(_crossing(sw2, mean["decades_per_layer"].to_numpy()) - crit) < 0.15


def _faults_per_run() -> float:
    """Minor page faults per run of depth 500, width 64, batch 32 in this process, after a warm-up."""
    import resource

    from gradbench.sweep.worker import run_task

    runs = [(str(i), dict(depth=500, width=64, activation="tanh", sigma_w=1.0 + 0.1 * i), 32, 0) for i in range(3)]
    run_task(runs, "auto")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    run_task(runs, "auto")
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / len(runs)


def test_workers_reuse_the_memory_of_one_run_for_the_next(cluster):
    # Dask's nanny sets MALLOC_TRIM_THRESHOLD_, which turns glibc's dynamic mmap threshold off: every
    # array of every run would be mapped and zero-filled afresh (~11,000 faults a run, runs ~1.3x slower)
    assert all(v == "65536" for v in cluster.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values())
    per_run = cluster.submit(_faults_per_run, pure=False).result()
    assert per_run < 1500, per_run


# ---------------------------------------------------------------- a worker dies mid-sweep
def test_a_worker_killed_mid_sweep_is_retried_and_every_row_appears_once(cluster, tmp_path):
    grid = {"sigma_w": [0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6]}
    fixed = dict(depth=300, width=64, batch=16, activation="tanh", init="normal", sigma_b=0.05)
    killed = []

    def progress(done, total):
        if done and not killed:  # one task finished: kill a worker while it executes another
            running = {}
            while not running:
                running = {w: keys for w, keys in cluster.call_stack().items() if keys}
            worker, keys = next(iter(running.items()))
            pid = cluster.run(os.getpid, workers=[worker])[worker]
            os.kill(pid, signal.SIGKILL)
            killed.append((pid, list(keys)))

    table = gb.sweep(grid, seeds=(0,), out=tmp_path / "s", client=cluster, runs_per_task=1, progress=progress,
                     **fixed)
    assert len(killed) == 1 and killed[0][1]  # it was running a task
    assert len(table) == 8 and table.sigma_w.is_unique
    on_disk = pd.concat([pd.read_parquet(tmp_path / "s" / n) for n in os.listdir(tmp_path / "s")
                         if n.startswith("rows-")])
    assert len(on_disk) == 8 and on_disk.run_key.is_unique
    assert_matches_serial(table, serial(grid, (0,), **fixed), list(grid))
    cluster.wait_for_workers(2, timeout=60)  # the nanny restarted it
    assert killed[0][0] not in cluster.run(os.getpid).values()


# ---------------------------------------------------------------- the phase diagram
def _synthetic_table(activations=("tanh", "relu")) -> pd.DataFrame:
    """A table shaped like gb.sweep's, with rates set to the mean-field prediction (no runs)."""
    rows = []
    for act in activations:
        for sb in (0.0, 0.1, 0.3):
            for sw in np.linspace(0.6, 2.0, 8):
                mf = theory.mean_field(act, sw, sb)
                for seed in (0, 1):
                    rows.append(dict(activation=act, sigma_w=sw, sigma_b=sb, depth=50, seed=seed,
                                     decades_per_layer=0.0, signal_decades_per_layer=mf.decades_per_layer,
                                     theory_decades_per_layer=mf.decades_per_layer))
    return pd.DataFrame(rows)


def test_phase_diagram_colours_lines_and_panels(tmp_path):
    from gradbench.plot_sweep import phase_diagram

    table = _synthetic_table()
    fig = phase_diagram(table, path=tmp_path / "phase.png")
    heat_tanh, heat_relu, scatter = fig.axes[:3]
    assert [heat_tanh.get_title(), heat_relu.get_title()] == ["activation = tanh", "activation = relu"]
    # diverging map centred on 0: negative rates (vanishing) blue, positive (exploding) red
    mesh = heat_tanh.collections[0]
    assert mesh.norm(0.0) == 0.5
    values = np.ma.filled(mesh.get_array(), np.nan).ravel()
    rgba = mesh.cmap(mesh.norm(values))
    neg, pos = values < -0.02, values > 0.02
    assert neg.any() and pos.any()
    assert (rgba[neg, 2] > rgba[neg, 0]).all() and (rgba[pos, 0] > rgba[pos, 2]).all()
    texts = [t.get_text() for a in fig.axes for t in a.texts]
    assert texts.count("vanishing") >= 2 and texts.count("exploding") >= 2  # colour bar and scatter
    # on the heat maps the phases are legend entries below the map, not words over its cells
    for heat in (heat_tanh, heat_relu):
        assert not heat.texts
        labels = [t.get_text() for t in heat.get_legend().get_texts()]
        assert "vanishing: rate < 0" in labels and "exploding: rate > 0" in labels
        assert heat.get_legend().get_window_extent().y1 < heat.get_window_extent().y0  # under the axes
    # the critical line is theory's chi_1 = 1 at every sigma_b it passes through
    line = next(ln for ln in heat_tanh.lines if "chi_1" in ln.get_label())
    for sw, sb in zip(line.get_xdata(), line.get_ydata()):
        assert sw == theory.critical_sigma_w("tanh", sb)
    relu_line = next(ln for ln in heat_relu.lines if "chi_1" in ln.get_label())
    np.testing.assert_allclose(relu_line.get_xdata(), math.sqrt(2), rtol=1e-9)
    # the measured zero crossings: one per sigma_b row, next to the line (grid spacing 0.2)
    marks = next(ln for ln in heat_tanh.lines if ln.get_label().startswith("measured"))
    assert sorted(marks.get_ydata()) == [0.0, 0.1, 0.3]
    for sw, sb in zip(marks.get_xdata(), marks.get_ydata()):
        assert abs(sw - theory.critical_sigma_w("tanh", sb)) < 0.05
    # measured vs predicted: every run of finite theory, and the identity line
    points = sum(len(c.get_offsets()) for c in scatter.collections)
    assert points == np.isfinite(table.theory_decades_per_layer).sum()
    ident = next(ln for ln in scatter.lines if ln.get_label() == "measured = predicted")
    np.testing.assert_array_equal(ident.get_xdata(), ident.get_ydata())
    assert (tmp_path / "phase.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_phase_diagram_into_given_axes_and_bad_arguments():
    from matplotlib.figure import Figure

    from gradbench.plot_sweep import phase_diagram

    table = _synthetic_table(("tanh",))
    fig = Figure()
    ax = fig.add_subplot()
    assert phase_diagram(table, ax=ax) is fig and ax.collections  # one heat map, no scatter
    fixed_sb = table[table.sigma_b == 0.1]
    f2 = phase_diagram(fixed_sb, x="sigma_w", y="depth")
    vline = next(ln for ln in f2.axes[0].lines if "chi_1" in ln.get_label())
    assert vline.get_xdata()[0] == theory.critical_sigma_w("tanh", 0.1)  # sigma_b fixed: a vertical line
    # the default axes (y = sigma_b) with one sigma_b, as the README's sweep: the legend named a
    # dashed line of one point, which drew nothing; now the critical sigma_w across the map
    f3 = phase_diagram(fixed_sb)
    vline = next(ln for ln in f3.axes[0].lines if "chi_1" in ln.get_label())
    assert vline.get_xdata()[0] == theory.critical_sigma_w("tanh", 0.1) and len(set(vline.get_ydata())) == 2
    with pytest.raises(ValueError, match="x='sigma' is not a configuration column"):
        phase_diagram(table, x="sigma")
    with pytest.raises(ValueError, match="x='activation' is not numeric"):
        phase_diagram(table, x="activation")
    with pytest.raises(ValueError, match="value='loss' is not one of"):
        phase_diagram(table, value="loss")
    # a valid value that the table lacks: said so (it said the value was "not one of" the two it names)
    with pytest.raises(ValueError, match="value='signal_decades_per_layer': the table has no "
                                         "'signal_decades_per_layer' column; it has 'decades_per_layer'"):
        phase_diagram(table.drop(columns="signal_decades_per_layer"), value="signal_decades_per_layer")
    with pytest.raises(ValueError, match=r"ax: 3 Axes given, the table needs 1 heat map"):
        phase_diagram(table, ax=Figure().subplots(1, 3))
    with pytest.raises(ValueError, match="must be a gb.sweep"):
        phase_diagram(table.drop(columns="seed"))
    with pytest.raises(ValueError, match="table has no rows"):  # IndexError in the cell edges
        phase_diagram(table.iloc[:0])


# ---------------------------------------------------------------- the command line
def test_cli_sweep_runs_writes_and_resumes(cluster, tmp_path, capsys):
    from gradbench import cli

    out, png, csv = tmp_path / "out", tmp_path / "phase.png", tmp_path / "t.csv"
    argv = ["sweep", "--activation", "tanh,relu", "--sigma-w", "0.8:1.6:3", "--sigma-b", "0,0.1", "--depth", "20",
            "--width", "8", "--batch", "4", "--init", "normal", "--seeds", "2", "--scheduler", cluster.scheduler.address,
            "--out", str(out), "--plot", str(png), "--csv", str(csv)]
    assert cli.main(argv) == 0
    stdout, stderr = capsys.readouterr()
    assert "dask dashboard: http" in stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweep: 24 runs (12 configurations x 2 seeds) in ")
    assert " on 2 workers; " in lines[0] and "wrote " in lines[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    got = pd.read_csv(csv)
    ref = gb.sweep({"activation": ["tanh", "relu"], "sigma_w": [0.8, 1.2, 1.6], "sigma_b": [0.0, 0.1]},
                   depth=20, width=8, batch=4, init="normal", seeds=range(2), client=cluster)
    assert list(got.columns) == list(ref.columns)
    for name in MEASURED_EXACT + ["signal_decades_per_layer", "theory_decades_per_layer"]:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-15, err_msg=name)  # CSV keeps 17 digits
    assert got.verdict.tolist() == ref.verdict.tolist()
    assert cli.main(argv[:-4]) == 0  # again, same --out: everything is there
    assert "(24 resumed from " in capsys.readouterr().out


def test_a_sweep_point_with_its_bn_eps_is_reproduced_by_gradbench_run(cluster, tmp_path, capsys):
    """sweep took --bn-eps "as in gradbench run", which had no --bn-eps: a point of a sweep over
    the epsilon of batch norm could not be run again on its own. run --bn-eps gives its numbers."""
    import json

    from gradbench import cli

    csv = tmp_path / "t.csv"
    size = ["--depth", "12", "--width", "4", "--batch", "4"]
    assert cli.main(["sweep", *size, "--activation", "relu", "--batch-norm", "true", "--bn-eps", "1e-5,0.5",
                     "--backend", "numpy", "--scheduler", cluster.scheduler.address, "--csv", str(csv)]) == 0
    table = pd.read_csv(csv)
    assert table.bn_eps.tolist() == [1e-5, 0.5]
    assert table.loss_log10[0] != table.loss_log10[1]  # the epsilon changes the network
    capsys.readouterr()
    assert cli.main(["run", *size, "--activation", "relu", "--batch-norm", "--bn-eps", "0.5", "--seed", "0",
                     "--backend", "numpy", "--out", str(tmp_path / "r.json")]) == 0, capsys.readouterr().err
    d = json.loads((tmp_path / "r.json").read_text())["diagnosis"]
    row = table.iloc[1]
    assert d["stack"]["bn_eps"] == 0.5
    for got, want in ((d["decades_per_layer"], row.decades_per_layer),
                      (d["signal_decades_per_layer"], row.signal_decades_per_layer),
                      (d["grad_log10"][0], row.log10_grad_first), (d["grad_log10"][-1], row.log10_grad_last),
                      (d["loss_log10"], row.loss_log10)):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("args,message", [
    (["--sigma-w", "0.5:3"], "--sigma-w '0.5:3': a range is a:b:n"),
    (["--sigma-w", "0.5:3:1"], "a range needs n >= 2 values"),
    (["--sigma-w", "1,x"], "--sigma-w 'x': expected a number"),
    (["--depth", "5:10:4"], "the range's values are not integers"),
    (["--activation", "tanh,sigmod"], "did you mean 'sigmoid'? (at grid point activation='sigmod')"),
    (["--batch-norm", "maybe"], "--batch-norm 'maybe': expected true or false (true/false, yes/no, on/off, 1/0)"),
    (["--sigma-w", "1,1"], "has repeated values"),
    (["--batch-norm", "true,false", "--batch", "1,4"], "needs a batch of at least 2, got --batch=1"),
    # the spec's field names in option words, the grid point in the table's (it said "sigma_w must be > 0")
    (["--sigma-w", "0,1"], "error: --sigma-w must be > 0, got 0.0 (at grid point sigma_w=0.0)"),
    (["--clip", "norm", "--clip-threshold", "-1"], "error: --clip-threshold must be > 0, got -1.0"),
    (["--batch", "0,4"], "error: --batch must be an int >= 1, got 0 (at grid point batch=0)"),
    (["--clip-threshold", "2"], "--clip-threshold sets how --clip clips, and no configuration clips"),
    (["--output-dim", "3"], "--output-dim sizes the head, and no configuration has one"),
    (["--seeds", "0"], "argument --seeds: must be an integer >= 1, got '0'"),
    (["--plot", "phase.gif"], "must end in .png, .svg or .pdf"),
    (["--plot", "phase.png", "--sigma-w", "1,2"], "--plot-y: a phase diagram needs two numeric fields swept, and "
                                                  "this sweep has one besides sigma_w"),
    (["--plot", "phase.png", "--sigma-w", "1,2", "--plot-y", "sigma_w"], "--plot-x and --plot-y must differ"),
    (["--plot", "phase.png", "--activation", "tanh,relu", "--sigma-w", "1", "--plot-y", "activation"],
     "--plot-y activation: the phase diagram's axes are numeric fields, one of depth,"),
    (["--plot", "phase.png", "--sigma-w", "1,2", "--plot-y", "sigma-b"], "--plot-y 'sigma-b' is not a field; one of"),
    (["--sigma-w", "1,2", "--plot-x", "depth"], "--plot-x sets an axis or the value of the phase diagram, and no --plot"),
    (["--plot", "phase.png", "--sigma-w", "1,2", "--input-dim", "none", "--plot-y", "input_dim"],
     "--plot-y input_dim: --input-dim is none, and the phase diagram's axes need numbers"),
    (["--sigma-w", "1,2", "--plot-value", "decades_per_layer"], "--plot-value sets an axis or the value"),
    (["--csv", "t.txt"], "--csv 't.txt' must end in .csv"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "give one or the other"),
    # option words, as every command's (they were the API's: "workers must be an int >= 1", "runs_per_task")
    (["--workers", "0"], "argument --workers: must be an integer >= 1, got '0'"),
    (["--runs-per-task", "0"], "argument --runs-per-task: must be an integer >= 1, got '0'"),
    # a range's message quotes the range typed (it quoted '', the empty end)
    (["--sigma-w", "1::3"], "--sigma-w '1::3': the range a:b:n has no b"),
    (["--sigma-w", "1:3:2.5"], "--sigma-w '1:3:2.5': n = '2.5' of the range a:b:n is not an integer"),
    # integer fields take integers, as gradbench run does (--depth 1e1 was 10 here, refused there)
    (["--depth", "1e1"], "--depth '1e1': expected an integer"),
    (["--depth", "5:1e1:6"], "--depth '5:1e1:6': b = '1e1' of the range a:b:n is not an integer"),
    (["--batch", "4.0"], "--batch '4.0': expected an integer"),
    (["--seeds", "x"], "argument --seeds: must be an integer >= 1, got 'x'"),
    (["--scheduler", "foo"], "--scheduler 'foo' is not a scheduler address such as 'tcp://host:8786'"),
    (["--scheduler", "bar://x:1"], "unknown address scheme 'bar'"),
])
def test_cli_sweep_bad_values_exit_2_with_one_line(args, message, capsys):
    from gradbench import cli

    base = ["sweep", "--depth", "6", "--width", "4"]
    assert cli.main(base + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_cli_sweep_bool_spellings_are_the_listed_pairs():
    """--batch-norm took yes but refused on, and its error listed only true or false: every
    spelling the error lists is taken, in either case."""
    from gradbench.cli.sweep import parse_values

    assert parse_values("batch_norm", "true,yes,On,1") == [True] * 4
    assert parse_values("batch_norm", "false,NO,off,0") == [False] * 4


def test_cli_sweep_bad_paths_exit_2_before_any_run(tmp_path, capsys, monkeypatch):
    from gradbench import cli

    monkeypatch.setattr(gb, "sweep", lambda *a, **k: pytest.fail("the sweep started"))
    (tmp_path / "afile").write_text("x")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("x")
    other = tmp_path / "other"  # another sweep's directory
    from gradbench.sweep.grid import plan
    from gradbench.sweep.store import open_out

    p = plan({"sigma_w": [1.0, 3.0]}, dict(depth=6, width=4), range(1), "auto")
    open_out(other, p, lambda: pytest.fail("pandas is needed only to read rows"))
    _rows(other, p)
    base = ["sweep", "--depth", "6", "--width", "4", "--sigma-w", "1,2"]
    for args, message in [(["--out", str(tmp_path / "afile")], "is a file, not a directory"),
                          (["--out", str(tmp_path / "notes")], "is a non-empty directory without sweep.json"),
                          (["--out", str(other)], "holds a sweep of a different grid or fixed fields (differs in "
                                                  "--sigma-w: the axis 1.0,3.0 in the directory, the axis 1.0,2.0 "
                                                  "here)"),
                          (["--out", str(tmp_path / "no" / "dir")], "does not exist (create it, or pass --mkdir)"),
                          (["--csv", str(tmp_path / "no" / "t.csv")], "does not exist (create it, or pass --mkdir)"),
                          (["--csv", str(tmp_path / "t.csv"), "--plot", str(tmp_path / "t.csv")], "must end in"),
                          (["--csv", str(tmp_path)], "must end in .csv")]:
        assert cli.main(base + args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)
    assert not (tmp_path / "no").exists()


def test_cli_sweep_on_a_local_cluster_of_one_worker(tmp_path, capsys):
    from gradbench import cli

    assert cli.main(["sweep", "--sigma-w", "0.9,1.1", "--depth", "10", "--width", "4", "--workers", "1"]) == 0
    assert " on 1 worker; " in capsys.readouterr().out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and SIGINT as on a terminal")
def test_ctrl_c_in_a_terminal_keeps_finished_rows_and_prints_no_dask_tracebacks(tmp_path):
    """A terminal's Ctrl-C goes to the whole process group, the Dask workers included: the
    sweep stops with status 130, one line saying where the finished runs are, no traceback.
    160 runs (about a minute on 2 CPUs): it is interrupted after the first task's rows, and a
    sweep of 40 could end before the signal on a fast machine."""
    import os
    import signal
    import time

    out = tmp_path / "sw"
    argv = [sys.executable, "-m", "gradbench", "sweep", "--activation", "tanh,relu", "--sigma-w", "0.5:3.0:40",
            "--sigma-b", "0,0.1", "--depth", "3000", "--width", "64", "--batch", "16", "--workers", "2",
            "--out", str(out)]
    # SIGINT at its default in the child: a test run started in the background by a shell (`make test &`)
    # inherits it ignored, and then Python installs no KeyboardInterrupt handler (the sweep ran on, status 0)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(out.glob("rows-*.parquet")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "WARNING" not in err and "ERROR" not in err, err
    assert f"the finished runs are saved in {out}" in err
    assert err.count("interrupted") == 1, err  # a second bare "interrupted" followed
    assert list(out.glob("rows-*.parquet"))


def test_the_readmes_sweep_commands_pass_the_checks(monkeypatch, tmp_path):
    """The README's first sweep example failed its own check (--plot's default y axis sigma_b
    was not a field of the sweep): every `gradbench sweep` line of the README gets as far as
    gb.sweep."""
    import re
    import shlex
    from pathlib import Path

    from gradbench import cli

    class Reached(BaseException):  # past main's handler of internal errors
        pass

    def reached(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(gb, "sweep", reached)
    monkeypatch.chdir(tmp_path)
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text().replace("\\\n", " ")
    lines = [ln for ln in re.findall(r"^gradbench (sweep .*?)(?:\s+#.*)?$", text, flags=re.M)
             if "..." not in ln]  # "sweep ... --scheduler tcp://HOST:8786" shows one option
    assert len(lines) >= 2, lines
    for line in lines:
        with pytest.raises(Reached):
            cli.main(shlex.split(line))


@pytest.fixture
def wrong_server():
    """A local TCP server that is not a Dask scheduler: ``silent`` accepts and never answers
    (what a scheduler's dashboard port does to a Dask client), ``http`` answers as a web server."""
    import socket
    import threading

    servers = []

    def start(kind: str) -> str:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        held = []

        def serve():
            while True:
                try:
                    c, _ = s.accept()
                except OSError:
                    return
                held.append(c)
                if kind == "http":
                    c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

        threading.Thread(target=serve, daemon=True).start()
        servers.append(s)
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"

    yield start
    for s in servers:
        s.close()


def test_a_server_that_is_not_a_scheduler_is_named_within_the_connect_timeout(wrong_server, capsys):
    """gradbench sweep --scheduler at a dashboard port waited forever (600 s, killed), and an
    HTTP server's reply was read as a frame length: 'out of memory: Unable to allocate 3.07 EiB'."""
    import dask

    from gradbench import cli

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        t0 = time.perf_counter()
        with pytest.raises(OSError, match=r"no Dask scheduler answered at tcp://127\.0\.0\.1:\d+ within 2 s "
                                          r"\(something listens there, but not a Dask scheduler"):
            gb.sweep({"sigma_w": [1.0, 2.0]}, depth=4, width=4, client=wrong_server("silent"))
        assert time.perf_counter() - t0 < 15
        with pytest.raises(OSError, match="answered, but not as a Dask scheduler"):
            gb.sweep({"sigma_w": [1.0, 2.0]}, depth=4, width=4, client=wrong_server("http"))
        address = wrong_server("http")
        assert cli.main(["sweep", "--depth", "4", "--width", "4", "--sigma-w", "1,2", "--scheduler", address]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot reach the scheduler '{address}'" in err[0] and "not as a Dask scheduler" in err[0], err


def test_progress_off_a_terminal_prints_plain_lines(cluster, capfd, monkeypatch):
    """progress=True printed nothing but the dashboard line when stderr was a file (nohup,
    SLURM): tqdm turns itself off there. Now 'sweep ...' and a count every
    GRADBENCH_PROGRESS_SECONDS, as a long gradbench run prints."""
    monkeypatch.setenv("GRADBENCH_PROGRESS_SECONDS", "0.02")
    gb.sweep({"sigma_w": [0.8, 1.2, 1.6, 2.0]}, seeds=range(2), depth=300, width=32, client=cluster,
             runs_per_task=1, progress=True)
    err = capfd.readouterr().err.splitlines()
    assert err[0].startswith("dask dashboard: ") and "sweep ..." in err, err
    counts = [line for line in err if line.startswith("sweep: ") and " of 8 runs, " in line]
    assert counts, err


def test_a_busy_dashboard_port_prints_no_dask_warning(capfd):
    """With port 8787 taken (another cluster on a shared machine) Dask's 'UserWarning: Port 8787
    is already in use ... warnings.warn(' lines got through; the address it took is printed."""
    import socket

    s = socket.socket()
    try:
        s.bind(("0.0.0.0", 8787))
        s.listen(1)
    except OSError:
        pass  # taken already: the case itself
    import warnings

    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            gb.sweep({"sigma_w": [1.0, 2.0]}, depth=4, width=4, workers=1, progress=True)
    finally:
        s.close()
    assert not [w for w in seen if "already in use" in str(w.message)], [str(w.message) for w in seen]
    assert "dask dashboard: " in capfd.readouterr().err


def _rows(out, p) -> None:
    """The first run of plan ``p`` as a rows file in ``out`` (the worker's task, in this process):
    a directory without rows is taken over by any sweep."""
    from gradbench.sweep.store import frame, write_rows
    from gradbench.sweep.worker import run_task

    r = p.runs()[0]
    write_rows(str(out), frame(run_task([(r.key, r.config, r.batch, r.seed)], p.backend), p, pd))


def test_sweep_json_has_the_head_of_every_file_and_still_refuses_another_grid(tmp_path):
    """sweep.json had no head (gradbench, axes, fixed, backend only): it has the head of every
    gradbench file now; another grid is refused, and so is a manifest of another gradbench
    version or schema (gradbench 0.1.0's, without a schema: the review's finding 2)."""
    import json

    from gradbench.cli.output import SCHEMA
    from gradbench.sweep.store import MANIFEST, check_out, open_out

    p = plan({"sigma_w": [1.0, 3.0]}, dict(depth=6, width=4), range(2), "auto")
    other = plan({"sigma_w": [1.0, 2.0]}, dict(depth=6, width=4), range(2), "auto")
    out, have = open_out(tmp_path / "new", p, lambda: pd)
    assert have is None
    assert check_out(tmp_path / "new", other) is False  # no rows yet: any sweep takes the directory over
    _rows(tmp_path / "new", p)
    doc = json.loads((tmp_path / "new" / MANIFEST).read_text())
    assert doc["gradbench"] == gb.__version__ and doc["schema"] == SCHEMA and doc["command"] == "sweep"
    assert isinstance(doc["argv"], list) and doc["created"].endswith("+00:00") and doc["machine"]["cores"] >= 1
    assert {k: doc[k] for k in ("axes", "fixed", "backend")} == json.loads(json.dumps(p.identity()))
    assert check_out(tmp_path / "new", p) is True
    with pytest.raises(ValueError, match=r"differs in axis sigma_w"):
        check_out(tmp_path / "new", other)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / MANIFEST).write_text(json.dumps({"gradbench": "0.1.0", **p.identity()}, indent=1))
    _rows(tmp_path / "old", p)
    with pytest.raises(ValueError, match=rf"holds a sweep of gradbench 0\.1\.0 \(schema 1, rows 1\) and this is "
                                         rf"gradbench {gb.__version__} \(schema {SCHEMA}, rows 2\)"):
        check_out(tmp_path / "old", p)


def test_formats_md_describes_every_file_of_a_sweep():
    """docs/formats.md claims to describe every file gradbench writes and had no word on the
    sweep's: the section names every column (run_key of the Parquet files too), the keys of
    sweep.json and the CSV and the phase diagram."""
    from pathlib import Path

    from gradbench.sweep import COLUMNS

    text = (Path(gb.__file__).resolve().parent.parent / "docs" / "formats.md").read_text()
    start = text.index("## `gradbench sweep`")
    section = text[start:text.index("\n## ", start + 1)]
    missing = [k for k in (*COLUMNS, "seed", "run_key", "axes", "fixed", "backend", "schema", "rows", "command")
               if f"`{k}`" not in section]
    assert not missing, missing
    assert all(w in section for w in ("rows-HASH.parquet", "sweep.json", "--csv", "--plot", "phase_diagram"))
    assert "`sweep`" in text[:text.index("## `gradbench run")]  # a command of the head


def _closed_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # bound, then closed: nothing listens there
    return port


@pytest.mark.parametrize("address,says", [
    ("tcp://127.0.0.1:{port}", "the connection was refused"),
    ("127.0.0.1:{port}", "the connection was refused"),  # no scheme: Dask's tcp (it waited 30 s, "answered")
    ("tcp://nosuchhost.invalid:8786", "the host 'nosuchhost.invalid' of tcp://nosuchhost.invalid:8786 does not resolve"),
    ("nosuchhost.invalid:8786", "does not resolve"),
    # other schemes never connected: not "answered, but not as a Dask scheduler"
    ("tls://127.0.0.1:{port}", "no Dask connection to tls://127.0.0.1:"),
    ("inproc://x", "an inproc:// address exists only inside the Python process that made it"),
])
def test_a_closed_port_or_an_unknown_host_is_named_at_once(capsys, address, says):
    """--scheduler at a port nothing listens on, or at a host that does not resolve, waited
    Dask's whole connect timeout (30 s) to say it (without a scheme, as "answered, but not as a
    Dask scheduler"): named at once, in one line."""
    from gradbench import cli

    t0 = time.perf_counter()
    code = cli.main(["sweep", "--depth", "4", "--width", "4", "--sigma-w", "1,2", "--scheduler",
                     address.format(port=_closed_port())])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and time.perf_counter() - t0 < 10
    assert len(err) == 1 and says in err[0] and "answered" not in err[0], err


def test_dasks_own_timeout_reads_as_no_answer(monkeypatch):
    """Dask's connect retries and then raises OSError('Timed out trying to connect ...'): no
    scheduler answered (it read 'answered, but not as a Dask scheduler')."""
    import importlib

    import distributed.comm

    execute = importlib.import_module("gradbench.sweep.execute")  # the module (gradbench.sweep is the function gb.sweep)

    async def gives_up(address, timeout=None, **kwargs):
        raise OSError(f"Timed out trying to connect to {address} after {timeout} s")

    monkeypatch.setattr(distributed.comm, "connect", gives_up)
    monkeypatch.setattr(execute, "_refused_at_once", lambda address: False)
    with pytest.raises(OSError, match=r"no Dask scheduler answered at tcp://10\.0\.0\.1:8786 within 1 s"):
        execute.probe_scheduler("tcp://10.0.0.1:8786", timeout=1.0)


def test_a_list_that_starts_with_a_negative_value_is_a_value(capsys):
    """--activation-param -0.1,0.2 read as an unknown option ('expected one argument'); argparse
    takes '-0.1' alone as a value, and now the list too."""
    from gradbench import cli

    args = cli.build_parser().parse_args(["sweep", "--activation-param", "-0.1,0.2", "--sigma-w", "-.5,1"])
    assert args.activation_param == "-0.1,0.2" and args.sigma_w == "-.5,1"
    assert cli.main(["sweep", "--sigma-w", "-1,1", "--depth", "4", "--width", "4"]) == 2
    err = capsys.readouterr().err
    assert "--sigma-w must be > 0, got -1.0" in err and "expected one argument" not in err


@pytest.fixture(scope="module")
def threads_cluster():
    """A LocalCluster of threads in this process, at a tcp address the command line can reach:
    a patched run_one reaches its workers."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp",
                                  dashboard_address=":0") as lc, distributed.Client(lc) as client:
        yield client


def test_a_disk_error_mid_sweep_is_not_a_scheduler_error(cluster, tmp_path, capsys, monkeypatch):
    """'No space left on device' while writing the third task's rows read 'cannot reach the scheduler
    None', exit 2 (the review): it is a file that could not be written (exit 1), and the finished
    runs are saved; the same command resumes."""
    import errno
    import importlib

    from gradbench import cli

    execute = importlib.import_module("gradbench.sweep.execute")
    real, calls = execute.write_rows, []

    def full(out, df):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(out))
        return real(out, df)

    monkeypatch.setattr(execute, "write_rows", full)
    out = tmp_path / "out"
    argv = ["sweep", "--sigma-w", "0.5:2:6", "--depth", "6", "--width", "4", "--runs-per-task", "1",
            "--scheduler", cluster.scheduler.address, "--out", str(out)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "scheduler" not in err and "error: the sweep stopped: [Errno 28] No space left on device" in err
    assert f"the finished runs are saved in {out}; run the same command again to resume" in err
    assert len(list(out.glob("rows-*.parquet"))) == 2
    monkeypatch.setattr(execute, "write_rows", real)
    assert cli.main(argv) == 0 and "(2 resumed from " in capsys.readouterr().out


def test_a_failing_run_is_named_and_the_finished_runs_are_kept(threads_cluster, tmp_path, capsys, monkeypatch):
    """A run that raised came back as its bare exception, naming no run; through the command line
    an internal error without the resume sentence."""
    from gradbench import cli
    from gradbench.sweep import worker
    from gradbench.sweep.worker import RunFailed

    real = worker.run_one

    def bad(stack, batch, seed, backend="auto"):
        if stack.sigma_w == 1.5 and seed == 1:
            time.sleep(1.0)  # the other runs (milliseconds each) finish and are saved first
            raise RuntimeError("injected")
        return real(stack, batch, seed, backend)

    monkeypatch.setattr(worker, "run_one", bad)
    with pytest.raises(RunFailed, match=r"the run depth=6, sigma_w=1\.5, width=4, batch=16, seed=1 failed: "
                                         r"RuntimeError: injected"):
        gb.sweep({"sigma_w": [1.0, 1.5]}, depth=6, width=4, seeds=range(2), client=threads_cluster, runs_per_task=1)
    out = tmp_path / "out"
    argv = ["sweep", "--sigma-w", "1,1.5", "--depth", "6", "--width", "4", "--seeds", "2", "--runs-per-task", "1",
            "--scheduler", threads_cluster.scheduler.address, "--out", str(out)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert f"a run failed: the finished runs are saved in {out}; run the same command again to resume" in err
    assert "internal error: RunFailed: the run depth=6, sigma_w=1.5, width=4, batch=16, seed=1 failed: " \
        "RuntimeError: injected" in err
    monkeypatch.setattr(worker, "run_one", real)
    assert cli.main(argv) == 0 and "resumed from " in capsys.readouterr().out


def test_a_scheduler_without_workers_says_it_waits(capsys):
    """A scheduler with no workers took the tasks and waited in silence."""
    import importlib

    execute = importlib.import_module("gradbench.sweep.execute")

    class NoWorkers:
        scheduler = type("S", (), {"address": "tcp://10.0.0.1:8786"})()

        def nthreads(self):
            return {}

        def wait_for_workers(self, n):
            raise KeyboardInterrupt  # Ctrl-C while it waits

    with pytest.raises(KeyboardInterrupt):
        execute.execute(NoWorkers(), [], None, None, None, None, None)
    err = capsys.readouterr().err
    assert "the scheduler at tcp://10.0.0.1:8786 has no workers: waiting for one to join" in err


def test_a_rows_file_that_cannot_be_read_says_how_to_go_on(cluster, tmp_path, capsys):
    """A truncated rows file (a copy or a sync cut short) stopped every resume with 'internal error:
    ArrowInvalid'; it names the file and says to delete it (its runs run again, the others stay)."""
    from gradbench import cli

    out = tmp_path / "out"
    argv = ["sweep", "--sigma-w", "1,2", "--depth", "6", "--width", "4", "--runs-per-task", "1",
            "--scheduler", cluster.scheduler.address, "--out", str(out)]
    assert cli.main(argv) == 0
    bad = sorted(out.glob("rows-*.parquet"))[0]
    bad.write_bytes(bad.read_bytes()[:100])
    capsys.readouterr()
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the sweep did not start: {bad} cannot be read (" in err[0], err
    assert "delete it and run the same sweep again" in err[0]
    bad.unlink()
    assert cli.main(argv) == 0 and "(1 resumed from " in capsys.readouterr().out


def test_a_run_refused_for_its_size_is_the_users_error_not_a_failed_run(cluster, capsys):
    """RunFailed wrapped the planner's refusal too: 'internal error: RunFailed: ... PlanRefused', exit 1
    (the review of the change); a run too large for memory is a usage error, exit 2, in its own words."""
    from gradbench import cli

    argv = ["sweep", "--sigma-w", "1", "--depth", "2", "--width", "1000000", "--scheduler", cluster.scheduler.address]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("gradbench sweep: error: this run (depth 2, width 1000000") and "RunFailed" not in err


@pytest.mark.parametrize("seeds", [range(10**20), range(5, 10**30, 7), range(10**8)])
def test_a_sweep_beyond_memory_is_refused_before_it_is_listed(seeds):
    """seeds=range(10**8) grew to 4.5 GB in 30 s before any run; range(10**20) could not even
    be counted (len() overflows)."""
    from gradbench.plan import memory_limits
    from gradbench.sweep.grid import RUN_BYTES

    runs = 2 * (-((seeds.start - seeds.stop) // seeds.step))  # two grid points, each seed once
    assert runs * RUN_BYTES > memory_limits()[1]
    with pytest.raises(ValueError, match=rf"the sweep makes {runs} runs, whose plan and table rows"):
        gb.sweep({"sigma_w": [1.0, 2.0]}, depth=2, width=2, seeds=seeds)


def test_more_workers_than_four_a_cpu_are_refused():
    """workers=100000 on two CPUs spawned processes until the machine hung."""
    from gradbench._env import available_cpus

    most = 4 * available_cpus()
    with pytest.raises(ValueError, match=rf"workers={most + 1} is more than 4 worker processes per CPU .* at most {most}"):
        gb.sweep({"sigma_w": [1.0, 2.0]}, depth=2, width=2, workers=most + 1)


@pytest.mark.parametrize("argv, needle", [
    (["--seeds", "99999999999999999999"], "the sweep makes 99999999999999999999 runs"),
    (["--sigma-w", "0.5:3.0:99999999999999999999"], "--sigma-w '0.5:3.0:99999999999999999999' makes"),
    (["--sigma-w", "0.5:nan:4"], "--sigma-w '0.5:nan:4': the ends a and b of a range must be finite numbers"),
    (["--workers", "100000"], "--workers 100000 is more than 4 worker processes per CPU"),
])
def test_sweep_sizes_beyond_the_machine_are_usage_errors(argv, needle, capsys, tmp_path):
    from gradbench.cli import main

    assert main(["sweep", "--depth", "4", "--width", "4", "--out", str(tmp_path / "sw"), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "sw").exists()


def test_phase_diagram_of_many_panels_wraps_into_rows(tmp_path):
    """A sweep varying several fields drew its 32 panels in one row, an image 21,563 pixels wide (a
    reviewer's finding): a new figure holds at most MAX_PANELS_A_ROW panels a row, every heat map
    and the scatter are drawn, and no empty axes are left."""
    from gradbench.plot_sweep import MAX_PANELS_A_ROW, phase_diagram

    depths = (10, 20, 30, 40, 50, 60, 70)  # seven heat maps of one activation (a critical line each: quick)
    table = pd.concat([_synthetic_table(("tanh",)).assign(depth=d) for d in depths], ignore_index=True)
    fig = phase_diagram(table, path=tmp_path / "many.png")
    heat = [a for a in fig.axes if a.get_title().startswith("depth = ")]
    assert sorted(a.get_title() for a in heat) == sorted(f"depth = {d}" for d in depths)
    panels = heat + [a for a in fig.axes if any(ln.get_label() == "measured = predicted" for ln in a.lines)]
    assert len(panels) == len(depths) + 1
    width, height = fig.get_size_inches()
    assert width <= 5.4 * (MAX_PANELS_A_ROW - 1) + 5.8 and height == 6.0 * 2
    lefts = sorted({round(a.get_position().x0, 3) for a in panels})
    assert len(lefts) == MAX_PANELS_A_ROW  # four columns, two rows
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "many.png").shape[1] < 3000


def test_phase_diagram_of_vanishing_runs_only_labels_and_lines_what_it_shows():
    """A sweep of tanh at sigma_w 0.5-0.9 (every run vanishing; the critical sigma_w, 1.0 at sigma_b
    0 by mean field, off the map): the scatter put a red "exploding" label at its top corner, at
    rates below 0, and the legend named the chi_1 = 1 line, which the map did not show."""
    from gradbench.plot_sweep import phase_diagram

    table = _synthetic_table(("tanh",))
    table = table[table.sigma_w < 0.95].copy()
    # the rates the table holds are mean field's, all below 0, and the line lies beyond the map
    assert (table.signal_decades_per_layer < 0).all() and theory.critical_sigma_w("tanh", 0.0) > 0.95
    fig = phase_diagram(table)
    heat, scatter = fig.axes[:2]
    assert [t.get_text() for t in scatter.texts] == ["vanishing"]
    assert not any("chi_1" in ln.get_label() for ln in heat.lines)
    legend = heat.get_legend()
    assert legend is None or not any("chi_1" in t.get_text() for t in legend.get_texts())
    # the whole table (sigma_w up to 2, both signs): both labels, and the line
    fig = phase_diagram(_synthetic_table(("tanh",)))
    assert sorted(t.get_text() for t in fig.axes[1].texts) == ["exploding", "vanishing"]
    assert any("chi_1" in ln.get_label() for ln in fig.axes[0].lines)


def test_phase_diagram_does_not_colour_chains_cut_to_zero_by_the_rate_above_the_cut():
    """A width-2 ReLU sweep at sigma_w 10-100, sigma_b 0.5 and 1: every run's ||dW_0|| is exactly 0
    (dead units), its verdict vanishing, and its rate a fit over the last 2-4 of 1,500 layers (up to
    +2.2). Those cells were deep red under "exploding". Such runs now count apart (Cells.dies):
    left out of the mean, the colour scale and the scatter, their cells marked as such."""
    from gradbench.plot_sweep import cells, phase_diagram

    table = _synthetic_table(("tanh",))
    table["log10_grad_first"] = 0.0
    table["verdict"] = np.where(table.signal_decades_per_layer < 0, "vanishing", "exploding")
    cut = (table.sigma_b == 0.3) & (table.sigma_w > 1.5)
    table.loc[cut, "log10_grad_first"] = -np.inf
    table.loc[cut, "signal_decades_per_layer"] = 2.2  # a fit above the cut
    table.loc[cut, "verdict"] = "vanishing"
    one = cut & (table.seed == 1) & (table.sigma_w == table.sigma_w.max())
    table.loc[one, "log10_grad_first"] = 0.0  # in one cell a seed keeps its chain: a rate of 1 of 2
    c = cells(table, "sigma_w", "sigma_b", "signal_decades_per_layer")
    kind, row = c.kind(), list(c.ys).index(0.3)
    cols = [j for j, v in enumerate(c.xs) if v > 1.5]
    assert all(kind[row, j] == "dies" for j in cols[:-1]) and kind[row, cols[-1]] == "partial"
    assert np.all(np.isnan(c.mean[row, cols[:-1]])) and c.mean[row, cols[-1]] == 2.2  # the kept seed's
    fig = phase_diagram(table)
    heat, scatter = fig.axes[:2]
    assert heat.collections[0].norm.vmax < 2.2  # the scale is the other runs'
    assert any("dies" in t.get_text() for t in heat.get_legend().get_texts())
    shown = np.concatenate([col.get_offsets()[:, 1] for col in scatter.collections])
    assert np.count_nonzero(shown == 2.2) == 1  # only the seed that keeps its chain


@pytest.mark.parametrize("args,axes", [
    (["--sigma-w", "0.8,1.6", "--depth", "6,10"], ("sigma_w", "depth")),  # no sigma_b: the other swept field
    (["--sigma-b", "0,0.1", "--depth", "6,10"], ("depth", "sigma_b")),  # no sigma_w: likewise across
    (["--sigma-w", "0.8,1.6", "--sigma-b", "0,0.1", "--depth", "6,10"], ("sigma_w", "sigma_b")),  # the defaults
    (["--sigma-w", "0.8,1.6", "--depth", "6,10", "--batch-norm", "true,false"], ("sigma_w", "depth")),  # not a bool
])
def test_cli_sweep_plot_takes_the_other_swept_field_for_a_default_axis_it_lacks(args, axes, monkeypatch, tmp_path):
    """`sweep --sigma-w 0.5:2.5:9 --depth 10,50,100 --plot phase.png` stopped with "--plot-y sigma_b:
    give --sigma-b" though the sweep has a second axis: an axis left to its default that is no
    field of the sweep is the one other numeric field swept (checked before any run)."""
    from gradbench import cli
    from gradbench.cli import sweep as cli_sweep

    seen = []

    def stop(args, grid, fixed):
        check(args, grid, fixed)
        seen.append((args.plot_x, args.plot_y))
        raise cli_sweep.UsageError("stop here")

    check = cli_sweep._check_plot
    monkeypatch.setattr(cli_sweep, "_check_plot", stop)
    assert cli.main(["sweep", "--width", "4", *(["--depth", "6"] if "--depth" not in args else []), *args,
                     "--plot", str(tmp_path / "p.png")]) == 2
    assert seen == [axes]


def test_cli_sweep_plot_names_both_ways_out_when_a_default_axis_is_missing(capsys):
    from gradbench import cli

    # two other numeric fields swept: which one would be a guess
    assert cli.main(["sweep", "--sigma-w", "1,2", "--depth", "6,8", "--width", "4,8", "--plot", "p.png"]) == 2
    err = capsys.readouterr().err
    # review 51: it said "give --sigma-b"; the candidates are named
    assert "--plot-y: this sweep has 2 other numeric fields swept (depth, width): choose one with --plot-y depth or " \
        "--plot-y width" in err, err
