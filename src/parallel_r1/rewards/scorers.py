"""Scorers: which judge reads a response and which base rewards turn its verdict into a number.

Two are registered, picked by name (``--scorer`` on ``score`` and ``eval``, ``reward.scorer`` in a
recipe):
- ``default``: ``judge.py`` (whole-response answer extraction, math-verify equivalence, the project
  grammar) with the base rewards of ``functions.py``.
- ``reference``: ``reference.py``, the reference code's answer check, format check and tiered
  reward; it offers accuracy and tiered, so the accuracy, tiered, alternating and scaffold rewards.

A reward (``functions.Reward``) says which base reward decides at a step; the scorer supplies the
verdict and that base reward's rule. Both are needed together because the reference's tiered rule
reads its own format verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from parallel_r1.rewards.functions import BASE_REWARDS, Reward, VerdictLike
from parallel_r1.rewards.judge import judge_many
from parallel_r1.rewards.reference import REFERENCE_BASE_REWARDS, reference_judge

DEFAULT_SCORER = "default"


def _reference_many(responses: Sequence[str], golds: Sequence[str]) -> list:
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
    return [reference_judge(r, g) for r, g in zip(responses, golds, strict=True)]


@dataclass(frozen=True)
class Scorer:
    name: str
    judge_many: Callable[[Sequence[str], Sequence[str]], list]
    base_rewards: Mapping[str, Callable[[VerdictLike], float]]

    def judge(self, response: str, gold: str) -> VerdictLike:
        return self.judge_many([response], [gold])[0]

    def check(self, reward: Reward) -> None:
        """Fail loud when ``reward`` can ask for a base reward this scorer does not define."""
        missing = [c for c in reward.components() if c not in self.base_rewards]
        if missing:
            raise ValueError(f"scorer {self.name!r} has no {'/'.join(missing)} reward, so it cannot score "
                             f"{reward.name!r}; it offers rewards built on {', '.join(self.base_rewards)}")

    def reward(self, reward: Reward, verdict: VerdictLike, step: int) -> float:
        """``reward`` at ``step`` under this scorer's rule for the base reward that decides then."""
        return float(self.base_rewards[reward.component(step)](verdict))


SCORERS: dict[str, Scorer] = {
    "default": Scorer("default", judge_many, BASE_REWARDS),
    "reference": Scorer("reference", _reference_many, REFERENCE_BASE_REWARDS),
}


def get_scorer(name: str) -> Scorer:
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; valid: {', '.join(SCORERS)}")
    return SCORERS[name]
