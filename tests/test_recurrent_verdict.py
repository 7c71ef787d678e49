"""The recurrent verdict (gradbench/recurrent/diagnose.py, rules in its docstring): not only the
fitted slope, but the total change and the extremes of log10 ||dL/dh_t|| beyond the threshold."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import gradbench as gb
from gradbench.recurrent.diagnose import classify, diagnose


def _slope(s):
    """Least-squares slope going back (minus the slope against t), computed here with polyfit."""
    return -float(np.polyfit(np.arange(len(s)), s, 1)[0])


@pytest.mark.parametrize("sign, verdict", [(-1, "vanishing"), (1, "exploding")])
def test_collapse_then_flat_is_not_stable(sign, verdict):
    """5 decades lost (or gained) in the 3 steps before the last, then flat for 997 steps: the fitted
    change over the sequence is only ~0.03 decades, the total change is 5."""
    s = np.zeros(1000)
    s[:-3] = sign * 5.0
    s[-3:-1] = sign * np.array([4.0, 2.0])
    fitted = _slope(s) * (len(s) - 1)
    assert abs(fitted) < 2  # the old rule (fitted change only) said stable
    assert classify(s, _slope(s)) == verdict


def test_a_dip_inside_the_sequence_vanishes():
    """Back to the start level at step 0, but 40 decades down in between (the drop to the minimum)."""
    s = np.zeros(100)
    s[10:90] = -40.0
    assert abs(s[0] - s[-1]) == 0 and classify(s, _slope(s)) == "vanishing"


def test_within_the_threshold_is_stable_and_the_larger_change_wins():
    t = np.arange(500)
    assert classify(0.9 * np.sin(t / 30.0), 0.0) == "stable"
    s = np.zeros(500)
    s[100] = 2.5     # a rise of 2.5 decades
    s[:50] = -6.0    # and a total drop of 6: vanishing wins
    assert classify(s, _slope(s)) == "vanishing"
    s[100], s[:50] = 7.0, -3.0
    assert classify(s, _slope(s)) == "exploding"
    assert classify(s, 0.0, threshold=8.0) == "stable"


def _reference(threshold_case):
    cell, kw, batch = threshold_case
    rnn = gb.Recurrent(cell=cell, **kw)
    params = gb.init_params(rnn, 0)
    res = gb.backprop(rnn, params, gb.GeneratedSequence(rnn, batch, 0), backend="numpy")
    return rnn, res


@pytest.mark.parametrize("case", [
    ("lstm", dict(steps=100, hidden=2, recurrent_init="normal", sigma_w=1000, sigma_b=100), 1),
    ("lstm", dict(steps=1000, hidden=8, sigma_b=10), 2),
    ("gru", dict(steps=1000, hidden=8, sigma_b=10), 2),
])
def test_review_cases_vanish_and_the_sentence_agrees_with_the_ratio(case):
    """The review's repros: the fitted slope is small (or of the wrong sign), but the gradient
    reaching step 0 is more than 2 decades below the last step's (log10 norms recomputed here from
    the reference's mantissas and exponents). The LSTM's is its backward state's, dL/dh_t and
    dL/dc_t together: at sigma_b = 10 (gates saturated at 0 or 1 unit by unit) dL/dh_0 lies 2.2
    decades below dL/dh_999, but the units whose forget gate is 1 carry dL/dc_t back unchanged,
    and the state reaching step 0 is within 1 decade of the last step's: stable."""
    rnn, res = _reference(case)
    l10 = lambda n: np.log10(n.mantissa.astype(np.float64)) + n.exponent * math.log10(2)  # noqa: E731
    s = l10(res.signal_norm)
    if rnn.cell == "lstm":
        h_ratio = s[0] - s[-1]
        s = 0.5 * np.log10(10.0 ** (2 * (s - s[-1])) + 10.0 ** (2 * (l10(res.cell_signal_norm) - s[-1]))) + s[-1]
    ratio = s[0] - s[-1]
    d = diagnose(res)
    if ratio > -2:  # the LSTM at sigma_b = 10: the cell's path carries what dL/dh_t loses
        assert h_ratio < -2 and d.verdict == "stable", (h_ratio, ratio, d.explanation)
        m = re.search(r"reaching step 0 is 10\^(-?[\d.]+) of the one", d.explanation)
        assert m and float(m.group(1)) == pytest.approx(ratio, abs=1e-3), d.explanation
        return
    assert d.verdict == "vanishing", d.explanation
    m = re.search(r"\(([\d.e+-]+) decades (lost|gained) per step on average\)", d.explanation)
    assert m and m.group(2) == "lost", d.explanation
    assert float(m.group(1)) == pytest.approx(-ratio / (rnn.steps - 1), rel=2e-3)


