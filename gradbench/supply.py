"""The parameters of one segment of layers at a time, for the engine.

Stored :class:`~gradbench.Params` give views. :class:`~gradbench.GeneratedParams` are generated
into two buffers: while the backend runs one segment, the next is drawn in a helper thread
(NumPy's generators and the backends release the GIL), so generation stays off the critical
path; the weights are the same whatever the order. Where no CPU is spare when a run starts
(:func:`gradbench._env.spare_cpu`: one CPU, or every CPU running a thread, as in the workers of
a sweep that fills the machine), there is no helper thread: each segment is drawn when it is
needed, by the caller (on one CPU the hand-overs cost 4-10 % of a sweep's run of depth 500,
width 64, batch 32; docs/design.md, section 5). When the plan keeps them all
(``Plan.keep_weights``, small runs), they are generated into one array of every layer, each
segment once: the backward pass takes the forward's.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from gradbench._env import spare_cpu
from gradbench.params import GeneratedParams
from gradbench.spec import Stack


class LayerSupply:
    """The parameters of layers [s, e): views of stored Params, or generated into buffers.

    Generated weights use two buffers: :meth:`prefetch` fills the spare one in a helper thread
    (one thread, so generation never runs twice at once) while the caller computes with the
    other; :meth:`get` waits for it. With ``keep``, one buffer of every layer instead: each
    segment is generated once, into its own rows, and kept. ``seconds`` is the time the caller
    waited for generation, ``cpu_seconds`` the time spent generating. ``empty(shape, dtype)``
    allocates the buffers (the engine's workspace). ``helper``: whether a helper thread does
    the work of :meth:`prefetch` and :meth:`background` (default None: where a CPU is spare
    when it is first needed, :func:`gradbench._env.spare_cpu`); without one, the caller does it.
    """

    def __init__(self, params, stack: Stack, seg: int, keep: bool = False, empty=np.empty,
                 helper: bool | None = None):
        self.params = params
        self._helper = helper
        self.generated = isinstance(params, GeneratedParams)
        self.keep = keep and self.generated
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.pool = None
        if self.keep:
            self.all = tuple(empty(shape, stack.np_dtype) for shape in buffer_shapes(stack, stack.depth))
            self.kept = {}  # (s, e) -> the segment() tuple, or the future generating it
        elif self.generated:
            self.buffers = [tuple(empty(shape, stack.np_dtype) for shape in buffer_shapes(stack, seg))
                            for _ in range(2)]
            self.spans = [None, None]  # the (s, e) each buffer holds (or will hold: pending)
            self.filled = [None, None]  # the segment() tuple each buffer holds
            self.current = 0
            self.pending = None  # (buffer index, future)

    def _fill_kept(self, s: int, e: int):
        t = time.perf_counter()
        out = self.params.segment(s, e, out=tuple(a[s:e] for a in self.all))
        self.cpu_seconds += time.perf_counter() - t
        return out

    def _get_kept(self, s: int, e: int):
        got = self.kept.get((s, e))
        if not isinstance(got, tuple):  # not prefetched (None), or a future
            t = time.perf_counter()
            got = self.kept[s, e] = self._fill_kept(s, e) if got is None else got.result()
            self.seconds += time.perf_counter() - t
        return got

    def _fill(self, i: int, s: int, e: int) -> None:
        t = time.perf_counter()
        self.filled[i] = self.params.segment(s, e, out=self.buffers[i])
        self.cpu_seconds += time.perf_counter() - t

    def _wait(self) -> None:
        if self.pending is not None:
            t = time.perf_counter()
            self.pending[1].result()
            self.seconds += time.perf_counter() - t
            self.pending = None

    def prefetch(self, s: int, e: int) -> None:
        """Start generating layers [s, e) into the buffer not in use (no-op for stored params, and
        without a helper thread: :meth:`get` draws them)."""
        if not self.generated or not self.helper:
            return
        if self.keep:
            if (s, e) not in self.kept:
                self.kept[s, e] = self.background(self._fill_kept, s, e)
            return
        self._wait()
        i = 1 - self.current
        if self.spans[i] == (s, e):
            return
        self.spans[i] = (s, e)
        self.pending = (i, self.background(self._fill, i, s, e))

    @property
    def helper(self) -> bool:
        """Whether the work of :meth:`prefetch` and :meth:`background` goes to a helper thread
        (decided once per run, when first asked)."""
        if self._helper is None:
            self._helper = spare_cpu()
        return self._helper

    def background(self, fn, *args):
        """Run ``fn(*args)`` in the helper thread, after what is queued there; returns its future.

        The engine queues each segment's gradient histograms here (Numba, C and NumPy release the
        GIL): one helper thread for generation and statistics, in the order they were asked.
        Without a helper thread, ``fn`` runs now and the future is done: its result, or its
        error, raised by ``result()`` as the helper's future would.
        """
        if not self.helper:
            done = Future()
            try:
                done.set_result(fn(*args))
            except Exception as exc:
                done.set_exception(exc)
            return done
        if self.pool is None:
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="gradbench-weights")
        return self.pool.submit(fn, *args)

    def get(self, s: int, e: int):
        """W, b, gamma, beta, slope of layers [s, e)."""
        if not self.generated:
            return self.params.segment(s, e)
        if self.keep:
            return self._get_kept(s, e)
        self._wait()
        if self.spans[self.current] != (s, e):  # the forward's last segment is the backward's first
            i = 1 - self.current
            if self.spans[i] != (s, e):  # not prefetched
                t = time.perf_counter()
                self._fill(i, s, e)
                self.seconds += time.perf_counter() - t
                self.spans[i] = (s, e)
            self.current = i
        return self.filled[self.current]

    def close(self) -> None:
        if self.keep:
            for got in self.kept.values():
                if not isinstance(got, tuple):
                    got.result()
        elif self.generated:
            self._wait()
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


def buffer_shapes(stack: Stack, layers: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of the generated W and b of ``layers`` layers."""
    N = stack.width
    return (layers, N, N), (layers, N)
