"""Parameters and inputs of a recurrent net: :class:`RecurrentParams`, :func:`init_params`,
:func:`sequence_input` and :class:`GeneratedSequence`.

Shapes (torch's layout, so that ``torch.nn.LSTM(D, N).weight_hh_l0`` is ``W_hh``)::

    W_ih (G*N, D)   W_hh (G*N, N)   b_ih (G*N,)   b_hh (G*N,)
    W_out (O, N)    b_out (O,)                          only with a head

The gate blocks of the rows are in torch's order: rnn (h), lstm (i, f, g, o), gru (r, z, n).
Parameters are drawn once in Python from a seeded generator and shared by every backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gradbench._fields import RECORD, WORDS, CopyableArrays, check_words
from gradbench.params import GIVEN, _c_normals, _drawn, _orthogonal, _weights, seed_rng, stream
from gradbench.recurrent.spec import Recurrent


@dataclass(frozen=True, eq=False)
class RecurrentParams(CopyableArrays):
    """The parameters of a :class:`Recurrent` net (shapes in the module docstring).

    ``origin``: a few words on where the weights came from when they were not drawn for the net
    as they are ("W_ih xavier_normal, W_hh orthogonal weights after 5 epochs of training",
    :func:`gradbench.train_recurrent`); the report's header says them in place of the net's init
    schemes. None: drawn for the net's schemes (:func:`init_params`); built by a caller,
    :data:`gradbench.params.GIVEN` unless given words. ``drawn``: the probe of the weights as
    drawn (:func:`gradbench.params.drawn_probe`), so that a run of weights changed since says so.
    Neither is an array, as :attr:`gradbench.Params.origin`.
    """

    W_ih: np.ndarray
    W_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray
    W_out: np.ndarray | None = None
    b_out: np.ndarray | None = None
    origin: str | None = field(default=GIVEN, metadata={WORDS: True})
    drawn: np.ndarray | None = field(default=None, repr=False, metadata={RECORD: True})

    def __post_init__(self):
        check_words(self)


def expected_shapes(rnn: Recurrent) -> dict[str, tuple[int, ...] | None]:
    GN, N, D, O = rnn.gates * rnn.hidden, rnn.hidden, rnn.d_in, rnn.output_dim
    return {
        "W_ih": (GN, D), "W_hh": (GN, N), "b_ih": (GN,), "b_hh": (GN,),
        "W_out": (O, N) if rnn.has_head else None, "b_out": (O,) if rnn.has_head else None,
    }


def _recurrent_weights(rng: np.random.Generator, rnn: Recurrent) -> np.ndarray:
    """W_hh (G*N, N): one (N, N) block per gate, each drawn with the recurrent scheme."""
    G, N, gain = rnn.gates, rnn.hidden, rnn.gain
    if rnn.recurrent_init == "identity":
        return gain * np.tile(np.eye(N), (G, 1))
    if rnn.recurrent_init == "orthogonal":
        return (gain * _orthogonal(rng, (G, N, N))).reshape(G * N, N)
    return _weights(rng, rnn.recurrent_init, gain, (G, N, N), N, N).reshape(G * N, N)


def init_params(rnn: Recurrent, seed: int | np.random.Generator = 0) -> RecurrentParams:
    """Draw the parameters of ``rnn`` from ``numpy.random.default_rng(seed)``.

    ``W_ih``: the ``init`` scheme per gate block (fan_in D, fan_out N); ``W_hh``: the
    ``recurrent_init`` scheme per gate block with gain ``sigma_w`` (orthogonal: gain * Q with
    Q from the QR of a Gaussian; identity: gain * I); ``b_ih``, ``b_hh``: N(0, sigma_b^2) (zeros
    when sigma_b = 0), and the LSTM's ``forget_bias`` added to the f block of ``b_ih`` (the GRU's
    ``update_bias`` to its z block); the head
    with the ``init`` scheme. Draw order: W_ih, W_hh, b_ih, b_hh, W_out, b_out.
    """
    if not isinstance(rnn, Recurrent):
        raise TypeError(f"rnn must be a gradbench.Recurrent, got {type(rnn).__name__}")
    rng = seed_rng(seed)
    G, N, D, O = rnn.gates, rnn.hidden, rnn.d_in, rnn.output_dim
    dt = rnn.np_dtype

    def arr(a):
        return np.ascontiguousarray(a, dtype=dt)

    def bias(n):
        return rnn.sigma_b * rng.standard_normal(n) if rnn.sigma_b else np.zeros(n)

    W_ih = _weights(rng, rnn.init, rnn.input_gain, (G, N, D), D, N).reshape(G * N, D)
    W_hh = _recurrent_weights(rng, rnn)
    b_ih, b_hh = bias(G * N), bias(G * N)
    if rnn.cell == "lstm":
        b_ih[N:2 * N] += rnn.lstm_forget_bias
    elif rnn.cell == "gru":
        b_ih[N:2 * N] += rnn.gru_update_bias  # gates r, z, n
    p = dict(W_ih=arr(W_ih), W_hh=arr(W_hh), b_ih=arr(b_ih), b_hh=arr(b_hh))
    if rnn.has_head:
        p["W_out"] = arr(_weights(rng, rnn.init, rnn.input_gain, (O, N), N, O))
        p["b_out"] = arr(bias(O))
    return _drawn(RecurrentParams(**p, origin=None))  # drawn for the net's schemes


def sequence_input(rnn: Recurrent, batch: int, seed: int | np.random.Generator = 1) -> np.ndarray:
    """A standard normal input sequence of shape (steps, batch, input_dim) in the net's dtype."""
    if not isinstance(rnn, Recurrent):
        raise TypeError(f"rnn must be a gradbench.Recurrent, got {type(rnn).__name__}")
    _check_batch(batch)
    rng = seed_rng(seed)
    return np.ascontiguousarray(rng.standard_normal((rnn.steps, batch, rnn.d_in)), dtype=rnn.np_dtype)


