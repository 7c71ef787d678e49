"""README sentences that state a fact no other test checked, each against an independent
computation (mpmath, the OS, a plain subprocess) or the README's own number, read from
README.md so that a test fails when either the code or the sentence changes.

Each test quotes the sentence it checks. The CLI run of 10^5 LSTM steps (15-30 s on the
2-core VM) is behind ``@pytest.mark.slow`` (``make test-slow``); the rest takes 15-30 s.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import mpmath as mp
import numpy as np
import pytest

import gradbench as gb

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _readme() -> str:
    return README.read_text()


def _flat() -> str:
    """The README with every run of whitespace as one space (sentences broken across lines)."""
    return " ".join(_readme().split())


def _find(pattern: str, text: str | None = None, flags=0) -> re.Match:
    m = re.search(pattern, _flat() if text is None else text, flags)
    assert m, f"the README no longer says {pattern!r}: update this test with the sentence"
    return m


def _python(code: str, **env_changes) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh process importing this tree's gradbench; ``VAR=None`` unsets VAR."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    for k, v in env_changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)


def _cli(argv, capsys) -> str:
    from gradbench.cli import main

    capsys.readouterr()
    rc = main(list(argv))
    out = capsys.readouterr().out
    assert rc == 0, out
    return out


def _row0(out: str) -> str:
    """The printed log10 of the first column of the table row of layer (step) 0."""
    m = re.search(r"^\s+0\s+10\^(-?[\d.]+)\s", out, flags=re.M)
    assert m, out
    return m.group(1)


# ------------------------------------------------------------------ Bring your own model
def test_import_gradbench_never_imports_torch_or_jax():
    """README, "Bring your own model": "`import gradbench` never imports torch" (nor JAX, the
    other peer). A fresh interpreter imports gradbench; neither may be in sys.modules."""
    code = ("import importlib.util, json, sys, gradbench\n"
            "print(json.dumps({'file': gradbench.__file__,\n"
            "                  'installed': [m for m in ('torch', 'jax') if importlib.util.find_spec(m)],\n"
            "                  'loaded': sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'jax', 'jaxlib'})}))")
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(got["file"]).resolve().parent == ROOT / "gradbench"  # this tree's package
    assert got["loaded"] == [], f"import gradbench imported {got['loaded']}"
    if not got["installed"]:
        pytest.skip("neither torch nor jax is installed: the check would hold vacuously (make test-all installs torch)")


# ------------------------------------------------------------------ Command line
def test_cli_sigmoid_100000_layers_reads_the_readme_value_at_layer_0(capsys, tmp_path):
    """README, "Command line": "gradbench run --depth 100000 --width 16 --activation sigmoid
    # 10^-64351.7 at layer 0, exactly". The command is taken from the README line and run; the
    report's row of layer 0 must print the README's number (both to one decimal)."""
    m = _find(r"^gradbench (run --depth \d+ [^#\n]*?)\s+# 10\^(-[\d.]+) at layer 0", _readme(), re.M)
    out = _cli(m.group(1).split() + ["--out", str(tmp_path / "s.json")], capsys)
    assert _row0(out) == m.group(2), f"layer 0: 10^{_row0(out)}, the README says 10^{m.group(2)}"
    # "they print as `LogScaled([10^-64351.7308])` (... layer 0 of the 100,000-layer sigmoid stack)"
    shown = _find(r"they print as `LogScaled\(\[10\^(-[\d.]+)\]\)`", _readme()).group(1)
    g0 = json.loads((tmp_path / "s.json").read_text())["diagnosis"]["grad_log10"][0]
    from gradbench.logscaled import LogScaled, from_log

    m0, k0 = from_log(np.array([g0 * math.log(10)]), 1.0)
    assert f"{g0:.4f}" == shown and repr(LogScaled(m0, np.array([k0]))) == f"LogScaled([10^{shown}])"


def test_demo_writes_its_plots_to_the_readme_directory_by_default():
    """README, "Command line": "gradbench demo  # what `make demo` runs (plots in
    ./gradbench-demo/)": the demo parser's default output directory is that one."""
    from gradbench.cli import build_parser

    m = _find(r"^gradbench demo\s+#[^\n]*\(plots in ([^)\s]+)\)", _readme(), re.M)
    default = build_parser().commands["demo"].parse_args([]).out_dir
    assert os.path.normpath(default) == os.path.normpath(m.group(1)), (default, m.group(1))


