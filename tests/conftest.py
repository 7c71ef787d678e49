import os
import re

import numpy as np
import pytest

# Matplotlib never opens a window in tests.
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


# `make test-all`: torch is required, and a test skipped for want of it fails instead.
REQUIRE_TORCH = bool(os.environ.get("GRADBENCH_REQUIRE_TORCH"))
if REQUIRE_TORCH:
    import torch  # noqa: F401  (an ImportError here stops the run: install it with make test-all)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if REQUIRE_TORCH and rep.skipped:
        # the reason only (longrepr is (path, line, reason)): a path may contain "torch" too
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        if re.search(r"\btorch\b", reason, flags=re.I):
            rep.outcome = "failed"
            rep.longrepr = f"skipped for want of torch under GRADBENCH_REQUIRE_TORCH=1 (make test-all): {reason}"
