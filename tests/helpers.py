"""Shared helpers of the cross-backend tests: tolerances, problems, comparisons with clear failures.

Every comparison brings both sides to true values (mantissa * 2**exponent, aligned per layer at
the larger exponent) and checks them layer by layer, norm-wise: ``max|got - ref| <= rtol *
max|ref|`` over the layer. A failure names the backend, the quantity, the layer, the worst
index, both values and how far off they are. Non-finite entries must match exactly.
"""

from __future__ import annotations

import numpy as np

import gradbench as gb
from gradbench import abi, spec
from gradbench.logscaled import ldexp

# One table of tolerances keyed by dtype. "stack": a whole stack run freely in an ordered or
# critical regime (scaled by the measured growth of the chain otherwise); "layer": one layer
# (or one residual group) fed identical inputs; "flips": entries of a count statistic
# (saturation, dead) allowed to change side of their threshold through rounding.
TOL = {
    "float64": {"stack": 1e-12, "layer": 1e-13, "flips": 0, "eps": float(np.finfo(np.float64).eps)},
    "float32": {"stack": 1e-4, "layer": 1e-5, "flips": 2, "eps": float(np.finfo(np.float32).eps)},
}
# Beyond this the free-running comparison says nothing (the chain is chaotic): only the
# layer-by-layer checks and the backward on identical forward values are held.
MAX_STACK_RTOL = {"float64": 1e-7, "float32": 1e-1}
# dL/db under batch norm is 0 in exact arithmetic: what any backend returns is rounding noise,
# bounded relative to max(|dbeta|, |dgamma|) of the same layer.
BN_BIAS_NOISE = {"float64": 1e-9, "float32": 1e-2}
# The activations the C float32 layers evaluate in float lanes (csrc/vact_f32.h: within 3 float
# ulps of the reference's double evaluation, at every finite z); the others in double, rounded once.
FLOAT_LANES = ("elu", "selu", "sigmoid", "tanh")


def other_backends() -> list[str]:
    """Every available backend except the reference."""
    return [b for b in gb.backends() if b != "numpy"]


def problem(stack, batch, seed=0, x_scale=1.0):
    params = gb.init_params(stack, seed=seed)
    x = gb.gaussian_input(stack, batch=batch, seed=seed + 1)
    if x_scale != 1.0:
        x = (x * x_scale).astype(stack.dtype)
    rng = np.random.default_rng(seed + 2)
    t = None
    if stack.loss in ("mse", "bce"):
        t = rng.uniform(0, 1, (batch, stack.output_dim)).astype(stack.dtype)
    elif stack.loss == "softmax_ce":
        t = rng.integers(0, stack.output_dim, batch)
    return params, x, t


# ------------------------------------------------------------------ comparisons
def _rows(m, e):
    m = np.asarray(m, dtype=np.float64)
    e = np.asarray(e, dtype=np.int64)
    return m.reshape(max(e.size, 1), -1), e.reshape(-1) if e.ndim else e.reshape(1)


def _ldexp(m, e):
    return ldexp(m, e)


