"""`parallel-r1 score`: the DESIGN.md contract, bad input, summary, process-pool path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from parallel_r1.cli import app

HERE = Path(__file__).resolve().parent
SLICE = HERE / "fixtures" / "pilot_slice.jsonl"
PILOT = HERE.parents[1] / "shared" / "data" / "parallel_gsm8k_pilot.jsonl"
BLOCK = "<Parallel><Path>a</Path><Path>b</Path></Parallel><Summary>s</Summary>"

runner = CliRunner()


def _run(args: list[str], stdin: str | None = None):
    return runner.invoke(app, ["score", *args], input=stdin)


def _summary(stderr: str) -> dict:
    return json.loads(stderr.strip().splitlines()[-1])


def _verdicts(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_pilot_slice_is_all_correct_and_valid(tmp_path):
    out = tmp_path / "v.jsonl"
    result = _run(["--input", str(SLICE), "--output", str(out)])
    assert result.exit_code == 0, result.output
    verdicts = _verdicts(out.read_text())
    assert len(verdicts) == sum(1 for line in SLICE.read_text().split("\n") if line.strip())
    for v in verdicts:
        assert {"format_valid", "num_parallel", "correct", "reward"} <= v.keys()
        assert v["correct"] and v["format_valid"] and v["reward"] == 1.0, v
    summary = _summary(result.stderr)
    assert summary["accuracy"] == 1.0 and summary["format_valid_ratio"] == 1.0
    assert summary["n"] == len(verdicts)
    assert 0 < summary["parallel_ratio"] < 1  # the slice holds one trace without a block


@pytest.mark.parametrize(
    "reward, step, with_block, without_block, wrong",
    [
        ("accuracy", 1, 1.0, 1.0, -1.0),
        ("tiered", 1, 1.2, 1.0, -1.0),
        ("parallel", 1, 1.0, -1.0, -1.0),
        ("alternating", 8, 1.0, 1.0, -1.0),
        ("alternating", 9, 1.2, 1.0, -1.0),
        ("scaffold", 9, 1.2, 1.0, -1.0),
        ("scaffold", 209, 1.0, 1.0, -1.0),
    ],
)
def test_reward_and_step_options(reward, step, with_block, without_block, wrong):
    lines = [
        {"response": f"x {BLOCK}\nFinal Answer: 5", "answer": "5"},
        {"response": "x\nFinal Answer: 5", "answer": 5},
        {"response": f"x {BLOCK}\nFinal Answer: 6", "answer": "5"},
    ]
    stdin = "".join(json.dumps(line) + "\n" for line in lines)
    result = _run(["--reward", reward, "--step", str(step)], stdin)
    assert result.exit_code == 0, result.output
    assert [v["reward"] for v in _verdicts(result.stdout)] == [with_block, without_block, wrong]


def test_malformed_line_fails_naming_the_line():
    stdin = json.dumps({"response": "Final Answer: 1", "answer": "1"}) + "\n{not json\n"
    result = _run([], stdin)
    assert result.exit_code == 2
    assert "line 2" in result.stderr
    assert result.stdout == ""  # nothing half-written


@pytest.mark.parametrize(
    "bad, reason",
    [
        ('{"answer": "1"}', "missing field 'response'"),
        ('{"response": "x"}', "missing field 'answer'"),
        ("[1, 2]", "expected a JSON object"),
        ('{"response": 3, "answer": "1"}', "must be a string"),
        ('{"response": "x", "answer": null}', "must be a string or a number"),
    ],
)
def test_skip_bad_reports_and_continues(bad, reason):
    good = json.dumps({"response": "Final Answer: 1", "answer": "1"})
    result = _run(["--skip-bad"], f"{good}\n{bad}\n\n{good}\n")
    assert result.exit_code == 0, result.output
    assert len(_verdicts(result.stdout)) == 2
    assert "line 2: " in result.stderr and reason in result.stderr
    assert _summary(result.stderr)["skipped"] == 1


def test_unknown_reward_is_a_usage_error():
    result = _run(["--reward", "nope"], "")
    assert result.exit_code == 2
    assert "accuracy" in result.output  # lists the valid names


def test_junk_responses_get_verdicts():
    junk = [
        "",
        "<Parallel>" * 5000,
        "</Path></Summary><Path><Parallel>",
        bytes(range(256)).decode("latin-1"),
        "Final Answer: " + "9" * 20000,
        "Final Answer: 9^9^9^9^9",
    ]
    stdin = "".join(json.dumps({"response": r, "answer": "9"}) + "\n" for r in junk)
    result = _run([], stdin)
    assert result.exit_code == 0, result.output
    verdicts = _verdicts(result.stdout)
    assert len(verdicts) == len(junk)
    assert not any(v["correct"] for v in verdicts)
    assert [v["format_valid"] for v in verdicts] == [True, False, False, True, True, True]


@pytest.mark.slow
def test_process_pool_matches_serial(tmp_path):
    """Through the installed console script, with 2 worker processes: same verdicts, same order."""
    rows = [json.loads(line) for line in SLICE.read_text().split("\n") if line.strip()]
    big = tmp_path / "big.jsonl"
    with big.open("w") as f:
        for i in range(600):
            row = rows[i % len(rows)]
            answer = row["answer"] if i % 3 else "-1"  # a third wrong
            f.write(json.dumps({"id": f"r{i}", "response": row["response"], "answer": answer}) + "\n")
    outs = {}
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}.jsonl"
        cmd = [sys.executable, "-m", "parallel_r1.cli", "score", "-i", str(big), "-o", str(out), "--workers", workers]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outs[workers] = _verdicts(out.read_text())
    assert outs["1"] == outs["2"]
    assert [v["id"] for v in outs["2"]] == [f"r{i}" for i in range(600)]
    assert sum(v["correct"] for v in outs["2"]) == 400


@pytest.mark.skipif(not PILOT.exists(), reason="../shared/data is not present")
def test_whole_pilot_file_scores_one(tmp_path):
    out = tmp_path / "v.jsonl"
    result = _run(["--input", str(PILOT), "--output", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    summary = _summary(result.stderr)
    assert summary["n"] == 341
    assert summary["accuracy"] == 1.0 and summary["format_valid_ratio"] == 1.0
