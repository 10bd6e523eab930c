"""``parallel-r1 make-data`` as a user runs it: real subprocesses, SIGKILL and resume, the key, --report."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fake_teacher import FakeTeacher, Faults
from parallel_r1.cli import app
from parallel_r1.data.cold_start_store import ACCEPTED, REJECTED
from parallel_r1.data.toy import toy_problems
from test_make_data import all_pairs, config, records, run

CLI = [sys.executable, "-c", "from parallel_r1.cli import app; app()", "make-data"]
FAST = ["--timeout", "0.5", "--max-retries", "4", "--backoff-base", "0.005", "--backoff-max", "0.02", "--seed", "0"]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PARALLEL_R1_API_KEY", "OPENAI_API_KEY")}
    return env | extra


def count_lines(out: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in (out / ACCEPTED, out / REJECTED) if p.exists())


def test_sigkill_then_rerun_records_every_pair_exactly_once(tmp_path):
    problems = toy_problems("easy", 12, 0)
    with FakeTeacher(problems, delay_s=0.05) as teacher:
        args = [*CLI, "--endpoint", teacher.url, "-p", "toy-easy", "--limit", "12", "--samples", "2",
                "--concurrency", "2", "-o", str(tmp_path / "run"), *FAST]
        proc = subprocess.Popen(args, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while count_lines(tmp_path / "run") < 6 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
        partial = records(tmp_path / "run")
        assert 6 <= len(partial) < 24
        assert not (tmp_path / "run" / "summary.json").exists()

        done = subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"{24 - len(partial)} of 24 pairs to ask" in done.stderr
        run(config(teacher.url, tmp_path / "clean", limit=12))  # the same set in one go, in process
    final = records(tmp_path / "run")  # asserts no pair twice
    assert set(final) == all_pairs(problems, 2)
    assert final == records(tmp_path / "clean")
    assert all(final[k] == v for k, v in partial.items())


def test_api_key_never_reaches_files_or_logs(tmp_path):
    key = "sk-test-5ecret-Key-0123456789"
    # echo400: the server answers some requests with a 400 that repeats the Authorization header
    faults = Faults(kinds=("echo400", "500"), fail_first=1)
    with FakeTeacher(toy_problems("easy", 6, 0), faults, api_key=key) as teacher:
        args = [*CLI, "--endpoint", teacher.url, "-p", "toy-easy", "--limit", "6", "--samples", "2",
                "-o", str(tmp_path / "out"), "--report", *FAST]
        done = subprocess.run(args, env=cli_env(PARALLEL_R1_API_KEY=key), capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stderr  # the echo400 pairs failed (a 400 is not retried) ...
        assert "got no answer after their retries" in done.stderr and "Bearer ***" in done.stderr  # ... said so
        assert teacher.auth_headers == {f"Bearer {key}"}  # the key was used ...
        assert teacher.stats["fault:echo400"] > 0
    details = [r["detail"] for r in records_raw(tmp_path / "out") if r.get("reason") == "request_failed"]
    assert details and all("Bearer ***" in d for d in details)  # ... and scrubbed from the echo
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"accepted.jsonl", "rejected.jsonl", "summary.json", "run.json", "sft.parquet"}
    for p in files:
        assert key.encode() not in p.read_bytes(), p
        assert key[:12].encode() not in p.read_bytes(), p
    assert key not in done.stdout + done.stderr
    assert "| toy-easy |" in done.stdout


def records_raw(out: Path) -> list[dict]:
    from parallel_r1.data.cold_start_store import read_records

    return read_records(out / ACCEPTED) + read_records(out / REJECTED)


def test_wrong_key_exits_1_without_printing_it(tmp_path):
    with FakeTeacher(toy_problems("easy", 2, 0), api_key="right") as teacher:
        result = CliRunner().invoke(app, ["make-data", "--endpoint", teacher.url, "-p", "toy-easy", "--limit", "2",
                                          "-o", str(tmp_path), *FAST], env={"OPENAI_API_KEY": "wrong-key-42", "PARALLEL_R1_API_KEY": None})
    assert result.exit_code == 1
    assert "HTTP 401" in result.output and "wrong-key-42" not in result.output


def test_report_gives_table_1_for_an_easy_and_a_hard_set(tmp_path):
    problems = toy_problems("easy", 8, 0) + toy_problems("hard", 8, 0)
    runner = CliRunner()
    with FakeTeacher(problems) as teacher:
        result = runner.invoke(app, ["make-data", "--endpoint", teacher.url, "-p", "toy-easy", "-p", "toy-hard",
                                     "--limit", "8", "--samples", "2", "-o", str(tmp_path), "--report", *FAST],
                               env=cli_env())
    assert result.exit_code == 0, result.output
    assert set(records(tmp_path / "toy-easy")) == all_pairs(problems[:8], 2)
    assert set(records(tmp_path / "toy-hard")) == all_pairs(problems[8:], 2)
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| problem set | problems | samples |") and len(table) == 4
    rates = {}
    for line in table[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1:4] == ["8", "16", "16"]
        rates[cells[0]] = float(cells[4].rstrip("%"))
    assert rates["toy-easy"] > rates["toy-hard"]  # the scripted teacher's Table 1 shape

    again = runner.invoke(app, ["make-data", "--report", "-o", str(tmp_path)])
    assert again.exit_code == 0 and again.stdout.strip() == "\n".join(table)


def test_usage_errors_exit_2(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["make-data", "-p", "toy-easy", "-o", str(tmp_path)])
    assert missing.exit_code == 2 and "--endpoint" in missing.output
    with FakeTeacher([]) as teacher:
        unknown = runner.invoke(app, ["make-data", "--endpoint", teacher.url, "-p", "gsm9k", "-o", str(tmp_path)])
        assert unknown.exit_code == 2 and "unknown problem set 'gsm9k'" in unknown.output
        bad_prompt = runner.invoke(app, ["make-data", "--endpoint", teacher.url, "-p", "toy-easy",
                                         "--prompt", "nope", "-o", str(tmp_path)])
        assert bad_prompt.exit_code == 2 and "unknown prompt template" in bad_prompt.output
    no_report = runner.invoke(app, ["make-data", "--report", "-o", str(tmp_path / "empty")])
    assert no_report.exit_code == 2 and "no summary.json" in no_report.output


@pytest.mark.parametrize("endpoint", ["localhost:8000", "ftp://h/v1"])
def test_bad_endpoint_exits_2(tmp_path, endpoint):
    result = CliRunner().invoke(app, ["make-data", "--endpoint", endpoint, "-p", "toy-easy", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "http(s) URL" in result.output


def test_api_key_env_names_the_variable(tmp_path):
    with FakeTeacher(toy_problems("easy", 2, 0), api_key="k-777") as teacher:
        ok = CliRunner().invoke(app, ["make-data", "--endpoint", teacher.url, "-p", "toy-easy", "--limit", "2",
                                      "--api-key-env", "MY_TEACHER_KEY", "-o", str(tmp_path / "a"), *FAST],
                                env={"MY_TEACHER_KEY": "k-777", "PARALLEL_R1_API_KEY": "other"})
        assert ok.exit_code == 0, ok.output
        assert teacher.auth_headers == {"Bearer k-777"}
    unset = CliRunner().invoke(app, ["make-data", "--endpoint", "http://127.0.0.1:9/v1", "-p", "toy-easy",
                                     "--api-key-env", "MY_TEACHER_KEY", "-o", str(tmp_path / "b")],
                               env={"MY_TEACHER_KEY": None})
    assert unset.exit_code == 2 and "MY_TEACHER_KEY" in unset.output
