"""gradbench.buffers: large arrays on small pages, and the workspace reused between calls."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

import gradbench as gb
from gradbench import buffers


def _assert_small_pages(a: np.ndarray) -> None:
    """``a`` lies in a mapping advised MADV_NOHUGEPAGE (its VmFlags in /proc/self/smaps)."""
    start = a.__array_interface__["data"][0]
    with open("/proc/self/smaps") as f:
        text = f.read().split("\n")
    for i, line in enumerate(text):
        lo, _, hi = line.partition(" ")[0].partition("-")
        if hi and int(lo, 16) <= start < int(hi, 16):
            block = "\n".join(text[i:i + 30])
            assert "nh" in block.split("VmFlags:")[1].split("\n")[0], block  # MADV_NOHUGEPAGE
            return
    pytest.fail("the array's mapping is not in /proc/self/smaps")


def test_large_arrays_are_advised_small_pages():
    a = buffers.empty((5, 2**20), np.float64)  # 40 MiB
    assert a.shape == (5, 2**20) and a.dtype == np.float64 and a.flags.c_contiguous and a.flags.writeable
    a[...] = 1.5
    assert float(a.sum()) == 1.5 * a.size
    if sys.platform.startswith("linux"):
        _assert_small_pages(a)
    small = buffers.empty((10, 10), np.float32)
    assert small.shape == (10, 10) and small.dtype == np.float32


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="own mappings on Linux only")
def test_arrays_numpy_would_put_on_huge_pages_get_small_ones():
    # NumPy advises huge pages from 4 MiB on; a first call at L = 1000, n = 64 (31 MiB arrays)
    # took 2-7x its warm time on them in this project's VM, 1.2-1.6x on small pages
    buffers.release()
    stack = gb.Stack(depth=160, width=64, activation="tanh")  # dW: 5 MiB, H and Z: 5 MiB each
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 64, 1)
    dW = gb.backprop(stack, params, x).grads.W.mantissa
    assert 4 * 2**20 <= dW.nbytes < 8 * 2**20
    _assert_small_pages(dW)
    kept = buffers.WORKSPACE._free.get(((161, 64, 64), np.dtype(np.float64).str))
    assert kept, "H of this call is not kept in the workspace"
    _assert_small_pages(kept[0])
    buffers.release()


def test_workspace_reuses_hands_back_and_respects_its_limit():
    ws = buffers.Workspace(limit=10_000)
    a = ws.take((10, 10), np.float64)
    ws.give([a])
    assert ws.take((10, 10), np.float64) is a  # the same array again
    assert ws.take((10, 10), np.float64) is not a  # taken: never handed out twice
    ws.give([np.empty(2000)])  # 16 kB > limit: dropped
    assert ws.bytes() == 0
    ws.give([np.empty(100), np.empty(50)])
    ws.retain([((100,), np.float64)])
    assert ws.bytes() == 800
    ws.release()
    assert ws.bytes() == 0


def test_repeated_calls_reuse_the_workspace_and_give_the_same_bits():
    buffers.release()
    stack = gb.Stack(depth=50, width=32, activation="tanh", batch_norm=True)
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 40, 1)  # B > N: Z apart from dW
    first = gb.backprop(stack, params, x)
    kept = buffers.WORKSPACE.bytes()
    assert kept >= (51 + 50) * 40 * 32 * 8  # H and Z stay for the next call
    second = gb.backprop(stack, params, x)
    assert buffers.WORKSPACE.bytes() == kept
    for name, g in first.grads.items():
        np.testing.assert_array_equal(getattr(second.grads, name).mantissa, g.mantissa, err_msg=name)
    assert second.grads.W.mantissa is not first.grads.W.mantissa  # returned arrays are always fresh
    out = first.output.mantissa.copy()
    gb.backprop(stack, params, 2 * x)  # the workspace's arrays are written again ...
    np.testing.assert_array_equal(first.output.mantissa, out)  # ... and no Result sees it
    np.testing.assert_array_equal(second.act_std.mantissa, first.act_std.mantissa)
    # another shape: the kept arrays that cannot serve it are dropped first
    gb.backprop(stack.replace(width=8), gb.init_params(stack.replace(width=8), 0), gb.gaussian_input(stack.replace(width=8), 8, 1))
    assert buffers.WORKSPACE.bytes() < kept
    buffers.release()


def test_concurrent_calls_never_share_workspace_arrays():
    buffers.release()
    stack = gb.Stack(depth=200, width=32, activation="tanh")
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 16, 1)
    want = gb.backprop(stack, params, x).grads.W.mantissa
    out, errors = [], []

    def call():
        try:
            out.append(gb.backprop(stack, params, x).grads.W.mantissa)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got in out:
        np.testing.assert_array_equal(got, want)
    buffers.release()


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="own mappings on Linux only")
def test_returned_gradients_are_recycled_only_when_nothing_holds_them(monkeypatch):
    monkeypatch.setattr(buffers, "SMALL_PAGES_FROM", 2**16)  # dW of this stack: 200 kB
    buffers.release()
    stack = gb.Stack(depth=50, width=16, activation="tanh")
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, 8, 1)
    want = gb.backprop(stack, params, x).grads.W.mantissa.copy()  # before any recycling
    first = gb.backprop(stack, params, x).grads.W.mantissa
    addr = _address(first)
    view = memoryview(first[3:])
    first[...] = np.nan  # the caller's own writes must never reach a later result
    del first
    assert buffers.RECYCLER.bytes() == 0  # a memoryview of a view still holds the memory
    held = gb.backprop(stack, params, x).grads.W.mantissa
    assert _address(held) != addr
    np.testing.assert_array_equal(held, want)
    del view
    assert buffers.RECYCLER.bytes() == want.nbytes
    again = gb.backprop(stack, params, x).grads.W.mantissa
    assert _address(again) == addr  # the same pages, taken back ...
    assert again.flags.writeable and again.flags.c_contiguous
    np.testing.assert_array_equal(again, want)  # ... and every element written again
    assert buffers.RECYCLER.bytes() == 0
    del again
    # another size frees what is kept before mapping anew
    wide = stack.replace(width=24)
    gb.backprop(wide, gb.init_params(wide, 0), gb.gaussian_input(wide, 8, 1))
    assert buffers.RECYCLER.bytes() == 50 * 24 * 24 * 8
    buffers.release()
    assert buffers.RECYCLER.bytes() == 0 and buffers.held() == buffers.WORKSPACE.bytes() == 0
    del held


def test_recycler_respects_its_limit():
    rec = buffers.Recycler(limit=3 * 2**16)
    a = rec.lease(2**16, np.float64, 2**13)
    b = rec.lease(2**16, np.float64, 2**13)
    c = rec.lease(2**16, np.float64, 2**13)
    d = rec.lease(2**16, np.float64, 2**13)
    assert len({_address(v) for v in (a, b, c, d)}) == 4
    del a, b, c, d
    assert rec.bytes() == 3 * 2**16  # the fourth mapping is unmapped, not kept
    rec.release()
    assert rec.bytes() == 0


def _rss_kib(address: int) -> int:
    """Rss of the mapping that holds ``address`` (/proc/self/smaps)."""
    with open("/proc/self/smaps") as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        lo, _, hi = line.partition(" ")[0].partition("-")
        if hi and int(lo, 16) <= address < int(hi, 16):
            for entry in lines[i + 1:i + 30]:
                if entry.startswith("Rss:"):
                    return int(entry.split()[1])
    raise AssertionError("mapping not found in /proc/self/smaps")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_POPULATE_WRITE is Linux")
@pytest.mark.parametrize("order", ["ascending", "descending"])
def test_fresh_mappings_are_faulted_in_by_the_helper(order):
    import time

    if not buffers.PREFAULTER.enabled:
        pytest.skip("one CPU in this process's affinity: the prefaulter is off")
    a = buffers.empty((6, 2**20), np.float64, recycle=False, prefault=order)  # 48 MiB, untouched here
    deadline = time.monotonic() + 30
    while buffers.PREFAULTER.pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not buffers.PREFAULTER.enabled:  # a kernel older than 5.14 refused the advice
        pytest.skip("MADV_POPULATE_WRITE refused by this kernel")
    assert _rss_kib(a.__array_interface__["data"][0]) >= a.nbytes // 1024  # resident, never touched
    assert not a.any()  # and still zero
    with pytest.raises(ValueError, match="prefault must be None, 'ascending' or 'descending'"):
        buffers.empty((2,), np.float64, prefault="up")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and MADV_POPULATE_WRITE are Linux")
def test_a_fork_while_the_helper_faults_in_pages_leaves_a_working_child():
    """Forked in the middle of the prefaulter's work (its lock may be held at that moment): the
    child neither hangs nor inherits the parent's pending work, and its own calls work."""
    import subprocess
    import textwrap

    if not buffers.PREFAULTER.enabled:
        pytest.skip("one CPU in this process's affinity: the prefaulter is off")
    code = textwrap.dedent("""
        import multiprocessing as mp, time
        import numpy as np, gradbench as gb
        from gradbench import buffers

        def child(seed):
            assert buffers.PREFAULTER.pending() == 0  # the parent's work stayed in the parent
            stack = gb.Stack(depth=60, width=64, activation="tanh")
            a = buffers.empty((8, 2**20), np.float64)  # fresh, faulted in by the child's own helper
            res = gb.backprop(stack, gb.init_params(stack, seed), gb.gaussian_input(stack, 8, seed))
            deadline = time.monotonic() + 30
            while buffers.PREFAULTER.pending() and time.monotonic() < deadline:
                time.sleep(0.01)
            return float(res.grad_norm.log10()[0]), buffers.PREFAULTER.pending(), bool(a.any())

        keep = [buffers.empty((64, 2**20), np.float64, recycle=False) for _ in range(4)]  # 2 GiB to fault in
        assert buffers.PREFAULTER.pending() > 0
        with mp.get_context("fork").Pool(2) as pool:
            out = pool.map(child, [1, 2, 3])
        assert all(np.isfinite(o[0]) and o[1] == 0 and not o[2] for o in out), out
        print("ok", len(out))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok 3" in proc.stdout, proc.stderr[-2000:]


def _resident(a: np.ndarray) -> int:
    """Bytes of ``a`` (page-aligned, as from gradbench.buffers.empty) in memory (mincore)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    pages = (a.nbytes + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    assert libc.mincore(a.__array_interface__["data"][0], a.nbytes, vec) == 0, ctypes.get_errno()
    return sum(v & 1 for v in vec) * mmap.PAGESIZE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_POPULATE_WRITE is Linux")
def test_cancel_drops_only_the_work_on_the_given_arrays():
    import time

    if not buffers.PREFAULTER.enabled:
        pytest.skip("one CPU in this process's affinity: the prefaulter is off")
    a = buffers.empty((64, 2**20), np.float64, recycle=False)  # 512 MiB each, untouched here
    b = buffers.empty((64, 2**20), np.float64, recycle=False)
    before = buffers.PREFAULTER.pending()
    buffers.PREFAULTER.cancel(a[3:5])  # a view inside a's mapping names the mapping
    left = buffers.PREFAULTER.pending()
    assert left <= b.nbytes < before  # a's work is gone, b's is not (some of it may be done)
    deadline = time.monotonic() + 60
    while buffers.PREFAULTER.pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not buffers.PREFAULTER.enabled:  # a kernel older than 5.14 refused the advice
        pytest.skip("MADV_POPULATE_WRITE refused by this kernel")
    assert buffers.PREFAULTER.pending() == 0  # the helper went on with b after the cancel
    assert _resident(b) == b.nbytes
    assert _resident(a) < a.nbytes // 2  # a was left alone (a chunk may have been in hand)
    buffers.PREFAULTER.cancel(b, None)  # nothing pending: no effect, no error


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_POPULATE_WRITE is Linux")
def test_the_prefaulter_is_not_a_busy_thread():
    """The drivers leave the prefaulter a CPU by what it has left to fault in, not by its state:
    running (or waiting for a CPU) it is not one of the threads a call makes room for, else the
    chunk in hand after a cancel sent a whole pass to one thread fewer."""
    cbackend = pytest.importorskip("gradbench.cbackend")
    if not buffers.PREFAULTER.enabled:
        pytest.skip("one CPU in this process's affinity: the prefaulter is off")
    a = buffers.empty((64, 2**20), np.float64, recycle=False)  # 512 MiB to fault in
    tid, running, samples = buffers.PREFAULTER.native_id(), 0, 0
    assert tid is not None
    while buffers.PREFAULTER.pending() and samples < 10**5:
        with open(f"/proc/self/task/{tid}/stat", "rb") as f:
            stat = f.read()
        running += stat[stat.rindex(b")") + 2:][:1] == b"R"
        assert tid not in cbackend.running_threads()
        samples += 1
    buffers.PREFAULTER.cancel(a)
    assert running > 0, "the prefaulter was never seen running: nothing tested"


@pytest.mark.parametrize("batch", [65, 64])
def test_a_pass_that_faults_pages_in_leaves_a_cpu_to_the_prefaulter(monkeypatch, batch):
    """The C drivers run on one thread fewer while the prefaulter has fresh pages to fault in
    (and would otherwise take every CPU); a warm call runs on every thread, with the same bits.
    At B = N the forward writes Z into every page of the gradients' dW (plan.z_in_gradients):
    the backward of a first call finds its fresh memory in and runs on every thread too."""
    cbackend = pytest.importorskip("gradbench.cbackend")
    if cbackend._OPTS_SHARED is None:
        pytest.skip("the drivers do not take every CPU here (or there is only one)")
    full = cbackend.threads()
    seen = []
    driver = cbackend._driver
    monkeypatch.setattr(cbackend, "_driver", lambda fn, opts, arrays: (seen.append((fn, opts.nthreads)),
                                                                       driver(fn, opts, arrays)))
    monkeypatch.setattr(buffers.PREFAULTER, "pending", lambda: cbackend.PREFAULT_SHARE_FROM - 1)
    assert cbackend.call_opts() is cbackend._OPTS
    monkeypatch.undo()
    monkeypatch.setattr(cbackend, "_driver", lambda fn, opts, arrays: (seen.append((fn, opts.nthreads)),
                                                                       driver(fn, opts, arrays)))
    stack = gb.Stack(depth=2000, width=64, activation="tanh")  # H, Z, dW ~62 MiB each: >= 32 MiB left to fault
    params, x = gb.init_params(stack, 0), gb.gaussian_input(stack, batch, 1)  # 65 > N: Z apart from dW
    buffers.release()  # no workspace, nothing to recycle: a first call's fresh memory
    if not buffers.PREFAULTER.enabled:
        pytest.skip("the prefaulter is off here")
    first = gb.backprop(stack, params, x, backend="c")
    fresh = list(seen)
    m, e = first.grads.W.mantissa.copy(), first.grads.W.exponent.copy()
    del first  # its gradients' pages go to the recycler: the next call faults nothing in
    seen.clear()
    warm = gb.backprop(stack, params, x, backend="c")
    assert fresh == [("stack_forward", full - 1), ("stack_backward", full - 1 if batch > stack.width else full)]
    assert seen == [("stack_forward", full), ("stack_backward", full)]
    assert np.array_equal(m, warm.grads.W.mantissa) and np.array_equal(e, warm.grads.W.exponent)
