"""A user-path review of the recurrent command line (gradbench run --cell, compare --cells,
theory --cell): parameter-gradient clipping that showed nothing, clipping in theory, the head
options the README listed but the command line refused, the header, and compare's "+nan"."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import gradbench as gb
from gradbench.cli import main



def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


# ------------------------------------------------------------------ 1. --clip-on matrix|global
def _fields_equal(a: dict, b: dict, skip=("rnn",)) -> list[str]:
    """The names of the diagnosis fields that differ (NaN equal to NaN)."""
    differ = []
    for k in a:
        if k in skip:
            continue
        x, y = a[k], b[k]
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True):
                differ.append(k)
        elif isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            continue
        elif x != y:
            differ.append(k)
    return differ


@pytest.mark.parametrize("clip_on", ["matrix", "global"])
def test_parameter_gradient_clip_leaves_the_diagnosis_unchanged_so_the_cli_refuses_it(clip_on, tmp_path, capsys):
    """The fact behind the refusal, from the Python API: the diagnosis of a net whose parameter
    gradients are clipped to 1e-6 equals the unclipped one's field by field (only the net's own
    fields differ), while the gradient itself is clipped. The command line then refuses the
    option before any work (exit 2, one line naming --clip-on signal), where it wrote the
    unclipped diagnosis under a "clip ... on global" header."""
    import dataclasses

    base = gb.Recurrent(cell="rnn", steps=20, hidden=3, recurrent_init="normal", sigma_w=3.0)
    clipped = base.replace(clip="norm", clip_threshold=1e-6, clip_on=clip_on)
    params = gb.init_params(base, 0)
    xs = gb.GeneratedSequence(base, 4, 0)
    r0 = gb.backprop(base, params, xs, backend="numpy")
    r1 = gb.backprop(clipped, params, gb.GeneratedSequence(clipped, 4, 0), backend="numpy")
    # the clip did act on the parameter gradient ...
    assert np.linalg.norm(r1.grads.W_hh.to_float()) <= 1e-6 * (1 + 1e-12)
    assert np.linalg.norm(r0.grads.W_hh.to_float()) > 1e-3
    # ... and the diagnosis does not see it
    d0, d1 = gb.diagnose(r0), gb.diagnose(r1)
    fields = [f.name for f in dataclasses.fields(d0)]
    assert _fields_equal({k: getattr(d0, k) for k in fields}, {k: getattr(d1, k) for k in fields}) == []

    out = tmp_path / "g.json"
    for argv in (["run", "--cell", "rnn"], ["compare", "--cells", "rnn,lstm"]):
        assert main(argv + ["--steps", "20", "--hidden", "3", "--recurrent-init", "normal", "--sigma-w", "3",
                            "--clip", "norm", "--clip-on", clip_on, "--clip-threshold", "1e-6",
                            "--out", str(out)]) == 2
        err = _one_line_error(capsys, f"--clip-on {clip_on} clips the parameter gradients", "--clip-on signal")
        assert "compiling" not in err and not out.exists()  # before any work


def test_signal_clip_is_still_taken_and_shows_in_the_diagnosis(tmp_path, capsys):
    """--clip-on signal (the default) changes what the diagnosis reads: a norm clip at 1e-3 caps
    ||dL/dh_t|| at every step, where the unclipped run (the Python API) exceeds it at the last steps."""
    out = tmp_path / "s.json"
    assert main(["run", "--cell", "rnn", "--steps", "20", "--hidden", "3", "--recurrent-init", "normal",
                 "--sigma-w", "3", "--clip", "norm", "--clip-threshold", "1e-3", "--out", str(out)]) == 0
    capsys.readouterr()
    got = np.array(json.loads(out.read_text())["diagnosis"]["signal_log10"], dtype=float)
    rnn = gb.Recurrent(cell="rnn", steps=20, hidden=3, recurrent_init="normal", sigma_w=3.0)
    ref = np.asarray(gb.backprop(rnn, gb.init_params(rnn, 0), gb.GeneratedSequence(rnn, 16, 0)).signal_norm.log10())
    assert np.all(got <= -3 + 1e-9) and np.sum(ref > -3 + 0.1) >= 2


# ------------------------------------------------------------------ 2. theory --cell takes no clip
@pytest.mark.parametrize("extra, named", [
    (["--clip", "norm", "--clip-threshold", "1e-6"], "--clip, --clip-threshold"),
    (["--clip", "value"], "--clip"),
    (["--clip", "norm", "--clip-on", "signal"], "--clip, --clip-on"),
    (["--clip-on", "global"], "--clip-on"),
])
def test_theory_refuses_every_clip_option(extra, named, tmp_path, capsys):
    """Mean field predicts the unclipped chain: a clipped measurement against it read "difference
    100.14% of the prediction". Refused before any work, naming the options."""
    out = tmp_path / "t.json"
    assert main(["theory", "--cell", "rnn", "--steps", "200", "--hidden", "8", "--recurrent-init", "normal",
                 "--sigma-w", "1.5", "--out", str(out)] + extra) == 2
    err = _one_line_error(capsys, f"{named}: theory --cell takes no clipping", "unclipped chain")
    assert "measured" not in err and not out.exists()


