"""The gradbench command line: exit codes, outputs, JSON files, plots, the bench hook."""

import json
import re
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import gradbench as gb
from gradbench import cli
from gradbench.cli import common
from gradbench.cli.compare import DEMO_CONFIGS
from gradbench.diagnose import Diagnosis


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- run
def test_run_prints_the_diagnosis_and_writes_json_and_plots(tmp_path, capsys):
    out_json, flow, hist = tmp_path / "r.json", tmp_path / "flow.png", tmp_path / "h.svg"
    code, out, err = run(["run", "--depth", "25", "--width", "8", "--activation", "sigmoid", "--backend", "numpy",
                          "--out", str(out_json), "--plot", str(flow), "--hist", str(hist)], capsys)
    assert code == 0, err
    assert "verdict: VANISHING" in out and "decades per layer" in out
    data = json.loads(out_json.read_text())
    assert data["command"] == "run" and data["gradbench"] == gb.__version__
    d = Diagnosis.from_dict(data["diagnosis"])
    # the same numbers as the Python API with the CLI's seeds
    stack = gb.Stack(depth=25, width=8, activation="sigmoid")
    x = gb.gaussian_input(stack, 16, seed=np.random.default_rng([0, 1]))
    params = gb.GeneratedParams(stack, 0).materialize()  # the CLI's one weight source
    ref = gb.diagnose(gb.backprop(stack, params, x, backend="numpy"), params)
    np.testing.assert_array_equal(d.grad_log10, ref.grad_log10)
    assert d.verdict == ref.verdict == "vanishing"
    assert flow.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and flow.stat().st_size > 10_000
    assert "<svg" in hist.read_text()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".gradbench-")]


def test_run_with_a_head_and_options(capsys):
    code, out, err = run(["run", "--depth", "6", "--width", "5", "--activation", "relu", "--init", "he_normal",
                          "--loss", "softmax_ce", "--output-dim", "3", "--input-dim", "2", "--batch-norm",
                          "--residual", "2", "--clip", "norm", "--clip-on", "layer", "--batch", "4",
                          "--backend", "numpy"], capsys)
    assert code == 0, err
    assert "batch norm" in out and "residual every 2" in out and "loss softmax_ce" in out


@pytest.mark.parametrize("argv,needle", [
    (["run", "--depth", "3", "--width", "4", "--activation", "sigmod"], "did you mean 'sigmoid'"),
    (["run", "--depth", "0", "--width", "4"], "--depth: must be an integer >= 1"),
    (["run", "--depth", "4", "--width", "4", "--residual", "3"], "--residual=3 must divide --depth=4"),
    (["run", "--depth", "4", "--width", "4", "--sigma-w", "-1"], "--sigma-w: must be a number in (0"),
    (["run", "--depth", "4", "--width", "4", "--loss", "softmax_ce"], "--output-dim >= 2"),
    (["run", "--depth", "4", "--width", "4", "--plot", "flow.txt"], ".png, .svg or .pdf"),
    (["run", "--depth", "4", "--width", "4", "--out", "r.txt"], ".json or .npz"),
    (["run", "--depth", "4", "--width", "4", "--batch", "0"], "--batch"),
    (["run", "--depth", "four", "--width", "4"], "--depth: must be an integer >= 1, got 'four'"),
    (["run", "--width", "4"], "--depth"),
    (["run", "--depth", "4", "--width", "4", "--bogus"], "unrecognized arguments"),
    (["run", "--depth", "4", "--width", "4", "--backend", "cuda"], "invalid choice"),
    (["compare", "--configs", "sigmoid,nonsense"], "unknown configuration"),
    (["train", "--demo", "nope"], "unknown demo"),
    (["train"], "--demo"),
    (["frobnicate"], "invalid choice"),
    # --bn-eps: on every stack command (sweep had it alone), checked as sweep checks it, and
    # refused where there is no batch norm, as --residual-scale without --residual
    (["run", "--depth", "4", "--width", "4", "--batch-norm", "--bn-eps", "0"], "--bn-eps: must be a finite number > 0"),
    (["run", "--depth", "4", "--width", "4", "--batch-norm", "--bn-eps", "inf"], "--bn-eps: must be a finite number"),
    (["run", "--depth", "4", "--width", "4", "--bn-eps", "0.1"], "--bn-eps sets the epsilon of batch norm, and there "
                                                                 "is no --batch-norm"),
    (["compare", "--configs", "relu,tanh", "--bn-eps", "0.1"], "no configuration has batch norm (give --batch-norm, "
                                                               "or --configs sigmoid-bn)"),
    (["train", "--depth", "3", "--width", "4", "--bn-eps", "0.1"], "there is no --batch-norm"),
    (["train", "--demo", "adam", "--bn-eps", "0.1"], "--bn-eps would be ignored"),
    (["sweep", "--depth", "4", "--width", "4", "--bn-eps", "0.1"], "no configuration has batch norm (give "
                                                                   "--batch-norm true)"),
])
def test_bad_options_exit_2_with_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert needle in lines[0]
    assert os.listdir(tmp_path) == []  # nothing written