# ------------------------------------------------------------------ Diagnosis
def test_diagnosis_is_a_frozen_dataclass():
    """README, "Diagnosis": "`gb.diagnose(res, params)` turns a result into ... (a frozen
    dataclass with `to_json()` ...)": assigning a field raises FrozenInstanceError."""
    _find(r"a frozen dataclass with `to_json\(\)`")
    stack = gb.Stack(depth=3, width=4, activation="sigmoid")
    params = gb.init_params(stack, 0)
    d = gb.diagnose(gb.backprop(stack, params, gb.gaussian_input(stack, 2, 1), backend="numpy"), params)
    assert dataclasses.is_dataclass(d) and isinstance(d.to_json(), str)
    for name in ("verdict", "decades_per_layer"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(d, name, None)


# ------------------------------------------------------------------ TensorBoard tags of recurrent runs
def test_recurrent_tensorboard_writes_every_tag_the_readme_names(tmp_path, capsys):
    """README, "Bring your own model": "a recurrent net's, `run --cell ... --tensorboard`, with
    the time step as the step: `time/signal_log10`, `time/grad_log10`, `time/cell_log10`, gates
    and saturation". Every `time/...` tag of that sentence (and time/gate_mean, time/gate_low,
    time/saturation for "gates and saturation") is written; ||dL/dh_t|| and step t's dW_hh term
    equal an mpmath LSTM run on the same weights and inputs (tests/naive_mp.py)."""
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed: pip install '.[test]'")
    ea = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="the tensorboard package (the event reader) is not installed: pip install '.[test]'")
    from tests.naive_mp import lstm_chain

    sentence = _find(r"`run --cell \.\.\. --tensorboard`, with the time step as the step: ([^)]*)\)").group(1)
    tags = set(re.findall(r"`(time/\w+)`", sentence))
    assert {"time/signal_log10", "time/grad_log10", "time/cell_log10"} <= tags, sentence
    assert "gates and saturation" in sentence, sentence
    tags |= {"time/gate_mean", "time/gate_low", "time/saturation"}

    T, N, B, seed = 24, 4, 3, 2
    logdir = tmp_path / "lstm"
    _cli(["run", "--cell", "lstm", "--steps", str(T), "--hidden", str(N), "--batch", str(B),
          "--seed", str(seed), "--tensorboard", str(logdir), "--mkdir"], capsys)
    acc = ea.EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    missing = tags - set(acc.Tags()["scalars"])
    assert not missing, f"not written: {sorted(missing)}"

    def curve(tag):
        ev = acc.Scalars(tag)
        return [e.step for e in ev], np.array([e.value for e in ev])

    rnn = gb.Recurrent(cell="lstm", steps=T, hidden=N)
    p = gb.init_params(rnn, seed)  # the CLI's weights: gb.GeneratedParams(rnn, seed), the same
    xs = gb.GeneratedSequence(rnn, B, seed).steps(0, T)
    gh, gW = lstm_chain(p.W_ih, p.W_hh, p.b_ih + p.b_hh, xs)
    steps, v = curve("time/signal_log10")
    assert steps == list(range(T))
    np.testing.assert_allclose(v, gh, rtol=1e-6, atol=1e-5)  # TensorBoard keeps float32
    steps, v = curve("time/grad_log10")
    assert gW[0] == -np.inf and steps == list(range(1, T))  # h_{-1} = 0: step 0's term is 0, left out
    np.testing.assert_allclose(v, gW[1:], rtol=1e-6, atol=1e-5)
    for tag in sorted(tags - {"time/signal_log10", "time/grad_log10"}):
        steps, v = curve(tag)
        assert steps == list(range(T)) and np.all(np.isfinite(v)), tag


