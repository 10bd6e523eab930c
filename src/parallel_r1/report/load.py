"""Read a training run's ``metrics.jsonl`` into per-stage series.

1. One JSON object per line; ``step`` (an int) is required, ``stage`` names the curriculum stage
   (rows without one go to the stage ``"run"``). Every other field is optional and unknown fields are
   kept: a plot or a table asks for the fields it knows and skips rows that lack them.
2. Known metrics go by the trainer's names (``train/metrics.py``); ``METRIC_ALIASES`` also accepts
   the spellings other tools use (``mean_relative_position`` ...). In a row, the first alias that
   holds a finite number wins (the trainer writes null where a metric does not apply, e.g. rollout
   metrics on SFT steps). Any other field is read under its own name.
3. Fail loud on a missing, empty or undecodable file and on a malformed line, naming the file and the
   line (``parallel_r1.files``). One exception: a
   truncated *last* line is what a run killed mid-write leaves behind, so it is dropped with a
   warning instead (``warnings`` on the result).
4. When a resumed run repeated a (stage, step), the later row wins.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from parallel_r1.files import parse_json, read_text

METRIC_ALIASES: dict[str, tuple[str, ...]] = {
    "reward_mean": ("reward_mean", "reward"),
    "accuracy": ("accuracy", "acc"),
    "parallel_ratio": ("parallel_ratio",),
    "relative_position_mean": ("relative_position_mean", "mean_relative_position", "relative_position"),
    "format_valid_ratio": ("format_valid_ratio",),
    "response_length_mean": ("response_length_mean", "mean_response_tokens"),
    "critical_path_mean": ("critical_path_mean", "mean_critical_path_tokens"),
    "loss": ("loss",),
}


class MetricsError(ValueError):
    """The metrics file is missing, empty or malformed; the message says which and where."""


@dataclass
class RunMetrics:
    path: Path
    rows: list[dict]
    warnings: list[str] = field(default_factory=list)

    @property
    def stages(self) -> list[str]:
        """Stage names in order of first appearance."""
        return list(dict.fromkeys(r["stage"] for r in self.rows))

    def series(self, metric: str, stage: str) -> tuple[list[int], list[float]]:
        """(steps, values) of ``metric`` (a known metric or any field) in ``stage``, in row order;
        rows without a finite number for it are skipped."""
        names = METRIC_ALIASES.get(metric, (metric,))
        steps, values = [], []
        for row in self.rows:
            if row["stage"] != stage:
                continue
            value = next((row[n] for n in names if _is_finite(row.get(n))), None)
            if value is not None:
                steps.append(row["step"])
                values.append(float(value))
        return steps, values

    def has(self, metric: str) -> bool:
        return any(self.series(metric, s)[0] for s in self.stages)


def _is_finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse_line(line: str, line_no: int, path: Path) -> dict:
    row = parse_json(line, path, line_no, MetricsError)
    if not isinstance(row, dict):
        raise MetricsError(f"{path}, line {line_no}: expected a JSON object, got {type(row).__name__}")
    step = row.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        raise MetricsError(f"{path}, line {line_no}: field 'step' must be an integer, got {step!r}")
    row["stage"] = str(row.get("stage") or "run")
    return row


def _cut_by_a_kill(line: str) -> bool:
    """A last line that a kill cut mid-write: not JSON, and without the closing brace of a row."""
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return not line.rstrip().endswith("}")
    return False


def load_metrics(path: str | Path) -> RunMetrics:
    """Read ``path`` (module docstring for the rules)."""
    path = Path(path)
    if not path.exists():
        raise MetricsError(f"no metrics file at {path} (a training run writes metrics.jsonl in its output dir)")
    text = read_text(path, "metrics file", MetricsError)  # a folder, unreadable, not UTF-8: named errors
    # split on "\n" only, as files.json_lines does (a U+2028 inside a JSON string is not a line end)
    lines = [(i, ln) for i, ln in enumerate(text.split("\n"), 1) if ln.strip()]
    if not lines:
        raise MetricsError(f"metrics file {path} is empty: the run has not logged a step yet")
    rows: dict[tuple[str, int], dict] = {}
    warnings = []
    for n, (line_no, line) in enumerate(lines):
        if n == len(lines) - 1 and _cut_by_a_kill(line):
            warnings.append(f"{path}: dropped a truncated last line {line_no}")
            continue
        row = _parse_line(line, line_no, path)
        rows.pop((row["stage"], row["step"]), None)  # re-insert so a repeated step takes the later place
        rows[(row["stage"], row["step"])] = row
    if not rows:
        raise MetricsError(f"metrics file {path} holds no complete row")
    return RunMetrics(path, list(rows.values()), warnings)