HELPS = [[], *([c] for c in cli.COMMANDS), ["run", "--cell", "lstm"], ["compare", "--cells", "rnn"],
         ["theory", "--cell", "rnn"], ["train", "--demo", "memory-rnn"]]


@pytest.mark.parametrize("head", HELPS, ids=lambda h: " ".join(h) or "gradbench")
def test_help_has_examples_that_parse(head, capsys):
    """README: every subcommand has --help with examples. Each example's options are what the
    subcommand's parser accepts (an example once named a --configs that demo does not take)."""
    import shlex

    from gradbench.recurrent import cli as recurrent_cli

    code, out, _ = run([*head, "--help"], capsys)
    assert code == 0
    text = out.split("examples:", 1)[1].replace("\\\n", " ")  # continued lines joined
    examples = [line.strip() for line in text.splitlines() if line.strip().startswith("gradbench ")]
    assert examples, f"gradbench {' '.join(head)} --help has no examples"
    if not head:  # the main help's lines are the subcommands'
        return
    for line in examples:
        argv = shlex.split(re.split(r"\s{3,}|\s+\(|&&", line)[0])[1:]  # up to the explanation
        if argv[0] == "bench":  # benchreport's own parser
            from gradbench import benchreport

            parser, argv = benchreport.build_parser(), argv[1:]
        else:
            parser = recurrent_cli.build_parser() if recurrent_cli.claims(argv) else cli.build_parser()
        try:
            args, unknown = parser.parse_known_args(argv)
        except SystemExit as exc:
            raise AssertionError(f"example {line!r} does not parse: {capsys.readouterr().err}") from exc
        assert not unknown, f"example {line!r}: unrecognised {unknown}"


def test_no_command_is_a_usage_error(capsys):
    assert run([], capsys)[0] == 2


# ---------------------------------------------------------------- compare and demo
def test_compare_table_and_verdicts(tmp_path, capsys):
    out_json = tmp_path / "cmp.json"
    code, out, err = run(["compare", "--depth", "30", "--width", "16", "--configs",
                          "sigmoid-xavier,relu,relu-he,tanh-clip", "--backend", "numpy", "--out", str(out_json)],
                         capsys)
    assert code == 0, err
    rows = {line.split("  ")[0].strip(): line for line in out.splitlines() if line.startswith(("sigmoid", "relu", "tanh"))}
    assert "vanishing" in rows["sigmoid, Xavier init"]
    assert "exploding" in rows["relu, base init"]
    assert "stable" in rows["relu + He init"]
    assert "stable" in rows["tanh + signal clip ||dL/dh_l|| <= 1"]
    assert "||dW_0||" in out and "||dW_29||" in out
    data = json.loads(out_json.read_text())
    # keyed by the --configs names, with the table's labels beside them
    assert list(data["configurations"]) == ["sigmoid-xavier", "relu", "relu-he", "tanh-clip"]
    assert set(data["labels"].values()) == set(rows) and data["labels"]["relu-he"] == "relu + He init"
    d = Diagnosis.from_dict(data["configurations"]["relu-he"])
    assert d.stack["init"] == "he_normal" and d.stack["activation"] == "relu"
    # the base init is N(0, 1) entries: sigma_w = sqrt(width)
    assert Diagnosis.from_dict(data["configurations"]["relu"]).stack["sigma_w"] == pytest.approx(4.0)


