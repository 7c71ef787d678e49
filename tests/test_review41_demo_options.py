"""Review 41 #2: `gradbench demo --seed 3 --dtype float32` ran the training demos at seed 0 in
float64 and the cells in float64; both options now apply to all three parts. The training runs
are checked against a PyTorch forward pass of the seed-3 float32 weights."""

import json
import os

import numpy as np
import pytest

import gradbench as gb
from gradbench.cli import main
from gradbench.train import DEMOS

torch = pytest.importorskip("torch")


def torch_bce_loss(stack, params, X, y, dtype):
    """The bce of the head's logits over input layer, ReLU/sigmoid/tanh layers, in torch ``dtype``."""
    t = lambda a: torch.tensor(np.asarray(a)).to(dtype)  # noqa: E731
    phi = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[stack.activation]
    h = t(X) @ t(params.W_in).T + t(params.b_in)
    for l in range(stack.depth):
        h = phi(h @ t(params.W[l]).T + t(params.b[l]))
    z = (h @ t(params.W_out).T + t(params.b_out))[:, 0]
    return float(torch.nn.functional.binary_cross_entropy_with_logits(z, t(y).to(dtype)))


def test_demo_seed_and_dtype_reach_the_training_demos(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["demo", "--depth", "4", "--width", "8", "--seed", "3", "--dtype", "float32", "--no-cells",
                 "--out-dir", str(out), "--backend", "numpy"]) == 0
    text = capsys.readouterr().out
    doc = json.loads((out / "training.json").read_text())
    for name in ("relu-he", "xavier-tanh", "deep-sigmoid"):
        run = doc["runs"][name]
        demo = DEMOS[name]
        stack = demo.make_stack(dtype="float32")
        X, y = demo.data()
        p = gb.init_params(stack, 3)
        ref32 = torch_bce_loss(stack, p, X.astype(np.float32), y, torch.float32)
        ref0 = torch_bce_loss(demo.make_stack(), gb.init_params(demo.make_stack(), 0), X, y, torch.float64)
        assert run["eval_loss"][0] == pytest.approx(ref32, rel=2e-6), name  # seed 3's weights, float32 sums
        assert abs(run["eval_loss"][0] - ref0) > 1e-3, name  # not the seed-0 run it was
        row = next(s for s in text.splitlines() if s.startswith(name + " "))
        assert f"{ref32:.4f}" in row.split()[1], (name, row)
        assert run["settings"]["seed"] == 3 and run["stack"]["dtype"] == "float32", name
    assert "seed" not in doc and "dtype" not in doc  # the head of train --out: each run records its own
    assert "training on two moons (bce; full-data loss; seed 3, float32;" in text


def test_demo_seed_and_dtype_reach_the_cells(tmp_path, capsys):
    """The cells as `compare --cells rnn,lstm,gru --steps 1000` at the same --seed, --dtype and
    --batch (the demo's promise: the same run), in float32."""
    out = tmp_path / "d"
    assert main(["demo", "--depth", "4", "--width", "8", "--seed", "3", "--dtype", "float32", "--batch", "4",
                 "--no-train", "--out-dir", str(out), "--backend", "numpy"]) == 0
    text = capsys.readouterr().out
    got = json.loads((out / "cells.json").read_text())
    ref_path = os.path.join(tmp_path, "ref.json")
    assert main(["compare", "--cells", "rnn,lstm,gru", "--steps", "1000", "--seed", "3", "--dtype", "float32",
                 "--batch", "4", "--backend", "numpy", "--out", ref_path]) == 0
    ref = json.loads(open(ref_path).read())
    assert got["seed"] == 3 and got["batch"] == 4
    for cell in ("rnn", "lstm", "gru"):
        assert got["diagnoses"][cell]["loss"] == ref["diagnoses"][cell]["loss"]
        assert got["diagnoses"][cell]["signal_log10"] == ref["diagnoses"][cell]["signal_log10"]
        assert got["diagnoses"][cell]["rnn"]["dtype"] == "float32"
    assert "over 1000 steps (hidden 32, batch 4, seed 3, float32;" in text


def test_train_demo_takes_dtype_as_demo_does(tmp_path, capsys):
    """`train --demo relu-he --dtype float32` refused --dtype as ignored; run_demo now takes it."""
    path = tmp_path / "t.json"
    assert main(["train", "--demo", "relu-he", "--dtype", "float32", "--epochs", "1", "--backend", "numpy",
                 "--out", str(path)]) == 0
    capsys.readouterr()
    run = json.loads(path.read_text())["runs"]["relu-he"]
    demo = DEMOS["relu-he"]
    stack = demo.make_stack(dtype="float32")
    X, y = demo.data()
    ref32 = torch_bce_loss(stack, gb.init_params(stack, 0), X.astype(np.float32), y, torch.float32)
    assert run["stack"]["dtype"] == "float32"
    assert run["eval_loss"][0] == pytest.approx(ref32, rel=2e-6)
