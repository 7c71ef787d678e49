"""gradbench.theory against closed forms, independent quadrature, and simulations."""

import math
import re

import numpy as np
import pytest
from scipy import integrate

import gradbench as gb
from gradbench import theory


def _quad_expect(f):
    return integrate.quad(lambda z: f(z) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi), -np.inf, np.inf,
                          points=None, limit=200)[0]


@pytest.mark.parametrize("slope", [0.0, 0.2, 0.5])
def test_relu_family_critical_line_closed_form(slope):
    # chi_1 = sigma_w^2 (1 + slope^2) / 2 whatever q: critical at sigma_w^2 = 2 / (1 + slope^2)
    act = "relu" if slope == 0 else "leaky_relu"
    param = None if slope == 0 else slope
    s_c = theory.critical_sigma_w(act, 0.0, param)
    assert s_c**2 == pytest.approx(2 / (1 + slope**2), rel=1e-10)
    assert theory.chi1(act, 1.3, 0.0, param) == pytest.approx(1.69 * (1 + slope**2) / 2, rel=1e-12)


@pytest.mark.parametrize("activation,sigma_w,sigma_b", [
    ("tanh", 1.5, 0.1), ("tanh", 2.5, 0.3), ("sigmoid", 1.0, 0.0), ("erf_like_gelu", 1.2, 0.2),
])
def test_fixed_point_and_chi1_match_adaptive_quadrature(activation, sigma_w, sigma_b):
    if activation == "erf_like_gelu":
        activation = "gelu"
        phi = lambda z: 0.5 * z * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
        dphi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2))) + z * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    elif activation == "tanh":
        phi, dphi = math.tanh, lambda z: 1 - math.tanh(z) ** 2
    else:
        phi = lambda z: 0.5 * (1 + math.tanh(z / 2))  # noqa: E731
        dphi = lambda z: phi(z) * (1 - phi(z))  # noqa: E731
    q = 1.0
    for _ in range(300):
        q = sigma_w**2 * _quad_expect(lambda z: phi(math.sqrt(q) * z) ** 2) + sigma_b**2
    chi = sigma_w**2 * _quad_expect(lambda z: dphi(math.sqrt(q) * z) ** 2)
    mf = theory.mean_field(activation, sigma_w, sigma_b)
    assert mf.q_star == pytest.approx(q, rel=1e-8)
    assert mf.chi1 == pytest.approx(chi, rel=1e-8)


def test_classic_edge_of_chaos_point():
    # sigma_w^2 = 1.76, sigma_b^2 = 0.05 lies on the tanh critical line (Schoenholz et al.)
    assert theory.critical_sigma_w("tanh", math.sqrt(0.05)) ** 2 == pytest.approx(1.76, abs=0.01)
    assert theory.mean_field("tanh", math.sqrt(1.76), math.sqrt(0.05)).phase == "critical"
    assert theory.mean_field("tanh", 0.9, 0.05).phase.startswith("ordered")
    assert theory.mean_field("tanh", 2.5, 0.3).phase.startswith("chaotic")


def test_newman_formula_small_cases():
    # N = 1: E ln|w| for w ~ N(0, s^2) is ln s - (gamma + ln 2)/2
    s = 0.7
    assert theory.newman_lambda1(1, s) == pytest.approx(math.log(s) - (np.euler_gamma + math.log(2)) / 2, rel=1e-12)
    # N = 2: psi(1) = -gamma
    assert theory.newman_lambda1(2, 1.0) == pytest.approx(0.5 * (math.log(1.0) - np.euler_gamma), rel=1e-12)


def test_100000_layer_linear_stack_decays_at_newmans_rate():
    L, N = 100_000, 4
    stack = gb.Stack(depth=L, width=N, activation="identity", init="normal")
    params = gb.init_params(stack, seed=3)
    x = gb.gaussian_input(stack, batch=2, seed=4)
    res = gb.backprop(stack, params, x, backend="auto")
    ln_s = res.signal_norm.log10() * math.log(10)
    assert np.all(np.isfinite(ln_s))
    # ln ||dL/dh_l|| falls by lambda_1 per layer going down; block means give the standard error
    rate = np.diff(ln_s[::-1])  # per-layer change, from the top down
    blocks = rate[: (len(rate) // 100) * 100].reshape(100, -1).mean(axis=1)
    est, se = blocks.mean(), blocks.std(ddof=1) / math.sqrt(len(blocks))
    lam = theory.newman_lambda1(N, 1.0)
    assert abs(est - lam) < 4 * se, f"measured {est:.5f} +- {se:.5f}, Newman {lam:.5f}"
    assert se < 0.01  # the test has power: lambda_1 = -0.135 is resolved to a few percent


@pytest.mark.parametrize("sigma_w,sigma_b", [(0.9, 0.05), (math.sqrt(1.76), math.sqrt(0.05)), (2.5, 0.3)])
def test_wide_tanh_simulation_matches_chi1(sigma_w, sigma_b):
    L, N = 120, 256
    stack = gb.Stack(depth=L, width=N, activation="tanh", init="normal", sigma_w=sigma_w, sigma_b=sigma_b)
    mf = theory.mean_field(stack)
    slopes = []
    for seed in range(2):
        params = gb.init_params(stack, seed=seed)
        x = gb.gaussian_input(stack, batch=16, seed=seed + 10) * math.sqrt(mf.q_star or 1.0)
        res = gb.backprop(stack, params, x, backend="auto")
        lg = res.signal_norm.log10()[10 : L - 10]
        slopes.append(-np.polyfit(np.arange(len(lg)), lg, 1)[0])  # change per layer going down
    # finite width: the per-layer factor fluctuates with relative size ~ 1/sqrt(N B)
    assert np.mean(slopes) == pytest.approx(mf.decades_per_layer, abs=0.006)


def test_lyapunov_spectrum_closed_forms():
    # orthogonal linear layers scaled by g: every exponent is exactly ln g
    stack = gb.Stack(depth=50, width=6, activation="identity", init="orthogonal", sigma_w=1.3)
    params = gb.init_params(stack, seed=0)
    spec = theory.lyapunov_spectrum(stack, params, np.ones(6))
    np.testing.assert_allclose(spec, math.log(1.3), atol=1e-12)
    # Gaussian linear layers: the top exponent is Newman's lambda_1
    stack = gb.Stack(depth=20_000, width=3, activation="identity", init="normal")
    params = gb.init_params(stack, seed=1)
    top = theory.lyapunov_spectrum(stack, params, np.ones(3), k=1)[0]
    assert top == pytest.approx(theory.newman_lambda1(3), abs=0.02)


def test_lyapunov_of_residual_identity_blocks():
    # residual groups of 2 identity layers with W = c I: each group maps h -> (1 + alpha c^2) h
    stack = gb.Stack(depth=40, width=3, activation="identity", residual=2, residual_scale=0.5)
    params = gb.init_params(stack, seed=0)
    params.W[:] = 0.8 * np.eye(3)
    spec = theory.lyapunov_spectrum(stack, params, np.ones(3))
    np.testing.assert_allclose(spec, math.log(1 + 0.5 * 0.64) / 2, atol=1e-12)


def test_theory_cli_prints_and_writes_the_predictions(tmp_path, capsys):
    from gradbench.cli import main

    out = tmp_path / "t.json"
    plot_path = tmp_path / "t.png"
    rc = main(["theory", "--activation", "tanh", "--sigma-w", "1.5", "--sigma-b", "0.1", "--depth", "60",
               "--width", "64", "--backend", "numpy", "--out", str(out), "--plot", str(plot_path)])
    assert rc == 0
    import json

    d = json.loads(out.read_text())
    mf = theory.mean_field("tanh", 1.5, 0.1)
    assert d["chi1"] == mf.chi1 and d["q_star"] == mf.q_star
    assert d["simulated_decades_per_layer"] == pytest.approx(mf.decades_per_layer, abs=0.03)
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot_path.stat().st_size > 10_000
    assert "chaotic" in capsys.readouterr().out
    assert main(["theory", "--activation", "tanh", "--plot", str(plot_path)]) == 2  # no simulation to plot
    assert main(["theory", "--activation", "sigmod"]) == 2


def test_theory_plot_shows_the_exact_norms_and_the_line():
    from gradbench import plot

    stack = gb.Stack(depth=30, width=8, activation="tanh")
    res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 4, 1), backend="numpy")
    fig = plot.theory_vs_simulation(res, -0.05)
    sim, line = fig.axes[0].lines[:2]
    np.testing.assert_array_equal(sim.get_ydata(), res.signal_norm.log10())
    s = res.signal_norm.log10()
    shape = (29 - np.arange(30)) * -0.05  # placed at the simulation's mean height (least squares)
    np.testing.assert_allclose(line.get_ydata(), shape + np.mean(s - shape))


