"""The engine benchmark's command runs end to end on a tiny shape and ends with its JSON line."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from parallel_r1.bench.engine_command import bench_engine


def test_bench_engine_prints_the_figures_as_its_last_line():
    app = typer.Typer()
    app.command()(bench_engine)
    args = ["--model-size", "tiny", "--batch", "2", "--prefix-len", "24", "--main-len", "3", "--path-len", "3",
            "--summary-len", "2", "--tail-len", "2", "--num-paths", "3", "--repeats", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("branching_vs_plain", "branching_vs_reprefill", "unseen_logprob_max_abs_diff", "params",
                "batch", "prefix_len", "path_len", "peak_memory_mb"):
        assert key in figures, key
    assert figures["batch"] == 2 and figures["prefix_len"] == 24 and figures["path_len"] == 3
    assert figures["response_len"] == 3 + 1 + 3 * 5 + 2 + 2 + 1 + 2
    assert figures["unseen_logprob_max_abs_diff"] <= 1e-4
    assert figures["branching_vs_plain"] > 0 and figures["branching_vs_reprefill"] > 0
    assert figures["lean_vs_model_forward"] > 0 and figures["engine_forward"] == "lean"
    assert set(figures["seconds_best"]) == {"branching", "branching_seen", "branching_model_forward", "plain",
                                            "reprefill"}
