"""The gate activations of the recurrent C kernels (csrc/gates.h) against extended precision and
against gradbench.activations (the reference): values and derivatives, near 0 and in saturation."""

from __future__ import annotations

import numpy as np
import pytest

from gradbench import abi
from gradbench.activations import dphi, phi

cb = pytest.importorskip("gradbench.recurrent.cbackend", reason="C extension not built")


def _gates(z, kind):
    z = np.ascontiguousarray(z)
    a, da = np.empty_like(z), np.empty_like(z)
    sfx = "f64" if z.dtype == np.float64 else "f32"
    cb.check(getattr(cb.lib, f"gb_gates_{sfx}")(cb.pointer(a, "void *"), cb.pointer(da, "void *"),
                                                cb.pointer(z, "void *"), z.size, kind), "gb_gates")
    return a, da


def _grid():
    mag = np.concatenate([np.geomspace(1e-300, 1e-3, 300), np.linspace(1e-3, 40, 4001), np.geomspace(40, 800, 400)])
    return np.concatenate([-mag[::-1], [-0.0, 0.0], mag])


def _ulps(got, want):
    want = np.asarray(want, dtype=np.float64)
    spacing = np.spacing(np.abs(want).astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(want == got, 0.0, np.abs(got - want) / np.where(spacing > 0, spacing, 5e-324))


def test_sigmoid_and_its_derivative_against_extended_precision():
    z = _grid()
    a, da = _gates(z, 0)
    zl = z.astype(np.longdouble)
    s = 1 / (1 + np.exp(-zl))
    ds = np.exp(-np.abs(zl)) / (1 + np.exp(-np.abs(zl))) ** 2
    normal = np.abs(ds) > 1e-300  # subnormal results round absolutely
    assert _ulps(a, s).max() <= 4
    assert _ulps(da[normal], ds[normal]).max() <= 6
    assert da[np.argmin(np.abs(z - 40))] > 4e-18  # not s (1 - s) = 0


def test_tanh_and_its_derivative_against_extended_precision():
    z = _grid()
    a, da = _gates(z, 1)
    zl = z.astype(np.longdouble)
    t = np.tanh(zl)
    sech2 = 1 / np.cosh(zl) ** 2
    normal = np.abs(sech2) > 1e-300
    assert _ulps(a, t).max() <= 4
    assert _ulps(da[normal], sech2[normal]).max() <= 6
    assert np.signbit(a[len(z) // 2 - 1]) and a[len(z) // 2 - 1] == 0  # tanh(-0) = -0
    assert da[np.argmin(np.abs(z - 300))] > 1e-262  # 4 e^-600, not 1 - tanh^2 = 0


def test_special_values():
    z = np.array([np.nan, np.inf, -np.inf, 1e308, -1e308])
    for kind, (want_a, want_da) in ((0, ([np.nan, 1, 0, 1, 0], [np.nan, 0, 0, 0, 0])),
                                    (1, ([np.nan, 1, -1, 1, -1], [np.nan, 0, 0, 0, 0]))):
        a, da = _gates(z, kind)
        np.testing.assert_array_equal(a, want_a)
        np.testing.assert_array_equal(da, want_da)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_against_the_reference_activations(dtype):
    """The same numbers as gradbench.activations to a few ulp of the largest value: the reference's
    s (1 - s) and 1 - tanh^2 lose relative accuracy towards saturation (absolute errors of an ulp
    of 1), where these keep it."""
    z = np.linspace(-15, 15, 3001).astype(dtype)
    for kind, name in ((0, "sigmoid"), (1, "tanh")):
        a, da = _gates(z, kind)
        code = abi.ACT_CODE[name]
        rtol = 1e-14 if dtype == "float64" else 1e-6
        np.testing.assert_allclose(a, phi(z, code, 0.0), rtol=rtol, atol=0)
        ref = dphi(z, code, 0.0)
        np.testing.assert_allclose(da, ref, rtol=0, atol=4 * float(np.finfo(dtype).eps) * np.abs(ref).max())
