"""Reward functions of ``(verdict, step) -> float``, picked by name from a registry.

Four base rewards read only the verdict (docs/paper.md section 4); schedules pick one of them per global
step. Steps count from 1 (the first optimiser step is step 1); a step < 1 is an error.

Base rewards (C = correct, V = whole response format-valid, B = at least one valid block,
P = at least one ``<Parallel>`` tag):
- ``accuracy``: +1 if C else -1.
- ``parallel`` (stage 1, gated): +1 if C and B else -1. Only one valid block is required, as the
  paper states it; other blocks in the response may be malformed.
- ``tiered``: +1.2 if C and V and B; +1.0 if C and V and not P (a plain sequential answer);
  -1.0 otherwise. Decision: a correct answer whose response is format-invalid (a malformed block,
  a stray tag) gets -1.0, the reference's "everything else"; otherwise a model could keep the
  accuracy reward while emitting broken tags.
- ``parallel_only`` (ablation, Table 4): +1 if V and B else -1; correctness is ignored. It rewards
  "a well-formed response with at least one valid block", not the number of blocks.

Schedules:
- ``alternating(window=10, accuracy_steps=8)``: accuracy when ``(step - 1) % window <
  accuracy_steps``, else tiered (steps 1-8 accuracy, 9-10 tiered, 11-18 accuracy, ...).
- ``scaffold(switch_step=200, window=10, accuracy_steps=8)``: alternating for ``step <=
  switch_step``, accuracy after. docs/paper.md: "alternating for steps 0-200, then accuracy"; with steps
  counted from 1 that is steps 1..200 inclusive, and step 201 is the first accuracy-only step.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

CORRECT = 1.0
WRONG = -1.0
CORRECT_PARALLEL = 1.2  # tiered bonus for a correct, valid parallel response


class VerdictLike(Protocol):
    correct: bool
    format_valid: bool
    num_parallel: int
    num_valid_blocks: int


def accuracy_reward(v: VerdictLike) -> float:
    return CORRECT if v.correct else WRONG


def parallel_gated_reward(v: VerdictLike) -> float:
    return CORRECT if v.correct and v.num_valid_blocks >= 1 else WRONG


def tiered_reward(v: VerdictLike) -> float:
    if v.correct and v.format_valid:
        if v.num_valid_blocks >= 1:
            return CORRECT_PARALLEL
        if v.num_parallel == 0:
            return CORRECT
    return WRONG


def parallel_only_reward(v: VerdictLike) -> float:
    return CORRECT if v.format_valid and v.num_valid_blocks >= 1 else WRONG


BASE_REWARDS: dict[str, Callable[[VerdictLike], float]] = {
    "accuracy": accuracy_reward,
    "parallel": parallel_gated_reward,
    "tiered": tiered_reward,
    "parallel_only": parallel_only_reward,
}


def check_step(step: int) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise TypeError(f"step must be an int, got {type(step).__name__} {step!r}")
    if step < 1:
        raise ValueError(f"step must be >= 1 (steps count from 1), got {step}")
    return int(step)


def _check_positive(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


class Reward:
    """A reward: ``reward(verdict, step) -> float``; ``component(step)`` names the base reward that
    decides at ``step``. Subclasses are frozen dataclasses (picklable, loggable via ``params``)."""

    name: str

    def component(self, step: int) -> str:
        raise NotImplementedError

    def components(self) -> tuple[str, ...]:
        """Every base reward ``component`` can name (a scorer checks it offers them all)."""
        raise NotImplementedError

    @property
    def params(self) -> dict:
        return asdict(self)

    def __call__(self, verdict: VerdictLike, step: int) -> float:
        return BASE_REWARDS[self.component(step)](verdict)


@dataclass(frozen=True)
class Fixed(Reward):
    """The same base reward at every step."""

    base: str

    def __post_init__(self) -> None:
        if self.base not in BASE_REWARDS:
            raise ValueError(f"unknown base reward {self.base!r}; valid: {sorted(BASE_REWARDS)}")

    @property
    def name(self) -> str:
        return self.base

    @property
    def params(self) -> dict:
        return {}

    def component(self, step: int) -> str:
        check_step(step)
        return self.base

    def components(self) -> tuple[str, ...]:
        return (self.base,)


@dataclass(frozen=True)
class Alternating(Reward):
    """Accuracy for the first ``accuracy_steps`` steps of every ``window``, tiered for the rest."""

    window: int = 10
    accuracy_steps: int = 8
    name = "alternating"

    def __post_init__(self) -> None:
        _check_positive("window", self.window, 1)
        _check_positive("accuracy_steps", self.accuracy_steps, 0)
        if self.accuracy_steps > self.window:
            raise ValueError(f"accuracy_steps ({self.accuracy_steps}) must be <= window ({self.window})")

    def component(self, step: int) -> str:
        step = check_step(step)
        return "accuracy" if (step - 1) % self.window < self.accuracy_steps else "tiered"

    def components(self) -> tuple[str, ...]:
        return ("accuracy", "tiered")


@dataclass(frozen=True)
class Scaffold(Reward):
    """Alternating up to and including ``switch_step``, accuracy from ``switch_step + 1`` on."""

    switch_step: int = 200
    window: int = 10
    accuracy_steps: int = 8
    name = "scaffold"

    def __post_init__(self) -> None:
        _check_positive("switch_step", self.switch_step, 0)
        Alternating(self.window, self.accuracy_steps)  # validates the window parameters

    def component(self, step: int) -> str:
        step = check_step(step)
        if step <= self.switch_step:
            return Alternating(self.window, self.accuracy_steps).component(step)
        return "accuracy"

    def components(self) -> tuple[str, ...]:
        return ("accuracy", "tiered")


REWARDS: dict[str, Callable[..., Reward]] = {
    "accuracy": lambda: Fixed("accuracy"),
    "parallel": lambda: Fixed("parallel"),
    "tiered": lambda: Fixed("tiered"),
    "parallel_only": lambda: Fixed("parallel_only"),
    "alternating": Alternating,
    "scaffold": Scaffold,
}


def get_reward(name: str, **params) -> Reward:
    """The reward registered as ``name``, built with ``params``; clear errors for unknown names and
    parameters (both list what is valid)."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; valid names: {', '.join(REWARDS)}")
    factory = REWARDS[name]
    accepted = list(inspect.signature(factory).parameters)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"reward {name!r} takes no parameter(s) {unknown}; "
                         f"valid: {accepted or 'none'}")
    return factory(**params)


def score(verdict: VerdictLike, reward: Reward, step: int) -> dict:
    """The reward and the verdict parts it read, as one loggable (JSON-ready) dict."""
    return {
        "reward": reward(verdict, step),
        "reward_name": reward.name,
        "reward_component": reward.component(step),
        "step": step,
        "correct": verdict.correct,
        "format_valid": verdict.format_valid,
        "num_parallel": verdict.num_parallel,
        "num_valid_blocks": verdict.num_valid_blocks,
        "timed_out": getattr(verdict, "timed_out", False),
    }
