"""make-data against real HTTP servers on 127.0.0.1 (tests/fake_teacher.py), faults included.

The teacher text depends only on (problem, request seed), so a run through injected faults must end
with exactly the records of a clean run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from pathlib import Path

import pytest

from fake_teacher import FakeTeacher, Faults, scripted_response
from parallel_r1.data.cold_start_store import (
    ACCEPTED,
    PARQUET,
    REJECTED,
    RecordStore,
    StoreError,
    read_records,
)
from parallel_r1.data.make_data import MakeDataConfig, classify, run_async, strip_thinking
from parallel_r1.data.problem import Problem
from parallel_r1.data.teacher_client import (
    ClientConfig,
    EndpointError,
    TeacherClient,
    TeacherFatalError,
    api_base,
    redact_url,
)
from parallel_r1.data.toy import toy_problems
from parallel_r1.format import parse

EASY = toy_problems("easy", 6, 0)
HARD = toy_problems("hard", 6, 0)
SHARED_DATA = Path(os.environ.get("PARALLEL_R1_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
BLOCK = "<Parallel><Path>a</Path><Path>b</Path></Parallel><Summary>s</Summary>"


def config(url: str, out: Path, **overrides) -> MakeDataConfig:
    """Small timeouts and backoff so that retries cost milliseconds."""
    base = dict(endpoint=url, problems="toy-easy", output=out, samples=2, limit=6, seed=0, concurrency=4,
                timeout=0.5, max_retries=4, backoff_base=0.005, backoff_max=0.02)
    base.update(overrides)
    return MakeDataConfig(**base)


def run(cfg: MakeDataConfig, api_key: str | None = None) -> dict:
    return asyncio.run(run_async(cfg, api_key, log=lambda _: None))


def records(out: Path) -> dict[tuple[str, int], dict]:
    """Every record of a run keyed by pair, asserting that no pair appears twice."""
    out_records = {}
    for name in (ACCEPTED, REJECTED):
        for r in read_records(out / name):
            key = (r["problem_id"], r["sample"])
            assert key not in out_records, f"{key} recorded twice"
            out_records[key] = {k: v for k, v in r.items() if k != "detail"} | {"file": name}
    return out_records


def all_pairs(problems: list[Problem], samples: int) -> set[tuple[str, int]]:
    return {(p.id, s) for p in problems for s in range(samples)}


# ---------------------------------------------------------------- filtering


@pytest.mark.parametrize("text, reason", [
    (f"x {BLOCK}\nFinal Answer: 5", None),
    (f"x {BLOCK}\nFinal Answer: 6", "wrong_answer"),
    ("x\nFinal Answer: 5", "no_block"),
    ("<Parallel><Path>a</Path></Parallel><Summary>s</Summary>\nFinal Answer: 5", "format_error"),
    ("<Parallel><Path>a</Path><Path>b</Path></Parallel>\nFinal Answer: 5", "format_error"),
])
def test_classify_reasons(text, reason):
    accepted, record = classify(Problem("p", "Q?", "5"), 3, "PROMPT", text, strip_think=True)
    assert (record["problem_id"], record["sample"]) == ("p", 3)
    if reason is None:
        assert accepted and record["prompt"] == "PROMPT" and record["answer"] == "5" and record["question"] == "Q?"
    else:
        assert not accepted and record["reason"] == reason and record["detail"]


def test_classify_stores_canonical_text_without_think():
    raw = ("<think>draft <Parallel> oops</think>\n\nStart.\n<Parallel>\n<Path>a</Path>\n<Path>b</Path>\n"
           "</Parallel>\n<Summary>s</Summary>\nFinal Answer: 5\n")
    accepted, record = classify(Problem("p", "Q", "5"), 0, "P", raw, strip_think=True)
    assert accepted
    assert record["response"] == f"Start.\n{BLOCK}\nFinal Answer: 5"
    assert parse(record["response"]).canonical
    accepted, record = classify(Problem("p", "Q", "5"), 0, "P", raw, strip_think=False)
    assert not accepted and record["reason"] == "format_error"  # the unclosed <Parallel> in the draft


def test_strip_thinking_cuts_to_the_last_close_tag():
    assert strip_thinking("a</think>b</think>c") == "c"
    assert strip_thinking("no thinking") == "no thinking"


# ---------------------------------------------------------------- client pieces


def test_api_base_and_redaction():
    assert api_base("http://h:8000") == "http://h:8000/v1"
    assert api_base("http://h:8000/v1/") == "http://h:8000/v1"
    assert api_base("https://h/api/v1") == "https://h/api/v1"
    with pytest.raises(EndpointError):
        api_base("h:8000")
    assert redact_url("https://user:secret@h:8443/v1?key=abc") == "https://h:8443/v1"


def test_backoff_grows_exponentially_with_bounded_jitter():
    client = TeacherClient(ClientConfig("http://h", backoff_base=1.0, backoff_max=10.0), random.Random(0))
    for retry, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)]:
        waits = [client.backoff(retry) for _ in range(200)]
        assert all(cap / 2 <= w < cap for w in waits), (retry, min(waits), max(waits))
        assert max(waits) - min(waits) > cap / 10  # jitter really spreads the waits
    assert client.backoff(1, retry_after=5.0) == 5.0
    assert client.backoff(1, retry_after=99.0) == 10.0  # Retry-After is capped by backoff_max


# ---------------------------------------------------------------- runs against a clean server


def test_clean_run_records_every_pair_and_exports_parquet(tmp_path):
    with FakeTeacher(EASY) as teacher:
        summary = run(config(teacher.url, tmp_path))
        assert teacher.stats["answered"] == 12
        assert {b["seed"] for b in teacher.requests} == {0, 1}  # request seed = seed + sample
        assert {b["temperature"] for b in teacher.requests} == {0.6}
        assert {b["model"] for b in teacher.requests} == {"fake-teacher"}  # the server's first model
    got = records(tmp_path)
    assert set(got) == all_pairs(EASY, 2)
    accepted = read_records(tmp_path / ACCEPTED)
    for r in accepted:
        parsed = parse(r["response"])
        assert parsed.valid and parsed.num_valid_blocks >= 1 and parsed.canonical
        assert r["response"].endswith(f"Final Answer: {r['answer']}")
        assert r["prompt"].endswith("Problem: " + next(p.question for p in EASY if p.id == r["problem_id"]))
    reasons = [r["reason"] for r in read_records(tmp_path / REJECTED)]
    assert summary["pairs"] == 12 and summary["accepted"] == len(accepted) > 0
    assert sum(summary["rejected"].values()) == len(reasons)
    assert summary["success_rate"] == len(accepted) / 12
    assert summary["valid_parallel_format_rate"] == (len(accepted) + reasons.count("wrong_answer")) / 12
    assert json.loads((tmp_path / "summary.json").read_text()) == summary

    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(tmp_path / PARQUET)
    assert table.column_names == ["prompt", "response", "problem_id", "sample", "answer", "data_source", "extra_info"]
    rows = table.to_pylist()
    order = [p.id for p in EASY]
    assert [(r["problem_id"], r["sample"]) for r in rows] == sorted(
        ((r["problem_id"], r["sample"]) for r in accepted), key=lambda k: (order.index(k[0]), k[1]))
    assert rows[0]["extra_info"]["question"] == next(p.question for p in EASY if p.id == rows[0]["problem_id"])


def test_concurrency_limit_is_kept(tmp_path):
    with FakeTeacher(EASY, delay_s=0.05) as teacher:
        run(config(teacher.url, tmp_path, concurrency=3))
        assert teacher.max_in_flight == 3


def test_without_pyarrow_the_parquet_export_is_skipped_with_a_message(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now fails, as when absent
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    messages: list[str] = []
    with FakeTeacher(EASY) as teacher:
        summary = asyncio.run(run_async(config(teacher.url, tmp_path, samples=1), None, log=messages.append))
    assert summary["parquet"] is None and not (tmp_path / PARQUET).exists()
    assert any("pyarrow is not installed" in m for m in messages)
    assert set(records(tmp_path)) == all_pairs(EASY, 1)


def test_second_run_asks_nothing_and_more_samples_ask_only_the_new_ones(tmp_path):
    with FakeTeacher(EASY) as teacher:
        run(config(teacher.url, tmp_path))
        first = records(tmp_path)
        run(config(teacher.url, tmp_path))
        assert teacher.stats["answered"] == 12
        summary = run(config(teacher.url, tmp_path, samples=3))
        assert teacher.stats["answered"] == 18
    got = records(tmp_path)
    assert set(got) == all_pairs(EASY, 3) and summary["pairs"] == 18
    assert {k: got[k] for k in first} == first


def test_faults_are_retried_and_the_result_equals_a_clean_run(tmp_path):
    with FakeTeacher(EASY) as teacher:
        run(config(teacher.url, tmp_path / "clean"))
    # every (prompt, seed) fails twice first, kinds in turn: drops, cut bodies, 500, 429, bad JSON, slow
    faults = Faults(fail_first=2, slow_s=0.8)
    with FakeTeacher(EASY, faults) as teacher:
        run(config(teacher.url, tmp_path / "faulty", timeout=0.3))
        for kind in faults.kinds:
            assert teacher.stats[f"fault:{kind}"] >= 3, (kind, teacher.stats)
    assert records(tmp_path / "faulty") == records(tmp_path / "clean")


def test_random_faults_leave_every_pair_accounted_for(tmp_path):
    faults = Faults(rate=0.4, slow_s=0.6, seed=1)
    with FakeTeacher(HARD, faults) as teacher:
        summary = run(config(teacher.url, tmp_path, problems="toy-hard", samples=3, timeout=0.3, max_retries=1))
        assert sum(v for k, v in teacher.stats.items() if k.startswith("fault:")) > 0
    assert set(records(tmp_path)) == all_pairs(HARD, 3)
    assert summary["pairs"] == 18


def test_a_failing_server_leaves_its_pairs_undone_and_a_plain_rerun_asks_them(tmp_path):
    """Issue 18: failed pairs were recorded as done, so a rerun asked nothing without --retry-failed."""
    with FakeTeacher(EASY, Faults(kinds=("500",), rate=1.0)) as teacher:
        summary = run(config(teacher.url, tmp_path, max_retries=2))
        assert teacher.stats["fault:500"] == 12 * 3
    assert summary["request_failed"] == 12 and summary["answered"] == 0 and summary["success_rate"] == 0.0
    detail = read_records(tmp_path / REJECTED)[0]["detail"]
    assert "gave up after 3 attempts" in detail and "HTTP 500" in detail
    with FakeTeacher(EASY) as teacher:
        summary = run(config(teacher.url, tmp_path))
        assert teacher.stats["answered"] == 12  # every failed pair asked again, no flag needed
    assert summary["request_failed"] == 0 and summary["answered"] == 12
    assert set(records(tmp_path)) == all_pairs(EASY, 2)


def test_completions_api_and_explicit_model(tmp_path):
    with FakeTeacher(EASY, models=("first", "second")) as teacher:
        summary = run(config(teacher.url, tmp_path, api="completions", model="second", prompt="sequential",
                                   show_progress=True))
        assert {b["model"] for b in teacher.requests} == {"second"}
        assert all("prompt" in b and "messages" not in b for b in teacher.requests)
    assert summary["model"] == "second" and summary["template"] == "sequential"
    assert set(records(tmp_path)) == all_pairs(EASY, 2)


def test_resume_refuses_a_different_prompt_or_model(tmp_path):
    with FakeTeacher(EASY, models=("first", "second")) as teacher:
        run(config(teacher.url, tmp_path))
        with pytest.raises(StoreError, match="template_sha256"):
            run(config(teacher.url, tmp_path, prompt="sequential"))
        with pytest.raises(StoreError, match="model: was 'first', now 'second'"):
            run(config(teacher.url, tmp_path, model="second"))


def test_wrong_key_is_fatal_and_the_key_is_not_in_the_message(tmp_path):
    with FakeTeacher(EASY, api_key="right-key") as teacher, pytest.raises(TeacherFatalError) as err:
        run(config(teacher.url, tmp_path), api_key="wrong-key-123")
    assert "HTTP 401" in str(err.value) and "wrong-key-123" not in str(err.value)


def test_unknown_model_is_fatal(tmp_path):
    with FakeTeacher(EASY) as teacher, pytest.raises(TeacherFatalError, match="404"):
        run(config(teacher.url, tmp_path, model="nope"))


def test_a_400_for_one_request_is_recorded_not_retried(tmp_path):
    problems = [Problem("known", "What is 1+1?", "2")]
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "known", "question": "What is 1+1?", "answer": "2"}) + "\n"
                    + json.dumps({"id": "unknown", "question": "Who knows?", "answer": "3"}) + "\n")
    with FakeTeacher(problems) as teacher:
        summary = run(config(teacher.url, tmp_path / "out", problems=str(path), samples=1, limit=None))
    got = records(tmp_path / "out")
    assert got[("unknown", 0)]["reason"] == "request_failed"
    assert summary["pairs"] == 2
    accepted, expected = classify(problems[0], 0, "", scripted_response(problems[0], 0), strip_think=True)
    assert got[("known", 0)]["file"] == (ACCEPTED if accepted else REJECTED)
    assert got[("known", 0)].get("reason") == expected.get("reason")


# ---------------------------------------------------------------- the record store


def test_torn_last_line_is_cut_and_its_pair_asked_again(tmp_path):
    with FakeTeacher(EASY) as teacher:
        run(config(teacher.url, tmp_path))
        complete = records(tmp_path)
        path = tmp_path / ACCEPTED
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a write cut by SIGKILL
        run(config(teacher.url, tmp_path))
        assert teacher.stats["answered"] == 13
    assert records(tmp_path) == complete


def test_damage_before_the_last_line_is_an_error(tmp_path):
    (tmp_path / ACCEPTED).write_text('{"problem_id": "a", "sample": 0}\nnot json\n{"problem_id": "b", "sample": 0}\n')
    with pytest.raises(StoreError, match="line 2"):
        RecordStore(tmp_path)


def test_a_pair_in_both_files_is_an_error(tmp_path):
    (tmp_path / ACCEPTED).write_text('{"problem_id": "a", "sample": 0}\n')
    (tmp_path / REJECTED).write_text('{"problem_id": "a", "sample": 0, "reason": "no_block"}\n')
    with pytest.raises(StoreError, match="recorded twice"):
        RecordStore(tmp_path)



@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
def test_named_set_with_the_reference_prompt(tmp_path):
    from parallel_r1.data.problems import load_problems

    problems = load_problems("gsm8k", SHARED_DATA, limit=8)
    reference = SHARED_DATA / "prompts" / "reference_parallel_prompt.txt"
    with FakeTeacher(problems) as teacher:
        summary = run(config(teacher.url, tmp_path, problems="gsm8k", data_dir=SHARED_DATA, limit=8,
                             prompt=str(reference)))
        assert all(b["messages"][0]["content"].startswith("Solve the following problem step by step.")
                   for b in teacher.requests)
    assert summary["template"] == "reference_parallel_prompt.txt" and summary["pairs"] == 16
    expected = {(p.id, s): classify(p, s, "", scripted_response(p, s), True) for p in problems for s in range(2)}
    got = records(tmp_path)
    assert {k: v["file"] == ACCEPTED for k, v in got.items()} == {k: acc for k, (acc, _) in expected.items()}
    assert {k: v.get("reason") for k, v in got.items()} == {k: r.get("reason") for k, (_, r) in expected.items()}
