"""Public API, validation of bad input, LogScaled, and the lecture notes' worked numbers."""

import dataclasses
import math
import warnings

import numpy as np
import pytest

import gradbench as gb
from gradbench.optim import SGD


# ---------------------------------------------------------------- the public API of the issue
def test_public_api_names_and_shapes():
    stack = gb.Stack(depth=50, width=64, activation="sigmoid", init="xavier_normal")
    params = gb.init_params(stack, seed=0)
    assert params.W.shape == (50, 64, 64) and params.b.shape == (50, 64)
    x = gb.gaussian_input(stack, batch=32, seed=1)
    assert x.shape == (32, 64)
    res = gb.backprop(stack, params, x, backend="numpy")
    assert isinstance(res.loss, float)
    assert res.grad_norm.log10().shape == (50,)
    assert res.grads.W.to_float().shape == (50, 64, 64)
    assert res.signal_norm.log10().shape == (50,)
    assert "numpy" in gb.backends()


def test_seeds_reproduce_parameters_and_inputs():
    stack = gb.Stack(depth=3, width=4)
    a, b = gb.init_params(stack, seed=5), gb.init_params(stack, seed=5)
    for (n, x), (_, y) in zip(a.items(), b.items()):
        np.testing.assert_array_equal(x, y, err_msg=n)
    assert not np.array_equal(gb.init_params(stack, seed=6).W, a.W)
    np.testing.assert_array_equal(gb.gaussian_input(stack, 3, seed=2), gb.gaussian_input(stack, 3, seed=2))


@pytest.mark.parametrize("init,var", [
    ("normal", 1.0), ("xavier_normal", 1.0), ("xavier_uniform", 1.0), ("he_normal", 2.0),
    ("he_uniform", 2.0), ("lecun_normal", 1.0), ("orthogonal", 1.0),
])
def test_init_variances(init, var):
    N = 256
    W = gb.init_params(gb.Stack(depth=4, width=N, init=init), seed=0).W
    assert np.var(W) * N == pytest.approx(var, rel=0.02)
    if init == "orthogonal":
        np.testing.assert_allclose(W[0] @ W[0].T, np.eye(N), atol=1e-12)
    if init.endswith("uniform"):
        assert np.abs(W).max() <= math.sqrt(3 * var / N)
    # sigma_w overrides the gain: variance sigma_w^2 / fan_in
    W2 = gb.init_params(gb.Stack(depth=2, width=N, init=init, sigma_w=3.0), seed=0).W
    assert np.var(W2) * N == pytest.approx(9.0, rel=0.03)


# ---------------------------------------------------------------- bad input, before any kernel
def test_unknown_activation_lists_names_and_closest():
    with pytest.raises(ValueError) as e:
        gb.Stack(depth=3, width=4, activation="sigmod")
    msg = str(e.value)
    assert "activation" in msg and "'sigmoid'" in msg and "did you mean 'sigmoid'" in msg
    for name in gb.ACTIVATIONS:
        assert repr(name) in msg


@pytest.mark.parametrize("kw,exc,words", [
    (dict(depth=0), ValueError, "depth must be >= 1"),
    (dict(width=0), ValueError, "width must be >= 1"),
    (dict(depth=2.5), TypeError, "depth must be an int"),
    (dict(init="glorot"), ValueError, "init="),
    (dict(dtype="float16"), ValueError, "dtype="),
    (dict(loss="hinge"), ValueError, "loss="),
    (dict(clip="both"), ValueError, "clip="),
    (dict(clip="norm", clip_threshold=0.0), ValueError, "clip_threshold must be > 0"),
    (dict(clip_threshold=-5.0), ValueError, "clip_threshold must be > 0"),  # unused, but kept for .replace(clip=)
    (dict(clip="norm", clip_on="weights"), ValueError, "clip_on="),
    (dict(residual=3, depth=4), ValueError, "residual=3 must divide depth=4"),
    (dict(sigma_w=-1.0), ValueError, "sigma_w must be > 0"),
    (dict(sigma_b=float("nan")), ValueError, "sigma_b must be finite"),
    (dict(activation="tanh", activation_param=0.1), ValueError, "activation_param"),
    (dict(loss="softmax_ce", output_dim=1), ValueError, "output_dim >= 2"),
])
def test_bad_stack_fields(kw, exc, words):
    with pytest.raises(exc, match=words.replace("(", r"\(").replace(")", r"\)")):
        gb.Stack(**(dict(depth=4, width=4) | kw))


def test_no_spelling_hint_for_a_value_that_is_not_a_name():
    with pytest.raises(ValueError) as e:
        gb.Stack(depth=3, width=4, activation=None)
    assert "activation=None is not one of" in str(e.value) and "did you mean" not in str(e.value)


def test_entry_points_name_the_type_they_take():
    with pytest.raises(TypeError, match="init_params takes a gradbench.Stack or gradbench.Recurrent, got str"):
        gb.init_params("stack", 0)
    with pytest.raises(TypeError, match="diagnose takes the result of gradbench.backprop .* got NoneType"):
        gb.diagnose(None)


def test_a_memory_refusal_states_sizes_in_a_unit_that_shows_them():
    """'needs about 0.00 GiB but the budget is 0.00 GiB' said nothing."""
    stack, params, x = _ok()
    with pytest.raises(MemoryError, match=r"needs about [0-9.]+ KiB but the budget is 1 bytes \(memory_budget\)"):
        gb.backprop(stack, params, x, memory_budget=1, backend="numpy")


def _ok():
    stack = gb.Stack(depth=3, width=4)
    return stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 2, 1)


def test_wrong_x_shape():
    stack, params, x = _ok()
    with pytest.raises(ValueError, match=r"x has shape \(2, 5\), expected \(batch, 4\)"):
        gb.backprop(stack, params, np.zeros((2, 5)), backend="numpy")
    with pytest.raises(ValueError, match="x has shape"):
        gb.backprop(stack, params, np.zeros(4), backend="numpy")
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        gb.backprop(stack, params, [[0.0] * 4], backend="numpy")


