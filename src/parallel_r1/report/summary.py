"""Markdown summary of a training run: stages, per-stage statistics of every logged number, the
relative-position trend (docs/paper.md 7), and links to the plots.

Known metrics come first in each table, in ``METRIC_ALIASES`` order; every other numeric field
follows in order of first appearance, so fields this module has never heard of still show up.
"""

from __future__ import annotations

import math
from pathlib import Path

from parallel_r1.report.load import METRIC_ALIASES, RunMetrics

SKIP_FIELDS = {"step", "stage"}


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.4g}"


def numeric_fields(run: RunMetrics, stage: str) -> list[str]:
    """Metric names to tabulate for ``stage``: known metrics (canonical names) then unknown fields."""
    rows = [r for r in run.rows if r["stage"] == stage]
    known = [m for m in METRIC_ALIASES if run.series(m, stage)[0]]
    aliased = {name for m in known for name in METRIC_ALIASES[m]}
    extra = {}
    for row in rows:
        for key, value in row.items():
            if key in SKIP_FIELDS or key in aliased or isinstance(value, bool):
                continue
            if isinstance(value, int | float) and math.isfinite(value):
                extra[key] = None
    return known + list(extra)


def stage_table(run: RunMetrics, stage: str) -> str:
    lines = ["| metric | first | last | min | max | mean |", "|---|---|---|---|---|---|"]
    for metric in numeric_fields(run, stage):
        _, values = run.series(metric, stage)
        if not values:
            continue
        stats = [values[0], values[-1], min(values), max(values), sum(values) / len(values)]
        lines.append(f"| {metric} | " + " | ".join(_fmt(v) for v in stats) + " |")
    return "\n".join(lines)


def position_trend(run: RunMetrics, stage: str) -> str | None:
    """Mean relative position over the first and the last quarter of the stage's logged steps."""
    steps, values = run.series("relative_position_mean", stage)
    if len(values) < 2:
        return None
    q = max(1, len(values) // 4)
    early, late = sum(values[:q]) / q, sum(values[-q:]) / q
    word = "rises" if late > early else "falls" if late < early else "stays flat"
    return (
        f"- {stage}: {word} from {early:.3f} (steps {steps[0]}-{steps[q - 1]}) "
        f"to {late:.3f} (steps {steps[-q]}-{steps[-1]})"
    )


def summary_markdown(run: RunMetrics, run_dir: Path, plots: list[Path], skipped: list[str]) -> str:
    parts = [f"# Training report: {run_dir.name or run_dir}", ""]
    parts.append(f"Source: `{run.path}` ({len(run.rows)} rows).")
    parts += [f"Warning: {w}" for w in run.warnings]
    parts += ["", "| stage | rows | steps |", "|---|---|---|"]
    for stage in run.stages:
        steps = [r["step"] for r in run.rows if r["stage"] == stage]
        parts.append(f"| {stage} | {len(steps)} | {min(steps)}-{max(steps)} |")
    trends = [t for t in (position_trend(run, s) for s in run.stages) if t]
    if trends:
        parts += ["", "## Relative position of parallel blocks", "", *trends]
    for stage in run.stages:
        parts += ["", f"## Stage `{stage}`", "", stage_table(run, stage)]
    parts += ["", "## Plots", ""]
    parts += [f"![{p.stem}]({p.relative_to(run_dir).as_posix() if p.is_relative_to(run_dir) else p})" for p in plots]
    parts += [f"- skipped {s}" for s in skipped]
    return "\n".join(parts) + "\n"
