"""pandas frames, the .npz diagnosis file and TensorBoard event files, read back and checked.

Reference values come from tests/naive.py (a plain float64 forward/backward written apart from
gradbench) where the depth allows; the event files are read with the ``tensorboard`` package's
own EventAccumulator, not with the writer.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import gradbench as gb
from gradbench import frames
from gradbench.train import DEMOS, targets_for
from tests import naive

pd = pytest.importorskip("pandas", reason="pandas is not installed: pip install '.[test]' (make test installs it)")


def _naive_params(params):
    return {k: np.asarray(a, dtype=np.float64) for k, a in params.items()}


# ------------------------------------------------------------------ frames
def test_result_frame_has_one_row_per_layer_with_exact_log10_norms():
    stack = gb.Stack(depth=8, width=6, activation="tanh", loss="mse", output_dim=2)
    params = gb.init_params(stack, 0)
    x = gb.gaussian_input(stack, 5, 1)
    t = np.random.default_rng(2).standard_normal((5, 2))
    df = gb.backprop(stack, params, x, t, backend="numpy").to_frame()
    _, grads, signal = naive.backward(stack, _naive_params(params), x, t)
    ref = np.log10([np.linalg.norm(grads["W"][l]) for l in range(8)])
    assert list(df["layer"]) == list(range(8)) and len(df) == 8
    np.testing.assert_allclose(df["grad_log10"], ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(df["grad_mantissa"] * 2.0 ** df["grad_exponent"], 10 ** ref, rtol=1e-12)
    assert df["grad_exponent"].dtype == np.int64
    loss, s = naive.forward(stack, _naive_params(params), x, t)
    std = [np.std(h) for h in s["hs"][1:]]
    np.testing.assert_allclose(df["act_std"], std, rtol=1e-12)
    np.testing.assert_allclose(df["act_std_log10"], np.log10(std), atol=1e-12)
    assert df.attrs["loss"] == pytest.approx(loss, rel=1e-12)
    assert set(df.columns) >= {"signal_log10", "act_mean", "saturation", "dead"}


def test_result_frame_holds_what_float64_cannot():
    stack = gb.Stack(depth=2000, width=16, activation="sigmoid")
    res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 4, 1))
    df = res.to_frame()
    assert df["grad_log10"].iloc[0] < -1000  # 10^-1000 and below: a float64 would read 0
    np.testing.assert_array_equal(df["grad_log10"], res.grad_norm.log10())


def test_diagnosis_frame_matches_the_diagnosis():
    stack = gb.Stack(depth=12, width=8, activation="relu", init="he_normal")
    params = gb.init_params(stack, 1)
    res = gb.backprop(stack, params, gb.gaussian_input(stack, 6, 2))
    d = gb.diagnose(res, params, bins=10)
    df = d.to_frame()
    assert len(df) == 12
    for c in ("grad_log10", "signal_log10", "act_std_log10", "dead", "weight_log10", "hist_zeros"):
        np.testing.assert_array_equal(df[c], getattr(d, c))
    counts = df[[f"hist_{j:02d}" for j in range(10)]].to_numpy()
    np.testing.assert_array_equal(counts, d.hist_counts)
    # every entry of dW is counted once: bins + zeros + outside + non-finite = N * N per layer
    total = counts.sum(axis=1) + df["hist_zeros"] + df["hist_outside"] + df["hist_nonfinite"]
    assert np.all(total == 64)
    assert df.attrs["verdict"] == d.verdict and df.attrs["hist_edges"] == list(d.hist_edges)
    # with bins = depth - 1 the L edges are still no column (they were, in the frame and the .npz)
    d11 = gb.diagnose(res, params, bins=11)
    assert "hist_edges" not in d11.to_frame().columns and len(d11.hist_edges) == 12


def test_train_frame_has_one_row_per_epoch_and_layer():
    r = gb.run_demo("deep-sigmoid", epochs=3)
    df = r.to_frame()
    L = r.stack.depth
    assert len(df) == 4 * L and list(df.columns[:2]) == ["epoch", "layer"]
    row = df[(df.epoch == 2) & (df.layer == 4)].iloc[0]
    assert row.grad_log10 == r.grad_log10[2, 4] and row.update_ratio_percent == r.update_ratio[1, 4]
    assert row.loss == r.loss[1] and row.eval_loss == r.eval_loss[2] and row.accuracy == r.accuracy[2]
    assert df[df.epoch == 0].update_ratio_percent.isna().all() and df[df.epoch == 0].loss.isna().all()
    # epoch 0 is the initial parameters: its gradient norms against the naive backward
    demo = DEMOS["deep-sigmoid"]
    X, y = demo.data()
    stack = demo.make_stack()
    _, grads, _ = naive.backward(stack, _naive_params(gb.init_params(stack, 0)), X, targets_for(stack, y))
    ref = np.log10([np.linalg.norm(grads["W"][l]) for l in range(L)])
    np.testing.assert_allclose(df[df.epoch == 0].grad_log10, ref, atol=1e-11)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_recurrent_result_frame_has_one_row_per_step_from_the_results_arrays(cell):
    """RecurrentResult and RecurrentDiagnosis had no to_frame() (Result and Diagnosis do). One row
    per time step; the exact columns are the result's own mantissas and exponents, below float64
    too (the rnn at gain 0.05 reaches 10^-500)."""
    rnn = gb.Recurrent(cell=cell, steps=400, hidden=5, sigma_w=0.05 if cell == "rnn" else None)
    res = gb.backprop(rnn, gb.init_params(rnn, 0), gb.GeneratedSequence(rnn, 3, 1), backend="numpy")
    df = res.to_frame()
    assert len(df) == 400 and list(df["step"]) == list(range(400))
    with np.errstate(divide="ignore"):
        for name, v in (("signal", res.signal_norm), ("grad", res.grad_norm), ("cell_signal", res.cell_signal_norm)):
            if v is None:
                assert f"{name}_log10" not in df and cell != "lstm"
                continue
            np.testing.assert_array_equal(df[f"{name}_log10"], v.log10())
            np.testing.assert_array_equal(df[f"{name}_mantissa"], v.mantissa)
            np.testing.assert_array_equal(df[f"{name}_exponent"], np.broadcast_to(v.exponent, (400,)))
            assert df[f"{name}_exponent"].dtype == np.int64
        np.testing.assert_array_equal(df["act_std"], res.act_std.to_float(warn=False))
        np.testing.assert_array_equal(df["act_mean_log10"], res.act_mean.log10())
    for k in ("saturation", "gate_mean", "gate_low"):
        np.testing.assert_array_equal(df[k], getattr(res, k))
    if cell == "rnn":
        assert df["signal_log10"].iloc[0] < -400 and df["signal_mantissa"].iloc[0] > 0  # a float64 reads 0
        assert df["gate_mean"].isna().all()
    assert df.attrs["loss"] == res.loss and df.attrs["rnn"] == dataclasses.asdict(rnn)
    assert df.attrs["backend"] == "numpy" and df.attrs["first_nonfinite_backward"] is None

    d = gb.diagnose(res)
    dd = d.to_frame()
    per_step = [f.name for f in dataclasses.fields(d) if isinstance(getattr(d, f.name), np.ndarray)
                and getattr(d, f.name).shape == (400,)]
    assert list(dd.columns) == ["step", *per_step] and len(dd) == 400
    assert ("cell_log10" in dd) == (cell == "lstm")
    for k in per_step:
        np.testing.assert_array_equal(dd[k], getattr(d, k))
    np.testing.assert_array_equal(dd["signal_log10"], df["signal_log10"])
    assert dd.attrs["verdict"] == d.verdict and dd.attrs["reach"] == d.reach and dd.attrs["rnn"] == d.rnn


def test_to_frame_without_pandas_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pandas", None)
    stack = gb.Stack(depth=2, width=3)
    res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 2, 1))
    with pytest.raises(ImportError, match=r"pip install pandas"):
        res.to_frame()


# ------------------------------------------------------------------ .npz
def test_npz_round_trip_and_loads_straight_into_numpy_and_pandas(tmp_path):
    stack = gb.Stack(depth=30, width=8, activation="sigmoid")
    params = gb.init_params(stack, 0)
    d = gb.diagnose(gb.backprop(stack, params, gb.gaussian_input(stack, 4, 1)), params)
    path = frames.write_npz(d, tmp_path / "d.npz")
    with np.load(path, allow_pickle=False) as z:  # plain NumPy, no pickles
        np.testing.assert_array_equal(z["grad_log10"], d.grad_log10)
        assert z["hist_counts"].shape == d.hist_counts.shape and str(z["verdict"]) == d.verdict
        df = pd.DataFrame({c: z[c] for c in z["columns"]})
    assert len(df) == 30 and "weight_log10" in df
    back = gb.Diagnosis.from_npz(path)
    assert back.to_json() == d.to_json()  # every field, bit for bit
    with pytest.raises(ValueError, match="must end in .npz"):
        frames.write_npz(d, tmp_path / "d.parquet")
    assert [p.name for p in tmp_path.iterdir()] == ["d.npz"]  # no temporary file left behind


def test_recurrent_npz_round_trip(tmp_path):
    """A recurrent diagnosis in the stacks' .npz (``run --cell ... --out x.npz``): every field
    back bit for bit (-inf, nan included), ``step`` in place of ``layer``, loads in plain NumPy;
    a file of the other kind is refused naming its reader."""
    from gradbench.recurrent.diagnose import RecurrentDiagnosis

    diags = {}
    for cell in ("rnn", "lstm"):
        rnn = gb.Recurrent(cell=cell, steps=300, hidden=4, sigma_w=0.05 if cell == "rnn" else None)
        diags[cell] = gb.diagnose(gb.backprop(rnn, gb.init_params(rnn, 0), gb.GeneratedSequence(rnn, 2, 1),
                                              backend="numpy"))
    d = diags["rnn"]
    assert np.isnan(d.gate_mean).all() and d.grad_log10[0] == -np.inf  # h_{-1} = 0: step 0's term is 0
    path = frames.write_npz(d, tmp_path / "r.npz", head={"command": "run"})
    with np.load(path, allow_pickle=False) as z:
        assert str(z["kind"]) == "recurrent" and str(z["verdict"]) == d.verdict
        np.testing.assert_array_equal(z["signal_log10"], d.signal_log10)
        df = pd.DataFrame({c: z[c] for c in z["columns"]})
    assert list(df["step"]) == list(range(300)) and "cell_log10" not in df
    back = RecurrentDiagnosis.from_npz(path)
    assert back.to_json() == d.to_json()
    for f in dataclasses.fields(d):
        if isinstance(getattr(d, f.name), np.ndarray):
            np.testing.assert_array_equal(getattr(back, f.name), getattr(d, f.name))
    both = tmp_path / "c.npz"
    with open(both, "wb") as f:
        frames.save_npz(f, diags, {"command": "compare"})
    assert RecurrentDiagnosis.from_npz(both, name="lstm").to_json() == diags["lstm"].to_json()
    with pytest.raises(ValueError, match="holds the diagnosis of a recurrent net: read it with "
                                         "gradbench.recurrent.diagnose.RecurrentDiagnosis.from_npz"):
        gb.Diagnosis.from_npz(path)
    stack = gb.Stack(depth=3, width=4)
    frames.write_npz(gb.diagnose(gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 2, 1))),
                     tmp_path / "s.npz")
    with pytest.raises(ValueError, match="holds the diagnosis of a stack: read it with gradbench.Diagnosis.from_npz"):
        RecurrentDiagnosis.from_npz(tmp_path / "s.npz")



def test_a_file_that_is_no_npz_is_refused_naming_what_reads_it(tmp_path):
    """Diagnosis.from_npz of a .json (what `gradbench run --out x.json` writes) said NumPy's "This file
    contains pickled (object) data. If you trust the file you can load it unsafely using the
    `allow_pickle=` keyword argument", and of a .npy an AttributeError ('numpy.ndarray' object has no
    attribute 'files'); either is a ValueError naming the file, what it is not, and the JSON reader."""
    from gradbench.recurrent.diagnose import RecurrentDiagnosis

    stack = gb.Stack(depth=3, width=4)
    d = gb.diagnose(gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 2, 1)))
    (tmp_path / "d.json").write_text('{"diagnosis": ' + d.to_json() + "}")
    np.save(tmp_path / "a.npy", np.arange(3.0))
    for name in ("d.json", "a.npy"):
        for reader in (gb.Diagnosis.from_npz, RecurrentDiagnosis.from_npz):
            with pytest.raises(ValueError, match="is not a gradbench diagnosis .npz") as info:
                reader(tmp_path / name)
            assert str(tmp_path / name) in str(info.value) and "from_dict" in str(info.value)
            assert "pickle" not in str(info.value)
    # the JSON file is read as the message says
    import json

    back = gb.Diagnosis.from_dict(json.loads((tmp_path / "d.json").read_text())["diagnosis"])
    assert back.to_json() == d.to_json()


# ------------------------------------------------------------------ TensorBoard
def _events(logdir):
    ea_mod = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="the tensorboard package (the event reader) is not installed: pip install '.[test]'")
    acc = ea_mod.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(acc, tag):
    ev = acc.Scalars(tag)
    return np.array([e.step for e in ev]), np.array([e.value for e in ev])


def test_train_writes_tensorboard_events_every_epoch(tmp_path):
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed: pip install '.[test]'")
    demo = DEMOS["deep-sigmoid"]
    X, y = demo.data()
    stack = demo.make_stack()
    r = gb.train(stack, X, y, epochs=3, batch_size=20, lr=0.1, seed=0, tensorboard=tmp_path / "run")
    acc = _events(tmp_path / "run")
    L = stack.depth
    steps, v = _scalars(acc, "loss/eval")
    assert list(steps) == [0, 1, 2, 3]
    np.testing.assert_allclose(v, r.eval_loss, rtol=1e-6)  # float32 in the event file
    steps, v = _scalars(acc, "loss/train")
    assert list(steps) == [1, 2, 3]
    np.testing.assert_allclose(v, r.loss, rtol=1e-6)
    for l in range(L):
        steps, v = _scalars(acc, f"grad_log10/layer_{l:02d}")
        np.testing.assert_allclose(v, r.grad_log10[:, l], rtol=1e-6)
        steps, v = _scalars(acc, f"update_ratio_percent/layer_{l:02d}")
        assert list(steps) == [1, 2, 3]
        np.testing.assert_allclose(v, r.update_ratio[:, l], rtol=1e-6)
    np.testing.assert_allclose(_scalars(acc, "update_ratio_percent/input")[1], r.update_ratio_input, rtol=1e-6)
    # independent check of step 0 (the initial parameters) and of the last step (r.params):
    # norms and histograms of log10 |dL/dW_l| from the naive plain backward
    T = targets_for(stack, y)
    for step, P in ((0, gb.init_params(stack, 0)), (3, r.params)):
        _, grads, _ = naive.backward(stack, _naive_params(P), X, T)
        for l in (0, L - 1):
            got = [e.value for e in acc.Scalars(f"grad_log10/layer_{l:02d}") if e.step == step][0]
            assert got == pytest.approx(math.log10(np.linalg.norm(grads["W"][l])), rel=1e-6)
            h = [e.histogram_value for e in acc.Histograms(f"grad_hist_log10/layer_{l:02d}") if e.step == step][0]
            ref = np.log10(np.abs(grads["W"][l][grads["W"][l] != 0]))
            assert h.num == ref.size
            assert h.min == pytest.approx(ref.min(), abs=1e-9) and h.max == pytest.approx(ref.max(), abs=1e-9)
            assert h.sum == pytest.approx(ref.sum(), rel=1e-9)
            counts, _ = np.histogram(ref, bins=30)
            assert sum(h.bucket) == ref.size and sorted(c for c in h.bucket if c) == sorted(c for c in counts if c)
    assert set(acc.Tags()["histograms"]) == {f"grad_hist_log10/layer_{l:02d}" for l in range(L)}


def test_run_diagnosis_in_tensorboard_has_the_layer_as_step(tmp_path):
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed: pip install '.[test]'")
    from gradbench.tensorboard_io import write_diagnosis

    stack = gb.Stack(depth=40, width=8, activation="sigmoid")
    params = gb.init_params(stack, 0)
    x = gb.gaussian_input(stack, 4, 1)
    d = gb.diagnose(gb.backprop(stack, params, x), params, bins=12)
    write_diagnosis(d, tmp_path / "diag")
    acc = _events(tmp_path / "diag")
    steps, v = _scalars(acc, "depth/grad_log10")
    assert list(steps) == list(range(40))
    _, grads, signal = naive.backward(stack, _naive_params(params), x)
    ref = np.log10([np.linalg.norm(grads["W"][l]) for l in range(40)])
    np.testing.assert_allclose(v, ref, rtol=1e-6)
    np.testing.assert_allclose(_scalars(acc, "depth/weight_log10")[1], d.weight_log10, rtol=1e-6)
    hist = acc.Histograms("depth/grad_hist_log10")
    assert [e.step for e in hist] == list(range(40))
    for e in hist:
        assert list(e.histogram_value.bucket) == list(d.hist_counts[e.step].astype(float))
        np.testing.assert_allclose(e.histogram_value.bucket_limit, d.hist_edges[1:])
    assert "verdict/text_summary" in acc.Tags()["tensors"]


def test_an_interrupted_diagnosis_write_leaves_no_event_file_and_the_rerun_works(tmp_path, monkeypatch):
    """Ctrl-C while `run --tensorboard` wrote 20,000 layers' events left 1.85 MB of a 21.7 MB file,
    and the rerun was refused ("already holds TensorBoard events"). The events are written in a
    hidden directory and moved in whole; an interrupt after some events are written leaves none."""
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed: pip install '.[test]'")
    import os

    from gradbench import tensorboard_io

    stack = gb.Stack(depth=40, width=8, activation="sigmoid")
    params = gb.init_params(stack, 0)
    d = gb.diagnose(gb.backprop(stack, params, gb.gaussian_input(stack, 4, 1)), params, bins=12)
    real = tensorboard_io._depth_events

    def interrupted(w, d):
        tensorboard_io._write_series(w, "depth", {"grad_log10": d.grad_log10})
        w.flush()
        raise KeyboardInterrupt

    monkeypatch.setattr(tensorboard_io, "_depth_events", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tensorboard_io.write_diagnosis(d, tmp_path / "diag")
    assert os.listdir(tmp_path / "diag") == []
    monkeypatch.setattr(tensorboard_io, "_depth_events", real)
    tensorboard_io.write_diagnosis(d, tmp_path / "diag")
    assert [f for f in os.listdir(tmp_path / "diag") if "tfevents" in f] and len(os.listdir(tmp_path / "diag")) == 1
    steps, v = _scalars(_events(tmp_path / "diag"), "depth/grad_log10")
    assert list(steps) == list(range(40))


def test_tensorboard_bad_paths_are_refused_before_training(tmp_path):
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed: pip install '.[test]'")
    f = tmp_path / "file"
    f.write_text("x")
    demo = DEMOS["deep-sigmoid"]
    X, y = demo.data()
    with pytest.raises(ValueError, match="exists and is not a directory"):
        gb.train(demo.make_stack(), X, y, epochs=1, tensorboard=f)
    with pytest.raises(TypeError, match="tensorboard must be a directory path"):
        gb.train(demo.make_stack(), X, y, epochs=1, tensorboard=3)


def test_a_directory_that_holds_events_is_refused_before_the_run(tmp_path, capsys):
    """run --tensorboard DIR twice, or a training into a demo's directory again, merged the runs:
    TensorBoard reads a directory's event files as one run (29 points of depth/grad_log10 for
    runs of 12, 12 and 5 layers, steps 0-11, 0-11, 0-4, drawn as one curve). Refused, before any
    work, in the API and on the command line."""
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed: pip install '.[test]'")
    from gradbench import cli
    from gradbench.tensorboard_io import old_events

    run = ["run", "--depth", "5", "--width", "8", "--tensorboard", str(tmp_path / "tb")]
    assert cli.main(run) == 0 and len(old_events(tmp_path / "tb")) == 1
    capsys.readouterr()
    assert cli.main(run) == 2
    err = capsys.readouterr().err
    assert f"--tensorboard '{tmp_path / 'tb'}' already holds TensorBoard events (1 file, events.out.tfevents" in err
    assert len(old_events(tmp_path / "tb")) == 1  # nothing written
    demo = DEMOS["deep-sigmoid"]
    X, y = demo.data()
    with pytest.raises(ValueError, match=r"tensorboard=.* already holds TensorBoard events"):
        gb.train(demo.make_stack(), X, y, epochs=1, tensorboard=tmp_path / "tb")
    train = ["train", "--demo", "deep-sigmoid", "--epochs", "1", "--tensorboard", str(tmp_path / "runs")]
    assert cli.main(train) == 0
    assert cli.main(train) == 2 and "runs/deep-sigmoid' already holds TensorBoard events" in capsys.readouterr().err
    assert cli.main(train[:2] + ["shallow-sigmoid"] + train[3:]) == 0  # another demo, its own directory
    rnn = ["run", "--cell", "rnn", "--steps", "5", "--hidden", "4", "--tensorboard", str(tmp_path / "tb")]
    assert cli.main(rnn) == 2 and "already holds TensorBoard events" in capsys.readouterr().err


def test_frame_attrs_are_plain_python_values():
    """attrs hold plain values (no gradbench objects): a frame pickles and loads without gradbench types."""
    import pickle

    stack = gb.Stack(depth=3, width=4)
    res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 2, 1))
    df = gb.diagnose(res).to_frame()
    back = pickle.loads(pickle.dumps(df))
    assert back.attrs["stack"] == dataclasses.asdict(stack) and isinstance(back.attrs["verdict"], str)


def test_recurrent_run_in_tensorboard_has_the_time_step_as_step(tmp_path, capsys):
    """``gradbench run --cell lstm --tensorboard DIR``: one point per time step of ||dL/dh_t||
    (against the NumPy reference backend's own run of the same net), ||dL/dc_t||, the gates and
    the verdict; a file in the way is refused before any work."""
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed: pip install '.[test]'")
    from gradbench.cli import main

    T = 40
    assert main(["run", "--cell", "lstm", "--steps", str(T), "--hidden", "6", "--batch", "3", "--seed", "2",
                 "--backend", "c", "--tensorboard", str(tmp_path / "runs" / "lstm"), "--mkdir"]) == 0
    acc = _events(tmp_path / "runs" / "lstm")
    rnn = gb.Recurrent(cell="lstm", steps=T, hidden=6)
    ref = gb.diagnose(gb.backprop(rnn, gb.init_params(rnn, 2), gb.GeneratedSequence(rnn, 3, 2), backend="numpy"))
    for tag, want in (("signal_log10", ref.signal_log10), ("cell_log10", ref.cell_log10),
                      ("gate_mean", ref.gate_mean), ("saturation", ref.saturation)):
        steps, v = _scalars(acc, f"time/{tag}")
        assert list(steps) == list(range(T)), tag
        np.testing.assert_allclose(v, want, rtol=1e-6, atol=1e-7, err_msg=tag)
    assert "verdict/text_summary" in acc.Tags()["tensors"]
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    assert main(["run", "--cell", "rnn", "--steps", "5", "--hidden", "2", "--tensorboard", str(tmp_path / "file")]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err


def test_every_tensorboard_tag_is_in_the_formats_doc(tmp_path):
    """docs/formats.md opens with 'Every file gradbench writes' and had no TensorBoard section."""
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed: pip install '.[test]'")
    import re
    from pathlib import Path

    from gradbench.tensorboard_io import write_diagnosis

    doc = (Path(__file__).resolve().parent.parent / "docs" / "formats.md").read_text()
    demo = DEMOS["deep-sigmoid"]
    X, y = demo.data()
    gb.train(demo.make_stack(), X, y, epochs=1, tensorboard=tmp_path / "train")
    stack = gb.Stack(depth=4, width=4)
    p = gb.init_params(stack, 0)
    write_diagnosis(gb.diagnose(gb.backprop(stack, p, gb.gaussian_input(stack, 2, 1)), p), tmp_path / "depth")
    lstm = gb.Recurrent(cell="lstm", steps=4, hidden=3, loss="mse", loss_on="every")
    y2 = np.zeros((4, 2, 1))
    write_diagnosis(gb.diagnose(gb.backprop(lstm, gb.init_params(lstm, 0), gb.sequence_input(lstm, 2, 0), y2)),
                    tmp_path / "time")
    tags = set()
    for d in ("train", "depth", "time"):
        acc = _events(tmp_path / d)
        for kind in ("scalars", "histograms", "tensors"):
            tags |= set(acc.Tags()[kind])
    assert {"time/carried_log10", "time/cell_log10", "depth/grad_hist_log10"} <= tags
    for tag in sorted(tags):
        base = re.sub(r"layer_\d+", "layer_LL", tag).replace("/text_summary", "")
        parts = base.split("/")
        assert f"`{base}`" in doc or (len(parts) == 2 and f"`/{parts[1]}`" in doc) or f"tag `{base}`" in doc, tag
