"""cffi build script (API mode) for the C backend: ``gradbench._ckernels``.

Run by setuptools through ``setup(cffi_modules=[...])`` at ``pip install``. Compiler flags are
portable: ``-O3 -ffp-contract=fast`` and ``-pthread`` (the drivers' own threads, csrc/team.c), no ``-march``, so
that the extension runs on any CPU of the architecture; on x86-64 the kernels are compiled
again for AVX2+FMA and for AVX-512 (``csrc/stack_*_v3.c``, ``_v4.c``, by target pragmas) and
``csrc/dispatch.c`` picks the instance for the CPU at run time. ``GRADBENCH_CFLAGS`` (space
separated) replaces the flags (e.g. ``-O3 -march=native`` for this machine only).
When the compiler is missing or rejects the flags, the problem (the compiler's own message) is
recorded in ``gradbench/_cbuild_error.txt`` (:data:`BUILD_RECORD`), shipped with the package, and
``gradbench.backend_status()["c"]`` shows it; a build whose probe passes removes the record.
No ``-ffast-math``: NaN and inf must keep their meaning and results must match the reference.
``-ffp-contract=fast`` lets ``a*b+c`` become one FMA where the instance's instruction set has
it (fewer roundings; results agree with the reference to the tests' tolerances, not bit for bit).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
HEADER = CSRC / "gradbench.h"
# Read by gradbench.backends.c_not_built_message when the extension is missing (the same name there).
BUILD_RECORD = ROOT / "gradbench" / "_cbuild_error.txt"


def _cdef_text() -> str:
    """The declarations between the cffi markers of the header (integer #defines included)."""
    text = HEADER.read_text()
    return text.split("/* cffi-begin */", 1)[1].split("/* cffi-end */", 1)[0]


def _compiler() -> str | None:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    exe = cc.split()[0]
    return cc if shutil.which(exe) else None


_PROBE = "int main(void) { return 0; }\n"


def _compile_error(cc: str, flags: list[str], source: str = _PROBE) -> str | None:
    """The compiler's message when it cannot build ``source`` with ``flags``, else None."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text(source)
        cmd = cc.split() + flags + [str(src), "-o", str(Path(tmp) / "probe")]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode == 0:
            return None
        lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        return " ".join(lines[:3]) or f"{cmd[0]} exited with status {done.returncode}"


def _accepts(cc: str, flags: list[str], source: str = _PROBE) -> bool:
    return _compile_error(cc, flags, source) is None


def build_problem(cflags: list[str]) -> str | None:
    """Why the C extension cannot be built here (no compiler, flags it rejects), else None."""
    cc = _compiler()
    if cc is None:
        return "no C compiler found (set CC or install gcc/clang)"
    error = _compile_error(cc, cflags)
    if error is None:
        return None
    source = "GRADBENCH_CFLAGS" if os.environ.get("GRADBENCH_CFLAGS") else "the compile flags"
    return f"{cc} rejects {source} {' '.join(cflags)!r}: {error}"


def record_build_problem(problem: str | None, path: Path = BUILD_RECORD) -> None:
    """Write ``problem`` to the build record, or remove a stale record when there is none."""
    try:
        if problem is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(problem + "\n", encoding="utf-8")
    except OSError:  # a read-only source tree: the build goes on without the record
        pass


def compile_flags() -> list[str]:
    """Optimisation flags for this machine (see the module docstring)."""
    if os.environ.get("GRADBENCH_CFLAGS"):
        return os.environ["GRADBENCH_CFLAGS"].split()
    cc = _compiler()
    # -ffp-contract=fast: a*b + c may become one FMA where the instruction set has one (the
    # AVX2/AVX-512 instances); not fast-math: NaN, inf and exact rounding of each op stay
    flags = ["-O3", "-std=c11", "-fno-math-errno", "-ffp-contract=fast"]
    if cc is None:
        return flags
    if _accepts(cc, flags + ["-pthread"]):
        flags.append("-pthread")
    return flags


def link_flags(cflags: list[str]) -> list[str]:
    """The compile flags that the linker needs too (threads, sanitizers)."""
    return [f for f in cflags if f.startswith(("-pthread", "-fopenmp", "-fsanitize"))]


def _build() -> FFI:
    cflags = compile_flags()
    problem = build_problem(cflags)
    record_build_problem(problem)
    if problem is not None:
        print(f"gradbench: {problem}; the C backend will not be built, the numpy and numba backends still work",
              file=sys.stderr)
    ffi = FFI()
    ffi.cdef(_cdef_text())
    sources = sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.c"))
    ffi.set_source(
        "gradbench._ckernels",
        '#include "gradbench.h"',
        sources=sources,
        include_dirs=[str(CSRC.relative_to(ROOT))],
        extra_compile_args=cflags,
        extra_link_args=link_flags(cflags),
        depends=sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.h")),
        libraries=["m"],
        optional=True,  # a failed build leaves the other backends usable
    )
    return ffi


ffibuilder = _build()

if __name__ == "__main__":  # build in place: python gradbench/_cbuild.py (used by `make asan`)
    os.chdir(ROOT)  # the sources are relative to the root, and so is cffi's tmpdir
    print(ffibuilder.compile(verbose=True, tmpdir=".", target=None))
