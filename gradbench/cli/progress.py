"""Talking to people while a long run works: progress in layers, and the compilation notice.

On a terminal a tqdm line follows the run (layers of the forward and the backward pass, or the
elapsed time when the run cannot report layers). When stderr is not a terminal (nohup, SLURM,
``| tee``, CI) one plain line says the run has started, and then one line every
``GRADBENCH_PROGRESS_SECONDS`` seconds (default 30) says how far it got.
"""

from __future__ import annotations

import sys
import threading
import time

from gradbench._env import env_float

PROGRESS_SECONDS = 30.0


def interval_from_env() -> float:
    """``GRADBENCH_PROGRESS_SECONDS`` (default :data:`PROGRESS_SECONDS`), refused by name when it
    is not a finite number > 0: every command reads it before any work (``run`` read it only
    once the weights were drawn, seconds into a large run)."""
    return env_float("GRADBENCH_PROGRESS_SECONDS", PROGRESS_SECONDS)


def _elapsed(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Progress of one long call, in layers when the call reports them, or in other units
    (runs of a sweep, segments of a recurrent pass) counted with :meth:`count`.

    Parameters
    ----------
    desc : str
        What runs, e.g. ``backprop (depth 100000, width 16, c)``.
    segments : list of int, optional
        Layers per segment of a segmented backprop: the engine reports segments done (forward
        from the bottom, then backward from the top), shown as layers out of 2 L. None: only
        the elapsed time.
    stream : text file, default sys.stderr
    delay : float
        Seconds before anything is shown (short calls stay silent).
    interval : float, optional
        Seconds between plain lines when ``stream`` is not a terminal (default
        ``GRADBENCH_PROGRESS_SECONDS`` or 30).
    quiet : bool
        Show nothing.
    total, unit : int, str, optional
        Without ``segments``: the count to reach and what is counted ("runs"); :meth:`count`
        sets how many are done (``total`` may also come with the first :meth:`count`).
    """

    def __init__(self, desc: str, segments: list[int] | None = None, *, stream=None, delay: float = 1.0,
                 interval: float | None = None, quiet: bool = False, total: int | None = None,
                 unit: str = "layers (forward + backward)"):
        self.desc, self.delay, self.quiet, self.unit = desc, delay, quiet, unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval_from_env() if interval is None else interval
        self.total = 2 * sum(segments) if segments else total
        # layers done after k work items: the forward segments bottom-up, then backward top-down
        order = list(segments or []) + list(reversed(segments or []))
        self._after = [sum(order[:k]) for k in range(len(order) + 1)]
        self.layers = 0
        self.note = ""
        self._done = threading.Event()
        self._thread = None
        self._t0 = time.monotonic()

    def segments_done(self, done: int, total: int) -> None:
        """The engine's ``progress(done, total)`` callback."""
        if self._after:
            self.layers = self._after[min(done, len(self._after) - 1)]

    def count(self, done: int, total: int | None = None, note: str | None = None) -> None:
        """``done`` units of ``total`` (when given) are finished: the counter of a run in units;
        ``note``: a state to show beside it ("loss 0.6931")."""
        if total is not None:
            self.total = total
        if note is not None:
            self.note = note
        self.layers = done

    def line(self) -> str:
        """The current state in words (what a plain progress line says)."""
        where = f"{self.layers:,} of {self.total:,} {self.unit}, " if self.total else ""
        note = f", {self.note}" if self.note else ""
        return f"{self.desc}: {where}{_elapsed(time.monotonic() - self._t0)} elapsed{note}"

    def _tty(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (AttributeError, ValueError):
            return False

    def _run(self) -> None:
        if self._done.wait(self.delay):
            return
        if not self._tty():
            self._say(f"{self.desc} ...")
            while not self._done.wait(self.interval):
                self._say(self.line())
            return
        from tqdm.auto import tqdm

        short = self.unit.split(" (")[0]

        def fmt() -> str:  # the count once a total is known (a recurrent pass gives it with its first count)
            return ("{desc}: {n_fmt}/{total_fmt} " + short + " [{elapsed}<{remaining}]") if self.total else \
                "{desc}: {elapsed} elapsed"

        with tqdm(total=self.total, desc=self.desc, bar_format=fmt(), file=self.stream, leave=False) as bar:
            while not self._done.wait(0.25):
                if bar.total != self.total:
                    bar.total, bar.bar_format = self.total, fmt()
                bar.n = self.layers
                if self.note:
                    bar.set_postfix_str(self.note, refresh=False)
                bar.refresh()

    def _say(self, text: str) -> None:
        try:
            print(text, file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed or broken stderr never stops a run
            pass

    def __enter__(self) -> "Progress":
        self._t0 = time.monotonic()
        if not self.quiet:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        return False


def epochs(progress: bool, total: int, name: str = "") -> Progress | None:
    """The progress of a training run over ``total`` epochs (started), or None without
    ``progress``: count each epoch with ``count(epoch + 1, note=f"loss {loss:.4f}")`` and close it
    with ``__exit__``."""
    if not progress:
        return None
    bar = Progress(name or "training", total=total, unit="epochs")
    return bar.__enter__()


# ------------------------------------------------------------------ numba compilation
def numba_compiles(dtype: str) -> bool:
    """Whether the first numba call for ``dtype`` compiles: neither compiled in this process nor
    in numba's on-disk cache (an index whose source stamp matches, holding the signature).

    When numba's internals cannot be read, assume it compiles (the notice is then harmless).
    """
    try:
        from gradbench.kernels import stack as kernels

        for kernel in (kernels.stack_forward_kernel, kernels.stack_backward_kernel):
            tag = f"({dtype}, 3"  # the 3-d arrays W, H: Array(float64, 3, 'C') / array(float64, 3d, C)
            if any(tag in str(sig).lower() for sig in kernel.signatures):
                continue
            index = kernel._cache._cache_file._load_index()  # {} when missing or stale
            if not any(tag in str(key[0]).lower() for key in index):
                return True
        return False
    except Exception:  # pragma: no cover - another numba version
        return True


def numba_notice(backend: str, dtype: str, stream=None) -> None:
    """Print "compiling kernels" before a numba run that will compile (only then)."""
    if backend == "numba" and numba_compiles(dtype):
        print(f"compiling the numba kernels for {dtype} (first run only; cached for the next ones) ...",
              file=stream if stream is not None else sys.stderr, flush=True)
