"""``bench rl`` runs both sides on the same work and reports the figures (no timing assertions)."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from parallel_r1.bench.rl import bench_rl, make_config, run_rl_bench, run_rl_profile
from parallel_r1.bench.rl_profile import SECTIONS

SMALL = dict(model_size="tiny", prompts=2, group=2, completion_len=6, repeats=2, warmup=1)


def test_both_sides_do_the_same_work_and_the_json_has_the_figures():
    pytest.importorskip("trl")
    cfg = make_config(**SMALL)
    result = run_rl_bench(cfg, log=lambda m: None)
    json.dumps(result)  # JSON-ready
    for key in ("vs_trl", "ours_samples_per_s", "trl_samples_per_s", "pair_ratios", "ours_seconds", "trl_seconds",
                "versions", "machine", "prompts", "group", "completion_len", "mode", "threads", "lr"):  # fmt: skip
        assert key in result, key
    steps = cfg.warmup + cfg.repeats
    assert len(result["ours_seconds"]) == len(result["trl_seconds"]) == steps
    assert len(result["pair_ratios"]) == cfg.repeats
    assert result["samples_per_step"] == {"ours": [4] * steps, "trl": [4] * steps}
    assert result["completion_tokens_per_step"] == {"ours": [4 * 6] * steps, "trl": [4 * 6] * steps}
    assert result["completion_len_range"] == {"ours": [6, 6], "trl": [6, 6]}
    assert result["vs_trl"] > 0 and result["versions"]["trl"]


def test_profile_covers_the_step_with_exclusive_sections(tmp_path):
    cfg = make_config(**SMALL)
    result = run_rl_profile(cfg, output=tmp_path, log=lambda m: None)
    profile = result["profile"]
    assert set(profile["sections_s"]) == set(SECTIONS)
    assert result["our_forward"] == "lean"
    assert profile["sections_s"]["old_logprobs_fwd"] == 0.0  # on-policy: no separate old-log-prob pass
    for name in ("generation", "train_fwd", "backward", "optimizer", "logging"):
        assert profile["sections_s"][name] > 0, name
    assert sum(profile["sections_s"].values()) == pytest.approx(profile["step_s"], rel=0.05)
    rows = (tmp_path / "ours" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == cfg.warmup + cfg.repeats  # one metrics row per step, as the runner writes


def test_command_prints_the_json_last():
    pytest.importorskip("trl")
    app = typer.Typer()
    app.command()(bench_rl)
    args = ["--model-size", "tiny", "--prompts", "2", "--group", "2", "--completion-len", "4", "--repeats", "1",
            "--warmup", "0", "--mode", "sequential", "--no-lean"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["mode"] == "sequential" and figures["completion_tokens_per_step"]["ours"] == [2 * 2 * 4]
    assert figures["lean"] is False and figures["our_forward"] == "model (lean=False)"
