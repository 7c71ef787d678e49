"""Issue 13: the command line and its files keep their promises.

Each test here failed on the command line before the issue was done: outputs checked before
any work, results never lost, Unix behaviour with signals, pipes, full disks and closed
streams, memory planned before any weight is drawn, one weight source, files that describe
themselves, every option honoured or refused. The real CLI runs in a subprocess where the
process matters (signals, pipes, exit statuses).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
import tracemalloc

import numpy as np
import pytest

import gradbench as gb
from gradbench import cli, plan, theory
from gradbench.backends import resolve

PY = sys.executable
SMALL = ["--depth", "12", "--width", "4", "--backend", "numpy"]


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def gradbench(*argv, shell_tail: str = "", env=None, timeout=120, **kw):
    """The real command line in a subprocess (``shell_tail``: e.g. ``| head -1``)."""
    env = {**os.environ, **(env or {})}
    if shell_tail:
        cmd = " ".join([PY, "-m", "gradbench", *map(_quote, argv)]) + " " + shell_tail
        return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=timeout, **kw)
    return subprocess.run([PY, "-m", "gradbench", *argv], capture_output=True, text=True, env=env, timeout=timeout,
                          **kw)


def _quote(a: str) -> str:
    import shlex

    return shlex.quote(a)


@pytest.fixture
def no_compute(monkeypatch):
    """Any backprop is a failure: the command must stop before computing."""
    def refuse(*a, **k):
        raise AssertionError("computed before the options were checked")

    monkeypatch.setattr(gb, "backprop", refuse)
    monkeypatch.setattr(gb.GeneratedParams, "materialize", refuse)


def temp_files(directory) -> list[str]:
    return [f for f in os.listdir(directory) if f.startswith(".gradbench-")]


# ---------------------------------------------------------------- never lose a finished run
@pytest.mark.parametrize("make,argv,needle", [
    (lambda d: (d / "d.json").mkdir(), ["--out", "{d}/d.json"], "is a directory"),
    (lambda d: (d / "afile").write_text("x"), ["--out", "{d}/afile/r.json"], "is not a directory"),
    (lambda d: None, ["--out", "/proc/r.json"], "not writable"),
    (lambda d: None, ["--out", "{d}/a/b/c.json"], "does not exist (create it, or pass --mkdir)"),
    (lambda d: None, ["--plot", "{d}/f.png", "--hist", "{d}/f.png"], "--plot and --hist both write"),
    (lambda d: None, ["--out", "{d}/r.png"], "must end in .json or .npz"),
    (lambda d: None, ["--rows", "0"], "--rows: must be an integer >= 1"),
    (lambda d: None, ["--out", ""], "--out '': an empty path (give a path, or drop --out)"),  # it wrote nothing, status 0
    (lambda d: None, ["--tensorboard", " "], "--tensorboard ' ': an empty path"),
])
def test_outputs_and_options_are_checked_before_computing(make, argv, needle, tmp_path, capsys, no_compute):
    make(tmp_path)
    before = sorted(os.listdir(tmp_path))
    code, out, err = run(["run", *SMALL, *[a.format(d=tmp_path) for a in argv]], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert sorted(os.listdir(tmp_path)) == before  # nothing written, no probe file left


def test_mkdir_creates_the_missing_directories(tmp_path, capsys):
    out = tmp_path / "a" / "b" / "r.json"
    code, _, err = run(["run", *SMALL, "--out", str(out), "--mkdir"], capsys)
    assert code == 0, err
    assert json.loads(out.read_text())["command"] == "run"


def test_rows_below_six_are_honoured(capsys):
    code, out, err = run(["run", *SMALL, "--rows", "3"], capsys)
    assert code == 0, err
    table = out.split("||dL/dW_l||", 1)[1].splitlines()[1:]
    assert sum(line.split()[0].isdigit() for line in table if line.strip()) == 3


def test_a_write_that_fails_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    code, _, err = run(["run", *SMALL, "--out", str(tmp_path / "r.json")], capsys)
    assert code == 1
    assert err.strip() == f"gradbench run: error: cannot write '{tmp_path / 'r.json'}': No space left on device"
    assert os.listdir(tmp_path) == []


def test_results_are_written_before_the_report_and_head_is_quiet(tmp_path):
    out = tmp_path / "r.json"  # a report of 400 kB: more than a pipe holds, so head closes it under us
    done = gradbench("run", "--depth", "5000", "--width", "4", "--rows", "5000", "--backend", "numpy",
                     "--out", str(out), shell_tail="| head -1")
    assert done.returncode == 0 and done.stdout.startswith("gradbench diagnosis:")
    assert "Error" not in done.stderr and "Traceback" not in done.stderr, done.stderr  # no BrokenPipeError
    assert json.loads(out.read_text())["diagnosis"]["verdict"]


def test_a_full_stdout_is_one_line():
    done = gradbench("run", *SMALL, shell_tail="> /dev/full")
    assert done.returncode == 1
    assert done.stderr.strip() == "gradbench run: error: cannot write to standard output: No space left on device"


@pytest.mark.parametrize("argv", [
    ["run", "--depth", "400", "--width", "4", "--stats-only", "--checkpoint", "20", "--backend", "numpy"],
    ["compare", "--depth", "6", "--width", "4", "--configs", "relu,tanh", "--backend", "numpy"],
])
def test_a_closed_stderr_changes_nothing(argv, tmp_path):
    done = gradbench(*argv, "--out", str(tmp_path / "r.json"), shell_tail="2>&-")
    assert done.returncode == 0, done.stdout
    assert "VANISHING" in done.stdout or "verdict" in done.stdout or "configuration" in done.stdout
    assert json.loads((tmp_path / "r.json").read_text())["gradbench"] == gb.__version__
    done = gradbench("run", "--depth", "0", "--width", "4", shell_tail="2>&-")
    assert done.returncode == 2 and done.stdout == ""


def test_sigterm_while_writing_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "r.json"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from gradbench import cli
        from gradbench.diagnose import Diagnosis
        real = Diagnosis.write_json
        def slow(self, f, chunk=65536):
            f.write('{{"partial": ')
            f.flush()
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill` would, in the middle of the file
            real(self, f, chunk)
        Diagnosis.write_json = slow
        sys.exit(cli.main(["run", "--depth", "50", "--width", "4", "--backend", "numpy", "--out", {str(out)!r}]))
    """)
    done = subprocess.run([PY, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "terminated"
    assert os.listdir(tmp_path) == []  # neither the result nor a half-written .gradbench-*.tmp


def test_atomic_writes_never_touch_the_umask(tmp_path, monkeypatch):
    from gradbench import _atomic

    def forbidden(*a):
        raise AssertionError("os.umask changes the mask of every thread of the process")

    monkeypatch.setattr(os, "umask", forbidden)
    path = _atomic.write_atomic(tmp_path / "a.txt", lambda f: f.write("x"))
    assert open(path).read() == "x"
    monkeypatch.undo()
    script = textwrap.dedent(f"""
        import os
        os.umask(0o027)
        from gradbench import _atomic
        _atomic.write_atomic({str(tmp_path / 'b.txt')!r}, lambda f: f.write("y"))
    """)
    subprocess.run([PY, "-c", script], check=True, timeout=60)
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o640  # 0666 less the umask, never 0600


# ---------------------------------------------------------------- refuse before allocating
def test_memory_is_planned_before_any_weight_is_drawn(capsys, monkeypatch):
    monkeypatch.setattr(plan, "available_memory", lambda: 2**30)  # a 1 GiB machine
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        code, _, err = run(["run", "--depth", "20000", "--width", "64", "--batch", "64", "--checkpoint", "0",
                            "--backend", "numpy"], capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "it fits with --stats-only" in err and "GiB" in err and "--checkpoint 0" in err
    assert peak < 20 * 2**20 and time.perf_counter() - t0 < 10  # the weights alone are 0.6 GiB


def test_api_refusal_names_api_arguments():
    stack = gb.Stack(depth=10**6, width=64)
    with pytest.raises(plan.PlanRefused, match="stats_only=True") as err:
        plan.plan_run(stack, 64, checkpoint=None, memory_budget=2**30)
    assert "--" not in str(err.value) and err.value.need > err.value.limit == 2**30


@pytest.mark.parametrize("width, batch", [(1024, 16), (2048, 2)])
def test_a_wide_stats_only_refusal_names_a_shorter_segment_that_fits(width, batch, capsys, monkeypatch):
    """A wide stats-only run is made of its segment's generated weights and gradients (~3 k N^2):
    at the default k ~ sqrt(L) the refusal said "reduce --depth, --width, --batch or --bins" where
    a shorter --checkpoint fits. The segment it names is accepted by the planner (an independent
    check: plan_run with that checkpoint under the same budget) and is the longest that fits."""
    monkeypatch.setattr(plan, "available_memory", lambda: 23 * 2**30)  # this VM's free RAM
    stack = gb.Stack(depth=10**6, width=width)
    code, _, err = run(["run", "--depth", str(10**6), "--width", str(width), "--batch", str(batch), "--stats-only"],
                       capsys)
    k = int(re.search(r"it fits with --stats-only --checkpoint (\d+)", err).group(1))
    assert code == 2 and k < plan.default_segment(stack)
    limit = plan.memory_limits(None, 23 * 2**30)[1]
    backend = resolve("auto")  # the run's: the CLI plans for it
    plan.plan_run(stack, batch, checkpoint=k, stats_only=True, generated=True, memory_budget=limit,
                  diagnose_bins=40, backend=backend)  # no refusal
    longer = next(c for c in plan.segment_candidates(stack) if c > k) if k < plan.segment_candidates(stack)[0] else None
    with pytest.raises(plan.PlanRefused, match=r"checkpoint=\d+, stats_only=True"):
        plan.plan_run(stack, batch, checkpoint=longer, stats_only=True, generated=True, memory_budget=limit,
                      diagnose_bins=40, backend=backend)


def test_numpy_integer_fields_are_python_ints():
    stack = gb.Stack(depth=np.int32(10**7), width=np.int32(1024), sigma_w=np.float32(2.0), batch_norm=np.bool_(True))
    assert type(stack.depth) is int and type(stack.width) is int and type(stack.sigma_w) is float
    assert type(stack.batch_norm) is bool
    assert plan.memory_estimate(stack, np.int32(64)) > 10**7 * 1024 * 1024 * 8  # no wrap-around
    with pytest.raises(MemoryError):
        plan.plan_run(stack, 64, memory_budget=2**40)


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kw,stats_only", [
    (dict(depth=300, width=24, input_dim=700, output_dim=400, loss="mse"), False),
    (dict(depth=300, width=24, input_dim=700, output_dim=400, loss="mse"), True),
    (dict(depth=64, width=8, loss="softmax_ce", output_dim=3000), False),
])
def test_the_estimate_counts_everything_that_is_allocated(kw, stats_only, monkeypatch):
    from gradbench import buffers
    from gradbench.cli.common import plan_probe, run_probe

    # every array through NumPy (traced by tracemalloc, unlike gradbench's small-page mappings),
    # and nothing kept from an earlier call
    monkeypatch.setattr(buffers, "SMALL_PAGES_FROM", 2**62)
    buffers.release()

    stack, batch, bins = gb.Stack(**kw), 200, 500
    probe = plan_probe(stack, batch, 0, "numpy", stats_only=stats_only, bins=bins)

    def run_and_diagnose():
        res, params = run_probe(probe, quiet=True)
        gb.diagnose(res, params, bins=bins)

    peak = _peak(run_and_diagnose)
    est = plan.memory_estimate(stack, batch, checkpoint=probe.plan.checkpoint, stats_only=stats_only,
                               generated=stats_only, keep_weights=probe.plan.keep_weights, diagnose_bins=bins)
    assert peak <= est <= 4 * peak, (peak, est)


def test_the_cli_plans_for_its_backend_as_backprop_does():
    """The CLI planned a stats-only run without its backend, i.e. with the NumPy histogram fill's
    temporaries (17 bytes per entry of a segment) that the compiled fill does not hold, and so
    refused runs that gb.backprop on that backend accepts. Here the free memory lies between the
    two estimates: the numba backend's run is planned, the numpy backend's refused, as in
    gb.backprop."""
    from gradbench.cli.common import UsageError, plan_probe
    from gradbench.histograms import DEFAULT_BINS

    stack, batch, k = gb.Stack(depth=400, width=64, activation="tanh"), 256, 20
    kw = dict(checkpoint=k, stats_only=True, generated=True, diagnose_bins=DEFAULT_BINS)  # the CLI diagnoses too
    est = {b: plan.memory_estimate(stack, batch, backend=b, **kw) for b in ("numba", "numpy")}
    assert est["numba"] < est["numpy"]
    available = int((est["numba"] + est["numpy"]) / 2 / plan.LIMIT_FRACTION)
    for b in ("numba", "numpy"):
        try:
            plan.plan_run(stack, batch, available=available, backend=b, **kw)
            lib_ok = True
        except plan.PlanRefused:
            lib_ok = False
        assert lib_ok == (b == "numba"), b
        if lib_ok:
            assert plan_probe(stack, batch, 0, b, stats_only=True, checkpoint=k, available=available).plan.checkpoint == k
        else:
            with pytest.raises(UsageError, match="needs about"):
                plan_probe(stack, batch, 0, b, stats_only=True, checkpoint=k, available=available)


def test_huge_histogram_bins_are_refused_with_the_option_that_fits(capsys, monkeypatch):
    monkeypatch.setattr(plan, "available_memory", lambda: 4 * 2**30)
    code, _, err = run(["run", *SMALL, "--bins", "100000000"], capsys)
    assert code == 2 and "--bins 40" in err, err


def test_environment_variables_are_validated_by_name():
    import importlib.util

    if importlib.util.find_spec("gradbench._ckernels") is None:
        pytest.skip("the C extension is not built here")
    check = "import gradbench as gb; print(gb.backends()); print(gb.backend_status()['c'])"
    done = subprocess.run([PY, "-c", check], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "GRADBENCH_C_BLAS_MIN_WIDTH": "abc"})
    assert done.returncode == 0, done.stderr
    assert "numpy" in done.stdout and "GRADBENCH_C_BLAS_MIN_WIDTH='abc' is not an integer" in done.stdout
    for backend in ("c", "auto"):
        done = gradbench("run", "--depth", "3", "--width", "3", "--backend", backend,
                         env={"GRADBENCH_C_BLAS_MIN_WIDTH": "abc"})
        assert done.returncode == 2 and "GRADBENCH_C_BLAS_MIN_WIDTH" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    done = gradbench("run", *SMALL, env={"GRADBENCH_PROGRESS_SECONDS": "soon"})
    assert done.returncode == 2 and "GRADBENCH_PROGRESS_SECONDS='soon'" in done.stderr
    # before any work: a run the plan would refuse for its memory is refused for the variable
    # (it was read once the weights were drawn: 4.6-6 s into a 1000 x 256 run), and inf, which
    # "a number > 0" seemed to allow, is refused as not finite
    for value in ("soon", "inf"):
        done = gradbench("run", "--depth", "1000000", "--width", "4096", env={"GRADBENCH_PROGRESS_SECONDS": value})
        assert done.returncode == 2 and f"GRADBENCH_PROGRESS_SECONDS={value!r} must be a finite number > 0" in done.stderr
    # Numba's own import stopped on NUMBA_NUM_THREADS=0 with a bare ValueError naming no variable
    check = "import gradbench as gb; print(gb.backend_status()['numba'])"
    for value in ("0", "-2", "two"):
        done = subprocess.run([PY, "-c", check], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "NUMBA_NUM_THREADS": value})
        assert done.returncode == 0, done.stderr
        assert f"NUMBA_NUM_THREADS={value!r} must be an int >= 1" in done.stdout
    done = gradbench("run", *SMALL[:4], "--backend", "numba", env={"NUMBA_NUM_THREADS": "0"})
    assert done.returncode == 2 and "NUMBA_NUM_THREADS='0'" in done.stderr and "internal error" not in done.stderr


