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


# pytest-xdist (make test: -n 2, no --dist): these modules run on one worker each, the other
# tests are handed out one at a time to the worker with the fewest left. Their module-scoped fixtures
# are costly and were made on both workers: the C test extension compiled and mpmath's GELU grid
# (test_vact: 43 s and 33 s of setup in a make test's --durations), three training demos
# (test_pretrain, 16 s), the training demos (test_demos), Dask clusters of worker processes
# (test_sweep), an LSTM's mpmath truth (test_recurrent_diagnose_review), two recurrent demos
# trained (test_plot_zeros); test_exact's mpmath chains, kept per process for every backend's
# test of a case (test_exact alone on -n 2: 71 s user split over both workers, 51 s on one).
# --dist loadgroup with xdist_group marks would say the same, but pytest-xdist 3.8 marks a group
# in the test's nodeid, which pytest 9 no longer lets it change.
ONE_WORKER_MODULES = frozenset(f"tests/{name}.py" for name in (
    "test_vact", "test_pretrain", "test_demos", "test_sweep", "test_recurrent_diagnose_review", "test_plot_zeros",
    "test_exact",
))

try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # no pytest-xdist: one process, nothing to schedule
    LoadScopeScheduling = None

if LoadScopeScheduling is not None:

    class _ModulesOnOneWorker(LoadScopeScheduling):
        """--dist load, but each module of ONE_WORKER_MODULES is one unit of work (the largest
        units are handed out first: xdist's loadscope order)."""

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER_MODULES else nodeid

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(config, log):
        if config.getvalue("dist") == "load":  # -n without --dist (make test); any other --dist as asked
            return _ModulesOnOneWorker(config, log)
        return None


def _plain_biased_rule(stack, params) -> bool:
    """engine.can_rescale_forward as it was until 2026-12-07: no exponents with biases."""
    return params.zero_bias and not stack.batch_norm and stack.activation != "sigmoid"


@pytest.fixture
def plain_biased_forward(monkeypatch):
    """Stacks with biases run their forward without exponents, as GELU and swish with biases,
    batch norm and a run whose rescaled forward left the range do (the engine's fallback): the
    tests of a forward that overflows build it from a biased stack of the ReLU family or
    identity, which since 2026-12-07 is carried by exponents and no longer overflows."""
    from gradbench import engine

    monkeypatch.setattr(engine, "can_rescale_forward", _plain_biased_rule)
