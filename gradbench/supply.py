"""The parameters of one segment of layers at a time, for the engine.

Stored :class:`~gradbench.Params` give views. :class:`~gradbench.GeneratedParams` are generated
into two buffers: while the backend runs one segment, the next is drawn in a helper thread
(NumPy's generators and the backends release the GIL), so generation stays off the critical
path; the weights are the same whatever the order.
"""

from __future__ import annotations

import time

import numpy as np

from gradbench.params import GeneratedParams
from gradbench.spec import Stack


class LayerSupply:
    """The parameters of layers [s, e): views of stored Params, or generated into buffers.

    Generated weights use two buffers: :meth:`prefetch` fills the spare one in a helper thread
    (one thread, so generation never runs twice at once) while the caller computes with the
    other; :meth:`get` waits for it. ``seconds`` is the time the caller waited for generation,
    ``cpu_seconds`` the time spent generating.
    """

    def __init__(self, params, stack: Stack, seg: int):
        self.params = params
        self.generated = isinstance(params, GeneratedParams)
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.pool = None
        if self.generated:
            N, dt = stack.width, stack.np_dtype
            self.buffers = [(np.empty((seg, N, N), dtype=dt), np.empty((seg, N), dtype=dt)) for _ in range(2)]
            self.spans = [None, None]  # the (s, e) each buffer holds (or will hold: pending)
            self.filled = [None, None]  # the segment() tuple each buffer holds
            self.current = 0
            self.pending = None  # (buffer index, future)

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
        """Start generating layers [s, e) into the buffer not in use (no-op for stored params)."""
        if not self.generated:
            return
        self._wait()
        i = 1 - self.current
        if self.spans[i] == (s, e):
            return
        self.spans[i] = (s, e)
        self.pending = (i, self.background(self._fill, i, s, e))

    def background(self, fn, *args):
        """Run ``fn(*args)`` in the helper thread, after what is queued there; returns its future.

        The engine queues each segment's gradient histograms here (numba and NumPy release the
        GIL): one helper thread for generation and statistics, in the order they were asked.
        """
        if self.pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(1, thread_name_prefix="gradbench-weights")
        return self.pool.submit(fn, *args)

    def get(self, s: int, e: int):
        """W, b, gamma, beta, slope of layers [s, e)."""
        if not self.generated:
            return self.params.segment(s, e)
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
        if self.generated:
            self._wait()
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