def test_a_rejected_build_flag_is_recorded_and_shown(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(gb.__file__)))
    try:
        import _cbuild
    finally:
        sys.path.pop(0)
    problem = _cbuild.build_problem(["-O0", "-garbage"])
    assert problem and "-garbage" in problem and "error" in problem
    record = tmp_path / "record.txt"
    _cbuild.record_build_problem(problem, record)
    from gradbench.backends import c_not_built_message as not_built_message

    assert problem in not_built_message(str(record)) and "compiler such as gcc" not in not_built_message(str(record))
    _cbuild.record_build_problem(None, record)
    assert not record.exists() and "pip install" in not_built_message(str(record))
    # end to end: the package's record, an extension that is not there, backend_status()
    package_record = os.path.join(os.path.dirname(gb.__file__), "_cbuild_error.txt")
    assert not os.path.exists(package_record)
    try:
        _cbuild.record_build_problem(problem, __import__("pathlib").Path(package_record))
        check = ("import sys; sys.modules['gradbench._ckernels'] = None\n"
                 "import gradbench as gb; print(gb.backend_status()['c'])")
        done = subprocess.run([PY, "-c", check], capture_output=True, text=True, timeout=60)
        assert "-garbage" in done.stdout and "no C compiler" not in done.stdout, done.stdout + done.stderr
    finally:
        os.unlink(package_record)