# ------------------------------------------------------------------ threads
@pytest.mark.skipif("c" not in gb.backends(), reason="the C backend is not built here (gb.backend_status())")
def test_c_threads_fall_back_to_omp_num_threads():
    """README, "Performance": "The C drivers run `GRADBENCH_C_THREADS` threads, else
    `OMP_NUM_THREADS`, else one per CPU the process may use"."""
    _find(r"The C drivers run `GRADBENCH_C_THREADS` threads, else `OMP_NUM_THREADS`, else one per CPU "
          r"the process may use")
    code = "import os; from gradbench import cbackend; print(cbackend.threads(), len(os.sched_getaffinity(0)))"

    def threads(**env):
        proc = _python(code, **env)
        assert proc.returncode == 0, proc.stderr
        return [int(v) for v in proc.stdout.split()]

    assert threads(GRADBENCH_C_THREADS=None, OMP_NUM_THREADS="3")[0] == 3
    assert threads(GRADBENCH_C_THREADS="1", OMP_NUM_THREADS="3")[0] == 1
    n, cpus = threads(GRADBENCH_C_THREADS=None, OMP_NUM_THREADS=None)
    assert n == cpus


# ------------------------------------------------------------------ Sweeps
def test_sweep_default_cluster_is_one_single_threaded_worker_process_per_core(monkeypatch):
    """README, "Sweeps": "by default on a `LocalCluster` of one single-threaded worker process per
    core". The LocalCluster that gb.sweep creates is recorded and refused before it starts."""
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed: pip install '.[sweep]'")
    _find(r"by default on a `LocalCluster` of one single-threaded worker process per core")
    made = []

    class Refused(Exception):
        pass

    def fake_cluster(*args, **kwargs):
        made.append((args, kwargs))
        raise Refused

    monkeypatch.setattr(distributed, "LocalCluster", fake_cluster)
    with pytest.raises(Refused):
        gb.sweep({"sigma_w": [1.0]}, depth=3, width=4, seeds=range(1))
    assert len(made) == 1
    args, kwargs = made[0]
    assert not args
    assert kwargs.get("n_workers") == len(os.sched_getaffinity(0)), kwargs
    assert kwargs.get("threads_per_worker") == 1, kwargs
    assert kwargs.get("processes", True) is True, kwargs  # worker processes (LocalCluster's default is True)


# ------------------------------------------------------------------ Recurrent nets
def test_recurrent_theory_command_prints_the_readme_rates(capsys):
    """README, "Recurrent nets through time": "A tanh cell follows mean field ...: chi_1 gives
    -0.199 decades per step at N = 64, sigma_w = 1, measured -0.201", the command being
    "gradbench theory --cell rnn  # mean field vs measured at 10^4 steps"."""
    m = _find(r"chi_1 gives (-\d\.\d+) decades per step at N = (\d+), sigma_w = ([\d.]+), measured (-\d\.\d+)")
    cmd = _find(r"^gradbench (theory --cell rnn)\s+# mean field vs measured at 10\^4 steps", _readme(), re.M)
    out = _cli(cmd.group(1).split(), capsys)
    assert re.search(rf"hidden {m.group(2)}, W_hh normal gain {m.group(3)}\b", out), out
    assert "(10000 steps," in out, out
    digits = len(m.group(1).split(".")[1])
    predicted = float(re.search(r"predicted\s+(-?[\d.]+)", out).group(1))
    measured = float(re.search(r"measured\s+(-?[\d.]+)", out).group(1))
    assert f"{predicted:.{digits}f}" == m.group(1), (predicted, m.group(1))
    assert f"{measured:.{len(m.group(4).split('.')[1])}f}" == m.group(4), (measured, m.group(4))