def test_forget_bias_5_stays_stable_where_rnn_and_gru_vanish():
    """The LSTM's classic remedy over 1000 steps (hidden 32, as the demo): stable; rnn and gru vanish."""
    verdicts = {}
    for cell, kw in (("lstm", dict(forget_bias=5.0)), ("rnn", {}), ("gru", {})):
        rnn = gb.Recurrent(cell=cell, steps=1000, hidden=32, **kw)
        res = gb.backprop(rnn, gb.init_params(rnn, 0), gb.GeneratedSequence(rnn, 16, 0))
        verdicts[cell] = diagnose(res).verdict
    assert verdicts == {"lstm": "stable", "rnn": "vanishing", "gru": "vanishing"}


@pytest.mark.parametrize("kw, kind", [
    (dict(activation="relu", recurrent_init="normal", sigma_w=2.0, steps=3000, hidden=33), "overflowed ||dL/dh_t||"),
    (dict(steps=3000, hidden=8), "lost ||dL/dh_t|| to underflow"),
])
def test_float_limit_sentence_names_every_dtype_exceeded(kw, kind):
    """Every dtype whose range (np.finfo: smallest normal, largest finite) the exact norms leave is
    named, float64 included, each at the first step going back where it is left."""
    rnn = gb.Recurrent(cell="rnn", **kw)
    res = gb.backprop(rnn, gb.init_params(rnn, 0), gb.GeneratedSequence(rnn, 1, 0))
    d = diagnose(res)
    s = d.signal_log10
    sentence = next(w for w in d.explanation.split("; ") if kind in w)
    for name in ("float32", "float64"):
        fi = np.finfo(name)
        out = (s > math.log10(fi.max)) if kind.startswith("overflowed") else (s < math.log10(fi.tiny))
        assert out.any(), name  # both ranges are left in these two cases
        assert name in sentence and f"step {np.flatnonzero(out).max()} down" in sentence, sentence


def test_words_name_a_saturated_vanilla_cell_and_where_learning_reaches():
    """A vanilla tanh cell at sigma_w = 1e19 reads 0 below its last step (tanh'(z) ~ 4 exp(-2|z|)
    lies below 2^(-2^62), beyond the step rescue's int64 exponent): the diagnosis said only
    'exactly zero'. (At sigma_w = 3000 the signal is 10^-4147, exact: tests/test_exact.py.) And 'learning reaches 99 steps back' was counted from the largest term, for a
    linear cell whose every term lies within one decade."""
    import warnings

    rnn = gb.Recurrent(cell="rnn", steps=6, hidden=3, input_dim=2, sigma_w=1e19, recurrent_init="normal")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        res = gb.backprop(rnn, gb.init_params(rnn, 0), gb.sequence_input(rnn, batch=2, seed=1), backend="numpy")
    text = gb.diagnose(res).explanation
    assert "no gradient reaches step 0" in text and "tanh'(z) lies below 2^(-2^62)" in text
    lin = gb.Recurrent(cell="rnn", steps=500, hidden=8, input_dim=3, activation="identity", sigma_w=1.02)
    d = gb.diagnose(gb.backprop(lin, gb.init_params(lin, 0), gb.sequence_input(lin, batch=2, seed=1),
                                backend="numpy"))
    g = d.grad_log10[np.isfinite(d.grad_log10)]
    assert g.max() - g.min() < 8 and "learning reaches over the whole sequence" in d.explanation


def _tanh_bptt_terms(params, xs):
    """log10 ||dz_t^T h_{t-1}|| of a vanilla tanh cell with the probe 0.5 ||h_{T-1}||^2 and
    h_{-1} = 0, by hand in plain float64 NumPy (no exponents needed below 10^300)."""
    hs = [np.zeros((xs.shape[1], params.W_hh.shape[0]))]
    for x in xs:
        hs.append(np.tanh(x @ params.W_ih.T + params.b_ih + hs[-1] @ params.W_hh.T + params.b_hh))
    g, out = hs[-1].copy(), np.full(len(xs), -np.inf)
    for t in range(len(xs) - 1, -1, -1):
        dz = g * (1 - hs[t + 1] ** 2)
        n = np.linalg.norm(dz.T @ hs[t])
        out[t] = np.log10(n) if n > 0 else -np.inf
        g = dz @ params.W_hh
    return out