# ---------------------------------------------------------------- one seed, one network; files
def test_stats_only_keeps_the_network_of_the_seed(tmp_path, capsys):
    argv = ["run", "--depth", "300", "--width", "8", "--activation", "sigmoid", "--backend", "numpy", "--seed", "5"]
    assert run([*argv, "--out", str(tmp_path / "a.json")], capsys)[0] == 0
    code, out, _ = run([*argv, "--stats-only", "--out", str(tmp_path / "b.json")], capsys)
    assert code == 0 and "weights from gradbench.GeneratedParams(stack, seed)" in out
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    np.testing.assert_allclose(np.array(a["diagnosis"]["grad_log10"], dtype=float),
                               np.array(b["diagnosis"]["grad_log10"], dtype=float), rtol=0, atol=1e-9)
    assert a["weights"] == b["weights"] == "gradbench.GeneratedParams(stack, seed)"


def test_every_file_says_what_it_is(tmp_path, capsys):
    code, _, err = run(["run", *SMALL, "--seed", "3", "--batch", "5", "--out", str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    head = json.loads((tmp_path / "r.json").read_text())
    assert head["schema"] == 2 and head["seed"] == 3 and head["batch"] == 5 and head["seconds"] > 0
    assert head["created"].endswith("+00:00") and head["machine"]["cores"] >= 1
    assert head["threads"]["backend"] == "numpy" and head["argv"][0] == "run"


def test_theory_out_writes_infinite_values_as_the_run_json_does(tmp_path, capsys):
    code, _, err = run(["theory", "--out", str(tmp_path / "t.json")], capsys)  # tanh at the critical point
    assert code == 0, err
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["depth_scale"] == "inf" and data["schema"] == 2


def test_theory_at_a_huge_gain_says_exploding(tmp_path, capsys):
    # tanh at sigma_w = 1e4: chi_1 -> 4 sigma_w / (3 sqrt(2 pi)) = 5319 (a one-panel quadrature said 0.05, vanishing)
    code, out, err = run(["theory", "--sigma-w", "1e4", "--out", str(tmp_path / "t.json")], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["chi1"] == pytest.approx(4e4 / (3 * math.sqrt(2 * math.pi)), rel=1e-3)
    assert data["log10_chi1"] == pytest.approx(math.log10(data["chi1"]), rel=1e-12)
    assert data["phase"] == "chaotic (exploding)" and "chaotic (exploding)" in out


@pytest.mark.parametrize("sigma_w", [1e200, 1e-300])
def test_theory_predicts_any_gain_the_computation_supports(sigma_w, tmp_path, capsys):
    """Without a simulation no weights are drawn, so --sigma-w has the theory's own range (any
    finite number > 0): 1e200 was refused as beyond (0, 1e+150] and 1e-300 as beyond what float64
    weights hold, two ranges in the messages of one command. Checked against the closed forms of
    tanh: chi_1 -> 4 sigma_w / (3 sqrt(2 pi)) at large sigma_w, sigma_w^2 tanh'(0)^2 at small."""
    code, out, err = run(["theory", "--sigma-w", repr(sigma_w), "--out", str(tmp_path / "t.json")], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "t.json").read_text())
    want = (math.log10(sigma_w) + math.log10(4 / (3 * math.sqrt(2 * math.pi))) if sigma_w > 1
            else 2 * math.log10(sigma_w))
    assert data["log10_chi1"] == pytest.approx(want, abs=1e-9)
    assert data["sigma_w"] == sigma_w and data["phase"].startswith("chaotic" if sigma_w > 1 else "ordered")
    # the help states the one range, and the weights' range where a simulation draws them
    text = cli.build_parser().commands["theory"].format_help()
    assert "any finite number > 0; a simulation (--depth) draws float64 weights, which hold 1e-290 <=" in " ".join(text.split())
    # the same for --sigma-b: q* = sigma_w^2 E[tanh^2] + sigma_b^2, 10^600 at sigma_b = 1e300
    code, out, err = run(["theory", "--sigma-b", "1e300", "--out", str(tmp_path / "b.json")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "b.json").read_text())["log10_q_star"] == pytest.approx(600.0, abs=1e-9)


def test_npz_beside_json(tmp_path, capsys):
    argv = ["run", "--depth", "40", "--width", "6", "--activation", "relu", "--backend", "numpy"]
    assert run([*argv, "--out", str(tmp_path / "r.json")], capsys)[0] == 0
    assert run([*argv, "--out", str(tmp_path / "r.npz")], capsys)[0] == 0
    ref = gb.Diagnosis.from_dict(json.loads((tmp_path / "r.json").read_text())["diagnosis"])
    with np.load(tmp_path / "r.npz") as z:
        np.testing.assert_array_equal(z["grad_log10"], ref.grad_log10)
        np.testing.assert_array_equal(z["hist_counts"], ref.hist_counts)
        meta, head = json.loads(str(z["meta"])), json.loads(str(z["head"]))
    assert meta["verdict"] == ref.verdict and head["seed"] == 0
    assert gb.Diagnosis.from_npz(tmp_path / "r.npz").to_json() == ref.to_json()
    code, _, err = run(["compare", "--depth", "6", "--width", "4", "--configs", "relu,relu-he", "--backend", "numpy",
                        "--out", str(tmp_path / "c.npz")], capsys)
    assert code == 0, err
    with np.load(tmp_path / "c.npz") as z:
        assert {"relu/grad_log10", "relu-he/grad_log10"} <= set(z.files)
        assert json.loads(str(z["head"]))["labels"]["relu-he"] == "relu + He init"
    assert gb.Diagnosis.from_npz(tmp_path / "c.npz", name="relu-he").verdict in ("stable", "vanishing", "exploding")


def test_formats_and_design_are_documented_where_the_code_says():
    import re
    from pathlib import Path

    root = Path(gb.__file__).resolve().parent.parent
    formats = (root / "docs" / "formats.md").read_text()
    for key in ("schema", "seed", "batch", "created", "machine", "threads", "weights", "seconds", "argv",
                ".npz", "configurations", "labels", "runs", "depth_scale", "q_star"):
        assert f"`{key}" in formats or key in formats, key
    for field in gb.Diagnosis.__dataclass_fields__:
        assert f"`{field}`" in formats, field
    cited = set()
    for path in list(root.glob("gradbench/**/*.py")) + list(root.glob("kernels/*.py")) + list(root.glob("csrc/*")):
        text = path.read_text()
        assert "DESIGN" not in text, path
        cited |= set(re.findall(r"docs/[\w./-]+\.md", text))
    assert cited and all((root / c).exists() for c in cited), cited


# ---------------------------------------------------------------- batch jobs and terminals
def test_plain_progress_lines_when_stderr_is_not_a_terminal():
    # 8000 layers, a line every 0.05 s (20,000 every 0.3 s until 2026-12-06): 3.9 s and 39 lines
    # here against 12.3 s; the lines start after the progress's 1 s delay, the pass took ~3 s
    done = gradbench("run", "--depth", "8000", "--width", "8", "--stats-only", "--checkpoint", "100",
                     "--backend", "numpy", env={"GRADBENCH_PROGRESS_SECONDS": "0.05"})
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if "of 16,000 layers (forward + backward)" in ln]
    assert lines and "seg" not in done.stderr


def test_the_compile_notice_only_when_numba_compiles(capsys, monkeypatch):
    from gradbench.cli import progress

    run(["run", *SMALL[:4], "--backend", "numba"], capsys)  # compiles (and caches) if it must
    code, _, err = run(["run", *SMALL[:4], "--backend", "numba"], capsys)
    assert code == 0 and "compiling" not in err
    monkeypatch.setattr(progress, "numba_compiles", lambda dtype: True)
    code, _, err = run(["run", *SMALL[:4], "--backend", "numba", "--dtype", "float32"], capsys)
    assert code == 0 and "compiling the numba kernels for float32" in err


@pytest.mark.slow
def test_a_cold_numba_cache_says_it_compiles(tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path)}
    first = gradbench("run", *SMALL[:4], "--backend", "numba", env=env, timeout=600)
    second = gradbench("run", *SMALL[:4], "--backend", "numba", env=env, timeout=600)
    assert "compiling the numba kernels" in first.stderr and "compiling" not in second.stderr


