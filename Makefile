# `make test` and `make bench` each set up .venv on their own, idempotently.
# TORCH is the torch requirement; CI pins the CPU build with TORCH=torch==2.13.0.
PYTHON ?= python3
TORCH ?= torch>=2.5
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test bench venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# One stamp per extra; each is redone when the package metadata changes.
$(VENV)/.stamp-%: pyproject.toml setup.py | $(PY)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[$*]"
	touch $@

venv: $(VENV)/.stamp-dev

test: $(VENV)/.stamp-dev
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest -q $(PYTEST_ARGS)

# Without an NVIDIA GPU the quick grid runs (minutes on a CPU); BENCH_ARGS overrides.
BENCH_ARGS ?= $(shell nvidia-smi -L >/dev/null 2>&1 || echo --quick)
bench: $(VENV)/.stamp-bench
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(VENV)/bin/fastbert bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info bench-out
