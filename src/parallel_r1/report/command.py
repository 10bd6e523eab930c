"""``parallel-r1 report RUN_DIR``: plots and a Markdown summary of a training run's metrics.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from parallel_r1.report.load import MetricsError, load_metrics


def write_report(run_dir: Path, metrics: Path | None = None, smooth: int | None = None) -> Path:
    """Write ``run_dir/plots/*.png`` and ``run_dir/report.md``; return the report's path."""
    from parallel_r1.report.plots import draw_all  # matplotlib loads only when a report is drawn
    from parallel_r1.report.summary import summary_markdown

    run = load_metrics(metrics if metrics is not None else run_dir / "metrics.jsonl")
    plots, skipped = draw_all(run, run_dir / "plots", smooth)
    out = run_dir / "report.md"
    out.write_text(summary_markdown(run, run_dir, plots, skipped), encoding="utf-8")
    return out


def report(
    run_dir: Annotated[Path, typer.Argument(help="Training output directory (holds metrics.jsonl).")],
    metrics: Annotated[
        Path | None, typer.Option(help="Metrics file to read instead of RUN_DIR/metrics.jsonl.")
    ] = None,
    smooth: Annotated[
        int | None,
        typer.Option(min=1, help="Trailing-mean window drawn over the faint per-step curves; 1: raw only. "
                     "Default: a tenth of each stage's steps (none under 10 steps)."),
    ] = None,
) -> None:
    """Plot reward, accuracy, parallel ratio and block position over steps; write RUN_DIR/report.md."""
    try:
        out = write_report(run_dir, metrics, smooth)
    except MetricsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(str(out))