def test_help_shows_every_default_and_required_options_first():
    from gradbench.recurrent import cli as recurrent_cli

    parser = cli.build_parser()
    commands = [*parser.commands.items(),  # and the recurrent commands' own (run --cell lstm --help)
                *((f"{name} --cell", sub) for name, sub in recurrent_cli.build_parser().commands.items())]
    for name, sub in commands:
        if name == "bench":  # bench parses its own arguments
            continue
        text = sub.format_help()
        assert "default: None" not in text and "(default None)" not in text, name
        formatter = sub._get_formatter()
        for action in sub._actions:
            assert action.help, (name, action.dest)  # argparse does not even list an option without help
            if action.nargs == 0 or action.required or action.help == "==SUPPRESS==" or "(required)" in action.help:
                continue
            assert "default" in formatter._get_help_string(action), (name, action.dest)
    run_help = parser.commands["run"].format_help()
    # --depth and --width come first, needed unless --torch brings a model
    body = run_help[run_help.index("the stack:"):]
    assert body.index("--depth") < body.index("--activation") and run_help.index("the stack:") < run_help.index("options:")
    assert "needed unless --torch" in run_help
    assert "clip_grad_norm_" in run_help and "backpropagated signal" in run_help


@pytest.mark.parametrize("argv,needle", [
    (["compare", "--activation", "relu"], "not --activation"),
    (["demo", "--activation", "relu", "--no-train"], "not --activation"),
    (["compare", "--activations", "relu", "--configs", "tanh"], "not both"),
    (["compare", "--configs", ","], "names no configuration"),
    (["compare", "--configs", "relu,relu"], "more than once"),
    (["compare", "--configs", "sigmoid", "--activation-param", "0.1"], "--activation-param is used by"),
    (["train", "--demo", "deep-sigmoid", "--momentum", "0.5"], "--momentum is used by --optimizer momentum only"),
    (["train", "--demo", "deep-sigmoid", "--depth", "5"], "--demo brings its own stack and data: --depth"),
    (["train", "--demo", "deep-sigmoid", "--lr", "inf"], "--lr: must be a finite number > 0"),
    (["train", "--demo", "deep-sigmoid", "--optimizer", "momentum", "--momentum", "nan"], "in [0, 1)"),
    (["theory", "--sigma-w", "-1"], "--sigma-w: must be a finite number > 0"),
    (["theory", "--sigma-w", "nan"], "--sigma-w: must be a finite number > 0"),
    (["theory", "--sigma-w", "1e300", "--depth", "3", "--width", "4"],
     "--sigma-w=1e300 is beyond what float64 weights hold: its draws would overflow to inf; float64 holds "
     "1e-290 <= --sigma-w <= 1e290"),
    (["theory", "--sigma-b", "-0.5"], "--sigma-b: must be a finite number >= 0"),
    (["theory", "--width", "0", "--depth", "3"], "--width: must be an integer >= 1"),
    (["theory", "--width", "4"], "--width without --depth"),
    (["theory", "--seed", "3"], "--seed needs a simulation"),
    (["theory", "--activation", "RELU"], "did you mean 'relu'"),
    (["run", "--depth", "3", "--width", "3", "--activation", "RELU"], "did you mean 'relu'"),
    # the option's name, not the field's ("activation_param (ELU alpha) must be > 0")
    (["run", "--depth", "3", "--width", "3", "--activation", "elu", "--activation-param", "-1"],
     "error: --activation-param must be > 0 for elu (its alpha), got -1.0"),
    (["run", "--cell", "rnn", "--steps", "3", "--hidden", "3", "--activation", "elu", "--activation-param", "0"],
     "error: --activation-param must be > 0 for elu (its alpha), got 0.0"),
    (["run", "--depth", "3", "--width", "3", "--dpi", "100"], "--dpi sets the resolution of plots"),
    (["run", "--depth", "3", "--width", "3", "--mkdir"], "--mkdir creates the directories"),
    (["run", "--depth", "4", "--width", "3", "--stats-only", "--clip", "norm", "--clip-on", "global"], "--stats-only"),
    (["run", "--depth", "4", "--width", "3", "--residual", "2", "--checkpoint", "3"], "--checkpoint 3 must be"),
    (["bench", "nowhere/bench-quick.json"], "make bench-quick"),
])
def test_every_option_is_honoured_or_refused(argv, needle, capsys, tmp_path, monkeypatch, no_compute):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(argv, capsys)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert os.listdir(tmp_path) == []


def test_options_a_demo_used_to_ignore_are_honoured(tmp_path, capsys):
    code, _, err = run(["train", "--demo", "deep-sigmoid", "--epochs", "1", "--weight-decay", "5", "--out",
                        str(tmp_path / "t.json")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "t.json").read_text())["runs"]["deep-sigmoid"]["settings"]["weight_decay"] == 5
    code, _, err = run(["compare", "--depth", "4", "--width", "4", "--configs", "leaky_relu,relu",
                        "--activation-param", "0.2", "--backend", "numpy", "--out", str(tmp_path / "c.json")], capsys)
    assert code == 0, err
    configs = json.loads((tmp_path / "c.json").read_text())["configurations"]
    assert configs["leaky_relu"]["stack"]["activation_param"] == 0.2
    assert configs["relu"]["stack"]["activation_param"] is None


def test_pytorch_and_keras_init_names(tmp_path, capsys):
    for alias, name in (("kaiming_normal", "he_normal"), ("kaiming_uniform", "he_uniform"),
                        ("glorot_normal", "xavier_normal"), ("glorot_uniform", "xavier_uniform")):
        assert gb.Stack(depth=2, width=2, init=alias) == gb.Stack(depth=2, width=2, init=name)
    code, _, _ = run(["run", *SMALL, "--init", "kaiming_normal", "--out", str(tmp_path / "r.json")], capsys)
    assert code == 0
    assert json.loads((tmp_path / "r.json").read_text())["diagnosis"]["stack"]["init"] == "he_normal"


