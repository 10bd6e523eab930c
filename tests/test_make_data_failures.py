"""make-data when the teacher does not answer (issue 18): a dead port, a server that is not
OpenAI-compatible, requests that fail after their retries. Real sockets, servers and processes."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import Result
from typer.testing import CliRunner

from fake_teacher import FakeTeacher, Faults
from parallel_r1.cli import app
from parallel_r1.data.cold_start_store import REJECTED, read_records, report_table
from parallel_r1.data.make_data import TeacherUnreachable
from parallel_r1.data.toy import toy_problems
from test_make_data import all_pairs, config, records, run
from test_make_data_cli import CLI, FAST, cli_env

EASY = toy_problems("easy", 3, 0)


def dead_port() -> int:
    """A port nothing listens on: bound once by us, then closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep its request log out of the output under test
        pass


class StaticServer:
    """Python's file server on 127.0.0.1: speaks HTTP, but 404 for GET /v1/models, 501 for every POST."""

    def __init__(self, directory):
        handler = partial(_QuietFiles, directory=str(directory))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> StaticServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_data(out, endpoint: str, *extra: str) -> subprocess.CompletedProcess:
    """The command in its own process: what a user sees, traceback or not."""
    args = [*CLI, "--endpoint", endpoint, "-p", "toy-easy", "--limit", "3", "-o", str(out), *FAST, *extra]
    return subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=120)


def make_data_here(out, endpoint: str, *extra: str) -> Result:
    """The command in this process (no interpreter start-up); ``result.exception`` holds any traceback."""
    args = ["make-data", "--endpoint", endpoint, "-p", "toy-easy", "--limit", "3", "-o", str(out), *FAST, *extra]
    return CliRunner().invoke(app, args, env=cli_env())


@pytest.mark.parametrize("model", [[], ["--model", "m"]], ids=["listed-model", "given-model"])
def test_a_dead_endpoint_stops_with_one_line_naming_it(tmp_path, model):
    """Issue 18.1: a traceback ('RequestFailed: gave up after 7 attempts') and, with --model, every pair
    failing in turn with exit 0; now one error line that names the endpoint and what was tried."""
    url = f"http://127.0.0.1:{dead_port()}/v1"
    done = make_data(tmp_path / "out", url, *model)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()]  # exactly one line
    line = done.stderr.strip()
    assert line.startswith(f"error: no teacher answers at {url}: GET {url}/models gave up after 5 attempts")
    assert "connection error" in line and "is a server listening there?" in line
    assert not (tmp_path / "out" / REJECTED).exists()  # no pair was asked, so none is recorded


def test_a_dead_endpoint_raises_teacher_unreachable_in_the_library(tmp_path):
    with pytest.raises(TeacherUnreachable, match="no teacher answers at"):
        run(config(f"http://127.0.0.1:{dead_port()}/v1", tmp_path, model="m"))


def test_a_server_that_is_not_openai_compatible_exits_1_with_the_count(tmp_path):
    """Issue 18.2: with --model, every POST got a 501; the run said '0/2 accepted' and exited 0."""
    with StaticServer(tmp_path) as server:
        done = make_data_here(tmp_path / "out", server.url, "--model", "m")
    assert done.exit_code == 1 and isinstance(done.exception, SystemExit), done.output
    assert "request failed 3" in done.stderr and "answered 0" in done.stderr
    assert "error: 3 of 3 pairs got no answer after their retries (e.g. toy-easy-" in done.stderr
    assert "HTTP 501" in done.stderr and "--give-up-failed" in done.stderr


def test_failed_pairs_exit_1_are_not_done_and_a_plain_rerun_asks_them(tmp_path):
    """Issue 18.2: failed pairs counted as done, so a rerun without --retry-failed asked nothing."""
    out = tmp_path / "out"
    with FakeTeacher(EASY, Faults(kinds=("500",), fail_first=99)) as teacher:
        first = make_data_here(out, teacher.url, "--samples", "2")
        assert teacher.stats["answered"] == 0
    assert first.exit_code == 1 and isinstance(first.exception, SystemExit), first.output
    assert "request failed 6" in first.stderr and "error: 6 of 6 pairs got no answer" in first.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["request_failed"], summary["answered"], summary["given_up"]) == (6, 0, 0)
    assert "request_failed" not in summary["rejected"]  # rejected means answered, then rejected

    with FakeTeacher(EASY) as teacher:
        again = make_data_here(out, teacher.url, "--samples", "2")
        assert teacher.stats["answered"] == 6
    assert again.exit_code == 0, again.output
    assert "asking again 6 pairs whose request failed before" in again.stderr
    assert "request failed 0" in again.stderr and "error:" not in again.stderr
    assert set(records(out)) == all_pairs(EASY, 2)


def test_give_up_failed_stops_asking_and_retry_failed_asks_again(tmp_path):
    with FakeTeacher(EASY, Faults(kinds=("500",), rate=1.0)) as teacher:
        assert run(config(teacher.url, tmp_path, limit=3, max_retries=1))["request_failed"] == 6
    with FakeTeacher(EASY) as teacher:
        summary = run(config(teacher.url, tmp_path, limit=3, give_up_failed=True))
        assert teacher.stats["answered"] == 0
        assert (summary["request_failed"], summary["given_up"], summary["pairs"]) == (0, 6, 6)
        assert all(r["given_up"] for r in read_records(tmp_path / REJECTED))
        run(config(teacher.url, tmp_path, limit=3))  # a plain rerun leaves given-up pairs alone
        assert teacher.stats["answered"] == 0
        summary = run(config(teacher.url, tmp_path, limit=3, retry_failed=True))
        assert teacher.stats["answered"] == 6
    assert (summary["request_failed"], summary["given_up"], summary["answered"]) == (0, 0, 6)
    assert set(records(tmp_path)) == all_pairs(EASY, 2)


def test_give_up_and_retry_failed_together_is_a_usage_error(tmp_path):
    done = make_data_here(tmp_path, "http://127.0.0.1:9/v1", "--give-up-failed", "--retry-failed")
    assert done.exit_code == 2 and "--give-up-failed" in done.output


def test_summary_separates_failed_from_answered_and_names_the_parallel_format_rate(tmp_path):
    hard = toy_problems("hard", 6, 0)
    with FakeTeacher(hard, Faults(kinds=("500",), rate=0.5, seed=3)) as teacher:
        s = run(config(teacher.url, tmp_path, problems="toy-hard", limit=6, max_retries=0))
    assert 0 < s["request_failed"] < s["pairs"] == 12
    assert s["answered"] == s["pairs"] - s["request_failed"] == s["accepted"] + sum(s["rejected"].values())
    assert set(s["rejected"]) == {"format_error", "no_block", "wrong_answer"}
    assert s["valid_parallel_format_rate"] == (s["accepted"] + s["rejected"]["wrong_answer"]) / s["answered"]
    assert "valid_format_rate" not in s


def test_report_reads_summaries_written_before_the_split(tmp_path):
    """--report on a folder made by an older make-data (request_failed inside rejected, valid_format_rate)."""
    old = {"problems": "gsm8k", "num_problems": 5, "pairs": 10, "accepted": 4, "success_rate": 0.4,
           "valid_format_rate": 0.75, "rejected": {"format_error": 1, "no_block": 1, "wrong_answer": 2,
                                                   "request_failed": 2}}
    (tmp_path / "summary.json").write_text(json.dumps(old))
    assert report_table([tmp_path / "summary.json"]).splitlines()[-1] == "| gsm8k | 5 | 10 | 8 | 75.0% | 40.0% | 2 |"