def test_theory_plot_draws_chi_1_along_the_stack_placed_in_the_fitted_window():
    """ELU at the He gain: the prediction is a curve (+0.049 decades a layer at layer 0, +0.007
    at the top), drawn as such and placed where the slope is fitted, not at the top layer, whose
    signal carries the loss's own start (there the line read 10^4.9 at layer 0 against 10^6.0)."""
    from gradbench import plot

    stack = gb.Stack(depth=200, width=64, activation="elu", init="normal", sigma_w=math.sqrt(2))
    res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 8, 1))
    along = theory.along_stack(stack)
    fig = plot.theory_vs_simulation(res, along.fitted_rate(20, 180), curve=along.signal_log10(), window=(20, 180))
    line = fig.axes[0].lines[1]
    s, c = res.signal_norm.log10(), along.signal_log10()
    np.testing.assert_allclose(line.get_ydata(), c + np.mean(s[20:180] - c[20:180]))
    assert np.ptp(np.diff(line.get_ydata())) > 0.02  # a curve, not a line


# Off the usual range of gains: closed forms that quadrature on one panel of [-12, 12] misses
# (it put tanh's chi_1 at sigma_w = 1e4 at 0.05, "vanishing", instead of ~5319) and that
# sigma_w**2 overflows (sigma_w >= 1e154) or underflows (sigma_w <= 1e-162).
# Large sigma_w: q* -> sigma_w^2 E[phi(inf z)^2] and, with s = sqrt(q*),
# E[phi'(s z)^2] -> (1 / (s sqrt(2 pi))) * integral of phi'(x)^2 over the line:
# tanh: integral sech^4 = 4/3, q* -> sigma_w^2, chi_1 / sigma_w -> 4 / (3 sqrt(2 pi));
# sigmoid: integral (s(1-s))^2 = 1/6, q* -> sigma_w^2 / 2, chi_1 / sigma_w -> 1 / (6 sqrt(pi)).
@pytest.mark.parametrize("activation,slope,q_ratio", [
    ("tanh", 4 / (3 * math.sqrt(2 * math.pi)), 1.0), ("sigmoid", 1 / (6 * math.sqrt(math.pi)), 0.5),
])
@pytest.mark.parametrize("sigma_w", [1e4, 1e8, 1e100, 1e200, 1e300])
def test_bounded_activations_at_huge_gains_follow_the_asymptote(activation, slope, q_ratio, sigma_w):
    mf = theory.mean_field(activation, sigma_w, 0.0)
    assert mf.log10_chi1 == pytest.approx(math.log10(slope * sigma_w), abs=1e-3)  # O(1/sigma_w) corrections
    assert mf.log10_q_star == pytest.approx(math.log10(q_ratio * sigma_w**2) if sigma_w < 1e150 else
                                            math.log10(q_ratio) + 2 * math.log10(sigma_w), abs=1e-3)
    assert mf.phase == "chaotic (exploding)" and mf.decades_per_layer == pytest.approx(0.5 * mf.log10_chi1)
    assert mf.depth_scale == pytest.approx(1 / (mf.log10_chi1 * math.log(10)))
    if sigma_w < 1e150:
        assert mf.chi1 == pytest.approx(10**mf.log10_chi1, rel=1e-12)
        assert theory.chi1(activation, sigma_w) == pytest.approx(mf.chi1, rel=1e-12)


@pytest.mark.parametrize("activation,sigma_w", [("tanh", 1e3), ("tanh", 37.0), ("sigmoid", 300.0), ("gelu", 1.0)])
def test_mid_range_gains_match_adaptive_quadrature_with_the_transition_as_a_breakpoint(activation, sigma_w):
    # scipy's adaptive quadrature on [-12, 12], told where phi(s z) turns (|z| ~ 1 / s), as oracle
    code = gb.abi.ACT_CODE[activation]

    def expect(f, s):
        pts = sorted({-min(12.0, 40 / s), -1 / s, 0.0, 1 / s, min(12.0, 40 / s)})
        g = lambda z: f(s * z) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
        return integrate.quad(g, -12, 12, points=pts, limit=500, epsabs=0, epsrel=1e-13)[0]

    def f2(x):
        return float(gb.activations.phi(np.array([x]), code, 0.0)[0]) ** 2

    def df2(x):
        return float(gb.activations.dphi(np.array([x]), code, 0.0)[0]) ** 2

    q = 1.0
    for _ in range(200):
        q = sigma_w**2 * expect(f2, math.sqrt(q)) + 0.01
    mf = theory.mean_field(activation, sigma_w, 0.1)
    assert mf.q_star == pytest.approx(q, rel=1e-9)
    assert mf.chi1 == pytest.approx(sigma_w**2 * expect(df2, math.sqrt(q)), rel=1e-9)


@pytest.mark.parametrize("activation,dphi0_sq", [("tanh", 1.0), ("sigmoid", 1 / 16), ("identity", 1.0),
                                                 ("gelu", 0.25), ("selu", None)])
def test_tiny_gains_give_chi1_sigma_w_squared_phi_prime_zero_squared(activation, dphi0_sq):
    # sigma_b = 0 and sigma_w = 1e-200: q* = 0, chi_1 = sigma_w^2 phi'(0)^2 = 10^(-400) phi'(0)^2 (a float's 0)
    mf = theory.mean_field(activation, 1e-200, 0.0)
    assert mf.q_star == 0.0 and mf.chi1 == 0.0 and mf.phase == "ordered (vanishing)"
    if dphi0_sq is None:  # SELU: phi' jumps at 0; the mean of its two sides' squares
        lam, alpha = 1.0507009873554805, 1.6732632423543772
        dphi0_sq = lam**2 * (1 + alpha**2) / 2
    assert mf.log10_chi1 == pytest.approx(-400 + math.log10(dphi0_sq), abs=1e-9)
    assert mf.decades_per_layer == pytest.approx(-200 + 0.5 * math.log10(dphi0_sq), abs=1e-9)


def test_homogeneous_fixed_point_is_the_closed_form():
    # q_{l+1} = r q_l + sigma_b^2 with r = sigma_w^2 E[phi(z)^2]: q* = sigma_b^2 / (1 - r) below r = 1
    assert theory.fixed_point("relu", 1.0, 0.1) == pytest.approx(0.01 / (1 - 0.5), rel=1e-13)
    assert theory.fixed_point("leaky_relu", 1.0, 1e7, 0.2) == pytest.approx(1e14 / (1 - 1.04 / 2), rel=1e-12)
    assert theory.fixed_point("identity", 1.0, 0.1) == math.inf  # r = 1: grows by sigma_b^2 a layer
    assert theory.fixed_point("identity", 1.0, 0.0, q0=3.0) == pytest.approx(3.0, rel=1e-15)
    assert theory.fixed_point("relu", 2.0, 0.0) == math.inf and theory.fixed_point("relu", 1.0, 0.0) == 0.0


def test_newman_lambda1_at_huge_gain_is_finite():
    assert theory.newman_lambda1(8, 1e200) == pytest.approx(theory.newman_lambda1(8, 1.0) + math.log(1e200), rel=1e-14)


@pytest.mark.parametrize("sigma_w", [1e-3, 0.01, 1e-100])
def test_sigmoid_lengths_do_not_shrink_to_zero_without_bias(sigma_w):
    """sigmoid(0) = 1/2: with sigma_b = 0 and small sigma_w, q* -> sigma_w^2 / 4, not 0 (the
    shortcut for lengths shrinking to zero holds only where phi(0) = 0)."""
    q = theory.mean_field("sigmoid", sigma_w, 0.0).q_star
    np.testing.assert_allclose(q, sigma_w**2 / 4, rtol=1e-4)
    assert theory.mean_field("tanh", 0.5, 0.0).q_star == 0.0  # tanh(0) = 0: they do shrink to 0


# Zero-bias GELU and swish have two attractors for sqrt(2) < sigma_w < 2 (the length map's ratio
# q_{l+1} / q_l is sigma_w^2 / 4 as q -> 0 and sigma_w^2 / 2 as q -> inf): the phase depends on
# where the map starts. A stack fed gaussian_input starts at q0 = sigma_w^2 E[x^2] = sigma_w^2, and
# so must the prediction (from q0 = 1 it read q* = 0, -0.125 decades per layer for GELU at 1.5,
# where a stack measures +0.0255). The cases stay well away from the jump: near it (q0 within ~10 %
# of the point between the attractors) a finite stack's own fluctuations decide.
@pytest.mark.parametrize("activation,sigma_w,phase", [
    ("gelu", 1.5, "chaotic (exploding)"),  # q0 = 2.25 above the point between the attractors, 1.40
    ("swish", 1.6, "chaotic (exploding)"),  # q0 = 2.56 above 1.74
    ("swish", 1.5, "ordered (vanishing)"),  # q0 = 2.25 below 4.42: the other side of the jump
    ("gelu", 1.42, "ordered (vanishing)"),  # q0 = 2.02 below 12.0
])
def test_zero_bias_gelu_and_swish_are_predicted_from_the_stacks_first_pre_activation(activation, sigma_w, phase):
    L, N = 200, 256
    stack = gb.Stack(depth=L, width=N, activation=activation, init="normal", sigma_w=sigma_w)
    mf = theory.mean_field(stack)
    # the independent computation: exact runs of the stack, fed what `gradbench theory` feeds it
    slopes = []
    for seed in range(2):
        x = gb.gaussian_input(stack, 16, seed=np.random.default_rng([seed, 1]))
        res = gb.backprop(stack, gb.GeneratedParams(stack, seed), x, backend="auto")
        lg = res.signal_norm.log10()[20 : L - 20]
        assert np.all(np.isfinite(lg))
        slopes.append(-np.polyfit(np.arange(len(lg)), lg, 1)[0])  # change per layer going down
    assert np.mean(slopes) == pytest.approx(mf.decades_per_layer, abs=0.006), (slopes, mf)
    assert mf.phase == phase
    assert mf.q0 == pytest.approx(sigma_w**2, rel=1e-15) and mf.bistable and mf.depends_on_q0
    assert mf.q_star == (math.inf if phase.startswith("chaotic") else 0.0)
    two = theory.bistability(activation, sigma_w)
    assert two.q_separatrix == mf.q_separatrix and (mf.q0 > two.q_separatrix) == phase.startswith("chaotic")
    # the name API starts at the same q0 (a standard normal input); from the other side of the
    # point between the attractors the other phase
    assert theory.mean_field(activation, sigma_w).chi1 == mf.chi1 == theory.chi1(activation, sigma_w)
    other = theory.mean_field(activation, sigma_w, q0=two.q_separatrix * (0.5 if mf.q_star else 2.0))
    assert other.phase != mf.phase and other.chi1 in (two.chi1_low, two.chi1_high)