@pytest.mark.parametrize("backend", gb.backends())
@pytest.mark.parametrize("sigma_w, steps, hidden, seed, verdict", [
    (3.0, 100, 16, 0, "exploding"), (4.0, 80, 16, 2, "exploding"), (0.5, 150, 8, 0, "vanishing")])
def test_reach_counts_the_steps_within_8_decades_of_the_largest_term_either_side(backend, sigma_w, steps, hidden, seed,
                                                                                verdict):
    """An exploding tanh cell's largest contribution to dL/dW_hh lies at the start (step 1; step 0's
    is exactly 0, h_{-1} = 0), and the reach counted only back from it: 'learning reaches over 1
    step' (4 at sigma_w = 4, largest at step 4) where ~80 steps lie within 8 decades. The window
    now runs both ways; a vanishing cell's (largest at the last step) is the same count as before.
    Counted here from a hand-written BPTT."""
    rnn = gb.Recurrent(cell="rnn", steps=steps, hidden=hidden, sigma_w=sigma_w)
    params, xs = gb.init_params(rnn, seed), gb.sequence_input(rnn, batch=4, seed=seed + 1)
    ref = _tanh_bptt_terms(params, np.asarray(xs, dtype=np.float64))
    d = gb.diagnose(gb.backprop(rnn, params, xs, backend=backend))
    assert d.verdict == verdict and ref[0] == d.grad_log10[0] == -np.inf
    # the exploding cells are chaotic: other summation orders drift up to ~1e-6 decades apart over
    # these steps, far less than any term's distance from the 8-decade edge (> 0.02 decades)
    np.testing.assert_allclose(d.grad_log10[1:], ref[1:], rtol=0, atol=1e-4)
    assert np.min(np.abs(ref[1:] - (ref.max() - 8))) > 1e-2
    within = np.flatnonzero(ref >= ref.max() - 8)
    assert np.all(np.diff(within) == 1)  # one run of steps: from step 1 up (exploding), or back from the last
    assert (within.min() == 1) == (verdict == "exploding") and (within.max() == rnn.steps - 1) == (verdict == "vanishing")
    assert d.reach == within.size > 10
    assert f"learning reaches over {within.size} steps" in d.explanation, d.explanation


def _dswish(z):
    s = 1 / (1 + np.exp(-z))
    return s * (1 + z * (1 - s))


_CELL_PHI = {  # phi and the saturated entries (|phi'| < 1 % of its largest value) of non-NaN z, by hand
    "elu": (lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0))), lambda z: (z <= 0) & (np.exp(z) < 0.01)),
    "swish": (lambda z: z / (1 + np.exp(-z)), lambda z: np.abs(_dswish(z)) < 0.01 * _dswish(np.linspace(0, 5, 200001)).max()),
}


@pytest.mark.parametrize("backend", gb.backends())
@pytest.mark.parametrize("activation", ["elu", "swish"])
def test_steps_of_nan_pre_activations_have_no_saturation(activation, backend):
    """A vanilla cell with W_hh = 1e80 I overflows at step 4 (+inf, which counts: phi' = 1, not
    saturated) and reads NaN from step 5 on (inf * 0 in h W_hh^T). The kernels' phi' < 1 %
    comparison read the NaN as 0.0 % saturated; it is NaN now and the table prints nan. Expected
    values from a plain NumPy forward (one product per entry: no summation order matters)."""
    rnn = gb.Recurrent(cell="rnn", steps=8, hidden=6, activation=activation, recurrent_init="identity", sigma_w=1e80)
    params, xs = gb.init_params(rnn, 0), gb.sequence_input(rnn, batch=3, seed=1)
    phi, saturated = _CELL_PHI[activation]
    h, want = np.zeros((3, 6)), []
    with np.errstate(all="ignore"):
        for x in np.asarray(xs, dtype=np.float64):
            z = x @ params.W_ih.T + params.b_ih + params.b_hh + h @ params.W_hh.T
            want.append(np.nan if np.isnan(z).any() else np.mean(saturated(z)))
            h = phi(z)
        res = gb.backprop(rnn, params, xs, backend=backend)
        text = str(gb.diagnose(res))
    want = np.array(want)
    assert np.isnan(want[5:]).all() and not np.isnan(want[:5]).any() and res.first_nonfinite_forward == 4
    np.testing.assert_array_equal(res.saturation, want)
    rows = {int(line.split()[0]): line for line in text.splitlines() if line.strip()[:1].isdigit()}
    assert all(rows[t].endswith(" nan") for t in (5, 6, 7)) and rows[4].endswith("%"), text
    assert np.nanmean(want) > 0.1 and (f"{100 * np.nanmean(want):.0f} % of the activation entries of the 5 steps "
                                       "whose pre-activations are numbers are saturated") in " ".join(text.split())