def assert_true_values(backend, what, got_m, got_e, ref_m, ref_e, rtol, *, exact_exponents=False,
                       layer_offset=0, floor=None):
    """got_m * 2**got_e agrees with ref_m * 2**ref_e layer by layer (leading axis = exponents).

    ``floor`` (one value per layer, in units of 2**ref_e): a lower bound of the scale that
    rtol is relative to, for quantities that are 0 in exact arithmetic in some cases.
    """
    gm, ge = _rows(got_m, got_e)
    rm, re = _rows(ref_m, ref_e)
    assert gm.shape == rm.shape, f"[{backend}] {what}: shape {gm.shape} vs reference {rm.shape}"
    for l in range(gm.shape[0]):
        layer = l + layer_offset
        if exact_exponents:
            assert ge[l] == re[l], (
                f"[{backend}] {what}, layer {layer}: exponent {ge[l]} vs reference {re[l]}")
        g, r = gm[l], rm[l]
        bad_r, bad_g = ~np.isfinite(r), ~np.isfinite(g)
        if np.any(bad_r) or np.any(bad_g):
            # NaN must stay NaN and inf keep its sign: compare the non-finite pattern exactly
            i = np.flatnonzero((np.isnan(r) != np.isnan(g)) | (np.isinf(r) != np.isinf(g))
                               | (np.isinf(r) & (np.sign(r) != np.sign(g))))
            assert i.size == 0, (
                f"[{backend}] {what}, layer {layer}, index {i[0]}: got {g[i[0]]!r}, reference {r[i[0]]!r}")
            keep = ~(bad_r | bad_g)
            g, r = g[keep], r[keep]
            if g.size == 0:
                continue
        em = max(int(ge[l]), int(re[l]))
        g = _ldexp(g, int(ge[l]) - em)
        r = _ldexp(r, int(re[l]) - em)
        scale = np.max(np.abs(r), initial=0.0)
        if floor is not None:
            scale = max(scale, float(_ldexp(np.float64(floor[l]), int(re[l]) - em)))
        diff = np.abs(g - r)
        worst = int(np.argmax(diff))
        if diff[worst] > rtol * scale:
            rel = diff[worst] / scale if scale > 0 else np.inf
            raise AssertionError(
                f"[{backend}] {what}, layer {layer}, index {np.unravel_index(worst, np.shape(got_m)[np.ndim(got_e):] or (1,))}: "
                f"got {g[worst]!r}, reference {r[worst]!r} (x 2**{em}); off by {rel:.3g} of the "
                f"layer's largest |value|, tolerance {rtol:.3g}")


def assert_bias_under_batchnorm(backend, what, got_db, got_e, ref_dbeta, ref_dgamma, ref_e, dtype):
    """Under batch norm dL/db_l = 0 exactly (the mean is subtracted): every backend returns
    rounding noise, so check it against the scale of the layer's other gradients instead."""
    gm, ge = _rows(got_db, got_e)
    bm, be = _rows(ref_dbeta, ref_e)
    cm, _ = _rows(ref_dgamma, ref_e)
    for l in range(gm.shape[0]):
        scale = max(np.max(np.abs(bm[l]), initial=0.0), np.max(np.abs(cm[l]), initial=0.0))
        if not np.isfinite(scale):
            continue
        worst = float(np.max(np.abs(_ldexp(gm[l], int(ge[l]) - int(be[l]))), initial=0.0))
        assert worst <= BN_BIAS_NOISE[dtype] * scale, (
            f"[{backend}] {what}, layer {l}: |db| = {worst:.3g} (x 2**{be[l]}) should be rounding noise, "
            f"<= {BN_BIAS_NOISE[dtype]} x max(|dbeta|, |dgamma|) = {scale:.3g}")


def bn_param_scale(dgamma, dbeta):
    """Per layer max(|dgamma|, |dbeta|): dbeta_l is exactly 0 when the layer above is batch norm
    with a linear path in between, so compare both against their joint scale."""
    g = np.abs(np.asarray(dgamma, float)).reshape(len(dgamma), -1)
    b = np.abs(np.asarray(dbeta, float)).reshape(len(dbeta), -1)
    return np.maximum(g.max(axis=1, initial=0.0), b.max(axis=1, initial=0.0))


def assert_ls(backend, what, got, ref, rtol, *, exact_exponents=False):
    """Two LogScaled values agree (true values, per leading index)."""
    assert_true_values(backend, what, got.mantissa, got.exponent, ref.mantissa, ref.exponent,
                       rtol, exact_exponents=exact_exponents)