def test_compare_header_says_the_sigma_w_the_base_init_uses(tmp_path, capsys):
    """The default base init is normal with sigma_w = sqrt(width) (N(0, 1) entries); --init normal
    alone is the init's own sigma_w = 1 (N(0, 1/width)): the header said just "base init normal"."""
    base = ["compare", "--depth", "6", "--width", "16", "--configs", "relu", "--backend", "numpy"]
    heads = {}
    for extra in ([], ["--init", "normal"], ["--init", "kaiming_normal"], ["--sigma-w", "2"]):
        code, out, err = run(base + extra + ["--out", str(tmp_path / "c.json")], capsys)
        assert code == 0, err
        stack = json.loads((tmp_path / "c.json").read_text())["configurations"]["relu"]["stack"]
        heads[" ".join(extra)] = (out.splitlines()[0], stack["init"], stack["sigma_w"])
    assert "base init normal, sigma_w = sqrt(16): N(0, 1) entries;" in heads[""][0] and heads[""][1:] == ("normal", 4.0)
    assert "base init normal, sigma_w = 1 (the init's own, not the default base's sqrt(16));" in heads["--init normal"][0]
    assert heads["--init normal"][1:] == ("normal", None)
    assert "base init he_normal, sigma_w = sqrt(2) (the init's own" in heads["--init kaiming_normal"][0]
    assert "base init normal, sigma_w = 2;" in heads["--sigma-w 2"][0] and heads["--sigma-w 2"][1:] == ("normal", 2.0)


def test_compare_sigmoid_residual_at_an_odd_depth_says_it_skips_every_layer(capsys):
    """K = 2 must divide the depth: at an odd depth sigmoid-residual is residual/1, and its label
    says why (it read "sigmoid + residual/1" with no word)."""
    code, out, err = run(["compare", "--depth", "7", "--width", "4", "--configs", "sigmoid-residual",
                          "--backend", "numpy"], capsys)
    assert code == 0, err
    assert "sigmoid + residual/1 (odd depth)  " in out
    code, out, err = run(["compare", "--depth", "7", "--width", "4", "--configs", "sigmoid-residual",
                          "--residual", "7"], capsys)
    assert code == 2 and "configuration sigmoid-residual sets --residual 1 itself" in err


def test_compare_names_where_a_plain_run_fails_first(capsys):
    """ReLU with N(0, 1) weights, depth 100, width 32: the "plain float fails" column read only
    "f32 over @99" (the gradient), where a plain float32 run's forward is inf by layer ~64 and its
    loss inf. A plain float32 forward on the same weights (written here) goes inf at or before the
    layer the column names; float64 holds it all."""
    from gradbench.params import GeneratedParams, random_targets

    code, out, err = run(["compare", "--depth", "100", "--width", "32", "--configs", "relu"], capsys)
    assert code == 0, err
    m = re.search(r"f32 fwd over <=@(\d+), f32 loss over, f32 over @99$", out.splitlines()[3])
    assert m, out
    stack = gb.Stack(depth=100, width=32, activation="relu", init="normal", sigma_w=math.sqrt(32), loss="bce")
    P = GeneratedParams(stack, 0).materialize()
    h = gb.gaussian_input(stack, 16, np.random.default_rng([0, 1])).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for first in range(100):
            h = np.maximum(h @ P.W[first].T.astype(np.float32) + P.b[first].astype(np.float32), np.float32(0))
            if not np.all(np.isfinite(h)):
                break
    assert first <= int(m.group(1)) < 100
    assert "f64" not in out.splitlines()[3] and "plain float fails: where a plain float32 (f32)" in out