def test_a_clipped_backward_state_is_named_beside_the_verdict():
    """An identity cell at gain 3 explodes by 25 decades; clipping the state's norm at 0.5 every
    step holds the chain flat (every ||dL/dh_t|| <= 0.5) and read STABLE without saying why."""
    rnn = gb.Recurrent(cell="rnn", activation="identity", recurrent_init="normal", sigma_w=3.0, steps=40, hidden=6)
    p, xs = gb.init_params(rnn, 0), gb.sequence_input(rnn, 16, 0)
    assert diagnose(gb.backprop(rnn, p, xs)).verdict == "exploding"
    clipped = rnn.replace(clip="norm", clip_threshold=0.5)
    d = diagnose(gb.backprop(clipped, p, xs))
    assert np.all(d.signal_log10 <= math.log10(0.5) + 1e-12)
    assert d.verdict == "stable"
    assert ("the backward state is clipped (norm at 0.5) and the clip changed it at every step, so these are the norms "
            "of the clipped chain") in " ".join(d.explanation.split())
    assert "clipped" not in diagnose(gb.backprop(rnn.replace(clip="norm", clip_on="global"), p, xs)).explanation


def test_a_change_below_rounding_is_no_change_and_one_step_is_one_step():
    rnn = gb.Recurrent(cell="rnn", activation="identity", steps=20, hidden=4)  # orthogonal W_hh: norms kept
    d = diagnose(gb.backprop(rnn, gb.init_params(rnn, 0), gb.sequence_input(rnn, 4, 0)))
    assert abs(d.signal_log10[0] - d.signal_log10[-1]) < 1e-9
    assert "reaching step 0 is the one at step 19, unchanged to rounding" in d.explanation
    assert "e-1" not in str(d).split("\n")[1] and "slope +0 (to rounding)" in str(d)
    one = gb.Recurrent(cell="rnn", steps=1, hidden=4)
    text = str(diagnose(gb.backprop(one, gb.init_params(one, 0), gb.sequence_input(one, 4, 0))))
    assert text.startswith("rnn, 1 step, hidden 4") and "no slope to fit over one step" in text


def test_counts_are_singular_for_one():
    from gradbench.report import count

    assert [count(n, "seed") for n in (0, 1, 2)] == ["0 seeds", "1 seed", "2 seeds"]
    assert count(2, "branch", "branches") == "2 branches" and count(1, "branch", "branches") == "1 branch"
    assert [count(n, "epoch") for n in (1, 100)] == ["1 epoch", "100 epochs"]  # not "epoches"


