"""The recurrent command line: gradbench run --cell, compare --cells, theory --cell, train --demo."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from gradbench.cli import main


def test_run_prints_exact_norms_and_the_verdict(tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["run", "--cell", "lstm", "--steps", "300", "--hidden", "8", "--batch", "4", "--out", str(out),
                 "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "lstm, 300 steps, hidden 8" in text and "VANISHING" in text and "||dL/dc_t||" in text
    assert "the gradient (the state's: dL/dh_t and dL/dc_t together) reaching step 0 is 10^" in " ".join(text.split())
    d = json.loads(out.read_text())["diagnosis"]
    assert len(d["signal_log10"]) == 300 and d["verdict"] == "vanishing" and png.stat().st_size > 1000


def test_run_reports_a_probe_loss_beyond_float64_exactly(tmp_path, capsys):
    """A GELU cell whose state reaches 10^163: 0.5 ||h||^2 ~ 10^325.6 overflows float64's squares,
    and the report said "loss inf"; the loss is exact (the float in --out stays inf)."""
    out = tmp_path / "r.json"
    assert main(["run", "--cell", "rnn", "--steps", "500", "--hidden", "16", "--activation", "gelu",
                 "--sigma-w", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "loss 10^325.58;" in text and "loss inf" not in text
    d = json.loads(out.read_text())["diagnosis"]
    assert d["loss"] == "inf" and abs(d["loss_log10"] - 325.58) < 0.005 and d["first_nonfinite_forward"] is None


def test_run_long_sequences_are_segmented_with_a_progress_bar(capsys):
    assert main(["run", "--cell", "rnn", "--steps", "20000", "--hidden", "4", "--batch", "2",
                 "--recurrent-init", "normal"]) == 0
    captured = capsys.readouterr()
    assert "segments)" in captured.out and "10^-" in captured.out


def test_compare_cells_table_and_plot(tmp_path, capsys):
    png = tmp_path / "c.png"
    assert main(["compare", "--cells", "rnn,lstm,gru", "--steps", "400", "--hidden", "8", "--batch", "2",
                 "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    for cell in ("rnn", "lstm", "gru"):
        assert f"\n{cell} " in text
    assert "back 399" in text and png.stat().st_size > 1000


def test_theory_prints_prediction_beside_measurement(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["theory", "--cell", "rnn", "--activation", "identity", "--hidden", "8", "--steps", "10000",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "spectral radius" in text and "Newman" in text and "measured" in text
    r = json.loads(out.read_text())
    assert abs(r["measured_decades_per_step"] - r["predicted_decades_per_step"]) < 2e-3


def test_train_demo_and_list(tmp_path, capsys):
    assert main(["train", "--list"]) == 0
    assert "memory-lstm" in capsys.readouterr().out
    out = tmp_path / "t.json"
    assert main(["train", "--demo", "exploding-rnn", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "DIVERGED in epoch 1" in text
    run = json.loads(out.read_text())["runs"]["exploding-rnn"]
    assert run["diverged_epoch"] == 0
    # the mini-batch that diverged: the first whose loss is not finite, as the epoch's mean loss shows
    assert re.search(r"loss became nan in mini-batch \d+ of \d+ \(the forward state first turned non-finite",
                     run["divergence"])


@pytest.mark.parametrize("argv, message", [
    (["run", "--cell", "lstn", "--steps", "5", "--hidden", "3"], "did you mean 'lstm'"),
    (["run", "--cell", "gru", "--steps", "5", "--hidden", "3", "--forget-bias", "1"], "--forget-bias is only valid"),
    (["run", "--cell", "rnn", "--steps", "0", "--hidden", "3"], "argument --steps: must be an integer >= 1"),
    (["run", "--cell", "rnn", "--steps", "5"], "required: --hidden"),
    (["run", "--cell", "rnn", "--steps", "5", "--hidden", "3", "--plot", "x.txt"], "--plot 'x.txt' must end in"),
    (["run", "--cell", "rnn", "--steps", "5", "--hidden", "3", "--batch", "0"], "argument --batch: must be an integer >= 1"),
    (["compare", "--cells", "rnn,lsm", "--steps", "5"], "--cells 'rnn,lsm'"),
    (["train", "--demo", "memory-lstm", "--steps", "-1"], "argument --steps: must be an integer >= 1"),
    (["run", "--cell", "lstm", "--steps", "10", "--hidden", "4", "--rows", "-2"], "argument --rows: must be an integer >= 1"),
    (["run", "--cell", "lstm", "--steps", "10", "--hidden", "4", "--seed", "-1"], "argument --seed: must be an integer in"),
    (["train", "--demo", "memory-rnn", "--seed", "-1"], "argument --seed: must be an integer in"),
    (["run", "--cell", "lstm", "--steps", "10", "--hidden", "4", "--clip-threshold", "-3"],
     "argument --clip-threshold: must be a finite number > 0"),
    (["run", "--cell", "lstm", "--steps", "10", "--hidden", "4", "--clip-threshold", "3"],
     "--clip-threshold applies only with --clip"),
    (["run", "--cell", "lstm", "--steps", "10", "--hidden", "4", "--clip-on", "global"], "--clip-on applies only with --clip"),
    (["compare", "--cells", "rnn,gru", "--steps", "10", "--forget-bias", "3"],
     "--forget-bias applies to the lstm cell only, and --cells 'rnn,gru' has none"),
    (["run", "--cell", "lstm", "--steps", "10", "--hidden", "4", "--mkdir"], "--mkdir creates the directories"),
    (["train", "--demo", "memory-rnn,deep-sigmoid"], "--demo mixes recurrent (memory-rnn) and feed-forward (deep-sigmoid)"),
    (["train", "--demo", "all,memory-rnn"], "--demo all runs every feed-forward demo and takes no other names"),
    # options of the feed-forward demos (gradbench train --help lists them): 'unrecognized arguments'
    (["train", "--demo", "memory-rnn", "--optimizer", "sgd"],
     "--optimizer: the recurrent demos (memory-rnn) take --demo, --epochs, --lr, --seed, --steps, --backend, --out, "
     "--plot, --mkdir, --dpi only; it is for the feed-forward demos and your own stack (see gradbench train --demo "
     "memory-rnn --help)"),
    (["train", "--demo", "memory-lstm,memory-gru", "--weight-decay=0.1", "--momentum", "0.5"],
     "--weight-decay, --momentum: the recurrent demos (memory-lstm,memory-gru) take --demo, --epochs,"),
    (["train", "--demo", "memory-rnn", "--epochz", "3"], "unrecognized arguments: --epochz 3; did you mean --epochs?"),
    (["train", "--demo", "memory-rnn", "--lr", "0"], "argument --lr: must be a finite number > 0, got '0'"),
    # identity is a W_hh init: it suggested 'xavier_uniform'
    (["run", "--cell", "rnn", "--steps", "5", "--hidden", "3", "--init", "identity"],
     "--init identity: --init draws W_ih (the input weights), one of normal, xavier_normal, xavier_uniform, he_normal, "
     "he_uniform, lecun_normal, orthogonal; identity is an init of W_hh: --recurrent-init identity"),
    (["compare", "--cells", "rnn,gru", "--steps", "5", "--init", "identity"], "--recurrent-init identity"),
    # no abbreviated options, as for stacks: --cell quietly meant --cells, --step --steps
    (["compare", "--cell", "rnn,gru", "--steps", "5"], "the following arguments are required: --cells"),
    (["run", "--cell", "rnn", "--step", "5", "--hidden", "3"], "the following arguments are required: --steps"),
    (["run", "--cell", "rnn", "--steps", "5", "--hidden", "3", "--row", "2"],
     "unrecognized arguments: --row 2; did you mean --rows?"),
    (["run", "--cell", "rnn", "--steps", "5", "--hidden", "3", "--checkpoint", "-1"],
     "argument --checkpoint: must be an integer >= 0"),
])
def test_bad_options_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_checkpoint_0_means_never_as_for_stacks(capsys):
    """run --checkpoint 0 is "never" for stacks; for recurrent nets it was an error. Now one
    segment even at 10^4 steps (which are segmented by default), and a plain run that would not
    fit is refused in command-line words, naming the --checkpoint that fits."""
    argv = ["run", "--cell", "rnn", "--steps", "10000", "--hidden", "4", "--batch", "2", "--recurrent-init", "normal"]
    assert main(argv) == 0
    assert ", 1 segment)" not in capsys.readouterr().out
    assert main(argv + ["--checkpoint", "0"]) == 0
    assert ", 1 segment)" in capsys.readouterr().out
    assert main(["run", "--cell", "rnn", "--steps", "3000000", "--hidden", "256", "--batch", "64",
                 "--checkpoint", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--checkpoint 0) needs about" in err[0] and "it fits with --checkpoint " in err[0], err


def test_theory_identity_w_hh_prints_no_prediction(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["theory", "--cell", "rnn", "--activation", "relu", "--recurrent-init", "identity", "--hidden", "8",
                 "--steps", "500", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "prediction: none" in text and "--recurrent-init identity" in text and "predicted" not in text
    assert "difference" not in text
    r = json.loads(out.read_text())
    assert "predicted_decades_per_step" not in r and "identity" in r["method"]


@pytest.mark.parametrize("argv, relative", [
    # relu at gain sqrt(2) (he_normal) is mean field's critical point: chi_1 = sigma_w^2 / 2 = 1, prediction 0
    (["--activation", "relu", "--recurrent-init", "he_normal", "--hidden", "33"], False),
    (["--activation", "tanh", "--recurrent-init", "normal", "--sigma-w", "0.5", "--hidden", "33"], True),
])
def test_theory_percentage_only_away_from_zero(argv, relative, tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["theory", "--cell", "rnn", "--steps", "2000", "--out", str(out), *argv]) == 0
    text = capsys.readouterr().out
    r = json.loads(out.read_text())
    pred, got = r["predicted_decades_per_step"], r["measured_decades_per_step"]
    line = next(ln for ln in text.splitlines() if "difference" in ln)
    assert f"{got - pred:+.2e} decades per step" in line
    if relative:
        assert f"({abs(got - pred) / abs(pred):.2%} of the prediction)" in line
    else:
        assert abs(pred) < 1e-12 and "%" not in line



@pytest.mark.parametrize("argv", [["train", "--demo", "memory-foo"], ["train", "--demo", "deep-sigmoid,foo"],
                                  ["train", "--demo", "memory-foo", "--depth", "3"]])
def test_unknown_demo_lists_both_kinds(argv, capsys):
    from gradbench.recurrent.train import RECURRENT_DEMOS
    from gradbench.train import DEMOS

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown demo" in err and len(err.strip().splitlines()) == 1, err
    for name in (*DEMOS, *RECURRENT_DEMOS):
        assert name in err


RUN = ["run", "--cell", "lstm", "--steps", "10", "--hidden", "4"]


@pytest.mark.parametrize("option", ["--out", "--plot"])
@pytest.mark.parametrize("command", [RUN, ["compare", "--cells", "rnn,lstm", "--steps", "10", "--hidden", "4"],
                                     ["theory", "--cell", "rnn", "--steps", "10", "--hidden", "4"],
                                     ["train", "--demo", "exploding-rnn", "--epochs", "1"]])
def test_missing_directory_is_refused_before_the_run_unless_mkdir(command, option, tmp_path, capsys):
    """As the feed-forward commands (gradbench/cli/output.py): exit 2 and nothing created or run;
    with --mkdir the directory is made and the file written."""
    path = tmp_path / "missing" / ("r.json" if option == "--out" else "r.png")
    assert main([*command, option, str(path)]) == 2
    captured = capsys.readouterr()
    assert "does not exist (create it, or pass --mkdir)" in captured.err and option in captured.err
    assert captured.out == "" and not path.parent.exists()
    assert main([*command, option, str(path), "--mkdir"]) == 0
    assert path.stat().st_size > 100


def test_unwritable_directory_is_refused_before_the_run(capsys):
    """/proc takes no new files, even as root: exit 2 before the run (it was an internal error,
    exit 1, after it)."""
    import os

    if not os.path.isdir("/proc"):
        pytest.skip("no /proc")
    assert main([*RUN, "--out", "/proc/gradbench-test.json"]) == 2
    captured = capsys.readouterr()
    assert "--out '/proc/gradbench-test.json'" in captured.err and "is not writable" in captured.err
    assert captured.out == ""


def _head(doc: dict, body: str) -> dict:
    return {k: v for k, v in doc.items() if k != body}


def test_json_files_carry_the_feed_forward_head(tmp_path, capsys):
    """The head of every recurrent file has the keys of the feed-forward one (docs/formats.md:
    gradbench, schema, command, argv, created, machine, seed, batch, weights, threads, seconds)."""
    ff = tmp_path / "ff.json"
    assert main(["run", "--depth", "3", "--width", "4", "--out", str(ff)]) == 0
    ff_keys = set(_head(json.loads(ff.read_text()), "diagnosis"))
    files = {}
    for name, argv, body in [
        ("run", [*RUN], "diagnosis"),
        ("compare", ["compare", "--cells", "rnn,gru", "--steps", "10", "--hidden", "4"], "diagnoses"),
        ("theory", ["theory", "--cell", "rnn", "--steps", "10", "--hidden", "4"], None),
        ("train", ["train", "--demo", "exploding-rnn", "--epochs", "1"], "runs"),
    ]:
        out = tmp_path / f"{name}.json"
        argv = [*argv, "--out", str(out)]
        assert main(argv) == 0
        doc = json.loads(out.read_text())
        files[name] = doc
        head = _head(doc, body) if body else doc
        assert doc["schema"] == 2 and doc["command"] == name and doc["argv"] == argv
        assert doc["threads"]["backend"] in ("numpy", "numba", "c") and doc["seconds"] >= 0
        keys = ff_keys - ({"seed", "batch"} if name == "train" else set())  # a demo's seed is in its settings
        assert keys <= set(head), keys - set(head)
    assert files["run"]["seed"] == 0 and files["run"]["batch"] == 16
    assert not list(tmp_path.glob(".gradbench-*"))  # atomic: no temporary file left


def test_recurrent_formats_are_documented(tmp_path, capsys):
    """docs/formats.md names every key of the recurrent files (the section "Recurrent nets")."""
    from pathlib import Path

    import gradbench as gb

    root = Path(gb.__file__).resolve().parent.parent
    text = (root / "docs" / "formats.md").read_text()
    section = text[text.index("## Recurrent nets"):]
    section = section[:section.index("\n## ", 1)]
    out = tmp_path / "t.json"
    assert main(["train", "--demo", "exploding-rnn", "--epochs", "1", "--out", str(out)]) == 0
    run = json.loads(out.read_text())["runs"]["exploding-rnn"]
    from gradbench.recurrent.diagnose import RecurrentDiagnosis

    keys = [*RecurrentDiagnosis.__dataclass_fields__, *run, *run["settings"], "diagnoses", "method",
            "predicted_decades_per_step", "measured_decades_per_step", "newman_untied_decades_per_step",
            "ensemble_decades_per_step", "underflow_step", "overflow_step"]
    missing = [k for k in keys if f"`{k}`" not in section]
    assert not missing, missing
    assert "cells.json" in text and "cells.png" in text


def test_recurrent_subcommands_take_debug_as_the_stacks_do(capsys):
    """--debug (the traceback of an internal error) was unknown to run/compare/theory/train with
    --cell(s) or a recurrent demo: 'unrecognized arguments: --debug'."""
    from gradbench import cli

    for argv in (["run", "--cell", "rnn"], ["compare", "--cells", "rnn"], ["theory", "--cell", "rnn"],
                 ["train", "--demo", "memory-rnn"]):
        assert cli.main([*argv, "--help"]) == 0
        assert "--debug" in capsys.readouterr().out, argv
    assert cli.main(["run", "--cell", "rnn", "--steps", "5", "--hidden", "3", "--debug", "--backend", "numpy"]) == 0


def test_recurrent_plots_take_dpi(tmp_path):
    """--dpi (the stacks' option) did not exist for --cell(s) runs: 'unrecognized arguments'."""
    from gradbench import cli

    path = tmp_path / "r.png"
    assert cli.main(["run", "--cell", "rnn", "--steps", "8", "--hidden", "4", "--backend", "numpy",
                     "--plot", str(path), "--dpi", "50"]) == 0
    from matplotlib.image import imread

    small = imread(path).shape
    assert cli.main(["run", "--cell", "rnn", "--steps", "8", "--hidden", "4", "--backend", "numpy",
                     "--plot", str(path), "--dpi", "150"]) == 0
    big = imread(path).shape
    assert big[0] > 2.5 * small[0] and big[1] > 2.5 * small[1]


def test_compare_applies_activation_to_the_rnn_line_only(tmp_path, capsys):
    """--activation is "rnn cell only", as --forget-bias is lstm only: compare --cells rnn,lstm,gru
    --activation relu was refused ("activation='relu' is not valid for cell='lstm'"). Now the rnn
    line runs relu, the gated ones their own gates, and the header says so."""
    out = tmp_path / "c.json"
    assert main(["compare", "--cells", "rnn,lstm,gru", "--activation", "leaky_relu", "--activation-param", "0.2",
                 "--forget-bias", "3", "--steps", "20", "--hidden", "4", "--batch", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "--activation leaky_relu --activation-param 0.2: the rnn line only (lstm, gru: fixed sigmoid gates " \
           "and tanh)" in text
    assert "--forget-bias 3: the lstm line only" in text
    d = json.loads(out.read_text())["diagnoses"]
    assert (d["rnn"]["rnn"]["activation"], d["rnn"]["rnn"]["activation_param"]) == ("leaky_relu", 0.2)
    for cell in ("lstm", "gru"):
        assert d[cell]["rnn"]["activation"] is None and d[cell]["rnn"]["activation_param"] is None
    assert d["lstm"]["rnn"]["forget_bias"] == 3 and d["gru"]["rnn"]["forget_bias"] is None
    for option in ("--activation", "--activation-param"):  # no rnn line: refused, as --forget-bias without lstm
        value = "relu" if option == "--activation" else "0.2"
        assert main(["compare", "--cells", "lstm,gru", option, value, "--steps", "5", "--hidden", "3"]) == 2
        err = capsys.readouterr().err
        assert f"{option} applies to the rnn cell only, and --cells 'lstm,gru' has none" in err, err


@pytest.mark.parametrize("command, default", [(["run", "--cell", "rnn"], "orthogonal"),
                                              (["compare", "--cells", "rnn"], "orthogonal"),
                                              (["theory", "--cell", "rnn"], "normal")])
def test_help_names_the_recurrent_init_each_command_uses(command, default, capsys):
    """theory --help said --recurrent-init defaults to orthogonal while theory draws W_hh normal
    (its header says "W_hh normal gain 1")."""
    import re

    assert main([*command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert re.findall(r"--recurrent-init NAME W_hh: one of [a-z_, ]+ \(default (\w+)\)", text) == [default]


def _no_drawing(monkeypatch, avail_gib: float):
    """The weights must not be drawn (the refusal came after init_params' QR: 23 s at hidden
    2048), and the memory the plan sees is fixed."""
    import gradbench as gb
    from gradbench.recurrent import cli as rcli

    def drawn(*args, **kwargs):
        raise AssertionError("the weights were drawn before the plan refused the run")

    monkeypatch.setattr(gb, "init_params", drawn)
    monkeypatch.setattr(rcli, "available", lambda: int(avail_gib * 2**30), raising=False)


def test_a_run_too_big_is_refused_before_the_weights_are_drawn(monkeypatch, capsys):
    _no_drawing(monkeypatch, 20)
    assert main(["run", "--cell", "lstm", "--steps", "100000000", "--hidden", "2048", "--batch", "512"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "this run (lstm, --steps 100000000, --hidden 2048, --batch 512) needs about 712.12 GiB " \
        "(checkpointed every 10000 steps) but the limit is 18.00 GiB" in err[0], err
    assert err[0].endswith("no --checkpoint K fits: reduce --steps, --hidden or --batch"), err
    assert main(["theory", "--cell", "gru", "--steps", "100000000", "--hidden", "2048", "--batch", "512"]) == 2
    captured = capsys.readouterr()
    assert "needs about" in captured.err and captured.out == ""  # refused before the header and the prediction


def test_compare_plans_every_cell_before_the_first_run_and_names_the_checkpoint_that_fits(monkeypatch, capsys):
    """The rnn line fits, the lstm line does not at k ~ sqrt(T) (2000 steps: 2.54 GiB) but does at
    its leanest segment (1076 steps: 2.17 GiB): refused before the rnn line runs, naming that K."""
    _no_drawing(monkeypatch, 2.3 / 0.9)
    assert main(["compare", "--cells", "rnn,lstm", "--steps", "4000000", "--hidden", "256", "--batch", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "this run (lstm, --steps 4000000, --hidden 256, --batch 64) needs about 2.54 GiB " \
        "(checkpointed every 2000 steps) but the limit is 2.30 GiB (90% of the available RAM); it fits with " \
        "--checkpoint 1076 (about 2.17 GiB)" in err[0], err
    assert main(["run", "--cell", "lstm", "--steps", "4000000", "--hidden", "256", "--batch", "64",
                 "--checkpoint", "50"]) == 2
    err = capsys.readouterr().err
    assert "--batch 64, --checkpoint 50) needs about" in err and "it fits with --checkpoint 1076" in err, err


def test_run_and_compare_write_npz_as_the_stacks_do(tmp_path, capsys):
    """--out x.npz was refused ("must end in .json") while the README says --out takes .npz for
    large runs (the JSON of 10^5 steps is 12 MB). run: one diagnosis; compare: NAME/FIELD; the
    head in ``head``; theory writes no diagnosis and keeps .json."""
    from gradbench.recurrent.diagnose import RecurrentDiagnosis

    npz, js = tmp_path / "r.npz", tmp_path / "r.json"
    run = ["run", "--cell", "lstm", "--steps", "50", "--hidden", "4", "--batch", "2", "--backend", "numpy"]
    assert main([*run, "--out", str(npz)]) == 0 and main([*run, "--out", str(js)]) == 0
    assert f"wrote {npz}" in capsys.readouterr().out
    d = RecurrentDiagnosis.from_npz(npz)
    want = json.loads(js.read_text())["diagnosis"]
    assert json.loads(d.to_json()) == want and d.steps == 50  # the JSON file's diagnosis, every field
    import numpy as np

    with np.load(npz, allow_pickle=False) as z:
        head = json.loads(str(z["head"]))
    assert head["command"] == "run" and head["argv"] == [*run, "--out", str(npz)] and head["seed"] == 0
    cnpz = tmp_path / "c.npz"
    assert main(["compare", "--cells", "rnn,gru", "--steps", "30", "--hidden", "3", "--out", str(cnpz)]) == 0
    with np.load(cnpz, allow_pickle=False) as z:
        assert [str(n) for n in z["names"]] == ["rnn", "gru"] and json.loads(str(z["head"]))["command"] == "compare"
    assert RecurrentDiagnosis.from_npz(cnpz, name="gru").rnn["cell"] == "gru"
    capsys.readouterr()
    assert main(["theory", "--cell", "rnn", "--steps", "10", "--hidden", "3", "--out", str(tmp_path / "t.npz")]) == 2
    assert "--out" in capsys.readouterr().err and not (tmp_path / "t.npz").exists()


def test_theory_says_why_there_is_no_measured_rate(tmp_path, capsys):
    """theory --steps 1 printed "measured +nan" with no reason: refused before any work (one
    step has no slope); a run whose backward turns NaN says so in place of +nan."""
    assert main(["theory", "--cell", "rnn", "--steps", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--steps 1: the measured rate is the least-squares slope of log10 ||dL/dh_t|| " \
        "over the steps, which needs --steps >= 2" in captured.err
    out = tmp_path / "t.json"
    assert main(["theory", "--cell", "rnn", "--activation", "gelu", "--recurrent-init", "orthogonal", "--sigma-w", "3",
                 "--steps", "1000", "--hidden", "16", "--backend", "numpy", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "nan" not in text and "measured    none (1000 steps, batch 4, numpy): fewer than two of the 900 steps " \
        "fitted have a finite, non-zero ||dL/dh_t|| (the forward state turned non-finite at step " in text, text
    assert "the backward signal turned non-finite at step 999)" in text and "difference" not in text
    assert json.loads(out.read_text())["measured_decades_per_step"] == "nan"
    assert main(["theory", "--cell", "rnn", "--steps", "2", "--hidden", "3"]) == 0
    assert re.search(r"measured    [+-]\d\.\d{6} decades per step going back \(2 steps", capsys.readouterr().out)


def _term_column(text: str) -> dict[int, str]:
    """step -> the ||dW_hh term|| cell of an rnn report's table."""
    rows = [ln.split() for ln in text.splitlines() if re.match(r"^\s+\d+\s", ln)]
    return {int(r[0]): r[2] for r in rows}


@pytest.mark.parametrize("backend", ["numpy", "numba", "c"])
def test_a_nan_backward_shows_nan_step_terms_not_zero(backend, capsys):
    """A GELU cell at orthogonal gain 3 turns NaN: the C backend's Gram-matrix norm (hidden 64,
    batch 16) records the NaN terms as 0, and the table showed "0" (an exact zero) there."""
    from gradbench.recurrent.backends import backends

    if backend not in backends():
        pytest.skip(f"the {backend} backend is not available")
    assert main(["run", "--cell", "rnn", "--activation", "gelu", "--sigma-w", "3", "--steps", "1000", "--hidden", "64",
                 "--backend", backend, "--rows", "1000"]) == 0
    terms = _term_column(capsys.readouterr().out)
    assert len(terms) == 1000 and set(terms.values()) == {"nan"}, {t: v for t, v in terms.items() if v != "nan"}
    # and what the result records: NaN, not the 0 that C's Gram path clamped it to (csrc/recurrent_impl.h)
    import numpy as np

    import gradbench as gb

    rnn = gb.Recurrent(cell="rnn", activation="gelu", sigma_w=3.0, steps=1000, hidden=64)
    r = gb.backprop(rnn, gb.init_params(rnn, 0), gb.sequence_input(rnn, 16, 1), backend=backend)
    assert r.first_nonfinite_backward is not None and np.all(np.isnan(r.grad_norm.log10()))


def test_report_shows_nan_where_the_recorded_term_of_a_nan_step_is_zero():
    """The table, from a diagnosis whose NaN steps recorded 0 terms (as the C Gram path does):
    nan there, said under the table; an exact 0 of a finite step (step 0: h_{-1} = 0) stays 0."""
    import dataclasses

    import numpy as np

    import gradbench as gb
    from gradbench.recurrent.diagnose import format_report

    rnn = gb.Recurrent(cell="rnn", steps=10, hidden=3)
    d = gb.diagnose(gb.backprop(rnn, gb.init_params(rnn, 0), gb.GeneratedSequence(rnn, 2, 0), backend="numpy"))
    assert d.grad_log10[0] == -np.inf and np.isfinite(d.signal_log10).all()
    clean = format_report(d)
    assert _term_column(clean)[0] == "0" and "not a number" not in clean
    s, g = d.signal_log10.copy(), d.grad_log10.copy()
    s[:6], g[:6] = np.nan, -np.inf  # the backward turned NaN at step 5; the terms recorded as 0
    text = format_report(dataclasses.replace(d, signal_log10=s, grad_log10=g, first_nonfinite_backward=5))
    terms = _term_column(text)
    assert [terms[t] for t in range(6)] == ["nan"] * 6 and all(terms[t].startswith("10^") for t in range(6, 10))
    assert "(||dW_hh term|| nan: that step's dL/dh_t or h_{t-1} is not finite, so its term is not a number)" in text


def test_results_are_written_before_the_report_is_printed(tmp_path, monkeypatch, capsys):
    """README: "Results are written before the report is printed": the recurrent run printed its
    report, then wrote --out and --plot (a Ctrl-C while it printed lost them)."""
    import os

    from gradbench.recurrent import diagnose as rdiag

    out, plot = tmp_path / "r.json", tmp_path / "r.png"
    original = rdiag.format_report

    def report(*a, **k):
        assert out.exists() and plot.exists(), "the report came before the files"
        return original(*a, **k)

    monkeypatch.setattr(rdiag, "format_report", report)
    assert main(["run", "--cell", "gru", "--steps", "20", "--hidden", "4", "--backend", "numpy",
                 "--out", str(out), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert text.index("VANISHING") < text.index(f"wrote {out}") and os.path.getsize(out) > 0


def test_a_scale_the_dtype_cannot_hold_is_refused_in_option_words(capsys):
    """The spec's refusal reached the command line in its own words (sigma_w=1e-50 ...)."""
    assert main(["run", "--cell", "rnn", "--steps", "10", "--hidden", "4", "--dtype", "float32",
                 "--sigma-w", "1e-50"]) == 2
    err = capsys.readouterr().err
    assert "--sigma-w=1e-50 is beyond what float32 weights hold" in err and "sigma_w" not in err, err


def test_recurrent_training_json_records_the_net(tmp_path):
    """The file held only the training settings: no cell, steps or hidden size, and
    memory-lstm's settings read gate_bias 0 while it trains with forget bias 5."""
    out = tmp_path / "t.json"
    assert main(["train", "--demo", "memory-lstm", "--epochs", "1", "--out", str(out)]) == 0
    run = json.loads(out.read_text())["runs"]["memory-lstm"]
    from gradbench.recurrent.train import RECURRENT_DEMOS

    want = dataclasses.asdict(RECURRENT_DEMOS["memory-lstm"].make_rnn())
    assert run["rnn"] == json.loads(json.dumps(want)) and run["rnn"]["forget_bias"] == 5.0
    assert run["rnn"]["cell"] == "lstm" and run["rnn"]["steps"] == 100 and run["settings"]["gate_bias"] == 0.0


def test_compare_prints_a_rate_that_rounds_to_zero_as_its_plot_does(capsys):
    # an identity RNN with an orthogonal W_hh keeps ||dL/dh_t||: its rate is 0 but for rounding,
    # which printed -0.0000 in the table where the plot's legend (report.fmt_rate) gave +0.0000
    assert main(["compare", "--cells", "rnn", "--activation", "identity", "--recurrent-init", "orthogonal",
                 "--sigma-w", "1", "--steps", "50", "--seed", "0"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("rnn "))
    assert row.split()[2] == "+0.0000", row


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_theory_names_the_dtype_in_its_header(dtype, capsys):
    # the measured rate is the dtype's run (float32's depth of reach differs): the header says which
    assert main(["theory", "--cell", "gru", "--steps", "20", "--hidden", "8", "--dtype", dtype]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert head == f"theory: gru, hidden 8, W_hh normal gain 1, {dtype}", head


def test_theory_names_the_finite_width_gap_where_mean_field_predicts(capsys):
    # a tanh cell at gain 3: 69 % off at hidden 16, a few % at hidden 128; the note says why
    gaps = {}
    for hidden in (16, 128):
        assert main(["theory", "--cell", "rnn", "--sigma-w", "3", "--hidden", str(hidden), "--steps", "2000"]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.lstrip().startswith("difference"))
        assert f"mean field is the infinite-width limit: at hidden {hidden} a net's rate differs by O(1 / N)" in line
        gaps[hidden] = abs(float(line.split()[1]))
    assert gaps[128] < gaps[16] / 4, gaps
    assert main(["theory", "--cell", "rnn", "--activation", "identity", "--hidden", "16", "--steps", "200"]) == 0
    assert "infinite-width" not in capsys.readouterr().out  # the linear cell's prediction is not mean field


def test_a_recurrent_json_diagnosis_reads_back(tmp_path, capsys):
    """docs/formats.md promises how to read every file back; `run --cell --out x.json` had no reader
    (a reviewer's finding). RecurrentDiagnosis.from_dict gives the diagnosis whose report is the one
    the command printed, and which writes the same JSON again; clip records come back as bools."""
    import json

    from gradbench import cli
    from gradbench.recurrent.diagnose import RecurrentDiagnosis

    out = tmp_path / "d.json"
    assert cli.main(["run", "--cell", "lstm", "--steps", "30", "--hidden", "6", "--clip", "norm", "--clip-threshold",
                     "0.05", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    d = RecurrentDiagnosis.from_dict(data["diagnosis"])
    assert str(d).splitlines()[0] in printed and str(d).splitlines()[-1] in printed
    assert json.loads(d.to_json()) == data["diagnosis"]
    assert d.clip_acted.dtype == bool and d.clip_acted.any()
    assert RecurrentDiagnosis.from_json(d.to_json()).to_json() == d.to_json()
    with pytest.raises(ValueError, match="no field 'rnn'"):
        RecurrentDiagnosis.from_dict({k: v for k, v in data["diagnosis"].items() if k != "rnn"})


def test_a_misspelt_cell_is_named_before_a_missing_option(capsys):
    # `run --cell lsmt --steps 5` said only that --hidden is required
    assert main(["run", "--cell", "lsmt", "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert "'lsmt' is not one of 'rnn', 'lstm', 'gru'; did you mean 'lstm'?" in err and "--hidden" not in err

