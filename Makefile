# One command per job. `make test` and `make demo` work from a fresh clone with Python 3.11 and pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# `make test` installs everything a developer needs (.[dev]); `make demo` only what the demo
# imports (.[demo]). They share .venv; the full install also satisfies the demo's.
STAMP := $(VENV)/.installed-stamp
DEMO_STAMP := $(VENV)/.demo-stamp
# Without an NVIDIA GPU the demo gets the CPU build of torch that .[dev] pins (pip's default torch
# on Linux is the CUDA build, gigabytes the demo would not use); set TORCH_PIN= to choose otherwise.
TORCH_PIN ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,torch==2.13.0)
PYTEST_ARGS ?=
# Benchmarks `make bench` runs: the CPU ones here, all of them (GPU kernels too) on a CUDA machine.
BENCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,info metrics linear_ce_cpu score_rss hf_memory ce_overhead rl_cpu sharded_cpu)

.PHONY: demo test lint typecheck pytest bench docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP) $(DEMO_STAMP)

# A current full install (`make test`'s) already has everything the demo needs.
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	if [ $(STAMP) -nt pyproject.toml ]; then :; else \
	  $(BIN)/python -m pip install -q -e ".[cli,demo]" $(TORCH_PIN); fi
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/crossentropy demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH)

# The documentation site (mkdocs-material + mkdocstrings) into build/site; --strict fails on any
# warning, a broken cross-reference included. First the demo's figure (demo --quick, about 20 s,
# redrawn only when the demo changed) and the benchmark tables go into docs/generated/. Keras is
# documented on its torch backend. Nothing is fetched from the network.
DOCS_ENV := KERAS_BACKEND=torch NO_MKDOCS_2_WARNING=1
docs: $(STAMP)
	$(DOCS_ENV) $(BIN)/python docs/_scripts/gen_assets.py
	$(DOCS_ENV) $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo_out