def assert_fractions(backend, what, got, ref, count, flips, layer_offset=0):
    """Fractions of ``count`` items (saturation, dead) agree to ``flips`` items per layer (NaN,
    not defined for the activation, where the reference has NaN)."""
    got, ref = np.asarray(got), np.asarray(ref)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref), err_msg=f"[{backend}] {what}: NaN where")
    off = np.nan_to_num(np.abs(got - ref)) * count
    worst = int(np.argmax(off)) if off.size else 0
    assert off.size == 0 or off[worst] <= flips + 1e-9, (
        f"[{backend}] {what}, layer {worst + layer_offset}: got {got[worst]!r}, reference {ref[worst]!r} "
        f"({off[worst]:.0f} of {count} entries differ, {flips} allowed)")


def assert_equal_ints(backend, what, got, ref):
    got, ref = np.asarray(got), np.asarray(ref)
    bad = np.flatnonzero(got.reshape(-1) != ref.reshape(-1))
    assert bad.size == 0, f"[{backend}] {what}, index {bad[0]}: got {got.reshape(-1)[bad[0]]}, reference {ref.reshape(-1)[bad[0]]}"


def compare_results(backend, got, ref, rtol, flips, *, exact_exponents):
    """Every field of two :class:`gradbench.Result` of the same problem."""
    st = ref.stack
    B, N = ref.output.shape
    assert_ls(backend, "loss", got.loss_exact, ref.loss_exact, rtol)
    for name, g in ref.grads.items():
        if name == "b" and st.batch_norm:  # exactly 0 in exact arithmetic: rounding noise
            assert_bias_under_batchnorm(backend, "grads.b", got.grads.b.mantissa, got.grads.b.exponent,
                                        ref.grads.beta.mantissa, ref.grads.gamma.mantissa,
                                        ref.grads.beta.exponent, st.dtype)
            continue
        # the same below layer 0, unless signal clipping (elementwise) broke the zero batch sum
        if name == "b_in" and st.batch_norm and not st.residual and not (st.clip and st.clip_on == "signal"):
            gm, rm = got.grads.b_in, ref.grads.W_in
            assert_bias_under_batchnorm(backend, "grads.b_in", gm.mantissa[None], gm.exponent[None],
                                        rm.mantissa[None], rm.mantissa[None], rm.exponent[None], st.dtype)
            continue
        floor = None
        if name in ("gamma", "beta") and st.batch_norm:  # one may vanish exactly: use both
            floor = bn_param_scale(ref.grads.gamma.mantissa, ref.grads.beta.mantissa)
        gg = getattr(got.grads, name)
        assert_true_values(backend, f"grads.{name}", gg.mantissa, gg.exponent, g.mantissa, g.exponent, rtol,
                           exact_exponents=exact_exponents and name in ("W", "b", "gamma", "beta", "slope"),
                           floor=floor)
    if not st.batch_norm:
        assert not np.any(got.grads.gamma.mantissa) and not np.any(got.grads.beta.mantissa), (
            f"[{backend}] dgamma/dbeta must be exactly zero without batch norm")
    if st.activation != "prelu":
        assert not np.any(got.grads.slope.mantissa), f"[{backend}] dslope must be zero unless PReLU"
    assert_ls(backend, "grad_norm", got.grad_norm, ref.grad_norm, rtol)
    assert_ls(backend, "signal_norm", got.signal_norm, ref.signal_norm, rtol, exact_exponents=exact_exponents)
    assert_ls(backend, "input_grad", got.input_grad, ref.input_grad, rtol)
    assert_ls(backend, "output", got.output, ref.output, rtol)
    # the mean may cancel: measure it against the spread of the values (and vice versa)
    scale = gb.LogScaled(np.abs(ref.act_mean.mantissa) + ref.act_std.mantissa, ref.act_mean.exponent)
    _assert_against(backend, "act_mean", got.act_mean, ref.act_mean, scale, rtol)
    _assert_against(backend, "act_std", got.act_std, ref.act_std, scale, rtol)
    assert_fractions(backend, "saturation", got.saturation, ref.saturation, B * N, flips)
    assert_fractions(backend, "dead", got.dead, ref.dead, N, flips)
    assert got.first_nonfinite_forward == ref.first_nonfinite_forward, (
        f"[{backend}] first non-finite forward layer {got.first_nonfinite_forward}, reference {ref.first_nonfinite_forward}")
    assert got.first_nonfinite_backward == ref.first_nonfinite_backward, (
        f"[{backend}] first non-finite backward layer {got.first_nonfinite_backward}, reference {ref.first_nonfinite_backward}")


