"""Params carry their origin: an imported model's report names its weights, not Stack.init's default.

``Params.origin`` is words, not an array: ``items()`` leaves it out, copies keep it, the engine
passes it on (``Result.extras["weights"]``), the diagnosis keeps it (``Diagnosis.weights``, in
its JSON and .npz files) and the report's header says it in place of the init scheme.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import gradbench as gb
from gradbench.diagnose import Diagnosis
from gradbench.frames import write_npz
from gradbench.inputs import check_inputs
from gradbench.params import GIVEN

INIT_DEFAULT = next(f.default for f in dataclasses.fields(gb.Stack) if f.name == "init")
ORIGIN = "the weights of my checkpoint"


def header(d, **kw) -> str:
    return gb.report.format_report(d, **kw).splitlines()[0]


def _run(stack, params, seed=1):
    x = gb.gaussian_input(stack, 8, seed=seed)
    return gb.diagnose(gb.backprop(stack, params, x, backend="numpy"), params)


@pytest.fixture
def stack():
    return gb.Stack(depth=6, width=8, activation="tanh", init="he_normal")


@pytest.fixture
def given(stack):
    return dataclasses.replace(gb.init_params(stack, 0), origin=ORIGIN)


# ---------------------------------------------------------------- Params
def test_origin_is_no_array_and_copies_keep_it(stack, given):
    assert gb.init_params(stack, 0).origin is None
    names = [name for name, _ in given.items()]
    assert names == ["W", "b", "gamma", "beta", "slope"]
    c = given.copy()
    assert c.origin == ORIGIN and c.W is not given.W
    np.testing.assert_array_equal(c.W, given.W)
    assert dataclasses.replace(given, W=given.W * 2).origin == ORIGIN
    # what tests and users write to rebuild params from items() still works (the words become the caller's)
    assert gb.Params(**dict(given.items())).origin == GIVEN
    with pytest.raises(TypeError, match="origin must be a str"):
        dataclasses.replace(given, origin=3)


def test_recurrent_params_still_copy():
    rnn = gb.Recurrent(cell="gru", hidden=4, steps=3, input_dim=2)
    p = gb.init_params(rnn, 0)
    c = p.copy()
    assert [n for n, _ in c.items()] == [n for n, _ in p.items()]
    assert all(a is not getattr(p, n) and np.array_equal(a, getattr(p, n)) for n, a in c.items())


def test_check_inputs_keeps_origin_also_when_it_converts(stack, given):
    x = gb.gaussian_input(stack, 4)
    checked, _, _ = check_inputs(stack, given, x)
    assert checked.origin == ORIGIN
    # big-endian float64 arrays: the check converts them to the native order, a new Params
    swapped = dataclasses.replace(given, W=given.W.astype(given.W.dtype.newbyteorder()))
    checked, _, _ = check_inputs(stack, swapped, x)
    assert checked.W.dtype == np.float64 and checked.W.dtype.isnative and checked.origin == ORIGIN


# ---------------------------------------------------------------- engine, diagnosis, report
def test_the_report_names_the_origin_not_the_init(stack, given):
    res = gb.backprop(stack, given, gb.gaussian_input(stack, 8), backend="numpy")
    assert res.extras["weights"] == ORIGIN
    d = gb.diagnose(res, given)
    assert d.weights == ORIGIN
    head = str(d).splitlines()[0]
    assert ORIGIN in head and "he_normal" not in head, head
    # the command line's own words win
    assert "the weights of m.pt" in header(d, weights="the weights of m.pt") and ORIGIN not in header(
        d, weights="the weights of m.pt")


def test_drawn_weights_have_no_origin_and_the_header_is_unchanged(stack):
    params = gb.init_params(stack, 0)
    d = _run(stack, params)
    assert d.weights is None
    assert header(d) == "gradbench diagnosis: depth 6, width 8, tanh, he_normal, float64 (backend numpy)"
    res = gb.backprop(stack, gb.GeneratedParams(stack, 3), gb.gaussian_input(stack, 8), backend="numpy",
                      stats_only=True)
    assert res.extras["weights"] is None and gb.diagnose(res).weights is None


def test_weights_round_trip_json_and_npz(stack, given, tmp_path):
    d = _run(stack, given)
    assert Diagnosis.from_json(d.to_json()).weights == ORIGIN
    with open(tmp_path / "d.json", "w") as f:
        d.write_json(f)
    assert Diagnosis.from_json((tmp_path / "d.json").read_text()).weights == ORIGIN
    write_npz(d, tmp_path / "d.npz")
    back = Diagnosis.from_npz(tmp_path / "d.npz")
    assert back.weights == ORIGIN and header(back) == header(d)
    plain = _run(stack, gb.init_params(stack, 0))
    write_npz(plain, tmp_path / "p.npz")
    assert Diagnosis.from_npz(tmp_path / "p.npz").weights is None
    assert Diagnosis.from_json(plain.to_json()).weights is None


def test_files_written_before_the_field_load_with_none(stack, given, tmp_path):
    d = _run(stack, given)
    old = d.to_dict()
    del old["weights"]
    back = Diagnosis.from_dict(json.loads(json.dumps(old)))
    assert back.weights is None and header(back) == header(dataclasses.replace(d, weights=None))
    assert INIT_DEFAULT not in header(back) and "he_normal" in header(back)
    # an .npz without it: no "weights" in meta and no 0-d "weights" array
    write_npz(d, tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "weights"}
    meta = json.loads(str(arrays["meta"]))
    del meta["weights"]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez_compressed(tmp_path / "old.npz", **arrays)
    assert Diagnosis.from_npz(tmp_path / "old.npz").weights is None


# ---------------------------------------------------------------- PyTorch models
def _model(torch, nn):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), *[m for _ in range(5) for m in (nn.Linear(8, 8), nn.Sigmoid())],
                         nn.Linear(8, 1))


def test_from_torch_params_carry_the_model_class():
    torch = pytest.importorskip("torch", reason="torch is not installed: pip install 'gradbench[torch]'")
    from torch import nn

    stack, params = gb.from_torch(_model(torch, nn).double(), loss="bce")
    assert params.origin == "the weights of Sequential"

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Tanh()

        def forward(self, h):
            return self.b(self.a(h))

    assert gb.from_torch(Net().double())[1].origin == "the weights of Net"
    # a dtype conversion on the way in (torch's float32 model as float64) keeps it
    stack64, p64 = gb.from_torch(_model(torch, nn), "float64", loss="bce")
    assert p64.W.dtype == np.float64 and p64.origin == "the weights of Sequential"


def test_print_of_an_imported_model_names_its_weights():
    torch = pytest.importorskip("torch", reason="torch is not installed: pip install 'gradbench[torch]'")
    from torch import nn

    stack, params = gb.from_torch(_model(torch, nn).double(), loss="bce")
    assert stack.init == INIT_DEFAULT  # the stack still says the default: the header must not
    x = gb.gaussian_input(stack, 8)
    t = np.random.default_rng(0).integers(0, 2, (8, 1)).astype(np.float64)
    d = gb.diagnose(gb.backprop(stack, params, x, t, backend="numpy"), params)
    head = str(d).splitlines()[0]
    assert "the weights of Sequential" in head and INIT_DEFAULT not in head, head
    assert d.weights == "the weights of Sequential"
    # the same stack with drawn weights names the init
    drawn = gb.init_params(stack, 0)
    assert INIT_DEFAULT in str(gb.diagnose(gb.backprop(stack, drawn, x, t, backend="numpy"), drawn)).splitlines()[0]


def test_run_torch_out_file_names_the_file(tmp_path, capsys):
    torch = pytest.importorskip("torch", reason="torch is not installed: pip install 'gradbench[torch]'")
    from torch import nn

    from gradbench import cli

    path = tmp_path / "model.pt"
    torch.save(_model(torch, nn).double(), path)
    code = cli.main(["run", "--torch", str(path), "--loss", "bce", "--backend", "numpy", "--batch", "8",
                     "--out", str(tmp_path / "d.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    d = Diagnosis.from_dict(json.loads((tmp_path / "d.json").read_text())["diagnosis"])
    assert d.weights == f"the weights of {path}"
    assert out.splitlines()[0] == str(d).splitlines()[0]  # the file read back prints the same header
    assert INIT_DEFAULT not in out.splitlines()[0]


def test_trained_and_pretrained_weights_are_named_so():
    """Trained weights said the init scheme in the report's header ("tanh, he_normal, sigma_w=..."),
    which they no longer follow: train and pretrain name what changed them, with the epochs run
    (a diverged run: up to the epoch that diverged, whose steps were taken)."""
    s = gb.Stack(depth=4, width=8, activation="tanh", init="he_normal", loss="mse", output_dim=1, input_dim=2)
    X = np.random.default_rng(0).normal(size=(40, 2))
    y = X[:, 0]
    start = gb.init_params(s, 0)
    r = gb.train(s, X, y, epochs=3, params=start)
    assert r.params.origin == "he_normal weights after 3 epochs of training"
    assert start.origin is None  # the caller's params are not changed
    assert not np.array_equal(r.params.W, start.W)  # trained, indeed
    d = gb.diagnose(gb.backprop(s, r.params, X[:8], y[:8, None]), r.params)
    assert "tanh, he_normal weights after 3 epochs of training," in header(d)
    pre = gb.pretrain(s, X, epochs=2)
    assert pre.origin == "he_normal weights after layer-wise pretraining (2 epochs a layer)"
    fine = gb.train(s, X, y, epochs=1, params=pre)
    assert fine.params.origin == ("he_normal weights after layer-wise pretraining (2 epochs a layer) "
                                  "and 1 epoch of training")
    again = gb.train(s, X, y, epochs=2, params=r.params)  # training after training: one count
    assert again.params.origin == "he_normal weights after 5 epochs of training"
    assert gb.train(s, X, y, epochs=1, params=fine.params).params.origin == (
        "he_normal weights after layer-wise pretraining (2 epochs a layer) and 2 epochs of training")
    given = dataclasses.replace(start, origin=ORIGIN)
    assert gb.train(s, X, y, epochs=2, params=given).params.origin == f"{ORIGIN} after 2 epochs of training"
    wild = gb.train(s, X, y * 1e200, epochs=5, lr=1e10)
    assert wild.diverged_epoch is not None and wild.diverged_epoch < 5
    ran = wild.diverged_epoch + 1
    assert wild.params.origin == f"he_normal weights after {ran} epoch{'s' if ran > 1 else ''} of training"


def test_trained_recurrent_weights_are_named_so(tmp_path):
    """A recurrent net's report named W_ih's and W_hh's init schemes and gain for weights that
    train_recurrent had changed: the trained params carry their origin, the engine and the
    diagnosis pass it on (JSON and .npz too), and the header says it in place of the inits."""
    from gradbench.recurrent.diagnose import RecurrentDiagnosis, format_report
    from gradbench.recurrent.train import first_symbol, train_recurrent

    rnn = gb.Recurrent(cell="gru", steps=5, hidden=3, input_dim=2, loss="bce", sigma_w=0.9)
    X, y = first_symbol(5, 16, seed=0)
    start = gb.init_params(rnn, 0)
    r = train_recurrent(rnn, X, y, X, y, epochs=2, params=start)
    want = "W_ih xavier_normal, W_hh orthogonal (gain 0.9) weights after 2 epochs of training"
    assert r.params.origin == want and start.origin is None
    assert not np.array_equal(r.params.W_hh, start.W_hh)  # trained, indeed
    res = gb.backprop(rnn, r.params, X, y.astype(float)[:, None])
    d = gb.diagnose(res)
    head = format_report(d).splitlines()[0]
    assert want in head and "W_hh orthogonal," not in head.replace(want, ""), head
    assert json.loads(d.to_json())["weights"] == want
    gb.frames.write_npz(d, tmp_path / "d.npz")
    assert RecurrentDiagnosis.from_npz(tmp_path / "d.npz").weights == want
    plain = format_report(gb.diagnose(gb.backprop(rnn, start, X, y.astype(float)[:, None]))).splitlines()[0]
    assert "W_ih xavier_normal, W_hh orthogonal (gain 0.9)" in plain and "after" not in plain
    with pytest.raises(TypeError, match="origin must be a str"):
        dataclasses.replace(start, origin=3)


def test_weights_a_caller_builds_are_not_said_to_be_the_init_schemes():
    """A reviewer's finding: gb.Params built by hand (weights 5x a standard normal) read
    "tanh, xavier_normal" in the header, a scheme that never drew them; the recurrent header named
    W_ih xavier_normal and W_hh orthogonal for an LSTM's weights copied in. Params a caller builds
    say so (GIVEN) unless given words; init_params and GeneratedParams keep their scheme's name."""
    stack = gb.Stack(depth=3, width=4)
    rng = np.random.default_rng(0)
    p = gb.Params(W=rng.normal(size=(3, 4, 4)) * 5, b=np.zeros((3, 4)), gamma=np.ones((3, 4)),
                  beta=np.zeros((3, 4)), slope=np.zeros(3))
    x = gb.gaussian_input(stack, 2, 0)
    head = str(gb.diagnose(gb.backprop(stack, p, x), p)).splitlines()[0]
    assert "weights given by the caller" in head and "xavier" not in head
    for drawn in (gb.init_params(stack, 0), gb.GeneratedParams(stack, 0).materialize()):
        assert drawn.origin is None
        assert "xavier_normal" in str(gb.diagnose(gb.backprop(stack, drawn, x), drawn)).splitlines()[0]
    rnn = gb.Recurrent(cell="lstm", hidden=3, steps=4, input_dim=2)
    own = gb.init_params(rnn, 0)
    assert own.origin is None
    copied = gb.RecurrentParams(**{n: a * 3 for n, a in own.items()})
    res = gb.backprop(rnn, copied, gb.sequence_input(rnn, 2, 1))
    head = str(gb.diagnose(res)).splitlines()[0]
    assert "weights given by the caller" in head and "orthogonal" not in head


