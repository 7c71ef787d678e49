"""The recurrent reference against independent computations: central finite differences on short
sequences, torch.nn.RNN/LSTM/GRU autograd in float64, closed forms far past under- and overflow,
and every bad input refused (naming the parameter) before any kernel runs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gradbench as gb
from gradbench.recurrent import spec as rspec


def _problem(rnn, B=3, seed=0):
    p = gb.init_params(rnn, seed)
    xs = gb.sequence_input(rnn, B, seed + 1)
    rng = np.random.default_rng(seed + 2)
    lead = (rnn.steps, B) if rnn.loss_on == "every" else (B,)
    t = None
    if rnn.loss == "mse":
        t = rng.standard_normal(lead + (rnn.output_dim,))
    elif rnn.loss == "bce":
        t = rng.uniform(0, 1, lead + (rnn.output_dim,))
    elif rnn.loss == "softmax_ce":
        t = rng.integers(0, rnn.output_dim, lead)
    return p, xs, t


# ------------------------------------------------------------------ finite differences
FD_CASES = [
    dict(cell="rnn"), dict(cell="rnn", activation="sigmoid", sigma_b=0.3), dict(cell="rnn", activation="identity",
                                                                                 recurrent_init="normal"),
    dict(cell="rnn", activation="gelu", loss="mse", loss_on="every", output_dim=2),
    dict(cell="lstm", sigma_b=0.3), dict(cell="lstm", loss="bce", output_dim=2),
    dict(cell="lstm", loss="softmax_ce", loss_on="every", output_dim=3),
    dict(cell="gru", sigma_b=0.3), dict(cell="gru", loss="mse", loss_on="every", output_dim=2),
]


@pytest.mark.parametrize("fields", FD_CASES, ids=lambda f: "-".join(str(v) for v in f.values()))
def test_gradients_match_central_differences(fields):
    rnn = gb.Recurrent(steps=7, hidden=3, input_dim=2, **fields)
    p, xs, t = _problem(rnn)
    rng = np.random.default_rng(9)
    h0 = 0.3 * rng.standard_normal((3, 3))
    c0 = 0.3 * rng.standard_normal((3, 3)) if rnn.cell == "lstm" else None
    res = gb.backprop(rnn, p, xs, t, backend="numpy", h0=h0, c0=c0)

    def loss(q=p, a=h0, c=c0):
        return gb.backprop(rnn, q, xs, t, backend="numpy", h0=a, c0=c).loss

    eps = 1e-6
    checks = [(n, getattr(res.grads, n).to_float()) for n, _ in p.items()]
    for name, grad in checks:
        arr = getattr(p, name)
        for idx in map(tuple, rng.integers(0, arr.shape, size=(4, arr.ndim))):
            q_plus, q_minus = p.copy(), p.copy()
            getattr(q_plus, name)[idx] += eps
            getattr(q_minus, name)[idx] -= eps
            fd = (loss(q_plus) - loss(q_minus)) / (2 * eps)
            assert abs(fd - grad[idx]) <= 1e-6 * max(1.0, abs(fd)), (name, idx, fd, grad[idx])
    for what, start, got in (("h0", h0, res.h0_grad.to_float()), ("c0", c0, None if c0 is None else res.c0_grad.to_float())):
        if start is None:
            continue
        for idx in [(0, 0), (2, 1)]:
            a, b = start.copy(), start.copy()
            a[idx] += eps
            b[idx] -= eps
            fd = (loss(a=a, c=c0) - loss(a=b, c=c0)) / (2 * eps) if what == "h0" else \
                (loss(a=h0, c=a) - loss(a=h0, c=b)) / (2 * eps)
            assert abs(fd - got[idx]) <= 1e-6 * max(1.0, abs(fd)), (what, idx, fd, got[idx])


def test_signal_norms_are_the_norms_of_dL_dh():
    """signal_norm[t] = ||dL/dh_t||, by finite differences of the loss in a perturbation of h_t
    (a direction added to step t's state through its input is the same as through h0 at t = -1;
    here: the last step, where dL/dh_{T-1} = h_{T-1} for the sum_squares probe)."""
    rnn = gb.Recurrent(cell="gru", steps=6, hidden=3, input_dim=2)
    p, xs, _ = _problem(rnn)
    res = gb.backprop(rnn, p, xs, backend="numpy")
    hT = res.output.to_float()
    assert np.isclose(res.signal_norm.to_float()[-1], np.linalg.norm(hT), rtol=1e-14)
    assert np.isclose(res.loss, 0.5 * np.sum(hT**2), rtol=1e-14)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _lstm_loss(p, xs, h0, c0, targets=None, W_out=None, b_out=None, kick=None):
    """A plain float64 LSTM (torch's gate order i, f, g, o), written out independently of gradbench;
    kick = (t, dc) adds dc to c_t right after step t computes it. The loss: 0.5 ||h_{T-1}||^2, or
    with a head the every-step mse, mean((h_t W_out^T + b_out - target_t)^2) over (T, B, O)."""
    N = p.W_hh.shape[1]
    h, c = h0.copy(), c0.copy()
    total = 0.0
    for t, x in enumerate(xs):
        z = x @ p.W_ih.T + p.b_ih + h @ p.W_hh.T + p.b_hh
        i, f, g, o = _sigmoid(z[:, :N]), _sigmoid(z[:, N:2 * N]), np.tanh(z[:, 2 * N:3 * N]), _sigmoid(z[:, 3 * N:])
        c = f * c + i * g
        if kick is not None and kick[0] == t:
            c = c + kick[1]
        h = o * np.tanh(c)
        if targets is not None:
            total += np.sum((h @ W_out.T + b_out - targets[t]) ** 2)
    return total / targets.size if targets is not None else 0.5 * np.sum(h**2)


@pytest.mark.parametrize("every", [False, True], ids=["last-sum_squares", "every-mse"])
def test_cell_signal_norms_are_the_norms_of_the_total_dL_dc(every):
    """cell_signal_norm[t] = ||dL/dc_t||, the whole gradient reaching c_t (through h_t and through
    c_{t+1}), by central differences of the loss in a perturbation of c_t, entry by entry, on a
    plain LSTM written out here. (It used to be only the part carried through c_{t+1}: exactly 0
    at the last step, and short of the total elsewhere.)"""
    fields = dict(loss="mse", loss_on="every", output_dim=2) if every else {}
    rnn = gb.Recurrent(cell="lstm", steps=6, hidden=3, input_dim=2, sigma_b=0.3, **fields)
    p, xs, t = _problem(rnn, B=2)
    rng = np.random.default_rng(11)
    h0, c0 = 0.4 * rng.standard_normal((2, 3)), 0.4 * rng.standard_normal((2, 3))
    head = dict(targets=t, W_out=p.W_out, b_out=p.b_out) if every else {}
    res = gb.backprop(rnn, p, xs, t, backend="numpy", h0=h0, c0=c0)
    assert abs(res.loss - _lstm_loss(p, xs, h0, c0, **head)) <= 1e-13 * abs(res.loss)  # the same net
    eps = 1e-6
    fd = np.zeros((6, 2, 3))
    for step in range(6):
        for idx in np.ndindex(2, 3):
            d = np.zeros((2, 3))
            d[idx] = eps
            fd[(step,) + idx] = (_lstm_loss(p, xs, h0, c0, kick=(step, d), **head)
                                 - _lstm_loss(p, xs, h0, c0, kick=(step, -d), **head)) / (2 * eps)
    want = np.sqrt(np.sum(fd**2, axis=(1, 2)))
    assert np.all(want > 1e-3)
    np.testing.assert_allclose(res.cell_signal_norm.to_float(), want, rtol=1e-7)
    # dL/dc_{-1}: all of it is carried (h_{-1} does not depend on c_{-1})
    fd0 = np.zeros((2, 3))
    for idx in np.ndindex(2, 3):
        c_plus, c_minus = c0.copy(), c0.copy()
        c_plus[idx] += eps
        c_minus[idx] -= eps
        fd0[idx] = (_lstm_loss(p, xs, h0, c_plus, **head) - _lstm_loss(p, xs, h0, c_minus, **head)) / (2 * eps)
    np.testing.assert_allclose(res.c0_grad.to_float(), fd0, rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------ torch autograd
try:
    import torch
except ImportError:  # the torch comparisons skip; the rest of the module runs
    torch = None
else:
    torch.set_num_threads(1)  # tiny problems: a thread pool costs more than it gives (and ~1 s a call when loaded)
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (pip install torch==2.13.0): "
                                                        "the torch.nn.RNN/LSTM/GRU comparison is skipped")


@pytest.fixture(autouse=True)
def _torch_default_dtype():
    """The tests here set torch's default dtype to float64; restored after each, so that no other
    module's torch init (the README's model, with torch's default init) runs in float64."""
    before = torch.get_default_dtype() if torch is not None else None
    yield
    if torch is not None:
        torch.set_default_dtype(before)


def _torch_run(rnn, p, xs, t, h0=None, c0=None):
    torch.set_default_dtype(torch.float64)
    D, N = rnn.d_in, rnn.hidden
    if rnn.cell == "rnn":
        m = torch.nn.RNN(D, N, nonlinearity=rnn.act)
    else:
        m = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[rnn.cell](D, N)
    names = {"W_ih": "weight_ih_l0", "W_hh": "weight_hh_l0", "b_ih": "bias_ih_l0", "b_hh": "bias_hh_l0"}
    with torch.no_grad():
        for ours, theirs in names.items():
            getattr(m, theirs).copy_(torch.from_numpy(getattr(p, ours)))
    x = torch.from_numpy(xs)
    h = None if h0 is None else torch.from_numpy(h0)[None].requires_grad_()
    state = None if h is None else ((h, torch.from_numpy(c0)[None].requires_grad_()) if rnn.cell == "lstm" else h)
    out, _ = m(x, state)
    extra = {}
    if rnn.loss == "sum_squares":
        loss = 0.5 * (out[-1] ** 2).sum()
    else:
        W, b = torch.from_numpy(p.W_out).requires_grad_(), torch.from_numpy(p.b_out).requires_grad_()
        extra = {"W_out": W, "b_out": b}
        y = (out if rnn.loss_on == "every" else out[-1]) @ W.T + b
        tt = torch.from_numpy(np.asarray(t))
        if rnn.loss == "mse":
            loss = ((y - tt) ** 2).mean()
        elif rnn.loss == "bce":
            loss = torch.nn.functional.binary_cross_entropy_with_logits(y, tt)
        else:
            loss = torch.nn.functional.cross_entropy(y.reshape(-1, y.shape[-1]), tt.reshape(-1))
    loss.backward()
    grads = {ours: getattr(m, theirs).grad.numpy() for ours, theirs in names.items()}
    grads.update({k: v.grad.numpy() for k, v in extra.items()})
    if h is not None:
        grads["h0"] = h.grad[0].numpy()
        if rnn.cell == "lstm":
            grads["c0"] = state[1].grad[0].numpy()
    return float(loss.detach()), grads


TORCH_CASES = [
    dict(cell="rnn"), dict(cell="rnn", activation="relu", recurrent_init="identity", sigma_b=0.1),
    dict(cell="lstm", sigma_b=0.5), dict(cell="gru", sigma_b=0.5),
    dict(cell="lstm", loss="mse", loss_on="every", output_dim=2),
    dict(cell="gru", loss="softmax_ce", loss_on="every", output_dim=3),
    dict(cell="rnn", loss="bce", output_dim=2),
]


@needs_torch
@pytest.mark.parametrize("fields", TORCH_CASES, ids=lambda f: "-".join(str(v) for v in f.values()))
def test_matches_torch_autograd(fields):
    """torch's layout and gate order map 1:1 (W_ih = weight_ih_l0, ...): the same loss and
    gradients in float64 to 1e-12, on every backend."""
    rnn = gb.Recurrent(steps=40, hidden=5, input_dim=3, **fields)
    p, xs, t = _problem(rnn, B=4)
    rng = np.random.default_rng(4)
    h0 = 0.5 * rng.standard_normal((4, 5))
    c0 = 0.5 * rng.standard_normal((4, 5)) if rnn.cell == "lstm" else None
    loss, want = _torch_run(rnn, p, xs, t, h0, c0)
    from gradbench.recurrent.backends import backends

    for backend in backends():
        res = gb.backprop(rnn, p, xs, t, backend=backend, h0=h0, c0=c0)
        assert abs(res.loss - loss) <= 1e-12 * abs(loss), (backend, res.loss, loss)
        got = {k: v.to_float() for k, v in res.grads.items()}
        got["h0"] = res.h0_grad.to_float()
        if c0 is not None:
            got["c0"] = res.c0_grad.to_float()
        for k, w in want.items():
            err = np.max(np.abs(got[k] - w)) / np.max(np.abs(w))
            assert err <= 1e-12, f"[{backend}] {k}: off by {err:.3g} of max |torch|"


@needs_torch
def test_torch_agrees_on_signal_norms_where_it_is_finite():
    """||dL/dh_t|| and ||dL/dc_t|| (the total: through h_t and c_{t+1}) per step from torch (an
    LSTMCell loop with retain_grad on every h_t and c_t) beside ours, on every backend."""
    from gradbench.recurrent.backends import backends

    rnn = gb.Recurrent(cell="lstm", steps=30, hidden=5, input_dim=2)
    p, xs, _ = _problem(rnn, B=2)
    torch.set_default_dtype(torch.float64)
    cell = torch.nn.LSTMCell(2, 5)
    with torch.no_grad():
        cell.weight_ih.copy_(torch.from_numpy(p.W_ih))
        cell.weight_hh.copy_(torch.from_numpy(p.W_hh))
        cell.bias_ih.copy_(torch.from_numpy(p.b_ih))
        cell.bias_hh.copy_(torch.from_numpy(p.b_hh))
    h, c = torch.zeros(2, 5), torch.zeros(2, 5)
    hs, cs = [], []
    for t in range(30):
        h, c = cell(torch.from_numpy(xs[t]), (h, c))
        h.retain_grad()
        c.retain_grad()
        hs.append(h)
        cs.append(c)
    (0.5 * (h**2).sum()).backward()
    want = np.array([float(x.grad.norm()) for x in hs])
    want_c = np.array([float(x.grad.norm()) for x in cs])
    for backend in backends():
        res = gb.backprop(rnn, p, xs, backend=backend)
        np.testing.assert_allclose(res.signal_norm.to_float(), want, rtol=1e-12, err_msg=backend)
        np.testing.assert_allclose(res.cell_signal_norm.to_float(), want_c, rtol=1e-12, err_msg=backend)


# ------------------------------------------------------------------ closed forms beyond float64
def _linear_states(p, xs, g):
    """h_t = g h_{t-1} + x_t W_ih^T + b for the identity cell with W_hh = g I, in plain float64."""
    h = np.zeros((xs.shape[1], p.W_hh.shape[1]))
    out = []
    for x in xs:
        h = g * h + x @ p.W_ih.T + p.b_ih + p.b_hh
        out.append(h)
    return np.array(out)


def _linear_cell(backend, T, g):
    """The identity rnn cell with W_hh = g I (hidden 3, input 2, batch 2) through T steps on
    ``backend`` (skipped if it is not available): params, inputs and the result."""
    if backend not in gb.recurrent.backends.backends():
        pytest.skip(f"{backend} not available")
    rnn = gb.Recurrent(cell="rnn", activation="identity", recurrent_init="identity", sigma_w=g, steps=T, hidden=3,
                       input_dim=2)
    p, xs, _ = _problem(rnn, B=2)
    return p, xs, gb.backprop(rnn, p, xs, backend=backend)


@pytest.mark.parametrize("backend", ["numpy", "numba", "c"])
def test_vanishing_linear_cell_closed_form(backend):
    """W_hh = I/2: dL/dh_t = 2^-(T-1-t) h_{T-1} exactly, 10^-1505 at step 0 for T = 5000."""
    T, g = 5000, 0.5
    p, xs, res = _linear_cell(backend, T, g)
    H = _linear_states(p, xs, g)
    t = np.arange(T)
    want = np.log10(np.linalg.norm(H[-1])) + (T - 1 - t) * math.log10(g)
    np.testing.assert_allclose(res.signal_norm.log10(), want, rtol=0, atol=1e-11)
    assert want[0] < -1500
    # step t's dW_hh term: 2^-(T-1-t) h_{T-1}^T h_{t-1}
    terms = np.array([np.linalg.norm(H[-1].T @ H[i - 1]) for i in range(1, T)])
    np.testing.assert_allclose(res.grad_norm.log10()[1:], np.log10(terms) + (T - 1 - t[1:]) * math.log10(g),
                               rtol=0, atol=1e-11)
    # the total is dominated by the last steps: plain float64 can sum it
    dW = sum(g ** (T - 1 - i) * H[-1].T @ H[i - 1] for i in range(T - 80, T))
    np.testing.assert_allclose(res.grads.W_hh.to_float(), dW, rtol=1e-12, atol=1e-14 * np.abs(dW).max())


@pytest.mark.parametrize("backend", ["numpy", "numba", "c"])
def test_exploding_linear_cell_closed_form(backend):
    """W_hh = 2 I: h_{T-1} = 2^(T-1) S with S = sum_t 2^-t u_t, so the loss is 10^1806 at T = 3000
    (exact through the forward exponents) and dL/dh_t = 2^(T-1-t) h_{T-1}."""
    T, g = 3000, 2.0
    p, xs, res = _linear_cell(backend, T, g)
    assert res.forward_rescaled
    U = xs @ p.W_ih.T + p.b_ih + p.b_hh
    S = sum(U[t] * 2.0 ** -t for t in range(80))
    lg2 = math.log10(2.0)
    want_loss = 2 * (T - 1) * lg2 + math.log10(0.5 * np.sum(S**2))
    assert abs(res.loss_exact.log10() - want_loss) <= 1e-9 and want_loss > 1800
    t = np.arange(T)
    want = (T - 1) * lg2 + math.log10(np.linalg.norm(S)) + (T - 1 - t) * lg2
    np.testing.assert_allclose(res.signal_norm.log10(), want, rtol=0, atol=1e-9)


# ------------------------------------------------------------------ the spec and bad input
@pytest.mark.parametrize("kwargs, message", [
    (dict(cell="lsmt"), "cell='lsmt' is not one of .*did you mean 'lstm'"),
    (dict(steps=0), "steps must be >= 1"),
    (dict(steps=2.5), "steps must be an int"),
    (dict(hidden=-1), "hidden must be >= 1"),
    (dict(input_dim=0), "input_dim must be >= 1"),
    (dict(cell="lstm", activation="relu"), "activation='relu' is not valid for cell='lstm'"),
    (dict(activation="prelu"), "activation='prelu' is not valid for cell='rnn'"),
    (dict(activation="tahn"), "did you mean 'tanh'"),
    (dict(cell="gru", forget_bias=1.0), "forget_bias is only valid for cell='lstm'"),
    (dict(recurrent_init="identiy"), "recurrent_init='identiy'.*did you mean 'identity'"),
    (dict(init="identity"), "init='identity' is not one of"),
    (dict(sigma_w=0), "sigma_w must be > 0"),
    (dict(loss_on="every"), "loss_on='every' needs a head"),
    (dict(loss="softmax_ce", output_dim=1), "output_dim >= 2"),
    (dict(clip="norm", clip_on="layer"), "clip_on='layer' is not one of"),
    (dict(cell="lstm", activation_param=0.1), "activation_param is only used"),
    (dict(dtype="float16"), "dtype='float16'"),
])
def test_bad_spec_is_refused_naming_the_parameter(kwargs, message):
    fields = dict(steps=5, hidden=3) | kwargs
    with pytest.raises((ValueError, TypeError), match=message):
        gb.Recurrent(**fields)


def test_steps_and_hidden_are_required():
    with pytest.raises(TypeError, match="steps"):
        gb.Recurrent(cell="lstm", hidden=3)


@pytest.mark.parametrize("backend", ["numpy", "numba", "c"])
def test_bad_inputs_are_refused_before_any_kernel_runs(backend, monkeypatch):
    from gradbench.recurrent import backends as rb

    if backend not in rb.backends():
        pytest.skip(f"{backend} not available")
    rnn = gb.Recurrent(cell="lstm", steps=5, hidden=3, input_dim=2)
    p, xs, _ = _problem(rnn)
    calls = []
    impl = rb.get_backend(backend)
    for f in ("lstm_forward", "lstm_backward"):
        monkeypatch.setattr(impl, f, lambda *a, _f=f, **k: calls.append(_f))
    bad = [
        (dict(xs=xs[:, :, :1]), r"xs has shape \(5, 3, 1\), expected \(steps=5, batch, input_dim=2\)"),
        (dict(xs=xs.astype(np.float32)), "xs has dtype float32, the net's dtype is float64"),
        (dict(xs=np.where(xs > 1, np.nan, xs)), "xs contains NaN"),
        (dict(xs=xs.tolist()), "xs must be a numpy.ndarray"),
        (dict(params=gb.init_params(gb.Stack(depth=2, width=3), 0)), "params must be gradbench.RecurrentParams"),
        (dict(params=gb.init_params(rnn.replace(hidden=4), 0)), r"params.W_ih has shape \(16, 2\), expected \(12, 2\)"),
        (dict(targets=np.zeros((3, 1))), "targets are given but loss='sum_squares' takes none"),
        (dict(h0=np.zeros((2, 3))), r"h0 has shape \(2, 3\), expected \(3, 3\)"),
        (dict(xs=gb.GeneratedSequence(rnn.replace(steps=6), 3)), "GeneratedSequence was made for a different net"),
        (dict(checkpoint=0), "checkpoint=0 must be a positive number of steps"),
    ]
    for change, message in bad:
        kw = dict(params=p, xs=xs, targets=None) | change
        opts = {k: v for k, v in change.items() if k not in ("params", "xs", "targets")}
        with pytest.raises((ValueError, TypeError), match=message):
            gb.backprop(rnn, kw["params"], kw["xs"], kw["targets"], backend=backend, **opts)
    with pytest.raises(ValueError, match="c0 is given but cell='gru'"):
        g = rnn.replace(cell="gru")
        gb.backprop(g, gb.init_params(g, 0), xs, backend=backend, c0=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="loss='mse' needs targets"):
        m = rnn.replace(loss="mse")
        gb.backprop(m, gb.init_params(m, 0), xs, backend=backend)
    assert calls == []


def test_params_follow_the_init():
    N = 6
    r = gb.Recurrent(cell="lstm", steps=3, hidden=N, input_dim=2, recurrent_init="orthogonal", sigma_w=1.5,
                     forget_bias=2.0, sigma_b=0.0)
    p = gb.init_params(r, 0)
    assert p.W_ih.shape == (4 * N, 2) and p.W_hh.shape == (4 * N, N) and p.b_ih.shape == (4 * N,)
    for k in range(4):
        Q = p.W_hh[k * N:(k + 1) * N]
        np.testing.assert_allclose(Q @ Q.T, 1.5**2 * np.eye(N), atol=1e-12)
    np.testing.assert_array_equal(p.b_ih[N:2 * N], 2.0)
    assert not np.any(p.b_ih[:N]) and not np.any(p.b_hh)
    i = gb.init_params(r.replace(cell="rnn", forget_bias=None, recurrent_init="identity", sigma_w=0.9), 0)
    np.testing.assert_array_equal(i.W_hh, 0.9 * np.eye(N))
    n = gb.init_params(gb.Recurrent(cell="gru", steps=3, hidden=400, recurrent_init="normal", sigma_w=2.0), 0)
    assert abs(np.std(n.W_hh) * math.sqrt(400) - 2.0) < 0.02
    assert rspec.GATE_NAMES["gru"] == ("r", "z", "n")
    xs = gb.sequence_input(r, 4, 1)
    assert xs.shape == (3, 4, 2) and xs.dtype == np.float64
    with pytest.raises(ValueError, match="batch must be an int >= 1"):
        gb.sequence_input(r, 0)
    # a stack's input for a recurrent net: it gave a (batch, input_dim) array its backprop cannot take
    with pytest.raises(TypeError, match=r"got Recurrent: a recurrent net's input sequence is "
                                        r"gradbench\.sequence_input\(rnn, batch, seed\)"):
        gb.gaussian_input(r, 4, 1)


_NOJIT = textwrap.dedent("""
    import json, numpy as np, gradbench as gb
    import numba
    assert numba.config.DISABLE_JIT
    out = []
    cases = [dict(cell="rnn", activation=a) for a in ("tanh", "relu", "sigmoid", "identity")] + [
        dict(cell="lstm", clip="norm", clip_threshold=1e-3), dict(cell="gru", loss="mse", loss_on="every", output_dim=2),
        dict(cell="lstm", dtype="float32")]
    for kw in cases:
        r = gb.Recurrent(**(dict(steps=9, hidden=3, input_dim=2) | kw))
        p, xs = gb.init_params(r, 0), gb.sequence_input(r, 2, 1)
        t = np.random.default_rng(0).standard_normal((9, 2, 2)).astype(r.dtype) if r.has_head else None
        a = gb.backprop(r, p, xs, t, backend="numpy")
        b = gb.backprop(r, p, xs, t, backend="numba", checkpoint=3)
        rel = lambda x, y: float(np.max(np.abs(x.to_float() - y.to_float())) / np.max(np.abs(y.to_float())))
        out.append(dict(dtype=r.dtype, W=rel(b.grads.W_hh, a.grads.W_hh), s=rel(b.signal_norm, a.signal_norm)))
    print(json.dumps(out))
""")


def test_numba_bodies_run_as_python_under_disable_jit():
    import json

    pytest.importorskip("gradbench.kernels.recurrent")
    proc = subprocess.run([sys.executable, "-c", _NOJIT], env=dict(os.environ, NUMBA_DISABLE_JIT="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(rows) == 7
    for row in rows:
        tol = 1e-12 if row["dtype"] == "float64" else 1e-4
        assert row["W"] <= tol and row["s"] <= tol, row
