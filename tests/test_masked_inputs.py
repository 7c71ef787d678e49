"""A numpy.ma.MaskedArray is refused by name: its mask would be dropped and the masked entries'
hidden values computed with (a reviewer's masked x gave the loss of x.data, 0.97631, and a
gradient for the masked entry, with no word)."""

from __future__ import annotations

import numpy as np
import pytest

import gradbench as gb


def _masked(a):
    m = np.ma.masked_array(a, mask=np.zeros(a.shape, bool))
    m[(0,) * a.ndim] = np.ma.masked
    return m


@pytest.mark.parametrize("backend", gb.backends())
def test_masked_inputs_and_weights_are_refused_by_name(backend):
    stack = gb.Stack(depth=3, width=4)
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 3, 1)
    with pytest.raises(TypeError, match=r"^x is a numpy\.ma\.MaskedArray: gradbench reads no masks .*x\.filled\(value\)"):
        gb.backprop(stack, params, _masked(x), backend=backend)
    masked_w = gb.Params(W=_masked(params.W), b=params.b, gamma=params.gamma, beta=params.beta, slope=params.slope)
    with pytest.raises(TypeError, match=r"^params\.W is a numpy\.ma\.MaskedArray"):
        gb.backprop(stack, masked_w, x, backend=backend)
    net = gb.Recurrent(cell="rnn", steps=3, hidden=4, input_dim=2)
    xs = gb.sequence_input(net, 2, 1)
    with pytest.raises(TypeError, match=r"^xs is a numpy\.ma\.MaskedArray"):
        gb.backprop(net, gb.init_params(net, 0), _masked(xs), backend=backend)


def test_masked_training_data_and_labels_are_refused_by_name():
    stack = gb.Stack(depth=3, width=4, input_dim=2, loss="bce")
    X = np.random.default_rng(0).standard_normal((20, 2))
    y = (X[:, 0] > 0).astype(np.float64)
    with pytest.raises(TypeError, match=r"^X is a numpy\.ma\.MaskedArray"):
        gb.train(stack, _masked(X), y, epochs=1)
    with pytest.raises(TypeError, match=r"^y is a numpy\.ma\.MaskedArray"):
        gb.train(stack, X, _masked(y), epochs=1)
