import os
import platform
import subprocess

os.environ.setdefault("MPLBACKEND", "Agg")

_skipped: list[dict] = []
_ids: dict[str, tuple[str, str]] = {}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "bench_full: benchmark cases outside the quick subset (run by `make bench`, not `make bench-quick`)"
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec and "case" in callspec.params and "impl" in callspec.params:
            _ids[item.nodeid] = (callspec.params["case"].id, callspec.params["impl"])


def pytest_runtest_logreport(report):
    """Remember skipped and failed implementations with the reason: the report lists them."""
    if report.nodeid not in _ids or report.when not in ("setup", "call"):
        return
    case, impl = _ids[report.nodeid]
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append({"case": case, "impl": impl, "reason": reason.removeprefix("Skipped: ")})
    elif report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(report.longrepr).splitlines()[-1]
        _skipped.append({"case": case, "impl": impl, "reason": "FAILED " + message.splitlines()[0][:300],
                         "failed": True})


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "?"


def pytest_benchmark_update_machine_info(config, machine_info):
    import importlib.metadata as md

    machine_info["cpu_model"] = _cpu_model()
    machine_info["cpu_count"] = os.cpu_count()
    versions = {}
    for pkg in ("numpy", "numba", "torch", "jax", "jaxlib"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    machine_info["versions"] = versions
    machine_info["threads_env"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                              "NUMBA_NUM_THREADS", "XLA_FLAGS") if k in os.environ}


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["skipped"] = list(_skipped)