def _assert_against(backend, what, got, ref, scale, rtol):
    """Per-entry |got - ref| <= rtol * scale (true values), for quantities that may cancel."""
    g = _ldexp(np.asarray(got.mantissa, float), got.exponent)
    r = _ldexp(np.asarray(ref.mantissa, float), ref.exponent)
    s = _ldexp(np.asarray(scale.mantissa, float), scale.exponent)
    same_nan = np.isnan(g) == np.isnan(r)
    assert np.all(same_nan), f"[{backend}] {what}, layer {np.flatnonzero(~same_nan)[0]}: NaN pattern differs"
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(np.isfinite(r) & ~(np.abs(g - r) <= rtol * s))
        bad_inf = np.flatnonzero(np.isinf(r) & (g != r))
    assert bad.size == 0, (
        f"[{backend}] {what}, layer {bad[0]}: got {g[bad[0]]!r}, reference {r[bad[0]]!r}, "
        f"off by {abs(g[bad[0]] - r[bad[0]]) / s[bad[0]]:.3g} of |mean| + std, tolerance {rtol:.3g}")
    assert bad_inf.size == 0, f"[{backend}] {what}, layer {bad_inf[0]}: got {g[bad_inf[0]]}, reference {r[bad_inf[0]]}"


# ------------------------------------------------------------------ growth of the chain
def chain_growth(stack, params, x, t=None, delta=1e-10, seed=99):
    """How much rounding moves the results of the whole stack, measured with the reference alone.

    Returns (growth, kappa): the relative change of the results per relative perturbation
    ``delta`` of the input, and the relative difference between float32 and float64 runs per
    float32 eps (rounding injected everywhere, e.g. where batch norm cancels).
    """
    s64 = stack.replace(dtype="float64")
    p64 = gb.Params(**{n: a.astype(np.float64) for n, a in params.items()})
    x64 = x.astype(np.float64)
    tt = t.astype(np.float64) if t is not None and t.dtype.kind == "f" else t
    rng = np.random.default_rng(seed)
    a = gb.backprop(s64, p64, x64, tt, backend="numpy")
    b = gb.backprop(s64, p64, x64 * (1 + delta * rng.choice([-1.0, 1.0], x64.shape)), tt, backend="numpy")
    p32 = gb.Params(**{n: v.astype(np.float32) for n, v in params.items()})
    t32 = t.astype(np.float32) if t is not None and t.dtype.kind == "f" else t
    with np.errstate(all="ignore"):
        x32 = x.astype(np.float32)
    if not np.all(np.isfinite(x32)):  # an input beyond float32 (x * 1e250): no float32 run to compare
        return _result_rel(a, b) / delta, 0.0
    with np.errstate(all="ignore"):
        c = gb.backprop(stack.replace(dtype="float32"), p32, x32, t32, backend="numpy")
    return _result_rel(a, b) / delta, _result_rel(a, c) / float(np.finfo(np.float32).eps)


def _result_rel(a, b):
    worst = 0.0
    for ga, gb_ in ((a.grads.W, b.grads.W), (a.signal_norm, b.signal_norm), (a.output, b.output),
                    (a.input_grad, b.input_grad), (a.act_std, b.act_std)):
        ma, ea = _rows(ga.mantissa, ga.exponent)
        mb, eb = _rows(gb_.mantissa, gb_.exponent)
        for l in range(ma.shape[0]):
            if not (np.all(np.isfinite(ma[l])) and np.all(np.isfinite(mb[l]))):
                continue
            em = max(ea[l], eb[l])
            u, v = _ldexp(ma[l], ea[l] - em), _ldexp(mb[l], eb[l] - em)
            s = np.max(np.abs(u), initial=0.0)
            if s > 0:
                worst = max(worst, float(np.max(np.abs(u - v)) / s))
    return worst