def test_bistability_is_found_only_where_two_attractors_exist():
    # zero bias: exactly sqrt(2) < sigma_w < 2 for GELU and swish; a small bias keeps both attractors
    for act in ("gelu", "swish"):
        assert theory.bistability(act, 1.41) is None and theory.bistability(act, 2.01) is None
        two = theory.bistability(act, 1.7)
        assert two.q_low == 0 and two.chi1_low == pytest.approx(1.7**2 / 4)
        assert two.chi1_high == pytest.approx(1.7**2 / 2)
        assert theory.length_map(two.q_separatrix, act, 1.7) == pytest.approx(two.q_separatrix, rel=1e-9)
        biased = theory.bistability(act, 1.5, 0.1)
        assert 0 < biased.q_low < biased.q_separatrix and biased.chi1_low < 1 < biased.chi1_high
        assert theory.fixed_point(act, 1.5, 0.1, q0=biased.q_separatrix / 2) == pytest.approx(biased.q_low, rel=1e-9)
        assert theory.fixed_point(act, 1.5, 0.1, q0=biased.q_separatrix * 2) == math.inf
    for act in ("tanh", "sigmoid", "relu", "leaky_relu", "identity", "elu", "selu"):
        for sw in (0.5, 1.0, 1.2, 1.5, 1.7, 2.5):
            for sb in (0.0, 0.1):
                assert theory.bistability(act, sw, sb) is None
                assert not theory.mean_field(act, sw, sb).bistable


def test_first_q_is_the_variance_of_the_first_pre_activation():
    rng = np.random.default_rng(0)
    for kw in (dict(init="normal", sigma_w=1.5, sigma_b=0.3), dict(init="xavier_uniform", sigma_w=0.7),
               dict(init="orthogonal", sigma_w=1.2, sigma_b=0.1, input_dim=500),
               dict(init="xavier_normal", sigma_b=0.2, input_dim=300), dict(init="he_normal", input_dim=4000)):
        stack = gb.Stack(depth=1, width=2000, activation="gelu", **kw)
        params = gb.init_params(stack, seed=1)
        x = 3.0 * rng.standard_normal((8, stack.d_in))
        h = x if params.W_in is None else x @ params.W_in.T + params.b_in
        z = h @ params.W[0].T + params.b[0]
        assert theory.first_q(stack, x) == pytest.approx(np.mean(z**2), rel=0.05), kw
        assert theory.mean_field(stack, x=x).q0 == theory.first_q(stack, x)
    stack = gb.Stack(depth=1, width=8, activation="gelu", init="normal", sigma_w=1.5, sigma_b=0.5)
    assert theory.first_q(stack) == theory.mean_field(stack).q0 == 2.25 + 0.25  # the standard normal input


def test_q0_leaves_one_attractor_maps_alone_and_is_q_star_where_the_map_is_neutral():
    # one attractor: the same q* from any start (to the iteration's tolerance)
    for act, sw, sb in (("tanh", 1.5, 0.1), ("sigmoid", 1.0, 0.0), ("selu", 1.2, 0.0), ("elu", 1.2, 0.1),
                        ("gelu", 1.2, 0.2)):
        mf = theory.mean_field(act, sw, sb)
        assert mf.q0 == pytest.approx(sw**2 + sb**2) and not mf.depends_on_q0 and math.isnan(mf.q_separatrix)
        assert theory.mean_field(act, sw, sb, q0=1.0).q_star == pytest.approx(mf.q_star, rel=1e-11)
    # r = 1 without bias: q stays at q0 (a ReLU stack at sigma_w^2 = 2 keeps its input's variance 2)
    mf = theory.mean_field("relu", math.sqrt(2))
    assert mf.q_star == pytest.approx(2.0, rel=1e-15) and mf.depends_on_q0 and mf.phase == "critical"
    assert theory.mean_field("identity", 1.0).q_star == 1.0
    # a huge gain: q0 = sigma_w^2 kept as a logarithm
    assert theory.mean_field("tanh", 1e200, 0.0).log10_q0 == pytest.approx(400.0)


def test_no_critical_line_where_the_map_is_bistable_and_the_jump_is_from_q0():
    for act, jump in (("gelu", 1.468), ("swish", 1.559)):
        with pytest.raises(ValueError) as err:
            theory.critical_sigma_w(act)
        msg = str(err.value)
        assert "bistable for 1.41421 < sigma_w < 2 (from a small first pre-activation variance q0" in msg
        assert "from q0 = sigma_w^2 + sigma_b^2 (a standard normal input) q* jumps from 0 to inf" in msg
        s = float(msg.split(" at sigma_w = ")[1].split()[0])
        assert s == pytest.approx(jump, abs=1e-3)
        # there the stack's start q0 = s^2 is the point between the attractors
        assert theory.bistability(act, s).q_separatrix == pytest.approx(s * s, rel=1e-4)


