"""Parameters of a stack: :class:`Params` (stored arrays) and :class:`GeneratedParams` (never stored).

Both are created once in Python from a seeded generator and shared by every backend, so all
backends see bit-identical weights. The engine asks either for one segment of layers at a time
with ``segment(start, stop)``.

All arrays are C-contiguous, of the stack's dtype, stacked per layer::

    W      (L, N, N)   b (L, N)   gamma (L, N)   beta (L, N)   slope (L,)
    W_in   (N, D)      b_in (N,)                  only when input_dim != width
    W_out  (O, N)      b_out (O,)                 only with a head (loss other than sum_squares)

Generated weights
-----------------
At 10^5-10^6 layers the weights themselves no longer fit (10^6 layers of width 64 are 32 GiB in
float64). :class:`GeneratedParams` stands where :class:`Params` stands in
:func:`gradbench.backprop`; the engine asks it for the parameters of one segment of layers at a
time (in the forward pass and again, per segment, in the backward pass), so no weight array
larger than a segment ever exists.

The generator (counter-based, so layer l is the same whatever order layers are generated in)
------------------------------------------------------------------------------------------------
Every array is drawn from its own NumPy ``Philox`` (4x64, 10 rounds) bit generator::

    numpy.random.Generator(numpy.random.Philox(key=seed, counter=[0, layer, kind, 0]))

``key`` is the seed itself (an int in [0, 2**128), set directly, not hashed by SeedSequence).
The 256-bit counter is ``layer * 2**64 + kind * 2**128`` (words are little-endian: word 0 is
the low 64 bits and is the one Philox increments per block of four 64-bit outputs), so every
(layer, kind) stream has 2**64 blocks to itself before it could reach the next one: the streams
never overlap. ``kind`` is :data:`KIND_W` (0, W_l, layer = l), :data:`KIND_B` (1, b_l),
:data:`KIND_W_IN`/:data:`KIND_B_IN` (2, 3, layer 0) and :data:`KIND_W_OUT`/:data:`KIND_B_OUT`
(4, 5, layer 0). From each stream one array is drawn with the same code as
:func:`gradbench.init_params` (:func:`_weights`), in float64, then cast to the
stack's dtype:

- ``normal``, ``xavier_normal``, ``he_normal``, ``lecun_normal``:
  ``std * standard_normal((N, N))`` (ziggurat), std = gain / sqrt(fan_in)
  (xavier: gain * sqrt(2 / (fan_in + fan_out)));
- ``xavier_uniform``, ``he_uniform``: ``uniform(-std*sqrt(3), std*sqrt(3), (N, N))``;
- ``orthogonal``: ``gain * Q`` from the QR of a standard normal (N, N) with the signs of
  diag(R) moved into Q (one 64 x 64 QR costs about as much as drawing the matrix);
- biases ``sigma_b * standard_normal(N)`` (kind 1) when ``sigma_b > 0``, else zeros;
  ``gamma = 1``, ``beta = 0`` and the PReLU slopes (``activation_param``) are constants, so
  they are produced per segment too and nothing of size L x N is ever stored.

The weights are generated once per segment and handed to whichever backend runs, so every
backend sees bit-identical weights. For the four normal schemes and the biases,
``csrc/philox.c`` (``gb_philox_normals_f64``/``_f32``, NumPy's Philox and ziggurat copied
exactly) draws all layers of a segment in one C call when the C extension is built: the same
bits as the NumPy code above (tests/test_philox.py compares them with NumPy's own Generator),
without building a Generator per layer (about 6.5 us each); otherwise, and for the other
schemes, NumPy draws them. They are *not* the weights that
``init_params(stack, seed)`` draws (that one is a single sequential stream); they have the same
distribution. :meth:`GeneratedParams.materialize` gives them as ordinary :class:`Params` for
stacks small enough to store.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field, replace

import numpy as np

from gradbench._fields import RECORD, WORDS, CopyableArrays, check_words
from gradbench.abi import misaligned
from gradbench.spec import Stack


#: The origin of weights a caller builds (``gb.Params(W=...)``, ``gb.RecurrentParams(...)``) with
#: no words of their own: the report says it in place of the init scheme, which did not draw them.
GIVEN = "weights given by the caller"


@dataclass(frozen=True, eq=False)
class Params(CopyableArrays):
    """The parameters of a :class:`~gradbench.Stack` (see the module docstring for shapes).

    ``origin``: a few words on where the weights came from when they were not drawn for the
    stack ("the weights of Sequential", :func:`gradbench.from_torch`); the report's header says
    them in place of the stack's init scheme. None: drawn for the stack's init scheme
    (:func:`init_params`, :meth:`GeneratedParams.materialize`); Params built by a caller say
    :data:`GIVEN` unless given their own words (a header that named the init scheme of weights
    it never drew was untrue). Not an array: ``items()`` leaves it out, ``copy()`` and
    :func:`dataclasses.replace` keep it. ``drawn``: for drawn weights, :func:`weights_probe` of
    them as drawn, so that a run of weights changed since (``p.W *= 7``, in any row the probe
    reads) says so (:func:`origin_words`) instead of naming the scheme; not a parameter either.
    """

    W: np.ndarray
    b: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    slope: np.ndarray
    W_in: np.ndarray | None = None
    b_in: np.ndarray | None = None
    W_out: np.ndarray | None = None
    b_out: np.ndarray | None = None
    origin: str | None = field(default=GIVEN, metadata={WORDS: True})
    drawn: np.ndarray | None = field(default=None, repr=False, metadata={RECORD: True})

    def __post_init__(self):
        check_words(self)

    def segment(self, start: int, stop: int, out=None) -> tuple[np.ndarray, ...]:
        """W, b, gamma, beta, slope of layers [start, stop) (views; ``out`` is not used)."""
        return (self.W[start:stop], self.b[start:stop], self.gamma[start:stop], self.beta[start:stop],
                self.slope[start:stop])

    @property
    def zero_bias(self) -> bool:
        """All stack biases are zero."""
        return not np.asarray(self.b).any()


def expected_shapes(stack: Stack) -> dict[str, tuple[int, ...] | None]:
    L, N, D, O = stack.depth, stack.width, stack.d_in, stack.output_dim
    return {
        "W": (L, N, N),
        "b": (L, N),
        "gamma": (L, N),
        "beta": (L, N),
        "slope": (L,),
        "W_in": (N, D) if stack.has_input_layer else None,
        "b_in": (N,) if stack.has_input_layer else None,
        "W_out": (O, N) if stack.has_head else None,
        "b_out": (O,) if stack.has_head else None,
    }


def _std(init: str, gain: float, fan_in: int, fan_out: int) -> float:
    """The standard deviation of a scheme's weights: gain / sqrt(fan_in) (xavier: gain sqrt(2/(in+out)))."""
    if init.startswith("xavier"):
        return gain * math.sqrt(2.0 / (fan_in + fan_out))
    return gain / math.sqrt(fan_in)


