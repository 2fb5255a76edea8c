# Every target sets up what it needs by itself, in a local .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: demo check test lint typecheck pytest docs bench bench-quick bench-compare bench-ray test-all clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(PY) -m pip install --quiet -e .
	touch $@

$(STAMP): $(VENV)/bin/python pyproject.toml docs/requirements.txt
	$(PY) -m pip install --quiet -e ".[dev,dask,ray]" -r docs/requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) -m procpool demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy
	$(VENV)/bin/pyright
	$(PY) tests/check_verifytypes.py

docs: $(STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

pytest: $(STAMP)
	$(VENV)/bin/pytest -q -p no:cacheprovider -m "not slow"

test: lint typecheck docs pytest

# The quick inner loop (about a minute here): lint, mypy, pyright, and the tests a
# change most likely breaks, under the fork start method only. `make test` is the gate.
CHECK_TESTS := tests/test_pool.py tests/test_callbacks.py tests/test_faults.py \
	tests/test_limits.py tests/test_process.py tests/test_properties.py \
	tests/test_round_trip.py tests/test_layers.py tests/test_exports.py tests/test_cli.py \
	tests/test_type_messages.py
check: lint $(STAMP)
	$(VENV)/bin/mypy
	$(VENV)/bin/pyright
	PROCPOOL_TEST_START_METHODS=fork $(VENV)/bin/pytest -q -p no:cacheprovider -m "not slow" \
		$(CHECK_TESTS)

# The whole suite, slow stress tests included, on every supported Python, and
# CPython's own executor tests against procpool.Pool on 3.13 (nox: tests, cpython).
test-all: $(STAMP)
	$(PY) -m pip install --quiet "nox==2026.10.20"
	$(VENV)/bin/nox

bench:
	$(MAKE) -C benchmarks bench

bench-quick:
	$(MAKE) -C benchmarks bench-quick

bench-ray:
	$(MAKE) -C benchmarks bench-ray

# This tree against commit BASE in one interleaved run: each ratio (to mp.Pool, to
# the limit, to BASE) with its spread. BENCH_ARGS go to benchmarks/run.py.
bench-compare:
	$(MAKE) -C benchmarks compare BASE=$(BASE) BENCH_ARGS="$(BENCH_ARGS)"

clean:
	rm -rf $(VENV) .venv-* dist build docs/_build .mypy_cache .pytest_cache .ruff_cache .nox