def test_theory_cli_states_q0_and_the_two_attractors(tmp_path, capsys):
    import json

    from gradbench.cli import main

    out = tmp_path / "g.json"
    assert main(["theory", "--activation", "gelu", "--sigma-w", "1.5", "--depth", "200", "--width", "256",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "start q0                2.25 = sigma_w^2 E[x^2] + sigma_b^2" in text
    assert "bistable                two attractors" in text and "q0 = 2.25 is above it" in text
    assert "+0.0255763 decades going down" in text and "(chaotic (exploding))" in text
    d = json.loads(out.read_text())
    assert d["q0"] == 2.25 and d["q_star"] == "inf" and d["chi1"] == pytest.approx(1.125)
    assert d["q_separatrix"] == pytest.approx(1.40178, rel=1e-5) and "two attractors" in d["bistability"]
    assert d["simulated_decades_per_layer"] == pytest.approx(d["decades_per_layer"], abs=0.006)
    # one attractor: no q0 line, and the JSON says there is no second one
    assert main(["theory", "--activation", "tanh", "--sigma-w", "1.5", "--sigma-b", "0.1", "--out", str(out)]) == 0
    assert "start q0" not in capsys.readouterr().out
    d = json.loads(out.read_text())
    assert d["q0"] == pytest.approx(2.26) and d["q_separatrix"] is None and d["bistability"] is None


def _lyapunov(**kw):
    stack = gb.Stack(depth=2, width=3, activation="tanh")
    return theory.lyapunov_spectrum(stack, gb.init_params(stack, 0), np.ones(3), **kw)


@pytest.mark.parametrize("call,error,message", [
    (lambda: theory.mean_field("tanh", sigma_w=-1.5), ValueError, "sigma_w must be > 0, got -1.5"),
    (lambda: theory.mean_field("tanh", sigma_w=0.0), ValueError, "sigma_w must be > 0"),
    (lambda: theory.mean_field("tanh", sigma_w=float("nan")), ValueError, "sigma_w must be finite"),
    (lambda: theory.mean_field("tanh", sigma_w=True), TypeError, "sigma_w must be a real number, got bool"),
    (lambda: theory.mean_field("tanh", sigma_w="1.2"), TypeError, "sigma_w must be a real number, got str"),
    (lambda: theory.mean_field("tanh", 1.0, sigma_b=-0.3), ValueError, "sigma_b must be >= 0, got -0.3"),
    (lambda: theory.mean_field("tanh", 1.0, sigma_b=float("nan")), ValueError, "sigma_b must be finite"),
    (lambda: theory.mean_field("elu", 1.2, param=-1.0), ValueError, r"activation_param must be > 0 for elu \(its alpha\)"),
    (lambda: theory.mean_field("tanh", 1.2, param=0.5), ValueError, "activation='tanh' takes none"),
    (lambda: theory.mean_field("leaky_relu", 1.2, param=1e300), ValueError,
     "in float64 activation_param must be 0 or between 1e-290 and 1e290 in magnitude"),
    (lambda: theory.mean_field("tanh", 1.2, q0=-1.0), ValueError, "q0 must be >= 0, got -1.0"),
    (lambda: theory.mean_field(gb.Stack(depth=1, width=2), param=0.5), ValueError, "activation='tanh' takes none"),
    (lambda: theory.mean_field(gb.Stack(depth=1, width=2), sigma_w=-1.0), ValueError, "sigma_w must be > 0"),
    (lambda: theory.mean_field("Tanh", 1.2), ValueError, "did you mean 'tanh'"),
    (lambda: theory.fixed_point("tanh", 1.5, q0=float("nan")), ValueError, "q0 must be finite"),
    (lambda: theory.fixed_point("tanh", 1.5, tol=0.0), ValueError, "tol must be > 0"),
    (lambda: theory.fixed_point("tanh", 1.5, max_iter=2.5), TypeError, "max_iter must be an int"),
    (lambda: theory.chi1("tanh", 1.2, q=-1.0), ValueError, "q must be >= 0"),
    (lambda: theory.chi1("tanh", 1.2, q=1.0, q0=1.0), ValueError, "not both"),
    (lambda: theory.length_map(float("inf"), "tanh", 1.2), ValueError, "q must be finite"),
    (lambda: theory.bistability("gelu", 1.5, sigma_b=-0.1), ValueError, "sigma_b must be >= 0"),
    (lambda: theory.critical_sigma_w("relu", sigma_b=-0.1), ValueError, "sigma_b must be >= 0"),
    (lambda: theory.critical_sigma_w("tanh", bracket=(2.0, 1.0)), ValueError, "lo < hi"),
    (lambda: theory.critical_sigma_w("tanh", bracket=(-1.0, 2.0)), ValueError, r"bracket\[0\] must be > 0"),
    (lambda: theory.newman_lambda1(0), ValueError, "width must be >= 1, got 0"),
    (lambda: theory.newman_lambda1(2.5), TypeError, "width must be an int, got float"),
    (lambda: theory.newman_lambda1(True), TypeError, "width must be an int, got bool"),
    (lambda: theory.newman_lambda1(4, sigma_w=-1.0), ValueError, "sigma_w must be > 0"),
    (lambda: theory.first_q("tanh"), TypeError, "stack must be a gradbench.Stack"),
    # "sigma_w is required when an activation name is given", where none was
    (lambda: theory.mean_field(42), TypeError, r"first argument must be a gradbench.Stack or an activation name "
                                               r"\(identity, sigmoid, .*gelu\), got int"),
    (lambda: theory.mean_field(gb.Recurrent(cell="rnn", steps=3, hidden=2), 1.0), TypeError, "got Recurrent"),
    (lambda: theory.along_stack(None, depth=3, sigma_w=1.0), TypeError, "got NoneType"),
    (lambda: _lyapunov(k=True), TypeError, "k must be an int"),
    (lambda: _lyapunov(k=4), ValueError, r"k must be in \[1, 3\]"),
])
def test_theory_refuses_invalid_inputs_naming_the_parameter(call, error, message):
    """The theory API took what Stack and the CLI refuse: a negative sigma_w read as chi_1 = 0,
    "ordered"; NaN sigma_b as 0; a negative sigma_b as 0; ELU alpha -1; a param tanh has not; a
    negative q0; width 2.5 or True; a str sigma_w failed with "'>' not supported". Each is now
    refused as Stack refuses it, naming the parameter and what it may be."""
    with pytest.raises(error, match=message):
        call()


def test_numpy_scalars_and_extreme_gains_are_taken_as_the_numbers_they_are():
    # NumPy scalars are the floats they hold: ReLU chi_1 = sigma_w^2 / 2 at any q (closed form)
    assert theory.mean_field("relu", np.float32(1.5), np.float64(0.0)).chi1 == pytest.approx(1.125, rel=1e-14)
    assert theory.newman_lambda1(np.int64(4)) == pytest.approx(theory.newman_lambda1(4), rel=0)
    # any finite sigma_w > 0 (the maps run in logarithms): tanh's closed forms at both ends of the floats
    big, tiny = 1.7976931348623157e308, 5e-324
    assert theory.mean_field("tanh", big).log10_chi1 == pytest.approx(
        math.log10(big) + math.log10(4 / (3 * math.sqrt(2 * math.pi))), abs=1e-9)
    assert theory.mean_field("tanh", tiny).log10_chi1 == pytest.approx(2 * math.log10(tiny), abs=1e-9)
    # q0 = 0 is a zero input (as x of zeros gives): sigmoid(0) = 1/2 starts the map at sigma_w^2 / 4
    assert theory.fixed_point("sigmoid", 1e-3, q0=0.0) == pytest.approx(1e-6 / 4, rel=1e-4)
    # a Stack's param is replaced by param= as its gain by sigma_w= (it was ignored): leaky ReLU's
    # chi_1 = sigma_w^2 (1 + slope^2) / 2 at any q
    stack = gb.Stack(depth=1, width=2, activation="leaky_relu", init="normal", sigma_w=1.2)
    assert theory.mean_field(stack).chi1 == pytest.approx(1.44 * (1 + 0.01**2) / 2, rel=1e-12)
    assert theory.mean_field(stack, param=-0.5).chi1 == pytest.approx(1.44 * 1.25 / 2, rel=1e-12)


@pytest.mark.parametrize("field,value", [("residual", 1), ("batch_norm", True), ("clip", "value")])
def test_mean_field_refuses_the_stacks_it_does_not_describe(field, value):
    """The Poole/Schoenholz map describes plain stacks; for a residual tanh stack it read
    -0.077 decades per layer, "ordered", where the stack measures +0.019 (checked here with exact
    runs), and batch norm and clipping were dropped as silently. Refused, naming the field; the
    plain stack's prediction is one replace() away."""
    stack = gb.Stack(depth=100, width=256, activation="tanh", init="normal", sigma_w=1.0, sigma_b=0.3, **{field: value})
    with pytest.raises(ValueError, match=rf"not this stack's {field}={value!r} \(each changes how lengths or gradients go"):
        theory.mean_field(stack)
    plain = stack.replace(residual=0, batch_norm=False, clip=None)
    assert theory.mean_field(plain).phase == "ordered (vanishing)"
    if field == "residual":  # the map's rate is not what the residual stack does
        res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 16, 1))
        measured = -np.polyfit(np.arange(10, 90), res.signal_norm.log10()[10:90], 1)[0]
        assert measured > 0 > theory.mean_field(plain).decades_per_layer


def _quad_fixed_point(phi, sigma_w, q0, steps=400):
    """The length map iterated with adaptive quadrature (zero bias) from q0: its last q."""
    q = q0
    for _ in range(steps):
        q = sigma_w**2 * _quad_expect(lambda z: phi(math.sqrt(q) * z) ** 2)
        if q < 1e-300:
            break
    return q


@pytest.mark.parametrize("sigma_w,q0", [(0.5, 1e-20), (0.5, 1e-14), (0.9, 1e-16), (1e-7, None)])
def test_lengths_that_shrink_to_zero_read_zero_from_any_start(sigma_w, q0):
    """tanh with sigma_b = 0 and sigma_w < 1: q -> 0 from every start (the independent iteration
    falls by 30 decades in 400 layers, and on). From q0 below ~1e-13 one step passed the
    convergence test before the 'falling below 1e-3 -> 0' rule and q* read q_1 (2.5e-21 at
    q0 = 1e-20)."""
    start = sigma_w**2 if q0 is None else q0
    assert _quad_fixed_point(math.tanh, sigma_w, start) < 1e-30 * start
    mf = theory.mean_field("tanh", sigma_w, q0=q0)
    assert mf.q_star == 0.0 and theory.fixed_point("tanh", sigma_w, q0=q0) == 0.0
    assert mf.chi1 == pytest.approx(sigma_w**2, rel=1e-12)  # sigma_w^2 tanh'(0)^2 at q -> 0


@pytest.mark.parametrize("q0", [1e-14, 1e-20, 1e-300])
def test_a_tiny_start_still_reaches_the_attractor(q0):
    """tanh at sigma_w = 1.5 from a tiny q0: one step moved q by less than the absolute tolerance
    and q* read 2.25 q0 with chi_1 = 2.25; the iteration (with adaptive quadrature here) goes on
    to the attractor 0.793, chi_1 = 1.139, as from q0 = 1."""
    q = _quad_fixed_point(math.tanh, 1.5, 1.0)
    chi = 2.25 * _quad_expect(lambda z: (1 - math.tanh(math.sqrt(q) * z) ** 2) ** 2)
    mf = theory.mean_field("tanh", 1.5, q0=q0)
    assert mf.q_star == pytest.approx(q, rel=1e-8) and mf.chi1 == pytest.approx(chi, rel=1e-8)


