"""``LogScaled``: numbers carried as a floating mantissa times an integer power of two.

Each row (sample) of a stack's backward signal is rescaled after every layer by ``2**-e`` (exact
in floating point; a recurrent net's whole state after every step) and ``e`` is added to that
row's int64 exponent, so the true value is
``mantissa * 2**exponent`` at any depth: a gradient of 10^-30000 is reported as such, not as 0.
"""

from __future__ import annotations

import decimal
import math
import warnings
from dataclasses import dataclass

import numpy as np

from gradbench.abi import EXP_CLAMP

LOG10_2 = float(np.log10(2.0))
# log10(2) to 50 digits, for a decade printed right at any exponent (float64's e * log10(2) is
# off by up to ulp(|e| log10 2): a hundredth of a decade from |e| ~ 2^41 on, 256 decades at 2^62)
LOG10_2_DIGITS = decimal.Decimal("0.30102999566398119521373889472449302676818988146211")
# The dtypes to_float returns: a wider one (longdouble) would hold values its float64 ldexp lost
FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


class UnderflowWarning(RuntimeWarning):
    """A LogScaled value was converted to a float that cannot hold it."""


@dataclass(frozen=True, eq=False)
class LogScaled:
    """``mantissa * 2**exponent`` with an int64 exponent per leading index.

    ``exponent.shape`` is a prefix of ``mantissa.shape``: a gradient ``(L, N, N)`` carries one
    exponent per layer ``(L,)``; a per-layer norm ``(L,)`` carries ``(L,)``; a stack's input
    gradient ``(B, D)`` (``Result.input_grad``) one per sample ``(B,)``. The exponent must
    hold integers: an integer array, or floats equal to integers (3.0); 2.5, NaN or a string is
    refused (it was truncated, so that the value silently changed).

    NumPy does not convert a LogScaled implicitly (``np.asarray``, ``plt.plot``, ``pd.Series``
    raise a TypeError): ``.log10()`` gives the exact magnitudes, ``.to_float()`` the values as
    far as a float holds them.
    """

    mantissa: np.ndarray
    exponent: np.ndarray

    def __post_init__(self):
        m, e = self.mantissa, self.exponent
        if type(m) is not np.ndarray:
            m = np.asarray(m)
        if type(e) is not np.ndarray or e.dtype != np.int64:
            e = _int64_exponent(e)
        if m.shape[: e.ndim] != e.shape:
            raise ValueError(
                f"exponent shape {e.shape} must be a prefix of mantissa shape {m.shape}"
            )
        object.__setattr__(self, "mantissa", m)
        object.__setattr__(self, "exponent", e)

    @classmethod
    def _of(cls, mantissa: np.ndarray, exponent: np.ndarray) -> "LogScaled":
        """``LogScaled(mantissa, exponent)`` without its checks, for arrays the caller guarantees:
        ``mantissa`` an ndarray and ``exponent`` an int64 ndarray whose shape is a prefix of the
        mantissa's (the engine's results; the checks took a twentieth of a small call's Python)."""
        obj = object.__new__(cls)
        object.__setattr__(obj, "mantissa", mantissa)
        object.__setattr__(obj, "exponent", exponent)
        return obj

    @classmethod
    def from_float(cls, x) -> "LogScaled":
        """Split ordinary floats into normalised mantissas in [0.5, 1) and exponents."""
        m, e = np.frexp(np.asarray(x, dtype=np.float64))
        return cls(m, e.astype(np.int64))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.mantissa.shape

    def __len__(self) -> int:
        return len(self.mantissa)

    def __array__(self, dtype=None, copy=None):
        """Refused: NumPy would make an object array of 0-d LogScaled, one per entry (or fail on
        a sequence), and a float array would lose what its dtype cannot hold."""
        raise TypeError("a LogScaled is not converted to a NumPy array implicitly: use .log10() for the exact "
                        "magnitudes (log10 |value|) or .to_float() for the values as floats")

    def __getitem__(self, index) -> "LogScaled":
        """NumPy indexing of the values. Integers and slices (the common ``grads.W[l]``) index
        the exponent's leading axes alike and keep it compact; anything else (``...``, None,
        boolean masks, index arrays) indexes the exponent broadcast to the mantissa's shape, so
        each entry keeps its own (``c[..., 0]`` of a (2, 3) exponent took the first axis's
        exponent for the second's; a full-shape mask raised IndexError)."""
        if not isinstance(index, tuple):
            index = (index,)
        if all(isinstance(i, (int, np.integer, slice)) and not isinstance(i, bool) for i in index):
            return LogScaled(self.mantissa[index], self.exponent[index[: self.exponent.ndim]])
        full = np.broadcast_to(self._broadcast_exponent(), self.mantissa.shape)
        return LogScaled(self.mantissa[index], np.array(full[index]))

    def _broadcast_exponent(self) -> np.ndarray:
        extra = self.mantissa.ndim - self.exponent.ndim
        return self.exponent.reshape(self.exponent.shape + (1,) * extra)

    def log10(self) -> np.ndarray:
        """log10 |value|, exact at any exponent (-inf for zeros, nan for nan)."""
        with np.errstate(divide="ignore"):
            return np.log10(np.abs(self.mantissa.astype(np.float64))) + LOG10_2 * self._broadcast_exponent()

    def to_float(self, dtype=np.float64, warn: bool = True) -> np.ndarray:
        """The value as an ordinary float array.

        ``dtype``: float16, float32 or float64 (anything else is refused: an integer dtype turned
        the values into garbage). Values outside the dtype's range become 0 or inf; ``warn``
        says so with a :class:`UnderflowWarning` naming how many and the smallest exponent.
        """
        dtype = np.dtype(dtype)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"to_float's dtype must be float16, float32 or float64, got {dtype.name}")
        if self.mantissa.ndim == 0 and np.dtype(dtype) == np.float64:  # one number (a loss): math's ldexp
            m = np.float64(self.mantissa)
            try:
                out = np.float64(math.ldexp(m, max(-(2**30), min(2**30, int(self.exponent)))))
            except OverflowError:
                out = np.float64(math.copysign(math.inf, m))
        else:
            m = self.mantissa if self.mantissa.dtype == np.float64 else self.mantissa.astype(np.float64)
            # ldexp takes int32 exponents; anything beyond +-2^30 is 0 or inf anyway. Clipped
            # per exponent, then broadcast over the mantissas (one per layer of a (L, N, N) array)
            e = np.minimum(np.maximum(self.exponent, -(2**30)), 2**30).astype(np.int32)  # np.clip: slower
            with np.errstate(over="ignore", under="ignore"):  # said below (warn), or not at all: NumPy's too
                out = np.ldexp(m, e.reshape(e.shape + (1,) * (m.ndim - e.ndim))).astype(dtype, copy=False)
        if warn:
            lost = (out == 0) & (m != 0)
            if lost.any():
                warnings.warn(
                    f"{int(lost.sum())} of {m.size} values underflow {np.dtype(dtype).name} "
                    f"(down to 10^{float(np.nanmin(self.log10()[lost])):.0f}); "
                    "they are 0 here, use .log10() for exact magnitudes",
                    UnderflowWarning,
                    stacklevel=2,
                )
            over = np.isinf(out) & np.isfinite(m)
            if over.any():
                warnings.warn(
                    f"{int(over.sum())} of {m.size} values overflow {np.dtype(dtype).name}; "
                    "they are inf here, use .log10() for exact magnitudes",
                    UnderflowWarning,
                    stacklevel=2,
                )
        return out

    def __repr__(self) -> str:
        if self.mantissa.size <= 6:  # the sign too: -10^0.5441 is -3.5 (it read as +3.5)
            m = np.ravel(self.mantissa)
            e = np.ravel(np.broadcast_to(self._broadcast_exponent(), self.mantissa.shape))
            body = ", ".join(_entry(mi, ei) for mi, ei in zip(m, e))
            return f"LogScaled([{body}])"
        return f"LogScaled(shape={self.shape}, {_spread(self.log10())})"


