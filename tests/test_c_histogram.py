"""The C fill of the streaming histograms (csrc/histogram.c, gradbench.cbackend.histogram_fill):
the NumPy reference's top, counts, below, zeros and nonfinite entry for entry, and the Numba
kernel's, on random layers of every scale and on entries placed at and 1-3 ulps around bin edges;
its checks of the arrays; and a C stats_only run that never imports Numba."""

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from gradbench import histograms
from gradbench.logscaled import LOG10_2

cb = pytest.importorskip("gradbench.cbackend", reason="C extension not built", exc_type=ImportError)

ISAS = (0, 1, 3)  # the best instance this CPU runs, the baseline one, AVX2 (each only where the CPU has it)
KEYS = ("top", "below", "zeros", "nonfinite")


def _fill(fill, dW, e, per_decade, bins, cdt, isa=0):
    """The histograms of dW by fill "c" (cbackend.histogram_fill, instance ``isa``), "numba" or
    "numpy" (histograms.fill_streaming with the Numba kernel or none)."""
    m = dW.shape[0]
    h = {k: np.full(m, -7, np.int64) for k in KEYS}  # every output written, whatever was there
    h["counts"] = np.full((m, bins), 7, cdt)
    if fill == "c":
        cb.histogram_fill(dW, e, per_decade, bins, h["top"], h["counts"], h["below"], h["zeros"], h["nonfinite"],
                          isa=isa)
    else:
        kernel = None
        if fill == "numba":
            from gradbench.kernels import histogram_fill as kernel
        histograms.fill_streaming(dW, e, per_decade, bins, h["top"], h["counts"], h["below"], h["zeros"],
                                  h["nonfinite"], kernel=kernel)
    return h


def _assert_same(got, want, what):
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{what}: {k}")
        assert got[k].dtype == want[k].dtype


def _random_layers(rng, m, size, dtype):
    """m layers of entries of random sign with exponents uniform over the dtype's whole range
    (subnormals to the largest), and zeros, infinities and NaNs here and there."""
    fi = np.finfo(dtype)
    lo_exp, hi_exp = int(math.log2(fi.smallest_subnormal)), int(math.log2(fi.max))
    v = np.ldexp(rng.uniform(1.0, 2.0, (m, size)), rng.integers(lo_exp, hi_exp, (m, size)))
    v *= rng.choice([-1.0, 1.0], (m, size))
    v = v.astype(dtype)
    special = rng.random((m, size))
    v[special < 0.02] = 0.0
    v[(special >= 0.02) & (special < 0.025)] = np.inf
    v[(special >= 0.025) & (special < 0.03)] = np.nan
    v[(special >= 0.03) & (special < 0.035)] = -np.inf
    if m > 1:
        v[0] = 0.0  # a layer with no non-zero finite entry: top 0, empty counts
    return v.reshape(m, 1, size)


