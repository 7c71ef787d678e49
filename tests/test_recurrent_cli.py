"""The recurrent command line: gradbench run --cell, compare --cells, theory --cell, train --demo."""

from __future__ import annotations

import json

import pytest

from gradbench.cli import main


def test_run_prints_exact_norms_and_the_verdict(tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["run", "--cell", "lstm", "--steps", "300", "--hidden", "8", "--batch", "4", "--out", str(out),
                 "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "lstm, 300 steps, hidden 8" in text and "VANISHING" in text and "||dL/dc_t||" in text
    assert "the gradient reaching step 0 is 10^" in text
    d = json.loads(out.read_text())["diagnosis"]
    assert len(d["signal_log10"]) == 300 and d["verdict"] == "vanishing" and png.stat().st_size > 1000


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
    assert json.loads(out.read_text())["runs"]["exploding-rnn"]["diverged_epoch"] == 0


@pytest.mark.parametrize("argv, message", [
    (["run", "--cell", "lstn", "--steps", "5", "--hidden", "3"], "did you mean 'lstm'"),
    (["run", "--cell", "gru", "--steps", "5", "--hidden", "3", "--forget-bias", "1"], "forget_bias is only valid"),
    (["run", "--cell", "rnn", "--steps", "0", "--hidden", "3"], "steps must be >= 1"),
    (["run", "--cell", "rnn", "--steps", "5"], "required: --hidden"),
    (["run", "--cell", "rnn", "--steps", "5", "--hidden", "3", "--plot", "x.txt"], "--plot 'x.txt' must end in"),
    (["run", "--cell", "rnn", "--steps", "5", "--hidden", "3", "--batch", "0"], "--batch must be >= 1"),
    (["compare", "--cells", "rnn,lsm", "--steps", "5"], "--cells 'rnn,lsm'"),
    (["train", "--demo", "memory-lstm", "--steps", "-1"], "steps must be >= 1"),
])
def test_bad_options_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


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
