"""The command-line options of issue 17: run --torch / --tensorboard / --out x.npz, train --tensorboard."""

import os

import numpy as np
import pytest

import gradbench as gb
from gradbench import cli
from gradbench.diagnose import Diagnosis
from gradbench.params import random_targets


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _events(logdir):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                             reason="the tensorboard package (event reader) is not installed: pip install '.[test]'")
    acc = ea.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_run_out_npz_holds_the_same_diagnosis_as_json(tmp_path, capsys):
    base = ["run", "--depth", "40", "--width", "8", "--activation", "tanh", "--backend", "numpy"]
    assert run(base + ["--out", str(tmp_path / "d.json")], capsys)[0] == 0
    code, out, err = run(base + ["--out", str(tmp_path / "d.npz")], capsys)
    assert code == 0, err and f"wrote {tmp_path / 'd.npz'}" in out
    import json

    ref = Diagnosis.from_dict(json.loads((tmp_path / "d.json").read_text())["diagnosis"])
    got = Diagnosis.from_npz(tmp_path / "d.npz")
    assert got.to_json() == ref.to_json()
    with np.load(tmp_path / "d.npz") as z:
        np.testing.assert_array_equal(z["grad_log10"], ref.grad_log10)


def test_run_tensorboard_writes_the_depth_profile(tmp_path, capsys):
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed: pip install '.[test]'")
    code, out, err = run(["run", "--depth", "30", "--width", "8", "--activation", "sigmoid", "--backend", "numpy",
                          "--tensorboard", str(tmp_path / "tb"), "--out", str(tmp_path / "d.json")], capsys)
    assert code == 0, err
    import json

    d = Diagnosis.from_dict(json.loads((tmp_path / "d.json").read_text())["diagnosis"])
    acc = _events(tmp_path / "tb")
    ev = acc.Scalars("depth/grad_log10")
    assert [e.step for e in ev] == list(range(30))
    np.testing.assert_allclose([e.value for e in ev], d.grad_log10, rtol=1e-6)


def test_tensorboard_makes_missing_parents_only_with_mkdir(tmp_path, capsys):
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed: pip install '.[test]'")
    code, out, err = run(["run", "--depth", "4", "--width", "4", "--tensorboard", str(tmp_path / "a" / "tb"),
                          "--mkdir"], capsys)
    assert code == 0 and any(p.name.startswith("events.out") for p in (tmp_path / "a" / "tb").iterdir()), err


def test_train_tensorboard_writes_one_run_per_demo(tmp_path, capsys):
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed: pip install '.[test]'")
    code, out, err = run(["train", "--demo", "deep-sigmoid,adam", "--epochs", "2", "--backend", "numpy",
                          "--tensorboard", str(tmp_path / "runs")], capsys)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "runs")) == ["adam", "deep-sigmoid"]
    # a "wrote" line for each, as run --tensorboard prints one (train printed none)
    assert [line for line in out.splitlines() if line.startswith("wrote ")] == [
        f"wrote {tmp_path / 'runs' / name}" for name in ("deep-sigmoid", "adam")]
    ref = gb.run_demo("adam", epochs=2, backend="numpy")
    acc = _events(tmp_path / "runs" / "adam")
    np.testing.assert_allclose([e.value for e in acc.Scalars("loss/eval")], ref.eval_loss, rtol=1e-6)
    assert len(acc.Tags()["histograms"]) == ref.stack.depth


def test_run_torch_model_diagnoses_the_saved_weights(tmp_path, capsys):
    torch = pytest.importorskip("torch", reason="torch is not installed: pip install 'gradbench[torch]' "
                                                "(make test-all installs it)")
    stack = gb.Stack(depth=12, width=8, activation="sigmoid", input_dim=3, loss="bce")
    params = gb.init_params(stack, 7)
    torch.save(gb.to_torch(stack, params), tmp_path / "model.pt")
    code, out, err = run(["run", "--torch", str(tmp_path / "model.pt"), "--loss", "bce", "--backend", "numpy",
                          "--batch", "8", "--seed", "3", "--out", str(tmp_path / "d.npz")], capsys)
    assert code == 0, err
    assert "depth 12, width 8, sigmoid" in out and "verdict: VANISHING" in out
    header = out.splitlines()[0]  # the model's own weights, not an init scheme it never used
    assert f"the weights of {tmp_path / 'model.pt'}" in header and "xavier" not in header, header
    # the same numbers as the Python API on the same weights with the CLI's seeds
    x = gb.gaussian_input(stack, 8, seed=np.random.default_rng([3, 1]))
    t = random_targets(stack, 8, 3)
    ref = gb.diagnose(gb.backprop(stack, params, x, t, backend="numpy"), params)
    np.testing.assert_array_equal(Diagnosis.from_npz(tmp_path / "d.npz").grad_log10, ref.grad_log10)
    # float32 on request
    code, out, err = run(["run", "--torch", str(tmp_path / "model.pt"), "--loss", "bce", "--dtype", "float32"],
                         capsys)
    assert code == 0 and "float32" in out, err
    # and float64 for a float32 model (torch's default): --dtype float64 equals the option's
    # default, and the model's float32 was kept in silence
    torch.save(gb.to_torch(stack, params).float(), tmp_path / "m32.pt")
    code, out, err = run(["run", "--torch", str(tmp_path / "m32.pt"), "--loss", "bce", "--dtype", "float64"], capsys)
    assert code == 0 and "float64 (backend" in out.splitlines()[0], err
    code, out, err = run(["run", "--torch", str(tmp_path / "m32.pt"), "--loss", "bce"], capsys)
    assert code == 0 and "float32 (backend" in out.splitlines()[0], err  # without --dtype: the model's own
    # a float16 model: the command's words (it said "pass dtype='float64'", the API's)
    torch.save(gb.to_torch(stack, params).half(), tmp_path / "m16.pt")
    code, out, err = run(["run", "--torch", str(tmp_path / "m16.pt"), "--loss", "bce"], capsys)
    assert code == 2 and "pass --dtype float64 or --dtype float32" in err and "dtype='" not in err, err