@pytest.mark.parametrize("where", ["x", "W", "b"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_inputs(where, bad):
    stack, params, x = _ok()
    if where == "x":
        x[1, 2] = bad
    else:
        getattr(params, where).flat[3] = bad
    name = "x" if where == "x" else f"params.{where}"
    with pytest.raises(ValueError, match=f"{name} contains NaN or Inf"):
        gb.backprop(stack, params, x, backend="numpy")


def test_unsupported_or_mismatched_dtype():
    stack, params, x = _ok()
    with pytest.raises(TypeError, match="x has dtype float32, the stack's dtype is float64"):
        gb.backprop(stack, params, x.astype(np.float32), backend="numpy")
    with pytest.raises(TypeError, match="supported dtypes are float64, float32"):
        gb.backprop(stack, params, x.astype(np.float16), backend="numpy")
    with pytest.raises(TypeError, match="supported dtypes"):
        gb.backprop(stack, params, x.astype(np.int64), backend="numpy")
    # the cast that works, named (an int64 mse target read only "supported dtypes are float64, float32",
    # and its float32 cast was then refused on a float64 stack)
    mse = gb.Stack(depth=3, width=4, loss="mse")
    with pytest.raises(TypeError, match=r"^targets has dtype int64; supported dtypes are float64, float32, and the "
                                        r"stack's is float64: pass targets\.astype\('float64'\)$"):
        gb.backprop(mse, gb.init_params(mse, 0), gb.gaussian_input(mse, 3, 1), np.zeros((3, 4), np.int64))


def test_mismatched_params_and_stack():
    stack, params, x = _ok()
    bigger = gb.Stack(depth=4, width=4)
    with pytest.raises(ValueError, match=r"params.W has shape \(3, 4, 4\), expected \(4, 4, 4\)"):
        gb.backprop(bigger, params, x, backend="numpy")
    head = gb.Stack(depth=3, width=4, loss="mse")
    with pytest.raises(ValueError, match="params.W_out is missing"):
        gb.backprop(head, params, x, np.zeros((2, 1)), backend="numpy")
    with pytest.raises(TypeError, match="params must be gradbench.Params"):
        gb.backprop(stack, dict(params.items()), x, backend="numpy")


def test_bad_backend_and_targets():
    stack, params, x = _ok()
    with pytest.raises(ValueError, match="backend='cuda' is not one of"):
        gb.backprop(stack, params, x, backend="cuda")
    with pytest.raises(ValueError, match="loss='sum_squares' takes none"):
        gb.backprop(stack, params, x, np.zeros((2, 1)), backend="numpy")
    ce = gb.Stack(depth=3, width=4, loss="softmax_ce", output_dim=3)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 3\)"):
        gb.backprop(ce, gb.init_params(ce, 0), x, np.array([0, 3]), backend="numpy")


def test_validation_happens_before_any_kernel(monkeypatch):
    """A bad input raises before the backend's forward is called."""
    from gradbench import reference

    called = []
    monkeypatch.setattr(reference, "stack_forward", lambda *a: called.append(1))
    stack, params, x = _ok()
    x[0, 0] = np.nan
    with pytest.raises(ValueError):
        gb.backprop(stack, params, x, backend="numpy")
    assert called == []


@pytest.mark.parametrize("bad", ["x", 3, [1, 2], True])
def test_a_progress_that_is_not_callable_is_refused_before_any_kernel(monkeypatch, bad):
    # before: "TypeError: 'str' object is not callable" after the first segment's forward
    from gradbench import reference

    called = []
    monkeypatch.setattr(reference, "stack_forward", lambda *a: called.append(1))
    stack, params, x = _ok()
    with pytest.raises(TypeError, match=r"progress must be a callable progress\(done, total\) or None"):
        gb.backprop(stack, params, x, backend="numpy", progress=bad)
    assert called == []


@pytest.mark.parametrize("kind", [np.float32, np.float16, np.float64, float, int])
def test_memory_budget_takes_numpy_floating_scalars_as_ints_and_floats(kind):
    # before: np.float32(1e9) was "not a positive number of bytes" (only float's subclass np.float64 passed)
    from tests import naive

    stack, params, x = _ok()
    res = gb.backprop(stack, params, x, backend="numpy", memory_budget=kind(60000))
    loss, _ = naive.forward(stack, {k: v for k, v in params.items()}, x)
    np.testing.assert_allclose(res.loss, loss, rtol=1e-13)
    with pytest.raises(MemoryError, match=r"but the budget is 2 bytes \(memory_budget\)"):
        gb.backprop(stack, params, x, backend="numpy", memory_budget=kind(2))


# ---------------------------------------------------------------- LogScaled
def test_logscaled_log10_and_to_float():
    v = gb.LogScaled(np.array([0.75, 0.5, 0.0]), np.array([-100_000, 3, 7]))
    expected = [math.log10(0.75) - 100_000 * math.log10(2), math.log10(4.0), -np.inf]
    np.testing.assert_allclose(v.log10(), expected, rtol=1e-15)
    with pytest.warns(gb.UnderflowWarning, match="1 of 3 values underflow"):
        f = v.to_float()
    np.testing.assert_array_equal(f, [0.0, 4.0, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert v[1:].to_float().tolist() == [4.0, 0.0]
    w = gb.LogScaled.from_float([3.0, 1e-300])
    np.testing.assert_array_equal(w.to_float(), [3.0, 1e-300])


def test_logscaled_layer_exponents_broadcast():
    m = np.ones((2, 3, 3)) * 0.5
    v = gb.LogScaled(m, np.array([1, -2000]))
    assert v[0].to_float().tolist() == np.ones((3, 3)).tolist()
    np.testing.assert_allclose(v.log10()[1], np.full((3, 3), math.log10(0.5) - 2000 * math.log10(2)))
    with pytest.raises(ValueError, match="prefix"):
        gb.LogScaled(m, np.array([1, 2, 3]))


@pytest.mark.parametrize("m,e", [(0.6, -213771), (-0.75, 2000), (0.5, 0), (0.9, 10**15 + 7), (0.75, 2**62 - 1),
                                 (-0.51, -(2**62))])
def test_logscaled_repr_prints_the_decade_right_to_four_decimals_at_any_exponent(m, e):
    # before: f"{log10:.4g}" printed 10^-64351.7 as 10^-6.435e+04 and 10^-1256.05 as 10^-1256
    import re

    import mpmath as mp

    text = repr(gb.LogScaled(np.array([m]), np.array([e])))
    found = re.fullmatch(r"LogScaled\(\[(-?)10\^(-?\d+\.\d{4})\]\)", text)
    assert found, text
    assert (found.group(1) == "-") == (m < 0)
    with mp.workdps(60):
        exact = mp.log10(abs(mp.mpf(m))) + e * mp.log10(2)
        assert abs(mp.mpf(found.group(2)) - exact) <= mp.mpf("0.00005"), (text, mp.nstr(exact, 30))


def test_logscaled_repr_of_an_array_prints_each_entry_or_a_summary():
    v = gb.LogScaled(np.array([[0.5, -0.75], [0.6, 0.0]]), np.array([-5000, 3000]))
    d = [math.log10(0.5) - 5000 * math.log10(2), math.log10(0.75) - 5000 * math.log10(2),
         math.log10(0.6) + 3000 * math.log10(2)]
    assert repr(v) == f"LogScaled([10^{d[0]:.4f}, -10^{d[1]:.4f}, 10^{d[2]:.4f}, 10^-inf])"
    big = gb.LogScaled(np.full((4, 3, 3), 0.5), np.array([-7, 0, 5, 2]))
    # the values' range in decades (0.5 2^-7 = 2^-8 to 0.5 2^5 = 2^4), not the binary exponents
    assert repr(big) == f"LogScaled(shape=(4, 3, 3), |values| 10^{-8 * math.log10(2):.4g} to 10^{4 * math.log10(2):.4g})"
    # 400 norms of 0 printed "exponent range [176, 348]"
    assert repr(gb.LogScaled(np.zeros(400), np.arange(176, 576))) == "LogScaled(shape=(400,), all 0)"
    mixed = gb.LogScaled(np.array([0.5, 0.0, 0.0, np.nan, -np.inf, 0.5, 0.5]), np.array([1, 2, 3, 4, 5, 6, 7]))
    assert repr(mixed) == "LogScaled(shape=(7,), |values| 10^0 to 10^1.806, 2 zero, 2 not finite)"
    assert repr(gb.LogScaled(np.full(7, np.nan), np.zeros(7, dtype=np.int64))) == "LogScaled(shape=(7,), none finite)"


def test_logscaled_is_not_converted_to_a_numpy_array_implicitly():
    # before: np.asarray built an object array of 0-d LogScaled, one Python object per entry
    v = gb.LogScaled(np.array([[0.5, 0.75], [0.6, 0.25]]), np.array([-5000, 3]))
    for convert in (np.asarray, np.array, np.log10, lambda a: np.asarray(a, dtype=float)):
        with pytest.raises(TypeError, match=r"\.log10\(\).*\.to_float\(\)"):
            convert(v)
    np.testing.assert_allclose(v.log10(), [[math.log10(0.5) - 5000 * math.log10(2), math.log10(0.75) - 5000 * math.log10(2)],
                                           [math.log10(0.6 * 8), math.log10(0.25 * 8)]], rtol=1e-15)
    assert [x.to_float(warn=False).tolist() for x in v] == [[0.0, 0.0], [4.8, 2.0]]  # iteration still works


@pytest.mark.parametrize("exponent", [2.7, -0.5, float("nan"), float("inf"), 1e30, "3", True, [1.5, 2.5],
                                      np.array([1.0, 2.5]), 2**70, np.uint64(2**63)])
def test_logscaled_refuses_an_exponent_that_is_not_an_integer(exponent):
    # before: 2.7 was truncated to 2 (0.5 * 2**2.7 = 3.25 read 2.0), "3" became 3
    m = np.full(np.shape(exponent) if isinstance(exponent, (list, np.ndarray)) else (), 0.5)
    with pytest.raises(TypeError, match="exponent must hold int64 integers"):
        gb.LogScaled(m, exponent)


def test_logscaled_takes_integers_and_floats_equal_to_integers():
    assert gb.LogScaled(0.5, 3.0).to_float() == 4.0
    assert gb.LogScaled(0.5, np.float32(-2)).to_float() == 0.125
    assert gb.LogScaled(np.array([0.5, 0.75]), np.array([3, 2], dtype=np.uint8)).to_float().tolist() == [4.0, 3.0]
    assert gb.LogScaled(0.5, np.int32(10)).exponent.dtype == np.int64


def test_logscaled_to_float_takes_float_dtypes_only():
    # before: to_float("int64") returned -2**63 for 0.75 * 2**70 with only NumPy's cast warning
    v = gb.LogScaled(np.array([0.75, 0.5]), np.array(70))
    for dtype in ("int64", np.int32, "uint8", bool, "complex128", object):
        with pytest.raises(TypeError, match="float16, float32 or float64"):
            v.to_float(dtype)
    assert v.to_float(np.float32).tolist() == [0.75 * 2.0**70, 2.0**69]
    assert v.to_float(np.float32).dtype == np.float32
    with pytest.warns(gb.UnderflowWarning, match="2 of 2 values overflow float16"):
        assert v.to_float("float16").tolist() == [np.inf, np.inf]


# ---------------------------------------------------------------- the lecture notes' numbers
def test_vanishing_chain_worked_example():
    """0.20 * 0.5 * 0.02 = 0.002 moves w = 2.5 to 2.498 at lr = 1.

    A width-1 identity stack h1 = w1 x, h2 = w2 h1 + b2, L = 0.5 h2^2 with x = 0.02, w2 = 0.5
    and b2 chosen so that dL/dh2 = h2 = 0.20: the chain rule gives dL/dw1 = 0.20 * 0.5 * 0.02.
    """
    stack = gb.Stack(depth=2, width=1, activation="identity")
    params = gb.init_params(stack, 0)
    params.W[:, 0, 0] = [2.5, 0.5]
    params.b[:, 0] = [0.0, 0.20 - 0.5 * 2.5 * 0.02]
    res = gb.backprop(stack, params, np.array([[0.02]]), backend="numpy")
    g = res.grads.W.to_float()[0, 0, 0]
    assert g == pytest.approx(0.20 * 0.5 * 0.02, rel=1e-14) and g == pytest.approx(0.002, rel=1e-14)
    state = {"W": params.W.copy()}
    SGD(lr=1.0).step(state, {"W": res.grads.W.to_float()})
    assert state["W"][0, 0, 0] == pytest.approx(2.498, rel=1e-14)


def test_exploding_step_worked_example():
    """A gradient of 100 at lr = 0.1 moves w = 1 to -9."""
    stack = gb.Stack(depth=1, width=1, activation="identity")
    params = gb.init_params(stack, 0)
    params.W[0, 0, 0] = 1.0
    res = gb.backprop(stack, params, np.array([[10.0]]), backend="numpy")  # dL/dw = h x = 100
    g = res.grads.W.to_float()[0, 0, 0]
    assert g == pytest.approx(100.0, rel=1e-15)
    state = {"W": params.W.copy()}
    SGD(lr=0.1).step(state, {"W": res.grads.W.to_float()})
    assert state["W"][0, 0, 0] == pytest.approx(-9.0, rel=1e-14)


# ---------------------------------------------------------------- seeds: one rule, one message naming seed
# The rule: a seed is an int >= 0 (Python or NumPy integer, not a bool) or a numpy.random.Generator;
# GeneratedParams, whose seed is the Philox key, takes ints in [0, 2**128). Before, init_params(st, -1)
# said "expected non-negative integer" and init_params(st, 1.5) spoke of SeedSequence entropy.
def _seeded_functions():
    from gradbench import datasets

    st = gb.Stack(depth=2, width=3)
    head = gb.Stack(depth=2, width=3, input_dim=2, loss="bce")
    X, y = datasets.moons(4)
    return {
        "init_params": lambda s: gb.init_params(st, s),
        "gaussian_input": lambda s: gb.gaussian_input(st, 2, seed=s),
        "GeneratedParams": lambda s: gb.GeneratedParams(st, s),
        "moons": lambda s: datasets.moons(4, seed=s),
        "load": lambda s: datasets.load("xor", 4, seed=s),
        "train": lambda s: gb.train(head, X, y, epochs=1, batch_size=2, seed=s),
        **{f"recurrent {name}": f for name, f in _recurrent_seeded_functions().items()},
    }


@pytest.mark.parametrize("bad,error", [(-1, ValueError), (1.5, TypeError), (True, TypeError), (None, TypeError),
                                       ("3", TypeError), ([1, 2], TypeError)])
@pytest.mark.parametrize("name", ["init_params", "gaussian_input", "GeneratedParams", "moons", "load", "train",
                                  "recurrent init_params", "recurrent sequence_input", "recurrent first_symbol"])
def test_a_bad_seed_is_refused_naming_seed_and_what_is_allowed(name, bad, error):
    with pytest.raises(error) as info:
        _seeded_functions()[name](bad)
    text = str(info.value)
    assert text.startswith("seed must be an int"), text
    assert repr(bad) in text or str(bad) in text, text
    if name not in ("GeneratedParams", "train"):
        assert "or a numpy.random.Generator" in text


def test_good_seeds_are_unchanged():
    st = gb.Stack(depth=2, width=3)
    big = 2**100
    # the same draws as numpy.random.default_rng(seed), NumPy integers and huge ints included
    assert np.array_equal(gb.gaussian_input(st, 2, seed=np.int64(7)),
                          np.random.default_rng(7).standard_normal((2, 3)))
    assert np.array_equal(gb.gaussian_input(st, 2, seed=big), np.random.default_rng(big).standard_normal((2, 3)))
    g = np.random.default_rng(5)
    assert np.array_equal(gb.init_params(st, np.random.default_rng(5)).W, gb.init_params(st, g).W)


@pytest.mark.parametrize("make", ["stack", "recurrent"])
@pytest.mark.parametrize("dtype, field, value, what", [
    ("float32", "sigma_w", 1e-50, "round to 0"), ("float32", "sigma_w", 1e39, "overflow to inf"),
    ("float32", "sigma_b", 1e31, "overflow to inf"), ("float64", "sigma_w", 1e300, "overflow to inf"),
])
def test_scales_beyond_the_dtype_are_refused_by_name(make, dtype, field, value, what):
    """A float32 net at sigma_w = 1e-50 had all-zero weights (their draws round to 0: 'no
    gradient', from the cast, not the network); at 1e39 it was refused as 'params.W_hh contains
    NaN or Inf', an array the caller never passed. The range named is what the dtype holds: the
    draws at its ends are finite normal numbers (checked here on the weights themselves)."""
    from gradbench.spec import SCALE_RANGE

    net = (lambda **kw: gb.Stack(depth=3, width=4, **kw)) if make == "stack" else \
        (lambda **kw: gb.Recurrent(cell="rnn", steps=3, hidden=4, **kw))
    with pytest.raises(ValueError, match=rf"{field}=.* is beyond what {dtype} weights hold: its draws would {what}"):
        net(dtype=dtype, **{field: value})
    lo, hi = SCALE_RANGE[dtype]
    tiny = np.finfo(dtype).tiny
    for edge in (lo, hi):
        p = gb.init_params(net(dtype=dtype, sigma_w=edge, sigma_b=edge), 0)
        for a in (p.W if make == "stack" else p.W_hh, p.b if make == "stack" else p.b_hh):
            assert np.all(np.isfinite(a)) and np.all(np.abs(a[a != 0]) >= tiny)


@pytest.mark.parametrize("make", ["stack", "recurrent"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_numpy_dtype_is_taken_as_its_name(make, dtype):
    """dtype=np.dtype("float32") passed the name check (it equals "float32") and then crashed
    with KeyError: dtype('float32'). It is stored as its name, as NumPy scalars become Python
    numbers; a dtype that is not float32 or float64 is refused with the usual message."""
    import json
    from dataclasses import asdict

    net = (lambda **kw: gb.Stack(depth=3, width=4, **kw)) if make == "stack" else \
        (lambda **kw: gb.Recurrent(cell="rnn", steps=3, hidden=4, **kw))
    got = net(dtype=np.dtype(dtype))
    assert type(got.dtype) is str and got == net(dtype=dtype) and json.loads(json.dumps(asdict(got)))["dtype"] == dtype
    with pytest.raises(ValueError, match=r"dtype='float16' is not one of 'float64', 'float32'"):
        net(dtype=np.dtype("float16"))


def test_numpy_scalar_scales_are_compared_as_the_floats_they_hold():
    """np.float32(1.5) as sigma_w was compared with float64's bound 1e290 in float32, which
    overflowed ("RuntimeWarning: overflow encountered in cast")."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for dtype in ("float64", "float32"):
            stack = gb.Stack(depth=2, width=2, sigma_w=np.float32(1.5), sigma_b=np.float32(0.25), dtype=dtype)
            assert (stack.sigma_w, stack.sigma_b) == (1.5, 0.25)
        with pytest.raises(ValueError, match="sigma_w=1e-31 is beyond what float32 weights hold"):
            gb.Stack(depth=2, width=2, sigma_w=np.float32(1e-31), dtype="float32")


def _numpy_sum_squares(stack, params, x) -> float:
    """log10 of the sum_squares loss by a plain float64 forward pass (leaky, PReLU and ELU only)."""
    h = np.asarray(x, dtype=np.float64)
    for l in range(stack.depth):
        z = h @ np.asarray(params.W[l], np.float64).T + np.asarray(params.b[l], np.float64)
        p = float(params.slope[l]) if stack.activation == "prelu" else stack.act_param
        neg = p * np.expm1(np.minimum(z, 0)) if stack.activation == "elu" else p * z
        h = np.where(z > 0, z, neg)
    return math.log10(0.5 * float(np.sum(h * h)))


@pytest.mark.parametrize("make", ["stack", "recurrent"])
@pytest.mark.parametrize("dtype, activation, value, what", [
    ("float32", "leaky_relu", 1e300, "overflow to inf"), ("float32", "elu", 1e31, "overflow to inf"),
    ("float32", "leaky_relu", -1e-35, "underflow"), ("float64", "leaky_relu", -1e291, "overflow to inf"),
    ("float64", "elu", 1e-300, "underflow"),
])
def test_activation_params_beyond_the_dtype_are_refused_by_name(make, dtype, activation, value, what):
    """A float32 stack took any finite activation_param: a leaky slope of 1e300 (float32 holds no
    such number) gave a NaN loss. activation_param multiplies the pre-activations as sigma_w
    multiplies the draws, and keeps to the same range (SCALE_RANGE) in magnitude."""
    net = (lambda **kw: gb.Stack(depth=3, width=4, **kw)) if make == "stack" else \
        (lambda **kw: gb.Recurrent(cell="rnn", steps=3, hidden=4, **kw))
    with pytest.raises(ValueError, match=rf"activation_param=.* is beyond what {dtype} holds: its products with the "
                                         rf"pre-activations would {what}; in {dtype} activation_param must be 0 or between"):
        net(activation=activation, activation_param=value, dtype=dtype)


@pytest.mark.parametrize("activation, value", [
    ("leaky_relu", 1e30), ("leaky_relu", -1e30), ("prelu", -1e30), ("prelu", 1e-30), ("elu", 1e30), ("elu", 1e-30),
])
def test_activation_params_at_the_ends_of_the_float32_range_run_exactly(activation, value):
    """At the ends of the range the float32 run agrees with a plain float64 forward pass on the
    same weights, and PReLU's slopes hold the param (a slope of 1e39 was drawn as inf)."""
    stack = gb.Stack(depth=3, width=4, activation=activation, activation_param=value, dtype="float32")
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 3, 1)
    res = gb.backprop(stack, params, x, backend="numpy")
    assert float(res.loss_exact.log10()) == pytest.approx(_numpy_sum_squares(stack, params, x), abs=1e-5)
    if activation == "prelu":
        assert np.all(params.slope == np.float32(value))


def test_init_params_never_makes_an_inf_prelu_slope():
    """Stack refuses a PReLU slope float32 does not hold (naming activation_param); a stack built
    around that check gets a ValueError from init_params and GeneratedParams, not an inf slope."""
    with pytest.raises(ValueError, match="activation_param=1e39 is beyond what float32 holds"):
        gb.Stack(depth=2, width=3, activation="prelu", activation_param=1e39, dtype="float32")
    stack = gb.Stack(depth=2, width=3, activation="prelu", dtype="float32")
    object.__setattr__(stack, "activation_param", 1e39)  # around the check
    for draw in (lambda: gb.init_params(stack, 0), lambda: gb.GeneratedParams(stack, 0).materialize()):
        with pytest.raises(ValueError, match=r"activation_param=1e\+39 \(the PReLU slope\) is beyond what float32 holds"):
            draw()


@pytest.mark.parametrize("index", [
    1, slice(1, None), (0, slice(None), 2), (Ellipsis, 0), (Ellipsis, 1, 2), (None, 0), (slice(None), 0),
    np.array([1, 0]), (np.array([0, 1]), np.array([2, 0])), "mask", "row-mask",
])
def test_logscaled_indexing_keeps_each_entrys_exponent(index):
    """LogScaled[index] against log10 of the whole array indexed by NumPy (the value of each
    entry is its own mantissa times its own exponent, wherever indexing takes it). c[..., 0] of a
    (2, 3) exponent took the first axis's exponents for the second's, silently; a full-shape
    boolean mask raised IndexError."""
    rng = np.random.default_rng(3)
    c = gb.LogScaled(rng.uniform(-1, 1, (2, 3, 4)), rng.integers(-3000, 3000, (2, 3)))
    if isinstance(index, str):
        index = c.mantissa > 0 if index == "mask" else np.array([True, False])
    want = c.log10()[index]
    got = c[index]
    np.testing.assert_array_equal(got.log10(), want)
    assert got.mantissa.shape == np.shape(want)
    w = gb.LogScaled(rng.uniform(-1, 1, (5, 3, 3)), rng.integers(-9, 9, 5))
    assert w[2].exponent.shape == () and w[1:3].exponent.shape == (2,)  # basic indexing stays compact


def test_logscaled_to_float_without_warn_is_silent_and_repr_keeps_the_sign():
    """to_float(warn=False) still let NumPy's 'overflow encountered in ldexp / in cast' through (and
    warn=True said each overflow twice); repr showed -3.5 as 10^0.5441."""
    import warnings

    b = gb.LogScaled(np.array([[0.5, -0.75], [0.6, 0.0]]), np.array([-5000, 3000]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = b.to_float(warn=False)
        big = gb.LogScaled.from_float(np.array([1e308])).to_float(np.float32, warn=False)
    np.testing.assert_array_equal(out, [[0.0, -0.0], [np.inf, 0.0]])
    assert big[0] == np.inf
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        b.to_float()
    assert [w.category for w in seen] == [gb.UnderflowWarning] * 2  # one under-, one overflow: gradbench's own
    assert repr(gb.LogScaled.from_float(-3.5)) == "LogScaled([-10^0.5441])"
    assert repr(gb.LogScaled.from_float(np.array([2.0, -0.0]))) == "LogScaled([10^0.3010, 10^-inf])"


def test_a_numpy_scalar_type_names_the_dtype():
    """dtype=np.float32 was refused as "<class 'numpy.float32'> is not one of 'float64', 'float32'"."""
    assert gb.Stack(depth=2, width=4, dtype=np.float32).dtype == "float32"
    assert gb.Stack(depth=2, width=4, dtype=np.dtype("float64")).dtype == "float64"
    assert gb.Recurrent(steps=3, hidden=2, dtype=np.float32).dtype == "float32"
    with pytest.raises(ValueError, match="dtype='float16' is not one of 'float64', 'float32'"):
        gb.Stack(depth=2, width=4, dtype=np.float16)
    with pytest.raises(ValueError, match="is not one of"):
        gb.Stack(depth=2, width=4, dtype=float)


def test_a_non_finite_logscaled_reads_as_its_value():
    """A diverged loss printed as '-10^nan' (NaN's sign bit)."""
    v = gb.LogScaled(np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -3.5]), np.array(3))
    assert repr(v) == f"LogScaled([nan, nan, inf, -inf, 10^-inf, -10^{np.log10(28.0):.4f}])"


@pytest.mark.parametrize("field, value, kw", [
    ("clip_threshold", 1e-50, dict(clip="norm")), ("clip_threshold", 1e39, dict(clip="value")),
    ("residual_scale", 1e-50, dict(residual=2)), ("residual_scale", -1e39, dict(residual=2)),
    ("bn_eps", 1e39, dict(batch_norm=True)), ("bn_eps", 1e-40, dict(batch_norm=True)),
    ("forget_bias", 1e39, dict(cell="lstm")),
])
def test_other_scales_beyond_float32_are_refused_by_name(field, value, kw):
    """A float32 norm clip at 1e-50 scaled the signal to 0 and read "NO GRADIENT" (float64:
    10^-50.2); residual_scale 1e-50 gave no gradient, 1e39 a NaN loss; bn_eps 1e39 a loss of 0;
    an LSTM's forget_bias 1e39 was refused as "params.b_ih contains NaN or Inf"."""
    make = (lambda **a: gb.Recurrent(steps=3, hidden=4, **a)) if kw.get("cell") else \
        (lambda **a: gb.Stack(depth=4, width=4, **a))
    with pytest.raises(ValueError, match=rf"{field}=.* is beyond what float32 holds: .* in float32 {field} must be"):
        make(dtype="float32", **kw, **{field: value})
    make(dtype="float64", **kw, **{field: value})  # float64 holds it


@pytest.mark.parametrize("field, kw", [("clip_threshold", dict(clip="norm")), ("residual_scale", dict(residual=2))])
def test_float32_at_the_ends_of_its_scale_range_follows_float64(field, kw):
    """At the range's ends a float32 stack gives float64's gradient norms to float32's precision
    (the range is what float32 holds, not a guess)."""
    from gradbench.spec import SCALE_RANGE

    for edge in SCALE_RANGE["float32"]:
        got = {}
        for dtype in ("float32", "float64"):
            st = gb.Stack(depth=4, width=8, activation="relu", dtype=dtype, **kw, **{field: edge})
            p = gb.init_params(st.replace(dtype="float64"), 0)
            p = dataclasses.replace(p, **{k: getattr(p, k).astype(dtype) for k in ("W", "b", "gamma", "beta", "slope")})
            x = gb.gaussian_input(st.replace(dtype="float64"), 8, seed=1).astype(dtype)  # the same in both dtypes
            got[dtype] = gb.backprop(st, p, x).grad_norm.log10()
        assert np.all(np.isfinite(got["float32"])), (field, edge)
        np.testing.assert_allclose(got["float32"], got["float64"], atol=1e-4)


def test_recurrent_numpy_scalars_become_python_numbers():
    """Recurrent kept np.int32 steps and hidden: the memory estimate wrapped around (-1983905704
    bytes for an LSTM of 2^24 steps and 256 units), which let a 2 TiB run through the planner."""
    from gradbench.recurrent.engine import memory_estimate

    r = gb.Recurrent(cell="lstm", steps=np.int32(2**24), hidden=np.int32(256), input_dim=np.int64(4),
                     sigma_w=np.float32(1.5), clip_threshold=np.float64(2.0))
    assert type(r.steps) is int and type(r.hidden) is int and type(r.input_dim) is int
    assert type(r.sigma_w) is float and type(r.clip_threshold) is float
    plain = gb.Recurrent(cell="lstm", steps=2**24, hidden=256, input_dim=4, sigma_w=1.5, clip_threshold=2.0)
    assert r == plain
    assert memory_estimate(r, 64, checkpoint=None) == memory_estimate(plain, 64, checkpoint=None) > 2**40


def test_a_fractional_memory_budget_is_said_as_given():
    """memory_budget=1.5 was refused as a budget of "2 bytes"."""
    st = gb.Stack(depth=2, width=4)
    with pytest.raises(gb.plan.PlanRefused, match=r"\b1\.5 bytes"):
        gb.backprop(st, gb.init_params(st, 0), gb.gaussian_input(st, 2, seed=0), memory_budget=1.5)


def test_negative_zero_fields_are_zero():
    """sigma_b=-0.0 was stored as -0.0 and a leaky slope of -0.0 read "slope -0"."""
    st = gb.Stack(depth=2, width=4, activation="leaky_relu", activation_param=-0.0, sigma_b=-0.0)
    assert math.copysign(1, st.sigma_b) == 1 and math.copysign(1, st.activation_param) == 1
    assert "=-0.0" not in repr(st)
    r = gb.Recurrent(steps=2, hidden=3, cell="lstm", forget_bias=-0.0, sigma_b=-0.0)
    assert math.copysign(1, r.forget_bias) == 1 and math.copysign(1, r.sigma_b) == 1


def test_big_endian_arrays_are_the_same_values():
    """A big-endian float64 x was refused with "pass x.astype('float64') or a Stack with
    dtype='float64'" beside a float64 stack. The values are the same: the result is too."""
    st = gb.Stack(depth=3, width=4, loss="mse")
    p = gb.init_params(st, 0)
    x = gb.gaussian_input(st, 5, seed=1)
    t = np.random.default_rng(2).normal(size=(5, 1))
    a = gb.backprop(st, p, x, t, backend="numpy")
    big = dataclasses.replace(p, W=p.W.astype(">f8"))
    b = gb.backprop(st, big, x.astype(">f8"), t.astype(">f8"), backend="numpy")
    assert np.array_equal(a.grads.W.mantissa, b.grads.W.mantissa) and a.loss == b.loss


@pytest.mark.parametrize("make, words", [
    (lambda: gb.Stack(depth=2, width=2, loss="cross_entropy"), "'cross_entropy' is gradbench's 'softmax_ce'"),
    (lambda: gb.Stack(depth=2, width=2, activation="gelu_tanh"), "the tanh approximation has no counterpart"),
    (lambda: gb.Stack(depth=2, width=2, activation="xyz"), None),
    (lambda: gb.Stack(depth=2, width=2, activation="sigmod"), "did you mean 'sigmoid'?"),
    (lambda: gb.Stack(depth=2, width=2, init="he"), "did you mean 'he_normal' or 'he_uniform'?"),  # a prefix of two
])
def test_a_wrong_name_gets_a_hint_only_where_one_fits(make, words):
    """'cross_entropy' got "did you mean 'sum_squares'?", 'gelu_tanh' "'tanh'?", 'rmsprop'
    "'momentum'?": any name was matched to the closest, however far."""
    with pytest.raises(ValueError) as e:
        make()
    if words is None:
        assert "did you mean" not in str(e.value)
    else:
        assert words in str(e.value)


def test_numpy_integer_histogram_sizes_are_python_ints():
    """hist_bins=np.int16(30000) made a memory estimate of -26528 bytes, np.uint8(3) an
    OverflowError: sizes are computed as Python ints."""
    st = gb.Stack(depth=3, width=4)
    p, x = gb.GeneratedParams(st, 0), gb.gaussian_input(st, 2, seed=0)
    for bins in (np.int16(30000), np.uint8(3)):
        a = gb.backprop(st, p, x, stats_only=True, hist_bins=bins)
        b = gb.backprop(st, p, x, stats_only=True, hist_bins=int(bins))
        assert a.extras["memory_estimate"] == b.extras["memory_estimate"] > 0
        assert np.array_equal(a.grad_hist.counts, b.grad_hist.counts)


def test_fields_that_act_only_with_another_are_kept_and_do_nothing_without_it():
    """Stack's docstring: bn_eps, residual_scale, clip_threshold and clip_on are kept without
    batch_norm, residual or clip and do nothing there (the command line refuses them)."""
    base = gb.Stack(depth=4, width=6, activation="tanh")
    odd = base.replace(bn_eps=0.5, residual_scale=0.25, clip_threshold=1e-3, clip_on="layer")
    params, x = gb.init_params(base, 0), gb.gaussian_input(base, 5, 1)
    a, b = gb.backprop(base, params, x, backend="numpy"), gb.backprop(odd, params, x, backend="numpy")
    assert np.array_equal(a.grad_norm.log10(), b.grad_norm.log10())
    assert odd.replace(batch_norm=True).bn_eps == 0.5 and odd.replace(residual=2).residual_scale == 0.25


# The recurrent nets' seeded functions take their seeds by the stacks' rule. Before, gb.init_params
# and gb.sequence_input of a Recurrent took seed=None (fresh OS entropy: other weights and inputs at
# every call) and seed=True (as 1) without a word, and said "SeedSequence expects int or sequence
# of ints for entropy not 1.5" for a float; first_symbol (the recurrent training task) likewise.
def _recurrent_seeded_functions():
    from gradbench.recurrent.train import first_symbol

    rnn = gb.Recurrent(cell="lstm", steps=3, hidden=4, input_dim=2)
    return {
        "init_params": lambda s: gb.init_params(rnn, s),
        "sequence_input": lambda s: gb.sequence_input(rnn, 2, s),
        "first_symbol": lambda s: first_symbol(3, 4, seed=s),
    }


def test_good_recurrent_seeds_are_unchanged():
    rnn = gb.Recurrent(cell="gru", steps=3, hidden=4, input_dim=2)
    # the same draws as numpy.random.default_rng(seed), NumPy integers and Generators included
    for seed in (np.int64(7), 2**100):
        assert np.array_equal(gb.sequence_input(rnn, 2, seed), np.random.default_rng(seed).standard_normal((3, 2, 2)))
    first = np.random.default_rng(5).standard_normal((3 * 4, 2))  # W_ih: xavier_normal, std sqrt(2 / (2 + 4))
    assert np.array_equal(gb.init_params(rnn, np.int64(5)).W_ih, first * np.sqrt(2.0 / (2 + 4)))
    assert np.array_equal(gb.init_params(rnn, np.random.default_rng(5)).W_ih, gb.init_params(rnn, 5).W_ih)


def test_result_reprs_show_arrays_by_their_shapes():
    """print(res) dumped every per-layer array and the weights' probe (5 kB at 50 layers), a
    500-step LSTM result 19 kB, a training result every weight: arrays beyond a few entries are
    now their shape and dtype, whatever the depth."""
    st = gb.Stack(depth=2000, width=8, activation="tanh")
    res = gb.backprop(st, gb.init_params(st, 0), gb.gaussian_input(st, 4, 1))
    text = repr(res)
    assert len(text) < 3000 and "saturation=array(shape=(2000,), dtype=float64)" in text
    assert "'weights_probe': array(shape=(2000, 3), dtype=float64)" in text and f"loss={res.loss!r}" in text
    rnn = gb.Recurrent(cell="lstm", steps=3000, hidden=8)
    text = repr(gb.backprop(rnn, gb.init_params(rnn, 0), gb.sequence_input(rnn, 2, 1)))
    assert len(text) < 3000 and "gate_mean=array(shape=(3000,), dtype=float64)" in text
    trained = gb.run_demo("relu-he", epochs=2)
    text = repr(trained)
    assert len(text) < 3000 and "params=Params(W=array(shape=(10, 16, 16), dtype=float64)" in text
    assert "accuracy=array([" in text  # three entries: shown


def test_a_setting_without_its_switch_is_said_to_have_no_effect():
    """The Stack keeps residual_scale without residual (and bn_eps without batch norm, ...) so that
    replace() round trips keep them; the report's header left them out, reading as if taken."""
    cases = {"residual_scale 5 without residual": dict(residual_scale=5.0),
             "bn_eps 0.001 without batch norm": dict(bn_eps=1e-3),
             "clip_threshold 0.01 without clip, clip_on global without clip": dict(clip_on="global", clip_threshold=0.01),
             "output_dim 7 without a head": dict(output_dim=7)}
    for words, kw in cases.items():
        st = gb.Stack(depth=4, width=4, **kw)
        head = str(gb.diagnose(gb.backprop(st, gb.init_params(st, 0), gb.gaussian_input(st, 2, 1)))).splitlines()[0]
        assert f", no effect: {words}, float64" in head, head
    st = gb.Stack(depth=4, width=4, residual=1, residual_scale=0.5, batch_norm=True, bn_eps=1e-3)
    head = str(gb.diagnose(gb.backprop(st, gb.init_params(st, 0), gb.gaussian_input(st, 2, 1)))).splitlines()[0]
    assert "no effect" not in head and "residual every 1 (scale 0.5)" in head and "batch norm (eps 0.001)" in head


def test_a_recurrent_setting_without_its_switch_is_said_to_have_no_effect():
    """Recurrent keeps clip_threshold / clip_on without a clip and output_dim without a head, as
    Stack does; its report's header left them out, as the stack's did before."""
    cases = {"clip_threshold 3 without clip, clip_on global without clip": dict(clip_threshold=3.0, clip_on="global"),
             "output_dim 3 without a head": dict(output_dim=3)}
    for words, kw in cases.items():
        rnn = gb.Recurrent(cell="gru", steps=5, hidden=4, **kw)
        head = str(gb.diagnose(gb.backprop(rnn, gb.init_params(rnn, 0), gb.sequence_input(rnn, 2, 1)))).splitlines()[0]
        assert f", no effect: {words}, float64" in head, head
    rnn = gb.Recurrent(cell="gru", steps=5, hidden=4, clip="norm", clip_threshold=3.0)
    head = str(gb.diagnose(gb.backprop(rnn, gb.init_params(rnn, 0), gb.sequence_input(rnn, 2, 1)))).splitlines()[0]
    assert "no effect" not in head and "clip norm 3 on signal" in head, head