@pytest.mark.parametrize("cdt", [np.uint16, np.uint32])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_c_fill_is_the_numpy_reference_on_random_layers(dtype, cdt):
    rng = np.random.default_rng(1 + (dtype == np.float32) + 2 * (cdt == np.uint32))
    for trial in range(40):
        m, size = int(rng.integers(1, 6)), int(rng.integers(0, 2500))
        per_decade, bins = int(rng.integers(1, 51)), int(rng.integers(1, 401))
        if trial < 4:  # the ends of both ranges
            per_decade, bins = (1, 50)[trial % 2], (1, 400)[trial // 2]
        e = rng.integers(-3000, 3001, m).astype(np.int64)
        dW = _random_layers(rng, m, size, dtype)
        want = _fill("numpy", dW, e, per_decade, bins, cdt)
        for isa in ISAS:
            _assert_same(_fill("c", dW, e, per_decade, bins, cdt, isa), want, f"trial {trial}, isa {isa}")
        # narrow layers around one scale too: most entries inside the window, few far below it
        scale = 10.0 ** rng.uniform(-30, 30) if dtype == np.float64 else 10.0 ** rng.uniform(-10, 10)
        dW = (rng.standard_normal((m, 4, 50)) * scale).astype(dtype)
        want = _fill("numpy", dW, e, per_decade, bins, cdt)
        assert want["counts"].sum() > 0
        for isa in ISAS:
            _assert_same(_fill("c", dW, e, per_decade, bins, cdt, isa), want, f"trial {trial} narrow, isa {isa}")


def _edge_entries(rng, e, per_decade, dtype, count=120):
    """Entries v = 10^(j/p) 2^-e rounded to ``dtype`` (the lower edges of bins j, from mpmath at
    40 digits) for ``count`` random j whose v the dtype holds as normal numbers, and 1, 2 and 3
    ulps either side of each; with random signs, a zero, inf, NaN and subnormals."""
    import mpmath as mp

    mp.mp.dps = 40
    fi = np.finfo(dtype)
    shift = e * LOG10_2
    lo, hi = math.log10(fi.tiny) + 1, math.log10(fi.max) - 1
    js = np.arange(math.ceil((lo + shift) * per_decade), math.floor((hi + shift) * per_decade))
    js = rng.choice(js, min(count, js.size), replace=False)
    out = []
    for j in js:
        v = dtype(float(mp.mpf(10) ** (mp.mpf(int(j)) / per_decade) * mp.mpf(2) ** (-e)))
        out.append(v)
        up = down = v
        for _ in range(3):
            up, down = np.nextafter(up, dtype(np.inf)), np.nextafter(down, dtype(0))
            out += [up, down]
    v = np.array(out, dtype=dtype) * rng.choice([-1, 1], len(out)).astype(dtype)
    tiny = fi.smallest_subnormal
    return np.concatenate([v, np.array([0.0, np.inf, np.nan, tiny, 5 * tiny, -fi.tiny], dtype=dtype)])


def _by_log10(layer, e, per_decade, bins):
    """One layer's histogram entry by entry with the C library's log10 (Python's math.log10): the
    formula floor((log10|v| + e log10 2) p) that both compiled fills promise."""
    shift = float(e) * LOG10_2
    a = [abs(float(x)) for x in layer.ravel()]
    js = [math.floor((math.log10(x) + shift) * per_decade) for x in a if 0 < x < math.inf]
    out = dict(top=0, below=0, zeros=sum(x == 0 for x in a), nonfinite=sum(not math.isfinite(x) for x in a),
               counts=[0] * bins)
    if js:
        out["top"] = top = max(js)
        for j in js:
            if j <= top - bins:
                out["below"] += 1
            else:
                out["counts"][j - top + bins - 1] += 1
    return out


def _numpy_bins_are_libms(layer, e, per_decade) -> bool:
    """Whether the NumPy reference's bin of every non-zero finite entry of ``layer`` (from
    np.log10, histograms.bin_rows) is the C library log10's."""
    a = np.abs(layer.astype(np.float64).ravel())
    a = a[(a > 0) & np.isfinite(a)]
    idx, _, _ = histograms.bin_rows(a.reshape(1, -1), np.array([e]), 0.0, per_decade)
    shift = float(e) * LOG10_2
    return bool(np.array_equal(idx[0], [math.floor((math.log10(x) + shift) * per_decade) for x in a]))


@pytest.mark.parametrize("cdt", [np.uint16, np.uint32])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_c_fill_bins_entries_at_and_around_bin_edges_by_log10(dtype, cdt):
    """Entries on the bin edges and 1-3 ulps either side (where the series must hand over to
    log10), at exponents from -3000 to 3000: the counts of floor((log10|v| + e log10 2) p) with
    the C library's log10, entry for entry; and the NumPy reference's wherever its np.log10 of
    the layer's entries is the C library's (a vectorised np.log10 may round an entry on an
    edge the other way: tests/test_checkpoint.py)."""
    rng = np.random.default_rng(7 + (dtype == np.float32) + 2 * (cdt == np.uint32))
    compared = 0
    for trial in range(16):
        e = int(rng.integers(-3000, 3001)) if trial > 1 else (0, -3000)[trial]
        per_decade, bins = int(rng.integers(1, 51)), int(rng.integers(1, 401))
        v = _edge_entries(rng, e, per_decade, dtype)
        layers = np.stack([v, v[::-1], rng.permutation(v)]).reshape(3, 2, -1)
        E = np.full(3, e, np.int64)
        for isa in ISAS:
            got = _fill("c", layers, E, per_decade, bins, cdt, isa)
            for l in range(3):
                want = _by_log10(layers[l], e, per_decade, bins)
                assert list(got["counts"][l]) == want.pop("counts"), (trial, isa, l)
                assert {k: int(got[k][l]) for k in want} == want, (trial, isa, l)
        ref = _fill("numpy", layers, E, per_decade, bins, cdt)
        for l in range(3):
            if _numpy_bins_are_libms(layers[l], e, per_decade):
                compared += 1
                for k in ref:
                    assert np.array_equal(got[k][l], ref[k][l]), (trial, l, k)
    assert compared >= 24  # NumPy's log10 is the C library's on most layers here (on all, on this machine)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_c_fill_bins_edges_by_log10_at_huge_exponents(dtype):
    """The same edges at exponents 2^33 to 2^44, where the tolerance of the series' hand-over to
    log10 grows with |e log10 2| (a fixed 1e-6 binned 12 of 24 such layers otherwise: review 43's
    mutant C29, which the exponents up to 3000 above and near 2^62 below did not see)."""
    rng = np.random.default_rng(3 + (dtype == np.float32))
    for e in (2**33, -(2**35) + 17, 2**40 + 5, -(2**44)):
        for per_decade in (4, 10, 50):
            v = _edge_entries(rng, e, per_decade, dtype)
            layers = np.stack([v, v[::-1]]).reshape(2, 1, -1)
            for isa in ISAS:
                got = _fill("c", layers, np.full(2, e, np.int64), per_decade, 400, np.uint32, isa)
                for l in range(2):
                    want = _by_log10(layers[l], e, per_decade, 400)
                    assert list(got["counts"][l]) == want.pop("counts"), (e, per_decade, isa, l)
                    assert {k: int(got[k][l]) for k in want} == want, (e, per_decade, isa, l)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_c_fill_is_the_numba_kernel(dtype):
    """The C twin and the Numba kernel: the same arrays on random layers and on edge entries,
    at exponents up to 2^45 too (where tol covers more and more entries)."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(11 + (dtype == np.float32))
    for trial in range(12):
        e = rng.integers(-3000, 3001, 4).astype(np.int64)
        if trial >= 8:
            e = np.array([10**6, -(10**7), 2**45, -(2**45)], np.int64)
        per_decade, bins = int(rng.integers(1, 51)), int(rng.integers(1, 401))
        edges = np.stack([_edge_entries(rng, int(x), per_decade, dtype, 60) for x in e]).reshape(4, 1, -1)
        for dW in (_random_layers(rng, 4, 1500, dtype), edges):
            cdt = np.uint16 if trial % 2 else np.uint32
            want = _fill("numba", dW, e, per_decade, bins, cdt)
            for isa in ISAS:
                _assert_same(_fill("c", dW, e, per_decade, bins, cdt, isa), want, f"trial {trial}, isa {isa}")


def test_each_backend_fills_the_histograms_with_its_own_kernel():
    """fill_for maps a backend's name to its fill (NumPy when not known), the one the engine
    takes from the backend's module (its histogram_fill; Numba's unchecked histogram_fill_kernel)
    and the memory estimate counts; the C backend's through fill_streaming gives the NumPy
    reference's arrays."""
    from gradbench import engine, reference
    from gradbench.backends import backends, get_backend

    assert [histograms.fill_for(b) for b in ("c", "numba", "numpy", None)] == ["c", "numba", "numpy", "numpy"]
    assert not hasattr(reference, "histogram_fill")
    assert get_backend("c").histogram_fill is cb.histogram_fill
    # the engine's stats_only runs: C's checked fill, Numba's unchecked kernel (the engine makes the arrays)
    assert engine._compiled_fill(get_backend("c")) is cb.histogram_fill
    assert engine._compiled_fill(reference) is None
    if "numba" in backends():
        from gradbench.kernels import histogram

        assert engine._compiled_fill(get_backend("numba")) is histogram.histogram_fill
    rng = np.random.default_rng(3)
    dW, e = _random_layers(rng, 3, 300, np.float32), np.array([0, 5, -7])
    want = _fill("numpy", dW, e, 4, 40, np.uint16)
    h = _fill("numpy", dW, e, 4, 40, np.uint16)
    histograms.fill_streaming(dW, e, 4, 40, h["top"], h["counts"], h["below"], h["zeros"], h["nonfinite"],
                              kernel=cb.histogram_fill)
    _assert_same(h, want, "fill_streaming(kernel=cbackend.histogram_fill)")