@pytest.mark.parametrize("argv,needle", [
    (["run", "--depth", "4", "--width", "4", "--out", "r.parquet"], "must end in .json or .npz"),
    (["run", "--width", "4"], "give --depth and --width (or --torch MODEL.pt)"),
    (["run", "--torch", "missing.pt"], "--torch 'missing.pt': no such file"),
    (["run", "--torch", "model.pt", "--depth", "3"], "--torch takes the stack from the model: drop --depth"),
    (["run", "--torch", "model.pt", "--stats-only"], "drop it"),
    # typed at its default value: it was dropped in silence (a tanh stack named for a sigmoid model)
    (["run", "--torch", "model.pt", "--activation", "tanh"], "--torch takes the stack from the model: drop --activation"),
    (["run", "--torch", "."], "--torch '.' is a directory"),
    (["run", "--depth", "4", "--width", "4", "--tensorboard", "afile"], "exists and is not a directory"),
    (["train", "--demo", "adam", "--tensorboard", "afile"], "exists and is not a directory"),
    (["run", "--depth", "4", "--width", "4", "--tensorboard", "no/tb"],
     "--tensorboard 'no/tb': directory"),  # its parent must exist, as for every output, or --mkdir
    (["train", "--demo", "adam", "--tensorboard", "no/runs"], "does not exist (create it, or pass --mkdir)"),
])
def test_bad_options_exit_2_with_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "model.pt").write_bytes(b"")
    before = sorted(os.listdir(tmp_path))
    code, out, err = run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert sorted(os.listdir(tmp_path)) == before  # nothing written


def test_run_torch_refusals_exit_2_with_one_line(tmp_path, capsys):
    torch = pytest.importorskip("torch", reason="torch is not installed: pip install 'gradbench[torch]'")
    nn = torch.nn
    torch.save(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Dropout()).double(), tmp_path / "drop.pt")
    torch.save(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)).double(), tmp_path / "head.pt")
    torch.save(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.ReLU()).double(), tmp_path / "mix.pt")
    for name, needle in (("drop.pt", "holds torch.nn.modules.dropout.Dropout"),
                         ("head.pt", "ends in a head: give --loss mse, bce or softmax_ce"),
                         ("mix.pt", "activations must be the same in every layer")):
        code, out, err = run(["run", "--torch", str(tmp_path / name)], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, (name, err)


def test_run_torch_without_torch_exits_2_with_the_install_line(tmp_path, capsys, monkeypatch):
    import sys

    (tmp_path / "model.pt").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)
    for name in ("gradbench.torch_io", "gradbench.torch_model"):  # imported afresh, without torch
        monkeypatch.delitem(sys.modules, name, raising=False)
    code, out, err = run(["run", "--torch", str(tmp_path / "model.pt")], capsys)
    assert code == 2 and "pip install 'gradbench[torch]'" in err and len(err.strip().splitlines()) == 1


def test_help_names_what_is_trusted(capsys):
    code, out, _ = run(["run", "--help"], capsys)
    assert code == 0 and "weights_only=True" in out and "--tensorboard" in out and ".npz" in out
    code, out, _ = run(["train", "--help"], capsys)
    assert code == 0 and "--tensorboard" in out


def test_a_run_file_is_reproduced_in_python_from_its_head_as_formats_md_says(tmp_path, capsys):
    """docs/formats.md gives the probe's input and targets from the head's seed and batch; the
    README's `gb.gaussian_input(stack, batch, seed)` is another input (act_mean off by 14.9)."""
    import json
    import re

    out = tmp_path / "r.json"
    run(["run", "--depth", "7", "--width", "3", "--activation", "elu", "--activation-param", "2.5", "--init",
         "orthogonal", "--sigma-w", "3", "--sigma-b", "0.3", "--batch", "2", "--seed", "3", "--loss", "mse",
         "--out", str(out)], capsys)
    head = json.loads(out.read_text())
    f = head["diagnosis"]
    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "formats.md")).read()
    assert "gaussian_input(stack, batch, seed=numpy.random.default_rng([seed, 1]))" in doc
    assert "random_targets(stack, batch, seed)" in doc
    stack, seed, batch = gb.Stack(**f["stack"]), head["seed"], head["batch"]
    x = gb.gaussian_input(stack, batch, seed=np.random.default_rng([seed, 1]))
    d = gb.diagnose(gb.backprop(stack, gb.GeneratedParams(stack, seed), x, random_targets(stack, batch, seed)))
    np.testing.assert_array_equal(d.grad_log10, f["grad_log10"])
    np.testing.assert_array_equal(d.act_mean, f["act_mean"])
    # and every column of Result.to_frame() is documented there
    r = gb.backprop(stack, gb.GeneratedParams(stack, seed), x, random_targets(stack, batch, seed))
    para = doc[doc.index("`Result.to_frame()` (the pass itself"):]
    para = para[: para.index("\n\n")]
    assert set(r.to_frame().columns) - {"layer"} <= set(re.findall(r"`(\w+)`", para))
