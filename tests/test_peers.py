"""The benchmark peers (PyTorch eager, JAX jit + lax.scan) compute what gradbench computes.

Each installed peer runs the same stacks on the same weights and is compared with the NumPy
reference: the loss 0.5 ||h_L||^2 and ||dL/dW_l|| for every layer. The checker itself is tested
to fail on a peer that does less. Tests of a peer that is not installed are skipped with the
reason (``pip install '.[peers]'``).
"""

import math

import numpy as np
import pytest

import gradbench as gb
from gradbench import peers

# Tolerances of these small stacks (tighter than the benchmarks' depth-amplified ones).
RTOL = {"float64": 1e-10, "float32": 1e-4}

EOC = dict(init="normal", sigma_w=math.sqrt(1.76), sigma_b=math.sqrt(0.05))
STACKS = {
    "tanh": dict(activation="tanh", **EOC),
    "sigmoid": dict(activation="sigmoid", init="normal", sigma_w=4.0, sigma_b=0.3),
    "relu": dict(activation="relu", init="he_normal"),
    "identity": dict(activation="identity", init="orthogonal"),
    "tanh-bn": dict(activation="tanh", batch_norm=True, **EOC),
    "relu-res3": dict(activation="relu", init="he_normal", residual=3, residual_scale=0.5),
    "sigmoid-bn-res2": dict(activation="sigmoid", batch_norm=True, residual=2, init="xavier_normal", sigma_b=0.1),
    "elu": dict(activation="elu", activation_param=0.7, init="he_normal", sigma_b=0.2),
    "selu": dict(activation="selu", init="lecun_normal", sigma_b=0.2),
    "swish-res2": dict(activation="swish", init="he_normal", residual=2, sigma_b=0.2),
    "gelu": dict(activation="gelu", init="he_normal", sigma_b=0.2),
}


def need(name):
    status = peers.peer_status()[name]
    if status != "available":
        pytest.skip(f"peer {name}: {status}")


def run_case(name, dtype, depth=12, width=10, batch=5, **options):
    stack = gb.Stack(depth=depth, width=width, dtype=dtype, **STACKS[options.pop("kind", "tanh")])
    params = gb.init_params(stack, seed=3)
    x = gb.gaussian_input(stack, batch, seed=4)
    ref = gb.backprop(stack, params, x, backend="numpy")
    got = peers.prepare(name, stack, params, x, **options)()
    return stack, ref, got


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", list(STACKS))
@pytest.mark.parametrize("name", peers.PEERS)
def test_peer_matches_reference(name, kind, dtype):
    need(name)
    stack, ref, got = run_case(name, dtype, kind=kind)
    assert peers.representable(stack, ref) is None
    assert got.grad_norm.shape == (stack.depth,)
    # an independent statement of the two quantities, straight from the reference's arrays
    assert got.loss == pytest.approx(ref.loss, rel=RTOL[dtype])
    want = np.sqrt(np.sum(np.square(ref.grads.W.to_float(), dtype=np.float64), axis=(1, 2)))
    np.testing.assert_allclose(got.grad_norm, want, rtol=RTOL[dtype], atol=0, err_msg=f"{name} {kind} {dtype}")
    peers.check(name, stack, got, ref, rtol=RTOL[dtype])


@pytest.mark.parametrize("name", peers.PEERS)
def test_peer_same_weights_across_calls_and_depth(name):
    """Repeated calls give the same numbers (no state kept between runs); depth 200 still agrees."""
    need(name)
    stack = gb.Stack(depth=200, width=16, activation="tanh", **EOC)
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 8, 1)
    ref = gb.backprop(stack, params, x, backend="numpy")
    run = peers.prepare(name, stack, params, x)
    a, b = run(), run()
    np.testing.assert_array_equal(a.grad_norm, b.grad_norm)
    peers.check(name, stack, a, ref, rtol=1e-9)


@pytest.mark.parametrize("name", peers.PEERS)
def test_check_catches_a_peer_that_does_less(name):
    need(name)
    stack, ref, got = run_case(name, "float64", kind="tanh")
    peers.check(name, stack, got, ref, rtol=1e-10)
    wrong_layer = got.grad_norm.copy()
    wrong_layer[3] *= 1.001
    with pytest.raises(AssertionError, match="l=3"):
        peers.check(name, stack, peers.PeerResult(got.loss, wrong_layer), ref, rtol=1e-6)
    with pytest.raises(AssertionError, match="loss"):
        peers.check(name, stack, peers.PeerResult(got.loss * 1.01, got.grad_norm), ref, rtol=1e-6)
    with pytest.raises(AssertionError, match="shape"):
        peers.check(name, stack, peers.PeerResult(got.loss, got.grad_norm[1:]), ref)
    # a stack one layer shorter (less work) does not pass for the full one
    short = gb.Stack(depth=stack.depth - 1, width=stack.width, **STACKS["tanh"])
    p = gb.init_params(stack, seed=3)
    x = gb.gaussian_input(stack, 5, seed=4)
    p_short = gb.Params(W=p.W[1:].copy(), b=p.b[1:].copy(), gamma=p.gamma[1:].copy(),
                        beta=p.beta[1:].copy(), slope=p.slope[1:].copy())
    less = peers.prepare(name, short, p_short, x)()
    padded = peers.PeerResult(less.loss, np.concatenate([[1.0], less.grad_norm]))
    with pytest.raises(AssertionError):
        peers.check(name, stack, padded, ref, rtol=1e-6)


def test_torch_subnormal_partial_check_and_flush_to_zero():
    """The plain float32 chain underflows: the partial check compares the representable layers;
    with flush-to-zero the bottom layers are exactly 0 and still pass it; the full check fails."""
    need("torch")
    stack = gb.Stack(depth=160, width=8, activation="tanh", init="normal", sigma_w=0.5,
                     sigma_b=math.sqrt(0.05), dtype="float32")
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 4, 1)
    ref = gb.backprop(stack, params, x, backend="numpy")
    assert ref.grad_norm.log10().min() < -45  # exact; plain float32 ends at 0
    assert "cannot hold" in peers.representable(stack, ref)
    for ftz in (False, True):
        got = peers.prepare("torch", stack, params, x, flush_denormal=ftz)()
        assert got.grad_norm[0] == 0.0
        peers.check("torch", stack, got, ref, partial=True)
        with pytest.raises(AssertionError):
            peers.check("torch", stack, got, ref)


def test_unsupported_and_missing_peers_say_why():
    assert "prelu" in peers.unsupported(gb.Stack(depth=2, width=3, activation="prelu"))
    assert "sum_squares" in peers.unsupported(gb.Stack(depth=2, width=3, loss="mse"))
    assert peers.unsupported(gb.Stack(depth=2, width=3, activation="relu", batch_norm=True)) is None
    module, reason = peers._import.__wrapped__("gradbench_no_such_peer")
    assert module is None and "pip install" in reason
    assert set(peers.peer_status()) == set(peers.PEERS)
    with pytest.raises(ValueError, match="peers implement"):
        stack = gb.Stack(depth=2, width=3, activation="prelu")
        peers.prepare("torch", stack, gb.init_params(stack), gb.gaussian_input(stack, 2))
