"""``parallel-r1 report``: reading metrics.jsonl, plots, the Markdown summary, and bad input."""

from __future__ import annotations

import json
import struct

import pytest
from typer.testing import CliRunner

from parallel_r1.report import MetricsError, load_metrics, report, write_report
from parallel_r1.report.plots import PLOTS, auto_window, build_figure, moving_average

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_rows(path, rows, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")


def curriculum_rows():
    """An SFT stage (loss only) then an RL stage whose blocks move later, with an unknown extra field."""
    rows = [{"stage": "sft", "step": s, "loss": 2.0 - 0.1 * s} for s in range(4)]
    for s in range(4, 12):
        rows.append({
            "stage": "rl-easy", "step": s, "reward_mean": 0.1 * s, "accuracy": 0.05 * s,
            "parallel_ratio": 0.5, "relative_position": 0.1 + 0.05 * (s - 4), "format_valid_ratio": 1.0,
            "tokens_per_s": 100.0 + s, "note": "text fields are ignored", "flag": True,
        })
    return rows


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def test_report_writes_three_plots_and_summary(tmp_path):
    write_rows(tmp_path / "metrics.jsonl", curriculum_rows())
    out = write_report(tmp_path)
    assert out == tmp_path / "report.md"
    for name in ("reward_accuracy.png", "parallel_ratio.png", "relative_position.png"):
        width, height = png_size(tmp_path / "plots" / name)
        assert width > 300 and height > 200
    text = out.read_text()
    assert "| sft | 4 | 0-3 |" in text and "| rl-easy | 8 | 4-11 |" in text
    assert "![relative_position](plots/relative_position.png)" in text
    # relative position 0.1 .. 0.45 over 8 steps: first quarter (2 steps) 0.125, last quarter 0.425
    assert "- rl-easy: rises from 0.125 (steps 4-5) to 0.425 (steps 10-11)" in text
    # the unknown numeric field is tabulated; text and bool fields are not
    assert "| tokens_per_s | 104 | 111 | 104 | 111 | 107.5 |" in text
    assert "note" not in text and "flag" not in text
    assert "| loss | 2 | 1.7 | 1.7 | 2 | 1.85 |" in text


def test_stage_without_a_metric_draws_no_line_and_missing_metric_skips_plot(tmp_path):
    rows = [{"stage": "sft", "step": s, "loss": 1.0} for s in range(3)]
    rows += [{"stage": "rl", "step": s, "reward_mean": 0.5, "accuracy": 0.5} for s in range(3, 6)]
    write_rows(tmp_path / "metrics.jsonl", rows)
    text = write_report(tmp_path).read_text()
    assert (tmp_path / "plots" / "reward_accuracy.png").is_file()
    assert not (tmp_path / "plots" / "parallel_ratio.png").exists()
    assert "skipped parallel_ratio.png (no 'parallel_ratio' in any row)" in text
    assert "skipped relative_position.png" in text


def test_aliases_and_repeated_steps(tmp_path):
    rows = [
        {"stage": "rl", "step": 1, "mean_relative_position": 0.2},
        {"stage": "rl", "step": 2, "mean_relative_position": 0.3},
        {"stage": "rl", "step": 1, "mean_relative_position": 0.9},  # a resumed run re-logged step 1
        {"step": 3, "mean_relative_position": None},  # no stage, no number: kept, not plotted
    ]
    write_rows(tmp_path / "m.jsonl", rows)
    run = load_metrics(tmp_path / "m.jsonl")
    assert run.stages == ["rl", "run"]
    assert run.series("relative_position_mean", "rl") == ([2, 1], [0.3, 0.9])
    assert run.series("relative_position_mean", "run") == ([], [])


def test_truncated_last_line_is_dropped_with_a_warning(tmp_path):
    write_rows(tmp_path / "metrics.jsonl", curriculum_rows()[:5], tail='{"stage": "rl-easy", "st')
    run = load_metrics(tmp_path / "metrics.jsonl")
    assert len(run.rows) == 5
    assert run.warnings == [f"{tmp_path / 'metrics.jsonl'}: dropped a truncated last line 6"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no metrics file at"),
        ("", "is empty"),
        ("\n  \n", "is empty"),
        ('{"step": 1}\nnot json\n{"step": 2}\n', "line 2: not valid JSON"),
        ('{"step": 1}\n[1, 2]\n', "line 2: expected a JSON object"),
        ('{"stage": "rl", "step": "3"}\n', "line 1: field 'step' must be an integer"),
        ('{"stage": "rl"}\n', "line 1: field 'step' must be an integer, got None"),
        ('{"stage": "rl", "st', "holds no complete row"),
    ],
)
def test_bad_metrics_files_fail_loud(tmp_path, content, message):
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    with pytest.raises(MetricsError, match=message):
        load_metrics(tmp_path / "metrics.jsonl")


def test_cli_reports_and_fails_cleanly(tmp_path):
    import typer

    app = typer.Typer()
    app.command()(report)
    runner = CliRunner()
    missing = runner.invoke(app, [str(tmp_path)])
    assert missing.exit_code == 2
    assert "error: no metrics file at" in missing.output
    write_rows(tmp_path / "metrics.jsonl", curriculum_rows())
    ok = runner.invoke(app, [str(tmp_path), "--smooth", "3"])
    assert ok.exit_code == 0, ok.output
    assert ok.output.strip() == str(tmp_path / "report.md")
    png_size(tmp_path / "plots" / "relative_position.png")


