"""PNG plots of training dynamics: one figure per topic, one line per curriculum stage.

1. ``reward_accuracy.png``: mean reward and accuracy over steps.
2. ``parallel_ratio.png``: share of rollouts with a parallel block (and format-valid share when logged).
3. ``relative_position.png``: mean relative position of the blocks over steps, the paper's Figure 3/4
   (docs/paper.md section 7: it rises during RL, from exploration early to verification late).
A figure whose metrics appear in no row is skipped, and the caller is told which.

Per-step RL metrics are noisy (a batch of a few hundred rollouts), so each stage's raw series is drawn
faint and a trailing mean over it bold, the window in the legend label ("rl (15-step mean)"). The
window is given (``smooth``; 1 draws the raw lines only) or, by default, a tenth of the stage's logged
steps (``auto_window``). Steps where a metric is missing (e.g. no block, so no block position) are
skipped, so a window counts logged steps.
Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas directly, never through pyplot,
so no global backend is switched and nothing needs a display.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from parallel_r1.report.load import RunMetrics


@dataclass(frozen=True)
class PlotSpec:
    filename: str
    title: str
    panels: tuple[tuple[str, str], ...]  # (metric, y label); the first panel's metric is required


PLOTS = (
    PlotSpec("reward_accuracy.png", "Reward and accuracy", (("reward_mean", "mean reward"), ("accuracy", "accuracy"))),
    PlotSpec(
        "parallel_ratio.png", "Parallel ratio",
        (("parallel_ratio", "share with a <Parallel> block"), ("format_valid_ratio", "format-valid share")),
    ),
    PlotSpec(
        "relative_position.png", "Relative position of parallel blocks",
        (("relative_position_mean", "mean <Parallel> index / length"),),
    ),
)


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values (the first points average what exists so far)."""
    assert window >= 1, f"smoothing window must be >= 1, got {window}"
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def auto_window(n: int) -> int:
    """Default smoothing window for a series of ``n`` logged steps: 1 (no smoothing) below 10 steps,
    else a tenth of them, at least 3 and at most 50."""
    return 1 if n < 10 else max(3, min(50, n // 10))


def _draw_stage(ax, steps: list[int], values: list[float], stage: str, smooth: int | None) -> bool:
    """Draw one stage's series; True when it was smoothed (a faint raw line under a labelled mean)."""
    window = auto_window(len(steps)) if smooth is None else smooth
    if window <= 1:  # nothing to smooth: the raw line is the line
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=stage)
        return False
    # the raw points faint and unlabelled, the mean bold in the same colour, carrying the label
    (raw,) = ax.plot(steps, values, alpha=0.25, linewidth=1)
    ax.plot(steps, moving_average(values, window), color=raw.get_color(), linewidth=2,
            label=f"{stage} ({window}-step mean)")  # fmt: skip
    return True


def _draw_panel(ax, run: RunMetrics, metric: str, ylabel: str, smooth: int | None) -> None:
    smoothed = False
    for stage in run.stages:
        steps, values = run.series(metric, stage)
        if steps:
            smoothed |= _draw_stage(ax, steps, values, stage, smooth)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    title = "stage (faint: per step)" if smoothed else "stage"
    ax.legend(title=title, fontsize="small", title_fontsize="small")


def build_figure(run: RunMetrics, spec: PlotSpec, smooth: int | None = None) -> Figure | None:
    """One figure, not yet written; None when its first metric is absent from every row. ``smooth``:
    the trailing-mean window, None for ``auto_window`` per stage, 1 for the raw lines only."""
    if not run.has(spec.panels[0][0]):
        return None
    panels = [(m, label) for m, label in spec.panels if run.has(m)]
    fig = Figure(figsize=(7, 3.2 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (metric, label) in zip(axes, panels, strict=True):
        _draw_panel(ax, run, metric, label, smooth)
    axes[-1].set_xlabel("step")
    fig.suptitle(spec.title)
    return fig


def draw_plot(run: RunMetrics, spec: PlotSpec, out_dir: Path, smooth: int | None = None) -> Path | None:
    """Write one figure as ``out_dir/spec.filename``; None when there is nothing to draw."""
    fig = build_figure(run, spec, smooth)
    if fig is None:
        return None
    path = out_dir / spec.filename
    fig.savefig(path, dpi=110)
    return path


def draw_all(run: RunMetrics, out_dir: Path, smooth: int | None = None) -> tuple[list[Path], list[str]]:
    """All figures into ``out_dir``: (written paths, names of the figures skipped for lack of data)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    for spec in PLOTS:
        path = draw_plot(run, spec, out_dir, smooth)
        if path is None:
            skipped.append(f"{spec.filename} (no '{spec.panels[0][0]}' in any row)")
        else:
            written.append(path)
    return written, skipped