@pytest.mark.slow
def test_cli_lstm_100000_steps_reads_the_readme_value_at_step_0(capsys):
    """README, "Recurrent nets through time": "gradbench run --cell lstm --steps 100000 --hidden 32
    # 10^-8681.7 at step 0, exactly" (15-30 s on the 2-core VM: slow). The step-0 row's ||dL/dh_0||
    (printed 10^-8681.74) is the README's number at the README's precision."""
    m = _find(r"^gradbench (run --cell lstm --steps \d+ [^#\n]*?)\s+# 10\^(-[\d.]+) at step 0", _readme(), re.M)
    out = _cli(m.group(1).split(), capsys)
    got = float(_row0(out))
    digits = len(m.group(2).split(".")[1]) if "." in m.group(2) else 0
    assert f"{got:.{digits}f}" == m.group(2), f"step 0: 10^{got}, the README says 10^{m.group(2)}"


def test_gated_cell_at_gain_1e5_reads_0_where_mpmath_gives_10_to_minus_769():
    """README, "Recurrent nets through time": "the gated cells have no log-form rescue (an LSTM or
    GRU at gains ~1e5, whose gate derivatives all underflow, can read 0 where mpmath gives
    10^-3600)". The tested case (tests/test_exact.py: GRU, 6 steps, hidden 3, batch 2, gain 1e5)
    reads dW_hh = 0 where mpmath gives 10^-769.2 (its largest step term, 10^-769.21; the others
    lie 800 to 2800 decades below it: 10^-1584.9 .. 10^-3615.2). 10^-3600 is no total of this
    case: this test holds the number proposed for the README, the next one the README's own."""
    from tests.naive_mp import gru_chain

    gru = gb.Recurrent(cell="gru", steps=6, hidden=3, input_dim=2, sigma_w=1e5, recurrent_init="normal")
    p, xs = gb.init_params(gru, 0), gb.sequence_input(gru, batch=2, seed=1)
    _, _, gW = gru_chain(p.W_ih, p.W_hh, p.b_ih, p.b_hh, xs)
    res = gb.backprop(gru, p, xs, backend="numpy")
    assert np.all(res.grads.W_hh.to_float() == 0) and np.all(res.grad_norm.log10() == -np.inf)
    total = max(gW[1:])  # the sum is its largest term to ~10^-800 relative
    assert sorted(gW[1:])[-2] < total - 800
    assert round(total) == -769, total


def test_readme_number_for_gated_cells_at_gain_1e5():
    """README: "... reads dW_hh = 0 where mpmath gives 10^-769", against the tested GRU's mpmath dW_hh
    (it said 10^-3600, which no tested case gives)."""
    from tests.naive_mp import gru_chain

    n = float(_find(r"a GRU at gain 1e5, whose gate derivatives all\s+underflow, reads dW_hh = 0 where mpmath "
                    r"gives 10\^(-[\d.]+):").group(1))
    gru = gb.Recurrent(cell="gru", steps=6, hidden=3, input_dim=2, sigma_w=1e5, recurrent_init="normal")
    p, xs = gb.init_params(gru, 0), gb.sequence_input(gru, batch=2, seed=1)
    _, _, gW = gru_chain(p.W_ih, p.W_hh, p.b_ih, p.b_hh, xs)
    assert abs(max(gW[1:]) - n) < 1, (max(gW[1:]), n)


