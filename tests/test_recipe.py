"""Recipe loading and validation: every mistake is an error naming the bad entry, before any compute."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from parallel_r1.train.config import (
    GRPOStage,
    RecipeError,
    SFTStage,
    apply_override,
    load_recipe,
    recipe_from_dict,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

BASE = {
    "model": {"name_or_path": "some/model"},
    "stages": [
        {"name": "sft", "type": "sft", "data": {"path": "sft.jsonl"}, "epochs": 5, "batch_size": 128,
         "optimizer": {"lr": 1e-5}},
        {"name": "rl", "type": "grpo", "data": {"path": "rl.jsonl"}, "steps": 300, "batch_size": 256,
         "reward": {"name": "alternating"}, "optimizer": {"lr": 1e-6},
         "generation": {"max_new_tokens": 3000}, "grpo": {"clip_high": 0.28, "minibatch_groups": 128}},
    ],
}  # fmt: skip


def with_change(path: str, value) -> dict:
    raw = copy.deepcopy(BASE)
    apply_override(raw, f"{path}={yaml.safe_dump(value, default_flow_style=True).strip()}")
    return raw


def test_base_recipe_is_typed():
    r = recipe_from_dict(copy.deepcopy(BASE))
    assert isinstance(r.stages[0], SFTStage) and isinstance(r.stages[1], GRPOStage)
    assert r.stages[1].grpo.clip_high == 0.28 and r.stages[1].grpo.clip_low == 0.2
    assert r.stages[0].optimizer.betas == (0.9, 0.999) and r.mode == "unseen"


def test_share_prompts_reaches_the_update():
    from parallel_r1.train.grpo import GRPOConfig

    stage = recipe_from_dict(copy.deepcopy(BASE)).stages[1]
    assert isinstance(stage.grpo, GRPOConfig)  # the update's own settings, filled from the recipe
    assert stage.grpo.share_prompts is True  # default on
    stage = recipe_from_dict(with_change("stages[1].grpo.share_prompts", False)).stages[1]
    assert stage.grpo.share_prompts is False


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("stages[1].reward.name", "acc", r"^stages\[1\]\.reward\.name: unknown reward 'acc'; valid: accuracy, parallel, "),
        ("stages[1].reward.params", {"windw": 3}, r"^stages\[1\]\.reward\.params: .*windw"),
        ("stages[0].optimizer.lrr", 1.0, r"^stages\[0\]\.optimizer\.lrr: unknown key; valid: lr, "),
        ("stages[0].optimizer.lr", -1.0, r"^stages\[0\]\.optimizer\.lr: must be > 0"),
        ("stages[0].optimizer.lr", "fast", r"^stages\[0\]\.optimizer\.lr: expected float, got str 'fast'"),
        ("stages[0].batch_size", 1.5, r"^stages\[0\]\.batch_size: expected int"),
        ("stages[0].type", "ppo", r"^stages\[0\]\.type: bad value 'ppo'; valid: sft, grpo"),
        ("mode", "hidden", r"^mode: bad value 'hidden'; valid: seen, unseen"),
        ("stages[1].generation.max_new_token", 5, r"^stages\[1\]\.generation\.max_new_token: unknown generation setting"),
        ("stages[1].generation.top_p", 1.5, r"^stages\[1\]\.generation: .*top_p"),
        ("stages[1].generation.seed", 3, r"set by the recipe's mode / seed"),
        ("stages[1].num_samples", 1, r"^stages\[1\]\.num_samples: GRPO needs >= 2"),
        ("stages[1].grpo.minibatch_groups", 100, r"does not divide batch_size 256"),
        ("stages[1].grpo.clip_low", 1.0, r"^stages\[1\]\.grpo\.clip_low: must be in \[0, 1\)"),
        ("stages[0].steps", 10, r"^stages\[0\]: give exactly one of steps or epochs"),
        ("stages[1].name", "sft", r"^stages\[1\]\.name: duplicate stage name 'sft'"),
        ("stages[0].data", {"factory": "no_such_module:f"}, r"^stages\[0\]\.data\.factory: cannot import"),
        ("stages[0].prompt", {"template": "no placeholder"}, r"^stages\[0\]\.prompt\.template: has no \{problem\}"),
        ("model", {"init": "scratch", "tokenizer": "t"}, r"^model\.config\.model_type: required"),
    ],
)
def test_bad_entries_are_named(path, value, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(with_change(path, value))


def test_missing_required_and_empty_stages():
    raw = copy.deepcopy(BASE)
    del raw["stages"][1]["reward"]
    with pytest.raises(RecipeError, match=r"^stages\[1\]\.reward: required$"):
        recipe_from_dict(raw)
    with pytest.raises(RecipeError, match=r"at least one stage"):
        recipe_from_dict({**BASE, "stages": []})


def test_scientific_notation_without_a_dot_is_a_float(tmp_path):
    # YAML 1.1 reads 1e-6 as a string; a learning rate written that way must still work.
    text = yaml.safe_dump(BASE).replace("1.0e-06", "1e-6")
    assert "1e-6" in text
    (tmp_path / "r.yaml").write_text(text)
    assert load_recipe(tmp_path / "r.yaml").stages[1].optimizer.lr == 1e-6


def test_overrides(tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(BASE))
    r = load_recipe(tmp_path / "r.yaml", ["stages[1].steps=7", "seed=3", "stages[1].generation.top_p=0.9"])
    assert r.stages[1].steps == 7 and r.seed == 3 and r.stages[1].generation.top_p == 0.9
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "r.yaml", ["stages[1].nothing.here=1"])
    with pytest.raises(RecipeError, match="out of range"):
        load_recipe(tmp_path / "r.yaml", ["stages[5]=1"])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    if path.name.startswith("accelerate"):
        pytest.skip("an accelerate launcher config, not a recipe")
    recipe = load_recipe(path)
    assert recipe.stages


def test_qwen_recipes_carry_the_paper_hyperparameters():
    """docs/paper.md section 3: SFT lr 1e-5, batch 128, 5 epochs; RL lr 1e-6, 8 rollouts, 300 steps, no KL,
    clip 0.2 (S2 adds clip-high 0.28), alternating reward for S2, scaffold switch at 200."""
    s1 = load_recipe(CONFIGS / "qwen3_4b_unseen_s1.yaml")
    s2 = load_recipe(CONFIGS / "qwen3_4b_unseen_s2.yaml")
    seen = load_recipe(CONFIGS / "qwen3_4b_seen.yaml")
    scaffold = load_recipe(CONFIGS / "qwen3_4b_scaffold.yaml")
    assert (s1.mode, s2.mode, seen.mode, scaffold.mode) == ("unseen", "unseen", "seen", "unseen")
    for r in (s1, s2, seen, scaffold):
        sft, rl = r.stages[0], r.stages[-1]
        assert (sft.type, sft.optimizer.lr, sft.batch_size, sft.epochs, sft.max_length) == ("sft", 1e-5, 128, 5, 4096)
        assert (sft.optimizer.weight_decay, sft.optimizer.warmup_ratio, sft.optimizer.schedule) == (0.01, 0.1, "cosine")
        assert (rl.type, rl.optimizer.lr, rl.num_samples, rl.grpo.kl_coef) == ("grpo", 1e-6, 8, 0.0)
        assert (rl.max_prompt_tokens, rl.generation.max_new_tokens) == (2000, 3000)
    for r in (s1, s2, seen):
        assert r.stages[-1].steps == 300
    assert s1.stages[-1].reward.name == "accuracy" and s1.stages[-1].grpo.clip_high == 0.2
    assert s2.stages[-1].reward.name == "alternating" and s2.stages[-1].grpo.clip_high == 0.28
    stage1 = seen.stages[1]  # Seen adds RL on GSM8K: 5 rollouts, 35 steps, parallel-gated reward
    assert (stage1.num_samples, stage1.steps, stage1.reward.name, stage1.batch_size) == (5, 35, "parallel", 1024)


def test_scaffold_recipe_switches_to_the_mid_training_settings_at_step_200():
    """Issue 17: the scaffold recipe kept S2's clip-high 0.28 and optimiser state past RL step 200 (one
    stage with a reward schedule). The reference's mid-training script starts a new run from the S2
    step-200 checkpoint: accuracy reward, verl's default clip 0.2, a new optimiser. Here: a second RL
    stage (every stage builds its own optimiser, ``test_train_runner``'s fresh-optimiser test)."""
    s2 = load_recipe(CONFIGS / "qwen3_4b_unseen_s2.yaml").stages[-1]
    scaffold = load_recipe(CONFIGS / "qwen3_4b_scaffold.yaml")
    assert [(s.type, getattr(s, "steps", None)) for s in scaffold.stages] == [("sft", None), ("grpo", 200), ("grpo", 100)]
    explore, exploit = scaffold.stages[1:]
    # steps 1-200 are S2's RL stage exactly, apart from its length
    assert dataclasses.replace(explore, name=s2.name, steps=s2.steps) == s2
    assert (exploit.reward.name, exploit.reward.params) == ("accuracy", {})
    assert (exploit.grpo.clip_low, exploit.grpo.clip_high) == (0.2, 0.2)
    # everything else as before the switch: only the reward, clip-high and the optimiser's state change
    assert dataclasses.replace(exploit, name=explore.name, steps=explore.steps, reward=explore.reward,
                               grpo=dataclasses.replace(exploit.grpo, clip_high=0.28)) == explore  # fmt: skip
