import os

os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "bench_full: benchmark cases outside the quick subset (run by `make bench`, not `make bench-quick`)"
    )
