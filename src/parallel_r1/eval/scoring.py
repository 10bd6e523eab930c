"""Which scorers judge an eval run (``eval --scorer``) and where their verdicts differ.

1. ``default`` or ``reference`` judges every response with that one scorer (``rewards.scorers``):
   every figure of the result (accuracy, format validity, valid blocks) is that scorer's.
2. ``both`` judges with the default scorer first and the reference scorer second. The first one's
   verdict fills the records, the response lines and the structure figures exactly as ``default``
   does; each response line also carries the second one's verdict under its name
   (``"reference": {"correct", "extracted", "format_valid"}``).
3. Each benchmark's ``by_scorer`` holds mean@k, pass@k and pass@ under every scorer used, and the
   result's ``average.by_scorer`` their unweighted means over benchmarks (as ``average_metrics``).
   With two scorers a benchmark's ``disagreements`` counts the responses they judge differently
   (correct under one, wrong under the other) and shows the first ``MAX_EXAMPLES`` of them.
4. Results stored before the setting existed were judged by the default scorer, so their configs are
   read as ``scorer: default`` on resume (``resume.LEGACY_DEFAULTS``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal, get_args

from parallel_r1.eval.metrics import SampleRecord, benchmark_metrics

ScorerChoice = Literal["default", "reference", "both"]  # typer checks it before any model is loaded
SCORER_CHOICES = get_args(ScorerChoice)
CORRECTNESS_KEYS = ("mean_at_k", "pass_at_k", "pass_at")
MAX_EXAMPLES = 3


def scorer_names(choice: str) -> tuple[str, ...]:
    """The scorers a ``--scorer`` choice runs, the one whose verdict fills the records first."""
    if choice not in SCORER_CHOICES:
        raise ValueError(f"unknown scorer {choice!r}; valid: {', '.join(SCORER_CHOICES)}")
    return ("default", "reference") if choice == "both" else (choice,)


def judge_with(names: Sequence[str], responses: Sequence[str], golds: Sequence[str]) -> dict[str, list]:
    """Verdicts of every response under each scorer named, keyed by scorer name."""
    from parallel_r1.rewards.scorers import get_scorer

    return {name: get_scorer(name).judge_many(responses, golds) for name in names}


def line_fields(verdict) -> dict:
    """What a response line records of a second scorer's verdict."""
    return {"correct": bool(verdict.correct), "extracted": verdict.extracted,
            "format_valid": bool(verdict.format_valid)}


def _correctness(records: Sequence[SampleRecord]) -> dict:
    metrics = benchmark_metrics(records)
    return {k: metrics[k] for k in CORRECTNESS_KEYS}


def scorer_metrics(records: Sequence[SampleRecord], rows: Sequence[dict], names: Sequence[str]) -> dict:
    """``by_scorer`` (and ``disagreements`` with two scorers) of one benchmark; ``records`` hold the
    first scorer's verdicts, ``rows`` (the response lines, in the same order) the others'."""
    if len(records) != len(rows):
        raise ValueError(f"{len(records)} records but {len(rows)} response lines")
    by_scorer = {names[0]: _correctness(records)}
    for name in names[1:]:
        by_scorer[name] = _correctness([replace(rec, correct=row[name]["correct"])
                                        for rec, row in zip(records, rows, strict=True)])
    out: dict = {"by_scorer": by_scorer}
    if len(names) == 2:
        out["disagreements"] = disagreements(rows, names)
    return out


def disagreements(rows: Sequence[dict], names: Sequence[str]) -> dict:
    """How many response lines the two scorers judge differently, with the first few as examples."""
    first, second = names
    differing = [row for row in rows if row["correct"] != row[second]["correct"]]
    examples = [{
        "problem_id": row["problem_id"], "sample_index": row["sample_index"], "gold": row["gold"],
        "extracted": {first: row["extracted"], second: row[second]["extracted"]},
        "correct": {first: row["correct"], second: row[second]["correct"]},
    } for row in differing[:MAX_EXAMPLES]]
    return {"count": len(differing), "responses": len(rows), "examples": examples}


def scorer_view(metrics: dict, name: str, first: str) -> dict:
    """``metrics`` (a benchmark's or the average) with the correctness figures of scorer ``name``.

    A benchmark stored before ``by_scorer`` existed holds only the first scorer's figures."""
    if name in metrics.get("by_scorer", {}):
        return {**metrics, **metrics["by_scorer"][name]}
    if name == first:
        return metrics
    raise ValueError(f"the result holds no figures of the {name!r} scorer")


def average_by_scorer(per_benchmark: dict[str, dict], names: Sequence[str]) -> dict:
    """Unweighted means over benchmarks of mean@k and pass@k under each scorer (point 3)."""
    out = {}
    for name in names:
        views = [scorer_view(m, name, names[0]) for m in per_benchmark.values()]
        out[name] = {k: sum(v[k] for v in views) / len(views) for k in ("mean_at_k", "pass_at_k")}
    return out
