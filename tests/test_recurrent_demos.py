"""The recurrent demonstrations, measured and asserted with the README's ranges
(gradbench.recurrent.train).

Recall the first of 100 symbols (512 training sequences, Adam lr 0.002, 32 epochs, global
gradient-norm clipping 1). Measured on the C backend, seeds 0-5 (2026-12-02): the vanilla tanh
RNN stays at chance (held-out loss 0.71-0.76, accuracy 0.45-0.54; its gradient at step 0 is
10^-6.4 .. 10^-11.2 of the last step's at the start), the LSTM (forget bias 5) and the GRU
(update-gate bias 5) solve it (LSTM 0.0022-0.016, its backward state's norm ||(dL/dh_0, dL/dc_0)||
10^+1.04 .. 10^+1.24 of the last step's (2026-12-07; ||dL/dh_0|| alone 10^+0.62 .. 10^+0.81);
GRU 0.00044-0.00093, 10^-0.24 .. 10^-0.31; accuracy 1.00 as the summary prints it: seed 2's
LSTM misses one of 256 held-out sequences, 0.996). Training is sensitive to the last
bits of the arithmetic (seed 0's LSTM ends at 0.016 on C, 0.0055 on Numba, 0.0033 on NumPy;
another instruction-set instance of the kernels trains another trajectory), hence the README's
rounded ranges, asserted here.
A linear RNN with recurrent gain 1.5 over 20 steps turns non-finite in epoch 1 under plain SGD
lr 0.1; clipped to global norm 1 it trains (170-1241 down to 0.22-1.5, seed 0: 1241 -> 0.61).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradbench.recurrent import backends as rbackends
from gradbench.recurrent.train import RECURRENT_DEMOS, first_symbol, run_recurrent_demo, train_recurrent

BACKEND = "c" if "c" in rbackends.backends() else "numba"


def _check_memory(name, seed):
    r = run_recurrent_demo(name, backend=BACKEND, seed=seed)
    assert r.diverged_epoch is None
    gap = r.signal_start[0] - r.signal_start[-1]  # log10 of the state's norm at step 0 / at T-1, at the start
    if name == "memory-rnn":  # README: 0.70-0.78, accuracy 0.44-0.56, 10^-6 to 10^-12
        assert 0.70 <= r.final_loss <= 0.78 and 0.44 <= r.final_accuracy <= 0.56, r.summary()
        assert np.nanmin(r.eval_loss) > 0.65
        assert -12 <= gap <= -6, gap  # why: the gradient from step 0 is 10^-6 and less of the last step's
    elif name == "memory-lstm":  # below 0.02, 1.00, 10^+1.0 to 10^+1.3: carried through 100 steps
        assert r.final_loss < 0.02 and round(r.final_accuracy, 2) == 1.0 and 1.0 <= gap <= 1.3, (r.summary(), gap)
    else:  # memory-gru: below 0.001, 1.00, 10^-0.2 to 10^-0.4
        assert r.final_loss < 0.001 and round(r.final_accuracy, 2) == 1.0 and -0.4 <= gap <= -0.2, (r.summary(), gap)
    # a held-out loss that wobbles at chance or falls is not said to rise (train.rising_words)
    assert "held-out loss ended" not in r.summary() and "held-out loss rose" not in r.summary()
    return r


@pytest.mark.parametrize("name", ["memory-rnn", "memory-lstm", "memory-gru"])
def test_memory_task_vanilla_at_chance_gated_cells_solve_it(name):
    _check_memory(name, 0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("name", ["memory-rnn", "memory-lstm", "memory-gru"])
def test_memory_task_other_seeds(name, seed):
    _check_memory(name, seed)


def test_exploding_rnn_turns_nonfinite_in_the_first_epoch_and_clipping_trains():
    r = run_recurrent_demo("exploding-rnn", backend=BACKEND)
    assert r.diverged_epoch == 0 and not math.isfinite(r.final_loss), r.summary()
    assert "non-finite at step" in r.divergence
    c = run_recurrent_demo("exploding-rnn-clipped", backend=BACKEND)
    assert c.diverged_epoch is None and np.all(np.isfinite(c.eval_loss)), c.summary()
    assert round(r.eval_loss[0]) == round(c.eval_loss[0]) == 1241, (r.eval_loss[0], c.eval_loss[0])  # README
    assert 0.2 <= c.final_loss <= 1.6, c.summary()  # README: 1241 down to 0.2-1.6
    assert c.signal_start[0] - c.signal_start[-1] > 3  # exploding: step 0 gets 10^3 more than the last


def test_demos_are_registered_and_described():
    assert set(RECURRENT_DEMOS) >= {"memory-rnn", "memory-lstm", "memory-gru", "exploding-rnn", "exploding-rnn-clipped"}
    r = run_recurrent_demo("memory-gru", backend=BACKEND, epochs=1, steps=10)
    text = r.summary()
    assert "memory-gru" in text and "update-gate bias 5" in text and "10 steps" in text


def test_task_and_training_validation():
    X, y = first_symbol(5, 7, seed=0)
    assert X.shape == (5, 7, 2) and np.all(X[0, :, 1] == 1) and np.all(X[1:, :, 1] == 0)
    assert np.array_equal(y, (X[0, :, 0] > 0).astype(int))
    import gradbench as gb

    rnn = gb.Recurrent(cell="rnn", steps=5, hidden=3, input_dim=2)
    with pytest.raises(ValueError, match="needs a head"):
        train_recurrent(rnn, X, y, X, y)
    with pytest.raises(ValueError, match="gate_bias is the GRU"):
        train_recurrent(rnn.replace(loss="bce"), X, y, X, y, gate_bias=1.0)


def test_a_held_out_loss_that_ends_above_its_start_is_said():
    """memory-rnn at lr 30 (Adam): the held-out loss went 0.74 -> 14.9 without a word."""
    r = run_recurrent_demo("memory-rnn", backend=BACKEND, lr=30.0, epochs=8)
    assert r.diverged_epoch is None and r.final_loss > 1.25 * r.eval_loss[0]
    assert (f"the held-out loss ended {r.final_loss / r.eval_loss[0]:.3g} times where it started: the steps "
            "overshoot, lr=30 is too large for this net (try a smaller one) or the net overfits") in r.summary()


def test_recurrent_training_checks_its_labels_as_gb_train():
    """train_recurrent cast y to the net's dtype unchecked (a wrong length failed deep inside)."""
    import gradbench as gb

    rnn = gb.Recurrent(cell="rnn", steps=3, hidden=4, input_dim=2, loss="bce", dtype="float32")
    xs = np.zeros((3, 8, 2), dtype=np.float32)
    good = np.zeros(8, dtype=np.int64)
    with pytest.raises(TypeError, match="y is float64 but the net computes in float32"):
        train_recurrent(rnn, xs, np.zeros(8), xs, good, epochs=1)
    with pytest.raises(ValueError, match=r"y_eval must hold one label per row of X, shape \(8,\), got \(7,\)"):
        train_recurrent(rnn, xs, good, xs, good[:7], epochs=1)


