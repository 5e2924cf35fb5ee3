# One command per job. `make test` and `make demo` work from a fresh clone with Python 3.11 and pip.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# `make test` installs everything a developer needs (.[dev]); `make demo` only what the demo
# imports (.[demo]). They share .venv; the full install also satisfies the demo's.
STAMP := $(VENV)/.installed-stamp
DEMO_STAMP := $(VENV)/.demo-stamp
# Every install is pinned by constraints.txt (torch 2.13.0 among them: the CPU build that lies on
# the CI disk), so a new upstream release never changes what `make test` runs. `make lock`
# regenerates the pins on purpose; `make test-latest` runs the suite without them (CONSTRAINTS=).
CONSTRAINTS ?= constraints.txt
UPGRADE_FLAGS ?=
PIP_INSTALL = $(BIN)/python -m pip install -q $(UPGRADE_FLAGS) $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
LOCK_TORCH ?= 2.13.0
PYTEST_ARGS ?=
# Test peers installed without their dependencies, pinned by constraints.txt like the rest.
# open-clip-torch: the tests load only its loss.py (torch alone); its package imports torchvision
# and timm, and PyPI's torchvision cannot load beside the CPU build of torch ("operator
# torchvision::nms does not exist"), which then also breaks transformers' model imports.
NODEPS_TEST ?= open-clip-torch
# Benchmarks `make bench` runs: the CPU ones here, all of them (GPU kernels too) on a CUDA machine.
BENCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,info metrics linear_ce_cpu score_rss hf_memory ce_overhead rl_cpu sharded_cpu contrastive_cpu topk_cpu)

.PHONY: demo test test-latest lock lint typecheck pytest bench docs clean gpu-bundle gpu-dry-run

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP_INSTALL) -e ".[dev]"
	$(PIP_INSTALL) --no-deps $(NODEPS_TEST)
	touch $(STAMP) $(DEMO_STAMP)

# A current full install (`make test`'s) already has everything the demo needs.
$(DEMO_STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	if [ $(STAMP) -nt pyproject.toml ] && [ $(STAMP) -nt $(or $(CONSTRAINTS),pyproject.toml) ]; \
	  then :; else $(PIP_INSTALL) -e ".[cli,demo]"; fi
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

# The suite against the newest releases pip can install here (no pins; this machine's pip caps
# torch at 2.14.1), in its own venv. Informative only: CI runs `make test`.
test-latest:
	$(MAKE) test VENV=.venv-latest CONSTRAINTS= UPGRADE_FLAGS="--upgrade --upgrade-strategy eager"

# Regenerate constraints.txt from the newest releases (a deliberate upgrade: commit it with the
# fixes it needs). torch stays at LOCK_TORCH, whose CPU build lies on the CI disk.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q -e ".[dev]" "torch==$(LOCK_TORCH)"
	.venv-lock/bin/python -m pip install -q --no-deps $(NODEPS_TEST)
	{ sed -n '1,3p' constraints.txt; .venv-lock/bin/python -m pip freeze --exclude-editable \
	  | grep -v '^crossentropy' | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/'; } > constraints.new
	mv constraints.new constraints.txt
	rm -rf .venv-lock

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH)

# The documentation site (mkdocs-material + mkdocstrings) into build/site; --strict fails on any
# warning, a broken cross-reference included. First docs/_scripts/gen_assets.py writes what is
# generated into docs/generated/: the demo's figure (demo --quick, about 20 s, redrawn only when
# the demo changed), the benchmark tables, the Examples page, the Hugging Face model list and the
# command transcripts. mkdocs reads the sources without importing them, so the site needs only
# .[docs]; the generated parts add .[demo] (the figure) and .[hf] (the model list). A full
# `make test` install already has them all. Keras is documented on its torch backend. Nothing is
# fetched from the network.
DOCS_STAMP := $(VENV)/.docs-stamp
DOCS_ENV := KERAS_BACKEND=torch NO_MKDOCS_2_WARNING=1
$(DOCS_STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	if [ $(STAMP) -nt pyproject.toml ] && [ $(STAMP) -nt $(or $(CONSTRAINTS),pyproject.toml) ]; \
	  then :; else $(PIP_INSTALL) -e ".[docs,demo,hf]"; fi
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(DOCS_ENV) $(BIN)/python docs/_scripts/gen_assets.py
	$(DOCS_ENV) $(BIN)/mkdocs build --strict

# The GPU check (README, "GPU check"): the wheels the GPU machine lacks, for CPython 3.12 on
# manylinux x86_64 whatever Python runs this, pinned in scripts/gpu_bundle.txt. Carry the folder
# with the device tool (`carry: [".gpu-bundle"]`). COMMIT names the checkout the results belong to
# (the tool copies the working tree without .git), so it is rewritten whenever the target runs.
GPU_BUNDLE ?= .gpu-bundle
gpu-bundle: $(GPU_BUNDLE)/wheels/.stamp
	git describe --always --dirty > $(GPU_BUNDLE)/COMMIT 2>/dev/null || echo unknown > $(GPU_BUNDLE)/COMMIT
	$(PYTHON) -m benchmarks._gpu_bundle check $(GPU_BUNDLE)/wheels

$(GPU_BUNDLE)/wheels/.stamp: scripts/gpu_bundle.txt benchmarks/_gpu_bundle.py
	$(PYTHON) -m benchmarks._gpu_bundle download $(GPU_BUNDLE)/wheels
	touch $@

# The whole check on this machine's CPU, in a Python 3.12 venv holding only what the GPU machine
# has (torch, triton, numpy): every stage must start, say "no CUDA" and end, exit status 0.
# Results and $OUT go to a temporary folder, never into benchmarks/results.
GPU_DRY_PYTHON ?= python3.12
GPU_DRY_DIR ?= $(or $(TMPDIR),/tmp)/crossentropy-gpu-dry-run
gpu-dry-run: gpu-bundle
	rm -rf $(GPU_DRY_DIR)
	mkdir -p $(GPU_DRY_DIR)/out
	CUDA_VISIBLE_DEVICES= PYTHON=$(GPU_DRY_PYTHON) OUT=$(GPU_DRY_DIR)/out \
	  GPU_CHECK_RESULTS=$(GPU_DRY_DIR)/results GPU_CHECK_SITE=$(GPU_DRY_DIR)/site \
	  bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .venv-latest .pytest_cache .mypy_cache .ruff_cache demo_out