# ------------------------------------------------------------------ 3. --loss, --loss-on, --output-dim
def _torch_bptt(rnn, params, xs, targets, loss_on):
    """Plain torch autograd through a tanh RNN with a head: log10 ||dL/dh_t|| (whole loss) and
    log10 ||dL_{T-1}/dh_t|| (the last step's term alone), with gradbench's documented loss: mse is
    the mean over (steps x) batch x outputs of (y - t)^2, softmax_ce the mean of logsumexp(y) - y[t]."""
    torch = pytest.importorskip("torch")
    T = rnn.steps
    p = {k: torch.tensor(getattr(params, k), dtype=torch.float64, requires_grad=True)
         for k in ("W_ih", "W_hh", "b_ih", "b_hh", "W_out", "b_out")}
    x = torch.tensor(xs, dtype=torch.float64)
    B = x.shape[1]

    def term(y, t, count):
        if rnn.loss == "mse":
            return ((y - torch.tensor(t, dtype=torch.float64)) ** 2).sum() / (count * rnn.output_dim)
        assert rnn.loss == "softmax_ce"
        return torch.nn.functional.cross_entropy(y, torch.tensor(t), reduction="sum") / count

    def run(last_only):
        h = torch.zeros(B, rnn.hidden, dtype=torch.float64)
        hs, loss = [], 0.0
        for t in range(T):
            h = torch.tanh(x[t] @ p["W_ih"].T + p["b_ih"] + h @ p["W_hh"].T + p["b_hh"])
            h.retain_grad()
            hs.append(h)
            if loss_on == "every" and (t == T - 1 or not last_only):
                loss = loss + term(h @ p["W_out"].T + p["b_out"], targets[t], T * B)
        if loss_on == "last":
            loss = term(h @ p["W_out"].T + p["b_out"], targets, B)
        loss.backward()
        return np.log10([float(torch.linalg.norm(hh.grad)) for hh in hs]), float(loss.detach())

    whole, loss = run(False)
    carried = run(True)[0] if loss_on == "every" else None
    return whole, carried, loss