# ------------------------------------------------------------------ Where it stops
def test_gelu_residual_stack_reaches_10_to_minus_3e14_at_layer_229_with_batch_2():
    """README, "Where it stops": "a default `Stack(depth=300, width=4, activation="gelu",
    residual=2)` on a batch of 2 reaches 10^-3e14 at layer 229, equal to mpmath" (it named no
    batch; tests/test_exact.py uses gaussian_input(stack, 2, 1): at batch 2 layer 229 is
    10^-3.148e14, at batch 1 10^-1.5e17, at batch 3 or 4 10^-3.3e13, so the batch matters)."""
    from tests.naive_mp import chain

    m = _find(r'`Stack\(depth=(\d+), width=(\d+), activation="gelu", residual=(\d+)\)` on a batch of 2 reaches '
              r"10\^(-\d+e\d+) at\s+layer (\d+), equal to mpmath")
    depth, width, k, stated, layer = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4), int(m.group(5))
    stack = gb.Stack(depth=depth, width=width, activation="gelu", residual=k)
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 2, 1)
    got = gb.backprop(stack, params, x).grad_norm.log10()
    assert np.all(np.isfinite(got))  # no layer reads 0
    ref = chain("gelu", 0.0, params.W, x, residual=k)[1][layer]
    assert abs(got[layer] - ref) <= 1e-12 * abs(ref), (got[layer], ref)
    mant, exp = stated.split("e")
    assert f"{ref:.{len(mant.lstrip('-')) - 1}e}".replace("e+", "e") == stated, (ref, stated)


def _below(name, threshold):
    """The z beyond which |phi'(z)| of ``name`` falls below ``threshold`` (tanh and sigmoid: z > 0;
    GELU: z < 0): bisection on ln|phi'(z)| = ln threshold in mpmath, where |phi'| is monotone."""
    f = {"tanh": lambda z: mp.sech(z) ** 2,
         "sigmoid": lambda z: mp.exp(-z) / (1 + mp.exp(-z)) ** 2,
         "gelu": lambda z: mp.ncdf(z) + z * mp.npdf(z)}[name]
    with mp.workdps(40):
        inside, outside = (mp.mpf(-2), mp.mpf(-2000)) if name == "gelu" else (mp.mpf(2), mp.mpf(2000))
        target = mp.log(threshold)
        assert mp.log(abs(f(inside))) > target > mp.log(abs(f(outside)))
        for _ in range(200):
            mid = (inside + outside) / 2
            inside, outside = (mid, outside) if mp.log(abs(f(mid))) > target else (inside, mid)
        return float(inside)


def _tanh_d(z):
    with mp.workdps(40):
        return mp.sech(mp.mpf(z)) ** 2


def test_readme_thresholds_below_the_smallest_normal_number():
    """README, "Where it stops": "a unit's own derivative below the dtype's smallest normal number
    (float64: tanh beyond `|z| = 354`, sigmoid 708, GELU `z < -37`; float32: 44, 87, -13)": each
    number is the threshold (mpmath: 354.89, 708.40, -37.71; 44.36, 87.34, -13.34) cut to an integer."""
    m = _find(r"float64: tanh beyond `\|z\| = (\d+)`, sigmoid (\d+), GELU `z < (-\d+)`; float32: (\d+), (\d+), (-\d+)\)")
    stated = [int(v) for v in m.groups()]
    got = [math.trunc(_below(n, mp.mpf(float(np.finfo(dt).tiny))))
           for dt in ("float64", "float32") for n in ("tanh", "sigmoid", "gelu")]
    assert got == stated, (got, stated)


