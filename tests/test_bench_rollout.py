"""parallel-r1 bench rollout: JSON shape, a backend's figures, a missing backend reported, not raised."""

from __future__ import annotations

import importlib.util
import json

from typer.testing import CliRunner

from parallel_r1.cli import app


def _last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_quick_hf_and_missing_vllm():
    out = CliRunner().invoke(app, ["bench", "rollout", "--quick", "--backend", "hf,vllm", "--threads", "1"])
    assert out.exit_code == 0, out.output
    result = _last_json(out.output)
    hf = result["backends"]["hf"]
    assert hf["tokens_per_s"] > 0 and hf["tokens"] > 0 and hf["rollouts"] == 4 * 2
    assert 0.0 <= hf["parallel_ratio"] <= hf["valid_format_ratio"] <= 1.0
    # the engine's sampling log-probs and the training forward are the same fp32 computation
    assert hf["sequential_logprob_max_abs_diff"] < 1e-4
    assert hf["info"]["name"] == "hf"
    if importlib.util.find_spec("vllm") is None:
        assert "error" in result["backends"]["vllm"]
        assert result["vllm_vs_hf"] is None and result["sequential_logprob_max_abs_diff"] is None
    assert {"load_avg_1m", "model", "params", "config"} <= result.keys()


def test_unknown_backend_exits_2():
    out = CliRunner().invoke(app, ["bench", "rollout", "--quick", "--backend", "hf,sglang"])
    assert out.exit_code == 2
    assert "sglang" in out.output
