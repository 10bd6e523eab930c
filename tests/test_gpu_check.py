"""scripts/gpu_check.py at CPU shapes: the JSON it writes, a step's figures, a timeout captured as an
error (not a hang or a crash), and --require's exit code. The full CPU profile runs in CI as
``make gpu-check-cpu``; here only the cheap step, so the suite stays fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def _run(tmp_path: Path, *args: str) -> tuple[int, dict]:
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), "--profile", "cpu", *args],
                          capture_output=True, text=True, timeout=240)
    assert out.is_file(), proc.stderr[-2000:]
    return proc.returncode, json.loads(out.read_text())


@pytest.mark.slow
def test_flex_step_and_timeout(tmp_path):
    rc, report = _run(tmp_path, "--steps", "flex_vs_dense", "--require", "flex_vs_dense")
    assert rc == 0
    assert report["profile"] == "cpu" and report["device"]["name"] == "cpu"
    step = report["flex_vs_dense"]
    assert step["ok"] and step["seconds"] > 0
    for total in (256, 512):  # flex block mask and dense mask: one attention, fp32
        assert step[f"tokens_{total}"]["output_max_abs_diff"] < 1e-5

    rc, report = _run(tmp_path, "--steps", "bench_engine", "--step-timeout", "1", "--require", "bench_engine")
    assert rc == 1  # the required step failed
    assert report["bench_engine"]["error"] == "timed out after 1 s" and not report["bench_engine"]["ok"]


def test_unknown_step_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "x.json"), "--steps", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown steps" in proc.stderr