# Extreme inputs the validation accepts (a large ELU alpha or leaky slope, a huge or tiny sigma_b),
# against closed forms. ELU with alpha and s = sqrt(q), from E[e^{a z}; z < 0] = erfcx(a / sqrt 2) / 2:
#   E[phi(s z)^2]  = s^2 / 2 + alpha^2 (1/2 - erfcx(s / sqrt 2) + erfcx(sqrt 2 s) / 2)
#   E[phi'(s z)^2] = 1/2 + alpha^2 erfcx(sqrt 2 s) / 2
def _elu_closed_form(alpha, sigma_w, sigma_b):
    """ln q* (Brent's method on the closed-form length map in t = ln q) and ln chi_1 there."""
    from scipy import optimize, special

    lw, lb, la = 2 * math.log(sigma_w), 2 * math.log(sigma_b), math.log(alpha)

    def log_map(t):
        s = math.exp(t / 2)
        neg = 0.5 - special.erfcx(s / math.sqrt(2)) + special.erfcx(math.sqrt(2) * s) / 2
        return float(np.logaddexp(lw + np.logaddexp(t - math.log(2), 2 * la + math.log(neg)), lb))

    # the map is >= sigma_b^2, and for sigma_w <= 1 below q past alpha^2 + 2 sigma_b^2; its ratio
    # q_{l+1} / q_l falls with q (N(s) / s^2 falls): one crossing between
    lo, hi = lb, float(np.logaddexp(2 * la, math.log1p(2 * sigma_b**2))) + 1.0
    t = optimize.brentq(lambda u: log_map(u) - u, lo, hi, xtol=1e-14, rtol=1e-15)
    s = math.exp(t / 2)
    log_chi = lw + float(np.logaddexp(-math.log(2), 2 * la + math.log(special.erfcx(math.sqrt(2) * s) / 2)))
    return t, log_chi


@pytest.mark.parametrize("alpha", [1e7, 1e160])
def test_elu_with_a_large_alpha_has_the_closed_forms_fixed_point(alpha):
    """ELU's negative side saturates at -alpha: at sigma_w = 1 the length map has its fixed point
    near alpha^2 (1e14 for alpha = 1e7), where chi_1 ~ alpha / (2 sqrt(2 pi)) (exploding). The
    rule 'past q = 1e12 an unbounded map is linear' read q* = inf and chi_1 = 0.5 (vanishing);
    at alpha = 1e160 alpha^2 overflowed the quadrature."""
    t, log_chi = _elu_closed_form(alpha, 1.0, 0.1)
    mf = theory.mean_field("elu", 1.0, 0.1, param=alpha)
    assert mf.log10_q_star == pytest.approx(t / math.log(10), rel=1e-13)
    assert mf.log10_chi1 == pytest.approx(log_chi / math.log(10), rel=1e-11)
    assert mf.phase == "chaotic (exploding)" and not mf.depends_on_q0
    assert theory.bistability("elu", 1.0, 0.1, alpha) is None  # ELU's map has one attractor
    if alpha < 1e150:
        assert mf.q_star == pytest.approx(math.exp(t), rel=1e-12)
        assert mf.chi1 == pytest.approx(math.exp(log_chi), rel=1e-10)
        assert theory.fixed_point("elu", 1.0, 0.1, alpha) == mf.q_star
        assert theory.chi1("elu", 1.0, 0.1, alpha) == mf.chi1
    else:  # q* ~ 1e320 is past the largest float; its logarithm is not
        assert mf.q_star == math.inf and math.isfinite(mf.log10_q_star) and 0 < mf.chi1 < math.inf
    # above sigma_w^2 = 2 lengths grow without bound: chi_1 is the limit q -> inf, sigma_w^2 / 2
    grows = theory.mean_field("elu", 1.5, 0.1, param=alpha)
    assert grows.q_star == math.inf and grows.log10_q_star == math.inf
    assert grows.chi1 == pytest.approx(1.125, rel=1e-12)


def test_elu_critical_sigma_w_with_a_large_alpha_is_the_closed_forms():
    """alpha = 1e7 at sigma_b = 0.1 puts the critical line at sigma_w = 1.934e-7, where q* ~ 0.2.
    Brent's method stopped at 1e-12 in sigma_w (5e-8 of it, relative); now at 1e-12 times the
    bracket's upper end below 1. A leaky slope of 1e160 (next test) puts it at sqrt(2) 1e-160,
    where 1e-12 returned the bracket's end. chi_1 exceeds 1 over the default bracket (0.05, 20)."""
    from scipy import optimize

    alpha, sigma_b = 1e7, 0.1
    root = optimize.brentq(lambda s: _elu_closed_form(alpha, s, sigma_b)[1], 1e-8, 1e-6, xtol=1e-22, rtol=1e-14)
    assert theory.critical_sigma_w("elu", sigma_b, alpha, bracket=(1e-8, 1e-6)) == pytest.approx(root, rel=1e-9, abs=0)
    with pytest.raises(ValueError, match="does not change sign"):
        theory.critical_sigma_w("elu", sigma_b, alpha)


def test_a_huge_leaky_slope_keeps_its_logarithms():
    """Leaky ReLU with slope a: r = sigma_w^2 (1 + a^2) / 2 = chi_1, q* = sigma_b^2 / (1 - r) below
    r = 1. a = 1e160 squared to inf inside the quadrature: chi_1 read 10^inf at sigma_w = 1 and
    q* = inf at sigma_w = 1e-160, where r = 1/2."""
    a = 1e160
    mf = theory.mean_field("leaky_relu", 1.0, 0.1, param=a)
    assert mf.q_star == math.inf and mf.log10_q_star == math.inf  # r = 5e319: grows without bound
    assert mf.log10_chi1 == pytest.approx(2 * math.log10(a) - math.log10(2), rel=1e-14) and mf.chi1 == math.inf
    r = 1e-320 * 0.5 + 0.5  # sigma_w^2 (1 + a^2) / 2 at sigma_w = 1e-160
    small = theory.mean_field("leaky_relu", 1e-160, 0.1, param=a)
    assert small.q_star == pytest.approx(0.01 / (1 - r), rel=1e-13, abs=0) and small.chi1 == pytest.approx(r, rel=1e-13)
    assert theory.length_map(1.0, "leaky_relu", 1e-160, 0.1, a) == pytest.approx(r + 0.01, rel=1e-13)
    assert theory.critical_sigma_w("leaky_relu", 0.0, a, bracket=(1e-161, 1e-159)) == pytest.approx(
        math.sqrt(2) / a, rel=1e-10, abs=0)


def test_a_huge_bias_gives_its_fixed_point_in_logarithms():
    """sigma_b = 1e160: q* ~ 1e320 is past the largest float, so q_star reads inf (as q0 does),
    while log10_q_star holds it; lengths that grow without bound read inf in both. tanh (bounded):
    q* = sigma_b^2 + sigma_w^2 E[tanh^2] = 1e320 to rounding, chi_1 -> 4 / (3 sqrt(2 pi) sqrt(q*)).
    GELU, ELU and swish are linear at that scale: q* = sigma_b^2 / (1 - sigma_w^2 / 2) = 2e320,
    chi_1 = sigma_w^2 / 2, one attractor; phi^2 overflowed there and read q* = inf, lengths growing
    without bound (and with phi^2 summed in range, the ratio's limit q -> inf read at q = 1e200,
    where sigma_b^2 / q is 1e120, made a second attractor of the fixed point)."""
    mf = theory.mean_field("tanh", 1.0, 1e160)
    assert mf.q_star == math.inf and mf.log10_q_star == pytest.approx(320.0, abs=1e-12)
    assert mf.q0 == math.inf and mf.log10_q0 == pytest.approx(320.0, abs=1e-12)
    assert mf.log10_chi1 == pytest.approx(math.log10(4 / (3 * math.sqrt(2 * math.pi))) - 160, abs=1e-9)
    for act in ("gelu", "elu", "swish"):
        mf = theory.mean_field(act, 1.0, 1e160)
        assert mf.q_star == math.inf and mf.log10_q_star == pytest.approx(320 + math.log10(2), abs=1e-12), act
        assert mf.chi1 == pytest.approx(0.5, rel=1e-12) and not mf.depends_on_q0 and not mf.bistable
        assert theory.bistability(act, 1.0, 1e160) is None
    assert theory.length_map(1e308, "gelu", 0.1) == pytest.approx(0.01 * 1e308 / 2, rel=1e-12)
    relu = theory.mean_field("relu", 1e160, 0.1)  # grows without bound; chi_1 = sigma_w^2 / 2 past the floats
    assert relu.q_star == relu.log10_q_star == math.inf and relu.chi1 == math.inf
    assert relu.log10_chi1 == pytest.approx(320 - math.log10(2), rel=1e-14) and relu.phase == "chaotic (exploding)"


def _tanh_fixed_point(sigma_w, sigma_b, lo, hi):
    """q* of tanh's length map by Brent's method in q, with adaptive quadrature."""
    from scipy import optimize

    def expect(q):
        g = lambda z: math.tanh(math.sqrt(q) * z) ** 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
        return 2 * integrate.quad(g, 0, 40, epsabs=0, epsrel=2e-14, limit=200)[0]

    return optimize.brentq(lambda q: sigma_w**2 * expect(q) + sigma_b**2 - q, lo, hi, xtol=1e-22, rtol=1e-14)


