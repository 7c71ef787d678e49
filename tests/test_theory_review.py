"""What a lecturer checking `gradbench theory` against their own mean-field code found (the theory
review of session 29). First: mean field needs many open units, since a saturating layer's chi_1
is an average that its few units near phi's linear part dominate (tanh at sigma_w = 1000, width
64, was predicted +1.36 decades per layer, "chaotic (exploding)", and simulated -11.6, with only
"O(1 / N)" said of the gap)."""

import math

import numpy as np
import pytest
from scipy import optimize, stats

import gradbench as gb
from gradbench import cli, theory


def _open_half_width(activation: str) -> float:
    """|u| where |phi'(u)| falls to half its largest value, found by root finding."""
    if activation == "tanh":
        return optimize.brentq(lambda u: 1 / np.cosh(u) ** 2 - 0.5, 0.0, 5.0, xtol=1e-15)
    sig = lambda u: 1 / (1 + np.exp(-u))  # noqa: E731
    return optimize.brentq(lambda u: sig(u) * (1 - sig(u)) - 0.125, 0.0, 10.0, xtol=1e-15)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
@pytest.mark.parametrize("log10_q", [-3.0, 0.0, 0.5, 2.0, 6.0, 12.0, 300.0])
def test_open_fraction_is_the_normal_probability_of_the_open_band(activation, log10_q):
    c = _open_half_width(activation)
    z = c / 10 ** (0.5 * log10_q)
    want = stats.chi2.cdf(z * z, df=1)  # P(|Z| < z), by the regularised gamma function
    assert theory.open_fraction(activation, log10_q) == pytest.approx(want, rel=1e-12, abs=1e-300)


def test_open_fraction_ends_and_other_activations():
    assert theory.open_fraction("tanh", math.inf) == 0.0 and theory.open_fraction("tanh", -math.inf) == 1.0
    assert theory.open_fraction("tanh", -800.0) == 1.0
    assert math.isnan(theory.open_fraction("tanh", math.nan))
    for act in ("relu", "gelu", "swish", "elu", "selu", "identity"):
        assert math.isnan(theory.open_fraction(act, 2.0))
    mf = theory.mean_field("tanh", 1000.0, 0.0)
    assert mf.open_fraction == pytest.approx(theory.open_fraction("tanh", mf.log10_q_star))
    assert 1 / mf.open_fraction == pytest.approx(1422, rel=0.01)  # "one unit in ~1,400" (the docstring)


