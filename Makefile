# Set-up and checks. torch is installed first, pinned: a bare `pip install torch`
# pulls a multi-GB CUDA build, while torch==2.13.0 has a CPU build on the local index.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: install test test-fast lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info