def test_the_gru_update_bias_is_a_field_of_the_net():
    """The teacher's review: gb.Recurrent had no GRU update-gate bias (training's gate_bias only),
    so `compare --cells` could not show the training demos' GRU. update_bias adds to the z block
    of b_ih at init, exactly; train_recurrent's gate_bias is the same bias on the same draw."""
    import gradbench as gb
    from gradbench.recurrent.params import init_params

    net = gb.Recurrent(cell="gru", steps=6, hidden=4, input_dim=2, loss="bce")
    plain, biased = init_params(net, 3), init_params(net.replace(update_bias=5.0), 3)
    expected = np.asarray(plain.b_ih).copy()
    expected[4:8] += 5.0  # gates r, z, n: z is the second block
    assert np.array_equal(biased.b_ih, expected)
    for k in ("W_ih", "W_hh", "b_hh", "W_out", "b_out"):
        assert np.array_equal(getattr(biased, k), getattr(plain, k)), k
    for cell, hint in (("lstm", "forget_bias"), ("rnn", "has none")):
        with pytest.raises(ValueError, match=f"update_bias is only valid for cell='gru'.*{hint}"):
            gb.Recurrent(cell=cell, steps=3, hidden=2, update_bias=1.0)
    with pytest.raises(ValueError, match="update_bias=1e40 is beyond what float32 holds"):
        gb.Recurrent(cell="gru", steps=3, hidden=2, update_bias=1e40, dtype="float32")

    X, y = first_symbol(6, 40, seed=0)
    a = train_recurrent(net.replace(update_bias=5.0), X, y, X, y, epochs=2, batch_size=8, backend=BACKEND)
    b = train_recurrent(net, X, y, X, y, epochs=2, batch_size=8, gate_bias=5.0, backend=BACKEND)
    assert np.array_equal(a.loss, b.loss) and b.rnn.update_bias == 5.0
    assert "update-gate bias 5" in a.summary() and "update-gate bias 5" in b.summary()
    with pytest.raises(ValueError, match="are one bias"):
        train_recurrent(net.replace(update_bias=5.0), X, y, X, y, gate_bias=5.0)