@pytest.mark.parametrize("activation,sigma_w,r0", [("tanh", 0.9, 0.81), ("elu", 0.99, 0.9801)])
def test_slow_approaches_reach_their_fixed_point(activation, sigma_w, r0):
    """An iteration still moving after max_iter steps stopped there and called that q*. tanh at
    sigma_w = 1, sigma_b = 1e-5 approaches algebraically (q_l ~ 1 / (2 l)) and read 1.0e-4 for
    q* = 7.07e-6; with sigma_b = 1e-300 lengths shrink by r0 = sigma_w^2 phi'(0)^2 (ELU: alpha = 1 on
    both sides) a layer down to q* = sigma_b^2 / (1 - r0), where phi is linear to the last bit:
    10^-598.3 for ELU at 0.99, which read 10^-46.8 after 5000 layers, and 10^-599.3 for tanh at
    0.9, which read sigma_b^2 = 10^-600 once tanh(s z)^2 underflowed. ELU at sigma_w^2 = 2 (1 + 1e-4)
    grows without bound (its ratio's limit q -> inf is 1.0001) and read 6253."""
    q = _tanh_fixed_point(1.0, 1e-5, 1e-6, 1e-4)
    assert theory.fixed_point("tanh", 1.0, 1e-5) == pytest.approx(q, rel=1e-8, abs=0)
    assert theory.mean_field("tanh", 1.0, 1e-5).q_star == pytest.approx(q, rel=1e-8, abs=0)
    mf = theory.mean_field(activation, sigma_w, 1e-300)
    assert mf.q_star == 0.0 and mf.log10_q_star == pytest.approx(-600 - math.log10(1 - r0), abs=1e-9)
    assert mf.chi1 == pytest.approx(r0, rel=1e-12) and mf.phase == "ordered (vanishing)"
    grows = theory.mean_field("elu", math.sqrt(2 * (1 + 1e-4)), 0.0)
    assert grows.q_star == math.inf and grows.chi1 == pytest.approx(1 + 1e-4, rel=1e-12)


def test_gelu_at_the_he_gain_with_bias_grows_without_bound():
    """GELU at sigma_w = sqrt 2, sigma_b = 1: the weights keep q to O(q^-1/2) (the map's ratio
    tends to 1) and the bias adds ~1 a layer, so q grows past any bound: here each step of the map
    (adaptive quadrature) adds more than 0.5 from q0 = 3 on. It read the 5000th layer's q = 4950
    and chi_1 = 1.0016 (chaotic); now q* = inf and chi_1 its limit, sigma_w^2 / 2 = 1."""
    from scipy.special import ndtr

    def step(q):
        s = math.sqrt(q)
        g = lambda z: (s * z * ndtr(s * z)) ** 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
        pts = [-40 / s, -1 / s, 0.0, 1 / s, 40 / s] if s > 40 / 12 else [0.0]
        return 2 * integrate.quad(g, -12, 12, points=pts, limit=500, epsabs=0, epsrel=2e-14)[0] + 1.0

    assert all(step(q) - q > 0.5 for q in np.geomspace(2.0, 1e6, 25))
    mf = theory.mean_field("gelu", math.sqrt(2), 1.0)
    assert mf.q0 == pytest.approx(3.0) and mf.q_star == math.inf and mf.chi1 == pytest.approx(1.0, rel=1e-12)


def test_a_fixed_point_float64_cannot_place_is_nan():
    """ELU (alpha = 1) at sigma_w = 1 is marginal at q -> 0: q_{l+1} = q_l - sqrt(2 / pi) q_l^1.5
    + sigma_b^2, so with sigma_b = 1e-300 q* = (sigma_b^2 / sqrt(2 / pi))^(2/3) ~ 10^-399.9, where
    the map's ratio differs from 1 by 1e-200 (here in 700-digit arithmetic). The iteration stopped
    at its cap, q = 2.5e-7, and called it q*; float64 cannot place q* at all: NaN, "unresolved"."""
    import mpmath

    with mpmath.workdps(700):
        b2, kappa = mpmath.mpf("1e-600"), mpmath.sqrt(2 / mpmath.pi)

        def step(q):  # the exact ELU length map at sigma_w = 1, alpha = 1
            s = mpmath.sqrt(q)
            neg = mpmath.mpf(1) / 2 - mpmath.exp(s * s / 2) * mpmath.erfc(s / mpmath.sqrt(2)) + \
                mpmath.exp(2 * s * s) * mpmath.erfc(mpmath.sqrt(2) * s) / 2
            return q / 2 + neg + b2

        x = mpmath.findroot(lambda x: (step(mpmath.mpf(10) ** x) - mpmath.mpf(10) ** x) / b2,
                            mpmath.log10((b2 / kappa) ** (mpmath.mpf(2) / 3)) + mpmath.mpf("0.1"),
                            tol=mpmath.mpf("1e-60"))  # the map's cancellations leave ~100 of the 700 digits
        q = mpmath.mpf(10) ** x
        assert abs(step(q) - q) < mpmath.mpf("1e-50") * b2 and abs(x - (-399.935)) < 0.001
        assert abs((step(q) - b2) / q - 1) < mpmath.mpf("1e-199")  # the ratio: 1 to 199 digits
    mf = theory.mean_field("elu", 1.0, 1e-300)
    assert math.isnan(mf.q_star) and math.isnan(mf.log10_q_star) and math.isnan(mf.chi1)
    assert mf.phase == "unresolved" and math.isnan(mf.decades_per_layer)
    assert math.isnan(theory.fixed_point("elu", 1.0, 1e-300)) and math.isnan(theory.chi1("elu", 1.0, 1e-300))


@pytest.mark.slow  # ~18 s: each chi_1 near the line iterates the map to its cap
def test_critical_sigma_w_crosses_where_q_star_is_not_resolved():
    """tanh with sigma_b = 1e-300: chi_1 = sigma_w^2 below sigma_w = 1 (q* ~ sigma_b^2 / (1 - sigma_w^2),
    where tanh is linear) and above 1 past it (checked here at 1 -+ 1e-4 with adaptive quadrature):
    the critical line is at sigma_w = 1, where q* is not resolved (NaN). Brent's method met that NaN
    (the iteration's cap had read 1.00076); chi_1 there is the map's ratio, 1 to rounding. Above 1,
    chi_1 - 1 grows as (sigma_w - 1)^2 (to first order q* = (sigma_w^2 - 1) / (2 sigma_w^2) makes
    sigma_w^2 E[phi'^2] = 1 exactly), so it is below float64's rounding for sigma_w - 1 up to
    ~1e-8: the line is placed to that, not closer (1 - 1.65e-9 and 1 + 1.34e-9 as the ratio's
    last bits moved)."""
    for s in (1 - 1e-4, 1 + 1e-4):
        q = _tanh_fixed_point(s, 1e-300, 1e-6, 1e-3) if s > 1 else 0.0  # below 1: q* ~ 1e-596, tanh linear
        chi = s * s * 2 * integrate.quad(lambda z: (1 - math.tanh(math.sqrt(q) * z) ** 2) ** 2 * math.exp(-z * z / 2)
                                          / math.sqrt(2 * math.pi), 0, 40, epsabs=0, epsrel=2e-14, limit=200)[0]
        assert (chi > 1) == (s > 1) and theory.chi1("tanh", s, 1e-300) == pytest.approx(chi, rel=1e-10)
    assert theory.critical_sigma_w("tanh", 1e-300) == pytest.approx(1.0, abs=2e-8)


def test_lyapunov_spectrum_refuses_a_forward_pass_past_the_floats():
    """ReLU at sigma_w = 1e160: the second layer's pre-activations reach ~1e320 (here scaled by
    1e-160 in NumPy), past float64; the spectrum read -inf for every exponent, where each is
    ~ln(1e160). Refused, naming the layer."""
    stack = gb.Stack(depth=5, width=4, activation="relu", init="normal", sigma_w=1e160, sigma_b=0.1)
    params = gb.init_params(stack, seed=0)
    x = np.ones(4)
    h0 = np.maximum(x @ params.W[0].T + params.b[0], 0) / 1e160
    assert np.max(np.abs(h0 @ params.W[1].T + params.b[1] / 1e160)) > 1e308 / 1e160
    with pytest.raises(ValueError, match=r"pre-activations of layer 1 leave its range \(past 1.8e308: sigma_w=1e\+160"):
        theory.lyapunov_spectrum(stack, params, x)
    with pytest.raises(ValueError, match="x must be finite"):
        theory.lyapunov_spectrum(stack, params, np.array([1.0, np.nan, 0.0, 0.0]))


