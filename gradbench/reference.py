"""The NumPy reference backend: plain, readable, the oracle every other backend is tested against.

Dimension letters: L depth, B batch, N width. Layer functions take their arguments in the order
outputs, saved values, inputs, parameters (as in llm.c), and write into the outputs. The two
drivers :func:`stack_forward` and :func:`stack_backward` define what the Numba and C backends
compute, with the same names and the same arguments: the arrays of :data:`gradbench.abi.FORWARD`
and :data:`gradbench.abi.BACKWARD`, in that order, validated by :func:`gradbench.abi.check`
before the trusting ``stack_forward_kernel`` / ``stack_backward_kernel`` runs.

``stack_forward``
    reads ``H[0]`` (the input h_0), ``fexp[0]`` and ``frow[0]``; writes ``H[1:]`` (B, N) per layer,
    ``Z`` (the pre-activation z_l, or the normalised xhat_l under batch norm), the batch-norm
    mean and 1/std per unit, the forward exponents ``fexp[1:]`` and ``frow[1:]`` (all equal to
    ``fexp[0]`` and 0 unless forward rescaling is on), the statistics of h_{l+1} and ``info[0]``
    = first layer whose output is not finite (-1: none). With forward rescaling
    (``icfg[I_RESCALE_FWD]``: zero biases, no batch norm, any activation but sigmoid) each
    sample carries its own exponent: row i of H[l] and of Z[l] is a mantissa at exponent
    ``fexp[l] + frow[l, i]``, the activation is evaluated by
    :func:`gradbench.activations.phi_scaled` with the row's exponent, the forward's tail rescue
    decides row by row (:func:`rescue_forward_rows`), a residual add aligns row by row
    (:func:`add_aligned_rows`), and every row of h_{l+1} is normalised (max |H[l+1, i]| in
    [0.5, 1)); ``fexp[l+1]`` is the largest non-zero row's exponent and ``frow[l+1]`` the rows'
    offsets from it (:func:`layer_rows`); the statistics are taken at ``fexp[l+1]``.

``stack_backward``
    ``G`` (B, N) holds dL/dh_L on entry (true value of row i ``G[i] * 2**(sig_e[L] + row_e[i])``)
    and dL/dh_0 on exit (``G[i] * 2**(sig_e[0] + row_e[i])``, each row normalised).
    The caller hands over the top signal already normalised and, when signal clipping is on,
    already clipped (the engine does it once for the true dL/dh_L, :func:`top_signal`; at a
    checkpoint segment boundary the segment above has done it): the backward pass only
    normalises it again (a no-op on normalised input) and records ``sig_m[L]``. It must not clip
    it again: norm clipping ``g * (c / ||g||)`` can leave ``||g|| = c (1 + 1 ulp)``, and a second
    clip would change the bits, so segmented and one-piece runs would differ.
    Writes the parameter-gradient mantissas (the true dW_l is ``dW[l] * 2**(dw_e[l] +
    fexp[l])``, db, dgamma, dbeta use ``dz_e[l]``, dslope ``dw_e[l] + fexp[l]``; ``dw_e[l]``, the
    largest r_i + frow[l, i] over the rows where dL/dz_l and h_l are both non-zero,
    :func:`pair_top`; ``dz_e[l]``, the
    exponent of dL/dz_l, is the largest of its rows' exponents: ``sig_e[l+1]`` plus the shifts
    of the saturated-derivative rescue, :func:`rescue_rows`, where it acted), the
    signal norms ``sig_m[l] * 2**sig_e[l]`` = ||dL/dh_l|| for l = 0..L, ``gnorm_m[l] *
    2**gnorm_e[l]`` = ||dL/dW_l|| (:func:`norm_scaled`: no square lost to underflow),
    ``clip_acted[l]`` for l = 0..L-1 (1 where signal clipping changed dL/dh_l, by its own test in
    :func:`clip_signal_acted`; 0 without signal clipping; ``clip_acted[L]``, the top's, is the
    caller's, :func:`top_signal_acted`, and left as it is), and ``info[1]`` = first layer (counting down from the top)
    whose backpropagated signal is not finite.

The exact chain: after every layer each row g_i of the signal is replaced by ``g_i * 2**-e_i``
with e_i the exponent of max|g_i| (frexp), and e_i is added to the row's int64 exponent; sums
over the batch take the rows at the layer's largest exponent (:func:`scaled_rows`).
Multiplication by a power of two is exact, so the mantissas are the numbers that
unbounded-exponent arithmetic would give.
Statistics are accumulated in float64 whatever the dtype.
"""

from __future__ import annotations

import math

import numpy as np

from gradbench import abi
from gradbench.abi import CLIP_NORM, CLIP_VALUE, EXP_CLAMP, I_ACT, I_BN, I_CLIP, I_RESCALE_FWD, I_RESIDUAL
from gradbench.abi import F_ACT_PARAM, F_BN_EPS, F_CLIP, F_RES_SCALE, F_SAT, INFO_BACKWARD, INFO_FORWARD
from gradbench.activations import (LIMIT_RESCUE, PHI_RESCUE, RESCUE, RESCUE_BELOW, RESCUE_LN_MIN, RESCUE_X, TINY,
                                   _clamp, dphi, dphi_scaled, log_dphi, log_phi, phi, phi_scaled)
from gradbench.logscaled import from_log, log_rem
from gradbench.spec import ACTIVATIONS

PRELU = abi.ACT_CODE["prelu"]


# ------------------------------------------------------------------ layers
def dense_forward(z, h, W, b):
    """z = h W^T + b.    z (B,N), h (B,N), W (N,N), b (N,), or (B,N): a bias per row (:func:`bias_rows`)

    The product in any order (BLAS), then :func:`dense_fix` on the entries that are not finite."""
    np.matmul(h, W.T, out=z)
    z += b
    if not np.all(np.isfinite(z)):
        dense_fix(z, h, W, b)


