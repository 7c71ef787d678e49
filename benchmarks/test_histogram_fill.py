"""The streaming histograms of a ``stats_only`` run (log10 |dW| per layer, 180 bins of 1/10 decade):
the C fill (``gradbench.cbackend.histogram_fill``), the Numba kernel (``gradbench.kernels.histogram_fill_kernel``,
unchecked, as a Numba run's engine calls it) and NumPy's reference (``gradbench.histograms.fill_streaming``
without a kernel), on the same layers.

Group ``hist-fill-*`` per shape and dtype; every fill's counts are checked against NumPy's first.
The C fill is what a C run uses (it imports no Numba: a first stats_only call at L = 300, N = 64,
B = 64 took 0.45-0.87 s with the Numba kernel loaded for it, 0.037-0.046 s after). Under ``make
test`` (benchmarks disabled) tiny stand-ins run once.
"""

from __future__ import annotations

import numpy as np
import pytest

from gradbench.histograms import DEFAULT_BINS, DEFAULT_PER_DECADE, fill_streaming

SHAPES = [(300, 64, 64), (50, 256, 256)]
TINY = (3, 8, 8)


def _kernel(name):
    if name == "numpy":
        return None
    if name == "c":
        cb = pytest.importorskip("gradbench.cbackend", reason="C extension not built", exc_type=ImportError)
        return cb.histogram_fill
    pytest.importorskip("numba")
    from gradbench.kernels import histogram_fill_kernel as histogram_fill  # what the engine runs (unchecked)

    return histogram_fill


def _fill(dW, e, kernel):
    m, bins = dW.shape[0], DEFAULT_BINS
    cdt = np.uint16 if dW[0].size < 2**16 else np.uint32
    out = dict(top=np.zeros(m, np.int64), counts=np.zeros((m, bins), cdt), below=np.zeros(m, np.int64),
               zeros=np.zeros(m, np.int64), nonfinite=np.zeros(m, np.int64))
    fill_streaming(dW, e, DEFAULT_PER_DECADE, bins, out["top"], out["counts"], out["below"], out["zeros"],
                   out["nonfinite"], kernel=kernel)
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("fill", ["c", "numba", "numpy"])
def test_histogram_fill(benchmark, fill, shape, dtype):
    kernel = _kernel(fill)
    shape = TINY if benchmark.disabled else shape
    rng = np.random.default_rng(0)
    dW = (rng.standard_normal(shape) * np.exp2(rng.integers(-20, 20, size=shape))).astype(dtype)
    e = rng.integers(-3000, 3000, size=shape[0]).astype(np.int64)
    want, got = _fill(dW, e, None), _fill(dW, e, kernel)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{fill} {k}")
    benchmark.group = f"hist-fill-{'x'.join(map(str, shape))}-{np.dtype(dtype).name}"
    benchmark.extra_info.update(entries=int(dW.size))
    benchmark.pedantic(lambda: _fill(dW, e, kernel), rounds=1 if benchmark.disabled else 15, iterations=1,
                       warmup_rounds=0 if benchmark.disabled else 1)
