# anomstream: `make demo` and `make test` do all set-up on a fresh machine (Python >= 3.11).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is pinned to the CPU build of 2.13.0: an open range would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
DURATION ?= 60
# AutoML seconds per run in the ADBench benchmark (360 runs: 6 s takes about 45 minutes here).
ADBENCH_BUDGET ?= 6

.PHONY: install demo test bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile hatch_build.py stream/_native/neighbours.c stream/_native/grading.c \
		stream/_native/decoding.c stream/_native/records.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[all]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/anomstream demo --duration $(DURATION)

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python tests/perf/bench_core.py
	$(BIN)/python tests/perf/bench_pool.py
	$(BIN)/python tests/perf/bench_e2e.py
	$(BIN)/python tests/perf/bench_ws.py
	$(BIN)/python tests/perf/bench_drift.py
	$(BIN)/python tests/perf/bench_faust.py
	$(BIN)/python tests/perf/adbench.py --budget $(ADBENCH_BUDGET)

lint: $(STAMP)
	$(BIN)/ruff check stream models training tests hatch_build.py
	$(BIN)/mypy stream models training

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