@pytest.mark.parametrize("error", [RuntimeError("boom"), ValueError("a bug, not a user mistake")])
def test_internal_errors_say_so_and_debug_shows_the_traceback(error, capsys, monkeypatch):
    def broken(*a, **k):
        raise error

    monkeypatch.setattr(sys.modules["gradbench.diagnose"], "diagnose", broken)
    code, _, err = run(["run", *SMALL], capsys)
    assert code == 1
    assert err.strip() == (f"gradbench run: internal error: {type(error).__name__}: {error} "
                           "(rerun with --debug for the traceback)")
    code, _, err = run(["run", *SMALL, "--debug"], capsys)
    assert code == 1 and "Traceback" in err and "rerun with --debug" not in err


def test_the_bench_report_of_the_readme_says_where_its_file_comes_from(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a fresh clone has no benchmarks/results/*.json
    code, _, err = run(["bench", "benchmarks/results/bench-quick.json"], capsys)
    assert code == 2 and "make bench-quick" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- pictures at depth
def _png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_dpi_is_honoured(tmp_path, capsys):
    for dpi in (60, 120):
        code, _, err = run(["run", *SMALL, "--plot", str(tmp_path / f"f{dpi}.png"), "--dpi", str(dpi)], capsys)
        assert code == 0, err
    w60, w120 = _png_size(tmp_path / "f60.png")[0], _png_size(tmp_path / "f120.png")[0]
    assert 1.8 < w120 / w60 < 2.2


def test_the_demo_histogram_shows_the_most_telling_configuration(tmp_path, capsys, monkeypatch):
    from gradbench import plot
    from gradbench.cli.demo import most_telling

    titles = []  # the histogram figure's title: the configuration's label (its two panels: absolute, relative)
    real = plot.save
    monkeypatch.setattr(plot, "save", lambda fig, path, *a, **k: (
        titles.append(fig._suptitle.get_text()) if fig._suptitle is not None else None) or real(fig, path, *a, **k))
    code, _, err = run(["demo", "--no-train", "--depth", "20", "--width", "8", "--backend", "numpy",
                        "--out-dir", str(tmp_path)], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "gradients.json").read_text())
    diags = {k: gb.Diagnosis.from_dict(v) for k, v in data["configurations"].items()}
    spans = {k: np.ptp(d.grad_log10[np.isfinite(d.grad_log10)]) for k, d in diags.items()}
    best = max(spans, key=spans.get)
    assert most_telling(diags) == best != next(iter(diags))  # not simply the first
    histogram = [t for t in titles if t.startswith("Gradient histograms per layer: ")]
    assert len(histogram) == 1 and data["labels"][best] in histogram[0], titles


# ---------------------------------------------------------------- compare: a named remedy fixes its own fields
# The rule (gradbench compare --help): sigmoid-xavier, tanh-xavier and relu-he fix --init and --sigma-w,
# sigmoid-bn --batch-norm, sigmoid-residual --residual, tanh-clip and relu-clip --clip, --clip-threshold
# and --clip-on; an option for a field that a named configuration fixes is refused (it used to be
# ignored: the row was the same with or without it).
@pytest.mark.parametrize("configs,extra,needle", [
    ("tanh-clip", ["--clip", "value", "--clip-threshold", "0.01"], "--clip value --clip-threshold 0.01: configuration tanh-clip"),
    ("tanh-clip", ["--clip-on", "global"], "--clip-on global: configuration tanh-clip"),
    ("relu-clip", ["--clip-threshold", "100"], "--clip-threshold 100: configuration relu-clip"),
    ("sigmoid-residual", ["--residual", "3"], "--residual 3: configuration sigmoid-residual"),
    ("relu-he", ["--sigma-w", "3"], "--sigma-w 3: configuration relu-he"),
    ("relu-he", ["--init", "xavier_normal"], "--init xavier_normal: configuration relu-he"),
    ("sigmoid,tanh-xavier", ["--sigma-w", "2"], "--sigma-w 2: configuration tanh-xavier"),
    ("sigmoid-bn", ["--batch-norm"], "--batch-norm: configuration sigmoid-bn"),
    (None, ["--sigma-w", "2"], "configuration sigmoid-xavier (one of the default configurations)"),
])
def test_compare_refuses_an_option_that_a_named_configuration_fixes(configs, extra, needle, capsys, tmp_path,
                                                                     monkeypatch, no_compute):
    monkeypatch.chdir(tmp_path)
    argv = ["compare", "--depth", "6", "--width", "4", *(["--configs", configs] if configs else []), *extra]
    code, out, err = run(argv, capsys)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("configs,extra", [
    ("relu-clip", ["--clip-threshold", "100"]),
    ("tanh-clip", ["--clip", "value", "--clip-threshold", "0.01"]),
    ("sigmoid-residual", ["--residual", "3"]),
    ("relu-he", ["--sigma-w", "3"]),
])
def test_the_spelling_a_refusal_suggests_runs_the_stack_that_was_asked_for(configs, extra, capsys, tmp_path):
    base = ["--depth", "6", "--width", "4", "--backend", "numpy"]
    code, _, err = run(["compare", *base, "--configs", configs, *extra], capsys)
    assert code == 2
    suggested = err.strip().split("name the plain activation: ", 1)[1].split()
    out_json = tmp_path / "c.json"
    code, out, err = run(["compare", *base, *suggested, "--out", str(out_json)], capsys)
    assert code == 0, err
    (name, entry), = json.loads(out_json.read_text())["configurations"].items()
    named = dict(zip(extra[::2], extra[1::2]))
    fields = {"--clip": "clip", "--clip-threshold": "clip_threshold", "--residual": "residual", "--sigma-w": "sigma_w"}
    for opt, value in named.items():  # what the user typed, in the stack that ran
        got = entry["stack"][fields[opt]]
        assert (got == value if isinstance(got, str) else got == float(value)), (opt, got)
    # and the diagnosis is the one of that stack through the Python API (the CLI's seeds)
    stack = gb.Stack(**{**entry["stack"]})
    x = gb.gaussian_input(stack, 16, seed=np.random.default_rng([0, 1]))
    from gradbench.params import random_targets

    params = gb.GeneratedParams(stack, 0).materialize()
    ref = gb.diagnose(gb.backprop(stack, params, x, random_targets(stack, 16, 0), backend="numpy"), params)
    np.testing.assert_array_equal(np.asarray(entry["grad_log10"], dtype=float), ref.grad_log10)


def test_compare_header_lists_the_options_every_configuration_gets(capsys):
    code, out, err = run(["compare", "--depth", "6", "--width", "4", "--backend", "numpy", "--configs", "relu,relu-he",
                          "--clip", "norm", "--clip-on", "layer", "--clip-threshold", "100", "--sigma-b", "0.5"], capsys)
    assert code == 0, err
    assert "clip norm 100 on layer, sigma_b=0.5;" in out.splitlines()[0]


@pytest.mark.parametrize("argv,needle", [
    (["compare", "--configs", "relu", "--clip-threshold", "3"], "--clip-threshold sets how --clip clips, and no configuration clips"),
    (["compare", "--configs", "relu", "--clip-on", "layer"], "--clip-on sets how --clip clips"),
    (["compare", "--configs", "relu", "--residual-scale", "0.5"], "--residual-scale scales the residual branch"),
    (["run", "--depth", "4", "--width", "4", "--clip-threshold", "0.5"], "--clip-threshold sets how --clip clips, and there is no --clip"),
    (["run", "--depth", "4", "--width", "4", "--clip-on", "layer"], "--clip-on sets how --clip clips"),
    (["run", "--depth", "4", "--width", "4", "--residual-scale", "0.5"], "--residual-scale scales the residual branch, and there is no --residual"),
    (["train", "--depth", "4", "--width", "4", "--clip-threshold", "3"], "--clip-threshold sets how --clip clips"),
    (["run", "--depth", "4", "--width", "4", "--output-dim", "3"], "--output-dim sizes the head, and the loss is sum_squares"),
])
def test_clip_and_residual_details_without_clipping_or_residual_are_refused(argv, needle, capsys, tmp_path,
                                                                           monkeypatch, no_compute):
    # they changed nothing: run --clip-threshold 0.5 printed the same report as without it
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(importlib.import_module("gradbench.train"), "backprop", no_compute_backprop)
    code, out, err = run(argv, capsys)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and needle in err, err


def no_compute_backprop(*a, **k):
    raise AssertionError("computed before the options were checked")


def test_a_compare_with_every_field_a_configuration_does_not_fix_is_honoured(tmp_path, capsys):
    # sigmoid-residual fixes --residual, not --residual-scale: the scale reaches its stack
    out_json = tmp_path / "c.json"
    code, _, err = run(["compare", "--depth", "4", "--width", "4", "--backend", "numpy", "--configs",
                        "sigmoid-residual", "--residual-scale", "0.5", "--out", str(out_json)], capsys)
    assert code == 0, err
    stack = json.loads(out_json.read_text())["configurations"]["sigmoid-residual"]["stack"]
    assert stack["residual"] == 2 and stack["residual_scale"] == 0.5


# ---------------------------------------------------------------- usage errors, not internal errors
# Each of these was "internal error: ValueError: ... (rerun with --debug ...)", exit 1, and some only
# after work had started (weights drawn, earlier demos trained).
TRAIN = ["train", "--depth", "3", "--width", "4", "--epochs", "2"]


@pytest.mark.parametrize("argv,needle", [
    (["run", "--depth", "10", "--width", "4", "--batch-norm", "--batch", "1"],
     "the stack has batch norm, which needs --batch >= 2, got --batch 1"),
    (["compare", "--configs", "sigmoid-bn", "--batch", "1"], "configuration sigmoid-bn has batch norm, which needs --batch >= 2"),
    (["compare", "--configs", "sigmoid", "--batch-norm", "--batch", "1"], "configuration sigmoid has batch norm"),
    (["compare", "--batch", "1"], "configuration sigmoid-bn has batch norm"),  # a default configuration
    (["demo", "--no-train", "--no-cells", "--batch", "1"], "configuration sigmoid-bn has batch norm"),
    ([*TRAIN, "--samples", "1"], "--samples: must be an integer >= 2, got '1'"),
    ([*TRAIN, "--batch-norm", "--batch-size", "1"], "the stack has batch norm, which needs mini-batches of at least 2"),
    # 200 samples in batches of 199: the last batch has 1 sample (gradbench.train's rule)
    ([*TRAIN, "--batch-norm", "--batch-size", "199"], "--batch-size 199 with 200 samples leaves a batch of 1"),
    ([*TRAIN, "--batch-norm", "--batch-size", "3", "--samples", "7"], "--batch-size 3 with 7 samples leaves a batch of 1"),
    (["train", "--demo", "batchnorm", "--batch-size", "1"], "demo batchnorm has batch norm"),
    (["train", "--demo", "all", "--batch-size", "1"], "demo batchnorm has batch norm"),  # before deep-sigmoid trains
    ([*TRAIN, "--input-dim", "5"], "--input-dim 5 does not match --dataset moons, whose points have 2 features"),
    ([*TRAIN, "--output-dim", "3"], "--loss bce learns the 2 labels of --dataset moons with one output: it needs "
                                    "--output-dim 1, got --output-dim 3"),
    ([*TRAIN, "--loss", "softmax_ce", "--output-dim", "1"], "--loss softmax_ce needs --output-dim >= 2"),
])
def test_usage_errors_are_one_line_exit_2_before_any_work(argv, needle, capsys, tmp_path, monkeypatch, no_compute):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(importlib.import_module("gradbench.train"), "backprop", no_compute_backprop)
    code, out, err = run(argv, capsys)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert "internal error" not in err
    assert os.listdir(tmp_path) == []


def test_train_batch_sizes_that_leave_no_batch_of_one_are_honoured(tmp_path, capsys):
    # 7 samples in batches of 2: 2 + 2 + 2 + 1 is refused above; batches of 3 of 8 samples: 3 + 3 + 2
    out_json = tmp_path / "t.json"
    code, _, err = run([*TRAIN, "--batch-norm", "--batch-size", "3", "--samples", "8", "--out", str(out_json)], capsys)
    assert code == 0, err
    settings = json.loads(out_json.read_text())["runs"]["custom"]["settings"]
    assert settings["batch_size"] == 3 and settings["n_samples"] == 8


def test_train_input_dim_equal_to_the_data_dimension_is_the_same_run(tmp_path, capsys):
    runs = []
    for extra in ([], ["--input-dim", "2"]):
        out_json = tmp_path / f"t{len(runs)}.json"
        code, _, err = run([*TRAIN, *extra, "--out", str(out_json)], capsys)
        assert code == 0, err
        runs.append(json.loads(out_json.read_text())["runs"]["custom"])
    assert runs[0]["stack"]["input_dim"] == runs[1]["stack"]["input_dim"] == 2
    assert runs[0]["eval_loss"] == runs[1]["eval_loss"]


def test_compare_shows_the_rate_that_decided_the_verdict(capsys):
    """The table's one rate column was ||dW_l||'s: 'relu, base init  exploding  -0.010' read as
    a contradiction, the verdict coming from ||dL/dh_l|| (+0.58 per layer), shown only in the text."""
    code, out, err = run(["compare", "--depth", "30", "--width", "16", "--backend", "numpy", "--configs", "relu,sigmoid"],
                         capsys)
    assert code == 0, err
    lines = out.splitlines()
    head = next(ln for ln in lines if ln.startswith("configuration"))
    assert "dL/dh rate" in head and "dW rate" in head
    relu = next(ln for ln in lines if ln.startswith("relu"))
    verdict, signal_rate, dw_rate = relu.split()[3:6]
    assert verdict == "exploding" and float(signal_rate) > 0.1 and abs(float(dw_rate)) < 0.1, relu
    assert any(ln.startswith("rates: decades per layer going down") for ln in lines)


@pytest.mark.parametrize("argv,needle", [
    # taken in silence before: an option --list ignores, empty and repeated names, the default set for ''
    (["train", "--list", "--demo", "deep-sigmoid"], "gradbench train: error: --list prints the demos and runs nothing: drop --demo"),
    (["compare", "--configs", ""], "--configs '' names no configuration"),
    (["compare", "--configs", "relu,,tanh"], "--configs 'relu,,tanh' has an empty name"),
    (["train", "--demo", "adam,adam"], "--demo names adam more than once"),
    (["compare", "--cells", "rnn,lstm,lstm", "--steps", "10", "--hidden", "4"], "--cells names lstm more than once"),
    # the recurrent options as the stacks' (the field's words, or 1e200 accepted, before)
    (["run", "--cell", "gru", "--steps", "10", "--hidden", "4", "--sigma-w", "1e200"], "argument --sigma-w: must be a number in (0, 1e150]"),
    (["run", "--cell", "rnn", "--steps", "0", "--hidden", "4"], "argument --steps: must be an integer >= 1, got '0'"),
    (["run", "--cell", "rnn", "--steps", "10", "--hidden", "4", "--checkpoint", "-1"], "argument --checkpoint: must be an integer >= 0"),
    # unknown options: the subcommand's message, and a hint ('gradbench: error: unrecognized arguments' before)
    (["run", "--depht", "5", "--width", "4"], "gradbench run: error: unrecognized arguments: --depht 5; did you mean --depth?"),
    (["run", "--steps", "10", "--hidden", "4"], "describe recurrent nets: add --cell rnn, lstm or gru"),
    (["run", "--cell", "rnn", "--steps", "10", "--hidden", "4", "--rows2", "5"], "gradbench run: error: unrecognized arguments: --rows2 5"),
    (["run", "--cell", "rnn", "--steps", "10", "--hidden", "4", "--dpi", "50"], "--dpi sets the resolution of plots, and no plot"),
])
def test_more_refusals_exit_2_with_one_line(argv, needle, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err


# ---------------------------------------------------------------- outputs that clash with each other
@pytest.fixture
def no_work(monkeypatch, no_compute):
    """No backprop, no training, no sweep: the command must stop before any work."""
    train_module = importlib.import_module("gradbench.train")  # gb.train is the function

    def refuse(*a, **k):
        raise AssertionError("worked before the outputs were checked")

    monkeypatch.setattr(train_module, "train", refuse)
    monkeypatch.setattr(train_module, "run_demo", refuse)
    monkeypatch.setattr(gb, "sweep", refuse)


@pytest.mark.parametrize("argv,needle", [
    (["run", *SMALL, "--out", "{d}/same.json", "--tensorboard", "{d}/same.json"],
     "--out and --tensorboard both write"),
    (["run", *SMALL, "--hist", "{d}/tb/h.png", "--tensorboard", "{d}/tb"], "lies inside --tensorboard"),
    (["run", *SMALL, "--plot", "{d}/a.png", "--tensorboard", "{d}/a.png/tb", "--mkdir"], "lies inside --plot"),
    (["run", *SMALL, "--out", "{d}/a.json", "--plot", "{d}/a.json/p.png", "--mkdir"], "lies inside --out"),
    (["train", "--depth", "3", "--width", "4", "--epochs", "1", "--out", "{d}/tt.json", "--tensorboard",
      "{d}/tt.json"], "--out and --tensorboard both write"),
    (["train", "--demo", "adam", "--ratio-plot", "{d}/runs/r.png", "--tensorboard", "{d}/runs"],
     "lies inside --tensorboard"),
    (["sweep", "--depth", "6", "--width", "4", "--sigma-w", "1,2", "--out", "{d}/sw7.csv", "--csv", "{d}/sw7.csv"],
     "--csv and --out both write"),
    (["sweep", "--depth", "6", "--width", "4", "--sigma-w", "1,2", "--out", "{d}/sw", "--csv", "{d}/sw/t.csv"],
     "lies inside --out"),
    (["compare", "--depth", "6", "--width", "4", "--out", "{d}/c.json", "--plot", "{d}/c.json/p.png", "--mkdir"],
     "lies inside --out"),
    (["compare", "--cells", "rnn", "--steps", "5", "--hidden", "4", "--out", "{d}/c.json", "--plot",
      "{d}/c.json/p.png", "--mkdir"], "lies inside --out"),
    (["run", "--cell", "lstm", "--steps", "5", "--hidden", "4", "--plot", "{d}/p.png", "--out", "{d}/p.png/r.json",
      "--mkdir"], "lies inside --plot"),
    (["run", "--cell", "rnn", "--steps", "5", "--hidden", "3", "--out", "{d}/x.json", "--tensorboard", "{d}/x.json"],
     "--out and --tensorboard both write"),
])
def test_outputs_that_clash_are_refused_before_any_work(argv, needle, tmp_path, capsys, no_work):
    """run --out x --tensorboard x wrote x and then died (status 1), train made x/custom and then
    could not write x, sweep ran everything and then could not write its CSV over its --out."""
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed: pip install '.[test]'")
    code, out, err = run([a.format(d=tmp_path) for a in argv], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert os.listdir(tmp_path) == []  # nothing written, no directory made


def test_demo_training_json_has_the_head_of_train_out(tmp_path, capsys, monkeypatch):
    """training.json describes the training runs as `train --out` does: weights from
    init_params(stack, seed) and, for layerwise-pretraining, gradbench.pretrain (the head said
    init_params for it too), no probe seed or batch (each run's settings carry its own); the
    demo's --seed reaches the training runs too (their settings say seed 3), --batch only the
    probe runs (training uses its own mini-batches)."""
    train_module = importlib.import_module("gradbench.train")  # gb.train is the function
    real = train_module.run_demo
    monkeypatch.setattr(train_module, "run_demo", lambda name, **kw: real(name, **{**kw, "epochs": 1}))
    code, _, err = run(["demo", "--seed", "3", "--batch", "5", "--depth", "6", "--width", "4", "--backend", "numpy",
                        "--no-cells", "--out-dir", str(tmp_path / "d")], capsys)
    assert code == 0, err
    probes = json.loads((tmp_path / "d" / "gradients.json").read_text())
    assert (probes["seed"], probes["batch"], probes["weights"]) == (3, 5, "gradbench.GeneratedParams(stack, seed)")
    training = json.loads((tmp_path / "d" / "training.json").read_text())
    pretraining = "gradbench.pretrain(stack, X, epochs=100, optimizer='adam', lr=0.01, seed=seed)"
    assert training["weights"] == f"gradbench.init_params(stack, seed); layerwise-pretraining: {pretraining}"
    assert training["command"] == "demo"
    assert "seed" not in training and "batch" not in training
    assert all(r["settings"]["seed"] == 3 for r in training["runs"].values())
    runs = training["runs"]
    assert runs["layerwise-pretraining"]["settings"]["weights"] == pretraining
    assert runs["layerwise-pretraining"]["settings"]["pretrain"] == dict(epochs=100, optimizer="adam", lr=0.01, seed=3)
    assert all(r["settings"]["pretrain"] is None for k, r in runs.items() if k != "layerwise-pretraining")
    code, _, err = run(["train", "--demo", "adam,layerwise-pretraining", "--epochs", "1", "--backend", "numpy",
                        "--out", str(tmp_path / "t.json")], capsys)
    assert code == 0, err
    train_out = json.loads((tmp_path / "t.json").read_text())
    assert set(training) == set(train_out)
    assert {k: training[k] for k in ("schema", "weights", "threads")} == \
        {k: train_out[k] for k in ("schema", "weights", "threads")}


def test_the_version_is_the_one_formats_md_says_writes_this_schema():
    """Every file said "gradbench": "0.1.0" with "schema": 2, while formats.md called 0.1.0's
    files schema 1 (and signal_decades_per_layer missing from gradbench < 0.2): the version
    that writes schema 2 is 0.2.0, in pyproject.toml and gradbench.__version__ alike, and every
    version formats.md names as older is older."""
    from pathlib import Path

    from gradbench.cli.output import SCHEMA

    root = Path(gb.__file__).resolve().parent.parent
    formats = (root / "docs" / "formats.md").read_text()
    m = re.search(r"version of this format: (\d+), written by gradbench (\d+\.\d+\.\d+)", formats)
    assert m and int(m[1]) == SCHEMA and m[2] == gb.__version__
    project = re.search(r'^version = "([^"]+)"', (root / "pyproject.toml").read_text(), re.M)
    assert project and project[1] == gb.__version__

    def key(v):
        return tuple(int(p) for p in v.split("."))

    older = set(re.findall(r"gradbench (\d+\.\d+\.\d+)", formats)) - {m[2]}
    assert older and all(key(v) < key(gb.__version__) for v in older), older


def test_formats_md_names_the_values_the_files_hold(tmp_path, capsys):
    """formats.md left out values the files hold: dead is "nan" outside the ReLU family,
    first_nonfinite_backward can be L (the loss's gradient itself), run --torch's weights are
    "the model in FILE", the recurrent training files have five arrays with null, and
    diverged_epoch is an index (0 = the first epoch)."""
    from pathlib import Path

    code, _, err = run(["run", *SMALL, "--activation", "tanh", "--out", str(tmp_path / "t.json")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "t.json").read_text())["diagnosis"]["dead"] == ["nan"] * 12
    formats = (Path(gb.__file__).resolve().parent.parent / "docs" / "formats.md").read_text()
    rows = {}
    for line in formats.splitlines():  # the first table naming a key: the head's, then run --out's
        if line.startswith("| `"):
            rows.setdefault(line.split("|")[1].strip(), line)
    assert '`"nan"` for every other activation' in rows["`dead`"]
    assert "is L when the loss's gradient dL/dh_L" in rows["`first_nonfinite_forward`, `first_nonfinite_backward`"]
    assert "`the model in FILE`" in rows["`weights`"] and "run --torch" in rows["`stack`"]
    assert "In these five arrays (`loss`, `eval_loss`, `accuracy`, `signal_start`, `signal_end`)" in formats
    assert "0 = the first epoch" in formats and "four arrays" not in formats


def test_theory_compares_a_simulation_with_chi_1_along_the_stack(tmp_path, capsys):
    """ELU at the He gain: q* = inf, chi_1 = 1 there ("critical"), but a 200-layer stack explodes
    slowly (+0.011 decades a layer at width 256). The simulation is compared with chi_1 at each
    layer's own length, which predicts that; chi_1 at q* predicted 0."""
    code, out, err = run(["theory", "--activation", "elu", "--sigma-w", repr(math.sqrt(2)), "--depth", "200",
                          "--width", "256", "--out", str(tmp_path / "t.json")], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["phase"] == "critical" and "only in the limit q -> inf" in out
    along = data["along_stack"]["decades_per_layer"]
    assert along == pytest.approx(theory.along_stack("elu", 200, sigma_w=math.sqrt(2)).fitted_rate(20, 180), rel=1e-12)
    assert data["along_stack"]["fit_layers"] == [20, 179]
    assert abs(data["decades_per_layer"]) < 1e-12 < 0.008 < along
    assert data["simulated_decades_per_layer"] == pytest.approx(along, rel=0.15)
    assert f"(prediction {along:+.6g};" in out


def test_theory_of_a_narrow_relu_stack_predicts_its_finite_width_drift(tmp_path, capsys):
    """ReLU at the He gain is critical by mean field (0 decades a layer) but drifts at width 32:
    the command predicts -0.0179 decades a layer (theory.finite_width_lambda1) and compares the
    simulation with that."""
    code, out, err = run(["theory", "--activation", "relu", "--sigma-w", repr(math.sqrt(2)), "--depth", "1000",
                          "--width", "32", "--batch", "64", "--out", str(tmp_path / "t.json")], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "t.json").read_text())
    lam = theory.finite_width_lambda1("relu", 32, math.sqrt(2))
    assert data["finite_width_lambda1"] == lam and abs(data["decades_per_layer"]) < 1e-12
    assert "at width 32" in out and f"(prediction {lam / math.log(10):+.6g})" in out
    assert data["simulated_decades_per_layer"] == pytest.approx(lam / math.log(10), abs=0.003)


@pytest.mark.parametrize("value,dtype", [("1e200", "float64"), ("1e-300", "float64"), ("1e-40", "float32")])
def test_both_ends_of_the_sigma_w_range_name_the_command_lines_limit(value, dtype, capsys):
    """--sigma-w 1e200 was refused as outside (0, 1e+150] while 1e-300 was told 'float64 holds
    1e-290 <= --sigma-w <= 1e290': both now say the command line stops at 1e150."""
    code, out, err = run(["run", "--depth", "3", "--width", "4", "--sigma-w", value, "--dtype", dtype], capsys)
    assert code == 2 and "1e150" in err and "1e+150" not in err, err


def test_theory_json_holds_the_prediction_it_compared_and_narrow_relu_needs_no_simulation(tmp_path, capsys):
    """The printed comparison used finite_width_lambda1 (in decades) while the JSON held it in nats
    only beside mean field's 2.4e-17; --width without --depth was refused for ReLU."""
    code, out, err = run(["theory", "--activation", "relu", "--sigma-w", repr(math.sqrt(2)), "--width", "32",
                          "--out", str(tmp_path / "t.json")], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "t.json").read_text())
    lam = theory.finite_width_lambda1("relu", 32, math.sqrt(2))
    assert data["finite_width_decades_per_layer"] == data["prediction_decades_per_layer"] == lam / math.log(10)
    assert "decades going down the stack" in out and "+0 (to rounding) decades going down the stack" in out
    assert "e-17" not in out


def test_theory_says_why_a_dead_simulation_has_no_slope(capsys):
    code, out, err = run(["theory", "--activation", "relu", "--width", "2", "--depth", "200"], capsys)
    assert code == 0, err
    assert "too few layers with a finite, nonzero signal to fit a slope: every unit of layer" in out
    assert "is dead (z <= 0 for the whole batch)" in out


@pytest.mark.parametrize("argv", [
    ["train", "--dataset", "circles", "--data-seed", "3", "--samples", "40", "--depth", "2", "--width", "4",
     "--epochs", "3", "--backend", "numpy"],
    ["train", "--demo", "shallow-sigmoid", "--epochs", "2", "--backend", "numpy"],
])
def test_a_training_file_says_how_its_data_were_drawn(argv, tmp_path, capsys):
    # the file's settings reproduce the run: its data from settings["data"], its weights and
    # shuffling from the seed (a data seed or a noise left out would give other losses)
    out_json = tmp_path / "t.json"
    code, _, err = run([*argv, "--out", str(out_json)], capsys)
    assert code == 0, err
    (name, r), = json.loads(out_json.read_text())["runs"].items()
    s = r["settings"]
    X, y = eval(s["data"], {"gradbench": gb})
    assert len(X) == s["n_samples"]
    again = gb.train(gb.Stack(**r["stack"]), X, y, epochs=s["epochs"], batch_size=s["batch_size"],
                     optimizer=s["optimizer"], lr=s["lr"], seed=s["seed"], backend=s["backend"])
    assert again.loss.tolist() == r["loss"]


def test_bins_the_diagnosis_would_refuse_are_refused_before_the_run(capsys, monkeypatch):
    """The plan took up to 90 % of the memory and the diagnosis refused histograms above half of
    what was left after the run: `run --depth 100000 --width 16 --bins 14000` ran, then stopped
    as "internal error" with exit 1. Memory where the plan fits and the histograms do not: exit 2
    before any backward pass (gb.backprop is replaced by one that fails the test)."""
    stack = gb.Stack(depth=12, width=4)
    bins = 10**6
    need = plan.diagnose_bytes(stack, False, False, plan.DEFAULT_BINS, bins)  # about 8 L bins bytes
    assert need > 8 * 12 * bins
    monkeypatch.setattr(plan, "available_memory", lambda: int(1.6 * need))  # the plan's 90 % holds it
    monkeypatch.setattr(gb, "backprop", lambda *a, **k: pytest.fail("the run started"))
    code, _, err = run(["run", *SMALL, "--bins", str(bins)], capsys)
    assert code == 2 and "internal error" not in err, err
    assert f"--bins {bins:,}".replace(",", "") in err and "more than half the memory available" in err, err


def test_a_long_write_of_the_output_files_shows_progress(tmp_path, capsys, monkeypatch):
    """A 10^6-layer run's --out JSON (238 MB) took 41 s to write after the last progress line,
    with nothing on the terminal: the writing has its own line, as the run and diagnosis have."""
    import time as _time

    import gradbench.cli.run as run_cmd

    slow = run_cmd.write_diagnoses

    def write_slowly(*args, **kw):
        _time.sleep(1.6)  # past the progress line's 1 s delay
        return slow(*args, **kw)

    monkeypatch.setattr(run_cmd, "write_diagnoses", write_slowly)
    monkeypatch.setenv("GRADBENCH_PROGRESS_SECONDS", "0.2")
    code, out, err = run(["run", *SMALL, "--out", str(tmp_path / "r.json"), "--plot", str(tmp_path / "f.png")], capsys)
    assert code == 0 and (tmp_path / "r.json").exists() and (tmp_path / "f.png").exists()
    # which file, and how many of them are done
    assert "writing: 0 of 2 files, " in err and str(tmp_path / "r.json") in err, err


def test_the_readme_says_chaos_under_a_signal_clip_is_not_seen_and_it_is_not(capsys):
    """README: a chaotic stack under a signal clip is not seen (the clipped signal is not the
    loss's derivative): tanh at N(0, 1) entries, depth 200, width 32, clipped at 1, is not said
    chaotic while the same forward without the clip is. This test fails once the clipped row is
    said chaotic, and the README's sentence must change with it."""
    argv = ["compare", "--depth", "200", "--width", "32", "--configs", "tanh,tanh-clip"]
    code, out, err = run(argv + ["--backend", "c"], capsys)
    assert code == 0, err
    plain, clipped = out.split("tanh + signal clip ||dL/dh_l|| <= 1: STABLE")
    assert "the forward pass is chaotic" in plain.split("tanh, base init: EXPLODING")[1]
    assert "chaotic" not in clipped