def test_moving_average():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([1.0, 2.0], 1) == [1.0, 2.0]
    # window 3: the first two points average what exists so far, then a trailing mean of three
    assert moving_average([3.0, 0.0, 6.0, 3.0, 9.0], 3) == [3.0, 1.5, 3.0, 3.0, 6.0]


def test_auto_window():
    assert [auto_window(n) for n in (0, 9, 10, 35, 40, 150, 499, 500, 5000)] == [1, 1, 3, 3, 4, 15, 49, 50, 50]


def _lines(ax):
    """(label, alpha, ydata) of every line on an axis; unlabelled lines carry matplotlib's '_child' names."""
    return [(ln.get_label(), ln.get_alpha(), list(ln.get_ydata())) for ln in ax.get_lines()]


def test_noisy_curves_get_a_smoothed_line_over_the_faint_raw_one(tmp_path):
    """Issue 18, defect 11: per-step reward was one raw, jagged line per stage. Now the raw series is
    drawn faint and unlabelled, and a trailing mean over it bold, with the window in its legend label."""
    values = [0.0, 1.0] * 20  # 40 steps of alternating noise: the mean is flat at 0.5 once the window is full
    rows = [{"stage": "rl", "step": s + 1, "reward_mean": v, "accuracy": v} for s, v in enumerate(values)]
    write_rows(tmp_path / "metrics.jsonl", rows)
    run = load_metrics(tmp_path / "metrics.jsonl")
    fig = build_figure(run, PLOTS[0])
    top = fig.axes[0]
    (raw_label, raw_alpha, raw_y), (label, alpha, smooth_y) = _lines(top)
    assert raw_label.startswith("_") and raw_alpha < 0.5 and raw_y == values
    assert label == "rl (4-step mean)" and alpha is None  # auto window: 40 steps // 10
    assert smooth_y == moving_average(values, 4) and smooth_y[3:] == [0.5] * 37
    legend = top.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["rl (4-step mean)"]
    assert legend.get_title().get_text() == "stage (faint: per step)"
    # an explicit window wins; 1 draws the raw line alone, labelled with the stage
    assert _lines(build_figure(run, PLOTS[0], smooth=7).axes[0])[1][0] == "rl (7-step mean)"
    assert [(la, ys) for la, _, ys in _lines(build_figure(run, PLOTS[0], smooth=1).axes[0])] == [("rl", values)]


def test_short_stage_is_drawn_raw_beside_a_smoothed_one(tmp_path):
    rows = [{"stage": "rl-easy", "step": s, "parallel_ratio": 0.5} for s in range(1, 6)]
    rows += [{"stage": "rl", "step": s, "parallel_ratio": 0.1 * (s % 3)} for s in range(6, 36)]
    write_rows(tmp_path / "metrics.jsonl", rows)
    ax = build_figure(load_metrics(tmp_path / "metrics.jsonl"), PLOTS[1]).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["rl-easy", "rl (3-step mean)"]
    assert len(ax.get_lines()) == 3  # rl-easy raw (5 steps: nothing to smooth), rl raw + rl mean


def test_rows_in_the_trainers_own_shape(tmp_path):
    """Field names come from ``train/metrics.py`` (ROLLOUT_KEYS): if the trainer renames one, this fails
    instead of the report silently dropping a plot. SFT rows carry nulls for the rollout metrics and
    their own ``response_tokens`` count (a regression: a null alias once hid it and the summary crashed
    on an empty series)."""
    from parallel_r1.report.load import METRIC_ALIASES
    from parallel_r1.train.metrics import ROLLOUT_KEYS

    assert set(ROLLOUT_KEYS) <= set(METRIC_ALIASES)
    rows = [{"stage": "sft", "step": s, "stage_step": s, "type": "sft", "loss": 1.0, "response_tokens": 600 + s,
             **dict.fromkeys(ROLLOUT_KEYS)} for s in (1, 2)]
    for s in (3, 4, 5, 6):
        values = {k: 0.1 * s for k in ROLLOUT_KEYS}
        rows.append({"stage": "rl-hard", "step": s, "stage_step": s - 2, "type": "grpo", **values})
    write_rows(tmp_path / "metrics.jsonl", rows)
    text = write_report(tmp_path).read_text()
    for name in ("reward_accuracy.png", "parallel_ratio.png", "relative_position.png"):
        assert (tmp_path / "plots" / name).is_file()
    run = load_metrics(tmp_path / "metrics.jsonl")
    for metric in ROLLOUT_KEYS:
        assert run.series(metric, "rl-hard")[0] == [3, 4, 5, 6], metric
        assert run.series(metric, "sft") == ([], []), metric
    assert "- rl-hard: rises from 0.300 (steps 3-3) to 0.600 (steps 6-6)" in text
    assert "| stage_step | 1 | 4 | 1 | 4 | 2.5 |" in text
    assert "| response_tokens | 601 | 602 | 601 | 602 | 601.5 |" in text