@pytest.mark.parametrize("fill", ["c", "numba"])
def test_compiled_fills_refuse_arrays_they_cannot_take_before_writing_anything(fill):
    """The C fill and the Numba one (gradbench.kernels.histogram_fill, no bounds checks in the kernel) check every
    argument alike (abi.check_histogram_fill)."""
    if fill == "numba":
        from gradbench.kernels import histogram_fill
    else:
        histogram_fill = cb.histogram_fill
    m, size, bins = 3, 20, 8
    good = dict(dW=np.ones((m, 4, 5)), e=np.zeros(m, np.int64), per_decade=4, bins=bins,
                top=np.zeros(m, np.int64), counts=np.zeros((m, bins), np.uint16), below=np.zeros(m, np.int64),
                zeros=np.zeros(m, np.int64), nonfinite=np.zeros(m, np.int64))
    bad = [
        (dict(dW=np.ones((m, 4, 5), np.float16)), TypeError, "dtype float16"),
        (dict(dW=np.ones((m, 10, 5))[:, ::2]), ValueError, "dW must be C-contiguous"),
        (dict(dW=[[1.0]]), TypeError, "dW must be a numpy.ndarray"),
        (dict(e=np.zeros(m, np.int32)), TypeError, "e has dtype int32"),
        (dict(e=np.zeros(m + 1, np.int64)), ValueError, r"e has shape \(4,\), expected \(3,\)"),
        (dict(counts=np.zeros((m, bins), np.int64)), TypeError, "counts has dtype int64, expected uint16 or uint32"),
        (dict(counts=np.zeros((m, bins + 1), np.uint16)), ValueError, "counts has shape"),
        (dict(counts=np.zeros((m, bins), np.uint16)[:, ::-1]), ValueError, "counts must be C-contiguous"),
        (dict(below=np.zeros(2 * m, np.int64)[::2]), ValueError, "below must be C-contiguous"),
        (dict(bins=0), ValueError, "bins must be an int in 1"),
        (dict(per_decade=2.5), ValueError, "per_decade must be an int"),
        (dict(per_decade=True), ValueError, "per_decade must be an int"),
        (dict(dW=np.ones((m, 256, 257)), counts=np.zeros((m, bins), np.uint16)), ValueError,
         "uint16 counts hold at most 65,535 entries per bin and the layers have 65792"),
    ]
    ro = np.zeros(m, np.int64)
    ro.flags.writeable = False
    bad.append((dict(zeros=ro), ValueError, "zeros must be writeable"))
    for change, kind, match in bad:
        args = {**good, **change}
        before = {k: v.copy() for k, v in args.items() if isinstance(v, np.ndarray)}
        with pytest.raises(kind, match=match):
            histogram_fill(**args)
        for k, v in before.items():
            np.testing.assert_array_equal(args[k], v, err_msg=k)