@pytest.mark.parametrize("cmd, backend", [("run", "numpy"), ("run", "auto"), ("compare", "numpy")])
def test_every_step_mse_matches_torch_bptt(cmd, backend, tmp_path, capsys):
    """run --cell / compare --cells with --loss mse --loss-on every --output-dim 2: the written
    ||dL/dh_t|| and the carried ||dL_{T-1}/dh_t|| against torch autograd on the same parameters
    (gradbench.init_params(rnn, seed)), input (GeneratedSequence(rnn, batch, seed)) and targets
    (standard normal (T, B, O) from numpy.random.default_rng([seed, 2]), as the stacks' probes draw
    theirs); the options in the file's net and head. Before: "unrecognized arguments: --loss"."""
    T, N, D, B, O, seed = 7, 3, 2, 4, 2, 5
    out = tmp_path / "e.json"
    argv = (["run", "--cell", "rnn"] if cmd == "run" else ["compare", "--cells", "rnn"]) + [
        "--steps", str(T), "--hidden", str(N), "--input-dim", str(D), "--batch", str(B), "--seed", str(seed),
        "--recurrent-init", "normal", "--sigma-w", "0.8", "--sigma-b", "0.2", "--loss", "mse", "--loss-on", "every",
        "--output-dim", str(O), "--backend", backend, "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    f = json.loads(out.read_text())
    d = f["diagnosis"] if cmd == "run" else f["diagnoses"]["rnn"]
    assert (d["rnn"]["loss"], d["rnn"]["loss_on"], d["rnn"]["output_dim"]) == ("mse", "every", O)
    assert "default_rng([seed, 2])" in f["targets"] and "(steps, batch, output_dim)" in f["targets"]

    rnn = gb.Recurrent(cell="rnn", steps=T, hidden=N, input_dim=D, recurrent_init="normal", sigma_w=0.8,
                       sigma_b=0.2, loss="mse", loss_on="every", output_dim=O)
    targets = np.random.default_rng([seed, 2]).standard_normal((T, B, O))
    whole, carried, loss = _torch_bptt(rnn, gb.init_params(rnn, seed), gb.GeneratedSequence(rnn, B, seed).materialize(),
                                       targets, "every")
    np.testing.assert_allclose(np.array(d["signal_log10"], dtype=float), whole, atol=1e-10, rtol=0)
    np.testing.assert_allclose(np.array(d["carried_log10"], dtype=float), carried, atol=1e-10, rtol=0)
    assert abs(d["loss"] - loss) <= 1e-12 * loss
    if cmd == "compare":  # its columns are what its dec/step is fitted to: the last step's loss carried back
        row = next(line for line in text.splitlines() if line.startswith("rnn "))
        shown = [float(v[3:]) for v in row.split() if v.startswith("10^")]  # back 0, 1, T - 1
        np.testing.assert_allclose(shown, carried[[T - 1, T - 2, 0]], atol=0.006)
        assert "||dL_{T-1}/dh_t||, the gradient of the last step's loss alone" in text


def test_last_step_softmax_ce_matches_torch(tmp_path, capsys):
    """A softmax_ce head on the last step, 3 classes: labels drawn as
    gradbench.params.random_targets draws a stack's (integers in [0, O) from default_rng([seed, 2]))."""
    T, N, B, O, seed = 6, 4, 5, 3, 2
    out = tmp_path / "c.json"
    assert main(["run", "--cell", "rnn", "--steps", str(T), "--hidden", str(N), "--batch", str(B), "--seed", str(seed),
                 "--loss", "softmax_ce", "--output-dim", str(O), "--backend", "numpy", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "loss softmax_ce on the last step (3 outputs)" in text.splitlines()[0]
    f = json.loads(out.read_text())
    rnn = gb.Recurrent(cell="rnn", steps=T, hidden=N, loss="softmax_ce", output_dim=O)
    labels = np.random.default_rng([seed, 2]).integers(0, O, size=B)
    whole, _, loss = _torch_bptt(rnn, gb.init_params(rnn, seed), gb.GeneratedSequence(rnn, B, seed).materialize(),
                                 labels, "last")
    np.testing.assert_allclose(np.array(f["diagnosis"]["signal_log10"], dtype=float), whole, atol=1e-10, rtol=0)
    assert abs(f["diagnosis"]["loss"] - loss) <= 1e-12 * loss
    assert f["targets"] == "gradbench.params.random_targets(rnn, batch, seed)"


@pytest.mark.parametrize("extra, message", [
    (["--output-dim", "3"], "--output-dim sizes the head, and the loss is sum_squares, which has none"),
    (["--loss-on", "every"], "--loss-on='every' needs a head"),
    (["--loss", "msee"], "--loss='msee' is not one of"),
    (["--loss", "softmax_ce"], "--loss='softmax_ce' needs --output-dim >= 2"),
    (["--loss-on", "all"], "argument --loss-on: invalid choice: 'all'"),
])
def test_bad_head_options_exit_2_before_any_work(extra, message, tmp_path, capsys):
    out = tmp_path / "h.json"
    for argv in (["run", "--cell", "rnn"], ["compare", "--cells", "rnn,gru"]):
        assert main(argv + ["--steps", "5", "--hidden", "3", "--out", str(out)] + extra) == 2
        _one_line_error(capsys, message)
        assert not out.exists()


def test_every_step_targets_that_do_not_fit_are_refused_before_any_work(monkeypatch, tmp_path, capsys):
    """--loss-on every holds (T, B, O) targets whole (the planner counts the rest): 10^5 steps x 4
    x 1 float64 are 3.2 MB, refused against 1 MB available, naming what to reduce."""
    from gradbench.recurrent import cli as rcli

    monkeypatch.setattr(rcli, "available", lambda: 10**6)
    out = tmp_path / "m.json"
    assert main(["run", "--cell", "rnn", "--steps", "100000", "--hidden", "2", "--batch", "4", "--loss", "mse",
                 "--loss-on", "every", "--out", str(out)]) == 2
    _one_line_error(capsys, "--loss-on every holds the targets of every step (100000 x 4 x 1): about 3.05 MiB",
                    "use --loss-on last")
    assert not out.exists()


# ------------------------------------------------------------------ 4. the run header
def test_run_header_says_every_option_that_changes_the_net(capsys):
    """The header said neither the dtype (a float32 report's equalled the float64 one's) nor the
    activation's parameter, input_dim, W_ih's init or sigma_b, which the stack header says."""
    common = ["run", "--cell", "rnn", "--steps", "8", "--hidden", "4", "--batch", "2", "--backend", "numpy"]
    heads = {}
    for dtype in ("float32", "float64"):
        assert main(common + ["--dtype", dtype]) == 0
        heads[dtype] = capsys.readouterr().out.splitlines()[0]
    assert heads["float32"] != heads["float64"]
    assert "float32" in heads["float32"] and "float64" in heads["float64"]
    assert main(common + ["--activation", "leaky_relu", "--activation-param", "0.3", "--input-dim", "2",
                          "--init", "he_normal", "--sigma-b", "0.25", "--dtype", "float32"]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    for words in ("leaky_relu (slope 0.3)", "input dim 2", "he_normal", "sigma_b=0.25", "float32"):
        assert words in head, head
    # the default slope is not said, as in the stack header
    assert main(common + ["--activation", "leaky_relu"]) == 0
    assert "slope" not in capsys.readouterr().out.splitlines()[0]


# ------------------------------------------------------------------ 5. compare over one step
def test_compare_over_one_step_prints_no_nan_and_says_why(capsys):
    """With one step there is no slope: run says "no slope to fit over one step", compare
    printed "+nan"."""
    assert main(["run", "--cell", "rnn", "--steps", "1", "--hidden", "2"]) == 0
    assert "no slope to fit over one step" in capsys.readouterr().out
    assert main(["compare", "--cells", "rnn,lstm,gru", "--steps", "1", "--hidden", "2"]) == 0
    text = capsys.readouterr().out
    assert "nan" not in text
    rows = [line for line in text.splitlines() if line.split()[:1] in (["rnn"], ["lstm"], ["gru"])]
    assert len(rows) == 3 and all(r.split()[2] == "-" for r in rows), rows
    assert "(dec/step -: no slope to fit over one step)" in text
