"""``parallel-r1 score``: JSON Lines of (response, answer) in, one JSON verdict per line out.

Contract (DESIGN.md): input lines carry ``response`` and ``answer``; each output line has at least
``format_valid``, ``num_parallel``, ``correct`` and ``reward``. A summary goes to stderr.
Large inputs are judged by a pool of worker processes (judging is CPU-bound: parsing, sympy).
``--scorer reference`` judges and rewards by the reference code's rules (``rewards/reference.py``).
An input with no line to score (empty, or every line skipped) is an error (exit 2), not accuracy 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

PARALLEL_THRESHOLD = 512  # below this many lines a process pool costs more than it saves
CHUNK = 64


class BadLine(ValueError):
    """A malformed input line; the message names its line number."""


@dataclass
class Row:
    line_no: int
    record: dict


def read_rows(lines: Iterable[str | bytes], skip_bad: bool, errors: list[str]) -> Iterator[Row]:
    """Parse JSONL, check the two required fields. Bad lines raise ``BadLine`` unless ``skip_bad``.

    Byte lines are decoded here, one at a time, so a line that is not UTF-8 is one bad line (named,
    skippable) rather than a crash or a silently altered response."""
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8").removeprefix("\ufeff") if isinstance(line, bytes) else line
            record = json.loads(text)
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            for key in ("response", "answer"):
                if key not in record:
                    raise ValueError(f"missing field {key!r}")
            if not isinstance(record["response"], str):
                raise ValueError("field 'response' must be a string")
            if not isinstance(record["answer"], str | int | float) or isinstance(record["answer"], bool):
                raise ValueError("field 'answer' must be a string or a number")
        except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            message = f"line {line_no}: {_reason(exc)}"
            if not skip_bad:
                raise BadLine(message) from exc
            errors.append(message)
            continue
        yield Row(line_no, record)


def _reason(exc: ValueError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at byte {exc.start} of the line"
    return str(exc)


def judge_row(args: tuple[dict, str, int, str]) -> dict:
    """One verdict as a JSON-able dict; runs in a worker process for large inputs."""
    from parallel_r1.rewards import get_reward, get_scorer

    record, reward_name, step, scorer_name = args
    scorer = get_scorer(scorer_name)
    verdict = scorer.judge(record["response"], str(record["answer"]))
    out = {"id": record["id"]} if "id" in record else {}
    out.update(verdict.to_dict())
    out["reward"] = scorer.reward(get_reward(reward_name), verdict, step)
    return out


def judge_all(rows: Iterable[Row], reward: str, step: int, workers: int, scorer: str = "default") -> Iterator[dict]:
    """Verdicts in input order; a process pool when ``workers > 1``."""
    jobs = ((row.record, reward, step, scorer) for row in rows)
    if workers <= 1:
        yield from map(judge_row, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(judge_row, jobs, chunksize=CHUNK)


@dataclass
class Summary:
    n: int = 0
    correct: int = 0
    parallel: int = 0
    valid: int = 0
    reward: float = 0.0

    def add(self, verdict: dict) -> None:
        self.n += 1
        self.correct += bool(verdict["correct"])
        self.parallel += verdict["num_parallel"] > 0
        self.valid += bool(verdict["format_valid"])
        self.reward += verdict["reward"]

    def as_dict(self) -> dict:
        d = max(self.n, 1)
        return {
            "n": self.n,
            "accuracy": self.correct / d,
            "parallel_ratio": self.parallel / d,
            "format_valid_ratio": self.valid / d,
            "mean_reward": self.reward / d,
        }


def _progress(total: int | None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    return Progress(*columns, transient=True, disable=not sys.stderr.isatty())


def _open_in(path: str):
    """The input as byte lines (``read_rows`` decodes them); a missing or unreadable file is a usage error."""
    if path == "-":
        return contextlib.nullcontext(sys.stdin.buffer)
    if Path(path).is_dir():
        raise typer.BadParameter(f"{path} is a directory, not a file", param_hint="--input")
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the caller's with
    except FileNotFoundError:
        raise typer.BadParameter(f"no such file: {path}", param_hint="--input") from None
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror or exc}", param_hint="--input") from None


def _open_out(path: str):
    if path == "-":
        return contextlib.nullcontext(sys.stdout)
    return open(path, "w", encoding="utf-8")


def _check_reward(reward: str, scorer: str) -> None:
    """Bad ``--reward`` / ``--scorer`` values (or a reward the scorer has no rule for) are usage errors."""
    from parallel_r1.rewards import get_reward, get_scorer

    try:
        built = get_reward(reward)
    except (KeyError, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--reward") from exc
    try:
        get_scorer(scorer).check(built)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scorer") from exc


def _no_input(bad: list[str]) -> None:
    """Nothing to score: say so and exit 2 (a summary with accuracy 0.0 would read as a result)."""
    for message in bad:
        typer.echo(f"skipped {message}", err=True)
    why = f"all {len(bad)} non-blank line(s) were skipped" if bad else "the input has no non-blank line"
    typer.echo(f"error: no input to score ({why})", err=True)
    raise typer.Exit(2)


def score(
    input: Annotated[str, typer.Option("--input", "-i", help="JSONL with `response` and `answer`; - for stdin")] = "-",
    output: Annotated[str, typer.Option("--output", "-o", help="where verdicts go; - for stdout")] = "-",
    reward: Annotated[str, typer.Option(help="reward function: accuracy, parallel, tiered, alternating, "
                                              "parallel_only, scaffold")] = "accuracy",
    step: Annotated[int, typer.Option(min=1, help="global training step (for alternating / scaffold)")] = 1,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="report malformed lines and go on")] = False,
    workers: Annotated[int, typer.Option(min=0, help="worker processes; 0 = one per CPU core for large inputs")] = 0,
    scorer: Annotated[str, typer.Option(help="default (whole-response answer, math-verify, our grammar) or "
                                             "reference (the reference code's answer check, format check "
                                             "and tiered reward)")] = "default",
) -> None:
    """Judge responses: format validity, parallel blocks, correctness and reward, one JSON line each."""
    _check_reward(reward, scorer)
    bad: list[str] = []
    with _open_in(input) as fin:
        try:
            rows = list(read_rows(fin, skip_bad, bad))
        except BadLine as exc:
            typer.echo(f"error: {'stdin' if input == '-' else input}, {exc}", err=True)
            raise typer.Exit(2) from exc
    if not rows:
        _no_input(bad)
    if workers == 0:
        workers = (os.cpu_count() or 1) if len(rows) >= PARALLEL_THRESHOLD else 1
    summary = Summary()
    with _open_out(output) as fout, _progress(len(rows)) as progress:
        task = progress.add_task("score", total=len(rows))
        for verdict in judge_all(rows, reward, step, workers, scorer):
            fout.write(json.dumps(verdict, ensure_ascii=False) + "\n")
            summary.add(verdict)
            progress.advance(task)
    for message in bad:
        typer.echo(f"skipped {message}", err=True)
    stats = summary.as_dict() | {"skipped": len(bad), "reward": reward, "step": step, "scorer": scorer}
    typer.echo(json.dumps(stats), err=True)
