"""train.memory: the parameter count equals a real model's, and every byte figure is its formula."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from parallel_r1.train.config import load_recipe
from parallel_r1.train.memory import (
    GIB,
    QWEN3_4B_BASE,
    ModelShape,
    Workload,
    activation_bytes,
    recipe_memory,
    stage_memory,
    stage_workload,
    state_bytes,
)

TINY = dict(vocab_size=97, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, intermediate_size=80)


def _numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("tied", [True, False])
def test_param_count_equals_real_qwen3(tied):
    config = Qwen3Config(**TINY, tie_word_embeddings=tied)
    shape = ModelShape.from_config(config)
    assert shape.param_count() == _numel(Qwen3ForCausalLM(config))
    assert shape.param_count() == ModelShape.from_config(config.to_dict()).param_count()


def test_param_count_equals_real_llama():
    """Llama has no q/k norms: the count must not add them."""
    config = LlamaConfig(**TINY, tie_word_embeddings=False)
    assert ModelShape.from_config(config).param_count() == _numel(LlamaForCausalLM(config))


def test_qwen3_4b_constants_match_transformers_model():
    """The hand-written Qwen3-4B-Base shape gives the parameter count of transformers' own model class
    built from the same config (on the meta device: no memory)."""
    s = QWEN3_4B_BASE
    config = Qwen3Config(vocab_size=s.vocab_size, hidden_size=s.hidden_size, num_hidden_layers=s.num_hidden_layers,
                         num_attention_heads=s.num_attention_heads, num_key_value_heads=s.num_key_value_heads,
                         head_dim=s.head_dim, intermediate_size=s.intermediate_size, tie_word_embeddings=True)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    assert s.param_count() == _numel(model) == 4_022_468_096


def test_bytes_follow_the_formulas():
    shape = ModelShape.from_config(Qwen3Config(**TINY, tie_word_embeddings=True))
    p, layer = shape.param_count(), shape.layer_params()
    assert state_bytes(shape, "ddp", 8) == {"state": 16 * p, "gathered": 0}
    assert state_bytes(shape, "fsdp", 4) == {"state": -(-16 * p // 4),
                                             "gathered": 2 * (97 * 48 + 2 * layer) + 4 * layer}
    per_layer = 20 * 48 + 2 * (4 * 64 + 4 * 32) + 8 * 80
    assert activation_bytes(shape, 10, checkpointing=False) == 10 * 3 * per_layer
    assert activation_bytes(shape, 10, checkpointing=True) == 10 * (4 * 48 * 3 + per_layer)
    work = Workload(rows=2, tokens_per_row=30, scored_per_row=20, rollout_rows=5, rollout_tokens_per_row=50)
    parts = stage_memory(shape, work, "ddp", 1, checkpointing=True, kv_dtype_bytes=2)
    assert parts["logits"] == 2 * 20 * 97 * 12
    assert parts["rollout_kv"] == 5 * 50 * (2 * 3 * 2 * 16 * 2)  # rows x tokens x 2 x layers x kv x hd x bytes
    assert parts["peak_train"] == 16 * p + activation_bytes(shape, 60, True) + parts["logits"]
    assert parts["peak"] == max(parts["peak_train"], 16 * p + parts["rollout_kv"])
    with pytest.raises(ValueError, match="sharding"):
        state_bytes(shape, "zero3", 8)


def test_recipe_workloads_and_verdicts():
    recipe = load_recipe("qwen3_4b_unseen_s1")
    sft, grpo = recipe.stages
    assert stage_workload(sft, 8, 64) == Workload(1, 4096, 4096)
    # 256 prompts x 8 samples over 8 GPUs = 256 rollouts each; the engine decodes 64 rows at once
    assert stage_workload(grpo, 8, 64) == Workload(2, 5000, 3000, 64, 5000)
    result = recipe_memory(recipe, gpus=8, gpu_gb=40.0)
    assert result["params"] == 4_022_468_096 and result["kv_dtype_bytes"] == 4  # fp32 policy decodes
    by_stage = {s["name"]: s["configs"] for s in result["stages"]}
    assert by_stage["cold-start-sft"]["ddp_ckpt"]["state"] == round(16 * 4_022_468_096 / GIB, 2)
    assert not by_stage["cold-start-sft"]["ddp_ckpt"]["fits"]  # 60 GiB of state alone on a 40 GiB card
    assert by_stage["cold-start-sft"]["fsdp_ckpt"]["fits"]
    json.dumps(result)  # the CLI prints it as one JSON line


def test_cli_last_line_is_json():
    from typer.testing import CliRunner

    from parallel_r1.cli import app

    out = CliRunner().invoke(app, ["bench", "memory", "qwen3_4b_seen", "--gpu-gb", "80"])
    assert out.exit_code == 0, out.output
    last = json.loads(out.output.strip().splitlines()[-1])
    assert last["gpu_gib"] == 80.0 and [s["name"] for s in last["stages"]] == ["cold-start-sft", "rl-gsm8k", "rl-dapo"]
    bad = CliRunner().invoke(app, ["bench", "memory", "qwen3_4b_seen", "--gpus", "0"])
    assert bad.exit_code == 2
