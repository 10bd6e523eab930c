"""Judge one response: parse its parallel structure once, extract the final answer, check it.

The ``Verdict`` is everything a reward function or a metric needs; nothing downstream re-parses the
text. Departures from the reference reward code (docs/paper.md section 4):
1. The answer comes from ``parallel_r1.format.extract_final_answer`` over the whole response (last
   ``Final Answer:`` line, else the last ``\\boxed{}``), not from the last 300 characters only.
2. Equivalence (``verify.py``) instead of exact match after Minerva normalisation.
3. Format validity is the project grammar's (``parallel_r1.format.parse``), which is stricter than
   the reference on nesting (a block inside a path is invalid here).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from parallel_r1.format import extract_final_answer, parse
from parallel_r1.rewards.verify import AnswerChecker, check_answer


@dataclass(frozen=True)
class Verdict:
    """What the judge found in one response.

    ``num_parallel`` counts ``<Parallel>`` tags (closed or not), ``num_valid_blocks`` the blocks that
    pass the grammar; ``format_valid`` is the whole response's validity (True for a response with no
    tags at all). ``errors`` holds format errors (prefixed ``format:``) and answer-check problems
    (prefixed ``answer:``, e.g. a math-verify timeout); ``timed_out`` flags the latter case."""

    correct: bool
    format_valid: bool
    num_parallel: int
    num_valid_blocks: int
    extracted: str | None
    errors: tuple[str, ...] = ()
    timed_out: bool = False
    check_method: str = ""
    relative_positions: tuple[float, ...] = field(default=())

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["errors"] = list(self.errors)
        d["relative_positions"] = list(self.relative_positions)
        return d


def judge(response: str, gold: str, *, checker: AnswerChecker | None = None,
          timeout: float | None = None) -> Verdict:
    """Parse ``response``, extract its final answer and compare it with ``gold``.

    Thread-safe. ``checker`` defaults to the shared one in ``verify.py``; ``timeout`` (seconds) to
    the checker's."""
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    parsed = parse(response)
    extracted = extract_final_answer(response)
    check = check_answer(extracted, gold, timeout=timeout, checker=checker)
    errors = [f"format: {e}" for e in parsed.errors]
    if extracted is None:
        errors.append("answer: no final answer found")
    if check.error is not None:
        errors.append(f"answer: {check.error}")
    return Verdict(
        correct=check.correct,
        format_valid=parsed.valid,
        num_parallel=parsed.num_parallel,
        num_valid_blocks=parsed.num_valid_blocks,
        extracted=extracted,
        errors=tuple(errors),
        timed_out=check.timed_out,
        check_method=check.method,
        relative_positions=tuple(parsed.relative_positions),
    )


def judge_many(responses: Sequence[str], golds: Sequence[str], *, checker: AnswerChecker | None = None,
               timeout: float | None = None, num_threads: int = 4) -> list[Verdict]:
    """``judge`` over aligned lists, ``num_threads`` at a time (math-verify checks then run in
    parallel worker processes, up to the checker's pool size). Order is kept."""
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        return list(pool.map(lambda rg: judge(*rg, checker=checker, timeout=timeout), zip(responses, golds, strict=True)))
