"""Setup: the C extension of gradbench/_cbuild.py (cffi), its sources compiled in parallel.

setuptools compiles the sources of one extension one after the other; the C backend's ~20
files (each kernel file three times over: baseline, AVX2, AVX-512) then took about two minutes of
a fresh `make demo`. :class:`ParallelBuildExt` hands them to a pool of ``GRADBENCH_BUILD_JOBS``
compiler processes (default: one per CPU this process may run on).
"""

import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor

from setuptools import setup
from setuptools.command.build_ext import build_ext


def _load_env():
    """gradbench/_env.py (the package's checked environment variables and CPU count), loaded
    by its path: it needs nothing but the standard library, which is all a build has."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gradbench", "_env.py")
    spec = importlib.util.spec_from_file_location("_gradbench_env_for_setup", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_env = _load_env()


def build_jobs() -> int:
    """Compiler processes at once: ``GRADBENCH_BUILD_JOBS``, else the CPUs this process may use."""
    return _env.env_int("GRADBENCH_BUILD_JOBS", _env.available_cpus(), low=1)


def runs_base_compile(compiler) -> bool:
    """Whether ``compiler.compile`` is distutils' own loop over ``_compile``, which the parallel
    compile replaces: defined by the compilers' base class (the one just above ``object``) and
    overridden by no subclass (the Unix compilers; MSVC's has its own). By the class hierarchy,
    not by name or identity: the base class's name and module differ between setuptools
    versions, and setuptools may load distutils twice over."""
    mro = type(compiler).__mro__
    owner = next((k for k in mro if "compile" in vars(k)), None)
    return len(mro) >= 2 and owner is mro[-2] and "_compile" in vars(owner)


class ParallelBuildExt(build_ext):
    """``build_ext`` whose compiler compiles an extension's sources on a pool of threads, each
    running one compiler process (the same commands and objects as the serial build)."""

    def build_extensions(self):
        jobs = build_jobs()
        # only where compile() is distutils' own loop over _compile() (Unix compilers); a class
        # with a compile() of its own (MSVC) keeps it and compiles one source after the other
        if jobs > 1 and runs_base_compile(self.compiler):
            self.compiler.compile = _parallel_compile(self.compiler, jobs)
        super().build_extensions()


def _parallel_compile(compiler, jobs):
    def compile(sources, output_dir=None, macros=None, include_dirs=None, debug=0, extra_preargs=None,
                extra_postargs=None, depends=None):
        # CCompiler.compile, with its loop over the objects on a pool
        macros, objects, extra_postargs, pp_opts, build = compiler._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs)
        cc_args = compiler._get_cc_args(pp_opts, debug, extra_preargs)
        todo = [(obj, *build[obj]) for obj in objects if obj in build]
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            done = [pool.submit(compiler._compile, obj, src, ext, cc_args, extra_postargs, pp_opts)
                    for obj, src, ext in todo]
            for job in done:
                job.result()  # the first failure is raised (CompileError), as in the serial build
        return objects

    return compile


if __name__ == "__main__":  # pip's build backend runs this file as __main__; tests import it
    setup(cffi_modules=["gradbench/_cbuild.py:ffibuilder"], cmdclass={"build_ext": ParallelBuildExt})
