# basewatch: two commands for a new user (`make demo`, `make test`), plus lint and bench.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint format bench bench-real clean install

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Pinned install: uv when it can be had (fast), pip otherwise; same lock file either way.
# Both write the bytecode of every installed module (pip does by default, uv when asked): where
# PYTHONDONTWRITEBYTECODE is set, as on many CI images, Python would otherwise compile xarray,
# pandas, dask... from source in every `basewatch` process (about 4 s of each stage's start).
$(STAMP): pyproject.toml requirements.lock | $(BIN)/python
	@echo "installing basewatch and its pinned dependencies into $(VENV) ..."
	@if $(BIN)/python -m pip install -q --disable-pip-version-check uv >/dev/null 2>&1; then \
	  $(BIN)/python -m uv pip install -q --compile-bytecode --python $(BIN)/python \
	    -r requirements.lock -e ".[dev]"; \
	else \
	  $(BIN)/python -m pip install -q -r requirements.lock -e ".[dev]"; \
	fi
	@touch $(STAMP)

demo: $(STAMP)
	@$(BIN)/dvc repro
	@$(BIN)/basewatch where

# One pytest worker per core, at most 4 (each end-to-end test runs subprocesses and numba
# threads of its own); tests of one module share a worker, so module fixtures run once.
# `make test PYTEST_WORKERS=0` runs them in this process, one after another.
PYTEST_WORKERS ?= auto
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --maxprocesses 4 --dist loadscope

test: $(STAMP)
	@$(BIN)/python -m pytest -q $(PYTEST_PARALLEL)

test-fast: $(STAMP)
	@$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) -m "not slow"

# ruff, then the layer contracts of pyproject.toml [tool.importlinter] (docs/architecture.md).
lint: $(STAMP)
	$(BIN)/ruff check pipeline tests benchmarks
	$(BIN)/ruff format --check pipeline tests benchmarks
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format pipeline tests benchmarks
	$(BIN)/ruff check --fix pipeline tests benchmarks

# bench_core.py: both methods, 1024-10980 px, 2 and 24 dates (about 25 min on 2 cores) ->
# results.json. bench_stage.py: the detect stage from COG files to detections on a generated
# 2048 px catalog (cached in build/cogbench/; --size 10980 for a whole tile, about 30 min more:
# figures in docs/scaling.md) -> results_stage.json.
bench: $(STAMP)
	@$(BIN)/python benchmarks/bench_core.py
	@$(BIN)/python benchmarks/bench_stage.py --size 2048 --dates 4

# Real backgrounds (../shared/data: sen2ships ports, OSCD): writes benchmarks/real.json; skips without it.
bench-real: $(STAMP)
	@$(BIN)/python benchmarks/bench_real.py --out benchmarks/real.json

clean:
	rm -rf demo_catalog data reports metrics dvc_plots .dvc/tmp .dvc/cache
