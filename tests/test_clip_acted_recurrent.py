"""``RecurrentResult.signal_clip_acted`` (and ``carried_signal_clip_acted``): where the signal clip
changed the backward state through time, against an independent count.

The expected flags come from a plain backpropagation through time written here: float64 NumPy
loops over the steps, the cells' equations from gradbench/recurrent/spec.py's docstring (torch's),
no rescaling, no gradbench code. The clip is applied as documented (docs/design.md, the result's
docstring): at every state of the backward chain, from dL/dh_{T-1} down to dL/dh_{-1}, after the
every-step loss's own gradient has joined it, on the state [dL/dh; the LSTM's dL/dc carried back
through the next cell state] as one: value, every entry to [-c, c] when some |entry| > c; norm,
the whole state scaled to norm c when its norm > c. The flag records that test. Thresholds are
chosen clear of every state's pre-clip size (:data:`MARGIN`), so the float32 runs decide the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import gradbench as gb
from gradbench import abi
from gradbench.recurrent import abi as rabi
from gradbench.recurrent import backends as rbackends
from tests.helpers import assert_clip_record_refused

BACKENDS = rbackends.backends()
HAS_C = "c" in BACKENDS
MARGIN = {"float64": 1e-8, "float32": 3e-3}


# ------------------------------------------------------------------ the plain chain
def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def _clip(state: np.ndarray, mode: str, c: float) -> tuple[np.ndarray, bool, float]:
    """The documented clip of one state: (clipped state, whether it acted, size / c before it)."""
    size = float(np.max(np.abs(state))) if mode == "value" else float(np.linalg.norm(state))
    if size <= c:
        return state, False, size / c
    if mode == "value":
        return np.clip(state, -c, c), True, size / c
    return state * (c / size), True, size / c


def plain_bptt(rnn, params, xs, targets=None, c=None):
    """Forward and the clipped backward passes through time in float64 loops.

    Returns {"full": (flags (T+1,), ratios (T+1,)), "carried": (flags, ratios) or None}: flag j for
    the state at H[j] (j = t + 1: dL/dh_t; j = 0: dL/dh_{-1}), ratio = its size before the clip / c.
    ``targets`` (T, B, O): an mse head on every step, whose carried pass runs from the last step's
    loss alone; None: the sum_squares probe 0.5 ||h_{T-1}||^2. ``c``: the threshold (default the net's)."""
    c_clip = rnn.clip_threshold if c is None else c
    P = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    X = np.asarray(xs, dtype=np.float64)
    T, B, _ = X.shape
    N, cell = rnn.hidden, rnn.cell
    Wih, Whh, bih, bhh = P["W_ih"], P["W_hh"], P["b_ih"], P["b_hh"]
    h = [np.zeros((B, N))]  # h[t + 1] = h_t
    c = [np.zeros((B, N))]
    saved = []
    for t in range(T):
        hp = h[-1]
        u = X[t] @ Wih.T + bih
        p = hp @ Whh.T + bhh
        if cell == "rnn":
            z = u + p
            h.append(np.tanh(z))
            saved.append(z)
        elif cell == "lstm":
            a = u + p
            i, f, g, o = (a[:, k * N:(k + 1) * N] for k in range(4))
            i, f, g, o = _sig(i), _sig(f), np.tanh(g), _sig(o)
            c.append(f * c[-1] + i * g)
            h.append(o * np.tanh(c[-1]))
            saved.append((i, f, g, o))
        else:
            r = _sig(u[:, :N] + p[:, :N])
            zz = _sig(u[:, N:2 * N] + p[:, N:2 * N])
            hn = p[:, 2 * N:]
            n = np.tanh(u[:, 2 * N:] + r * hn)
            h.append((1 - zz) * n + zz * hp)
            saved.append((r, zz, n, hn))
    every = targets is not None
    if every:
        W_out, b_out = P["W_out"], P["b_out"]
        tg = np.asarray(targets, dtype=np.float64)
        count = tg.size  # the mean over steps, batch and outputs

        def dh_loss(t):  # dL_t/dh_t
            return 2.0 * (h[t + 1] @ W_out.T + b_out - tg[t]) / count @ W_out
    else:
        def dh_loss(t):
            return h[T].copy()

    def backward(inject: bool):
        flags, ratios = np.zeros(T + 1, bool), np.zeros(T + 1)
        g = dh_loss(T - 1)
        gc = np.zeros((B, N))
        for j in range(T, -1, -1):  # the state at H[j]: clip it, then step j - 1 back
            if j < T and every and inject and j >= 1:
                g = g + dh_loss(j - 1)
            st = np.concatenate([g, gc]) if cell == "lstm" else g
            st, flags[j], ratios[j] = _clip(st, rnn.clip, c_clip)
            g, gc = (st[:B], st[B:]) if cell == "lstm" else (st, gc)
            if j == 0:
                break
            t = j - 1
            if cell == "rnn":
                g = (g * (1 - np.tanh(saved[t]) ** 2)) @ Whh
            elif cell == "lstm":
                i, f, gg, o = saved[t]
                tc = np.tanh(c[t + 1])
                dc = gc + g * o * (1 - tc ** 2)
                dz = np.concatenate([dc * gg * i * (1 - i), dc * c[t] * f * (1 - f), dc * i * (1 - gg ** 2),
                                     g * tc * o * (1 - o)], axis=1)
                gc = dc * f
                g = dz @ Whh
            else:
                r, zz, n, hn = saved[t]
                dn = g * (1 - zz) * (1 - n ** 2)
                dzz = g * (h[t] - n) * zz * (1 - zz)
                dr = dn * hn * r * (1 - r)
                g = g * zz + np.concatenate([dr, dzz, dn * r], axis=1) @ Whh
        return flags, ratios

    return {"full": backward(True), "carried": backward(False) if every else None}


# ------------------------------------------------------------------ the problems
KINDS = {
    # a tanh cell above the edge of chaos: the state grows going back, the clip acts from some step down
    "rnn": dict(cell="rnn", activation="tanh", recurrent_init="normal", sigma_w=1.8),
    # gated cells at a large recurrent gain: they grow going back too
    "lstm": dict(cell="lstm", recurrent_init="normal", sigma_w=6.0),
    "gru": dict(cell="gru", recurrent_init="normal", sigma_w=6.0),
}
# c / the top state's size: above 1 first (the clip then acts below the top, where the state has grown)
FACTORS = (1.3, 2.2, 1.7, 3.5, 0.7, 5.0, 0.45, 8.0, 0.3, 12.0, 0.2)


def problem(kind, mode, dtype="float64", every=False, steps=14, batch=4, hidden=6, seed=0):
    """A clipped net of ``kind`` whose threshold acts at two steps or more and not at two or more (in the pass
    the test reads: the carried one with ``every``) and lies clear of every state's size; returns
    (net, params, xs, targets, the plain chain's flags {"full", "carried"})."""
    head = dict(loss="mse", loss_on="every", output_dim=2) if every else {}
    rnn = gb.Recurrent(steps=steps, hidden=hidden, input_dim=3, dtype=dtype, clip=mode, clip_on="signal",
                       clip_threshold=1.0, **KINDS[kind], **head)
    params = gb.init_params(rnn, seed)
    xs = np.random.default_rng(seed + 1).standard_normal((steps, batch, 3)).astype(rnn.np_dtype)
    tg = np.random.default_rng(seed + 2).standard_normal((steps, batch, 2)).astype(rnn.np_dtype) if every else None
    top = plain_bptt(rnn, params, xs, tg, c=1.0)["full"][1][-1]  # the top state's size (c = 1)
    for f in FACTORS:
        rnn = rnn.replace(clip_threshold=float(top * f))
        out = plain_bptt(rnn, params, xs, tg)
        read = out["carried" if every else "full"][0][1:]
        ratios = np.concatenate([r for _, r in filter(None, out.values())])
        if read.sum() >= 2 and (~read).sum() >= 2 and np.min(np.abs(np.log(ratios))) > MARGIN[dtype]:
            return rnn, params, xs, tg, {k: (v[0] if v is not None else None) for k, v in out.items()}
    raise AssertionError(f"no threshold acts at some steps only, clear of every state: {kind} {mode} {dtype}")


def run(backend, rnn, params, xs, tg, **kw):
    return gb.backprop(rnn, params, xs, tg, backend=backend, **kw)


def _same(got, want, label):
    assert got is not None, label
    assert got.dtype == bool and got.shape == want.shape, (label, got.dtype, got.shape)
    np.testing.assert_array_equal(got, want, err_msg=label)


# ------------------------------------------------------------------ every backend against the plain chain
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", ["value", "norm"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_flags_are_the_plain_chains(backend, kind, mode, dtype):
    rnn, params, xs, tg, want = problem(kind, mode, dtype)
    res = run(backend, rnn, params, xs, tg)
    _same(res.signal_clip_acted, want["full"], f"{backend} {kind} {mode} {dtype}")
    assert res.carried_signal_clip_acted is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", ["value", "norm"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_step_loss_records_both_passes(backend, kind, mode, dtype):
    """With a loss at every step: the full pass (the loss's own gradient joins the state at each
    step, then the clip) and the carried pass (the last step's loss alone) each have their record."""
    rnn, params, xs, tg, want = problem(kind, mode, dtype, every=True)
    res = run(backend, rnn, params, xs, tg)
    label = f"{backend} {kind} {mode} {dtype}"
    _same(res.signal_clip_acted, want["full"], label + " full")
    _same(res.carried_signal_clip_acted, want["carried"], label + " carried")
    assert res.carried_signal_clip_acted[-1] == res.signal_clip_acted[-1]  # one top state
    off = run(backend, rnn, params, xs, tg, carried=False)
    _same(off.signal_clip_acted, want["full"], label + " carried=False")
    assert off.carried_signal_clip_acted is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_checkpointed_and_stats_only_runs_flag_as_the_plain_run(backend, kind):
    """Segments write their own states' flags; the one at a segment's top is the segment above's."""
    rnn, params, xs, tg, want = problem(kind, "norm", every=True, steps=20, batch=64)  # 4 steps per chunk
    for kw in (dict(checkpoint=4), dict(checkpoint=8), dict(stats_only=True, checkpoint=4)):
        res = run(backend, rnn, params, xs, tg, **kw)
        assert res.extras["segments"] > 1, kw
        _same(res.signal_clip_acted, want["full"], f"{backend} {kind} {kw} full")
        _same(res.carried_signal_clip_acted, want["carried"], f"{backend} {kind} {kw} carried")


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_signal_clip_records_none_and_a_clip_that_never_acts_all_false(backend):
    """None without a signal clip; all False for a threshold beyond every state."""
    base = dict(cell="lstm", steps=5, hidden=4)
    xs = np.random.default_rng(0).standard_normal((5, 2, 4))
    for rnn in (gb.Recurrent(**base), gb.Recurrent(**base, clip="norm", clip_on="matrix"),
                gb.Recurrent(**base, clip="value", clip_on="global")):
        res = gb.backprop(rnn, gb.init_params(rnn, 0), xs, backend=backend)
        assert res.signal_clip_acted is None and res.carried_signal_clip_acted is None, rnn
    rnn = gb.Recurrent(**base, clip="norm", clip_threshold=1e300)
    res = gb.backprop(rnn, gb.init_params(rnn, 0), xs, backend=backend)
    np.testing.assert_array_equal(res.signal_clip_acted, np.zeros(6, bool))
    rnn = gb.Recurrent(**base, clip="value", clip_threshold=1e-300)  # the top acts (the state after it is tiny)
    res = gb.backprop(rnn, gb.init_params(rnn, 0), xs, backend=backend)
    assert res.signal_clip_acted[-1]


# ------------------------------------------------------------------ the C backend on 1 and 2 threads
_SCRIPT = r"""
import json, sys
import numpy as np
import gradbench as gb
from gradbench import cbackend as cb
assert cb.threads() == int(sys.argv[2])
out = {}
for spec in json.loads(sys.stdin.read()):
    rnn = gb.Recurrent(**spec["rnn"])
    params = gb.init_params(rnn, 0)
    xs = np.asarray(spec["xs"], dtype=rnn.np_dtype)
    tg = None if spec["tg"] is None else np.asarray(spec["tg"], dtype=rnn.np_dtype)
    for label, kw in (("plain", {}), ("ckpt", dict(checkpoint=4))):
        res = gb.backprop(rnn, params, xs, tg, backend="c", **kw)
        out[spec["name"] + " " + label] = [res.signal_clip_acted.tolist(),
                                           None if res.carried_signal_clip_acted is None
                                           else res.carried_signal_clip_acted.tolist()]
print(json.dumps(out))
"""


@pytest.mark.skipif(not HAS_C, reason="the C backend is not built")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_c_flags_with_gradbench_c_threads_1_and_2(dtype):
    fields = ("cell", "activation", "recurrent_init", "sigma_w", "steps", "hidden", "input_dim", "dtype", "clip",
              "clip_threshold", "clip_on", "loss", "loss_on", "output_dim")
    specs, want = [], {}
    for kind in sorted(KINDS):
        for mode in ("value", "norm"):
            for every in (False, True):
                rnn, _, xs, tg, flags = problem(kind, mode, dtype, every=every, batch=64)
                name = f"{kind} {mode} {'every' if every else 'last'}"
                specs.append(dict(name=name, rnn={k: getattr(rnn, k) for k in fields}, xs=xs.tolist(),
                                  tg=None if tg is None else tg.tolist()))
                want[name] = flags
    runs = {}
    for nth in (1, 2):
        env = dict(os.environ, GRADBENCH_C_THREADS=str(nth))
        out = subprocess.run([sys.executable, "-c", _SCRIPT, "-", str(nth)], env=env, input=json.dumps(specs),
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        runs[nth] = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs[1] == runs[2]
    for label, (full, carried) in runs[1].items():
        name = label.rsplit(" ", 1)[0]
        np.testing.assert_array_equal(np.array(full), want[name]["full"], err_msg=label)
        if want[name]["carried"] is None:
            assert carried is None, label
        else:
            np.testing.assert_array_equal(np.array(carried), want[name]["carried"], err_msg=label)


# ------------------------------------------------------------------ the contract
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("size", [0, 1, 2])  # T .. T + 2 entries: only T + 1 passes
def test_clip_acted_of_the_wrong_size_is_refused_before_any_kernel(backend, cell, size):
    T, B, N, D = 4, 2, 3, 3
    rnn = gb.Recurrent(cell=cell, steps=T, hidden=N, input_dim=D, clip="value", clip_threshold=1e-3)
    p = gb.init_params(rnn, 0)
    impl = rbackends.get_backend(backend)
    fname, bname = rabi.CELL_FUNCTIONS[cell]
    icfg, fcfg = rabi.kernel_config(rnn, False, B)
    xs = np.random.default_rng(0).standard_normal((T, B, D))
    fwd = abi.allocate(fname, dict(T=T, B=B, N=N, D=D, GN=rnn.gates * N), "float64",
                       skip=("icfg", "fcfg", "X", "W_ih", "W_hh", "b_ih", "b_hh"), fill=dict(H=0.0, C=0.0, fexp=0, info=-1))
    getattr(impl, fname)(icfg=icfg, fcfg=fcfg, X=xs, W_ih=p.W_ih, W_hh=p.W_hh, b_ih=p.b_ih, b_hh=p.b_hh, **fwd)
    bwd = abi.allocate(bname, dict(T=T, B=B, N=N, D=D, GN=rnn.gates * N, S=1), "float64",
                       fill=dict(dW_ih=0.0, dW_hh=0.0, db_ih=0.0, db_hh=0.0, DH=0.0, dexp=rabi.EXP_EMPTY, sig_e=0, row_e=0,
                                 info=-1, GC=0.0))
    bwd.update({k: v for k, v in fwd.items() if k in bwd})
    bwd.update(icfg=icfg, fcfg=fcfg, X=xs, W_hh=p.W_hh)
    bwd["G"][...] = fwd["H"][-1] / np.max(np.abs(fwd["H"][-1])) / 2
    bwd["clip_acted"] = np.full(T + size, 7, np.int64)
    call = lambda: getattr(impl, bname)(**bwd)  # noqa: E731
    if size == 1:
        call()
        assert set(bwd["clip_acted"][:T].tolist()) <= {0, 1} and bwd["clip_acted"][T] == 7  # the top: the caller's
        assert bwd["clip_acted"][:T].any()  # a value clip at 1e-3 of states near 1 (which it keeps small)
        return
    assert_clip_record_refused(call, bwd, bname, T + 1)


# ------------------------------------------------------------------ the sentences read the record
def _said(flags) -> str:
    """What the clip sentence must say of one pass's steps (``flags``: the plain chain's, one a
    step), written here from the flags: the case, the count and, when it is short, the list."""
    on = np.flatnonzero(flags)
    T = len(flags)
    if not on.size:
        return "but the clip changed no state"
    if on.tolist() == [T - 1]:
        return "but before the last step the clip changed nothing"
    if on.size == T:
        return "and the clip changed it at every step, so these are the norms of the clipped chain"
    off = np.setdiff1d(np.arange(T), on)
    names, but = (on, "") if on.size <= off.size else (off, "all but ")
    if names.size > 5:
        return f"the clip changed it at {on.size} of the {T} steps ({but}"
    listed = str(names[0]) if names.size == 1 else ", ".join(map(str, names[:-1])) + f" and {names[-1]}"
    return f"the clip changed it at {on.size} of the {T} steps ({but}{listed})"


def _every_said(flags) -> str:
    k, T = int(np.sum(flags)), len(flags)
    if k == 0:
        return f"with every step's loss the clip changed the state at none of the {T} steps"
    if k == T:
        return "with every step's loss the clip changed the state at every step"
    return f"with every step's loss the clip changed the state at {k} of the {T} steps ("


@pytest.mark.parametrize("backend", ["numpy", "c"] if HAS_C else ["numpy"])
@pytest.mark.parametrize("every", [False, True])
@pytest.mark.parametrize("mode", ["value", "norm"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_clip_sentences_count_the_plain_chains_steps(backend, kind, mode, every):
    """The diagnosis names where the clip changed the state from the record: the count and the
    steps of the plain chain's flags (of the carried pass with a loss at every step, and then also
    the every-step loss's own), never where the norms say it may have."""
    rnn, params, xs, tg, want = problem(kind, mode, every=every)
    text = " ".join(gb.diagnose(run(backend, rnn, params, xs, tg)).explanation.split())
    subject = "the carried backward state" if every else "the backward state"
    assert f"{subject}{' (' if kind == 'lstm' else ' is'}" in text, text
    assert _said(want["carried" if every else "full"][1:]) in text, text
    assert "may act" not in text and "can act" not in text, text
    if every:
        assert _every_said(want["full"][1:]) in text, text
    else:
        assert "with every step's loss" not in text


def test_the_sentence_changes_with_the_count():
    """The sentence of a record differs from that of the record with one step more or fewer: a
    wrong count cannot pass for the right one."""
    from gradbench.recurrent.diagnose import _clip_words

    rnn, params, xs, tg, want = problem("gru", "norm")
    res = run("numpy", rnn, params, xs, tg)
    s = np.asarray(res.signal_norm.log10(), dtype=np.float64)
    flags = want["full"][1:]
    text = _clip_words(rnn, flags, s)
    assert _said(flags) in text
    for t in range(rnn.steps):
        other = flags.copy()
        other[t] = not other[t]
        assert _said(flags) not in _clip_words(rnn, other, s)


def test_to_frame_has_the_flags_of_both_passes():
    pytest.importorskip("pandas")
    rnn, params, xs, tg, want = problem("rnn", "value", every=True)
    df = run("numpy", rnn, params, xs, tg).to_frame()
    np.testing.assert_array_equal(df["signal_clip_acted"].to_numpy(), want["full"][1:])
    np.testing.assert_array_equal(df["carried_signal_clip_acted"].to_numpy(), want["carried"][1:])
    assert df["signal_clip_acted"].dtype == bool
    assert df.attrs["signal_clip_acted_initial"] is bool(want["full"][0])
    assert df.attrs["carried_signal_clip_acted_initial"] is bool(want["carried"][0])
    plain = gb.Recurrent(cell="gru", steps=3, hidden=2)
    df = gb.backprop(plain, gb.init_params(plain, 0), np.ones((3, 2, 2)), backend="numpy").to_frame()
    assert "signal_clip_acted" not in df.columns and "signal_clip_acted_initial" not in df.attrs


def test_the_diagnosis_keeps_the_record_through_its_files(tmp_path):
    """RecurrentDiagnosis.clip_acted and carried_clip_acted are the plain chain's flags of steps
    0 .. T-1, and survive JSON, .npz and the frame (they were only on the pass)."""
    pytest.importorskip("pandas")
    from gradbench.frames import write_npz
    from gradbench.recurrent.diagnose import RecurrentDiagnosis, diagnose

    rnn, params, xs, tg, want = problem("lstm", "norm", every=True)
    d = diagnose(run("numpy", rnn, params, xs, tg))
    _same(d.clip_acted, want["full"][1:], "full")
    _same(d.carried_clip_acted, want["carried"][1:], "carried")
    data = json.loads(d.to_json())
    assert data["clip_acted"] == want["full"][1:].tolist()
    assert data["carried_clip_acted"] == want["carried"][1:].tolist()
    back = RecurrentDiagnosis.from_npz(write_npz(d, str(tmp_path / "d.npz")))
    _same(back.clip_acted, want["full"][1:], "npz full")
    _same(back.carried_clip_acted, want["carried"][1:], "npz carried")
    df = d.to_frame()
    np.testing.assert_array_equal(df["carried_clip_acted"].to_numpy(), want["carried"][1:])
    plain = gb.Recurrent(cell="gru", steps=3, hidden=2)
    d0 = diagnose(gb.backprop(plain, gb.init_params(plain, 0), np.ones((3, 2, 2)), backend="numpy"))
    assert d0.clip_acted.size == 0 and "clip_acted" not in d0.to_frame().columns


@pytest.mark.parametrize("every", [False, True])
def test_the_run_table_has_a_clipped_column_of_the_verdicts_pass(every):
    """`gradbench run --cell` prints a `clipped` column, as the stacks' table: 'yes' at the steps
    where the plain BPTT's clip changed the state of the pass the verdict reads (the carried one
    with a loss at every step), '-' elsewhere."""
    from gradbench.recurrent.diagnose import diagnose, format_report

    rnn, params, xs, tg, want = problem("gru", "norm", every=every)
    d = diagnose(run("numpy", rnn, params, xs, tg))
    text = format_report(d, rows=100)
    head = next(line for line in text.splitlines() if line.split()[:2] == ["step", "||dL/dh_t||"])
    assert head.rstrip().endswith("clipped")
    read = want["carried" if every else "full"][1:]
    rows = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit() and len(line.split()) > 5]
    assert len(rows) == rnn.steps
    for r in rows:
        assert r[-1] == ("yes" if read[int(r[0])] else "-"), (r, read)
    assert ("the last step's loss alone" in text) == every
    plain = gb.Recurrent(cell="gru", steps=3, hidden=2)
    d0 = diagnose(gb.backprop(plain, gb.init_params(plain, 0), np.ones((3, 2, 2)), backend="numpy"))
    assert "clipped" not in format_report(d0)
