"""The problem record every problem source yields."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """A verifiable problem: ``answer`` is the gold final answer as a string."""

    id: str
    question: str
    answer: str
