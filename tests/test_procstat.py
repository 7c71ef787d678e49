"""gradbench._procstat: the resident-memory readings that the memory tests and benchmarks rely on."""

from __future__ import annotations

import os

import numpy as np
import pytest

from gradbench import _procstat

pytestmark = pytest.mark.skipif(not os.path.exists(_procstat.STATUS), reason="no /proc/self/status")

MIB = 2**20


def test_peak_follows_touched_memory_and_resets():
    assert _procstat.reset_peak()
    rss0, peak0 = _procstat.status_bytes("VmRSS"), _procstat.own_peak_bytes()
    assert 0 < rss0 <= peak0 < rss0 + 8 * MIB  # just reset: the peak is the resident set
    a = np.ones(96 * MIB // 8)  # touched: resident
    grown = _procstat.own_peak_bytes()
    assert grown - peak0 >= 90 * MIB
    del a
    # a high-water mark (the kernel's counters lag by a few pages: read to within 4 MiB)
    assert _procstat.own_peak_bytes() > grown - 4 * MIB
    assert _procstat.reset_peak()
    assert _procstat.own_peak_bytes() < grown - 80 * MIB  # back to the resident set without the array


def test_an_unknown_field_reads_minus_one():
    assert _procstat.status_bytes("NoSuchField") == -1