def test_drawn_weights_changed_in_place_are_not_said_to_be_the_schemes():
    """A helper's finding: p = init_params(stack, 0); p.W *= 7 ran with the header "tanh,
    xavier_normal", weights the scheme never drew. Drawn params record the probe of their weights
    as drawn (Params.drawn); a run of changed ones (in a row the probe reads) says "xavier_normal
    weights changed after they were drawn"; copies and unchanged weights keep the scheme's name."""
    stack = gb.Stack(depth=3, width=4)
    x = gb.gaussian_input(stack, 2, 0)

    def head(p):
        return str(gb.diagnose(gb.backprop(stack, p, x), p)).splitlines()[0]

    p = gb.init_params(stack, 0)
    assert "xavier_normal," in head(p) and "xavier_normal," in head(p.copy())
    assert [n for n, _ in p.items()] == ["W", "b", "gamma", "beta", "slope"]  # drawn is no parameter
    p.W[...] *= 7
    assert "xavier_normal weights changed after they were drawn" in head(p)
    q = gb.GeneratedParams(stack, 0).materialize()
    assert "xavier_normal," in head(q)
    assert "changed after" in head(dataclasses.replace(q, W=q.W * 2))
    assert "changed after" not in head(gb.init_params(stack, 0))  # a fresh draw of the same seed


def test_drawn_recurrent_weights_changed_in_place_say_so():
    """The recurrent header named "W_ih xavier_normal, W_hh orthogonal" for drawn weights changed
    since (p.W_hh *= 3): it now says they changed after they were drawn."""
    rnn = gb.Recurrent(cell="gru", hidden=4, steps=5, input_dim=2)
    xs = gb.sequence_input(rnn, 2, 1)
    p = gb.init_params(rnn, 0)
    assert [n for n, _ in p.items()] == ["W_ih", "W_hh", "b_ih", "b_hh"]
    assert gb.backprop(rnn, p, xs).extras["weights"] is None
    p.W_hh[...] *= 3
    words = gb.backprop(rnn, p, xs).extras["weights"]
    assert words.startswith("W_ih xavier_normal, W_hh orthogonal") and words.endswith("changed after they were drawn")
    assert "changed after they were drawn" in str(gb.diagnose(gb.backprop(rnn, p, xs))).splitlines()[0]
