"""``gradbench bench``: the benchmark report (:mod:`gradbench.benchreport`), arguments passed on."""

from __future__ import annotations


def register(sub):
    return sub.add_parser("bench", help="benchmark report from `make bench-quick` / `make bench` JSON "
                          "(gradbench.benchreport; arguments are passed on)", add_help=False)


def run_raw(argv: list[str]) -> int:
    """``gradbench bench ARGS``: benchreport parses ``ARGS`` itself."""
    from gradbench import benchreport

    try:
        return int(benchreport.main(argv) or 0)
    except SystemExit as exc:  # its parser's --help (0) and bad options (2): a status, as main() returns
        return int(exc.code or 0)