def test_demo_writes_the_flow_plot_and_says_where(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    code, out, err = run(["demo", "--no-train", "--no-cells", "--out-dir", str(out_dir), "--depth", "20", "--width", "8"],
                         capsys)
    assert code == 0, err
    flow = out_dir / "flow.png"
    assert flow.read_bytes()[:4] == b"\x89PNG" and flow.stat().st_size > 20_000
    assert f"gradient-flow plot written to {flow}" in out
    for label in ("sigmoid, base init", "relu + He init", "sigmoid + batch norm", "tanh + Xavier init",
                  "tanh + signal clip ||dL/dh_l|| <= 1", "sigmoid + residual/2"):
        assert label in out
    assert "VANISHING" in out and "EXPLODING" in out and "STABLE" in out
    data = json.loads((out_dir / "gradients.json").read_text())
    assert len(data["configurations"]) == len(DEMO_CONFIGS)


def test_demo_cells_through_time_match_the_reference(tmp_path, capsys):
    """The demo's recurrent part: cells.json holds, per cell, the exact log10 ||dL/dh_t|| of the
    default cell at the demo's length, seed 0; recomputed here with the NumPy reference."""
    from gradbench.cli.demo import CELL_STEPS

    code, out, err = run(["demo", "--no-train", "--out-dir", str(tmp_path), "--depth", "10", "--width", "8"], capsys)
    assert code == 0, err
    assert (tmp_path / "cells.png").read_bytes()[:4] == b"\x89PNG"
    assert "through time: vanilla tanh RNN, LSTM and GRU" in out
    data = json.loads((tmp_path / "cells.json").read_text())["diagnoses"]
    assert list(data) == ["rnn", "lstm", "gru"]
    for cell, d in data.items():
        rnn = gb.Recurrent(cell=cell, steps=CELL_STEPS, hidden=32)
        params = gb.init_params(rnn, 0)
        xs = gb.GeneratedSequence(rnn, 16, 0)
        ref = gb.backprop(rnn, params, xs, backend="numpy").signal_norm.log10()
        np.testing.assert_allclose(d["signal_log10"], ref, rtol=0, atol=1e-9)
        assert ref[0] < -50  # all three vanish at the defaults over 1000 steps (the table says so)
        assert d["verdict"] == "vanishing" and f"{cell:<6} vanishing" in out
    rates = {c: d["decades_per_step"] for c, d in data.items()}
    assert rates["lstm"] > rates["gru"] > rates["rnn"]  # the gated cells lose fewer decades per step


@pytest.mark.slow
def test_full_demo_with_training(tmp_path, capsys):
    code, out, err = run(["demo", "--out-dir", str(tmp_path)], capsys)
    assert code == 0, err
    for f in ("flow.png", "histograms.png", "loss.png", "update_ratio.png", "training.json"):
        assert (tmp_path / f).stat().st_size > 1000
    assert "stuck near ln 2" in out and "loss non-finite in epoch" in out
    # the table gives the full-data losses before and after (as train and the README's table), not
    # the first and last epochs' mini-batch means (batchnorm's last read 0.0793 against 0.0169)
    runs = json.loads((tmp_path / "training.json").read_text())["runs"]
    for name, r in runs.items():
        row = next(line.split() for line in out.splitlines() if line.startswith(name + " "))
        before = r["eval_loss"][0]
        assert float(row[1]) == pytest.approx(before, abs=5e-5), (name, row, before)
        if r["diverged_epoch"] is None:
            assert float(row[2]) == pytest.approx(r["eval_loss"][-1], abs=5e-5, rel=1e-3), (name, row)


# ---------------------------------------------------------------- train
def test_train_demo_writes_history(tmp_path, capsys):
    out_json, loss_png = tmp_path / "h.json", tmp_path / "loss.png"
    code, out, err = run(["train", "--demo", "deep-sigmoid,shallow-sigmoid", "--epochs", "5", "--out",
                          str(out_json), "--plot", str(loss_png), "--ratio-plot", str(tmp_path / "r.png")], capsys)
    assert code == 0, err
    assert "deep-sigmoid" in out and "the input layer's weights (W_in) change by" in out
    runs = json.loads(out_json.read_text())["runs"]
    assert set(runs) == {"deep-sigmoid", "shallow-sigmoid"}
    deep = runs["deep-sigmoid"]
    assert len(deep["loss"]) == 5 and deep["settings"]["epochs"] == 5
    assert max(deep["update_ratio_input_percent"]) < 0.01
    assert loss_png.stat().st_size > 10_000 and (tmp_path / "r.png").stat().st_size > 10_000


def test_train_custom_stack_and_list(capsys):
    code, out, err = run(["train", "--dataset", "xor", "--depth", "2", "--width", "8", "--activation", "tanh",
                          "--loss", "softmax_ce", "--optimizer", "adam", "--lr", "0.03", "--epochs", "30",
                          "--samples", "80"], capsys)
    assert code == 0, err
    assert "data xor (80 samples), adam lr=0.03" in out
    code, out, _ = run(["train", "--list"], capsys)
    assert code == 0 and "deep-sigmoid" in out and "exploding-clipped" in out and "lr=0.1" in out
    assert "batch 20, 100 epochs]" in out and "epoches" not in out
    rows = [line for line in out.splitlines() if line.startswith("  ")]  # the titles in one column
    assert len({len(line) - len(line[2:].split(" ", 1)[1].lstrip()) for line in rows}) == 1, out


def test_train_diverging_run_is_reported_not_crashed(tmp_path, capsys):
    code, out, err = run(["train", "--demo", "exploding", "--out", str(tmp_path / "x.json")], capsys)
    assert code == 0, err
    assert "DIVERGED in epoch 1" in out
    data = json.loads((tmp_path / "x.json").read_text())  # strict JSON even with NaN losses
    assert data["runs"]["exploding"]["loss"][0] in ("nan", "inf")


# ---------------------------------------------------------------- helpers: atomic writes, notices, bench
def test_write_atomic_replaces_whole_files_only(tmp_path, monkeypatch):
    from gradbench import _atomic

    path = tmp_path / "out.json"
    _atomic.write_atomic(str(path), lambda f: f.write("first"))
    assert path.read_text() == "first"
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode
    real_replace = os.replace

    def fail(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        _atomic.write_atomic(str(path), lambda f: f.write("second"))
    monkeypatch.setattr(os, "replace", real_replace)
    assert path.read_text() == "first"
    assert os.listdir(tmp_path) == ["out.json"]


def test_progress_notice_for_slow_calls():
    import io
    import time

    from gradbench.cli.progress import Progress

    stream = io.StringIO()
    with Progress("backprop (depth 100000)", delay=0.05, stream=stream):
        time.sleep(0.3)
    assert "backprop (depth 100000)" in stream.getvalue()
    quiet = io.StringIO()
    with Progress("fast", delay=5.0, stream=quiet):
        pass
    assert quiet.getvalue() == ""


def test_progress_lines_count_other_units_off_a_terminal():
    """Sweeps and recurrent runs printed nothing when stderr was not a terminal (tqdm turns
    itself off there), where the README promises a line every GRADBENCH_PROGRESS_SECONDS."""
    import io
    import time

    from gradbench.cli.progress import Progress

    stream = io.StringIO()
    with Progress("sweep", total=40, unit="runs", delay=0.0, interval=0.05, stream=stream) as p:
        p.count(12)
        time.sleep(0.3)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "sweep ..." and any(line.startswith("sweep: 12 of 40 runs, ") for line in lines), lines
    stream = io.StringIO()
    with Progress("backprop (lstm)", unit="segments (forward + backward)", delay=0.0, interval=0.05, stream=stream) as p:
        p.count(3, 10)  # the engine's progress(done, total)
        time.sleep(0.3)
    assert "backprop (lstm): 3 of 10 segments (forward + backward), " in stream.getvalue()


def test_bench_passes_its_arguments_on(monkeypatch, capsys):
    seen = []
    fake = types.ModuleType("gradbench.benchreport")
    fake.main = lambda argv: seen.append(argv) or 3
    monkeypatch.setitem(sys.modules, "gradbench.benchreport", fake)
    import gradbench

    monkeypatch.setattr(gradbench, "benchreport", fake, raising=False)
    assert cli.main(["bench", "--quick", "--json", "x.json"]) == 3
    assert seen == [["--quick", "--json", "x.json"]]


def test_python_dash_m_and_version():
    done = subprocess.run([sys.executable, "-m", "gradbench", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and gb.__version__ in done.stdout
    done = subprocess.run([sys.executable, "-m", "gradbench", "run", "--depth", "2", "--width", "2",
                           "--activation", "nope"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1


@pytest.mark.slow
def test_depth_100000_is_exact_not_zero(capsys):
    code, out, err = run(["run", "--depth", "100000", "--width", "16", "--activation", "sigmoid"], capsys)
    assert code == 0, err
    layer0 = next(line for line in out.splitlines() if line.split()[:1] == ["0"])
    value = float(layer0.split()[1].removeprefix("10^"))
    assert math.isfinite(value) and -70000 < value < -55000
    assert re.search(r"plain float64 would underflow the gradient at layer 9\d{4} \(", out), out


@pytest.mark.parametrize("argv", [
    ["train", "--demo", "shallow-sigmoid", "--epochs", "2"],
    ["compare", "--depth", "6", "--width", "8", "--configs", "sigmoid,relu"],
    ["run", "--cell", "rnn", "--steps", "20", "--hidden", "8"],
    ["compare", "--cells", "rnn,gru", "--steps", "20", "--hidden", "8"],
    ["train", "--demo", "exploding-rnn", "--epochs", "1"],
])
def test_commands_without_plots_do_not_import_matplotlib(argv):
    """matplotlib loads only for --plot: `gradbench train --demo deep-sigmoid` took 1.8-2.6 s
    wall with it imported up front (and the Python of small calls before 410da21), 1.2 s
    without (alternating runs, 2026-12-02)."""
    code = ("import sys; from gradbench.cli import main; "
            f"rc = main({argv!r}); "
            "print(rc, 'matplotlib' in {m.split('.')[0] for m in sys.modules})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "0 False"


def test_a_run_without_plots_imports_neither_scipy_nor_matplotlib(tmp_path):
    """The command line starts fast: `import gradbench` and `gradbench run` without --plot or
    --hist load neither SciPy (~0.12 s: imported where erfc, brentq and digamma are used) nor
    matplotlib (~0.19 s). A CLI run of L = 1,000 took 0.95-1.22 s wall with them, 0.28-0.51 s
    without."""
    code = ("import sys; from gradbench.cli import main; "
            "rc = main(['run', '--depth', '10', '--width', '8', '--out', sys.argv[1]]); "
            "print(rc, sorted({m.split('.')[0] for m in sys.modules} & {'scipy', 'matplotlib'}))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run.json")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "0 []"
    # and the diagnosis of a GELU stack (erfc) still works, importing SciPy on first use
    code = ("import gradbench as gb; s = gb.Stack(depth=3, width=4, activation='gelu'); "
            "r = gb.backprop(s, gb.init_params(s, 0), gb.gaussian_input(s, 2, 1), backend='numpy'); "
            "print(gb.diagnose(r).verdict)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_run_hands_the_engines_kept_arrays_back_before_diagnosing(monkeypatch, capsys):
    """The engine keeps its internal arrays for a next call of the same shapes; `gradbench run`
    makes none, so it frees them before the diagnosis allocates its (L, bins) counts (the
    README's 10^6-layer command: peak RSS 1.04 GiB with them kept, 0.80 GiB without)."""
    from gradbench import buffers
    from gradbench.cli import run as run_cmd

    diagnosis = sys.modules["gradbench.diagnose"]  # the module (gradbench.diagnose is the function)
    seen = {}
    probe, diagnose = run_cmd.run_probe, diagnosis.diagnose

    def probed(*a, **k):
        out = probe(*a, **k)
        seen["after run"] = buffers.WORKSPACE.bytes()
        return out

    def diagnosed(*a, **k):
        seen["at diagnosis"] = buffers.WORKSPACE.bytes()
        return diagnose(*a, **k)

    monkeypatch.setattr(run_cmd, "run_probe", probed)
    monkeypatch.setattr(diagnosis, "diagnose", diagnosed)
    code, out, err = run(["run", "--depth", "300", "--width", "16", "--stats-only", "--checkpoint", "30"], capsys)
    assert code == 0, err
    assert seen["after run"] > 0 and seen["at diagnosis"] == 0


def test_bn_eps_reaches_the_stacks_of_compare_and_train(tmp_path, capsys):
    """--bn-eps was sweep's alone; compare and train now build their batch-norm stacks with it."""
    code, out, err = run(["compare", "--depth", "6", "--width", "4", "--configs", "sigmoid,sigmoid-bn", "--bn-eps",
                          "0.5", "--backend", "numpy", "--out", str(tmp_path / "c.json")], capsys)
    assert code == 0, err
    configs = json.loads((tmp_path / "c.json").read_text())["configurations"]
    assert configs["sigmoid-bn"]["stack"]["bn_eps"] == 0.5
    code, out, err = run(["train", "--depth", "3", "--width", "4", "--batch-norm", "--bn-eps", "0.5", "--epochs", "1",
                          "--backend", "numpy", "--out", str(tmp_path / "t.json")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "t.json").read_text())["runs"]["custom"]["stack"]["bn_eps"] == 0.5


@pytest.mark.parametrize("options,words", [
    (["--activation", "leaky_relu", "--activation-param", "0.3"], "leaky_relu (slope 0.3), xavier_normal, float64"),
    (["--activation", "prelu", "--activation-param", "0.1"], "prelu (initial slope 0.1), xavier_normal, float64"),
    (["--activation", "elu", "--activation-param", "0.5"], "elu (alpha 0.5), xavier_normal, float64"),
    (["--residual", "2", "--residual-scale", "0.7"], "tanh, xavier_normal, residual every 2 (scale 0.7), float64"),
    (["--batch-norm", "--bn-eps", "0.001"], "tanh, xavier_normal, batch norm (eps 0.001), float64"),
    # at their defaults the header is as it was
    (["--activation", "elu", "--activation-param", "1", "--residual", "2", "--residual-scale", "1", "--batch-norm",
      "--bn-eps", "1e-5"], "elu, xavier_normal, batch norm, residual every 2, float64"),
])
def test_the_report_header_says_every_field_that_changes_the_network(options, words, capsys):
    """The activation's parameter, the residual scale and batch norm's epsilon changed the
    network and the header did not say them: two different runs had the same header."""
    code, out, err = run(["run", "--depth", "4", "--width", "4", "--backend", "numpy", *options], capsys)
    assert code == 0, err
    assert out.splitlines()[0] == f"gradbench diagnosis: depth 4, width 4, {words} (backend numpy)"


def test_the_compare_header_says_the_epsilon_of_batch_norm(capsys):
    code, out, err = run(["compare", "--depth", "4", "--width", "4", "--configs", "sigmoid,sigmoid-bn", "--bn-eps",
                          "0.01", "--backend", "numpy"], capsys)
    assert code == 0, err
    assert "N(0, 1) entries, batch norm eps 0.01; loss bce" in out.splitlines()[0], out
    code, out, err = run(["compare", "--depth", "4", "--width", "4", "--configs", "sigmoid,relu", "--batch-norm",
                          "--bn-eps", "0.01", "--backend", "numpy"], capsys)
    assert code == 0, err
    assert "entries, batch norm (eps 0.01); loss" in out.splitlines()[0], out


@pytest.mark.parametrize("activation,heading", [("relu", "dead"), ("leaky_relu", "neg side"), ("prelu", "neg side")])
def test_the_per_layer_table_calls_leaky_units_on_the_negative_side_not_dead(activation, heading, capsys):
    """leaky_relu and prelu pass a gradient for z <= 0 (the verdict says "on the negative side"),
    and their column was headed "dead"."""
    code, out, err = run(["run", "--depth", "4", "--width", "4", "--activation", activation, "--backend", "numpy"],
                         capsys)
    assert code == 0, err
    head = next(line for line in out.splitlines() if line.lstrip().startswith("layer"))
    assert head.endswith(" " + heading) and ("dead" in head) == (heading == "dead"), head
    row = out.splitlines()[out.splitlines().index(head) + 1]
    assert len(row) == len(head) and row.endswith("%"), (head, row)  # the column lines up under its heading


def test_a_checkpoint_beyond_the_depth_is_one_segment_with_residual_groups_too(tmp_path, capsys):
    """--checkpoint K > depth was taken as one segment, except with --residual, where it was
    refused as "not a multiple of" the group size (the depth always is one)."""
    base = ["run", "--depth", "10", "--width", "4", "--residual", "2", "--backend", "numpy"]
    for k in ("11", "10"):
        code, out, err = run([*base, "--checkpoint", k, "--out", str(tmp_path / f"{k}.json")], capsys)
        assert code == 0, err
    got, want = (json.loads((tmp_path / f"{k}.json").read_text())["diagnosis"]["grad_log10"] for k in ("11", "10"))
    assert got == want
    code, out, err = run([*base, "--checkpoint", "3"], capsys)
    assert code == 2 and "--checkpoint 3 must be a positive multiple of the residual group size 2" in err
    assert err.strip().endswith("; any K >= --depth 10 is one segment"), err


@pytest.mark.parametrize("theirs,ours", [("silu", "swish"), ("SiLU", "swish"), ("logistic", "sigmoid")])
def test_another_librarys_name_of_an_activation_names_ours(theirs, ours, capsys):
    """'silu' (PyTorch's name for swish) got 'did you mean selu?', another function."""
    with pytest.raises(ValueError, match=f"'{theirs}' is gradbench's '{ours}'"):
        gb.Stack(depth=2, width=2, activation=theirs)
    code, out, err = run(["run", "--depth", "2", "--width", "2", "--activation", theirs], capsys)
    assert code == 2 and f"is gradbench's '{ours}'" in err and "selu" not in err.split(";")[-1]


def test_compare_says_which_configurations_take_the_activation_param(capsys):
    code, out, err = run(["compare", "--depth", "4", "--width", "4", "--configs", "leaky_relu,selu",
                          "--activation-param", "0.3"], capsys)
    assert code == 0 and "activation param 0.3 (for leaky_relu, prelu, elu only)" in out


def test_misspelt_configurations_and_backends_get_the_closest_name(capsys):
    from gradbench.cli import main

    assert main(["compare", "--depth", "5", "--width", "4", "--configs", "relu-hee,sigmod"]) == 2
    err = capsys.readouterr().err
    assert "relu-hee: did you mean 'relu-he'?" in err and "sigmod: did you mean 'sigmoid'?" in err
    st = gb.Stack(depth=2, width=2)
    with pytest.raises(ValueError, match=r"backend='C' is not one of .*; did you mean 'c'\?"):
        gb.backprop(st, gb.init_params(st), gb.gaussian_input(st, 1, 1), backend="C")


def test_a_run_is_the_python_call_the_readme_gives(tmp_path, capsys):
    """The README gives the Python call a `gradbench run` is (the seed's weights, input and
    targets); a user could not reproduce a run's loss from the README before (the input's seed
    was not said)."""
    from pathlib import Path

    import gradbench

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    call = ("gb.backprop(stack, gb.GeneratedParams(stack, seed), gb.gaussian_input(stack, batch, "
            "seed=np.random.default_rng([seed, 1])), gradbench.params.random_targets(stack, batch, seed))")
    assert call in re.sub(r"\s+", " ", readme)
    path = tmp_path / "r.json"
    code, _, _ = run(["run", "--depth", "30", "--width", "32", "--activation", "relu", "--init", "he_normal", "--loss",
                      "mse", "--output-dim", "3", "--batch", "5", "--seed", "4", "--out",
                      str(path)], capsys)
    assert code == 0
    d = json.loads(path.read_text())["diagnosis"]
    stack, seed, batch = gb.Stack(depth=30, width=32, activation="relu", init="he_normal", loss="mse", output_dim=3), 4, 5
    res = eval(call)  # the README's call, as written there
    assert res.loss == d["loss"]
    np.testing.assert_array_equal(gb.diagnose(res).grad_log10, d["grad_log10"])  # both backend "auto"
    assert gradbench  # (the README's call names the package)


def test_one_layer_has_no_rate_in_the_report_or_the_compare_table(capsys):
    # "rate: +0 decades per layer" beside "no trend to fit"; compare printed +0.000 in both rate columns
    code, out, _ = run(["run", "--depth", "1", "--width", "4"], capsys)
    assert code == 0 and "no trend to fit" in out and "  rate: none (one layer: no slope to fit)" in out
    assert "rate: +0" not in out
    code, out, _ = run(["compare", "--depth", "1", "--width", "2", "--configs", "sigmoid,relu"], capsys)
    rows = [line.split() for line in out.splitlines() if line.startswith(("sigmoid", "relu"))]
    assert code == 0 and len(rows) == 2 and all(r[3:6] == ["stable", "-", "-"] for r in rows), rows


def test_demo_histograms_show_the_absolute_bands_beside_the_relative_shapes(tmp_path):
    """Review 51: the demo's histograms were relative to each layer's norm only: every layer of
    the vanishing sigmoid stack sat in one band, and the figure showed nothing of the vanishing.
    The absolute panel spans the layers' norms (the rows' modes follow ||dW_l||)."""
    import numpy as np

    from gradbench import plot
    from gradbench.cli.demo import _histograms
    from gradbench.histograms import RelativeHistograms
    from gradbench.params import random_targets

    st = gb.Stack(depth=30, width=16, activation="sigmoid", init="xavier_normal", loss="bce")
    res = gb.backprop(st, gb.GeneratedParams(st, 0), gb.gaussian_input(st, 8, 1), random_targets(st, 8, 0))
    d = gb.diagnose(res)
    fig = _histograms(plot, d, RelativeHistograms.from_result(res), "sigmoid", tmp_path / "h.png", 60)
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    absolute, relative = (a for a in fig.axes if a.get_title())
    assert "relative" in relative.get_title() and "relative" not in absolute.get_title()
    lo, hi = absolute.get_xlim()
    g = res.grad_norm.log10()
    assert lo <= g.min() - 2 and hi >= g.max() - 2 and g.max() - g.min() > 10  # every layer's band on one axis
