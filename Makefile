# `make test` and `make bench` each set up .venv on their own, idempotently.
# TORCH is the torch requirement, TORCH_INDEX (where set) the one package index torch is taken from. On Linux
# pip's default torch is the CUDA build (several GB): on Linux without nvidia-smi, a venv without torch is not
# set up until one of them is chosen (TORCH_INDEX=$(CPU_INDEX) for the CPU build; CI passes
# TORCH=torch==2.13.0, the CPU wheel its machines keep on disk; TORCH='torch>=2.5' takes pip's default anyway).
PYTHON ?= python3
TORCH ?= torch>=2.5
TORCH_INDEX ?=
CPU_INDEX := https://download.pytorch.org/whl/cpu
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
TORCH_CHOSEN := $(or $(TORCH_INDEX),$(filter-out file,$(origin TORCH)))
PIP_TORCH = pip install -q $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)") $(1) "$(TORCH)"

# $(call choose_torch,PYTHON): stops, saying how to choose, where a fresh install would pull the CUDA build
# unasked (torch not installed yet, neither TORCH nor TORCH_INDEX given, Linux, no nvidia-smi).
define choose_torch
	@if [ -z "$(TORCH_CHOSEN)" ] && [ "$$(uname -s)" = Linux ] && ! nvidia-smi -L >/dev/null 2>&1 \
	    && ! $(1) -c 'import torch' >/dev/null 2>&1; then \
	  echo "make: no NVIDIA GPU here, and pip's default torch on Linux is the CUDA build (several GB). Choose one:"; \
	  echo "  make $(or $(MAKECMDGOALS),test) TORCH_INDEX=$(CPU_INDEX)   # the CPU build"; \
	  echo "  make $(or $(MAKECMDGOALS),test) TORCH=torch==2.13.0   # a given torch from pip's usual indexes"; \
	  echo "  make $(or $(MAKECMDGOALS),test) TORCH='torch>=2.5'   # pip's default (the CUDA build) all the same"; \
	  exit 2; \
	fi
endef

.PHONY: test test-triton36 bench venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# One stamp per extra; each is redone when the package metadata changes.
$(VENV)/.stamp-%: pyproject.toml setup.py | $(PY)
	$(call choose_torch,$(PY))
	$(PY) -m $(call PIP_TORCH)
	$(PY) -m pip install -q -e ".[$*]"
	touch $@

venv: $(VENV)/.stamp-dev

# Two workers, one test file each at a time (module fixtures are built once); each torch takes one thread.
TEST_WORKERS ?= 2
test: $(VENV)/.stamp-dev
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile \
		--durations=15 $(PYTEST_ARGS)

# A second environment with the oldest triton CI checks (.ci/triton36-constraints.txt pins it and numpy)
# runs a subset: the tests listed in tests/triton36-subset.txt, on the Triton backend, and the sm_90
# builds of the attention kernels. Set up idempotently like .venv, redone when the metadata or pins change.
VENV36 := .venv-triton36
PY36 := $(VENV36)/bin/python
PINS36 := .ci/triton36-constraints.txt
SUBSET36 := tests/triton36-subset.txt

$(PY36):
	$(PYTHON) -m venv $(VENV36)
	$(PY36) -m pip install -q --upgrade pip

$(VENV36)/.stamp-dev: pyproject.toml setup.py $(PINS36) | $(PY36)
	$(call choose_torch,$(PY36))
	$(PY36) -m $(call PIP_TORCH,-c $(PINS36))
	$(PY36) -m pip install -q -c $(PINS36) -e ".[dev]"
	touch $@

test-triton36: $(VENV36)/.stamp-dev
	@$(PY36) -c 'import numpy, torch, triton; print(f"triton {triton.__version__}, torch {torch.__version__}, numpy {numpy.__version__}")'
	set -f; ids=$$(sed -e 's/#.*//' $(SUBSET36)) && test -n "$$ids" && \
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false FASTBERT_BACKEND=triton $(PY36) -m pytest -q $$ids $(PYTEST_ARGS)
	$(VENV36)/bin/fastbert check-kernels --arch 90 --match attention

# Without an NVIDIA GPU the quick grid runs (minutes on a CPU); BENCH_ARGS overrides.
BENCH_ARGS ?= $(shell nvidia-smi -L >/dev/null 2>&1 || echo --quick)
bench: $(VENV)/.stamp-bench
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(VENV)/bin/fastbert bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(VENV36) build dist *.egg-info bench-out