def _clipped_bptt(params, xs, mode, c, lstm, identity=False, targets=None, carried=False):
    """A hand-written float64 BPTT of a tanh (or identity) cell or an LSTM (torch's gate order i, f, g, o) with
    the probe 0.5 ||h_{T-1}||^2 and h_{-1} = c_{-1} = 0, its backward state clipped at every step
    (for the LSTM dL/dh_t and the part of dL/dc_t carried back through c_{t+1} together, the top
    with nothing carried). Returns ||dL/dh_t|| after the clip, the whole ||dL/dc_t|| (LSTM) and
    whether the clip changed the state at t. With ``targets`` (T, B, O) the loss is instead the
    mse of a head at every step, mean((h_t W_out^T + b_out - y_t)^2), each step's own gradient
    added before the clip; ``carried``: only the last step's term of that loss."""
    T, B, N = len(xs), xs.shape[1], params.W_hh.shape[1]
    hs, cs, gates = [np.zeros((B, N))], [np.zeros((B, N))], []
    for x in xs:
        z = x @ params.W_ih.T + params.b_ih + hs[-1] @ params.W_hh.T + params.b_hh
        if not lstm:
            hs.append(z if identity else np.tanh(z))
            continue
        i, f, g, o = (1 / (1 + np.exp(-z[:, :N])), 1 / (1 + np.exp(-z[:, N:2 * N])), np.tanh(z[:, 2 * N:3 * N]),
                      1 / (1 + np.exp(-z[:, 3 * N:])))
        cs.append(f * cs[-1] + i * g)
        hs.append(o * np.tanh(cs[-1]))
        gates.append((i, f, g, o))
    own = np.zeros((T + 1, B, N))  # each step's own loss gradient, added before its clip
    if targets is not None:
        for t in range(T):
            own[t] = 2 * (hs[t + 1] @ params.W_out.T + params.b_out - targets[t]) @ params.W_out / targets.size
        if carried:
            own[:T - 1] = 0
    dh, dcc = (hs[-1].copy() if targets is None else np.zeros((B, N))), np.zeros((B, N))
    s, cell, acted = np.empty(T), np.empty(T), np.zeros(T, dtype=bool)
    for t in range(T - 1, -1, -1):
        dh = dh + own[t]
        v = np.concatenate([dh, dcc])
        big = np.linalg.norm(v) > c if mode == "norm" else np.abs(v).max() > c
        if big:
            v = v * (c / np.linalg.norm(v)) if mode == "norm" else np.clip(v, -c, c)
        dh, dcc, acted[t], s[t] = v[:B], v[B:], big, np.linalg.norm(v[:B])
        if not lstm:
            dh = (dh if identity else dh * (1 - hs[t + 1] ** 2)) @ params.W_hh
            continue
        i, f, g, o = gates[t]
        dc = dcc + dh * o * (1 - np.tanh(cs[t + 1]) ** 2)
        cell[t] = np.linalg.norm(dc)
        dz = np.concatenate([dc * g * i * (1 - i), dc * cs[t] * f * (1 - f), dc * i * (1 - g**2),
                             dh * np.tanh(cs[t + 1]) * o * (1 - o)], axis=1)
        dh, dcc = dz @ params.W_hh, dc * f
    return s, cell, acted


def _named_steps(text, T):
    """The steps the clip sentence says the clip changed: every one, none, the last, or the listed
    ones (a list of at most five, or "all but" one: then the count and the steps named)."""
    text = " ".join(text.split())
    if "clipped (" not in text:
        return None
    if "and the clip changed it at every step, so these are the norms of the clipped chain" in text:
        return list(range(T))
    if "but the clip changed no state" in text:
        return []
    if "but before the last step the clip changed nothing" in text:
        return [T - 1]
    m = re.search(r"the clip changed it at (\d+) of the (\d+) steps \((all but )?([\d, .and]+?)(\(\d+ in all\))?\)",
                  text)
    assert m and int(m.group(2)) == T, text
    named = [int(v) for v in re.split(r",| and ", m.group(4).replace("...", "")) if v.strip()]
    if m.group(3):  # "all but ...": the ones not named, when the list is whole
        return [int(m.group(1))] + ([t for t in range(T) if t not in named] if not m.group(5) else [])
    return [int(m.group(1))] + named


@pytest.mark.parametrize("cell, mode, c, sigma_w", [
    ("rnn", "norm", 1e-30, 0.5), ("identity", "norm", 0.5, 3.0), ("rnn", "norm", 1e6, 0.5), ("rnn", "norm", 1.0, 0.5), ("rnn", "value", 0.02, 0.7),
    ("rnn", "norm", 1.0, 3.0), ("lstm", "value", 0.01, None), ("lstm", "norm", 0.05, None), ("lstm", "norm", 1e3, None)])
