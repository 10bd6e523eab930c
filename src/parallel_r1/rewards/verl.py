"""Our rewards inside verl: ``compute_score`` with verl's custom-reward signature.

verl config (verl itself is not a dependency of this package)::

    custom_reward_function.path=/path/to/site-packages/parallel_r1/rewards/verl.py
    custom_reward_function.name=compute_score
    +custom_reward_function.reward_kwargs.reward=alternating    # default: alternating
    +custom_reward_function.reward_kwargs.scorer=reference      # default: default

verl calls ``compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=...)``
with keyword arguments, plus whatever ``reward_kwargs`` holds. Reward parameters other than
``reward`` and ``scorer`` go to the reward (e.g. ``switch_step`` for scaffold).

1. The step: the alternating and scaffold schedules read ``extra_info["global_steps"]`` (the
   reference's verl fork puts the trainer's ``global_steps`` there). A schedule without it is an
   error, not a silent step 1. verl validates once before its first step with ``global_steps`` 0;
   that is scored as step 1 (the schedules count the first optimiser step as step 1).
2. The text: our tags are special tokens, and verl's stock reward manager decodes the response
   with ``skip_special_tokens=True``, which drops them. The reference's fork also passes the text
   decoded with the tags as ``solution_str_with_special_tokens``; when given, that text is judged
   (the reference scorer drops the tags before it reads the answer, as the reference does).
   With stock verl, register the tags as ordinary (non-special) added tokens or use such a manager.
3. The return value is a dict: ``score`` (the reward) plus ``acc``, ``format_valid`` and
   ``num_parallel``, which verl logs per sample.
"""

from __future__ import annotations

import numbers

from parallel_r1.rewards.functions import get_reward
from parallel_r1.rewards.scorers import DEFAULT_SCORER, get_scorer

STEP_KEY = "global_steps"


def _step(extra_info: dict | None, schedule: bool) -> int:
    """The training step from ``extra_info`` (point 1); 1 for a reward that ignores the step."""
    raw = (extra_info or {}).get(STEP_KEY)
    if raw is None:
        if schedule:
            raise ValueError(f"this reward changes with the training step, but extra_info has no "
                             f"{STEP_KEY!r} (got keys {sorted(extra_info or {})})")
        return 1
    step = int(raw.item() if hasattr(raw, "item") else raw)  # numpy / torch scalars too
    if step < 0:
        raise ValueError(f"extra_info[{STEP_KEY!r}] must be >= 0, got {step}")
    return max(step, 1)


def _gold(ground_truth) -> str:
    if isinstance(ground_truth, bool) or not isinstance(ground_truth, str | numbers.Number):
        raise TypeError(f"ground_truth must be the gold answer as a string or number, got {ground_truth!r}")
    return str(ground_truth)


def compute_score(data_source, solution_str: str, ground_truth, extra_info: dict | None = None, *,
                  reward: str = "alternating", scorer: str = DEFAULT_SCORER,
                  solution_str_with_special_tokens: str | None = None, **reward_params) -> dict:
    """Score one response the way verl's reward managers call a custom reward (module docstring)."""
    rule, judge = get_reward(reward, **reward_params), get_scorer(scorer)
    judge.check(rule)
    step = _step(extra_info, schedule=len(rule.components()) > 1)
    text = solution_str if solution_str_with_special_tokens is None else solution_str_with_special_tokens
    verdict = judge.judge(text, _gold(ground_truth))
    return {
        "score": judge.reward(rule, verdict, step),
        "acc": bool(verdict.correct),
        "format_valid": bool(verdict.format_valid),
        "num_parallel": int(verdict.num_parallel),
    }
