"""The demo's recipes: ``configs/demo/demo.yaml`` as written, plus the variants the demo derives from it.

1. ``curriculum_recipe``: the recipe file with the demo's seed and, for ``--quick``, the overrides in
   ``QUICK_OVERRIDES`` (fewer steps and rows; the same stages, data factories and settings otherwise).
2. ``rl_only_recipe``: the ablation's runs. The recipe's own ``rl`` stage, unchanged but for the reward,
   started from a saved checkpoint (``model.init: pretrained``) under a given seed. Deriving it from
   the curriculum file, not from a second file, keeps every ablation arm on the main run's RL settings.

Everything goes through ``train.config`` (typed, validated) and later ``train.runner.run_recipe``:
the demo has no training loop of its own.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from parallel_r1.train.config import Recipe, RecipeError, apply_override, recipe_from_dict

# configs/ sits at the repository root (the package is installed editable from the checkout).
DEFAULT_RECIPE = Path(__file__).resolve().parents[3] / "configs" / "demo" / "demo.yaml"
STAGES = ("stage0", "sft", "rl")  # the stage names the demo expects in the recipe, in order

# --quick: a shrunken run for tests and a first look (minutes -> about a minute); not a result.
QUICK_OVERRIDES = (
    "stages[0].steps=40",
    "stages[0].data.kwargs.n_easy=400",
    "stages[0].data.kwargs.n_hard=400",
    "stages[1].steps=10",
    "stages[1].data.kwargs.n=200",
    "stages[2].steps=2",
    "stages[2].batch_size=4",
    "stages[2].num_samples=4",
    "stages[2].grpo.minibatch_groups=2",
)


def read_raw(path: str | Path = DEFAULT_RECIPE) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"demo recipe not found: {path} (pass --recipe PATH to use another one)")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    names = tuple(s.get("name") for s in raw.get("stages", []))
    if names != STAGES:
        raise RecipeError(f"{path}: the demo needs the stages {list(STAGES)} in this order, found {list(names)}")
    return raw


def curriculum_raw(path: str | Path, seed: int, quick: bool, extra: tuple[str, ...] = ()) -> dict:
    """The raw recipe dict of the main run (validated by ``to_recipe``)."""
    raw = read_raw(path)
    raw["seed"] = seed
    for item in (QUICK_OVERRIDES if quick else ()) + tuple(extra):
        apply_override(raw, item)
    return raw


def rl_only_raw(curriculum: dict, start_model: str | Path, reward: str, seed: int, name: str) -> dict:
    """A recipe of the curriculum's ``rl`` stage alone, with ``reward``, from the model in ``start_model``."""
    raw = copy.deepcopy(curriculum)
    stage = next(s for s in raw["stages"] if s["name"] == "rl")
    stage["reward"] = {"name": reward}
    stage.pop("seed", None)  # the recipe seed decides data order and sampling, per ablation seed
    keep = {k: raw["model"][k] for k in ("dtype", "attn_implementation") if k in raw["model"]}
    raw["model"] = {"init": "pretrained", "name_or_path": str(start_model), **keep}
    raw.update(name=name, seed=seed, stages=[stage])
    return raw


def to_recipe(raw: dict) -> Recipe:
    return recipe_from_dict(copy.deepcopy(raw))