def test_the_clip_sentence_names_the_steps_where_the_clip_acted(cell, mode, c, sigma_w):
    """'clipped at every step, so these are the norms of the clipped chain' was said of any clipped
    state, also where it never reached the threshold (a vanishing cell's 10^-10 under a clip at 1);
    then 'it can act at' where the norm reached the threshold, which a value clip or the LSTM's
    joint state need not mean. The sentence reads the kernels' record
    (``RecurrentResult.signal_clip_acted``), checked here against a hand-written clipped BPTT
    (for the LSTM the state is (dL/dh_t, the carried part of dL/dc_t), clipped together): the
    record is that BPTT's, and the sentence names exactly the steps where the clip changed the state."""
    identity = cell == "identity"  # a vanilla cell without tanh: gain 3 explodes, the clip acts at every step
    rnn = gb.Recurrent(cell="rnn" if identity else cell, activation="identity" if identity else None, steps=30,
                       hidden=6, sigma_w=sigma_w, clip=mode, clip_threshold=c)
    p, xs = gb.init_params(rnn, 1), gb.sequence_input(rnn, 5, 2)
    s, _, acted = _clipped_bptt(p, np.asarray(xs, dtype=np.float64), mode, c, cell == "lstm", identity)
    res = gb.backprop(rnn, p, xs, backend="numpy")
    np.testing.assert_array_equal(res.signal_clip_acted[1:], acted)
    d = diagnose(res)
    np.testing.assert_allclose(d.signal_log10, np.log10(s), rtol=0, atol=1e-9)
    named, on = _named_steps(d.explanation, rnn.steps), np.flatnonzero(acted)
    if on.size in (0, rnn.steps) or on.tolist() == [rnn.steps - 1]:
        assert named == on.tolist(), d.explanation
    else:
        assert named[0] == on.size and set(named[1:]) <= set(on.tolist()), d.explanation
        if min(on.size, rnn.steps - on.size) <= 5:  # the shorter list is whole
            assert named[1:] == on.tolist(), d.explanation
        first = f"and at none before step {on.min()}, so before it the rates are the loss derivative's chain"
        assert (first in " ".join(d.explanation.split())) == (on.min() > 0), d.explanation
    # the largest ||dL/dh_t|| the clip left alone, as the sentence names it: the hand BPTT's (the
    # LSTM's sentence named its pair norm sqrt(||dL/dh||^2 + ||dL/dc||^2) under that label, 10^-0.08
    # above a 0.8 clip that rightly changed nothing, its ||dL/dh_29|| being 10^-0.12)
    m = re.search(r"\(\|\|dL/dh_t\|\| at most 10\^(-?[\d.]+), at step (\d+)\)", " ".join(d.explanation.split()))
    free = np.flatnonzero(~acted)
    assert (m is not None) == (on.size == 0 or on.tolist() == [rnn.steps - 1]), d.explanation
    if m:
        k = int(free[np.argmax(s[free])])
        want = float(np.log10(s[k]))  # printed to 4 significant digits
        half_digit = 0.51 * 10.0 ** (np.floor(np.log10(abs(want))) - 3)
        assert int(m.group(2)) == k and abs(float(m.group(1)) - want) <= half_digit, (m.group(0), want)


def test_an_lstm_with_a_loss_at_every_step_keeps_the_carried_passs_cell_norms():
    """The clip sentence of an every-step loss reads the carried pass (the last step's loss alone),
    which for the LSTM needs that pass's ||dL/dc_t||: with no clip, they are those of a net with
    the same head on the last step only, times one factor (the every-step mean's 1/T)."""
    kw = dict(cell="lstm", steps=12, hidden=4, loss="mse", output_dim=2)
    every, last = gb.Recurrent(loss_on="every", **kw), gb.Recurrent(loss_on="last", **kw)
    p, xs = gb.init_params(every, 0), gb.sequence_input(every, 3, 1)
    y = np.random.default_rng(2).standard_normal((12, 3, 2))
    a = gb.backprop(every, p, xs, y, backend="numpy").extras["carried_cell_signal_norm"].log10()
    b = gb.backprop(last, p, xs, y[-1], backend="numpy").cell_signal_norm.log10()
    np.testing.assert_allclose(np.asarray(a) - np.asarray(b), math.log10(1 / 12), rtol=0, atol=1e-12)
    gru = gb.Recurrent(loss_on="every", **{**kw, "cell": "gru"})
    assert "carried_cell_signal_norm" not in gb.backprop(gru, gb.init_params(gru, 0), xs, y).extras


