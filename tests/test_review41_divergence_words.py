"""Review 41 #1: what the summary says of the weights in an epoch that diverged, against a
PyTorch float64 run of the same steps (same starting weights, same mini-batch order)."""

import math
import re

import numpy as np
import pytest

import gradbench as gb
from gradbench.train import DEMOS

torch = pytest.importorskip("torch")


def torch_run(stack, params, X, y, *, lr, momentum=0.0, batch_size=20, seed=0, epochs=1):
    """Plain mini-batch SGD (torch.optim.SGD) on input layer, ReLU layers and a bce head, in
    float64: returns (per epoch: the mini-batch where the loss turned non-finite or None, the
    steps taken in it), and the weights after those steps as NumPy arrays (W_in, W, W_out)."""
    t = lambda a: torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)  # noqa: E731
    W_in, b_in = t(params.W_in), t(params.b_in)
    W = [t(params.W[l]) for l in range(stack.depth)]
    b = [t(params.b[l]) for l in range(stack.depth)]
    W_out, b_out = t(params.W_out), t(params.b_out)
    opt = torch.optim.SGD([W_in, b_in, *W, *b, W_out, b_out], lr=lr, momentum=momentum)
    Xt, yt = torch.tensor(X), torch.tensor(y, dtype=torch.float64)
    rng = np.random.default_rng([seed, 1])  # gradbench.train's shuffling (its docstring)
    stops = []
    for _ in range(epochs):
        order = rng.permutation(len(X))
        stop, steps = None, 0
        for j, start in enumerate(range(0, len(X), batch_size)):
            idx = torch.tensor(order[start:start + batch_size])
            h = Xt[idx] @ W_in.T + b_in
            for l in range(stack.depth):
                h = torch.relu(h @ W[l].T + b[l])
            z = (h @ W_out.T + b_out)[:, 0]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z, yt[idx])
            if not math.isfinite(loss.item()):
                stop = j + 1
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
        stops.append((stop, steps))
        if stop is not None:
            break
    arr = lambda a: a.detach().numpy().copy()  # noqa: E731
    return stops, (arr(W_in), np.stack([arr(w) for w in W]), arr(W_out))


def ratio(before, after):
    return 100 * np.linalg.norm(after - before) / np.linalg.norm(before)


def test_a_first_epoch_cut_short_says_where_and_how_far_the_weights_moved_not_norm_0():
    """`train --demo exploding` said "change by no ratio (epoch 1: weights of norm 0 that stay 0)"
    of W_in with ||W_in|| = 13.4 (NumPy): the NaN of the epoch that diverged read as 0 / 0."""
    demo = DEMOS["exploding"]
    stack, (X, y) = demo.make_stack(), demo.data()
    p0 = gb.init_params(stack, 0)
    assert np.linalg.norm(p0.W_in) == pytest.approx(13.43, abs=0.01)  # the weights were never of norm 0
    assert np.linalg.norm(p0.W[-1]) == pytest.approx(11.31, abs=0.01)
    stops, (W_in, W, _) = torch_run(stack, p0, X, y, lr=0.1)
    (k, steps), = stops
    assert (k, steps) == (4, 3)  # torch: the loss of mini-batch 4 is not finite, after 3 finite steps
    ref_in, ref_top = ratio(p0.W_in, W_in), ratio(p0.W[-1], W[-1])
    assert np.isfinite(ref_in) and ref_in > 1e100

    r = gb.run_demo("exploding", backend="numpy")
    text = r.summary()
    assert "norm 0" not in text, text
    rec = r.extras["diverged_steps"]
    assert (rec["epoch"], rec["mini_batch"], rec["batches"], rec["steps"], rec["cause"]) == (0, 4, 10, 3, "loss")
    assert rec["update_ratio_input"] == pytest.approx(ref_in, rel=1e-9)
    assert rec["update_ratio"][-1] == pytest.approx(ref_top, rel=1e-9)
    line = next(s for s in text.splitlines() if "W_in" in s)
    m = re.search(r"change by (\S+) % in the 3 steps of epoch 1 before it stopped in mini-batch 4 of 10, where the "
                  r"loss turned non-finite, layer 9's \(below the head\) by (\S+) % in epoch 1's 3 steps", line)
    assert m, line
    assert float(m.group(1)) == pytest.approx(ref_in, rel=6e-3)
    assert float(m.group(2)) == pytest.approx(ref_top, rel=6e-3)
    assert "(no epoch finished)" in text  # true here: epoch 1 stopped in its 4th mini-batch
    np.testing.assert_array_equal(r.update_ratio_input, np.nan)  # the history keeps per-epoch ratios only
    from gradbench.cli.train import train_to_dict  # train --out writes the record

    assert train_to_dict(r)["diverged_steps"]["update_ratio_input"] == pytest.approx(ref_in, rel=1e-9)


