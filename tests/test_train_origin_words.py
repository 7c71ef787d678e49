"""A training summary of weights the init scheme did not draw names where they came from, not
the scheme (a reviewer's from_torch model read "sigmoid, xavier_normal")."""

from __future__ import annotations

import numpy as np

import gradbench as gb


def test_the_summary_names_given_weights_origin_not_the_init_scheme():
    stack = gb.Stack(depth=3, width=4, activation="sigmoid", init="xavier_normal", input_dim=2, loss="bce")
    X = np.random.default_rng(0).standard_normal((20, 2))
    y = (X[:, 0] > 0).astype(np.float64)
    drawn = gb.init_params(stack, 0)
    mine = gb.Params(**{k: v.copy() for k, v in drawn.items()}, origin="the weights of my model")
    first = gb.train(stack, X, y, params=mine, epochs=1).summary().splitlines()[0]
    assert "the weights of my model" in first and "xavier_normal" not in first, first
    # weights the scheme drew, given as drawn: the scheme is what drew them
    first = gb.train(stack, X, y, params=drawn, epochs=1).summary().splitlines()[0]
    assert "xavier_normal" in first and "the weights of" not in first, first
