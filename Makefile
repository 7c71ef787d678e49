# gradbench: two commands on a fresh machine, `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
SOURCES := pyproject.toml setup.py gradbench/_cbuild.py $(wildcard csrc/*.c csrc/*.h)

.PHONY: demo test test-slow bench bench-quick asan clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	touch $@

# Editable install; reinstalled (and the C extension rebuilt) when the build inputs change.
$(VENV)/.installed: $(VENV)/.created $(SOURCES)
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/gradbench demo

test: $(VENV)/.installed-test
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed-test
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) build dist *.egg-info gradbench/_ckernels*.so .pytest_cache .hypothesis
