# Two entry points: `make demo` (compile built-in examples) and `make test` (the test suite).
# Each creates .venv on first use; PYTHON may name another interpreter (3.10+).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test fuzz onnx-zoo lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 'setuptools>=77' wheel
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py --out artifacts

# Tests run on a worker per core, a file each at a time (module fixtures are built once), with
# one OpenMP thread per worker: two workers' spinning thread pools would fight over two cores.
test: $(STAMP)
	$(PY) -m ruff check sparsec passes backends tests examples benchmarks
	$(PY) -m mypy
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist loadfile --durations=25 tests

fuzz: $(STAMP)
	SPARSEC_FUZZ_EXAMPLES=2000 $(PY) -m pytest -q tests -k fuzz

onnx-zoo: $(STAMP)
	SPARSEC_ONNX_ZOO=full $(PY) -m pytest -q tests/test_onnx_frontend.py

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/structured.py

clean:
	rm -rf $(VENV) artifacts build *.egg-info