def backward_growth(module, stack, fwd, G, top, delta=1e-10, seed=98):
    """How much rounding moves the backward results, measured with the reference alone.

    The larger of: the relative change per relative perturbation of the signal G, and the
    relative difference between a float32 and a float64 run on the same inputs per float32
    eps (rounding injected everywhere, e.g. where batch norm's backward cancels: it projects
    dy off span{1, xhat}, nearly everything for small batches and widths).
    """
    rng = np.random.default_rng(seed)
    a = run_backward(module, backward_arrays(stack, fwd, G, top))
    b = run_backward(module, backward_arrays(stack, fwd, G * (1 + delta * rng.choice([-1.0, 1.0], G.shape)), top))
    s32 = stack.replace(dtype="float32")
    f32 = {k: (v.astype(np.float32) if v.dtype == np.float64 and k not in
               ("fcfg", "act_mean", "act_std", "saturation", "dead") else v) for k, v in fwd.items()}
    with np.errstate(all="ignore"):
        c = run_backward(module, backward_arrays(s32, f32, G.astype(np.float32), top))
    eps32 = float(np.finfo(np.float32).eps)
    return max(_max_rel(a, b) / delta, _max_rel(a, c) / eps32)


def _max_rel(a, b):
    """Largest per-layer relative difference of two backward results (true values)."""
    worst = 0.0
    for name in ("dW", "G", "sig_m"):
        if name == "dW":
            ea, eb = a["sig_e"][1:], b["sig_e"][1:]
        elif name == "G":
            ea, eb = a["sig_e"][:1], b["sig_e"][:1]
        else:
            ea, eb = a["sig_e"], b["sig_e"]
        ma, _ = _rows(a[name], ea)
        mb, _ = _rows(b[name], eb)
        for l in range(ma.shape[0]):
            em = max(int(ea[l]), int(eb[l]))
            u, v = _ldexp(ma[l], int(ea[l]) - em), _ldexp(mb[l], int(eb[l]) - em)
            if not (np.all(np.isfinite(u)) and np.all(np.isfinite(v))):
                continue  # non-finite entries are compared for their pattern, not their size
            s = np.max(np.abs(u), initial=0.0)
            if s > 0:
                worst = max(worst, float(np.max(np.abs(u - v)) / s))
    return worst


# ------------------------------------------------------------------ the kernel contract
def forward_arrays(stack, params, H0, fexp0=0, rescale=False, frow0=None):
    """Arrays of ``stack_forward`` for the stack ``params`` (allocated as the engine does); row i
    of the input at 2**(fexp0 + frow0[i]) (``frow0`` default 0)."""
    L, (B, N) = params.W.shape[0], H0.shape
    dt = stack.np_dtype
    icfg, fcfg = abi.kernel_config(stack, rescale)
    H = np.empty((L + 1, B, N), dtype=dt)
    H[0] = H0
    fexp = np.zeros(L + 1, dtype=np.int64)
    fexp[0] = fexp0
    frow = np.zeros((L + 1, B), dtype=np.int64)
    if frow0 is not None:
        frow[0] = frow0
    return dict(icfg=icfg, fcfg=fcfg, W=params.W, b=params.b, gamma=params.gamma, beta=params.beta,
                slope=params.slope, H=H, Z=np.empty((L, B, N), dtype=dt),
                bn_mean=np.zeros((L, N), dtype=dt), bn_rstd=np.ones((L, N), dtype=dt), fexp=fexp,
                frow=frow,
                act_mean=np.empty(L), act_std=np.empty(L), saturation=np.empty(L),
                dead=np.empty(L), info=np.full(2, -1, dtype=np.int64))


