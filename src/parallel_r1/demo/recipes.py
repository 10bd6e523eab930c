"""The demo's recipes: the bundled ``demo`` recipe (``configs/demo/demo.yaml`` in the repository) as
written, plus the variants the demo derives from it.

1. ``curriculum_raw``: the recipe file with the demo's seed and, for ``--quick``, ``quick_overrides``
   (fewer steps, rows and rollouts; the same stages, data factories and settings otherwise).
2. ``rl_only_raw``: the ablation's runs. The recipe's own final ``rl`` stage, unchanged but for the reward,
   started from a saved checkpoint (``model.init: pretrained``) under a given seed. Deriving it from
   the curriculum file, not from a second file, keeps every ablation arm on the main run's RL settings.

Everything goes through ``train.config`` (typed, validated) and later ``train.runner.run_recipe``:
the demo has no training loop of its own.
"""

from __future__ import annotations

import copy
from pathlib import Path

from parallel_r1 import recipes as bundled
from parallel_r1.train.config import Recipe, RecipeError, apply_override, read_yaml, recipe_from_dict

# Inside the package, so that an installed wheel finds it without the repository's configs/.
DEFAULT_RECIPE = bundled.path("demo")
assert DEFAULT_RECIPE is not None, f"the bundled demo recipe is missing; found {bundled.names()}"
FIRST, COLD_START, FINAL = "stage0", "sft", "rl"  # stage names the demo relies on

# --quick: a shrunken run for tests and a first look (about a minute); not a result.
QUICK_STEPS = {FIRST: 40, COLD_START: 10}  # every other stage (the GRPO ones): 2 steps
QUICK_SFT = {"data.kwargs.n_easy": 400, "data.kwargs.n_hard": 400, "data.kwargs.n": 200}
QUICK_GRPO = {"batch_size": 4, "num_samples": 4, "grpo.minibatch_groups": 2}


def stage_names(raw: dict) -> list[str]:
    return [s.get("name") for s in raw.get("stages", [])]


def read_raw(path: str | Path = DEFAULT_RECIPE) -> dict:
    """The recipe file (or bundled recipe name) as a dict; its stages must be stage0, sft, any others, then rl."""
    path = bundled.resolve(path)
    if not path.exists():
        raise RecipeError(f"demo recipe not found: {path} (pass --recipe PATH to use another one)")
    raw = read_yaml(path, "demo recipe")
    names = stage_names(raw)
    if len(names) < 3 or names[:2] != [FIRST, COLD_START] or names[-1] != FINAL:
        raise RecipeError(f"{path}: the demo needs stages named {FIRST}, {COLD_START}, (others), {FINAL}; found {names}")
    return raw


def quick_overrides(raw: dict) -> list[str]:
    """``key=value`` overrides that shrink every stage of ``raw`` for ``--quick``."""
    out = []
    for i, stage in enumerate(raw["stages"]):
        out.append(f"stages[{i}].steps={QUICK_STEPS.get(stage['name'], 2)}")
        kwargs = stage["data"].get("kwargs", {})
        table = QUICK_SFT if stage["type"] == "sft" else QUICK_GRPO
        for key, value in table.items():
            if not key.startswith("data.kwargs.") or key.rsplit(".", 1)[1] in kwargs:
                out.append(f"stages[{i}].{key}={value}")
    return out


def curriculum_raw(path: str | Path, seed: int, quick: bool, extra: tuple[str, ...] = ()) -> dict:
    """The raw recipe dict of the main run (validated by ``to_recipe``)."""
    raw = read_raw(path)
    raw["seed"] = seed
    for item in (quick_overrides(raw) if quick else []) + list(extra):
        apply_override(raw, item)
    return raw


def rl_only_raw(curriculum: dict, start_model: str | Path, reward: str, seed: int, name: str) -> dict:
    """A recipe of the curriculum's ``rl`` stage alone, with ``reward``, from the model in ``start_model``."""
    raw = copy.deepcopy(curriculum)
    stage = next(s for s in raw["stages"] if s["name"] == FINAL)
    stage["reward"] = {"name": reward}
    stage.pop("seed", None)  # the recipe seed decides data order and sampling, per ablation seed
    keep = {k: raw["model"][k] for k in ("dtype", "attn_implementation") if k in raw["model"]}
    raw["model"] = {"init": "pretrained", "name_or_path": str(start_model), **keep}
    raw.update(name=name, seed=seed, stages=[stage])
    return raw


def to_recipe(raw: dict) -> Recipe:
    return recipe_from_dict(copy.deepcopy(raw))