def test_c_fill_of_no_layers_and_of_empty_layers():
    h = _fill("c", np.zeros((0, 3, 3)), np.zeros(0, np.int64), 4, 5, np.uint16)
    assert all(a.size == 0 for a in h.values())
    h = _fill("c", np.zeros((2, 0, 3), np.float32), np.array([1, 2]), 4, 5, np.uint32)
    assert h["counts"].sum() == 0 and not h["top"].any() and not h["zeros"].any() and not h["nonfinite"].any()


_FRESH = textwrap.dedent("""
    import sys
    import numpy as np
    import gradbench as gb
    from gradbench import plan

    stack = gb.Stack(depth=40, width=16, activation="tanh", dtype="{dtype}")
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 8, 1)
    plan.memory_estimate(stack, 8, stats_only=True, backend="c")
    got = gb.backprop(stack, params, x, stats_only=True, backend="c", checkpoint=8).grad_hist
    assert "numba" not in sys.modules, "a C stats_only run imported numba"
    want = gb.backprop(stack, params, x, stats_only=True, backend="numpy", checkpoint=8).grad_hist
    assert got.counts.dtype == np.uint16 and got.counts.sum() > 0
    for k in ("top", "counts", "below", "zeros", "nonfinite"):
        assert np.array_equal(getattr(got, k), getattr(want, k)), k
    print("ok")
""")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_c_stats_only_run_imports_no_numba_and_gives_numpys_histograms(dtype):
    """In a fresh process: the C backend's stats_only run (histograms filled in the helper
    thread, several segments) and its memory estimate import no Numba, and its histograms are the
    numpy backend's. (Importing Numba and loading its compiled histogram took ~1-1.5 s of a first
    call that takes 0.03 s warm.)"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, "-c", _FRESH.format(dtype=dtype)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fills_agree_past_2_to_the_62_and_refuse_beyond_int64_by_name(dtype):
    """Layer exponents near 2^62 (a zero-bias GELU stack reaches gradients near 10^-1.4e18): at 4
    bins a decade the top bin index is ~-5.6e18, past 2^62 (where the C fill refused and the NumPy
    fill stood in) but inside int64: the three fills store the same arrays, and the top is the bin
    of a layer of ones computed here in integer arithmetic from its exponent (to float64's
    resolution of a log10 that large). At 7 bins a
    decade the index passes 2^63, where Numba and NumPy stored INT64_MIN: each fill refuses with a
    ValueError naming hist_per_decade and the finest that fits (6)."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(5)
    e = np.array([-(2**62), -(2**62) + 12345, 2**62 - 7, 17], np.int64)
    dW = _random_layers(rng, 4, 600, dtype)
    dW[0] = 1.0  # one layer of ones: log10 |v| + e log10 2 = e log10 2 exactly in integers below
    bins = 40
    want = _fill("numpy", dW, e, 4, bins, np.uint32)
    for fill in ("numba", "c"):
        _assert_same(_fill(fill, dW, e, 4, bins, np.uint32), want, fill)
    # floor(-2^62 log10(2) 4) in integers (log10(2) to 40 digits), to float64's resolution there
    # (an ulp of 5.5e18 is 1024: the bin of an exponent that large is as exact as its float64 log10)
    log10_2 = 3010299956639811952137388947244930267681  # x 10^-40
    exact = (-(2**62) * log10_2 * 4) // 10**40
    assert abs(int(want["top"][0]) - exact) <= 2048
    assert abs(want["top"][0]) > 2**62
    # every entry counted (a window of 40 bins is below an ulp there: bins apart by less than 1024
    # are one float64, as logscaled's log10 of such a number is off by up to 256 decades)
    assert want["counts"][0].sum() == 600 and want["below"][0] == 0
    for fill in ("numpy", "numba", "c"):
        with pytest.raises(ValueError, match=r"hist_per_decade=7: .*10\^-?1\.388e\+18.*hist_per_decade=6 or less"):
            if fill == "c":
                histograms.fill_streaming(dW, e, 7, bins, *(np.zeros(4, np.int64),), np.zeros((4, bins), np.uint32),
                                          np.zeros(4, np.int64), np.zeros(4, np.int64), np.zeros(4, np.int64),
                                          kernel=cb.histogram_fill)
            else:
                _fill(fill, dW, e, 7, bins, np.uint32)