FORWARD_ARGS = abi.names(abi.FORWARD)
BACKWARD_ARGS = abi.names(abi.BACKWARD)


def run_forward(module, arrays):
    module.stack_forward(*(arrays[k] for k in FORWARD_ARGS))
    return arrays


def backward_arrays(stack, fwd, G, sig_e_top):
    """Arrays of ``stack_backward`` on given forward values (copies: both backends see the same)."""
    L, B, N = fwd["Z"].shape
    dt = stack.np_dtype
    sig_e = np.zeros(L + 1, dtype=np.int64)
    sig_e[L] = sig_e_top
    info = fwd["info"].copy()
    out = {k: fwd[k] for k in ("icfg", "fcfg", "W", "gamma", "beta", "slope")}
    out.update(H=fwd["H"].copy(), Z=fwd["Z"].copy(), bn_rstd=fwd["bn_rstd"].copy(), fexp=fwd["fexp"].copy(),
               frow=fwd["frow"].copy(), G=np.array(G, dtype=dt, order="C"), row_e=np.zeros(B, dtype=np.int64), dW=np.empty((L, N, N), dtype=dt),
               db=np.empty((L, N), dtype=dt), dgamma=np.empty((L, N), dtype=dt),
               dbeta=np.empty((L, N), dtype=dt), dslope=np.empty(L, dtype=dt), sig_m=np.empty(L + 1),
               sig_e=sig_e, gnorm_m=np.empty(L), gnorm_e=np.zeros(L, np.int64), dz_e=np.zeros(L, np.int64),
               dw_e=np.zeros(L, np.int64), clip_acted=np.zeros(L + 1, np.int64), info=info)
    return out


def run_backward(module, arrays):
    module.stack_backward(*(arrays[k] for k in BACKWARD_ARGS))
    return arrays


def slice_params(params, a, b):
    """Layers a..b-1 of params (contiguous copies)."""
    return gb.Params(**{n: np.ascontiguousarray(getattr(params, n)[a:b]) for n in ("W", "b", "gamma", "beta", "slope")})


