"""setup.py's parallel compile of the C extension's sources (ParallelBuildExt)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _setup_module():
    spec = importlib.util.spec_from_file_location("gradbench_setup_py", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: defines, does not run setup()
    return module


def test_build_jobs_come_from_the_environment_or_the_cpus(monkeypatch):
    setup_py = _setup_module()
    monkeypatch.delenv("GRADBENCH_BUILD_JOBS", raising=False)
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert setup_py.build_jobs() == cpus
    monkeypatch.setenv("GRADBENCH_BUILD_JOBS", "3")
    assert setup_py.build_jobs() == 3
    for bad in ("0", "-2", "two"):  # refused as every GRADBENCH_* variable is (gradbench/_env.py)
        monkeypatch.setenv("GRADBENCH_BUILD_JOBS", bad)
        with pytest.raises(ValueError, match=f"environment variable GRADBENCH_BUILD_JOBS='{bad}' is not an integer from 1 to 2\\^62"):
            setup_py.build_jobs()


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_parallel_compile_gives_the_serial_objects(tmp_path):
    """Every source compiled, into the objects the serial compile makes (byte for byte), and a
    source that does not compile fails the build with the compiler's error."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    setup_py = _setup_module()
    src = tmp_path / "src"
    src.mkdir()
    sources = []
    for k in range(5):
        path = src / f"unit{k}.c"
        path.write_text(f"double unit{k}(double x) {{ double s = 0; for (int i = 0; i < {k + 3}; i++) s += x * i; return s; }}\n")
        sources.append(str(path))

    def compiler():
        cc = new_compiler()
        customize_compiler(cc)
        return cc

    # the compiler setuptools builds with here runs distutils' own compile loop: the parallel one applies
    assert setup_py.runs_base_compile(compiler())

    class OwnCompile(type(compiler())):  # MSVC's way: a compile() of its own is kept
        def compile(self, *args, **kwargs):
            return super().compile(*args, **kwargs)

    assert not setup_py.runs_base_compile(OwnCompile())
    serial = compiler().compile(sources, output_dir=str(tmp_path / "serial"), extra_postargs=["-O2"])
    cc = compiler()
    parallel = setup_py._parallel_compile(cc, 3)(sources, output_dir=str(tmp_path / "parallel"), extra_postargs=["-O2"])
    assert [Path(p).name for p in parallel] == [Path(p).name for p in serial]
    for a, b in zip(serial, parallel):
        assert Path(a).read_bytes() == Path(b).read_bytes(), b
    (src / "broken.c").write_text("int broken(void) { return ; }\nthis is not C\n")
    with pytest.raises(Exception) as failed:  # distutils may be loaded twice (setuptools' copy, its alias):
        setup_py._parallel_compile(compiler(), 3)(sources + [str(src / "broken.c")], output_dir=str(tmp_path / "broken"))
    assert type(failed.value).__name__ == "CompileError"  # the class by name, not identity


def test_a_bad_environment_value_names_the_default_exactly(monkeypatch):
    """The error shows an integer default as the integer (2^28, not 2.68435e+08, which is not it)
    and a float default as a number."""
    from gradbench._env import EnvError, env_float, env_int

    monkeypatch.setenv("GRADBENCH_TEST_INT", "abc")
    with pytest.raises(EnvError, match=r"GRADBENCH_TEST_INT='abc' is not an integer from 1 to 2\^62 \(unset it for the default 268435456\)"):
        env_int("GRADBENCH_TEST_INT", 1 << 28, low=1)
    # beyond int64 (an OverflowError on import before) and a sentinel default (GRADBENCH_C_THREADS' 0)
    monkeypatch.setenv("GRADBENCH_TEST_INT", "99999999999999999999")
    with pytest.raises(EnvError, match=r"is not an integer from 1 to 2\^62 \(unset it for gradbench's default\)"):
        env_int("GRADBENCH_TEST_INT", 0, low=1)
    monkeypatch.setenv("GRADBENCH_TEST_INT", str(2**62))
    assert env_int("GRADBENCH_TEST_INT", 0, low=1) == 2**62
    monkeypatch.setenv("GRADBENCH_TEST_FLOAT", "-1")
    with pytest.raises(EnvError, match=r"must be a finite number > 0 \(unset it for the default 30\)"):
        env_float("GRADBENCH_TEST_FLOAT", 30.0)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
@pytest.mark.parametrize("source", sorted(p.name for p in (ROOT / "csrc").glob("*.c")))
def test_the_sources_compile_without_the_vector_extension(source):
    """GB_PLAIN_C (what a compiler without GCC's vector extension gets: the scalar loops) did not
    compile: gb_internal.h's gb_log_rem used GB_LN2_HI/LO, defined only inside the vector code of
    activations.h. Each source alone, syntax and types only (a full plain-C build passed the C
    cross-checks: tests/test_c.py, test_crosscheck.py, test_recurrent_backends.py, test_exact.py,
    test_rescue.py, 1053 cases)."""
    import subprocess
    import sysconfig

    out = subprocess.run(["gcc", "-std=c11", "-fsyntax-only", "-DGB_PLAIN_C", "-Werror=implicit-function-declaration",
                          f"-I{ROOT / 'csrc'}", f"-I{sysconfig.get_paths()['include']}", str(ROOT / "csrc" / source)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