def test_the_update_bias_on_the_command_line(capsys):
    from gradbench import cli

    assert cli.main(["run", "--cell", "gru", "--steps", "30", "--hidden", "8", "--update-bias", "5",
                     "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "update-gate bias 5" in out.splitlines()[0], out
    assert cli.main(["run", "--cell", "lstm", "--steps", "30", "--hidden", "8", "--update-bias", "5"]) == 2
    err = capsys.readouterr().err
    assert "--update-bias is only valid for --cell='gru'" in err and "for the LSTM, --forget-bias is its counterpart" in err
    assert cli.main(["compare", "--cells", "rnn,lstm", "--steps", "30", "--hidden", "8", "--update-bias", "5"]) == 2
    assert "--update-bias applies to the gru cell only" in capsys.readouterr().err
    assert cli.main(["compare", "--cells", "lstm,gru", "--steps", "30", "--hidden", "8", "--update-bias", "5",
                     "--backend", "numpy"]) == 0
    assert "--update-bias 5: the gru line only" in capsys.readouterr().out


def test_the_demos_gate_bias_command_shows_the_gated_cells_carrying_the_gradient(capsys):
    """`gradbench demo` says its cells run at default gate biases and names the command with the
    training demos' biases of 5: there the LSTM and the GRU carry the gradient over all the steps
    (reach T - 1, a rate at least 20 times smaller; the GRU still loses log10 sigma(5) = -0.003
    decades a step) where at the defaults all three cells vanish within ~100 steps."""
    from gradbench import cli
    from gradbench.cli.demo import CELL_STEPS

    def table(argv):
        assert cli.main(argv + ["--backend", "numpy"]) == 0
        rows = [line.split() for line in capsys.readouterr().out.splitlines()]
        return {r[0]: r for r in rows if r and r[0] in ("rnn", "lstm", "gru")}

    base = ["compare", "--steps", str(CELL_STEPS)]
    biased = table(base + ["--cells", "lstm,gru", "--forget-bias", "5", "--update-bias", "5"])
    plain = table(base + ["--cells", "rnn,lstm,gru"])
    assert all(r[1] == "vanishing" and int(r[-1]) < 100 for r in plain.values()), plain
    for cell, r in biased.items():
        assert r[-1] == str(CELL_STEPS - 1) and 20 * abs(float(r[2])) < abs(float(plain[cell][2])), (r, plain)


def test_lstm_training_signal_is_the_backward_state_pair_the_verdict_reads():
    """signal_start read ||dL/dh_t|| for the LSTM where run, compare and the verdict read the pair
    sqrt(||dL/dh_t||^2 + ||dL/dc_t||^2): checked against the NumPy reference's two norms before training."""
    from gradbench.recurrent.engine import backprop
    from gradbench.recurrent.params import init_params
    from gradbench.recurrent.spec import Recurrent

    rnn = Recurrent(cell="lstm", steps=12, hidden=6, input_dim=2, loss="bce", forget_bias=1.0)
    X, y = first_symbol(12, 16, 0)
    Xe, ye = first_symbol(12, 8, 1)
    r = train_recurrent(rnn, X, y, Xe, ye, epochs=1, batch_size=8, seed=3, backend=BACKEND)
    ref = backprop(rnn, init_params(rnn, 3), Xe, ye.astype(np.float64)[:, None], backend="numpy")
    h = ref.signal_norm.to_float(np.float64)
    c = ref.cell_signal_norm.to_float(np.float64)
    want = np.log10(np.sqrt(h * h + c * c))
    np.testing.assert_allclose(r.signal_start, want, rtol=0, atol=1e-12)
    assert np.max(np.abs(want - np.log10(h))) > 1e-3  # the pair is not dL/dh_t alone here


def test_readme_gate_bias_and_init_lines():
    """README: without the update-gate bias the GRU stays at chance; the vanilla RNN with an
    orthogonal W_hh solves the task at seed 1 (at chance at seed 0)."""
    gru = run_recurrent_demo("memory-gru", backend=BACKEND, update_bias=None)
    assert gru.rnn.update_bias is None and 0.4 <= gru.final_accuracy <= 0.6 and gru.final_loss > 0.65, gru.summary()
    rnn = run_recurrent_demo("memory-rnn", backend=BACKEND, recurrent_init="orthogonal", seed=1)
    assert rnn.rnn.recurrent_init == "orthogonal" and round(rnn.final_accuracy, 2) == 1.0, rnn.summary()


@pytest.mark.slow
def test_readme_gate_bias_and_init_counts_over_seeds():
    """README: over seeds 0-5, GRU without update-gate bias 0 of 6, LSTM forget bias 1 3 of 6,
    orthogonal vanilla RNN 2 of 6 (measured on the C backend; a seed near the edge may move on
    another instruction set, hence the bounds)."""
    def solved(name, **kw):
        return sum(run_recurrent_demo(name, backend=BACKEND, seed=s, **kw).final_accuracy > 0.95 for s in range(6))

    assert solved("memory-gru", update_bias=None) == 0
    assert 2 <= solved("memory-lstm", forget_bias=1.0) <= 4
    assert 1 <= solved("memory-rnn", recurrent_init="orthogonal") <= 3


def test_demo_overrides_take_any_net_field_and_name_unknown_ones():
    r = run_recurrent_demo("memory-rnn", backend=BACKEND, epochs=1, steps=5, recurrent_init="orthogonal", sigma_w=0.5)
    assert (r.rnn.recurrent_init, r.rnn.sigma_w, r.rnn.steps) == ("orthogonal", 0.5, 5)
    with pytest.raises(TypeError, match="bogus"):
        run_recurrent_demo("memory-rnn", backend=BACKEND, epochs=1, steps=5, bogus=1)