def _exp_of_max(x: np.ndarray) -> int | None:
    """Binary exponent of max|x| (frexp; 0 for all zeros), None when x is not all finite."""
    m = float(np.max(np.abs(x))) if x.size else 0.0
    return math.frexp(m)[1] if math.isfinite(m) else None


def dense_fix(z, h, W, b):
    """Recompute, exactly scaled, every entry z[r, j] that is not finite while h[r], W[j] and b[j]
    are (b (N,), or (B,N): row r's own b[r]): its products overflowed one by one (or their sum
    did), so its sign, or whether it is finite at all, would depend on the order of the sum and
    on fused multiply-adds.

        eh, ew = exponents of max|h[r]|, max|W[j]|  (frexp; powers of two are exact)
        s = 0;  for k = 0..K-1: s += (h[r,k] 2^-eh) * (W[j,k] 2^-ew)     float64, each product
        s += b[j] 2^-(eh+ew)                                             rounded, no FMA
        z[r, j] = dtype(ldexp(s, eh + ew))      +-inf where it truly overflows, finite if it cancels

    The same code, operation by operation, in kernels/layers.py and csrc/stack_impl.h
    (``dense_fix``), so all three backends give the same bits there. z (B,N), h (B,K), W (N,K)."""
    for r in np.flatnonzero(~np.all(np.isfinite(z), axis=1)):
        eh = _exp_of_max(h[r])
        if eh is None:
            continue
        br = b[r] if b.ndim == 2 else b
        exps = {j: _exp_of_max(W[j]) for j in np.flatnonzero(~np.isfinite(z[r])) if math.isfinite(br[j])}
        js = [j for j, e in exps.items() if e is not None]  # W[j] all finite too
        if not js:
            continue
        ew = np.array([exps[j] for j in js], dtype=np.int64)
        x = np.ldexp(h[r].astype(np.float64), -eh)
        P = x[None, :] * np.ldexp(W[js].astype(np.float64), -ew[:, None])  # (J, K): each product rounded
        s = np.zeros(len(js))
        for k in range(P.shape[1]):  # sequential in k, for every entry at once
            s += P[:, k]
        s += np.ldexp(br[js].astype(np.float64), -(eh + ew))
        with np.errstate(over="ignore"):
            z[r, js] = np.ldexp(s, eh + ew).astype(z.dtype)


def dense_backward(dh, dW, db, dz, h, W):
    """dW = dz^T h, db = sum_B dz, dh = dz W.    dh (B,N), dW (N,N), db (N,), dz (B,N), h (B,N)"""
    np.matmul(dz.T, h, out=dW)
    db[...] = dz.sum(axis=0)
    np.matmul(dz, W, out=dh)


