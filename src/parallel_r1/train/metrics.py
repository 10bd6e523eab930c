"""Per-step training metrics: ``metrics.jsonl`` (one JSON object per step), progress, optional sinks.

Every row has ``stage``, ``step`` (global, from 1), ``stage_step``, ``type`` and the rollout metrics
``reward_mean``, ``accuracy``, ``parallel_ratio``, ``format_valid_ratio``, ``relative_position_mean``,
``response_length_mean``, ``critical_path_mean`` (null on SFT rows, which have no rollouts), plus the
update's ``loss``, ``clip_fraction``, ``entropy``, ``kl``, ``grad_norm``, ``lr`` and the timing fields
``TIMING_KEYS`` (the only ones allowed to differ between a resumed and an uninterrupted run).

- parallel ratio: share of responses with at least one ``<Parallel>`` (docs/paper.md section 6);
- relative position: index of a block's ``<Parallel>`` token / response length, averaged over all
  blocks of the step (docs/paper.md section 7);
- critical path: tokens on the longest route through the response (the engine's count).

A Rich progress bar with ETA runs on the main process when stderr is a terminal; TensorBoard scalars
when ``tensorboard`` is installed (unless turned off); W&B only when a project is named and the
package is installed (named but missing is an error).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from parallel_r1.train.dist import Dist

TIMING_KEYS = frozenset({"tokens_per_s", "step_time_s", "generate_time_s", "update_time_s", "elapsed_s"})
ROLLOUT_KEYS = (
    "reward_mean",
    "accuracy",
    "parallel_ratio",
    "format_valid_ratio",
    "relative_position_mean",
    "response_length_mean",
    "critical_path_mean",
)


def rollout_metrics(rollouts: Sequence, verdicts: Sequence, dist: Dist) -> dict:
    """Means over every process's rollouts of one step (all processes call this)."""
    sums = [0.0] * 9
    for r, v in zip(rollouts, verdicts, strict=True):
        n = max(len(r.response_ids), 1)
        positions = [b.parallel / n for b in r.blocks]
        parts = (r.reward, v.correct, v.num_parallel > 0, v.format_valid, len(r.response_ids),
                 r.critical_path_tokens, 1.0, sum(positions), len(positions))  # fmt: skip
        sums = [s + float(p) for s, p in zip(sums, parts, strict=True)]
    total = dist.sum(sums).tolist()
    count, block_count = total[6], total[8]
    mean_keys = ("reward_mean", "accuracy", "parallel_ratio", "format_valid_ratio",
                 "response_length_mean", "critical_path_mean")  # fmt: skip
    out = {k: (t / count if count else None) for k, t in zip(mean_keys, total[:6], strict=True)}
    out["relative_position_mean"] = total[7] / block_count if block_count else None
    out["num_rollouts"] = int(count)
    return {k: out[k] for k in (*ROLLOUT_KEYS, "num_rollouts")}


def empty_rollout_metrics() -> dict:
    return dict.fromkeys(ROLLOUT_KEYS)


def _clean(value):
    """JSON has no NaN / inf: write them as null (and never crash the log over one)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Appends rows to ``metrics.jsonl`` (main process only) and forwards them to the optional sinks."""

    def __init__(self, output: Path, dist: Dist, *, tensorboard: bool | None, wandb_project: str | None,
                 run_name: str, config: dict):  # fmt: skip
        self.path = output / "metrics.jsonl"
        self.is_main = dist.is_main
        self.tb = self.wandb = None
        if self.is_main:
            self.tb = _tensorboard(output, tensorboard)
            self.wandb = _wandb(wandb_project, run_name, config)

    def truncate(self, lines: int) -> None:
        """Keep the first ``lines`` rows (those a checkpoint covers); drop a half-written tail."""
        if self.is_main:
            truncate_jsonl(self.path, lines)

    def write(self, row: dict) -> None:
        if not self.is_main:
            return
        row = {k: _clean(v) for k, v in row.items()}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        scalars = {k: v for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(f"{row['stage']}/{key}", value, row["step"])
        if self.wandb is not None:
            self.wandb.log({f"{row['stage']}/{k}": v for k, v in scalars.items()}, step=row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def truncate_jsonl(path: Path, lines: int) -> None:
    if not path.exists():
        assert lines == 0, f"{path} is missing but the checkpoint covers {lines} of its lines"
        return
    kept = path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]
    assert len(kept) == lines and all(k.endswith("\n") for k in kept), (
        f"{path} has fewer complete lines than the checkpoint covers ({lines}): the log was edited or lost"
    )
    path.write_text("".join(kept), encoding="utf-8")


def _tensorboard(output: Path, setting: bool | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if setting:
            raise RuntimeError("logging.tensorboard is true but tensorboard is not installed") from None
        return None
    return SummaryWriter(str(output / "tensorboard")) if setting is not False else None


def _wandb(project: str | None, run_name: str, config: dict):
    if project is None:
        return None
    try:
        import wandb
    except ImportError:
        raise RuntimeError(f"logging.wandb_project is {project!r} but wandb is not installed") from None
    return wandb.init(project=project, name=run_name, config=config)


class Progress:
    """A Rich progress bar with ETA over a stage's steps; silent off a terminal."""

    def __init__(self, enabled: bool | None, dist: Dist):
        self.enabled = dist.is_main and (sys.stderr.isatty() if enabled is None else enabled)
        self._bar = self._task = None

    def start(self, stage: str, total: int, done: int) -> None:
        if not self.enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self.stop()
        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        )  # fmt: skip
        self._bar.start()
        self._task = self._bar.add_task(stage, total=total, completed=done, info="")

    def update(self, row: dict) -> None:
        if self._bar is None:
            return
        info = "  ".join(
            f"{k}={row[k]:.3g}" for k in ("loss", "reward_mean", "accuracy", "parallel_ratio")
            if isinstance(row.get(k), int | float)
        )  # fmt: skip
        self._bar.update(self._task, advance=1, info=info)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