def _spread(d: np.ndarray) -> str:
    """What the repr of many values says of them, from their log10 |value| ``d``: the range of the
    non-zero finite ones and how many are 0 or not finite ("exponent range [176, 348]", the
    power-of-two exponents per leading index, was printed for 400 norms that were all 0)."""
    finite = d[np.isfinite(d)]
    zeros, bad = int(np.count_nonzero(d == -np.inf)), int(d.size - finite.size - np.count_nonzero(d == -np.inf))
    if not finite.size:
        parts = ["all 0" if zeros == d.size else "none finite"] if not (zeros and bad) else []
    else:
        parts = [f"|values| 10^{finite.min():.4g} to 10^{finite.max():.4g}"]
    if zeros and (finite.size or bad):
        parts.append(f"{zeros} zero")
    if bad and (finite.size or zeros):
        parts.append(f"{bad} not finite")
    return ", ".join(parts)


def _entry(m, e) -> str:
    """One value for the repr: 10^d with its sign (-10^0.5441 is -3.5), 10^-inf for 0, and a
    non-finite mantissa as the value it is (nan, inf, -inf: a NaN loss read '-10^nan')."""
    if np.isnan(m):
        return "nan"
    if np.isinf(m):
        return "-inf" if m < 0 else "inf"
    return f"{'-' if np.signbit(m) and m != 0 else ''}10^{_decade(m, e)}"