def _measured_rate(sigma_w: float, width: int, depth: int = 50) -> float:
    """The simulated decades per layer going down, by a least-squares fit written here."""
    stack = gb.Stack(depth=depth, width=width, activation="tanh", init="normal", sigma_w=sigma_w)
    res = gb.backprop(stack, gb.init_params(stack, 0), gb.gaussian_input(stack, 16, 1), backend="numpy")
    s = np.asarray(res.signal_norm.log10())
    layers = np.arange(depth // 10, depth - depth // 10)
    return -np.polyfit(layers, s[layers], 1)[0]


def test_the_line_appears_where_the_simulation_leaves_mean_field_and_not_where_it_holds(capsys):
    # few open units: mean field's sign is wrong at width 64
    assert theory.mean_field("tanh", 1000.0, 0.0).decades_per_layer > 1 and _measured_rate(1000.0, 64) < -5
    assert cli.main(["theory", "--activation", "tanh", "--sigma-w", "1000", "--depth", "50", "--width", "64"]) == 0
    text = capsys.readouterr().out
    assert "open units              0.045 of a layer's 64 at q*" in text and "even to the other sign" in text
    assert "this width has few open units (above)" in text and "O(1 / N)" not in text
    simulated = float(text.split(" decades per layer going down")[-2].split()[-1])  # simulated (...): X decades ...
    assert -12.5 < simulated < -10.5  # the README: "at width 64 the gradients vanish by 11.6 a layer"
    # 1.8 open units at width 256: same sign, below mean field's (an average of logs below the log of the average)
    assert _measured_rate(100.0, 256) < theory.mean_field("tanh", 100.0, 0.0).decades_per_layer
    assert cli.main(["theory", "--activation", "tanh", "--sigma-w", "100", "--depth", "50", "--width", "256"]) == 0
    assert "open units              1.81 of a layer's 256" in capsys.readouterr().out
    # the README's edge of chaos: mean field holds, no line
    assert cli.main(["theory", "--activation", "tanh", "--sigma-w", "1.5", "--sigma-b", "0.1", "--depth", "50",
                     "--width", "64"]) == 0
    text = capsys.readouterr().out
    assert "open units" not in text and "differs by O(1 / N) a layer" in text
    # a narrow stack whose units are mostly open (1.9 of 8 at sigma_w = 3): finite width, not saturation
    assert theory.mean_field("tanh", 3.0, 0.0).open_fraction > 0.01
    assert cli.main(["theory", "--activation", "tanh", "--sigma-w", "3", "--depth", "30", "--width", "8"]) == 0
    assert "open units" not in capsys.readouterr().out
    # 1 in 142 open, but 14 of a layer's 2000: enough of them
    assert cli.main(["theory", "--activation", "tanh", "--sigma-w", "100", "--depth", "10", "--width", "2000"]) == 0
    assert "open units" not in capsys.readouterr().out
    # without a width: the width mean field needs
    assert cli.main(["theory", "--activation", "tanh", "--sigma-w", "1e6"]) == 0
    assert "mean field needs a width well above 1 / 7.03e-07 = 1.42e+06" in capsys.readouterr().out
    assert cli.main(["theory", "--activation", "relu", "--sigma-w", "1e6"]) == 0
    assert "open units" not in capsys.readouterr().out


def test_a_recurrent_cell_gets_the_line_too(capsys):
    assert cli.main(["theory", "--cell", "rnn", "--sigma-w", "1000", "--steps", "60"]) == 0
    text = capsys.readouterr().out
    got = float(next(l for l in text.splitlines() if l.strip().startswith("measured")).split()[1])
    assert got < 0 < theory.mean_field("tanh", 1000.0, 1.0).decades_per_layer  # the sign mean field misses
    assert "open units              0.045 of the state's 64" in text and "hidden size 64" in text
    assert "this state has few open units (above)" in text
    assert cli.main(["theory", "--cell", "rnn", "--steps", "60"]) == 0
    assert "open units" not in capsys.readouterr().out


def test_the_exact_relu_drift_says_it_is_taken_given_a_live_unit(capsys):
    """The review: at width 1 the "exact" -0.125 decades a layer was printed beside a simulation
    whose every unit was dead from layer 2: the drift is E ln of a layer's gain given that some
    unit is on (unconditioned it is -inf). Checked by sampling that conditioned gain here."""
    n, sigma_w = 3, math.sqrt(2.0)
    xi = np.random.default_rng(0).standard_normal((2_000_000, n))
    S = np.sum(np.maximum(xi, 0.0) ** 2, axis=1)
    on = S > 0
    assert abs(on.mean() - (1 - 2.0**-n)) < 2e-3
    sampled = 0.5 * (math.log(sigma_w**2 / n) + np.log(S[on]).mean())
    assert theory.finite_width_lambda1("relu", n, sigma_w) == pytest.approx(sampled, abs=3e-3)
    assert cli.main(["theory", "--activation", "relu", "--sigma-w", str(sigma_w), "--width", "3"]) == 0
    assert "given that no layer turns all 3 units off for an input (each does with probability 2^-3 = 0.125" \
        in capsys.readouterr().out
    assert cli.main(["theory", "--activation", "relu", "--sigma-w", str(sigma_w), "--width", "32"]) == 0
    assert "given that" not in capsys.readouterr().out


def _tanh_chi1(sigma_w: float, sigma_b: float) -> float:
    """chi_1 of tanh by quadrature written here: E over u = sqrt(q) z of sech^k(u), the length map
    iterated to its fixed point from q0 = sigma_w^2 + sigma_b^2."""
    from scipy import integrate

    def e_sech(k, q):
        w = lambda u: math.exp(-u * u / (2 * q)) / math.sqrt(2 * math.pi * q)  # noqa: E731
        return integrate.quad(lambda u: w(u) / math.cosh(u) ** k, -60, 60, points=[0], limit=200, epsabs=0,
                              epsrel=1e-12)[0]

    q = sigma_w**2 + sigma_b**2
    for _ in range(100):
        q = sigma_w**2 * (1 - e_sech(2, q)) + sigma_b**2
    return sigma_w**2 * e_sech(4, q)


def test_the_critical_line_is_searched_beyond_sigma_w_20(capsys):
    """`theory --activation tanh --sigma-b 1000` said "critical sigma_w none (chi_1 - 1 does not
    change sign for sigma_w in (0.05, 20.0) ...)"; the line is at 43.4 there."""
    for sigma_b in (1000.0, 1e6):
        s = theory.critical_sigma_w("tanh", sigma_b)
        assert s > 20 and _tanh_chi1(s, sigma_b) == pytest.approx(1.0, abs=1e-6)
    assert theory.critical_sigma_w("sigmoid", 1000.0) == pytest.approx(122.867, rel=1e-5)  # the review's value
    assert theory.critical_sigma_w("tanh", 0.1) == pytest.approx(1.19340, rel=1e-5)  # inside the first bracket
    with pytest.raises(ValueError, match=r"does not change sign for sigma_w in \(0\.05, 20\.0\)"):
        theory.critical_sigma_w("tanh", 1000.0, bracket=(0.05, 20.0))  # an explicit bracket is not widened
    assert cli.main(["theory", "--activation", "tanh", "--sigma-b", "1000"]) == 0
    assert "critical sigma_w        43.379 at sigma_b = 1000" in capsys.readouterr().out


def test_a_signal_beyond_the_exponent_range_is_not_called_exactly_0(capsys):
    """tanh at sigma_b = 1e100 saturates every unit past 2^(-2^62): `run` said the true gradient is
    not 0, `theory`'s simulation "the signal is exactly 0 from layer 29 down". A dead ReLU chain
    is exactly 0 and still says so."""
    assert cli.main(["theory", "--activation", "tanh", "--sigma-b", "1e100", "--depth", "30", "--width", "64"]) == 0
    text = capsys.readouterr().out
    assert "the signal reads 0 from layer 29 down, though not 0: every unit of layer 29 is saturated, its tanh' " \
           "below 2^(-2^62)" in text and "exactly 0" not in text
    assert cli.main(["theory", "--activation", "relu", "--sigma-w", "1.4142135623730951", "--depth", "50",
                     "--width", "1"]) == 0
    assert "so the signal is exactly 0 from layer" in capsys.readouterr().out


def test_theory_does_not_quote_the_other_commands_gain_cap(capsys):
    """theory reads any finite --sigma-w, so its refusal of 1e295 (float64 draws overflow) said
    "(the command line: <= 1e150)" while 1e200 ran; run caps at 1e150 and says so."""
    assert cli.main(["theory", "--depth", "10", "--width", "8", "--sigma-w", "1e295"]) == 2
    err = capsys.readouterr().err
    assert "float64 holds 1e-290 <= --sigma-w <= 1e290" in err and "1e150" not in err
    assert cli.main(["theory", "--depth", "10", "--width", "8", "--sigma-w", "1e200"]) == 0
    capsys.readouterr()
    assert cli.main(["run", "--depth", "10", "--width", "8", "--sigma-w", "1e-295"]) == 2
    assert "(the command line: <= 1e150)" in capsys.readouterr().err


@pytest.mark.usefixtures("plain_biased_forward")
def test_a_relu_divergence_names_the_first_non_finite_output_not_the_first_overflow(capsys):
    """The exploding demo said "the forward pass first turned non-finite at layer 3", where the
    reviewer's NumPy replay had z = -inf at layer 1 already: ReLU maps it to 0. The sentence now
    names layer 3's output and says so. (Its trained biases are nonzero after a step: since
    2026-12-07 that forward carries exponents and only the head overflows; the sentence stands
    for a forward without them, as here.)"""
    assert cli.main(["train", "--demo", "exploding"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "the forward activations first turned non-finite at layer 3's output; ReLU outputs 0 for z = -inf, so " \
           "pre-activations below it may have overflowed already" in text


def test_few_open_units_under_a_vanishing_prediction_do_not_promise_a_sign_change(capsys):
    """sigmoid at sigma_b = 1000: mean field -2.09 decades a layer with 0.09 open units at width
    64; the simulation falls below it (-10.1 here), it cannot change sign."""
    assert cli.main(["theory", "--activation", "sigmoid", "--sigma-b", "1000", "--depth", "30", "--width", "64"]) == 0
    text = capsys.readouterr().out
    line = next(l for l in text.splitlines() if "open units" in l)
    assert "falls below mean field's" in line and "other sign" not in line
    simulated = float(text.split(" decades per layer going down")[-2].split()[-1])  # simulated (...): X decades ...
    assert simulated < theory.mean_field("sigmoid", 1.0, 1000.0).decades_per_layer < 0