def test_theory_cli_at_extreme_inputs(tmp_path, capsys):
    """The CLI prints and writes what mean_field computes at the extremes: ELU with alpha = 1e7 (the
    closed form's q* ~ 1e14, chi_1 ~ 2e6; it printed q* inf and chi_1 0.5, "ordered"), and ELU at
    sigma_w = 1, sigma_b = 1e-300, whose q* float64 cannot place ("nan", it printed the 5000th
    layer's 2.52e-07 as q*)."""
    import json

    from gradbench.cli import main

    out = tmp_path / "t.json"
    assert main(["theory", "--activation", "elu", "--activation-param", "1e7", "--sigma-b", "0.1",
                 "--out", str(out)]) == 0
    t, log_chi = _elu_closed_form(1e7, 1.0, 0.1)
    d = json.loads(out.read_text())
    assert d["q_star"] == pytest.approx(math.exp(t), rel=1e-12)
    assert d["chi1"] == pytest.approx(math.exp(log_chi), rel=1e-10)
    assert d["phase"] == "chaotic (exploding)" and "(chaotic (exploding))" in capsys.readouterr().out
    assert main(["theory", "--activation", "elu", "--sigma-b", "1e-300", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["q_star"] == d["chi1"] == d["log10_q_star"] == d["decades_per_layer"] == "nan"
    assert d["phase"] == "unresolved"
    text = capsys.readouterr().out
    assert "fixed point q*          nan (not resolved in float64" in text
    # no "+nan decades" and "nan layers" as if they were predictions
    assert "||dL/dh|| per layer     not predicted (chi_1 is not resolved)" in text and "nan decades" not in text
    assert "depth scale             not predicted" in text


@pytest.mark.slow  # ~17 s: the critical line's search at sigma_b = 1e-12 iterates the map to its cap
def test_theory_cli_simulates_where_q_star_is_not_resolved(capsys):
    """tanh at sigma_w = 1, sigma_b = 1e-20: q* is not resolved in float64 (the map's ratio moves by
    less than an ulp around q* ~ 7e-21; at sigma_b = 1e-12, the case this test had, it is resolved
    now: 7.07e-13, tests/test_theory_fixed_points.py). The simulation line printed "prediction
    +nan", and the critical line's search stopped the command with an internal error (brentq gave
    up after 100 steps, a RuntimeError). The simulation is compared with the along-stack rate,
    which needs no q*; the line's sigma_b -> 0 limit is 1."""
    from gradbench.cli import main

    assert main(["theory", "--activation", "tanh", "--sigma-b", "1e-20", "--depth", "30", "--width", "8"]) == 0
    text = capsys.readouterr().out
    assert "fixed point q*          nan (not resolved in float64" in text
    simulated = next(line for line in text.splitlines() if line.startswith("simulated"))
    assert "nan" not in simulated and re.search(r"\(prediction [+-]\d\.\d+", simulated), simulated
    assert "critical sigma_w        1 at sigma_b = 1e-20 (sigma_w^2 = 1)" in text


@pytest.mark.usefixtures("plain_biased_forward")
def test_theory_cli_says_a_biased_simulation_overflowed_in_the_forward(capsys):
    """GELU at sigma_w = 4 with a bias, its forward taken without exponents (as every biased GELU
    stack's was until 2026-12-07; batch norm, a forward taken again without them): q_l grows ~0.9
    decades a layer, so the simulated forward overflows where the activations' mean square q_l
    passes float64's largest squared (mean field: ~layer 680). The simulation line said only that
    the signal was not finite at every layer; it names the forward's first non-finite layer, near
    the mean-field crossing (a finite width grows a little slower: layer 693 at width 64, 732 at
    16), and why."""
    from gradbench.cli import main

    assert main(["theory", "--activation", "gelu", "--sigma-w", "4", "--sigma-b", "0.1", "--depth", "800",
                 "--width", "64"]) == 0
    simulated = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("simulated"))
    m = re.search(r"the forward pass having turned non-finite at layer (\d+) \(a gelu stack with biases is not "
                  r"rescaled: its activations overflow as plain float64's do\)", simulated)
    assert m, simulated
    along = theory.along_stack("gelu", 800, sigma_w=4.0, sigma_b=0.1)
    crossing = int(np.argmax(along.log10_q > 2 * math.log10(np.finfo(np.float64).max)))
    assert abs(int(m.group(1)) - crossing) <= 40, (m.group(1), crossing)


@pytest.mark.parametrize("activation, predicted", [("relu", "+0.45"), ("gelu", "+0.4")])
def test_theory_cli_fits_a_biased_exploding_simulation_past_float64(capsys, activation, predicted):
    """The same stacks with their forward exponents (since 2026-12-07 with biases too): the
    simulation runs past 10^308 and fits its slope beside mean field's prediction."""
    from gradbench.cli import main

    assert main(["theory", "--activation", activation, "--sigma-w", "4", "--sigma-b", "0.1", "--depth", "1500",
                 "--width", "64"]) == 0
    simulated = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("simulated"))
    assert "non-finite" not in simulated and f"(prediction {predicted}" in simulated, simulated


def _elu_path_by_quadrature(sigma_w, q0, depth):
    """ELU (alpha 1) lengths and 0.5 log10 chi_1 layer by layer, by SciPy's adaptive quadrature
    split at the kink: the check of theory.along_stack."""
    elu = lambda z: z if z > 0 else math.expm1(z)  # noqa: E731
    delu = lambda z: 1.0 if z > 0 else math.exp(z)  # noqa: E731

    def expect(f, s):
        g = lambda z: f(s * z) ** 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
        return integrate.quad(g, -np.inf, 0, limit=200)[0] + integrate.quad(g, 0, np.inf, limit=200)[0]

    q, log_q, decades = q0, [], []
    for _ in range(depth):
        log_q.append(math.log10(q))
        decades.append(0.5 * math.log10(sigma_w**2 * expect(delu, math.sqrt(q))))
        q = sigma_w**2 * expect(elu, math.sqrt(q))
    return np.array(log_q), np.array(decades)