def _int64_exponent(e) -> np.ndarray:
    """``e`` as int64: integers, or floats equal to integers; anything else is a TypeError."""
    a = np.asarray(e)
    bad = None
    if a.dtype.kind == "u":
        over = a > np.iinfo(np.int64).max
        bad = a[over].flat[0].item() if over.any() else None
    elif a.dtype.kind == "f":
        off = ~(np.isfinite(a) & (np.floor(a) == a) & (np.abs(a) < 2.0**63))
        bad = a[off].flat[0].item() if off.any() else None
    elif a.dtype.kind != "i":
        bad = e
    if bad is not None:
        raise TypeError("exponent must hold int64 integers (an integer array, or floats equal to integers), "
                        f"got {type(bad).__name__} {bad!r}")
    return a.astype(np.int64)


def _decade(m, e) -> str:
    """log10 |m 2^e| with 4 decimals, worked out in 50 digits so that the decimals are right at any
    exponent (``f"{log10:.4g}"`` printed 10^-64351.7 as 10^-6.435e+04); -inf, inf, nan as such."""
    m = float(m)
    if m == 0 or not math.isfinite(m):
        return "-inf" if m == 0 else ("nan" if math.isnan(m) else "inf")
    with decimal.localcontext(prec=60):
        return f"{decimal.Decimal(math.log10(abs(m))) + int(e) * LOG10_2_DIGITS:.4f}"


# ln 2 split in two (Cody and Waite, fdlibm's ln2_hi / ln2_lo): k * LN2_HI is exact for
# |k| < 2^20, so exp(x - k ln 2) loses nothing to the product there
LN2_HI, LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10
LN2 = math.log(2.0)


# ln of the smallest magnitude an exponent can carry: 2^-(2^62). Below it a value is 0, as a
# float below its range is; the margin to int64's 2^63 leaves room for the exponents it is added to.
LN_MIN = -(2.0**62) * LN2


def log_rem(top: float, k: int) -> float:
    """``top - k ln 2`` for ``k = floor(top / ln 2)``, put in [0, ln 2]: the log forms' entries
    are ``sign exp((ln - top) + log_rem(top, k))``, the largest in [1, 2]. Beyond |top| ~ 2^52
    top holds whole units, k is off by some and ``ln - k ln 2`` rounded anywhere within a few
    ulp(top): exp of it overflowed (float32 tanh of z ~ 1e19: a derivative of 2^(-1.5e18) read
    inf). The digits below the units are not there to keep; ``ln - top``, exact between close
    values, keeps the rest."""
    r = top - k * LN2_HI - k * LN2_LO
    return min(max(r, 0.0), LN2)


def from_log(ln: np.ndarray, sign) -> tuple[np.ndarray, int]:
    """``sign * exp(ln)`` (float64 arrays; ln may be -inf) as (mantissas, k) with the largest
    mantissa in [1, 2): ``sign exp(ln) = mantissas 2**k``. (zeros, 0) when no ln is finite or
    the largest lies below :data:`LN_MIN` (beyond any int64 exponent: a logit of -1e30 has a
    sigmoid of exp(-1e30) = 2^(-1.4e30))."""
    top = float(np.max(ln)) if np.size(ln) else -np.inf
    if not (LN_MIN <= top < np.inf):
        return np.zeros(np.shape(ln)), 0
    k = int(np.floor(top / LN2))  # ln 2 itself: top / LN2_HI is off by ~k LN2_LO / ln 2 steps at large k
    with np.errstate(under="ignore"):
        return sign * np.exp((ln - top) + log_rem(top, k)), k


def ldexp(m, e, out=None):
    """m * 2**e elementwise with int64 exponents, clamped to +-EXP_CLAMP (every float is 0 or
    inf beyond it) so that NumPy's int32 ldexp never wraps; into ``out`` when given."""
    return np.ldexp(m, np.minimum(np.maximum(e, -EXP_CLAMP), EXP_CLAMP).astype(np.int32), out=out)  # np.clip: slower
