"""Findings of a second review of sweeps: a grid point that can never fit refused only when a
worker reached it, temporary files of a killed sweep left in its directory, ``--out sw.json``
made a directory of that name."""

from __future__ import annotations

import importlib
import os
import time

import distributed
import numpy as np
import pytest

import gradbench as gb
from gradbench.plan import PlanRefused, available_memory, plan_run
from gradbench.backends import resolve
from gradbench.sweep.grid import plan

sweep_module = importlib.import_module("gradbench.sweep")  # gb.sweep is the function of the same name


@pytest.fixture(scope="module")
def threads_cluster():
    """A LocalCluster of threads in this process: what is patched here reaches its workers."""
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as lc, \
            distributed.Client(lc) as client:
        yield client


def _no_cluster(*args, **kwargs):
    raise AssertionError("a cluster was started for a sweep that cannot run")


def _worker_refusal(settings: dict, batch: int, available: float) -> str:
    """What the worker's backprop says of that run: plan_run as engine.backprop calls it for a
    sweep's run (run_one: generated weights, stats_only, no histograms, checkpoint and budget default)."""
    with pytest.raises(PlanRefused) as exc:
        plan_run(gb.Stack(**settings), batch, stats_only=True, generated=True, hist_bins=0,
                 available=lambda: available, backend=resolve("auto"))
    return str(exc.value)


# ---------------------------------------------------------------- 1. a point that can never fit, refused up front
def test_a_point_that_can_never_fit_is_refused_before_anything_starts(tmp_path, monkeypatch):
    # the review's case: --width 64,30000 at depth 3000 ran 17 runs, then "needs about 1496 GiB"
    monkeypatch.setattr(sweep_module, "connect", _no_cluster)
    out = tmp_path / "sw"
    t0 = time.perf_counter()
    with pytest.raises(PlanRefused) as exc:
        gb.sweep({"width": [64, 30000], "sigma_w": [0.5, 1.0]}, depth=3000, seeds=range(3), out=out, workers=1)
    seconds = time.perf_counter() - t0
    assert seconds < 2.0
    assert not out.exists()  # no directory, no sweep.json, no rows
    text = str(exc.value)
    assert text.endswith(" (at grid point width=30000, sigma_w=0.5)")  # the first point that cannot fit
    # the worker's own message for that run, word for word
    assert text.startswith(_worker_refusal(dict(depth=3000, width=30000, sigma_w=0.5), 16, available_memory()))
    assert "1496" in text and exc.value.need > 1000 * 2**30