def test_along_stack_follows_the_lengths_where_q_star_is_never_reached():
    """ELU at the He gain, zero bias: q* = inf and chi_1 there is 1 ("critical"), but the lengths
    grow by about a constant a layer and chi_1(q_l) > 1 at each: the stack explodes slowly."""
    sigma_w, depth = math.sqrt(2), 60
    mf = theory.mean_field("elu", sigma_w)
    assert mf.q_star == math.inf and mf.phase == "critical"
    along = theory.along_stack("elu", depth, sigma_w=sigma_w)
    log_q, decades = _elu_path_by_quadrature(sigma_w, sigma_w**2, depth)
    np.testing.assert_allclose(along.log10_q, log_q, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(along.decades, decades, rtol=1e-7, atol=1e-12)
    assert np.all(decades > 1e-3)  # above 1 at every layer, not critical
    # the predicted signal: decades[l] is the step from h_{l+1} to h_l, anchored at h_{L-1}
    s = along.signal_log10(top=1.0)
    assert s[-1] == 1.0 and s[0] == pytest.approx(1.0 + decades[:-1].sum(), rel=1e-12)
    slope = -np.polyfit(np.arange(10, 50), s[10:50], 1)[0]
    assert along.fitted_rate(10, 50) == pytest.approx(slope, rel=1e-12)


@pytest.mark.parametrize("sigma_w", [0.8, math.sqrt(2), 1.9])
def test_along_stack_of_relu_is_the_closed_form(sigma_w):
    """q_l = (sigma_w^2 / 2)^l q0 and chi_1 = sigma_w^2 / 2 at every layer (zero bias)."""
    along = theory.along_stack("relu", 30, sigma_w=sigma_w, q0=3.0)
    r = math.log10(sigma_w**2 / 2)
    np.testing.assert_allclose(along.log10_q, math.log10(3.0) + r * np.arange(30), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(along.decades, 0.5 * r, rtol=1e-12, atol=1e-15)


SELU_LAMBDA = 1.0507009873554805
# E[phi(s z)^2] / s^2 and E[phi'(s z)^2] as s -> inf: (c+^2 + c-^2) / 2 for phi -> c+ x at +inf
# and c- x at -inf (a constant there weighs alpha^2 / s^2: nothing at these s)
LINEAR_TAILS = {"elu": 0.5, "selu": 0.5 * SELU_LAMBDA**2, "gelu": 0.5, "swish": 0.5,
                "leaky_relu": 0.5 * (1 + 0.01**2), "identity": 1.0}


@pytest.mark.parametrize("log_s", [700.0, 707.5, 709.5, 720.0, 5000.0])
@pytest.mark.parametrize("activation", sorted(LINEAR_TAILS))
def test_mean_squares_past_the_largest_float_are_the_asymptotes(activation, log_s):
    """At s = e^log_s past ~1e307, phi(s z) overflows for the activations that tend to a line:
    E[phi(s z)^2] read inf (ELU, SELU) or NaN (GELU, swish) and E[phi'(s z)^2] NaN (GELU, swish).
    Both are the asymptotes' closed forms, in logarithms."""
    f, df = theory._phi(activation, theory._param(activation, None))
    want = math.log(LINEAR_TAILS[activation])
    tol = 1e-12 + 4e-16 * 2 * log_s  # the value less 2 ln s: its rounding
    assert theory._log_expect(f, log_s) - 2 * log_s == pytest.approx(want, abs=tol)
    assert theory._log_expect(df, log_s) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("activation", ["elu", "selu", "gelu", "swish"])
def test_along_stack_follows_lengths_past_the_largest_float(activation):
    """sigma_w = 4 makes the lengths grow ~0.9 decades a layer: past layer ~680 q_l passes
    e^1414 (s = sqrt(q) past the largest float), where the lengths read inf and, for GELU and
    swish, the lengths and the decades NaN. In the linear regime each layer multiplies q by
    sigma_w^2 (c+^2 + c-^2) / 2 and chi_1 is that same factor."""
    along = theory.along_stack(activation, 1500, sigma_w=4.0, sigma_b=0.1)
    assert np.all(np.isfinite(along.log10_q)) and np.all(np.isfinite(along.decades))
    r = math.log10(16.0 * LINEAR_TAILS[activation])
    np.testing.assert_allclose(np.diff(along.log10_q)[600:], r, rtol=0, atol=1e-9)
    np.testing.assert_allclose(along.decades[600:], 0.5 * r, rtol=0, atol=1e-9)


def test_along_stack_reaches_the_fixed_point_prediction():
    stack = gb.Stack(depth=300, width=8, activation="tanh", init="normal", sigma_w=1.5, sigma_b=0.1)
    along = theory.along_stack(stack)
    assert len(along.decades) == 300
    assert along.decades[-1] == pytest.approx(theory.mean_field(stack).decades_per_layer, rel=1e-9)


def test_along_stack_refuses_bad_depth():
    with pytest.raises(ValueError, match="depth must be an int >= 1"):
        theory.along_stack("tanh", 0, sigma_w=1.0)
    with pytest.raises(ValueError, match="depth is required"):
        theory.along_stack("tanh", sigma_w=1.0)


@pytest.mark.parametrize("width", [1, 2, 7, 32, 61, 100, 1024])
def test_finite_width_relu_is_the_binomial_digamma_sum(width):
    """ReLU: S = sum relu(xi_i)^2 is chi^2 with K ~ Binomial(N, 1/2) degrees of freedom, so
    lambda = (ln(2 sigma_w^2 / N) + E[digamma(K / 2) | K > 0]) / 2."""
    from scipy.special import digamma
    from scipy.stats import binom

    K = np.arange(1, width + 1)
    P = binom.pmf(K, width, 0.5)
    want = 0.5 * (math.log(2 * 1.7**2 / width) + float(np.sum(P * digamma(K / 2)) / P.sum()))
    assert theory.finite_width_lambda1("relu", width, 1.7) == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("width,slope", [(3, 0.1), (16, 0.25), (16, 3.0), (40, -0.5)])
def test_finite_width_leaky_relu_is_the_beta_mixture(width, slope):
    """S = X + a^2 Y (X, Y chi^2 with K and N - K degrees): E ln S = digamma(N/2) + ln 2 +
    E_K E_B ln(a^2 + (1 - a^2) B), B ~ Beta(K/2, (N-K)/2), by SciPy's quadrature per K."""
    from scipy.special import digamma
    from scipy.stats import beta, binom

    a2, total = slope**2, 0.0
    for k in range(width + 1):
        if k == 0:
            inner = math.log(a2)
        elif k == width:
            inner = 0.0
        else:
            inner = beta(k / 2, (width - k) / 2).expect(lambda b: math.log(a2 + (1 - a2) * b), epsabs=1e-13, epsrel=1e-12)
        total += binom.pmf(k, width, 0.5) * inner
    want = 0.5 * (math.log(0.9**2 / width) + digamma(width / 2) + math.log(2) + total)
    assert theory.finite_width_lambda1("leaky_relu", width, 0.9, slope) == pytest.approx(want, rel=1e-8, abs=1e-12)


def test_finite_width_rates_approach_mean_field_as_one_over_width():
    """lambda_N = 0.5 ln chi_1 - Var(phi^2) / (4 N E[phi^2]^2) + O(1 / N^2); identity is Newman's."""
    for act, a in (("relu", 0.0), ("leaky_relu", 0.3), ("prelu", 0.25)):
        m2, m4 = (1 + a * a) / 2, 3 * (1 + a**4) / 2
        limit = 0.5 * math.log(1.3**2 * m2)
        for n in (10**5, 10**7):
            got = theory.finite_width_lambda1(act, n, 1.3, None if act == "relu" else a)
            assert (got - limit) * n == pytest.approx(-(m4 - m2 * m2) / (4 * m2 * m2), rel=1e-3)
    assert theory.finite_width_lambda1("identity", 9, 1.3) == theory.newman_lambda1(9, 1.3)
    with pytest.raises(ValueError, match="piecewise-linear activation"):
        theory.finite_width_lambda1("tanh", 8)


def test_finite_width_rate_is_what_a_narrow_stack_simulates():
    """Leaky ReLU at mean field's critical gain (chi_1 = 1) and width 8: 20,000 layers of one
    sample drift by lambda_8 = -0.0815 decades a layer, where mean field says 0."""
    a = 0.1
    stack = gb.Stack(depth=20000, width=8, activation="leaky_relu", activation_param=a, init="normal",
                     sigma_w=math.sqrt(2 / (1 + a * a)))
    assert abs(theory.mean_field(stack).decades_per_layer) < 1e-12
    lam = theory.finite_width_lambda1("leaky_relu", 8, stack.gain, a) / math.log(10)
    assert lam < -0.08
    res = gb.backprop(stack, gb.GeneratedParams(stack, 0), gb.gaussian_input(stack, 1, 0), stats_only=True)
    s = res.signal_norm.log10()
    assert -np.polyfit(np.arange(len(s)), s, 1)[0] == pytest.approx(lam, abs=0.003)


@pytest.mark.parametrize("lo, hi, err", [(True, 5, TypeError), (180, 20, ValueError), (-5, 5000, ValueError),
                                         (float("nan"), 5, TypeError), (0, 201, ValueError), (5, 5, ValueError)])
def test_fitted_rate_refuses_a_window_it_would_slice_otherwise(lo, hi, err):
    """(180, 20) returned 0.0 and (-5, 5000) fitted a window of NumPy's choosing, in silence."""
    along = theory.along_stack("tanh", 200, 1.5)
    with pytest.raises(err, match="fitted_rate"):
        along.fitted_rate(lo, hi)
    s = along.signal_log10()
    assert along.fitted_rate(20, 180) == pytest.approx(-np.polyfit(np.arange(160), s[20:180], 1)[0], rel=1e-12)


@pytest.mark.parametrize("gaps", ["even", "uneven"])
def test_walk_slope_se_is_the_spread_of_random_walks_slopes(gaps):
    """walk_slope_se against Monte Carlo: 4000 Gaussian random walks (drift -0.01, step sd 0.02
    decades, 240 steps; "uneven": every third layer left out, as zero layers leave the fit) give
    least-squares slopes whose standard deviation the median SE matches to 6 %; the textbook SE
    of independent errors understates it several times."""
    rng = np.random.default_rng(0)
    n = 240
    layers = np.arange(n) if gaps == "even" else np.array([l for l in range(n) if l % 3 != 2])
    walks = np.cumsum(rng.normal(-0.01, 0.02, size=(4000, n)), axis=1)[:, layers]
    slopes = np.polyfit(layers, walks.T, 1)[0]
    se = np.median([theory.walk_slope_se(layers, w) for w in walks[:400]])
    assert abs(se / np.std(slopes, ddof=1) - 1) < 0.06, (se, np.std(slopes, ddof=1))
    assert abs(np.mean(slopes) + 0.01) < 4 * np.std(slopes) / np.sqrt(len(slopes))
    resid = walks[0] - np.polyval(np.polyfit(layers, walks[0], 1), layers)
    textbook = math.sqrt(resid @ resid / (len(layers) - 2) / np.sum((layers - layers.mean()) ** 2))
    assert textbook < se / 3
    assert math.isnan(theory.walk_slope_se([3, 4], [0.0, 1.0]))


def test_the_cli_gives_the_simulated_slope_its_standard_error(tmp_path, capsys):
    """`theory --depth --width` says the simulation's slope with the spread another seed's would have,
    and writes it (simulated_decades_per_layer_se)."""
    from gradbench import cli

    out = tmp_path / "t.json"
    assert cli.main(["theory", "--activation", "relu", "--sigma-w", "1.41421356", "--depth", "200", "--width", "32",
                     "--batch", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    import json

    d = json.loads(out.read_text())
    assert (f"{d['simulated_decades_per_layer']:+.6g} decades per layer going down +- "
            f"{d['simulated_decades_per_layer_se']:.2g} (one seed's") in text
    assert 0.003 < d["simulated_decades_per_layer_se"] < 0.02  # ~0.0065 * sqrt(240 / 160) from 30 seeds by hand


def test_finite_width_rate_is_the_forward_norms_drift():
    """The README: the finite-width rate is exact for the forward ||h_l|| (going up). ReLU at the
    He gain, width 32, 8,000 layers of one sample: the slope of log10 of each layer's rms output
    (from its mean and standard deviation) is lambda_32 = -0.0179 decades a layer, where mean
    field says 0 (a random walk's slope: its standard error here ~0.001)."""
    stack = gb.Stack(depth=8000, width=32, activation="relu", init="normal", sigma_w=math.sqrt(2))
    lam = theory.finite_width_lambda1("relu", 32, stack.gain) / math.log(10)
    res = gb.backprop(stack, gb.GeneratedParams(stack, 0), gb.gaussian_input(stack, 1, 0), stats_only=True)
    m, sd = res.act_mean.log10(), res.act_std.log10()
    top = np.maximum(m, sd)
    rms = top + 0.5 * np.log10(10 ** (2 * (m - top)) + 10 ** (2 * (sd - top)))
    assert np.polyfit(np.arange(len(rms)), rms, 1)[0] == pytest.approx(lam, abs=0.004)
