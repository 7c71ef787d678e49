"""The C forward's W^T block, kept by the calling thread from one driver call to the next
(csrc/workspace.c) and freed when a run ends.

Allocated and freed on every driver call (once per segment), the block fragmented glibc's heap:
the peak of a wide stats_only run varied by up to 20 MB from run to run (tests/test_plan_memory.py
checks that it no longer does). Kept, it must change nothing in the results: a block left dirty
by another stack, of another width, gives the same bits as a fresh one, and two threads calling
at once each use their own.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import pytest

import gradbench as gb
from tests.helpers import FORWARD_ARGS, forward_arrays

cb = pytest.importorskip("gradbench.cbackend", reason="C extension not built", exc_type=ImportError)

@functools.lru_cache(maxsize=1)
def _opts():
    """One thread, no BLAS: the own kernels, one shared copy of W^T."""
    return cb.make_opts(nthreads=1, blas=False)


def _forward(width, seed, batch=8, depth=6):
    stack = gb.Stack(depth=depth, width=width, activation="tanh", init="xavier_normal")
    params = gb.init_params(stack, seed=seed)
    x = np.random.default_rng(seed).standard_normal((batch, width))
    arrays = forward_arrays(stack, params, x)
    cb.forward_with(_opts(), *(arrays[k] for k in FORWARD_ARGS))
    return arrays


def _block_bytes(width, itemsize=8):
    return 3 * ((itemsize * width * width + 63) // 64 * 64)


def test_the_block_is_kept_between_calls_and_freed_by_release():
    cb.release_workspace()
    assert cb.workspace_bytes() == 0
    _forward(40, 0)
    assert cb.workspace_bytes() == _block_bytes(40)
    _forward(24, 1)  # a smaller stack: the same block
    assert cb.workspace_bytes() == _block_bytes(40)
    _forward(56, 2)  # a larger one: a larger block instead
    assert cb.workspace_bytes() == _block_bytes(56)
    cb.release_workspace()
    assert cb.workspace_bytes() == 0


def test_a_run_frees_the_block_when_it_ends():
    stack = gb.Stack(depth=30, width=48, activation="tanh")
    params = gb.init_params(stack, seed=0)
    x = gb.gaussian_input(stack, 8, 1)
    gb.backprop(stack, params, x, backend="c", stats_only=True, checkpoint=10)
    assert cb.workspace_bytes() == 0


@pytest.mark.parametrize("width", [24, 33, 56])
def test_a_dirty_kept_block_gives_the_same_bits_as_a_fresh_one(width):
    cb.release_workspace()
    fresh = _forward(width, 5)
    cb.release_workspace()
    _forward(64, 9)  # leaves a larger block holding another stack's W^T
    kept = _forward(width, 5)
    cb.release_workspace()
    for name in ("H", "Z", "fexp", "act_mean", "act_std", "saturation", "dead"):
        np.testing.assert_array_equal(kept[name], fresh[name], err_msg=name)


def test_threads_calling_at_once_use_their_own_blocks():
    expected = {w: _forward(w, w) for w in (32, 48)}
    got, sizes, errors = {}, {}, []

    def work(width):
        try:
            for _ in range(20):  # overlapping calls: a shared block would mix the two stacks' W^T
                got[width] = _forward(width, width)
            sizes[width] = cb.workspace_bytes()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sizes == {w: _block_bytes(w) for w in expected}
    for w, e in expected.items():
        np.testing.assert_array_equal(got[w]["H"], e["H"])
    cb.release_workspace()