def test_readme_tanh_derivative_underflow_in_recurrent_cells():
    """README, "Recurrent nets through time": "tanh'(z) falls below the smallest normal number
    beyond |z| ~ 354 in float64 and ~ 44 in float32, and is 0 beyond ~ 373 and ~ 52": each number
    its own threshold (mpmath: 354.89 and 44.36 leave the normal range, 373.26 and 52.68 round to
    0), cut to an integer. (It said "float64 beyond ~ 354, float32 beyond ~ 52", two kinds of
    threshold side by side.)"""
    m = _find(r"tanh'\(z\) falls below the smallest\s+normal number beyond \|z\| ~ (\d+) in float64 and ~ (\d+) in "
              r"float32, and is 0 beyond ~ (\d+) and ~ (\d+)\)")
    n64, n32, z64, z32 = (int(g) for g in m.groups())
    assert math.trunc(_below("tanh", mp.mpf(float(np.finfo(np.float64).tiny)))) == n64
    assert math.trunc(_below("tanh", mp.mpf(float(np.finfo(np.float32).tiny)))) == n32
    zero64 = _below("tanh", mp.mpf(float(np.finfo(np.float64).smallest_subnormal)) / 2)
    zero32 = _below("tanh", mp.mpf(float(np.finfo(np.float32).smallest_subnormal)) / 2)
    assert (math.trunc(zero64), math.trunc(zero32)) == (z64, z32)
    # the dtype's own rounding of the true value: 0 past the threshold
    assert np.float32(float(_tanh_d(zero32 + 0.01))) == 0 and 0 < np.float32(float(_tanh_d(z32)))


def test_confident_heads_send_down_what_the_readme_says():
    """README, "Where it stops": "a right answer at a margin of 40 sends down dL/dy = e^-40 =
    4.2e-18, not 0 ... so a margin of 800 gives 10^-347" (bce at logit 40 and 800, target 1)."""
    from gradbench.loss import head_gradient

    m = _find(r"a right answer at a margin of (\d+) sends down dL/dy = e\^-\d+ = ([\d.]+e-\d+), not 0\) and "
              r"carries a power of two per sample, so a margin of (\d+) gives 10\^(-\d+)")
    small, stated, big, decades = int(m.group(1)), float(m.group(2)), int(m.group(3)), int(m.group(4))
    _, _, dy, e = head_gradient("bce", np.array([[float(small)]]), np.array([[1.0]]), 1)
    assert float(-np.ldexp(dy[0, 0], e)) == pytest.approx(math.exp(-small), rel=1e-15)
    assert f"{math.exp(-small):.1e}" == f"{stated:.1e}"
    _, _, dy, e = head_gradient("bce", np.array([[float(big)]]), np.array([[1.0]]), 1)
    got = math.log10(-dy[0, 0]) + e * math.log10(2)
    assert got == pytest.approx(-big / math.log(10), abs=1e-12) and math.floor(got) + 1 == decades


def test_auto_checkpoints_beyond_half_of_the_available_memory():
    """README, "A million layers": "`"auto"` ... with k ~ sqrt(L), when the plain run would not fit
    in half of the available memory" (the available memory given here, no budget)."""
    from gradbench.plan import memory_estimate, plan_run

    assert _find(r"when the plain run would not fit in half of the available memory")
    stack = gb.Stack(depth=4000, width=64)
    need = memory_estimate(stack, 64, checkpoint=None)
    assert plan_run(stack, 64, available=lambda: 2.02 * need).checkpoint is None
    assert plan_run(stack, 64, available=lambda: 1.98 * need).checkpoint is not None


def test_the_tail_thresholds_are_the_readmes():
    """README, "Where it stops": "(GELU below `z = -35`, swish below `-620` in float64, ...)"."""
    from gradbench.activations import RESCUE_X

    m = _find(r"GELU below `z = (-\d+)`, swish below\s+`(-\d+)` in float64")
    assert (RESCUE_X["float64"]["gelu"], RESCUE_X["float64"]["swish"]) == (float(m.group(1)), float(m.group(2)))


def test_relu_finite_width_drift_tends_to_minus_5_over_4n():
    """README, "Theory": "(-5/(4N) nats for large N)": N lambda_1 -> -5/4 for ReLU at the He gain."""
    from gradbench.theory import finite_width_lambda1

    assert _find(r"-5/\(4N\) nats for large N")
    for n in (1000, 10_000):
        assert finite_width_lambda1("relu", n, sigma_w=math.sqrt(2)) * n == pytest.approx(-1.25, abs=3 / n)


