"""One rollout interface: the recipe's typed ``rollout:`` and ``generation:``, the weight hand-over after
every optimiser step of a GRPO stage, and ``--backend vllm`` failing in one line where vLLM is absent."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import get_args

import pytest
import torch
import yaml
from typer.testing import CliRunner

from parallel_r1.cli import app
from parallel_r1.data.toy_tokenizer import build_toy_tokenizer
from parallel_r1.engine.backend import (
    BACKENDS,
    BackendUnavailable,
    HFOptions,
    RolloutBackend,
    RolloutConfig,
    check_backend_available,
    make_backend,
)
from parallel_r1.engine.engine import Engine
from parallel_r1.engine.sampling import SamplingConfig
from parallel_r1.eval.loading import Backend
from parallel_r1.train.config import RecipeError, recipe_from_dict
from parallel_r1.train.runner import run_recipe, train_main

NO_VLLM = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
VLLM_LINE = "vLLM is not installed: run `make install-vllm`"
TOY = "parallel_r1.data.toy:toy_problems"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("toy_tok")
    build_toy_tokenizer().save_pretrained(path)
    return path


def raw_recipe(tok_dir: Path | str = "tok", **extra) -> dict:
    """One GRPO stage: 4 prompts x 3 samples, two minibatches of 2 groups (2 optimiser steps a step)."""
    return {
        "name": "t", "mode": "unseen", "seed": 0, "threads": 1,
        "model": {"init": "scratch", "tokenizer": str(tok_dir),
                  "config": {"model_type": "qwen3", "hidden_size": 32, "num_hidden_layers": 1,
                             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                             "intermediate_size": 64, "max_position_embeddings": 512, "tie_word_embeddings": True}},
        "stages": [{"name": "grpo", "type": "grpo", "steps": 2, "batch_size": 4, "num_samples": 3,
                    "micro_batch_size": 3, "reward": {"name": "accuracy"}, "optimizer": {"lr": 3e-3},
                    "data": {"factory": TOY, "kwargs": {"split": "hard", "n": 8, "seed": 1}},
                    "generation": {"max_new_tokens": 16, "max_path_tokens": 6, "max_summary_tokens": 4},
                    "grpo": {"minibatch_groups": 2}}],
        "checkpoint": {"every": 0, "keep_last": 1},
        "logging": {"progress": False, "tensorboard": False, "log_rollouts": 0},
        **extra,
    }  # fmt: skip


# --- the recipe -------------------------------------------------------------------------------------


def test_rollout_section_is_typed_and_defaults_to_hf():
    assert recipe_from_dict(raw_recipe()).rollout == RolloutConfig()
    r = recipe_from_dict(raw_recipe(rollout={"backend": "vllm", "hf": {"max_batch_size": 8},
                                             "vllm": {"gpu_memory_utilization": 0.3, "max_model_len": 4096}}))
    assert r.rollout.backend == "vllm" and r.rollout.hf == HFOptions(max_batch_size=8)
    assert (r.rollout.vllm.gpu_memory_utilization, r.rollout.vllm.max_model_len) == (0.3, 4096)


@pytest.mark.parametrize(
    ("rollout", "message"),
    [
        ({"backend": "sglang"}, r"^rollout\.backend: bad value 'sglang'; valid: hf, vllm"),
        ({"hf": {"max_batch": 8}}, r"^rollout\.hf\.max_batch: unknown key; valid: max_batch_size"),
        ({"hf": {"max_batch_size": 0}}, r"^rollout\.hf\.max_batch_size must be >= 1, got 0"),
        ({"vllm": {"gpu_memory_utilization": 1.5}}, r"^rollout\.vllm\.gpu_memory_utilization must be in \(0, 1\]"),
        ({"engine": "hf"}, r"^rollout\.engine: unknown key"),
    ],
)
def test_bad_rollout_entries_name_the_entry(rollout, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(raw_recipe(rollout=rollout))


def test_generation_is_a_sampling_config_at_load_with_the_recipe_mode():
    raw = raw_recipe(mode="seen")
    raw["stages"][0]["generation"].update(stop="###", temperature=0.7)
    gen = recipe_from_dict(raw).stages[0].generation
    assert isinstance(gen, SamplingConfig)
    assert (gen.mode, gen.stop, gen.temperature, gen.max_path_tokens) == ("seen", ("###",), 0.7, 6)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("top_p", "high", r"^stages\[0\]\.generation\.top_p: expected float, got str"),
        ("stop", [1], r"^stages\[0\]\.generation\.stop"),
        ("num_paths", 0, r"^stages\[0\]\.generation: SamplingConfig: num_paths must be in 1\.\.64"),
        ("mode", "seen", r"set by the recipe's mode / seed"),
    ],
)
def test_bad_generation_entries_name_the_entry(key, value, message):
    raw = raw_recipe()
    raw["stages"][0]["generation"][key] = value
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(raw)


def test_the_cli_choice_lists_every_backend():
    assert get_args(Backend) == BACKENDS  # eval.loading keeps a copy so --help needs no torch


def test_make_backend_passes_the_hf_options(tok_dir):
    from parallel_r1.engine.testing import random_qwen3

    tok = build_toy_tokenizer()
    backend = make_backend(RolloutConfig(hf=HFOptions(max_batch_size=3, lean=False)), random_qwen3(len(tok), "tiny"), tok)
    assert isinstance(backend, RolloutBackend) and isinstance(backend, Engine)
    assert backend.max_batch_size == 3 and backend.info.forward_path == "model (lean=False)"
    assert backend.info.name == "hf" and backend.shares_policy


# --- vLLM absent: one line, exit 2, nothing loaded ---------------------------------------------------


@NO_VLLM
def test_vllm_backend_without_vllm_is_one_clear_error():
    with pytest.raises(BackendUnavailable, match=f"^{VLLM_LINE}$"):
        check_backend_available(RolloutConfig(backend="vllm"))
    check_backend_available(RolloutConfig())  # hf: always there


@NO_VLLM
@pytest.mark.parametrize("where", ["recipe", "flag"])
def test_train_with_vllm_exits_2_before_loading_the_model(where, tmp_path, caplog):
    """The model path does not exist: reaching the model load would fail with another message."""
    raw = raw_recipe(rollout={"backend": "vllm"} if where == "recipe" else {})
    raw["model"] = {"name_or_path": str(tmp_path / "no-such-model")}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        train_main(tmp_path / "r.yaml", tmp_path / "out", backend="vllm" if where == "flag" else None)
    assert exit_info.value.code == 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [VLLM_LINE]


@NO_VLLM
@pytest.mark.parametrize(
    "args",
    [
        ["eval", "no/such-model", "--benchmarks", "toy-hard", "--output", "OUT/e.json", "--backend", "vllm"],
        ["serve", "no/such-model", "--backend", "vllm"],
        ["bench", "rl", "--quick", "--profile", "--backend", "vllm"],
        ["demo", "--quick", "--output", "OUT/demo", "--backend", "vllm"],
    ],
)
def test_commands_with_vllm_exit_2_in_one_line(args, tmp_path):
    result = CliRunner().invoke(app, [a.replace("OUT", str(tmp_path)) for a in args])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"error: {VLLM_LINE}"]


def test_an_unknown_backend_is_refused_by_the_command():
    result = CliRunner().invoke(app, ["serve", "m", "--backend", "sglang"])
    assert result.exit_code == 2 and "sglang" in result.output


# --- the weight hand-over ------------------------------------------------------------------------------


class RecordingBackend:
    """The branching engine, but as a backend with its own copy of the weights would be driven:
    ``shares_policy`` False, every hand-over materialised and kept."""

    shares_policy = False

    def __init__(self, engine: Engine):
        self.engine, self.handed, self.closed = engine, [], 0

    @property
    def info(self):
        return self.engine.info

    def generate(self, prompts, num_samples, config):
        return self.engine.generate(prompts, num_samples, config)

    def update_weights(self, named_tensors):
        self.handed.append({name: t.detach().clone() for name, t in named_tensors})

    def close(self):
        self.closed += 1
        self.engine.close()


def test_runner_hands_the_weights_over_after_every_optimizer_step(tok_dir, tmp_path):
    made = []

    def factory(model, tokenizer, tag_ids):
        made.append(RecordingBackend(make_backend(RolloutConfig(), model, tokenizer, tag_ids)))
        return made[-1]

    recipe = recipe_from_dict(raw_recipe(tok_dir))
    run_recipe(recipe, tmp_path / "out", engine_factory=factory)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = sum(r["optimizer_steps"] for r in rows)
    assert steps == 4  # 2 steps x 2 minibatches
    (backend,) = made
    assert len(backend.handed) == steps and backend.closed == 1
    policy = backend.engine.model
    names = [n for n, _ in policy.named_parameters()]
    assert all(list(h) == names for h in backend.handed)
    for before, after in zip(backend.handed, backend.handed[1:], strict=False):  # each step moved the weights
        assert any(not torch.equal(before[n], after[n]) for n in names)
    final = dict(policy.named_parameters())
    assert all(torch.equal(backend.handed[-1][n], final[n].detach()) for n in names)  # the updated policy's


def test_the_hf_engine_ignores_the_hand_over_without_reading_it():
    tok = build_toy_tokenizer()
    from parallel_r1.engine.testing import random_qwen3

    engine = make_backend(RolloutConfig(), random_qwen3(len(tok), "tiny"), tok)

    def tensors():
        raise AssertionError("the shared-policy engine must not consume the hand-over")
        yield  # pragma: no cover

    engine.update_weights(tensors())
    assert engine.shares_policy is True


def test_copy_backend_refreshes_an_inner_backend_that_holds_its_own_weights():
    """Regression: under FSDP the runner decodes through ``CopyBackend`` over an unsharded copy; an inner
    backend with its own weights (vLLM) was never handed the copy's new tensors, so it sampled from
    the weights it started with for the whole stage."""
    from parallel_r1.engine.testing import char_tokenizer, random_qwen3
    from parallel_r1.train.fsdp import CopyBackend

    tok = char_tokenizer()
    copy, policy = random_qwen3(len(tok), seed=0), random_qwen3(len(tok), seed=1)
    inner = RecordingBackend(Engine(copy, tok))
    CopyBackend(copy, inner).update_weights(policy.named_parameters())
    assert len(inner.handed) == 1
    expected = dict(policy.named_parameters())
    assert inner.handed[0].keys() == expected.keys()
    for name, tensor in inner.handed[0].items():
        assert torch.equal(tensor, expected[name]), name