def _check_batch(batch) -> None:
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")


# ------------------------------------------------------------------ generated inputs
KIND_X = 16  # the Philox counter word of input blocks (stack kinds are 0..5)
GROUP_BYTES = 4 * 2**20  # float64 blocks GeneratedSequence.steps draws at a time (at least one)
BLOCK = 256  # steps per generated block


@dataclass(frozen=True, eq=False)
class GeneratedSequence:
    """A standard normal input sequence generated per block of steps, never stored whole.

    For sequences whose input does not fit (10^6 steps of a batch of 64 is 0.5 GB per input
    feature in float64): pass it to :func:`gradbench.backprop` in place of the (T, B, D) array.
    Block k (steps 256 k .. 256 k + 255) is ``standard_normal((256, B, D))`` drawn from
    ``numpy.random.Generator(numpy.random.Philox(key=seed, counter=[0, k, 16, 0]))`` (the
    counter scheme of :class:`gradbench.GeneratedParams`), cast to the dtype; the same numbers
    whatever range is asked for. They are not those of :func:`sequence_input`.
    """

    rnn: Recurrent
    batch: int
    seed: int = 0
    shape: tuple = field(init=False)

    def __post_init__(self):
        if not isinstance(self.rnn, Recurrent):
            raise TypeError(f"rnn must be a gradbench.Recurrent, got {type(self.rnn).__name__}")
        _check_batch(self.batch)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**128:
            raise ValueError(f"seed must be an int in [0, 2**128), got {self.seed!r}")
        object.__setattr__(self, "shape", (self.rnn.steps, int(self.batch), self.rnn.d_in))

    @property
    def dtype(self) -> np.dtype:
        return self.rnn.np_dtype

    def steps(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """x_t for t in [start, stop): (stop - start, B, D), C-contiguous."""
        T, B, D = self.shape
        if not 0 <= start <= stop <= T:
            raise ValueError(f"step range [{start}, {stop}) is not inside [0, {T})")
        if out is None:
            out = np.empty((stop - start, B, D), dtype=self.dtype)
        k0, k1 = start // BLOCK, (stop - 1) // BLOCK if stop > start else start // BLOCK - 1
        if k1 < k0:
            return out
        # the blocks in one C call where the extension is built (csrc/philox.c: NumPy's Philox and
        # ziggurat, the same bits; a Generator per block cost the README's 10^5-step LSTM run 4.2 s
        # of 13), else NumPy's Generator per block
        group = max(1, GROUP_BYTES // (BLOCK * B * D * 8))  # blocks drawn at a time
        for g0 in range(k0, k1 + 1, group):
            g1 = min(k1 + 1, g0 + group)
            blocks = np.empty((g1 - g0, BLOCK, B, D))
            if not _c_normals(int(self.seed), KIND_X, g0, g1, (BLOCK, B, D), 1.0, blocks):
                for k in range(g0, g1):
                    blocks[k - g0] = stream(int(self.seed), k, KIND_X).standard_normal((BLOCK, B, D))
            a, b = max(start, g0 * BLOCK), min(stop, g1 * BLOCK)
            out[a - start:b - start] = blocks.reshape(-1, B, D)[a - g0 * BLOCK:b - g0 * BLOCK]
        return out

    def materialize(self) -> np.ndarray:
        """The whole (T, B, D) sequence as an array (only when it fits)."""
        return self.steps(0, self.shape[0])

    def __repr__(self) -> str:
        return f"GeneratedSequence(steps={self.shape[0]}, batch={self.shape[1]}, input_dim={self.shape[2]}, seed={self.seed})"