@pytest.mark.parametrize("sigma_w, c", [(0.8, 0.01), (0.8, 0.03), (1.5, 0.1), (3.0, 0.1)])
def test_the_clip_sentence_of_a_loss_at_every_step_reads_the_carried_pass(sigma_w, c):
    """With a loss at every step the verdict reads the carried pass (the last step's loss alone):
    the clip sentence is that pass's, and says separately where the clip changed the every-step
    loss's own state (which training's gradients come from), each from its pass's record. Checked
    against a hand-written BPTT of both passes."""
    rnn = gb.Recurrent(cell="rnn", steps=30, hidden=6, sigma_w=sigma_w, loss="mse", loss_on="every", output_dim=2,
                       clip="norm", clip_threshold=c)
    p, xs = gb.init_params(rnn, 1), gb.sequence_input(rnn, 5, 2)
    y = np.random.default_rng(3).standard_normal((30, 5, 2))
    x64 = np.asarray(xs, dtype=np.float64)
    s_every, _, acted_every = _clipped_bptt(p, x64, "norm", c, False, targets=y)
    s_last, _, acted_last = _clipped_bptt(p, x64, "norm", c, False, targets=y, carried=True)
    res = gb.backprop(rnn, p, xs, y, backend="numpy")
    np.testing.assert_allclose(np.asarray(res.signal_norm.log10()), np.log10(s_every), rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(res.carried_signal_norm.log10()), np.log10(s_last), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(res.signal_clip_acted[1:], acted_every)
    np.testing.assert_array_equal(res.carried_signal_clip_acted[1:], acted_last)
    text = " ".join(diagnose(res).explanation.split())
    every, last = np.flatnonzero(acted_every), np.flatnonzero(acted_last)
    assert "the carried backward state is clipped (norm at" in text
    assert _named_steps(text.replace("the carried backward state", "the backward state"), 30)[
        :1 if last.size in (0, 1, 30) else 2] == (last.tolist() if last.size in (0, 1, 30) else [last.size, last[0]])
    said = {0: "with every step's loss the clip changed the state at none of the 30 steps",
            30: "with every step's loss the clip changed the state at every step"}.get(
        every.size, f"with every step's loss the clip changed the state at {every.size} of the 30 steps (")
    assert said in text, text
    assert every.size != last.size  # the two passes differ here: one sentence could not say both


def test_an_lstm_whose_bound_reaches_a_value_clip_everywhere_is_not_said_to_be_clipped():
    """A wide LSTM under a value clip at 1: its joint-state bound reaches 1 at every step but no
    entry exceeds it (the run's bits are those without the clip), and it read 'clipped (value at
    1) at every step, so these are the norms of the clipped chain' (the review of the change), then
    'the clip may act at each'. The record says the clip changed nothing, and so does the sentence."""
    rnn = gb.Recurrent(cell="lstm", steps=10, hidden=256, clip="value", clip_threshold=1.0)
    p, xs = gb.init_params(rnn, 0), gb.sequence_input(rnn, 64, 1)
    clipped, free = gb.backprop(rnn, p, xs), gb.backprop(rnn.replace(clip=None), p, xs)
    assert np.array_equal(clipped.signal_norm.mantissa, free.signal_norm.mantissa)
    text = " ".join(diagnose(clipped).explanation.split())
    assert "so these are the norms of the clipped chain" not in text
    assert not clipped.signal_clip_acted.any()
    assert ("the backward state (dL/dh_t with the part of dL/dc_t carried back, clipped together) is clipped (value "
            "at 1), but the clip changed no state (||dL/dh_t|| at most 10^") in text, text
    assert "these are the norms of the loss's derivative" in text, text


def test_an_lstm_whose_cell_carries_the_gradient_is_not_vanishing():
    """A forget gate near 1 (bias 5) under a small W_hh (gain 0.3), 300 steps: ||dL/dh_t|| falls
    two decades in the first step back (h_{T-2} reaches the loss only through W_hh) and read
    VANISHING, while dL/dc_t carries the gradient to step 0 unchanged. Independent check by central
    differences of the loss: the input at step 0 moves it about as much as the input at step 299
    (a random direction of each, the same norm)."""
    rnn = gb.Recurrent(cell="lstm", steps=300, hidden=32, sigma_w=0.3, forget_bias=5.0)
    p = gb.init_params(rnn, 0)
    xs = gb.GeneratedSequence(rnn, 16, 0).materialize()
    d = diagnose(gb.backprop(rnn, p, xs, backend="numpy"))
    rng = np.random.default_rng(0)

    def slope(t, eps=1e-6):
        v = np.zeros_like(xs)
        v[t] = rng.standard_normal(xs[t].shape)
        v /= np.linalg.norm(v)
        up, down = (gb.backprop(rnn, p, xs + s * eps * v, backend="numpy").loss for s in (1, -1))
        return abs(up - down) / (2 * eps)

    assert abs(math.log10(slope(0) / slope(rnn.steps - 1))) < 1  # the loss feels step 0's input
    assert d.verdict == "stable", d.explanation
    h = np.asarray(d.signal_log10)
    assert np.min(h) - h[-1] < -2  # what read VANISHING: dL/dh_t alone