def test_the_command_line_refuses_it_before_any_row_with_exit_2(tmp_path, capsys, monkeypatch):
    from gradbench import cli

    monkeypatch.setattr(sweep_module, "connect", _no_cluster)
    out = tmp_path / "swbig"
    assert cli.main(["sweep", "--depth", "3000", "--width", "64,30000", "--sigma-w", "0.5:2:6", "--seeds", "3",
                     "--workers", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs about 1496" in err[0] and "(at grid point width=30000, sigma_w=0.5)" in err[0]
    assert not out.exists()


def test_the_check_uses_the_memory_the_local_workers_plan_with(tmp_path, monkeypatch):
    """A LocalCluster's workers plan with 90 % of this machine's available memory: with 40 MiB
    available, width 512 at depth 200 (~58 MiB) is refused, as the worker would refuse it;
    width 64 (~1 MiB) is not."""
    monkeypatch.setattr(sweep_module, "connect", _no_cluster)
    monkeypatch.setattr(sweep_module, "available_memory", lambda: 40 * 2**20, raising=False)
    with pytest.raises(PlanRefused) as exc:
        gb.sweep({"width": [64, 512]}, depth=200, batch=8, out=tmp_path / "sw")
    assert str(exc.value) == _worker_refusal(dict(depth=200, width=512), 8, 40 * 2**20) + " (at grid point width=512)"
    assert "36.00 MiB (90% of the available RAM)" in str(exc.value)
    assert not (tmp_path / "sw").exists()


def test_check_memory_refuses_exactly_the_points_the_worker_refuses():
    from gradbench.sweep.grid import check_memory

    p = plan({"width": [16, 128, 256, 512], "batch": [4, 64]}, {"depth": 300}, range(2))
    backend = resolve("auto")
    for available in (2e6, 8e6, 3e7, 1e8, 1e9):
        refused = []
        for point in p.points():
            settings = {**p.fixed, **point}
            batch = settings.pop("batch")
            try:
                plan_run(gb.Stack(**settings), batch, stats_only=True, generated=True, hist_bins=0,
                         available=lambda: available, backend=backend)
            except PlanRefused:
                refused.append(point)
        if refused:
            with pytest.raises(PlanRefused, match=r"\(at grid point width=(\d+), batch=(\d+)\)$") as exc:
                check_memory(p, available, backend)
            first = refused[0]
            assert str(exc.value).endswith(f"(at grid point width={first['width']}, batch={first['batch']})")
        else:
            check_memory(p, available, backend)
    assert available == 1e9 and not refused  # the last budget fits every point, the first do not


def test_a_grid_of_thousands_of_points_checks_well_under_a_second():
    from gradbench.sweep.grid import check_memory

    p = plan({"sigma_w": list(np.linspace(0.5, 3, 40)), "sigma_b": [0.0, 0.1, 0.2, 0.3, 0.4],
              "width": [64, 128, 256, 512, 1024]}, {"depth": 3000}, range(3))
    assert len(p.points()) == 1000
    backend = resolve("auto")
    t0 = time.perf_counter()
    check_memory(p, available_memory(), backend)
    assert time.perf_counter() - t0 < 0.5  # measured 0.04 s (35 us a point)


def test_a_cluster_given_is_checked_with_its_workers_memory_before_any_run_is_submitted(threads_cluster, tmp_path,
                                                                                         monkeypatch):
    """With client=, the memory is the workers' (here patched to 40 MiB in the worker's module,
    which the in-process workers run), not this machine's, and nothing is submitted."""
    from gradbench.sweep import worker

    monkeypatch.setattr(worker, "available_memory", lambda: 40 * 2**20, raising=False)
    monkeypatch.setattr("gradbench.buffers.held", lambda: 0)  # what an engine of this process keeps
    monkeypatch.setattr(threads_cluster, "submit", _no_cluster)
    with pytest.raises(PlanRefused) as exc:
        gb.sweep({"width": [64, 512]}, depth=200, batch=8, client=threads_cluster, out=tmp_path / "sw")
    assert str(exc.value).endswith("(at grid point width=512)") and "36.00 MiB" in str(exc.value)
    assert not list((tmp_path / "sw").glob("rows-*"))


# ---------------------------------------------------------------- 2. a killed sweep's temporary files
GRID, FIXED = {"sigma_w": [0.9, 1.1]}, dict(depth=6, width=4, batch=2)
STALE = (".gradbench-0123456789ab.parquet.tmp", ".gradbench-ba9876543210.sweep.json.tmp")  # the sweep's names
OTHERS = {  # not the sweep's: another writer's temporary file (a --csv there), the user's files
    ".gradbench-0123456789ab.tmp": b"", ".gradbench-0123456789ab.csv": b"x", "notes.txt": b"mine",
    ".gradbench-xyz.parquet.tmp": b"", "rows-notes.txt": b"kept", "gradbench-0123456789ab.parquet.tmp": b"",
}


def _plant(out, names=STALE, others=OTHERS):
    for name in names:
        (out / name).write_bytes(b"")  # SIGKILL between creating it and writing: empty, as the review found
    for name, data in others.items():
        (out / name).write_bytes(data)


def _untouched(out, others=OTHERS):
    return all((out / name).read_bytes() == data for name, data in others.items())


def test_a_resumed_sweep_removes_the_temporary_files_a_killed_one_left(threads_cluster, tmp_path):
    out = tmp_path / "sw6"
    gb.sweep(GRID, client=threads_cluster, out=out, **FIXED)
    _plant(out)
    table = gb.sweep(GRID, client=threads_cluster, out=out, **FIXED)  # resumed: nothing to run
    assert table.attrs["sweep"]["resumed"] == 2 and table.attrs["sweep"]["computed"] == 0
    assert not [name for name in STALE if (out / name).exists()]
    assert _untouched(out)


def test_a_directory_left_by_a_sweep_killed_before_its_manifest_is_taken_over(threads_cluster, tmp_path):
    """Killed before sweep.json was written: the directory holds only the sweep's own files."""
    out = tmp_path / "sw"
    out.mkdir()
    _plant(out, others={})
    (out / ".sweep.lock").write_bytes(b"")
    table = gb.sweep(GRID, client=threads_cluster, out=out, **FIXED)
    assert len(table) == 2 and (out / "sweep.json").exists()
    assert not [name for name in STALE if (out / name).exists()]


def test_a_temporary_file_of_this_sweep_is_removed_at_its_end(threads_cluster, tmp_path, monkeypatch):
    """One a write could not remove (planted by a wrapped write_rows) is gone once the sweep ends."""
    from gradbench.sweep import execute

    real = execute.write_rows

    def leaky(out, table):
        _plant(tmp_path / "sw", names=STALE[:1], others={})
        return real(out, table)

    monkeypatch.setattr(execute, "write_rows", leaky)
    out = tmp_path / "sw"
    table = gb.sweep(GRID, client=threads_cluster, out=out, **FIXED)
    assert len(table) == 2 and len(list(out.glob("rows-*.parquet"))) >= 1
    assert not (out / STALE[0]).exists()


def test_a_sweep_running_in_a_directory_keeps_another_out_and_its_files(threads_cluster, tmp_path, capsys):
    """Two sweeps of one grid could share a directory (the resume check lets them): the second
    would delete the first's temporary file while it writes it. The second is refused."""
    from gradbench import cli
    from gradbench.sweep import store

    out = tmp_path / "sw"
    gb.sweep(GRID, client=threads_cluster, out=out, **FIXED)
    with store.hold(str(out)):  # a sweep running there now, writing a rows file
        _plant(out, names=STALE[:1], others={})
        with pytest.raises(store.OutInUse, match="is in use by a sweep running now"):
            gb.sweep(GRID, client=threads_cluster, out=out, **FIXED)
        argv = ["sweep", "--sigma-w", "0.9,1.1", "--depth", "6", "--width", "4", "--batch", "2", "--out", str(out),
                "--scheduler", threads_cluster.scheduler.address]
        assert cli.main(argv) == 2
        assert "error: --out " in capsys.readouterr().err and (out / STALE[0]).exists()  # its file kept
    assert gb.sweep(GRID, client=threads_cluster, out=out, **FIXED).attrs["sweep"]["resumed"] == 2
    assert not (out / STALE[0]).exists()


# ---------------------------------------------------------------- 3. --out sw.json
@pytest.mark.parametrize("name", ["sw.json", "sw.CSV", "table.parquet", "g.npz", "sw.json/"])
def test_an_out_named_as_a_file_is_refused(tmp_path, capsys, monkeypatch, name):
    """Every other command's --out is a file (.json, .npz); the sweep made a directory sw.json."""
    from gradbench import cli

    monkeypatch.setattr(sweep_module, "connect", _no_cluster)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sweep", "--sigma-w", "0.9,1.1", "--depth", "6", "--width", "4", "--out", name]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"error: --out {name!r} is named as a" in err[0]
    assert "the sweep's --out is a directory: it will hold sweep.json and a rows-<hash>.parquet file" in err[0]
    assert "--csv " in err[0] and not os.listdir(tmp_path)


def test_a_sweep_directory_named_as_a_file_still_resumes(threads_cluster, tmp_path, capsys):
    """One made before (gb.sweep's out= takes any name) is the user's sweep: resumed, not refused."""
    from gradbench import cli

    out = tmp_path / "old.json"
    gb.sweep(GRID, client=threads_cluster, out=out, **FIXED)
    argv = ["sweep", "--sigma-w", "0.9,1.1", "--depth", "6", "--width", "4", "--batch", "2", "--out", str(out),
            "--scheduler", threads_cluster.scheduler.address]
    assert cli.main(argv) == 0 and "(2 resumed from " in capsys.readouterr().out
    (tmp_path / "empty.json").mkdir()  # a directory, but not a sweep's: named as a file, refused
    assert cli.main(argv[:-3] + [str(tmp_path / "empty.json")] + argv[-2:]) == 2


def test_range_values_without_linspace_noise_and_no_gain_run_refuses():
    """Review 51: 0.5:3.0:26 stored 1.2000000000000002 (a table filter `== 1.2` found nothing), and
    --sigma-w 1e151 was swept where `gradbench run` refuses it."""
    from gradbench.cli.common import UsageError
    from gradbench.cli.sweep import parse_values

    values = parse_values("sigma_w", "0.5:3.0:26")
    assert values == [round(0.5 + 0.1 * i, 10) for i in range(26)] and 1.2 in values
    assert parse_values("sigma_b", "0:1e-17:3") == [0.0, 5e-18, 1e-17]
    with pytest.raises(UsageError, match=r"1e\+151 is above 1e150"):
        parse_values("sigma_w", "1,1e151")


def test_numpy_dtypes_are_taken_by_name():
    """Review 51: gb.sweep(..., dtype=np.float32) was a TypeError where Stack takes it (README: a
    NumPy dtype is stored as its name)."""
    from gradbench.sweep.grid import plan

    p = plan({"sigma_w": [1.0], "dtype": [np.float64, np.dtype("float32")]}, dict(depth=3, width=2), [0])
    assert p.axes["dtype"] == ["float64", "float32"]
    assert plan({"sigma_w": [1.0]}, dict(depth=3, width=2, dtype=np.float32), [0]).fixed["dtype"] == "float32"


@pytest.mark.parametrize("stop, code, word", [(KeyboardInterrupt, 130, "interrupted"), ("terminated", 143, "terminated")])
def test_sigterm_says_where_the_finished_runs_are_as_ctrl_c_does(monkeypatch, tmp_path, capsys, stop, code, word):
    """Review 51: SIGTERM printed only "terminated" where Ctrl-C says where the finished runs are."""
    from gradbench import cli
    from gradbench.cli.process import Terminated

    exc = Terminated if stop == "terminated" else stop

    def stopped(*args, **kwargs):
        raise exc()

    monkeypatch.setattr(gb, "sweep", stopped)
    out = tmp_path / "sw"
    rc = cli.main(["sweep", "--sigma-w", "1,2", "--depth", "3", "--width", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == code and f"{word}: the finished runs are saved in {out}; run the same command again" in err, err
    assert err.count(word) == 1, err


def test_a_fixed_value_refused_alone_names_no_grid_point():
    """A fixed value that no grid point can take is the fixed value's fault: the message named
    the first grid point ("clip_threshold must be > 0, got -1.0 (at grid point clip=None)"), a
    field that has nothing to do with it; a value on the grid still names its point."""
    with pytest.raises(ValueError) as info:
        gb.sweep({"clip": [None, "norm"]}, depth=3, width=4, clip_threshold=-1.0)
    assert str(info.value) == "clip_threshold must be > 0, got -1.0"
    with pytest.raises(ValueError, match=r"\(at grid point clip=None, clip_threshold=0\.0\)$"):
        gb.sweep({"clip": [None, "norm"], "clip_threshold": [0.0, 1.0]}, depth=3, width=4)


def test_an_activation_param_beside_activations_without_one_says_what_to_do():
    """activation_param fixed over an activation axis whose members do not all take one: the
    refusal says how to get both (two sweeps) instead of leaving the user without a way."""
    with pytest.raises(ValueError) as info:
        gb.sweep({"activation": ["tanh", "elu"]}, depth=3, width=4, activation_param=0.2)
    assert str(info.value) == ("activation_param is only used by leaky_relu, prelu, elu; activation='tanh' takes none; "
                               "sweep the activations that take it on their own, and the others in a second sweep "
                               "(the two tables concatenate)")
