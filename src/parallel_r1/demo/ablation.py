"""``--ablation``: RL arms over several seeds, shaped like docs/paper.md Table 4 (plus a sequential baseline).

Arms, each the curriculum's own ``rl`` stage (``recipes.rl_only_raw``) run by ``train.runner`` under
seeds ``DemoConfig.ablation_seeds`` into ``DIR/ablation/<arm>-seed<S>/``:

| arm         | starts from                       | reward      | plays                                  |
|-------------|-----------------------------------|-------------|----------------------------------------|
| sequential  | stage-0 checkpoint                | accuracy    | GRPO without format SFT (Table 2 GRPO) |
| accuracy    | checkpoint the final RL starts at | accuracy    | Table 4 "accuracy"                     |
| alternating | checkpoint the final RL starts at | alternating | Table 4 "alternating" (S2)             |

"The checkpoint the final RL starts at" is the end of the stage before ``rl`` in the recipe: the
cold-start SFT checkpoint, or (demo recipe) the end of the easy RL stage that follows it.

Each arm's final policy is evaluated like the main run (same held-out sets and settings); the table
gives the mean and the standard deviation over seeds, which is the seed noise the targets refer to.
Departure: Table 4 also has a parallel-only arm; the demo leaves it out to stay within its budget
(``EXTRA_ARMS`` adds it).
"""

from __future__ import annotations

import math
from pathlib import Path

from parallel_r1.demo.recipes import FIRST, rl_only_raw, to_recipe

START = "start"  # stands for the checkpoint the main run's final RL stage started from
ARMS = (
    ("sequential", FIRST, "accuracy"),
    ("accuracy", START, "accuracy"),
    ("alternating", START, "alternating"),
)
EXTRA_ARMS = (("parallel_only", START, "parallel_only"),)


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    assert n > 0, "mean_sd of no values"
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, sd


def run_arm(demo, arm: str, start: str, reward: str, seed: int, checkpoints: dict[str, Path]) -> dict:
    """Train one arm under one seed and evaluate its final policy on the held-out hard set."""
    from parallel_r1.train.checkpoint import latest_checkpoint
    from parallel_r1.train.runner import run_recipe

    if start == START:
        start = demo.names[-2]  # the stage before the final RL one

    name = f"{arm}-seed{seed}"
    out = demo.cfg.output / "ablation" / name
    raw = rl_only_raw(demo.raw, checkpoints[start] / "model", reward, seed, f"demo-ablation-{name}")
    demo.console.rule(f"[bold]Ablation {name}: GRPO from {start} with the {reward} reward")
    run_recipe(to_recipe(raw), out)
    final = latest_checkpoint(out / "checkpoints")
    result = demo.evaluate(f"ablation-{name}", final / "model", splits=("hard",))
    hard = result["hard"]
    return {
        "arm": arm, "seed": seed, "start": start, "reward": reward, "run": str(out.relative_to(demo.cfg.output)),
        "hard_accuracy": hard["accuracy"], "hard_accuracy_se": hard["accuracy_se"],
        "parallel_ratio": hard["parallel_ratio"], "relative_position": hard["mean_relative_position"],
        "response_tokens": hard["mean_response_tokens"],
    }  # fmt: skip


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Per arm: mean and sd over seeds of hard accuracy and parallel ratio, and the per-seed values."""
    table: dict[str, dict] = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        acc, acc_sd = mean_sd([r["hard_accuracy"] for r in mine])
        par, par_sd = mean_sd([r["parallel_ratio"] for r in mine])
        table[arm] = {
            "start": mine[0]["start"], "reward": mine[0]["reward"], "seeds": [r["seed"] for r in mine],
            "hard_accuracy": acc, "hard_accuracy_sd": acc_sd, "parallel_ratio": par, "parallel_ratio_sd": par_sd,
            "per_seed_accuracy": [r["hard_accuracy"] for r in mine],
            "per_seed_parallel_ratio": [r["parallel_ratio"] for r in mine],
        }  # fmt: skip
    return table


def run_ablation(demo, checkpoints: dict[str, Path], arms=ARMS) -> dict:
    runs = [run_arm(demo, arm, start, reward, seed, checkpoints)
            for seed in demo.cfg.ablation_seeds for arm, start, reward in arms]  # fmt: skip
    return {"arms": summarise(runs), "runs": runs, "seeds": list(demo.cfg.ablation_seeds)}