def misaligned(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` one byte into a buffer: C-contiguous, the same values, not aligned to its dtype."""
    m = np.zeros(a.nbytes + 1, np.uint8)[1:].view(a.dtype).reshape(a.shape)
    m[...] = a
    assert m.flags.c_contiguous and not m.flags.aligned
    return m


def wrong_arrays(good: dict, args, *, short: bool = False):
    """(label, name, replacement) for every array of a contract's ``args``, from the valid
    arrays ``good``: wrong dtype, wrong shape (also a last axis of 1 with ``short``), not
    contiguous, not aligned, read-only (for the arrays the kernel writes), not an array."""
    for arg in args:
        a = good[arg.name]
        other = np.float32 if a.dtype == np.float64 else np.int32
        yield f"{arg.name}-dtype", arg.name, np.zeros(a.shape, other)
        yield f"{arg.name}-shape", arg.name, np.zeros(a.shape[:-1] + (a.shape[-1] + 1,), a.dtype)
        if short:
            yield f"{arg.name}-shape-short", arg.name, np.zeros(a.shape[:-1] + (1,), a.dtype)
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        yield f"{arg.name}-strided", arg.name, wide[..., ::2]
        yield f"{arg.name}-misaligned", arg.name, misaligned(a)
        if "w" in arg.access:
            ro = a.copy()
            ro.flags.writeable = False
            yield f"{arg.name}-readonly", arg.name, ro
        yield f"{arg.name}-list", arg.name, a.tolist()


def recurrent_reference_forward(rnn, params, xs):
    """The recurrent reference's forward of ``rnn`` on the inputs ``xs`` (T, B, D) from h_{-1} = 0
    (and c_{-1} = 0), configured as the engine configures it: (the backward function's name, the
    dimensions, the backward's arrays of the forward: H, Z, C or HN, fexp, icfg, fcfg, X, W_hh)."""
    from gradbench.recurrent import abi as rabi
    from gradbench.recurrent import reference as rref

    T, B, D = xs.shape
    N = rnn.hidden
    rescale = rnn.cell == "rnn" and rnn.act in ("relu", "identity") and not rnn.has_head
    icfg, fcfg = rabi.kernel_config(rnn, rescale, B)
    fwd, bwd = rabi.CELL_FUNCTIONS[rnn.cell]
    dims = dict(T=T, B=B, N=N, D=D, GN=rnn.gates * N, S=T if icfg[rabi.RI_LOSS_EVERY] else 1)
    a = abi.allocate(fwd, dims, rnn.dtype, skip=("icfg", "fcfg", "X", "W_ih", "W_hh", "b_ih", "b_hh"),
                     fill=dict(fexp=0, info=-1))
    a["H"][0] = 0
    if "C" in a:
        a["C"][0] = 0
    getattr(rref, fwd)(icfg=icfg, fcfg=fcfg, X=xs, W_ih=params.W_ih, W_hh=params.W_hh, b_ih=params.b_ih,
                       b_hh=params.b_hh, **a)
    saved = {k: a[k] for k in ("H", "Z", "C", "HN", "fexp") if k in a}
    saved.update(icfg=icfg, fcfg=fcfg, X=xs, W_hh=params.W_hh)
    return bwd, dims, saved


def team_opts(nthreads: int, **options):
    """C driver options (``cbackend.make_opts``) that start a team of ``nthreads`` on the own
    kernels whatever the call's size: no BLAS, no per-layer or per-call threshold. ``options``:
    the other fields (``isa``, ``solo_after``)."""
    from gradbench import cbackend

    return cbackend.make_opts(nthreads=nthreads, blas=False, par_min_work=0, par_min_total=0, **options)


def assert_clip_record_refused(call, arrays: dict, function: str, size: int) -> None:
    """``call()`` runs ``function`` on ``arrays``, whose ``clip_acted`` (filled with 7) has a
    wrong size: refused before any kernel runs (G and the record untouched), and a record of the
    right ``size`` but int32 refused for its dtype."""
    import pytest

    G0 = arrays["G"].copy()
    with pytest.raises(ValueError, match=rf"{function}: clip_acted has shape"):
        call()
    np.testing.assert_array_equal(arrays["G"], G0)  # nothing ran
    assert (arrays["clip_acted"] == 7).all()
    arrays["clip_acted"] = np.zeros(size, np.int32)
    with pytest.raises(TypeError, match="clip_acted has dtype int32"):
        call()


class Tripwire:
    """A Dask client stand-in that fails the test if a sweep touches it: validation (and a sweep
    whose every run is resumed from its out directory) must finish before any client is used."""

    def submit(self, *a, **k):
        raise AssertionError("a task was submitted")

    def __getattr__(self, name):
        raise AssertionError(f"the client was used ({name}) before validation finished")


def perturbation_moves(spec, params, x, field: str, index: tuple, rel: float = 1e-10) -> float:
    """How far (decades) a relative change ``rel`` of one weight moves the gradient norms: the largest
    change of log10 grad_norm on the reference backend after the entry ``params.<field>[index]`` is
    multiplied by 1 + rel (a stack's or a recurrent net's: the test of a chaotic forward pass's
    sentence). Not one unit in the last place: a sum can round such a change away (a chaotic
    ReLU + batch norm stack read exactly the same after four such probes)."""
    import dataclasses

    w = getattr(params, field).copy()
    w[index] *= 1 + rel
    a = np.asarray(gb.backprop(spec, params, x, backend="numpy").grad_norm.log10(), dtype=np.float64)
    b = np.asarray(gb.backprop(spec, dataclasses.replace(params, **{field: w}), x, backend="numpy").grad_norm.log10(),
                   dtype=np.float64)
    return float(np.nanmax(np.abs(a - b)))