def test_the_demos_clip_sentence_is_the_readmes(capsys):
    """README, "Python API": "the diagnosis names them: "the clip changed it at 47 of the 50 layers
    (all but 6, 7 and 29)" in `gradbench demo`": the demo's tanh-clip configuration (its base
    stack, as `compare --configs tanh-clip`), and the layers are those the run recorded."""
    m = _find(r'"the clip changed it at (\d+) of the (\d+)\s+layers \(all but ([\d, and]+)\)" in `gradbench demo`')
    out = _cli(["compare", "--configs", "tanh-clip", "--depth", m.group(2), "--width", "32", "--batch", "16",
                "--loss", "bce"], capsys)
    said = re.search(r"the clip changed it at (\d+) of the (\d+) layers \(all but ([\d, and]+)\)", " ".join(out.split()))
    assert said and said.groups() == m.groups(), (said and said.groups(), m.groups())
    free = [int(v) for v in re.findall(r"\d+", m.group(3))]
    assert int(m.group(1)) + len(free) == int(m.group(2))


# ------------------------------------------------------------------ rounding the estimate does not see
def test_float32_batch_normed_linear_output_under_the_probe_loss_keeps_about_two_digits():
    """"nor the probe loss 0.5 ||h_L||^2 right on a batch-normed linear output (identity with batch
    norm): ... float32 keeps ~2 digits of it (depth 20, width 16, batch 8: ||dW_l|| within 0.3 % of
    float64's, where the backends agree to ~1e-11)". The float32 run against the float64 run of
    the same weights and input, on every backend; float64 loses ~5 of its digits the same way."""
    m = _find(r"float32 keeps ~2 digits of it \(depth (\d+), width (\d+), batch (\d+): \|\|dW_l\|\| within ([\d.]+) %")
    depth, width, batch, pct = int(m.group(1)), int(m.group(2)), int(m.group(3)), float(m.group(4))
    s64 = gb.Stack(depth=depth, width=width, activation="identity", batch_norm=True, sigma_b=0.1)
    s32 = s64.replace(dtype="float32")
    p32, x32 = gb.init_params(s32, 0), gb.gaussian_input(s32, batch, 1)
    p64 = dataclasses.replace(gb.init_params(s64, 0), **{f: np.asarray(getattr(p32, f), dtype=np.float64)
                                                          for f in ("W", "b", "gamma", "beta")})  # p32, in float64
    x64 = x32.astype(np.float64)
    exact = {b: gb.backprop(s64, p64, x64, backend=b).grad_norm.log10() for b in gb.backends()}
    ref = np.asarray(exact["numpy"], dtype=np.float64)
    for b, g in exact.items():  # float64: the backends agree to ~1e-11 (5 of 16 digits cancel)
        np.testing.assert_allclose(np.asarray(g, dtype=np.float64), ref, rtol=0, atol=2e-11)
    worst = max(float(np.max(np.abs(10.0 ** (np.asarray(gb.backprop(s32, p32, x32, backend=b).grad_norm.log10(),
                                                              dtype=np.float64) - ref) - 1))) for b in gb.backends())
    assert 1e-4 < worst < pct / 100, worst  # beyond float32's usual 1e-4, within the README's bound


def test_a_chaotic_batch_norm_stack_reads_decades_apart_across_the_backends():
    """"sigmoid with batch norm, init normal, depth 1,500, width 6, batch 3: ||dW_0|| from 10^A to
    10^B over the three backends in one run": the backends' rounding moves the chain by decades
    (here at least one; the README's A and B said 10^25.5 where no backend goes)."""
    lo, hi = map(float, _find(r"depth 1,500, width 6, batch 3: \|\|dW_0\|\| from 10\^([\d.]+) to 10\^([\d.]+) over "
                              r"the three backends", _flat()).groups())
    stack = gb.Stack(depth=1500, width=6, activation="sigmoid", init="normal", batch_norm=True)
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 3, 1)
    at0 = [float(gb.backprop(stack, params, x, backend=b).grad_norm.log10()[0]) for b in gb.backends()]
    assert max(at0) - min(at0) > 1.0, at0
    assert lo - 1 < min(at0) and max(at0) < hi + 1, (lo, hi, at0)