def _weights(rng: np.random.Generator, init: str, gain: float, shape, fan_in: int, fan_out: int):
    """Weights (..., fan_out, fan_in) of one scheme: variance gain**2 / fan_in (xavier: 2/(in+out))."""
    std = _std(init, gain, fan_in, fan_out)
    if init.endswith("_uniform"):
        bound = std * math.sqrt(3.0)
        return rng.uniform(-bound, bound, size=shape)
    if init == "orthogonal":
        return gain * _orthogonal(rng, shape)
    return std * rng.standard_normal(shape)


def _slopes(stack: Stack, k: int) -> np.ndarray:
    """The PReLU slopes of ``k`` layers in the stack's dtype (``activation_param``; 0 for other
    activations). One that the dtype rounds to inf is refused, not run: a Stack keeps its param
    within :data:`gradbench.spec.SCALE_RANGE`, so only a stack built around that check gets here."""
    slope = stack.act_param if stack.activation == "prelu" else 0.0
    with np.errstate(over="ignore"):
        out = np.full(k, slope, dtype=stack.np_dtype)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"activation_param={slope:g} (the PReLU slope) is beyond what {stack.dtype} holds: "
                         f"it would become {out[0]}")
    return out


def _orthogonal(rng: np.random.Generator, shape) -> np.ndarray:
    """(Semi-)orthogonal matrices by QR of a Gaussian with the sign of diag(R) fixed.

    NumPy's QR runs LAPACK on NumPy's BLAS, whose rounding can depend on the BLAS thread count
    at some widths (300 and 1000 differ between OPENBLAS_NUM_THREADS=1 and 2; 256 and 512 do
    not): the same seed gives the same bits for the same BLAS thread count (docs/design.md)."""
    *lead, rows, cols = shape
    g = rng.standard_normal((*lead, max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
    return q if rows >= cols else np.swapaxes(q, -1, -2)


def seed_rng(seed, name: str = "seed") -> np.random.Generator:
    """``numpy.random.default_rng(seed)`` for a seed that is an int >= 0 (a Python or NumPy
    integer, not a bool) or a ``numpy.random.Generator`` (used as it is); anything else is a
    TypeError / ValueError naming ``name``, not NumPy's words about SeedSequence."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(check_seed(seed, name, generator=True))


def check_seed(seed, name: str = "seed", *, generator: bool = False) -> int:
    """``seed`` as a Python int after checking that it is an int >= 0 (``generator``: the
    message says a numpy.random.Generator is accepted too)."""
    allowed = "an int >= 0" + (" or a numpy.random.Generator" if generator else "")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be {allowed}, got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"{name} must be {allowed}, got {seed}")
    return int(seed)


def _check_fits(stack: Stack) -> None:
    """Refuse parameters larger than the available memory (NumPy's own MemoryError named no way
    out, and parameters just below the physical memory were drawn into swap)."""
    from gradbench.plan import PlanRefused, available_memory, size_text

    L, N, D, O = stack.depth, stack.width, stack.d_in, stack.output_dim
    count = L * N * N + 4 * L * N
    if stack.has_input_layer:
        count += N * D + N
    if stack.has_head:
        count += O * N + O
    # the draws are float64 before a float32 stack's cast
    need = count * (np.dtype(stack.np_dtype).itemsize + (8 if stack.np_dtype != np.float64 else 0))
    limit = available_memory()
    if need > limit:
        raise PlanRefused(
            f"init_params: the parameters of this stack (depth {L}, width {N}, {stack.dtype}) need about "
            f"{size_text(need)} but {size_text(limit)} of memory is available; use "
            "gradbench.GeneratedParams(stack, seed) in their place: it generates each layer's weights when a "
            "pass needs them and never stores them all (with stats_only=True for a run this deep or wide)",
            need=need, limit=limit, budget="available memory")


def init_params(stack: Stack, seed: int | np.random.Generator = 0) -> Params:
    """Draw the parameters of ``stack`` from ``numpy.random.default_rng(seed)``.

    W_l ~ the stack's init scheme (variance ``sigma_w**2 / fan_in``, see :class:`Stack`),
    b_l ~ N(0, sigma_b^2), gamma = 1, beta = 0, PReLU slopes = ``activation_param``.
    The input layer and the head (when present) use the same scheme. Draw order: W, b,
    W_in, b_in, W_out, b_out.

    Parameters that would not fit in the available memory are refused before anything is drawn
    (:class:`gradbench.plan.PlanRefused`, naming :class:`GeneratedParams`, which never stores them).
    """
    rng = seed_rng(seed)
    L, N, D, O = stack.depth, stack.width, stack.d_in, stack.output_dim
    _check_fits(stack)
    dt = stack.np_dtype
    gain = stack.gain

    def arr(a):
        return np.ascontiguousarray(a, dtype=dt)

    def bias(shape):
        return stack.sigma_b * rng.standard_normal(shape) if stack.sigma_b else np.zeros(shape)

    p = dict(
        W=arr(_weights(rng, stack.init, gain, (L, N, N), N, N)),
        b=arr(bias((L, N))),
        gamma=arr(np.ones((L, N))),
        beta=arr(np.zeros((L, N))),
        slope=_slopes(stack, L),
    )
    if stack.has_input_layer:
        p["W_in"] = arr(_weights(rng, stack.init, gain, (N, D), D, N))
        p["b_in"] = arr(bias(N))
    if stack.has_head:
        p["W_out"] = arr(_weights(rng, stack.init, gain, (O, N), N, O))
        p["b_out"] = arr(bias(O))
    return _drawn(Params(**p, origin=None))  # drawn for the stack's init scheme


def random_targets(stack: Stack, batch: int, seed: int):
    """Seeded targets for a stack with a head, the probe of ``gradbench run`` and of sweeps:
    integer labels (softmax_ce), labels in {0, 1} (bce) or standard normal values (mse), from
    ``numpy.random.default_rng([seed, 2])``; None for sum_squares."""
    if not stack.has_head:
        return None
    rng = np.random.default_rng([seed, 2])
    if stack.loss == "softmax_ce":
        return rng.integers(0, stack.output_dim, size=batch).astype(np.int64)
    if stack.loss == "bce":
        return rng.integers(0, 2, size=(batch, stack.output_dim)).astype(stack.np_dtype)
    return rng.standard_normal((batch, stack.output_dim)).astype(stack.np_dtype)


def gaussian_input(stack: Stack, batch: int, seed: int | np.random.Generator = 1) -> np.ndarray:
    """A standard normal input x of shape (batch, input_dim) in the stack's dtype."""
    if not isinstance(stack, Stack):  # a Recurrent got a (batch, input_dim) array its backprop cannot take
        hint = (": a recurrent net's input sequence is gradbench.sequence_input(rnn, batch, seed)"
                if type(stack).__name__ == "Recurrent" else "")
        raise TypeError(f"stack must be a gradbench.Stack, got {type(stack).__name__}{hint}")
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    rng = seed_rng(seed)
    return np.ascontiguousarray(rng.standard_normal((batch, stack.d_in)), dtype=stack.np_dtype)


# ------------------------------------------------------------------ generated weights
KIND_W, KIND_B, KIND_W_IN, KIND_B_IN, KIND_W_OUT, KIND_B_OUT = range(6)
SEED_BOUND = 2**128


def stream(seed: int, layer: int, kind: int) -> np.random.Generator:
    """The generator of array ``kind`` of layer ``layer`` (module docstring)."""
    return np.random.Generator(np.random.Philox(key=seed, counter=[0, layer, kind, 0]))


NORMAL_INITS = ("normal", "xavier_normal", "he_normal", "lecun_normal")
# False: weights() and biases() always draw with NumPy (tests compare the two paths).
C_NORMALS = True
_c_philox_lib = None  # (ffi, lib) once loaded, False when the extension or the function is missing


def _c_philox():
    global _c_philox_lib
    if _c_philox_lib is None:
        try:
            from gradbench._ckernels import ffi, lib
        except ImportError:
            _c_philox_lib = False
        else:
            _c_philox_lib = (ffi, lib) if hasattr(lib, "gb_philox_normals_f64") else False
    return _c_philox_lib if C_NORMALS else False


def _c_normals(seed: int, kind: int, start: int, stop: int, shape: tuple, scale: float, out: np.ndarray) -> bool:
    """``out[l - start] = scale * stream(seed, l, kind).standard_normal(shape)`` for l in
    [start, stop), the float64 product cast to out's dtype, by csrc/philox.c. False (out
    untouched) when the C extension is not built or ``out`` is not a C-contiguous, aligned,
    writeable float64/float32 array of shape (stop - start, *shape)."""
    c = _c_philox()
    k = stop - start
    flags = out.flags
    if not c or out.shape != (k, *shape) or not (flags.c_contiguous and flags.aligned and flags.writeable):
        return False
    if out.dtype == np.float64:
        fn, ctype = c[1].gb_philox_normals_f64, "double *"
    elif out.dtype == np.float32:
        fn, ctype = c[1].gb_philox_normals_f32, "float *"
    else:
        return False
    n = math.prod(shape)
    if k == 0 or n == 0:
        return True
    # cffi releases the GIL for the call (the engine draws from a helper thread)
    rc = fn(seed & 0xFFFFFFFFFFFFFFFF, seed >> 64, kind, start, k, n, float(scale), c[0].cast(ctype, c[0].from_buffer(out)))
    if rc != 0:
        raise ValueError(f"gb_philox_normals failed with code {rc} (start={start}, layers={k}, n={n})")
    return True


@dataclass(frozen=True, eq=False)
class GeneratedParams:
    """Parameters of ``stack`` generated per layer from ``seed`` (see the module docstring).

    Pass it to :func:`gradbench.backprop` in place of :class:`~gradbench.Params`; the stack
    passed there must equal ``stack``. The input layer and the head (O(N*D) numbers) are
    generated once here and kept; everything per layer is generated on demand.
    """

    stack: Stack
    seed: int = 0
    W_in: np.ndarray | None = field(init=False, default=None)
    b_in: np.ndarray | None = field(init=False, default=None)
    W_out: np.ndarray | None = field(init=False, default=None)
    b_out: np.ndarray | None = field(init=False, default=None)

    def __post_init__(self):
        if not isinstance(self.stack, Stack):
            raise TypeError(f"stack must be a gradbench.Stack, got {type(self.stack).__name__}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise TypeError(f"seed must be an int in [0, 2**128), got {type(self.seed).__name__} {self.seed!r}")
        if not 0 <= int(self.seed) < SEED_BOUND:
            raise ValueError(f"seed must be an int in [0, 2**128) (the Philox key), got {self.seed}")
        object.__setattr__(self, "seed", int(self.seed))
        st, dt = self.stack, self.stack.np_dtype
        N, D, O = st.width, st.d_in, st.output_dim

        def bias(n, kind):
            if not st.sigma_b:
                return np.zeros(n, dtype=dt)
            return np.ascontiguousarray(st.sigma_b * stream(self.seed, 0, kind).standard_normal(n), dtype=dt)

        if st.has_input_layer:
            w = _weights(stream(self.seed, 0, KIND_W_IN), st.init, st.gain, (N, D), D, N)
            object.__setattr__(self, "W_in", np.ascontiguousarray(w, dtype=dt))
            object.__setattr__(self, "b_in", bias(N, KIND_B_IN))
        if st.has_head:
            w = _weights(stream(self.seed, 0, KIND_W_OUT), st.init, st.gain, (O, N), N, O)
            object.__setattr__(self, "W_out", np.ascontiguousarray(w, dtype=dt))
            object.__setattr__(self, "b_out", bias(O, KIND_B_OUT))

    # ------------------------------------------------------------ per layer
    @property
    def zero_bias(self) -> bool:
        """All stack biases are zero (``sigma_b == 0``)."""
        return not self.stack.sigma_b

    def weights(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """W_l for l in [start, stop): (stop - start, N, N), C-contiguous, the stack's dtype."""
        st = self.stack
        start, stop = self._check_range(start, stop)
        N = st.width
        out = self._out(out, (stop - start, N, N), contiguous=True)
        std = _std(st.init, st.gain, N, N)
        if st.init in NORMAL_INITS and _c_normals(self.seed, KIND_W, start, stop, (N, N), std, out):
            return out
        for i, layer in enumerate(range(start, stop)):
            rng = stream(self.seed, layer, KIND_W)
            if st.init in NORMAL_INITS and out.dtype == np.float64:
                # Same numbers as _weights (std * standard_normal), without a temporary.
                rng.standard_normal(out=out[i])
                out[i] *= std
            else:
                out[i] = _weights(rng, st.init, st.gain, (N, N), N, N)
        return out

    def biases(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """b_l for l in [start, stop): (stop - start, N)."""
        st = self.stack
        start, stop = self._check_range(start, stop)
        out = self._out(out, (stop - start, st.width), contiguous=False)  # strided: the NumPy path
        if not st.sigma_b:
            out[...] = 0
            return out
        if _c_normals(self.seed, KIND_B, start, stop, (st.width,), st.sigma_b, out):
            return out
        for i, layer in enumerate(range(start, stop)):
            out[i] = st.sigma_b * stream(self.seed, layer, KIND_B).standard_normal(st.width)
        return out

    def constants(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """gamma (ones), beta (zeros) and slope (``activation_param`` for PReLU, else 0)."""
        st = self.stack
        start, stop = self._check_range(start, stop)
        k, dt = stop - start, st.np_dtype
        return np.ones((k, st.width), dtype=dt), np.zeros((k, st.width), dtype=dt), _slopes(st, k)

    def segment(self, start: int, stop: int, out=None) -> tuple[np.ndarray, ...]:
        """W, b, gamma, beta, slope of layers [start, stop), generated now.

        ``out``: optional (W, b) buffers of at least ``stop - start`` layers to generate into.
        """
        W = self.weights(start, stop, None if out is None else out[0][: stop - start])
        b = self.biases(start, stop, None if out is None else out[1][: stop - start])
        return (W, b, *self.constants(start, stop))

    def materialize(self) -> Params:
        """All parameters as ordinary :class:`Params` (only for stacks whose weights fit)."""
        L = self.stack.depth
        gamma, beta, slope = self.constants(0, L)
        kept = {k: None if a is None else a.copy() for k, a in  # copies: editing them leaves the seed's
                (("W_in", self.W_in), ("b_in", self.b_in), ("W_out", self.W_out), ("b_out", self.b_out))}
        return _drawn(Params(W=self.weights(0, L), b=self.biases(0, L), gamma=gamma, beta=beta, slope=slope, **kept,
                             origin=None))

    def _check_range(self, start, stop) -> tuple[int, int]:
        L = self.stack.depth
        for name, v in (("start", start), ("stop", stop)):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an int (a layer index), got {v!r}")
        if not (0 <= start <= stop <= L):
            raise ValueError(f"layer range [{start}, {stop}) is not inside [0, {L})")
        return int(start), int(stop)

    def _out(self, out: np.ndarray | None, shape: tuple[int, ...], contiguous: bool) -> np.ndarray:
        """``out`` checked to be a writeable, aligned array of ``shape`` in the stack's dtype
        (C-contiguous where ``contiguous``); a new one for None."""
        st = self.stack
        if out is None:
            return np.empty(shape, dtype=st.np_dtype)
        if (not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != st.np_dtype
                or (contiguous and not out.flags.c_contiguous) or not out.flags.writeable):
            got = (f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__)
            kind = "C-contiguous " if contiguous else ""
            raise ValueError(f"out must be a writeable {kind}{st.dtype} array of shape {shape}, got {got}")
        if not out.flags.aligned:  # the C generator writes whole floats into it
            raise ValueError(misaligned("out", out, f"an aligned array such as np.empty({shape}, {st.dtype!r})"))
        return out

    def __repr__(self) -> str:
        st = self.stack
        return (f"GeneratedParams(depth={st.depth}, width={st.width}, init={st.init!r}, "
                f"seed={self.seed})")


def weights_probe(params) -> np.ndarray | int:
    """What a Result keeps of the weights it ran with, for :func:`gradbench.diagnose` to check
    that the ``params`` it is given are those: the sums in float64 of each layer's first, middle
    and last row of W ((L, 3) numbers, a pass over 3 L N entries), or the seed of generated
    weights. It tells another seed's weights, and weights changed in place in any of those rows
    (a layer rescaled, a column changed, every row but the first); a change confined to other
    rows goes unseen (checking every entry would cost a pass over all of W each call)."""
    return probe_and_size(params)[0]


def layer_probe(W: np.ndarray) -> np.ndarray:
    """:func:`weights_probe`'s sums of the layers ``W`` (n, N, N): (n, k) float64, k <= 3 (so
    generated weights, drawn a chunk at a time, are probed as stored ones are)."""
    return W[:, _probe_rows(W.shape[1]), :].sum(axis=2, dtype=np.float64)


def probe_and_size(params) -> tuple[np.ndarray | int, np.ndarray | None]:
    """:func:`weights_probe` and :func:`sampled_weight_log10` from one gather of the probe's rows
    (the engine takes both at every call: apart, the size cost 13.7 ms a call at L = 10^4, N = 64,
    and 23 us at L = 10, N = 16, 4-8 % of those calls)."""
    if isinstance(params, GeneratedParams):
        return int(params.seed), None
    W = np.asarray(params.W)
    rows = W[:, _probe_rows(W.shape[1]), :]
    sums = np.add.reduce(rows, axis=2, dtype=np.float64)  # rows.sum(axis=2, ...) without ndarray.sum's wrapper
    return sums, _rows_log10(rows, W.shape[1])


def _rows_log10(rows: np.ndarray, N: int) -> np.ndarray:
    """log10 of sqrt(N / k) ||rows_l||_F for rows (L, k, N): the plain sum of squares in float64,
    and where it over- or underflows (entries beyond ~1e154 or below ~1e-154) the rows scaled by
    their largest entry first; -inf for rows of zeros."""
    k = rows.shape[1]
    sq = np.einsum("lkn,lkn->l", rows, rows, dtype=np.float64)
    plain = np.isfinite(sq) & (sq >= 1e-300)
    if plain.all():  # the usual case: the same values as the masked assignment below, without the masks
        return 0.5 * np.log10(sq * (N / k))
    out = np.full(len(rows), -np.inf)
    out[plain] = 0.5 * np.log10(sq[plain] * (N / k))
    for l in np.flatnonzero(~plain):
        m = float(np.max(np.abs(rows[l]), initial=0.0))
        if m > 0:
            scaled = (rows[l] / rows.dtype.type(m)).astype(np.float64)
            out[l] = math.log10(m) + 0.5 * math.log10(float(np.sum(scaled * scaled)) * (N / k))
    return out


def _drawn(params):
    """Drawn ``params`` (Params or RecurrentParams) with the record of their weights as drawn
    (``drawn``: :func:`drawn_probe`)."""
    return replace(params, drawn=drawn_probe(params))


def drawn_probe(params) -> np.ndarray:
    """The probe of drawn weights: :func:`weights_probe` for a stack's; for a recurrent net's the
    float64 sums of the first, middle and last row of W_ih and of W_hh (6 numbers)."""
    if hasattr(params, "W"):
        return weights_probe(params)
    return np.concatenate([np.asarray(a)[_probe_rows(a.shape[0])].sum(axis=1, dtype=np.float64)
                           for a in (params.W_ih, params.W_hh)])


#: How a run names weights drawn for the init scheme and changed since (``Params.drawn``).
CHANGED = "changed after they were drawn"


def origin_words(params, net, probe=None) -> str | None:
    """Where the weights of ``params`` (of ``net``) came from, in words, for a Result's
    ``extras["weights"]``: their ``origin``; for drawn weights (origin None) whose
    :func:`drawn_probe` (``probe``, or taken here) differs from the one recorded when they were
    drawn, "he_normal weights changed after they were drawn" (:func:`initial_words`); None for
    drawn weights as drawn, and for GeneratedParams."""
    origin = getattr(params, "origin", None)
    drawn = getattr(params, "drawn", None)
    if origin is not None or drawn is None:
        return origin
    now = drawn_probe(params) if probe is None else probe
    if isinstance(now, np.ndarray) and now.shape == drawn.shape and (
            bool(np.equal(now, drawn).all())  # the usual case: all equal, so no NaN anywhere (array_equal's own pass)
            or np.array_equal(now, drawn, equal_nan=True)):
        return None
    return f"{initial_words(net)} {CHANGED}"


def initial_words(net) -> str:
    """The weights a net's init draws, in words: "he_normal weights"; a recurrent net's "W_ih
    xavier_normal, W_hh orthogonal (gain 1) weights"."""
    if hasattr(net, "recurrent_init"):
        gain = f" (gain {net.sigma_w:g})" if getattr(net, "sigma_w", None) else ""
        return f"W_ih {net.init}, W_hh {net.recurrent_init}{gain} weights"
    return f"{net.init} weights"


def after(params, stack, what: str):
    """``params`` (the same arrays; a stack's or a recurrent net's) with the origin words of
    weights changed by ``what`` ("20 epochs of training"): "he_normal weights after 20 epochs of training", "the weights of
    Sequential after ...", "... after layer-wise pretraining (50 epochs a layer) and 20 epochs
    of training". A report of trained weights named the init scheme they no longer follow."""
    base = params.origin or initial_words(stack)
    m, more = _EPOCHS.search(base), _EPOCHS.fullmatch(what)
    if m and more:  # training after training: one count ("after 5 epochs of training", not "3 ... and 2 ...")
        n = int(m.group(1)) + int(more.group(1))
        return replace(params, origin=f"{base[:m.start()]}{n} epoch{'s' if n != 1 else ''} of training")
    return replace(params, origin=f"{base} {'and' if ' after ' in base else 'after'} {what}")


_EPOCHS = re.compile(r"(\d+) epochs? of training$")


@functools.lru_cache(maxsize=64)
def _probe_rows(N: int) -> np.ndarray:
    """The rows of W that :func:`weights_probe` and :func:`sampled_weight_log10` read, as an index
    array made once per width (read-only: shared by every call; indexing with it gathers what the
    list [0, N // 2, N - 1] did, in the same layout, ~1 us sooner)."""
    rows = np.array(sorted({0, N // 2, N - 1}), dtype=np.intp)
    rows.flags.writeable = False
    return rows


def sampled_weight_log10(params) -> np.ndarray | None:
    """log10 ||W_l||_F per layer estimated from the rows :func:`weights_probe` reads (each
    layer's first, middle and last row, their sum of squares scaled to the N rows), (L,): what
    a Result keeps of its weights' size, for :func:`gradbench.diagnose` called without the
    params (its magnitude rule needs ||W_l||: weights set or trained far from the init's
    sqrt(N) sigma_w were judged at that size). Exact for weights whose rows have one norm (the
    orthogonal init, a layer scaled as a whole); -inf for rows of zeros. None for generated
    weights, which are the init's."""
    return probe_and_size(params)[1]