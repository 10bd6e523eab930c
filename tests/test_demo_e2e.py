"""End to end: ``parallel-r1 demo --quick --ablation`` (one ablation seed) through the real CLI, the real
runner and a real tiny model; checks that every output exists, is well-formed and loads. The numbers
of a quick run mean nothing and are not checked."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from parallel_r1.cli import app


@pytest.mark.slow
def test_quick_demo_writes_a_complete_loadable_run(tmp_path):
    from parallel_r1.eval.loading import load_model

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--ablation", "--ablation-seeds", "1", "--output", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)

    report = json.loads((out / "report.json").read_text())
    assert list(report["stages"]) == ["stage0", "sft", "rl"]
    for stage in report["stages"]:
        for key in ("hard_accuracy", "hard_accuracy_se", "parallel_ratio", "easy_accuracy"):
            assert 0.0 <= report["stages"][stage][key] <= 1.0, (stage, key)
    assert report["stages"]["stage0"]["parallel_ratio"] == 0.0 or report["config"]["quick"]
    assert report["config"]["quick"] is True and report["eval"]["sets"]["hard"]["problems"] == 16
    assert set(report["teacher"]["splits"]) == {"toy-easy", "toy-hard"}
    assert {"wall_s", "cpu_s", "peak_rss_mb", "phases"} <= set(report["resources"])
    assert set(report["ablation"]["arms"]) == {"sequential", "accuracy", "alternating"}
    assert report["ablation"]["arms"]["sequential"]["start"] == "stage0"
    assert report["ablation"]["arms"]["alternating"]["start"] == "sft"
    assert {t["target"] for t in report["targets"]} >= {"parallel ratio after RL > 0", "peak RSS <= 4 GB"}

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["stage0"] * 40 + ["sft"] * 10 + ["rl"] * 2
    assert all(r["parallel_ratio"] is not None for r in rows if r["stage"] == "rl")
    plots = report["outputs"]["plots"]
    assert {"plots/reward_accuracy.png", "plots/parallel_ratio.png", "plots/ablation_parallel_ratio.png"} <= set(plots)
    # relative_position.png needs a block in some RL rollout; a 2-step quick run may have none
    assert len(plots) + len(report["outputs"]["plots_skipped"]) == 5
    for name in plots:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    md = (out / "report.md").read_text()
    assert "| checkpoint | hard acc." in md and "Reward ablation" in md and "not a result" in md

    loaded = load_model(str(out / "model"), device="cpu", dtype="float32")
    assert set(loaded.tag_ids) == {"<Parallel>", "</Parallel>", "<Path>", "</Path>", "<Summary>", "</Summary>"}
    # the exported model records how the RL stage prompted it, so `eval DIR/model` prompts it the same way
    record = json.loads((out / "model" / "parallel_r1.json").read_text())
    assert record["prompt_template"] == "{problem}\nUse parallel paths." and record["stage"] == "rl"
    assert (out / "eval" / "rl.json").is_file() and (out / "data" / "traces.jsonl").is_file()