def batchnorm_mean(z):
    """The mean over the batch of each column of z (B,N), exact where a column is constant: per
    block of :data:`gradbench.abi.BN_ROWS` rows, the sum S_q of its rows' differences from its
    first row c_q (in row order); then mean = c_0 + sum_q (n_q (c_q - c_0) + S_q) / B, the blocks
    in order (n_q rows in block q). A column whose entries are all equal (a unit whose weights
    are zero, one sample repeated) has mean exactly that value, xhat exactly 0 and y exactly
    beta, where the plain sum / B rounds and leaves xhat at rounding times 1/sqrt(eps). Every
    backend sums in this order, so a thread computes its blocks without the others' rows."""
    B, N = z.shape
    k = abi.BN_ROWS
    nq = -(-B // k)
    c = z[::k]  # (nq, N): each block's first row
    blocks = np.concatenate([z, np.repeat(c[-1:], nq * k - B, axis=0)])  # the last block padded: + 0
    S = (blocks.reshape(nq, k, N) - c[:, None, :]).sum(axis=1)  # in row order
    n = np.minimum(k, B - k * np.arange(nq)).astype(z.dtype)
    return c[0] + (n[:, None] * (c - c[0]) + S).sum(axis=0) / z.dtype.type(B)  # the blocks in order


def batchnorm_forward(y, xhat, mean, rstd, z, gamma, beta, eps):
    """y = gamma * (z - mean_B) * rstd + beta, rstd = 1/sqrt(var_B + eps) (biased variance).

    y, xhat, z (B,N); mean, rstd, gamma, beta (N,); mean_B as :func:`batchnorm_mean` takes it.
    """
    mean[...] = batchnorm_mean(z)
    d = z - mean
    with np.errstate(over="ignore"):
        var = (d ** 2).mean(axis=0)
    rstd[...] = 1.0 / np.sqrt(var + eps)
    batchnorm_far_columns(rstd, var, d, eps)
    xhat[...] = d * rstd
    y[...] = gamma * xhat + beta


def batchnorm_far_columns(rstd, var, d, eps):
    """rstd of the columns whose sum of squared deviations overflowed (``var`` inf, the
    deviations ``d`` = z - mean_B (B,N) finite: |d| beyond ~1e154, float32 ~1e19), from the
    deviations scaled by 2^-k, k the exponent of the column's largest |d| (frexp):
    rstd = 2^-k / sqrt(sum_B (d 2^-k)^2 / B + eps 2^-2k), the sum in the dtype in row order,
    the rest in float64 as the plain formula. Exact scaling, so only the overflow changes;
    columns whose variance is finite are left as they are (their bits too)."""
    with np.errstate(invalid="ignore"):
        top = np.max(np.abs(d), axis=0, initial=0.0)
    for j in np.flatnonzero(np.isinf(var) & np.isfinite(top)):
        k = math.frexp(float(top[j]))[1]
        s = np.ldexp(d[:, j], -k)
        v = np.sum(s * s, dtype=d.dtype) / d.dtype.type(d.shape[0])
        rstd[j] = math.ldexp(1.0 / math.sqrt(float(v) + math.ldexp(float(eps), -2 * k)), -k)


def batchnorm_backward(dz, dgamma, dbeta, dy, xhat, rstd, gamma):
    """Train-mode batch norm backward, linear in dy.

    dz = gamma * rstd * (dy - mean_B(dy) - xhat * mean_B(dy * xhat)), dbeta = sum_B dy = B mean_B(dy),
    dgamma = sum_B dy xhat; mean_B(dy) as :func:`batchnorm_mean` takes it (a column of dy whose
    entries are all equal, as one sample repeated gives, has dz exactly 0 there).
    dz, dy, xhat (B,N); dgamma, dbeta, rstd, gamma (N,)
    """
    B = dy.shape[0]
    mdy = batchnorm_mean(dy)
    dbeta[...] = mdy * B
    dgamma[...] = (dy * xhat).sum(axis=0)
    dz[...] = gamma * rstd * (dy - mdy - xhat * (dgamma / B))


def activation_forward(a, z, code, param, f=None):
    """a = phi(z).    a, z (B,N)

    With a forward exponent ``f`` (forward rescaling): z is the mantissa of z 2^f and a the
    mantissa of phi(z 2^f) at the same exponent (:func:`gradbench.activations.phi_scaled`).
    """
    a[...] = phi(z, code, param) if f is None else phi_scaled(z, f, code, param)


def rescue_forward(a, z, f, code, param):
    """A layer whose every unit's phi lies deep in its tail, in log form; returns a's exponent.

    ``a`` is the mantissa of phi(z 2^f) at exponent f (:func:`activation_forward`). For the
    :data:`~gradbench.activations.PHI_RESCUE` activations phi itself underflows for finite z
    (GELU below z = -37.5): when the layer's largest |phi| lies below RESCUE_BELOW and some
    unit below RESCUE_X, every unit is taken from ln|phi| (:func:`~gradbench.activations.log_phi`;
    those in the linear regime keep their exact mantissas) and a is rewritten at the exponent of
    the largest, which is returned (f otherwise). Only a layer whose largest ln|phi| is below
    -2^62 ln 2 stays 0, as in the backward's rescue.
    """
    dt = a.dtype.name
    name = ACTIVATIONS[code]
    with np.errstate(invalid="ignore"):
        m = float(np.max(np.abs(a), initial=0.0))
    if name not in PHI_RESCUE or not _rescue_looks_at(m, f, name, a.dtype):
        return f
    with np.errstate(over="ignore", under="ignore"):
        x = np.ldexp(z.astype(np.float64), _clamp(f))
    if not np.any(x <= RESCUE_X[dt][name]):
        return f
    a64 = a.astype(np.float64)
    linear = np.abs(x) < TINY[dt][name]  # exact mantissas at exponent f: phi = c z to the last bit
    if name in LIMIT_RESCUE:
        linear |= x > 0  # phi = lambda x
    ln, sign = log_phi(x, code, param)
    with np.errstate(divide="ignore"):
        ln = np.where(linear, np.log(np.abs(a64)) + f * math.log(2.0), ln)
    if not np.max(ln, initial=-np.inf) >= RESCUE_LN_MIN:
        return f
    out, k = from_log(ln, sign)
    with np.errstate(under="ignore"):
        out = np.where(linear, np.ldexp(a64, _clamp(f - k)), out)
    a[...] = out.astype(a.dtype)
    return k


def activation_backward(dz, da, z, code, param, f=None):
    """dz = da * phi'(z); returns dL/dslope = sum(da * min(z, 0)) for PReLU, else 0.

    dz, da, z (B,N). With ``f``: phi' of z 2^f (:func:`gradbench.activations.dphi_scaled`).
    """
    dz[...] = da * (dphi(z, code, param) if f is None else dphi_scaled(z, f, code, param))
    if code != PRELU:
        return 0.0
    return float(np.sum(da * np.minimum(z, 0), dtype=np.float64))


def rescue_saturated(dz, da, z, code, param, f=None) -> int:
    """Recompute dz = da * phi'(z) of a layer whose every entry fell below
    ``RESCUE_BELOW[dtype]`` (deeply saturated units: the product underflows, or lost its digits
    as a subnormal) in log form, scaled by 2^-k; returns k, to be added to the layer's exponent
    (0 and dz untouched when the layer is not that small or nothing is nonzero).

    ell = ln|da| + ln|phi'(z 2^f)|, k = floor(max ell / ln 2), dz = sign * exp(ell - k ln 2):
    max|dz| in [1, 2). Only for the :data:`~gradbench.activations.RESCUE` activations.
    """
    if ACTIVATIONS[code] not in RESCUE:
        return 0
    with np.errstate(invalid="ignore"):
        m = np.max(np.abs(dz), initial=0.0, where=~np.isnan(dz))
    if not m < RESCUE_BELOW[dz.dtype.name]:
        return 0
    x = np.asarray(z, dtype=np.float64)
    if f is not None:
        x = np.ldexp(x, _clamp(f))
    ln, sign = log_dphi(x, code, param)
    da64 = np.asarray(da, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        ell = np.log(np.abs(da64)) + ln
        top = np.max(ell, initial=-np.inf, where=~np.isnan(ell))
        if not np.isfinite(top) or top < RESCUE_LN_MIN:  # beyond any int64 exponent: stays 0
            return 0
        k = int(math.floor(top / math.log(2)))
        dz[...] = np.sign(da64) * sign * np.exp((ell - top) + log_rem(top, k))
    return k


# ------------------------------------------------------------------ the exact chain
def normalise(g: np.ndarray) -> int:
    """Scale g in place by 2**-e so that max|g| lies in [0.5, 1); return e.

    e is 0 when g is all zero or when its largest magnitude is not finite.
    """
    if g.size == 0:
        return 0
    m = float(np.abs(g).max())
    if m != m:  # NaN entries: the largest of the others
        with np.errstate(invalid="ignore"):
            m = float(np.max(np.abs(g), initial=0.0, where=~np.isnan(g)))
    if m == 0 or not math.isfinite(m):
        return 0
    e = math.frexp(m)[1]
    scale_pow2(g, -e)
    return e


def scale_pow2(g: np.ndarray, k: int) -> None:
    """g *= 2**k in place, exactly, for k >= 0 or values that stay normal.

    When 2**k itself is not a finite number of g's dtype (k > 1023 in float64, > 127 in
    float32: a subnormal max|g| being normalised) it is applied in two exact steps.
    """
    t = g.dtype.type
    if k <= _MAX_POW2[g.dtype.char]:
        g *= t(math.ldexp(1.0, k))  # below 2^-1074 (float32: 2^-149): 0, as np.ldexp
    else:
        k1 = k // 2
        g *= t(math.ldexp(1.0, k1))
        g *= t(math.ldexp(1.0, k - k1))


_MAX_POW2 = {np.dtype(t).char: np.finfo(t).maxexp - 1 for t in (np.float64, np.float32)}  # largest finite 2**k


def _ldexp(x: np.ndarray, e: int) -> np.ndarray:
    e = int(np.clip(e, -EXP_CLAMP, EXP_CLAMP))
    return np.ldexp(x, e).astype(x.dtype)


def add_aligned(a: np.ndarray, ea: int, s: np.ndarray, es: int, scale: float = 1.0):
    """scale * a * 2**ea + s * 2**es (a residual branch plus its skip), written into a, at the
    larger exponent; returns it."""
    em = max(ea, es)
    a[...] = _ldexp(s, es - em) + np.asarray(scale, dtype=a.dtype) * _ldexp(a, ea - em)
    return em


# ------------------------------------------------------------------ one exponent per row
# The backward signal carries a power of two per row (sample): row i of G is G[i] * 2**r[i].
# Sums over the batch (dW, db, the norms) take the rows at the layer's exponent, the largest
# row's (row_top), as plain arithmetic would round the far smaller rows away there and only there.
def nonzero_rows(X: np.ndarray) -> np.ndarray:
    """(B,) bool: rows with an entry other than 0 (NaN counts)."""
    return np.logical_or.reduce(X, axis=1)  # X != 0 row by row, without the (B, N) temporary


def row_top(X: np.ndarray, r: np.ndarray, nz: np.ndarray | None = None) -> int:
    """The largest row exponent among X's non-zero rows; of all rows when every row is 0 (``nz``:
    :func:`nonzero_rows` of X, when the caller has it)."""
    nz = nonzero_rows(X) if nz is None else nz
    live = r[nz]
    return int(live.max()) if live.size else int(r.max())  # live.size: nz.any() without another pass


def row_shift(d: np.ndarray) -> np.ndarray:
    """Rows' shifts d (B,) clamped to the exponent range ldexp takes, as a (B, 1) int32 column
    (NumPy's ldexp has a vector loop for int32 exponents only: with int64 it took 7x longer)."""
    return np.minimum(np.maximum(d, -EXP_CLAMP), EXP_CLAMP).astype(np.int32)[:, None]  # (np.clip costs more)


def bias_rows(b: np.ndarray, f: np.ndarray) -> np.ndarray:
    """A forward-rescaled layer's bias for each row, (B,N): row i is b 2^-f[i] (ldexp: exact while
    normal, rounded once where subnormal, +-inf where it overflows), as row i of z_l is the
    mantissa of z_i 2^f[i] (f (B,), the rows' absolute exponents of h_l)."""
    return np.ldexp(b, row_shift(-f))


def bias_floor(b: np.ndarray) -> int | None:
    """The lowest row exponent f at which a layer's bias b 2^-f stays below 2^(T_MAX_EXP - 3)
    (2^1020 in float64, 2^124 in float32: b 2^-f and the product beside it add without
    overflowing): the exponent of max|b| less T_MAX_EXP - 3; None for a bias of zeros."""
    m = float(np.max(np.abs(b))) if b.size else 0.0
    if m == 0:
        return None
    return math.frexp(m)[1] - (np.finfo(b.dtype).maxexp - 4)


def raise_rows(H: np.ndarray, q: np.ndarray, e: int, floor: int) -> None:
    """Rows of a rescaled h_l (row i = H[i] 2^(e + q[i])) below the bias's floor
    (:func:`bias_floor`) brought up to it, in place: H[i] times 2^(e + q[i] - floor) (ldexp,
    rounded once; a row that far below keeps its leading bits down to the dtype's smallest
    subnormal, 2^-1074 of the floor in float64, and reads 0 below that, as plain arithmetic reads
    it beside the bias), q[i] = floor - e. Only rows ~2^1020 below the bias (float32 2^124):
    inputs that tiny, a GELU or swish row deep in its negative tail. A row of zeros (every unit
    dead) is put at the floor too, wherever it was: any exponent holds it, and at its old one, up
    to ~2^1990 above the bias after huge activations, b 2^-f read 0 (loss and gradients -inf
    where the exact chain is finite)."""
    f = e + q
    low = (f < floor) | ~nonzero_rows(H)
    if low.any():
        H[low] = np.ldexp(H[low], row_shift(np.minimum(f[low] - floor, 0)))
        q[low] = floor - e


def scaled_rows(X: np.ndarray, r: np.ndarray, e: int) -> np.ndarray:
    """A copy of X with row i times 2**(r[i] - e), rounded once (ldexp: exact while normal)."""
    return np.ldexp(X, row_shift(r - e))


def pair_rows(X: np.ndarray, r: np.ndarray, e: int) -> np.ndarray:
    """:func:`scaled_rows` for a sum over rows taken at a pair exponent e (:func:`pair_top`): a row
    above e (its partner row is 0) is not scaled up, where 2^(r - e) could overflow and inf * 0
    read NaN; it adds exactly 0 (a NaN row still NaN), as in exact arithmetic."""
    return scaled_rows(X, np.minimum(r, e), e)


def row_exponents(G: np.ndarray) -> np.ndarray:
    """frexp's exponent of each row's max|G[i]| (NaN ignored), int32 (ldexp's vector loop); 0 for
    rows of zeros and rows whose largest magnitude is not finite."""
    m = np.fmax.reduce(np.abs(G), axis=1, initial=0.0)  # NaN ignored (a row of NaN: NaN)
    with np.errstate(invalid="ignore"):
        return np.frexp(m)[1] * np.isfinite(m)  # frexp: exponent 0 for 0


def normalise_rows(G: np.ndarray, r: np.ndarray) -> None:
    """:func:`normalise` row by row: max|G[i]| in [0.5, 1), its exponent added to r[i] (rows of
    zeros, or whose largest magnitude is not finite, unchanged)."""
    e = row_exponents(G)
    np.ldexp(G, -e[:, None], out=G)  # exact for the largest entries; the others rounded once, as scale_pow2
    r += e


def clip_rows(G: np.ndarray, r: np.ndarray, mode: int, c: float) -> bool:
    """:func:`clip_signal_acted` on the true rows G[i] * 2**r[i] (normalised), in place; whether
    it acted. Value: each row over c clipped at 2**ec (c = t 2**ec); norm: the batch's norm."""
    if mode == CLIP_VALUE:
        ec = int(np.frexp(c)[1])
        t = np.ldexp(c, -ec)
        m = np.max(np.abs(G), axis=1, initial=0.0)
        over = np.ldexp(m, row_shift(r - ec)[:, 0]) > t
        if over.any():
            G[over] = np.clip(scaled_rows(G[over], r[over], ec), -t, t)
            r[over] = ec
        return bool(over.any())
    if mode == CLIP_NORM:
        e = row_top(G, r)
        n = _norm(scaled_rows(G, r, e))
        if np.ldexp(n, int(np.clip(e, -EXP_CLAMP, EXP_CLAMP))) > c:
            G *= np.asarray(c / n, dtype=G.dtype)
            r -= e
            return True
    return False


def signal_rows(G: np.ndarray, r: np.ndarray, mode: int = 0, c: float = 0.0) -> tuple[int, bool]:
    """A layer's signal made ready, in place: each row normalised, clipped (``mode``,
    :func:`clip_rows`) and normalised again, rows of zeros given the layer's exponent (no stale
    exponents), which it returns (:func:`row_top`) with whether the clip acted."""
    normalise_rows(G, r)
    acted = False
    if mode:
        acted = clip_rows(G, r, mode, c)
        normalise_rows(G, r)
    nz = nonzero_rows(G)
    e = row_top(G, r, nz)
    r[~nz] = e
    return e, acted


def rescue_rows(dz, da, z, code, param, f=None) -> np.ndarray:
    """:func:`rescue_saturated` row by row: each row of dz below ``RESCUE_BELOW`` (rows of zeros
    included) recomputed in log form; returns the rows' shifts (B,) int64 (0 where untouched).
    ``f``: None, or the rows' forward exponents (B,) (row i of z is z[i] * 2**f[i])."""
    k = np.zeros(dz.shape[0], dtype=np.int64)
    if ACTIVATIONS[code] not in RESCUE:
        return k
    small = np.fmax.reduce(np.abs(dz), axis=1, initial=0.0) < RESCUE_BELOW[dz.dtype.name]  # NaN ignored
    for i in np.flatnonzero(small):
        k[i] = rescue_saturated(dz[i:i + 1], da[i:i + 1], z[i:i + 1], code, param, None if f is None else int(f[i]))
    return k


#: A row of dz (a stack's backward without batch norm, after the derivative and its rescue) whose
#: largest |entry| lies below 2^-DZ_FAR_EXP or at or above 2^DZ_FAR_EXP (frexp's exponent beyond
#: +-DZ_FAR_EXP) is brought to [0.5, 1) by a power of two, its exponent added to the row's,
#: before dz W_l: a row of tanh' at |z| ~ 23 (float32 10^-20) times weights of 10^-30 underflowed
#: to 0 in the product, and every layer below read 0 where the exact gradient is 10^-1015
#: (the rescue acts only below 2^-100). Exact (a power of two), so bitwise nothing changes where
#: nothing under- or overflows. Not for PReLU: its slope gradient is labelled with dW's exponent,
#: which the raised rows would lower beyond what the slope sums' mantissas hold.
DZ_FAR_EXP = {"float64": 64, "float32": 24}


def far_rows(dz: np.ndarray) -> np.ndarray:
    """Scale the rows of dz (in place) whose largest |entry| (NaN ignored; finite and not 0) has
    a frexp exponent beyond +-``DZ_FAR_EXP`` into [0.5, 1); returns the exponents taken out (B,)
    int64, 0 for the other rows."""
    e = row_exponents(dz)
    e *= np.abs(e) > DZ_FAR_EXP[dz.dtype.name]  # the other rows keep theirs
    if e.any():
        np.ldexp(dz, -e[:, None], out=dz)  # exact: powers of two, rows far from 1 only (0 elsewhere)
    return e.astype(np.int64)


def add_aligned_rows(G: np.ndarray, r: np.ndarray, s: np.ndarray, rs: np.ndarray, scale: float = 1.0) -> None:
    """:func:`add_aligned` row by row: scale G[i] 2**r[i] + s[i] 2**rs[i] at the larger of the
    two exponents, into G and r; a row of zeros on one side takes the other side's exponent."""
    gz, sz = ~nonzero_rows(G), ~nonzero_rows(s)
    em = np.where(gz, rs, np.where(sz, r, np.maximum(r, rs)))
    branch = np.ldexp(G, row_shift(r - em))
    if scale != 1.0:
        branch *= np.asarray(scale, dtype=G.dtype)
    G[...] = np.ldexp(s, row_shift(rs - em)) + branch
    r[...] = em


def pair_top(X: np.ndarray, r: np.ndarray, Y: np.ndarray, q: np.ndarray) -> int:
    """The exponent at which a sum over the rows of X^T Y (row i of X at 2**r[i], of Y at
    2**q[i]) is taken: the largest r[i] + q[i] over the rows where both are non-zero, else
    :func:`row_top` of X (nothing to add: any exponent would do)."""
    both = nonzero_rows(X) & nonzero_rows(Y)
    return int((r + q)[both].max()) if both.any() else row_top(X, r)


def layer_rows(H: np.ndarray, g: np.ndarray) -> tuple[int, np.ndarray]:
    """The forward's rows made ready, in place: each row normalised (its exponent added to the
    absolute g (B,)); returns the layer's exponent (the largest non-zero row's, :func:`row_top`)
    and the rows' exponents relative to it (0 for rows of zeros; a row whose largest magnitude
    is not finite is left as it is, as :func:`normalise` leaves it, and counts as non-zero)."""
    normalise_rows(H, g)
    nz = nonzero_rows(H)
    e = row_top(H, g, nz)
    return e, np.where(nz, g - e, 0)


def _rescue_looks_at(m, f, name: str, dtype) -> np.ndarray:
    """Whether the forward's rescue looks at a row (or each row) whose largest |h| is ``m``, a
    mantissa at exponent ``f``: a finite one below RESCUE_BELOW (0 included), and for ELU and
    SELU (LIMIT_RESCUE) a subnormal one too, whose limit -alpha 2^-f lost digits at f.
    :func:`rescue_forward` and :func:`rescue_forward_rows` decide by it."""
    m = np.asarray(m, dtype=np.float64)
    below = math.frexp(RESCUE_BELOW[np.dtype(dtype).name])[1]
    healthy = (m > 0) & (np.frexp(m)[1].astype(np.int64) + f > below)
    if name in LIMIT_RESCUE:
        healthy &= m >= np.finfo(dtype).tiny
    return np.isfinite(m) & ~healthy


def rescue_forward_rows(a, z, f, code, param) -> np.ndarray:
    """:func:`rescue_forward` row by row (row i of z at exponent f[i]): returns the rows' exponents
    (f where a row is not rescued). Rows the rescue does not look at (:func:`_rescue_looks_at`)
    are left alone."""
    g = f.copy()
    if ACTIVATIONS[code] not in PHI_RESCUE:
        return g
    with np.errstate(invalid="ignore"):
        m = np.max(np.abs(a), axis=1, initial=0.0)
    for i in np.flatnonzero(_rescue_looks_at(m, f, ACTIVATIONS[code], a.dtype)):
        g[i] = rescue_forward(a[i:i + 1], z[i:i + 1], int(f[i]), code, param)
    return g


def clip_signal(g: np.ndarray, e: int, mode: int, c: float) -> int:
    """Clip the true value g * 2**e (value: to [-c, c]; norm: Frobenius norm <= c) in place.

    ``g`` must be normalised (max|g| < 1). Returns the new exponent.
    """
    return clip_signal_acted(g, e, mode, c)[0]


def clip_signal_acted(g: np.ndarray, e: int, mode: int, c: float) -> tuple[int, bool]:
    """:func:`clip_signal`, and whether it acted: its own test, max|g 2**e| > c (value; a NaN
    entry: no) or ||g 2**e|| > c (norm), decided on the true magnitude. Returns (exponent, acted)."""
    if mode == CLIP_VALUE:
        ec = int(np.frexp(c)[1])
        t = np.ldexp(c, -ec)  # c = t * 2**ec, t in [0.5, 1)
        m = float(np.max(np.abs(g), initial=0.0))
        if np.ldexp(m, int(np.clip(e - ec, -EXP_CLAMP, EXP_CLAMP))) > t:
            g[...] = np.clip(_ldexp(g, e - ec), -t, t)
            return ec, True
    elif mode == CLIP_NORM:
        n = float(np.sqrt(np.sum(np.square(g, dtype=np.float64))))
        if np.ldexp(n, int(np.clip(e, -EXP_CLAMP, EXP_CLAMP))) > c:
            g *= np.asarray(c / n, dtype=g.dtype)
            return 0, True
    return e, False


def _norm(x: np.ndarray) -> float:
    return float(np.sqrt(np.sum(np.square(x, dtype=np.float64))))


# A sum of squares in [SUMSQ_LO, SUMSQ_HI] lost nothing to underflow or overflow; outside it,
# the entries are first scaled by 2^-e (exact) with e the exponent of max|x| (BLAS nrm2's idea).
SUMSQ_LO, SUMSQ_HI = 2.0**-960, 2.0**960


def sumsq_scaled(x: np.ndarray) -> tuple[float, int]:
    """The sum of squares of x as s * 4**e (s = sum of (x 2^-e)^2), with no square lost to
    underflow or overflow; returns (s, e).

    e = 0 whenever the plain float64 sum is safe (then s is that plain sum, the same bits); else
    e is the exponent of max|x|, so s lies in [0.25, x.size]. NaN and inf entries give a
    non-finite s.
    """
    s = float(np.square(x, dtype=np.float64).sum())
    if SUMSQ_LO <= s <= SUMSQ_HI or not (s > 0 or np.any(x != 0)):
        return s, 0
    with np.errstate(invalid="ignore"):
        a = float(np.max(np.abs(x), initial=0.0))
    if not math.isfinite(a):
        return s, 0
    e = int(np.frexp(a)[1])
    return float(np.sum(np.square(np.ldexp(x.astype(np.float64), -e)))), e


def _scaled_by_top(h: np.ndarray) -> tuple[np.ndarray, int]:
    """``h`` in float64 times 2^-k, k the exponent of max|h| (exact), and k; k = 0 where that
    maximum is 0 or not finite (then the plain values, so an inf or NaN entry stays one)."""
    a = h.astype(np.float64)
    top = float(np.max(np.abs(a), initial=0.0))
    if not math.isfinite(top) or top == 0:
        return a, 0
    k = math.frexp(top)[1]
    return np.ldexp(a, -k), k


def scaled_std(h: np.ndarray) -> float:
    """The standard deviation over every entry of ``h`` as the kernels take it (two passes:
    sqrt(mean((h - mean)^2))), on h scaled by a power of two: exact where the plain squares
    overflow (a biased leaky-ReLU stack's activations of 1e292 read std "inf", so that float
    limits said the forward overflowed 124 layers before it did). inf or NaN where an entry is."""
    a, k = _scaled_by_top(h)
    return math.ldexp(float(np.sqrt(((a - a.mean()) ** 2).mean())), k)


def scaled_mean(h: np.ndarray) -> float:
    """The mean over every entry of ``h``, on h scaled by a power of two: finite wherever the
    entries are (a plain sum of 32 x 16 entries near 1e306 overflows: a ReLU stack at sigma_w = 3
    read mean "inf" from five layers before its forward did). inf or NaN where an entry is."""
    a, k = _scaled_by_top(h)
    return math.ldexp(float(a.mean()), k)


def rescale_stats(mean: np.ndarray, std: np.ndarray, H: np.ndarray, rows: np.ndarray | None = None) -> None:
    """``mean[l]`` and ``std[l]`` of ``H[l + 1]`` taken again by :func:`scaled_mean` and
    :func:`scaled_std` where the kernels' plain sums or squares overflowed (non-finite), in place:
    the stacks' and the recurrent engines' forward statistics (H[0] the input, as their arrays
    hold it; ``rows``, a stack's ``frow``: row i of H[l] taken at 2**rows[l, i]). Nothing to do
    is one check each."""
    for stat, again in ((mean, scaled_mean), (std, scaled_std)):
        if not np.all(np.isfinite(stat)):
            for l in np.flatnonzero(~np.isfinite(stat)):
                stat[l] = again(H[l + 1] if rows is None else scaled_rows(H[l + 1].astype(np.float64), rows[l + 1], 0))


def norm_scaled(x: np.ndarray) -> tuple[float, int]:
    """||x||_F = m * 2**e, with no square lost to underflow or overflow; returns (m, e).

    e = 0 whenever the plain float64 sum of squares is safe (then m is that plain norm, the
    same bits); NaN and inf entries give a non-finite m. (:func:`sumsq_scaled`, its square root.)
    """
    s, e = sumsq_scaled(x)
    return math.sqrt(s), e  # correctly rounded, as np.sqrt


def top_signal(G: np.ndarray, e: int, clip_mode: int, c: float) -> int:
    """Normalise and (signal clipping) clip the top gradient dL/dh_L = G * 2**e in place.

    The caller of :func:`stack_backward` does this once (the backward pass only normalises its
    top signal); returns the new exponent. Same steps as every other layer's signal.
    """
    return top_signal_acted(G, e, clip_mode, c)[0]


def top_signal_acted(G: np.ndarray, e: int, clip_mode: int, c: float) -> tuple[int, bool]:
    """:func:`top_signal`, and whether the clip acted on dL/dh_L (:func:`clip_signal_acted`; False
    without signal clipping): what the caller puts into ``clip_acted[L]``."""
    e = int(e) + normalise(G)
    acted = False
    if clip_mode:
        e, acted = clip_signal_acted(G, e, clip_mode, c)
        e += normalise(G)
    return e, acted


# ------------------------------------------------------------------ drivers
def stack_forward_kernel(icfg, fcfg, W, b, gamma, beta, slope, H, Z, bn_mean, bn_rstd, fexp, frow,
                         act_mean, act_std, saturation, dead, info):
    """Forward through all L layers, saving H and Z for the backward pass (module docstring)."""
    code, bn, k = int(icfg[I_ACT]), bool(icfg[I_BN]), int(icfg[I_RESIDUAL])
    rescale = bool(icfg[I_RESCALE_FWD])
    param, alpha, eps = fcfg[F_ACT_PARAM], fcfg[F_RES_SCALE], fcfg[F_BN_EPS]
    sat_threshold = fcfg[F_SAT]
    L = W.shape[0]
    info[INFO_FORWARD] = -1
    z = np.empty_like(H[0])
    for l in range(L):
        layer_param = slope[l] if code == PRELU else param
        if code == PRELU:  # 1 % of the largest |phi'| = max(1, |slope_l|) of the slope that runs
            sat_threshold = abi.saturation_threshold("prelu", float(slope[l]), H.dtype)
        # z's row i is the mantissa of z_i 2^f[i] when rescaling: one exponent per sample, the
        # bias too (b 2^-f[i]: biased stacks of unbounded activations, can_rescale_forward), each
        # row first brought up to where that stays in range (raise_rows)
        floor = bias_floor(b[l]) if rescale else None
        if floor is not None:
            raise_rows(H[l], frow[l], int(fexp[l]), floor)
        f = fexp[l] + frow[l] if rescale else None
        dense_forward(z, H[l], W[l], b[l] if floor is None else bias_rows(b[l], f))
        if bn:
            batchnorm_forward(z, Z[l], bn_mean[l], bn_rstd[l], z.copy(), gamma[l], beta[l], eps)
        else:
            Z[l] = z
        fc = None if f is None else f[:, None]
        activation_forward(H[l + 1], z, code, layer_param, fc)
        end = k and (l + 1) % k == 0  # a skip's add holds the layer: no rescue there
        if rescale:
            g = f if end else rescue_forward_rows(H[l + 1], z, f, code, layer_param)
            if end:
                g = g.copy()
                add_aligned_rows(H[l + 1], g, H[l + 1 - k], fexp[l + 1 - k] + frow[l + 1 - k], alpha)
            fexp[l + 1], frow[l + 1] = layer_rows(H[l + 1], g)
        else:
            fexp[l + 1], frow[l + 1] = fexp[l], 0
            if end:
                add_aligned(H[l + 1], 0, H[l + 1 - k], 0, alpha)
        # statistics of h_{l+1} (at the layer's exponent) and of z_l
        h = scaled_rows(H[l + 1].astype(np.float64), frow[l + 1], 0)
        act_mean[l] = h.mean()
        act_std[l] = np.sqrt(((h - act_mean[l]) ** 2).mean())
        d = dphi(z, code, layer_param) if f is None else dphi_scaled(z, fc, code, layer_param)
        saturation[l] = np.mean(np.abs(d) < sat_threshold)  # GELU, swish, a negative slope: phi' < 0
        dead[l] = np.mean(np.all(z <= 0, axis=0))
        if info[INFO_FORWARD] < 0 and not np.all(np.isfinite(H[l + 1])):
            info[INFO_FORWARD] = l


def stack_backward_kernel(icfg, fcfg, W, gamma, beta, slope, H, Z, bn_rstd, fexp, frow, G, row_e, dW, db, dgamma,
                          dbeta, dslope, sig_m, sig_e, gnorm_m, gnorm_e, dz_e, dw_e, clip_acted, info):
    """Backward through all L layers with the power-of-two rescaled chain, one exponent per
    row of the signal (module docstring)."""
    code, bn, k = int(icfg[I_ACT]), bool(icfg[I_BN]), int(icfg[I_RESIDUAL])
    clip_mode, c = int(icfg[I_CLIP]), float(fcfg[F_CLIP])
    rescale = bool(icfg[I_RESCALE_FWD])
    param, alpha = fcfg[F_ACT_PARAM], fcfg[F_RES_SCALE]
    L = W.shape[0]
    info[INFO_BACKWARD] = -1
    r = int(sig_e[L]) + row_e.astype(np.int64)  # row i of the signal is G[i] * 2**r[i]

    def finish(l, clip=True):
        """Normalise each row, clip (not at the top: the caller did) and record dL/dh_l, complete in G."""
        e, acted = signal_rows(G, r, clip_mode if clip else 0, c)
        if clip:  # clip_acted[L] is the caller's (it clipped the top signal)
            clip_acted[l] = acted
        sig_e[l] = e
        sig_m[l] = _norm(scaled_rows(G, r, e))
        if info[INFO_BACKWARD] < 0 and not np.all(np.isfinite(G)):
            info[INFO_BACKWARD] = l

    finish(L, clip=False)
    skip, skip_r = np.zeros_like(G), r.copy()
    da, dz, zl = np.empty_like(G), np.empty_like(G), np.empty_like(G)
    for l in range(L - 1, -1, -1):
        layer_param = slope[l] if code == PRELU else param
        da[...] = G
        if k and (l + 1) % k == 0:  # end of a group: dL/dh_{l+1} also flows down the skip
            skip[...], skip_r[...] = G, r
            da *= np.asarray(alpha, dtype=G.dtype)
        if bn:
            zl[...] = gamma[l] * Z[l] + beta[l]
        else:
            zl[...] = Z[l]
        q = frow[l]  # row i of h_l (and of z_l) at fexp[l] + q[i]
        f = fexp[l] + q if rescale else None
        dslope[l] = activation_backward(dz, da, zl, code, layer_param, None if f is None else f[:, None])
        r += rescue_rows(dz, da, zl, code, layer_param, f)
        r_act = r.copy()  # da's rows (PReLU is never rescued), before batch norm brings them to one
        if bn:  # batch norm mixes the rows: one exponent for the layer
            e = row_top(dz, r)
            dz[...] = scaled_rows(dz, r, e)
            r[...] = e
            dy = dz.copy()
            batchnorm_backward(dz, dgamma[l], dbeta[l], dy, Z[l], bn_rstd[l], gamma[l])
        else:
            dgamma[l] = 0
            dbeta[l] = 0
            if code != PRELU:  # (PReLU's slope gradient shares dW's exponent: its rows stay)
                r += far_rows(dz)  # a row far from 1 in [0.5, 1), so that dz W_l neither under- nor overflows
        e = row_top(dz, r)
        w = pair_top(dz, r, H[l], q)  # dW = sum_i dz_i^T h_i at 2**(fexp[l] + w)
        if code == PRELU:  # a sum over rows, at dW's exponent
            dslope[l] = np.sum(scaled_rows(da, r_act + q, w) * np.minimum(zl, 0), dtype=np.float64)
        db[l] = scaled_rows(dz, r, e).sum(axis=0)  # sums over rows: db at e, dW at w
        np.matmul(pair_rows(dz, r + q, w).T, H[l], out=dW[l])
        np.matmul(dz, W[l], out=G)  # each row at its own exponent
        gnorm_m[l], ge = norm_scaled(dW[l])
        gnorm_e[l] = w + fexp[l] + ge
        dz_e[l] = e
        dw_e[l] = w
        if k and l % k == 0:  # start of a group: add the skip path
            add_aligned_rows(G, r, skip, skip_r)
        finish(l)
    row_e[...] = r - sig_e[0]


stack_forward = abi.checked("stack_forward", stack_forward_kernel)
stack_backward = abi.checked("stack_backward", stack_backward_kernel)