def test_an_epoch_whose_steps_all_finished_says_how_far_they_moved_the_weights():
    """momentum lr=1.5 on relu-he: all 10 mini-batches of epoch 1 finish (torch: finite weights,
    W_in moved 1.25e83 %), only the loss on the whole data set is not finite. The summary said
    "no ratio (epoch 1: weights of norm 0 that stay 0)" and "(no epoch finished)"."""
    demo = DEMOS["relu-he"]
    stack, (X, y) = demo.make_stack(), demo.data()
    p0 = gb.init_params(stack, 0)
    stops, (W_in, W, W_out) = torch_run(stack, p0, X, y, lr=1.5, momentum=0.9)
    assert stops == [(None, 10)]
    assert np.all(np.isfinite(W_in)) and np.all(np.isfinite(W))
    ref_in, ref_top = ratio(p0.W_in, W_in), ratio(p0.W[-1], W[-1])
    assert ref_in == pytest.approx(1.25e83, rel=0.01)

    r = gb.train(stack, X, y, optimizer="momentum", lr=1.5, epochs=3, batch_size=20, backend="numpy")
    assert r.diverged_epoch == 0
    text = r.summary()
    assert "norm 0" not in text and "no epoch finished" not in text, text
    rec = r.extras["diverged_steps"]
    assert (rec["mini_batch"], rec["steps"], rec["cause"]) == (None, 10, "evaluation")
    # chaotic growth over 10 steps: the two float64 runs agree to the last digits printed
    assert rec["update_ratio_input"] == pytest.approx(ref_in, rel=1e-6)
    assert rec["update_ratio"][-1] == pytest.approx(ref_top, rel=1e-6)
    assert ("accuracy 0.35 -> - (epoch 1's steps all finished; the loss on the whole data set after it is not "
            "finite)") in text
    m = re.search(r"W_in\) change by (\S+) % in epoch 1 \(all its 10 steps; then the loss on the whole data set was "
                  r"not finite\), layer 9's \(below the head\) by (\S+) % in epoch 1", text)
    assert m, text
    assert float(m.group(1)) == pytest.approx(ref_in, rel=6e-3)
    assert float(m.group(2)) == pytest.approx(ref_top, rel=6e-3)


def test_weights_of_norm_0_are_still_said_so_in_finished_epochs():
    """The words for weights that really are of norm 0 stay: W_in, b_in and W_0 all 0, so that
    dL/dW_in = W_0^T delta x^T and dL/dW_0 = delta h_in^T are 0 (NumPy's norm of W_in is 0 after
    training as before)."""
    stack = gb.Stack(depth=2, width=4, activation="tanh", init="xavier_normal", input_dim=2, loss="bce")
    X, y = gb.datasets.moons(20, seed=0)
    p = gb.init_params(stack, 0)
    p.W_in[...] = 0
    p.b_in[...] = 0
    p.W[0][...] = 0
    r = gb.train(stack, X, y, epochs=2, batch_size=20, params=p, backend="numpy")
    assert np.linalg.norm(r.params.W_in) == 0  # no gradient reaches a zero input layer's weights
    assert r.diverged_epoch is None
    assert "W_in) change by no ratio (every epoch: weights of norm 0 that stay 0)" in r.summary()
