"""Is a predicted final answer equivalent to the gold answer?

Two stages:
1. An exact fast path in the caller's thread (``normalize.py``): normalised strings that are equal,
   or plain numbers compared exactly. It settles most GSM8K-style answers without a process round
   trip and cannot hang (linear regexes, bounded number length).
2. Everything else goes to math-verify (symbolic / numeric equivalence, 6-place float rounding) in a
   killable worker process (``sandbox.py``), bounded by ``timeout`` seconds per check.

A timeout or a math-verify error counts as not correct, and is never silent: ``AnswerCheck`` says
``timed_out`` / carries the ``error``, and ``judge`` copies both into the verdict's errors.

Departures from the reference checker (Minerva normalisation + exact match on the last 300
characters, docs/paper.md section 4): equivalence instead of string equality, so the reference's false
negatives (``36.00`` vs ``36``, ``$1600.`` vs ``1600``) count as correct, and so do ``1,600``,
``\\frac{1}{2}`` vs ``0.5``, ``50\\%`` vs ``50`` (math-verify also takes ``50\\%`` for ``0.5``) and a
number followed by a unit (``19 pets``). See ``normalize.py`` for the exact rules.

The module-level ``check_answer`` uses one shared ``AnswerChecker`` built on first use (its worker
processes are daemons and are also stopped at interpreter exit); pass your own checker to control
the pool size or to close it early.
"""

from __future__ import annotations

import atexit
import os
import threading
from dataclasses import dataclass

from parallel_r1.rewards.normalize import fast_compare, normalize_answer
from parallel_r1.rewards.sandbox import VerifierPool

DEFAULT_TIMEOUT_S = 5.0  # math-verify's own default per check
MAX_ANSWER_CHARS = 2000  # longer "answers" are not answers; they are rejected without parsing


@dataclass(frozen=True)
class AnswerCheck:
    """Result of one comparison.

    ``method`` says what decided it: "missing" (no predicted answer), "exact" (fast path),
    "math_verify", "timeout", "error" (math-verify raised or its worker died) or "too_long"."""

    correct: bool
    method: str
    timed_out: bool = False
    error: str | None = None


class AnswerChecker:
    """Thread-safe answer checker owning a pool of math-verify worker processes."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_S, max_workers: int | None = None) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.timeout = timeout
        self.pool = VerifierPool(min(4, os.cpu_count() or 1) if max_workers is None else max_workers)

    def check(self, predicted: str | None, gold: str, timeout: float | None = None) -> AnswerCheck:
        """Fast path first, then math-verify bounded by ``timeout`` (default: the checker's)."""
        if not isinstance(gold, str) or not gold.strip():
            raise ValueError(f"gold answer must be a non-empty string, got {gold!r}")
        if predicted is None or not predicted.strip():
            return AnswerCheck(correct=False, method="missing")
        if len(predicted) > MAX_ANSWER_CHARS:
            return AnswerCheck(correct=False, method="too_long",
                               error=f"predicted answer has {len(predicted)} chars (> {MAX_ANSWER_CHARS})")
        pred_n, gold_n = normalize_answer(predicted), normalize_answer(gold)
        fast = fast_compare(pred_n, gold_n)
        if fast.decided:
            return AnswerCheck(correct=fast.correct, method="exact")
        outcome = self.pool.check(pred_n, gold_n, self.timeout if timeout is None else timeout)
        if outcome.status == "ok":
            return AnswerCheck(correct=outcome.value, method="math_verify")
        return AnswerCheck(correct=False, method=outcome.status, timed_out=outcome.status == "timeout",
                           error=outcome.error)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> AnswerChecker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_default: AnswerChecker | None = None
_default_lock = threading.Lock()


def _reset_default_lock_in_child() -> None:
    # the checker itself resets its pool on fork (sandbox.py); only the module lock needs a fresh copy
    global _default_lock
    _default_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_default_lock_in_child)


def default_checker() -> AnswerChecker:
    """The shared checker used when none is passed (created on first use, closed at exit)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = AnswerChecker()
            atexit.register(_default.close)
        return _default


def check_answer(predicted: str | None, gold: str, timeout: float | None = None,
                 checker: AnswerChecker | None = None) -> AnswerCheck:
    """Compare a predicted answer with the gold one; ``timeout`` defaults to the checker's (5 s)."""
    return (checker or default_checker()).check(predicted, gold, timeout)


def answers_match(predicted: str | None, gold: str, timeout: float | None = None,
                  checker: AnswerChecker | None = None) -> bool:
    """``check_answer(...).correct``: a timeout reads as False here. Where timeouts must be
    recorded (rewards, metrics), use ``check_answer`` or ``judge``."""
    return check_answer(predicted, gold, timeout, checker).correct
