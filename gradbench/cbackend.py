"""The C backend: thin Python wrappers over the cffi-compiled ``gradbench._ckernels``.

:func:`stack_forward` and :func:`stack_backward` take exactly the arguments of
:mod:`gradbench.reference` (the table :data:`gradbench.abi.FORWARD` / ``BACKWARD``), validate
them with :func:`gradbench.abi.check`, fill one ``gb_stack_arrays`` struct of pointers with
the buffers (``ffi.from_buffer``, never copied) and make one C call per direction. cffi releases
the GIL around every C call, so two Python threads run the kernels at the same time. Error
codes of the C functions become exceptions. The layer functions (:func:`dense_forward`, ...)
call the exported C layer pairs one at a time, with the reference's arguments, for tests.

For wide layers (``BLAS_MIN_WIDTH``, which depends on the BLAS's kernels) the C drivers call NumPy's own BLAS (``dgemm``/
``sgemm`` of its ILP64 OpenBLAS, through csrc/blas64.c: one pool of BLAS threads with the user's
NumPy products), or, for another NumPy, SciPy's (``scipy.linalg.cython_blas``); the pointers are
taken at import and passed into C (``BLAS_SOURCE`` says whose); narrower ones use the
register-blocked kernels in ``csrc/``.
``GRADBENCH_C_THREADS`` sets the number of threads of the own kernels (else ``OMP_NUM_THREADS``,
else the cores this process may run on); results do not depend on it. (OpenBLAS's own thread count
does decide whether products from ``BLAS_MIN_WIDTH`` on are BLAS's, whose sums round differently:
``OMP_NUM_THREADS=1`` changes the last bits of runs of width >= 512.) The helper threads are
kept between calls (csrc/team.c: they spin at most 0.2 ms after a call, then sleep; a forked
child builds its own) and never run beside BLAS: a layer that calls BLAS runs
the rest of its work on one thread and leaves the parallelism to BLAS's own threads (its
OpenBLAS follows ``OPENBLAS_NUM_THREADS``).
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading

import numpy as np

from gradbench import abi, blas, buffers
from gradbench._env import available_cpus, env_flag, env_int

try:
    from gradbench._ckernels import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the build
    from gradbench.backends import c_not_built_message

    raise ImportError(c_not_built_message()) from exc

_ERRORS = {
    abi.EBADACT: (ValueError, "unknown activation code"),
    abi.EBADARG: (ValueError, "bad argument"),
    abi.ENOMEM: (MemoryError, "the C kernel could not allocate its workspace"),
}
_SUFFIX = {np.dtype(np.float64): "f64", np.dtype(np.float32): "f32"}

# Layers at least this wide use BLAS for their three matrix products; where, depends on the
# kernels the OpenBLAS it calls runs (gradbench.blas) and on the instance of the own kernels
# (isa). The own products take B in packed panels of 256 x 128 once k > 256 (csrc/stack_impl.h,
# GB_KC: cache blocks, the bits of one chain per entry). Measured on the 2-core AMD EPYC (Zen 5),
# a whole forward + backward (tanh, L = 200 / 50 / 12 / 6 and B = 128 / 256 / 512 / 512 for
# N = 256 / 512 / 1024 / 2048), GF/s, own / BLAS:
# - AVX-512 instance, OpenBLAS's AVX2 kernels (OPENBLAS_CORETYPE=Haswell, as this machine's
#   environment sets), one thread: float64 74.8 / 49.4, 83.0 / 55.7, 90.3 / 58.5, 83.1 / 59.3;
#   float32 136 / 97.2, 167 / 115, 177 / 116, 175 / 123. Two threads, float64 N = 512 / 2048:
#   148 / 84.5, 167 / 113. The own kernels at every width: no BLAS (NO_BLAS).
# - AVX-512 instance, OpenBLAS's AVX-512 kernels (its own choice on this CPU), one thread:
#   float64 74.4 / 70.4, 83.8 / 85.6, 94.3 / 95.9, 79.7 / 98.8; float32 136 / 142, 171 / 187,
#   182 / 208, 176 / 216: BLAS from 512.
# - AVX2 instance (isa 3, as an AVX2 CPU runs; measured here with the instance forced) against
#   the AVX2 kernels, one thread: float64 38.6 / 40.9, 39.5 / 47.9 and 46.4 / 57.0 at N = 2048;
#   float32 80.9 / 92.0 (N = 512), 86.6 / 109 (N = 2048): BLAS from 512.
NO_BLAS = 1 << 31  # a width no layer has


def default_blas_min_width(avx512_blas: bool | None = None, isa: int | None = None,
                           blas_threads: int | None = None) -> int:
    """The width from which the C drivers call BLAS (the measurements above): 512 where the
    OpenBLAS they call runs its AVX-512 kernels (``avx512_blas``, default: this process's) or the
    own kernels run below AVX-512 (``isa``, default: this CPU's best), and runs one thread
    (``blas_threads``, default: as threadpoolctl reads it at import); else never (NO_BLAS).

    One thread, because OpenBLAS splits every product over its threads and waits for the slowest:
    on a shared machine one of them is often without a CPU, and each of the run's thousands of
    products waits for a time slice. The own kernels' team notices such waits and finishes on one
    thread (csrc/team.c). Measured on the 2-core Zen 4 VM under other load (load average 4.3, default
    threads, tanh, B = 64, minima of 3 processes): N = 512, L = 100 BLAS 1.50-1.99 s, own 0.53-0.61;
    N = 1024, L = 40 BLAS 2.40-6.38 s, own 1.09-1.31 (a user-path review saw 7.49 s against 0.26).
    Pinned to one core, one thread each: BLAS 0.56-0.59 s, own 0.62-0.67 at N = 512; at N = 2048
    (L = 6) 0.34-0.37 against 0.50-0.51 (GRADBENCH_C_BLAS_MIN_WIDTH=512 takes them back)."""
    avx512_blas = blas.runs_avx512_kernels() if avx512_blas is None else avx512_blas
    isa = int(lib.gb_isa(ffi.NULL)) if isa is None else isa
    blas_threads = blas.gemm_threads() if blas_threads is None else blas_threads
    return 512 if (avx512_blas or isa < 4) and blas_threads == 1 else NO_BLAS


# Whose BLAS the drivers call ("numpy" or "scipy"): NumPy's where it is an ILP64 OpenBLAS, so
# that a user's NumPy products and gradbench's share one pool of BLAS threads (csrc/blas64.c).
_NUMPY_GEMM = blas.numpy_gemm()
if _NUMPY_GEMM is not None:
    lib.gb_set_blas_ilp64(ffi.cast("void *", _NUMPY_GEMM[0]), ffi.cast("void *", _NUMPY_GEMM[1]))
BLAS_SOURCE = "numpy" if _NUMPY_GEMM is not None else "scipy"
_BLAS_WIDTH = default_blas_min_width()  # once: it reads the BLAS's kernels (threadpoolctl)
BLAS_MIN_WIDTH = env_int("GRADBENCH_C_BLAS_MIN_WIDTH", _BLAS_WIDTH, low=0)
# float32: the same widths (measured above). The own float32 products sum k in blocks of 64
# (stack_impl.h, GB_KB: as accurate as BLAS, measured there); one FMA chain per entry over
# k = 2048 has a rounding bound of 1.2e-4. (Until 2026-12-01 float32 used BLAS from 128.)
BLAS_MIN_WIDTH_F32 = env_int("GRADBENCH_C_BLAS_MIN_WIDTH_F32", _BLAS_WIDTH, low=0)
# B*N*N of a layer from which the own kernels use several threads (N = 64, B = 64 and up): the
# backward's one barrier per layer costs ~0.5 us when both threads have a core (the forward
# has none: each thread transposes W itself). When they have not (a shared
# machine), the team notices its waits and finishes the call on one thread (csrc/team.c).
PAR_MIN_WORK = env_int("GRADBENCH_C_PAR_MIN_WORK", 1 << 18, low=0)
# L*B*N*N of a call from which it may use several threads: a team's start and end (waking the
# pool's helper, csrc/team.c, and waiting for it) and, with the library's own thread count, the
# look for busy threads (busy_threads, ~20-30 us) do not pay below. Measured on 2 CPUs (tanh,
# N = 64, B = 64, so L B N^2 = 2^18 L; gb.backprop, default threads against one, medians of
# calls interleaved in blocks in one process): L = 2 0.74x, L = 4 0.80x, L = 8 0.89x, L = 16
# 0.99-1.02x, L = 32 1.14x, L = 100 1.41x. With a helper created and joined per call (before the
# pool) L = 16 took 0.89-1.08 ms against 0.77-0.80 and L = 32 broke even. So from 2^23.
PAR_MIN_TOTAL = env_int("GRADBENCH_C_PAR_MIN_TOTAL", 1 << 23, low=0)


def check(rc: int, what: str) -> None:
    """Raise the exception that the C error code ``rc`` of function ``what`` stands for."""
    if rc != abi.OK:
        kind, text = _ERRORS.get(rc, (RuntimeError, f"error code {rc}"))
        raise kind(f"{what}: {text}")


def pointer(a: np.ndarray, ctype: str):
    """``a``'s buffer as a cffi pointer of type ``ctype`` (never copied; ``a`` already checked)."""
    return ffi.from_buffer(ctype, a)  # one call: the typed pointer straight from the buffer


def suffix(a: np.ndarray) -> str:
    """The C function suffix of ``a``'s dtype (f64 or f32)."""
    try:
        return _SUFFIX[a.dtype]
    except KeyError:
        raise TypeError(f"dtype {a.dtype} is not supported; use float64 or float32") from None


# ------------------------------------------------------------------ BLAS and options
def _capsule_pointer(capsule) -> int:
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get_ptr(capsule, get_name(capsule))


def _blas() -> tuple[int, int]:
    """Addresses of the Fortran dgemm and sgemm the drivers call: NumPy's (through the ILP64
    shims of csrc/blas64.c; :func:`gradbench.blas.numpy_gemm`), else SciPy's; (0, 0) when
    neither is there or ``GRADBENCH_C_NO_BLAS`` is set."""
    if env_flag("GRADBENCH_C_NO_BLAS"):
        return 0, 0
    if BLAS_SOURCE == "numpy":
        return (int(ffi.cast("uintptr_t", ffi.addressof(lib, "gb_dgemm_ilp64"))),
                int(ffi.cast("uintptr_t", ffi.addressof(lib, "gb_sgemm_ilp64"))))
    try:
        from scipy.linalg import cython_blas

        capi = cython_blas.__pyx_capi__
        return _capsule_pointer(capi["dgemm"]), _capsule_pointer(capi["sgemm"])
    except Exception:  # pragma: no cover - SciPy is a dependency; keep the own kernels
        return 0, 0


def _env_threads() -> int | None:
    """The thread count the environment asks for (``GRADBENCH_C_THREADS``, else
    ``OMP_NUM_THREADS``), None when it asks for none."""
    threads = env_int("GRADBENCH_C_THREADS", 0, low=1, high=MAX_THREADS)  # 3e9 was capped at 64 in silence
    if threads:
        return threads
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()  # OpenMP's own syntax
    if env.isdigit():  # another library's variable too: the drivers take at most MAX_THREADS of it
        return min(max(1, int(env)), MAX_THREADS)
    return None


# The most threads a C driver runs (csrc/gb_internal.h GB_MAX_THREADS; tests/test_c.py reads it there).
MAX_THREADS = 64


def _default_threads() -> int:
    return _env_threads() or min(available_cpus(), MAX_THREADS)  # what the drivers run (threads() says it)


def make_opts(nthreads: int | None = None, blas: bool = True, blas_min_width: int | None = None,
              par_min_work: int | None = None, par_min_total: int | None = None, isa: int = 0,
              solo_after: int = 0, own_wt: int = 0, blas_min_width_f32: int | None = None):
    """A ``gb_opts`` struct for the drivers (BLAS pointers, thresholds, thread count, and the
    instruction set: 0 the best this CPU runs, 1 baseline, 3 AVX2+FMA, 4 AVX-512 at most).
    ``blas_min_width`` sets both dtypes' widths unless ``blas_min_width_f32`` sets float32's.
    ``solo_after`` and ``own_wt`` are for tests (csrc/gradbench.h): a hand-over to one thread,
    and the forward's copies of W^T (1 one per thread, -1 one shared, 0 by shape)."""
    o = ffi.new("gb_opts *")
    if blas:
        d, s = _blas()
        o.dgemm = ffi.cast("gb_dgemm_fn", d)
        o.sgemm = ffi.cast("gb_sgemm_fn", s)
    o.blas_min_width = BLAS_MIN_WIDTH if blas_min_width is None else int(blas_min_width)
    f32 = blas_min_width if blas_min_width_f32 is None else blas_min_width_f32
    o.blas_min_width_f32 = BLAS_MIN_WIDTH_F32 if f32 is None else int(f32)
    o.nthreads = _default_threads() if nthreads is None else int(nthreads)
    o.par_min_work = PAR_MIN_WORK if par_min_work is None else int(par_min_work)
    o.par_min_total = PAR_MIN_TOTAL if par_min_total is None else int(par_min_total)
    o.isa = int(isa)
    o.solo_after = int(solo_after)  # tests: hand over to one thread after this many barriers
    if own_wt not in (-1, 0, 1):
        raise ValueError(f"own_wt must be -1, 0 or 1, got {own_wt!r}")
    o.own_wt = int(own_wt)
    return o


def threads_for(L: int, B: int, N: int, dtype=np.float64, opts=None) -> int:
    """The threads a stack driver call of L layers, batch B and width N starts with under
    ``opts`` (default: the library's): 1 where BLAS runs the products, below
    :data:`PAR_MIN_WORK` per layer or :data:`PAR_MIN_TOTAL` per call."""
    f32 = np.dtype(dtype) == np.float32
    return int(lib.gb_stack_threads(opts if opts is not None else _OPTS, int(L), int(B), int(N), int(f32)))


def blas_for(N: int, dtype=np.float64, opts=None) -> bool:
    """Whether the stack drivers call BLAS, on its own threads, for the products of width N
    under ``opts`` (default: the library's): from :data:`BLAS_MIN_WIDTH` where BLAS is found."""
    f32 = np.dtype(dtype) == np.float32
    return bool(lib.gb_stack_blas(opts if opts is not None else _OPTS, int(N), int(f32)))


def isa(opts=None) -> int:
    """The instruction-set level the drivers run at (1 baseline, 3 AVX2+FMA, 4 AVX-512)."""
    return int(lib.gb_isa(opts if opts is not None else _OPTS))


# Immutable after import: read by every call, never written (no global mutable state).
_OPTS = make_opts()


def threads() -> int:
    """Threads of the own C kernels (``GRADBENCH_C_THREADS``, else ``OMP_NUM_THREADS``, else the cores)."""
    return int(_OPTS.nthreads)


def release_workspace() -> None:
    """Free the forward driver's copies of W^T that the calling thread keeps from one call to the
    next (csrc/workspace.c): the engine calls it when a run ends. Kept for a run, the block is
    allocated once instead of once per segment, and glibc's heap is not fragmented by it."""
    lib.gb_workspace_release()


def workspace_bytes() -> int:
    """Bytes of the block the calling thread keeps (0: none)."""
    return int(lib.gb_workspace_bytes())


def all_finite(a: np.ndarray, opts=None) -> bool:
    """Whether every entry of the C-contiguous float64/float32 array ``a`` is finite: one pass on
    the kernels' threads (``gb_check_finite``; NumPy's ``np.all(np.isfinite(a))`` writes and
    reads a bool per entry). Anything else is refused before C runs."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"all_finite: a must be a numpy.ndarray, got {type(a).__name__}")
    abi.check_array("all_finite", "a", a, abi.FLOAT_DTYPES, a.shape, False)
    name = f"gb_check_finite_{suffix(a)}"
    rc = int(getattr(lib, name)(pointer(a, "double *" if a.dtype == np.float64 else "float *"), a.size,
                                opts if opts is not None else _OPTS))
    if rc < 0:
        check(-rc, name)
    return rc == 1


# A pass that writes fresh memory (a first call's activations and gradients) is decided by its
# page faults, not by arithmetic: while gradbench.buffers.PREFAULTER still has at least
# PREFAULT_SHARE_FROM bytes to fault in and the drivers would take every CPU, they run on one
# thread fewer and leave that CPU to the prefaulter. Measured (L = 10^4, n = 64, B = 64, tanh,
# a fresh process, 2 CPUs): first call 0.44-0.51 s on two threads beside the prefaulter, 0.38-0.46
# s on two without it, 0.35 s on one beside it (two threads faulting pages in at the same time
# spend 0.76-0.80 CPU-seconds against one's 0.58). Warm calls fault nothing in: every thread.
# The prefaulter stops when its pages are in, so such a call looks again between pieces, as
# beside a spinning BLAS worker (RELOOK_TOTAL), and runs the rest on every thread from there:
# the backward's dW (a third of the fresh memory) is in after ~0.1 s of a ~0.2 s pass on one
# thread. Measured (the same case, fresh processes, alternating, 6 each): first call 0.372-0.403 s
# against 0.411-0.431 s as one piece, warm 0.20-0.22 s either way.
PREFAULT_SHARE_FROM = 32 * 2**20
_OPTS_SHARED = make_opts(nthreads=_OPTS.nthreads - 1) if _OPTS.nthreads >= available_cpus() >= 2 else None


def call_opts(work: int | None = None, total: int | None = None, itemsize: int = 8):
    """The options of the next driver call of ``work`` = B N^2 per layer and ``total`` = L B N^2
    (of ``itemsize``-byte reals):
    :data:`_OPTS`, or one thread fewer while the prefaulter has fresh pages to fault in (:data:`PREFAULT_SHARE_FROM`),
    or, with the library's own thread count, as many fewer as other threads of this process are
    running (:func:`busy_threads`), unless the call :func:`outlasts_a_spin` of those threads."""
    return _choose(work, total, itemsize)[0]


def _choose(work: int | None, total: int | None, itemsize: int):
    """:func:`call_opts`'s options, and whether they leave CPUs to other running threads of this
    process (which may stop soon: the call looks again between its pieces, :data:`RELOOK_TOTAL`)."""
    if (_OPTS.nthreads < 2 or (work is not None and work < _OPTS.par_min_work)
            or (total is not None and total < _OPTS.par_min_total)):
        return _OPTS, False  # one thread whatever happens
    if _OPTS_SHARED is not None and buffers.PREFAULTER.pending() >= PREFAULT_SHARE_FROM:
        return _OPTS_SHARED, True  # the prefaulter stops when its pages are in: look again
    if not _EXPLICIT_THREADS and not outlasts_a_spin(work, total, itemsize):
        busy = busy_threads()
        cpus = available_cpus()
        if busy and _OPTS.nthreads + busy > cpus:
            return _opts_for(max(1, cpus - busy)), True
    return _OPTS, False


# A team of the drivers' threads beside a thread that is already running (another library's BLAS
# worker spinning ~0.1 s after each product, gradbench's prefaulter or weight supply) has one
# thread without a CPU of its own: every barrier waits for it. The team notices and goes solo
# (csrc/team.c), but only after a few barriers, and every call starts a team again. So a call
# with the library's own thread count looks first (/proc: ~20-30 us, only for calls that would
# run a team) and takes only the CPUs that are free. Measured (2 CPUs): first calls at L = 10^4,
# n = 64, B = 64 (the prefaulter running) 0.33-0.40 s against 0.42-0.43 s with two threads
# forced; float32 L = 1,000, n = 64 after a NumPy product 28.6-30.2 ms, one thread 28.3-29.1.
_EXPLICIT_THREADS = _env_threads() is not None
# A call whose layers are slow enough that the team's judge (csrc/team.c: not before its sixth
# barrier; the forward meets at one every 16 layers) cannot send it solo while a BLAS worker
# spins (OpenBLAS's workers spin ~0.1 s after each product, 2^28 cycles, then sleep), and that
# lasts well beyond the spin, runs its whole team without looking: it shares a CPU with the
# worker until the worker sleeps and then has both, where looking first ran the whole forward on
# one thread. A thread that keeps running is the judge's to see: the call goes solo after 96
# layers. From B N^2 = SPIN_LAYER and L B N^2 = SPIN_TOTAL per call (float32: twice each, its
# layers take half the time). Measured (2 CPUs, tanh, a NumPy product of the layer's size before
# each call, target_runner.py mixed, minima of 5 calls in a process, two processes; s): float64
# N = 512, B = 256: L = 200 0.68 / 0.68 without looking against 0.93 / 0.90 looking (0.63
# with no product before), L = 100 0.37 / 0.36 against 0.46 / 0.45; below the thresholds looking
# was as fast or faster: B = 128, L = 200 0.44 / 0.48 against 0.43 / 0.46; B = 64, L = 400 0.52 /
# 0.54 against 0.57 / 0.53; N = 256, B = 256, L = 400 0.35 / 0.36 against 0.33 / 0.33; float32
# N = 512, B = 256, L = 200 0.34 / 0.39 against 0.34 / 0.37. Beside a thread that keeps running
# (hashing without the GIL), float64 N = 512, B = 256, L = 200: 1.20-1.31 s without looking,
# 1.30-1.31 looking.
SPIN_LAYER = env_int("GRADBENCH_C_SPIN_LAYER", 1 << 26, low=0)
SPIN_TOTAL = env_int("GRADBENCH_C_SPIN_TOTAL", 1 << 32, low=0)


def outlasts_a_spin(work: int | None, total: int | None, itemsize: int = 8) -> bool:
    """Whether a call of ``work`` = B N^2 per layer and ``total`` = L B N^2 of ``itemsize``-byte
    reals runs its whole team beside other running threads (:data:`SPIN_LAYER`)."""
    if work is None or total is None:
        return False
    scale = 2 if itemsize < 8 else 1
    return work >= SPIN_LAYER * scale and total >= SPIN_TOTAL * scale


_OPTS_BY_THREADS: dict = {}


def _opts_for(nthreads: int):
    """:data:`_OPTS` with ``nthreads`` threads (made once per count)."""
    opts = _OPTS_BY_THREADS.get(nthreads)
    if opts is None:
        opts = _OPTS_BY_THREADS.setdefault(nthreads, make_opts(nthreads=nthreads))
    return opts


# The C drivers' own helper threads (csrc/team.c, GB_HELPER_NAME in csrc/gb_internal.h): kept
# between calls, they spin ~0.2 ms after a team before sleeping, so the next call finds them
# awake. busy_threads does not count them: they are the team's, not a competitor. Nor the
# prefaulter's thread: its share is decided by what it has left (PREFAULT_SHARE_FROM), and once a
# pass has cancelled its work it still finishes the chunk in hand (2 MiB, ~1 ms; longer on a
# loaded machine, where it waits for a CPU in state R), which sent the whole backward of a first
# call (L = 2,000, n = B = 64, beside a busy process) to one thread for it.
HELPER_NAME = b"gradbench-team"


def busy_threads() -> int:
    """Threads of this process, other than the calling one, the drivers' own helpers
    (:data:`HELPER_NAME`) and the prefaulter's, that are running or ready to run now (state R in
    ``/proc/self/task/*/stat``); 0 where there is no such file."""
    return len(running_threads())


def running_threads() -> list[int]:
    """The thread ids :func:`busy_threads` counts."""
    mine = (threading.get_native_id(), buffers.PREFAULTER.native_id())
    busy = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return busy
    for tid in tasks:
        if int(tid) in mine:
            continue
        try:
            with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # the thread has ended
            continue
        end = stat.rindex(b")")
        state = end + 2  # the field after "(name)"
        if stat[state:state + 1] == b"R" and stat[stat.index(b"(") + 1:end] != HELPER_NAME:
            busy.append(int(tid))
    return busy


# ------------------------------------------------------------------ the contract
# The C type of each gb_stack_arrays field, from the struct itself (tests/test_abi.py checks
# that its fields are the arrays of abi.FORWARD and abi.BACKWARD).
_FIELD_TYPE = {name: field.type for name, field in ffi.typeof("gb_stack_arrays").fields}


_H_INDEX = {f: abi.names(abi.CONTRACTS[f].args).index("H") for f in ("stack_forward", "stack_backward")}


_FIELDS = {f: tuple((a.name, _FIELD_TYPE[a.name]) for a in abi.CONTRACTS[f].args)
           for f in ("stack_forward", "stack_backward")}


@functools.lru_cache(maxsize=None)
def _entry_point(function: str, dtype: np.dtype):
    """The C driver of ``function`` for ``dtype`` and its name."""
    name = f"gb_{function}_{_SUFFIX[dtype]}"
    return getattr(lib, name), name


def _driver(function: str, opts, arrays: tuple) -> None:
    """Fill a gb_stack_arrays with the (checked) arrays of ``function`` and call its C driver."""
    W, H = arrays[2], arrays[_H_INDEX[function]]
    # the struct filled as it is made (one call: setting its ~20 fields one by one cost ~3 us more)
    st = ffi.new("gb_stack_arrays *",
                 {field: pointer(a, ctype) for (field, ctype), a in zip(_FIELDS[function], arrays)})
    st.L, st.B, st.N = W.shape[0], H.shape[1], W.shape[1]
    fn, name = _entry_point(function, W.dtype)
    check(fn(st, opts), name)  # `arrays` keeps every buffer alive during the call


def _work(function: str, arrays: tuple) -> tuple[int, int, int]:
    """B N^2, L B N^2 and the itemsize of a driver call's (checked) arrays: what
    :func:`call_opts` decides on, before the call (tests watch the options ``_driver`` receives)."""
    W = arrays[2]
    layer = int(arrays[_H_INDEX[function]].shape[1]) * int(W.shape[1]) ** 2
    return layer, layer * int(W.shape[0]), int(W.itemsize)


# A call that found other threads of the process running took fewer CPUs (call_opts) and would keep
# them to its end; but the usual such thread, a BLAS worker spinning after the user's own product,
# stops within ~0.1 s, and the prefaulter once a first call's pages are in. So a call of at least
# twice RELOOK_TOTAL = L B N^2 runs in pieces of about RELOOK_TOTAL (whole residual groups) and
# looks again before each; once the CPUs are free, the rest runs as one piece on the whole team. A
# piece is a driver call over layers [a, b) of the arrays, the engine's segments in small: it reads
# what the piece before wrote (H[a], fexp[a] and frow[a] going up; G, its rows' exponents row_e
# (B,), not per layer, so every piece gets the whole array, and sig_e[b] going down), so the
# results are those of one call, bit for bit (tests/test_c_bits.py).
RELOOK_TOTAL = env_int("GRADBENCH_C_RELOOK_TOTAL", 1 << 28, low=1)

# per array of each driver: None (not per layer), or the extra rows of its layer axis (0: L, 1: L+1)
_LAYER_ROWS = {f: tuple({"L": 0, "L+1": 1}.get(a.shape[0]) for a in abi.CONTRACTS[f].args)
               for f in ("stack_forward", "stack_backward")}
_INFO_SLOT = {"stack_forward": abi.INFO_FORWARD, "stack_backward": abi.INFO_BACKWARD}


def _call(function: str, arrays: tuple) -> None:
    """Run a driver call on the threads :func:`call_opts` gives, in pieces that look again for
    free CPUs where it gave fewer for running threads (:data:`RELOOK_TOTAL`)."""
    work, total, itemsize = _work(function, arrays)
    opts, relook = _choose(work, total, itemsize)
    if not relook or total < 2 * RELOOK_TOTAL:
        _driver(function, opts, arrays)
        return
    L, k = int(arrays[2].shape[0]), max(1, int(arrays[0][abi.I_RESIDUAL]))
    per = k * max(1, -(-RELOOK_TOTAL // (work * k)))  # layers a piece: whole residual groups
    down = function == "stack_backward"  # the backward runs its pieces from the top
    info, slot = arrays[-1], _INFO_SLOT[function]
    info[slot] = -1  # as the driver starts; each piece reports its first non-finite layer
    lo, hi = 0, L  # the layers not run yet
    while lo < hi:
        size = per if relook else hi - lo  # the CPUs free (or too little left for a team): the rest
        a, b = (max(lo, hi - size), hi) if down else (lo, min(hi, lo + size))
        piece = [x if rows is None else x[a:b + rows] for x, rows in zip(arrays, _LAYER_ROWS[function])]
        piece[-1] = seen = info.copy()
        abi.check(function, abi.bind(function, tuple(piece), {}))  # whole groups, in bounds
        _driver(function, opts, tuple(piece))
        if info[slot] < 0 <= seen[slot]:
            info[slot] = a + seen[slot]
        lo, hi = (lo, a) if down else (b, hi)
        if relook and lo < hi:
            opts, relook = _choose(work, (hi - lo) * work, itemsize)


def _forward_kernel(*arrays):
    _call("stack_forward", arrays)


def _backward_kernel(*arrays):
    _call("stack_backward", arrays)


stack_forward = abi.checked("stack_forward", _forward_kernel)
stack_backward = abi.checked("stack_backward", _backward_kernel)


def forward_with(opts, *args, **kwargs):
    """:func:`stack_forward` with explicit options from :func:`make_opts` (tests, tuning)."""
    arrays = abi.bind("stack_forward", args, kwargs)
    abi.check("stack_forward", arrays)
    _driver("stack_forward", opts, tuple(arrays.values()))


def backward_with(opts, *args, **kwargs):
    """:func:`stack_backward` with explicit options from :func:`make_opts` (tests, tuning)."""
    arrays = abi.bind("stack_backward", args, kwargs)
    abi.check("stack_backward", arrays)
    _driver("stack_backward", opts, tuple(arrays.values()))


# ------------------------------------------------------------------ layer pairs (for tests)
# The exported C layer functions with the reference's names and arguments (outputs first). Every
# array is checked against its entry of abi.LAYER_ARGS (abi.check_layer) before C runs, which
# reads and writes exactly those entries.
def _layer(name: str, like: np.ndarray, *args) -> None:
    """Call ``gb_<name>_<f64|f32>`` (``like``'s dtype) with ``args``: arrays (checked by
    :func:`gradbench.abi.check_layer`) as pointers, the rest as they are."""
    full = f"gb_{name}_{suffix(like)}"
    conv = [pointer(a, "void *") if isinstance(a, np.ndarray) else a for a in args]
    check(getattr(lib, full)(*conv), full)  # `args` keeps every buffer alive during the call


def dense_forward(z, h, W, b):
    """z = h W^T + b.    z (B,N), h (B,N), W (N,N), b (N,)"""
    abi.check_layer("dense_forward", z, h, W, b)
    _layer("dense_forward", z, z, h, W, b, z.shape[0], z.shape[1])


def dense_backward(dh, dW, db, dz, h, W):
    """dW = dz^T h, db = sum_B dz, dh = dz W."""
    abi.check_layer("dense_backward", dh, dW, db, dz, h, W)
    _layer("dense_backward", dz, dh, dW, db, dz, h, W, dz.shape[0], dz.shape[1])


def batchnorm_forward(y, xhat, mean, rstd, z, gamma, beta, eps):
    """y = gamma * (z - mean_B) * rstd + beta (train mode, biased variance)."""
    abi.check_layer("batchnorm_forward", y, xhat, mean, rstd, z, gamma, beta)
    _layer("batchnorm_forward", z, y, xhat, mean, rstd, z, gamma, beta, float(eps), z.shape[0], z.shape[1])


def batchnorm_backward(dz, dgamma, dbeta, dy, xhat, rstd, gamma):
    """dz = gamma * rstd * (dy - mean_B(dy) - xhat * mean_B(dy * xhat))."""
    abi.check_layer("batchnorm_backward", dz, dgamma, dbeta, dy, xhat, rstd, gamma)
    _layer("batchnorm_backward", dy, dz, dgamma, dbeta, dy, xhat, rstd, gamma, dy.shape[0], dy.shape[1])


def activation_forward(a, z, code, param, f=None):
    """a = phi(z); with a forward exponent ``f``, phi_scaled (the mantissa of phi(z 2**f))."""
    abi.check_layer("activation_forward", a, z)
    _layer("activation_forward", z, a, z, z.size, int(code), float(param), int(f is not None), int(f or 0))


def activation_backward(dz, da, z, code, param, f=None) -> float:
    """dz = da * phi'(z) (dphi_scaled of z 2**f with ``f``); returns dL/dslope = sum(da * min(z,
    0)) for PReLU, else 0."""
    abi.check_layer("activation_backward", dz, da, z)
    ds = ffi.new("double *")
    rows = max(1, z.shape[0]) if z.ndim == 2 else 1  # (0, N): C refuses B N = 0
    _layer("activation_backward", z, dz, ds, da, z, rows, z.size // rows, int(code), float(param),
           int(f is not None), int(f or 0))
    return float(ds[0])


def normalise(g) -> int:
    """g *= 2**-e in place with e the exponent of max|g|; returns e."""
    abi.check_layer("normalise", g)
    e = ffi.new("int64_t *")
    _layer("normalise", g, g, g.size, e)
    return int(e[0])


def add_aligned(a, ea, s, es, scale=1.0) -> int:
    """scale * a * 2**ea + s * 2**es, written into a, at the larger exponent; returns it."""
    abi.check_layer("add_aligned", a, s)
    e = ffi.new("int64_t *")
    _layer("add_aligned", a, a, int(ea), s, int(es), float(scale), a.size, e)
    return int(e[0])


def clip_signal(g, e, mode, c) -> int:
    """Clip the true value g * 2**e in place (value or norm); returns the new exponent."""
    abi.check_layer("clip_signal", g)
    out = ffi.new("int64_t *")
    _layer("clip_signal", g, g, int(e), int(mode), float(c), g.shape[0], g.shape[1], out)
    return int(out[0])


def phi(z: np.ndarray, code: int, param: float, f: int | None = None) -> np.ndarray:
    """phi(z) computed by the C kernel (phi_scaled with ``f``; for tests against the reference)."""
    z = np.ascontiguousarray(z)
    a = np.empty_like(z)
    activation_forward(a, z, code, param, f)
    return a


def dphi(z: np.ndarray, code: int, param: float, f: int | None = None) -> np.ndarray:
    """phi'(z) computed by the C kernel, as da * phi'(z) with da = 1 (dphi_scaled with ``f``)."""
    z = np.ascontiguousarray(z)
    dz = np.empty_like(z)
    activation_backward(dz, np.ones_like(z), z, code, param, f)
    return dz


# ------------------------------------------------------------------ streaming histograms
def histogram_fill(dW, e, per_decade, bins, top, counts, below, zeros, nonfinite, isa: int = 0) -> None:
    """The streaming histograms of the m layers of ``dW`` (m, ...) with exponents ``e`` (m,), in C
    (csrc/histogram.c): the twin of ``kernels/histogram.py histogram_fill``, the same top, counts,
    below, zeros and nonfinite. ``dW`` float64 or float32, ``counts`` (m, bins) uint16 (layers of
    at most 65,535 entries) or uint32, the others int64 (m,); every array checked before the call
    (:func:`gradbench.abi.check_histogram_fill`). ``isa`` as gb_opts.isa (tests: 1 the baseline
    instance, 3 AVX2). Releases the GIL (cffi). Temporaries: 32 (bins + 2) bytes and ~12 KiB of
    stack, whatever the layers' size."""
    m, size = abi.check_histogram_fill(dW, e, per_decade, bins, top, counts, below, zeros, nonfinite)
    f32 = suffix(dW) == "f32"
    u16 = int(counts.dtype == np.uint16)
    i64 = functools.partial(pointer, ctype="int64_t *")
    rc = lib.gb_histogram_fill(pointer(dW, "void *"), int(f32), m, size, i64(e), int(per_decade), int(bins), i64(top),
                               pointer(counts, "void *"), u16, i64(below), i64(zeros), i64(nonfinite), int(isa))
    check(rc, "gb_histogram_fill")
