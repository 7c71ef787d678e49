# gradbench: two commands on a fresh machine, `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
SOURCES := pyproject.toml setup.py gradbench/_cbuild.py $(wildcard csrc/*.c csrc/*.h)

.PHONY: demo test test-all test-slow bench bench-quick asan tsan clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	touch $@

# Editable install; reinstalled (and the C extension rebuilt) when the build inputs change.
$(VENV)/.installed: $(VENV)/.created $(SOURCES)
	$(PIP) install --quiet -e .
	touch $@

# The test extras in the same install (an editable install builds the C extension every time:
# one build for a fresh `make test`, not two); it counts as the plain install too.
$(VENV)/.installed-test: $(VENV)/.created $(SOURCES)
	$(PIP) install --quiet -e ".[test]"
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(VENV)/bin/gradbench demo

# Numba's on-disk cache is keyed by each kernel's own file, not by the files it inlines: after any
# change under kernels/ the compiled kernels are dropped (a fresh clone has none anyway).
$(VENV)/.kernels: $(VENV)/.created $(wildcard kernels/*.py)
	rm -rf kernels/__pycache__
	touch $@

# The suite runs on TEST_WORKERS processes (pytest-xdist; 2 = CI's cores): 9 min instead of 20 on
# this project's 2-core machine. TEST_WORKERS=0 runs it in one process. The Numba kernels are
# compiled into their cache first, two parts side by side (tests/compile_kernels.py). A clean
# clone on 2026-12-06 at ca2ee0e, quiet machine: kernels 102 s, suite 5 min 50 s; 9 min 8 s in
# all, 5548 passed, 168 skipped, peak RSS 1.67 GB (the install, nearly all the C build, the rest;
# 10 min 46 s at d5e0a71 beside other work).
TEST_WORKERS ?= 2
PYTEST_N := -n $(TEST_WORKERS)

test: $(VENV)/.installed-test $(VENV)/.kernels
	$(PY) tests/compile_kernels.py
	$(PY) -m pytest -q $(PYTEST_N)

# Everything with the optional extras too, nothing skipped for want of torch: the test extras
# (pandas, tensorboardX, tensorboard) plus torch 2.13.0, the CPU build (2.13.0+cpu, the wheel in
# pip's configured wheel directory; TORCH_SPEC=... to install another file or index). Under
# GRADBENCH_REQUIRE_TORCH=1 a missing torch fails the run and any test skipped for want of torch
# counts as failed. jax stays optional: its peer tests skip unless `pip install 'jax[cpu]'`.
TORCH_SPEC ?= torch==2.13.0+cpu
$(VENV)/.installed-all: $(VENV)/.installed-test
	$(PIP) install --quiet "$(TORCH_SPEC)"
	touch $@

test-all: $(VENV)/.installed-all
	GRADBENCH_REQUIRE_TORCH=1 $(PY) -m pytest -q $(PYTEST_N)

test-slow: $(VENV)/.installed-test
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) build dist *.egg-info gradbench/_ckernels*.so .pytest_cache .hypothesis

# Benchmarks (benchmarks/README.md): pytest-benchmark JSON in benchmarks/results/, a table per
# case (time, GF/s, speed-up vs NumPy and vs the best peer) and the figure out/<name>.png.
# Two runs. The grid (test_bench.py, test_deep.py, test_recurrent.py): one thread per implementation by default,
# the whole run pinned to one CPU with taskset (robust ratios on a shared machine); BENCH_THREADS=2
# for two threads, BENCH_THREADS= for each library's default (both unpinned). The targets, thread
# scaling and sweep throughput (the other files) set threads and CPUs per subprocess themselves,
# at library defaults too, so they never run under taskset. BENCH_ARGS="-k relu" selects cases.
BENCH_THREADS ?= 1
BENCH_ARGS    ?=
BENCH_ENV     ?= $(if $(BENCH_THREADS),OMP_NUM_THREADS=$(BENCH_THREADS) OPENBLAS_NUM_THREADS=$(BENCH_THREADS) \
	MKL_NUM_THREADS=$(BENCH_THREADS) NUMBA_NUM_THREADS=$(BENCH_THREADS) GRADBENCH_C_THREADS=$(BENCH_THREADS) \
	XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=$(BENCH_THREADS)")
BENCH_PIN     := $(if $(filter 1,$(BENCH_THREADS)),$(shell command -v taskset >/dev/null 2>&1 && echo taskset -c 0))
BENCH_PYTEST   = $(PY) -m pytest -q --benchmark-enable --benchmark-columns=min,median,rounds
BENCH_GRID     = benchmarks/test_bench.py benchmarks/test_deep.py benchmarks/test_recurrent.py
BENCH_OTHER    = $(filter-out $(BENCH_GRID),$(wildcard benchmarks/test_*.py))
R             := benchmarks/results

bench-quick: $(VENV)/.installed-test
	GRADBENCH_BENCH_BUDGET=1.5 $(BENCH_ENV) $(BENCH_PIN) $(BENCH_PYTEST) $(BENCH_GRID) -m "not slow and not bench_full" \
	  --benchmark-json=$(R)/bench-quick.json $(BENCH_ARGS); rc1=$$?; \
	GRADBENCH_BENCH_BUDGET=1.5 $(BENCH_PYTEST) $(BENCH_OTHER) -m "not slow and not bench_full" \
	  --benchmark-json=$(R)/bench-quick-targets.json $(BENCH_ARGS); rc2=$$?; \
	$(PY) -m gradbench.benchreport $(R)/bench-quick.json $(R)/bench-quick-targets.json; \
	[ $$rc1 -eq 0 ] && [ $$rc2 -eq 0 ]

bench: $(VENV)/.installed-test
	GRADBENCH_BENCH_BUDGET=5 $(BENCH_ENV) $(BENCH_PIN) $(BENCH_PYTEST) $(BENCH_GRID) -m "not slow" \
	  --benchmark-json=$(R)/bench.json $(BENCH_ARGS); rc1=$$?; \
	GRADBENCH_BENCH_BUDGET=5 $(BENCH_PYTEST) $(BENCH_OTHER) -m "not slow" \
	  --benchmark-json=$(R)/bench-targets.json $(BENCH_ARGS); rc2=$$?; \
	$(PY) -m gradbench.benchreport $(R)/bench.json $(R)/bench-targets.json; \
	[ $$rc1 -eq 0 ] && [ $$rc2 -eq 0 ]

# The C kernels under AddressSanitizer and UBSan: the extension built again in build/asan (the
# normal build is untouched) and put first on gradbench's package path, then tests/test_c.py, the
# misaligned arrays refused before C (tests/test_alignment.py) and the C part of the cross-check
# suite, the generated weights (tests/test_philox.py), the
# histogram fill (tests/test_c_histogram.py) and the recurrent cells' team
# (tests/test_recurrent_threads.py), with libasan preloaded into the Python interpreter.
ASAN_CFLAGS := -O1 -g -std=c11 -fno-math-errno -ffp-contract=fast -pthread -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
asan: $(VENV)/.installed-test
	rm -rf build/asan && mkdir -p build/asan/gradbench
	cp -r csrc build/asan/ && cp gradbench/_cbuild.py build/asan/gradbench/
	GRADBENCH_CFLAGS="$(ASAN_CFLAGS)" $(PY) build/asan/gradbench/_cbuild.py > build/asan/build.log 2>&1 || (cat build/asan/build.log; exit 1)
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" \
	ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	$(PY) -c "import sys, gradbench; gradbench.__path__.insert(0, 'build/asan/gradbench'); \
	import gradbench._ckernels as k; print('C kernels under test:', k.__file__); assert 'build/asan' in k.__file__; \
	import pytest; sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_c.py', 'tests/test_alignment.py', 'tests/test_philox.py', 'tests/test_crosscheck.py', 'tests/test_exact.py', 'tests/test_recurrent_backends.py', 'tests/test_recurrent_abi.py', 'tests/test_recurrent_gates.py', 'tests/test_c_workspace.py', 'tests/test_clip_acted.py', 'tests/test_clip_acted_recurrent.py', 'tests/test_c_histogram.py', 'tests/test_recurrent_threads.py', 'tests/test_recurrent_rows.py', 'tests/test_forward_rows.py', 'tests/test_row_exponents.py', 'tests/test_recurrent_nonfinite_step_norms.py', 'tests/test_limit_rescue.py', '-k', 'not numba']))"

# The C kernels' threads under ThreadSanitizer: the extension built again in build/tsan, then the
# tests that run the drivers on 1-3 threads (bits across thread counts, hand-overs, the rescue,
# the recurrent cells' team, the cross-checks in float64: the -O1 build rounds float32
# differently from the tuned one).
# die_after_fork=0: the drivers' helpers live between calls (csrc/team.c), and TSan by default
# kills a child forked from a process with threads once the child starts one (the fork test).
TSAN_CFLAGS := -O1 -g -std=c11 -fno-math-errno -ffp-contract=fast -pthread -fsanitize=thread
tsan: $(VENV)/.installed-test
	rm -rf build/tsan && mkdir -p build/tsan/gradbench
	cp -r csrc build/tsan/ && cp gradbench/_cbuild.py build/tsan/gradbench/
	GRADBENCH_CFLAGS="$(TSAN_CFLAGS)" $(PY) build/tsan/gradbench/_cbuild.py > build/tsan/build.log 2>&1 || (cat build/tsan/build.log; exit 1)
	LD_PRELOAD="$$(gcc -print-file-name=libtsan.so)" \
	TSAN_OPTIONS=halt_on_error=1:report_signal_unsafe=0:allocator_may_return_null=1:exitcode=66:die_after_fork=0:suppressions=$(CURDIR)/tests/tsan.supp \
	$(PY) -c "import sys, gradbench; gradbench.__path__.insert(0, 'build/tsan/gradbench'); \
	import gradbench._ckernels as k; print('C kernels under test:', k.__file__); assert 'build/tsan' in k.__file__; \
	import pytest; sys.exit(pytest.main(['-q', '-s', '-p', 'no:cacheprovider', 'tests/test_c_bits.py', 'tests/test_c.py', 'tests/test_rescue.py', 'tests/test_crosscheck.py', 'benchmarks/test_c_threads.py', 'tests/test_c_workspace.py', 'tests/test_clip_acted.py', 'tests/test_clip_acted_recurrent.py', 'tests/test_c_histogram.py', 'tests/test_recurrent_threads.py', 'tests/test_recurrent_backends.py', 'tests/test_recurrent_rows.py', '-k', 'not numba and not float32']))"