def test_a_chaotic_he_tanh_stack_of_20000_layers_is_said_to_be_so():
    """"(*) He-initialised tanh at width 64 is chaotic: ... the backends' ||dW_0|| lie decades apart
    here ...; print(gb.diagnose(res)) says so" (the example's comment said "exact")."""
    stack = gb.Stack(depth=20_000, width=64, activation="tanh", init="he_normal")
    runs = {b: gb.backprop(stack, gb.GeneratedParams(stack, seed=0), gb.gaussian_input(stack, 64, 1),
                           stats_only=True, checkpoint=100, backend=b) for b in ("numba", "c") if b in gb.backends()}
    if len(runs) == 2:
        a, b = (float(r.grad_norm.log10()[0]) for r in runs.values())
        assert abs(a - b) > 1.0, (a, b)
    assert "the forward pass is chaotic" in str(gb.diagnose(next(iter(runs.values()))))


@pytest.mark.slow
def test_relu_at_the_he_gain_backward_follows_the_forward_drift_only_partly():
    """"ReLU at the He gain, width 256, depth 240, batch 1, fitted over layers 24-215, 150 seeds:
    ||h_l|| -0.00242 +- 0.00020, ||dL/dh_l|| -0.00048 +- 0.00017 decades a layer, exact -0.00213":
    a plain float64 loop on GeneratedParams' weights (tests/naive.py), the slopes of log10 ||h_l||
    (going up, as a loss per layer) and log10 ||dL/dh_l|| (going down), and theory's exact rate."""
    import naive

    from gradbench import theory

    text = _flat()
    m = _find(r"150 seeds: \|\|h_l\|\| (-[\d.]+) \+- ([\d.]+), \|\|dL/dh_l\|\| (-[\d.]+) \+- ([\d.]+)\s*decades a "
              r"layer, exact (-[\d.]+)", text)
    fwd, fwd_se, bwd, bwd_se, exact = map(float, m.groups())
    stack = gb.Stack(depth=240, width=256, activation="relu", init="he_normal", sigma_b=0.0)
    lam = theory.finite_width_lambda1("relu", 256, stack.gain, None) / math.log(10)
    assert abs(lam - exact) < 5e-6, lam
    layers = np.arange(24, 216)
    f, g = [], []
    for seed in range(150):
        P = {k: np.asarray(v, np.float64) for k, v in dataclasses.asdict(gb.GeneratedParams(stack, seed).materialize()).items()
             if k in ("W", "b", "gamma", "beta", "slope")}
        x = gb.gaussian_input(stack, 1, seed + 1)
        _, _, signal = naive.backward(stack, P, x)
        _, saved = naive.forward(stack, P, x)
        h = np.log10([np.linalg.norm(saved["hs"][l + 1]) for l in layers])
        f.append(np.polyfit(layers, h, 1)[0])  # going up
        g.append(-np.polyfit(layers, np.log10(signal[layers]), 1)[0])  # going down
    for got, se, said in ((f, fwd_se, fwd), (g, bwd_se, bwd)):
        mean, sem = float(np.mean(got)), float(np.std(got, ddof=1) / math.sqrt(len(got)))
        assert abs(mean - said) < 3 * sem and abs(sem - se) < 0.5 * se, (mean, sem, said, se)
    assert abs(np.mean(f) - lam) < 3 * fwd_se  # the forward follows the exact rate
    assert abs(np.mean(g) - lam) > 5 * bwd_se  # the backward does not
