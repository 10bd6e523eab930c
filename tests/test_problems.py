"""Problem sources: named sets from a data folder, toy sets, and lenient JSONL / JSON / parquet files."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from parallel_r1.data.problem import Problem
from parallel_r1.data.problems import (
    DATA_DIR_ENV,
    NAMED_SETS,
    ProblemSourceError,
    answer_from_solution,
    known_sets,
    load_problems,
)

SHARED_DATA = Path(os.environ.get("PARALLEL_R1_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
# row counts from ../shared/data/README.md
SHARED_SIZES = {"gsm8k": 1319, "gsm8k-train": 7473, "math500": 500, "math300": 316, "aime24": 30,
                "aime25": 30, "amc23": 40, "dapo": 17917}


def write_jsonl(path: Path, rows: list[object], blank_line_at: int | None = None) -> Path:
    lines = [json.dumps(r) for r in rows]
    if blank_line_at is not None:
        lines.insert(blank_line_at, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    write_jsonl(d / "gsm8k_test.jsonl", [
        {"id": "g-0", "question": "What is 2 + 3?", "answer": "5", "solution": "2 + 3 = 5\n#### 5"},
        {"id": "g-1", "question": "What is 4 * 4?", "answer": "16"},
        {"id": "g-2", "question": "What is 9 - 1?", "answer": 8},
    ])
    return d


def test_named_set_reads_the_data_dir_in_file_order(data_dir):
    problems = load_problems("gsm8k", data_dir)
    assert problems == [Problem("g-0", "What is 2 + 3?", "5"), Problem("g-1", "What is 4 * 4?", "16"),
                        Problem("g-2", "What is 9 - 1?", "8")]


def test_limit_keeps_a_prefix(data_dir):
    assert [p.id for p in load_problems("gsm8k", data_dir, limit=2)] == ["g-0", "g-1"]
    assert load_problems("gsm8k", data_dir, limit=0) == []
    with pytest.raises(ProblemSourceError, match="limit"):
        load_problems("gsm8k", data_dir, limit=-1)


def test_data_dir_env_var_is_the_default(data_dir, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(data_dir))
    assert len(load_problems("gsm8k")) == 3


def test_named_set_missing_from_the_data_dir_names_the_file(data_dir):
    with pytest.raises(ProblemSourceError, match=r"aime24\.jsonl does not exist"):
        load_problems("aime24", data_dir)


def test_no_data_dir_and_no_datasets_package_says_pass_data_dir(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail, as when absent
    with pytest.raises(ProblemSourceError, match="--data-dir") as err:
        load_problems("gsm8k")
    assert "openai/gsm8k" in str(err.value)


def test_set_without_hub_source_says_pass_data_dir(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(ProblemSourceError, match="math300.*no hub source.*--data-dir"):
        load_problems("math300")


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ProblemSourceError, match="unknown problem set 'gsm9k'") as err:
        load_problems("gsm9k")
    for name in known_sets():
        assert name in str(err.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ProblemSourceError, match="problem file not found"):
        load_problems(str(tmp_path / "nope.jsonl"))


def test_toy_sets_are_embedded_and_seeded():
    from parallel_r1.data.toy import toy_problems

    assert load_problems("toy-easy", limit=5, seed=3) == toy_problems("easy", 5, 3)
    assert load_problems("toy-hard", limit=4) == toy_problems("hard", 4, 0)
    assert load_problems("toy-easy", limit=5, seed=3) != load_problems("toy-easy", limit=5, seed=4)


def test_lenient_row_fields(tmp_path):
    rows = [
        {"problem": "P0?", "solution": "work\n#### 1,234"},  # GSM8K solution line, thousands comma
        {"question": "P1?", "solution": "so \\boxed{\\frac{1}{2}} is it"},  # MATH-style solution
        {"prompt": "P2?", "answer": "Some steps\n#### 72"},  # hub GSM8K answer field
        {"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "P3?"}],
         "reward_model": {"ground_truth": "7", "style": "rule"}},  # verl-style row
        {"unique_id": "u/4", "question": "P4?", "gold": 3.5},
        {"question": "P5?", "ground_truth": ["9"]},
    ]
    problems = load_problems(str(write_jsonl(tmp_path / "mixed.jsonl", rows)))
    assert [(p.id, p.question, p.answer) for p in problems] == [
        ("mixed-0", "P0?", "1234"), ("mixed-1", "P1?", "\\frac{1}{2}"), ("mixed-2", "P2?", "72"),
        ("mixed-3", "P3?", "7"), ("u/4", "P4?", "3.5"), ("mixed-5", "P5?", "9"),
    ]


def test_row_without_answer_is_an_error_naming_its_line(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "a", "answer": "1"}, {"question": "b"}],
                       blank_line_at=1)
    with pytest.raises(ProblemSourceError, match=r"p\.jsonl, line 3: no answer"):
        load_problems(str(path))


def test_row_without_question_and_bad_json_are_errors(tmp_path):
    with pytest.raises(ProblemSourceError, match="line 1: no question"):
        load_problems(str(write_jsonl(tmp_path / "q.jsonl", [{"answer": "1"}])))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "1"}\n{"question": \n', encoding="utf-8")
    with pytest.raises(ProblemSourceError, match="line 2: not valid JSON"):
        load_problems(str(bad))
    with pytest.raises(ProblemSourceError, match="line 1: expected a JSON object"):
        load_problems(str(write_jsonl(tmp_path / "list.jsonl", [[1, 2]])))


def test_duplicate_ids_are_an_error(tmp_path):
    rows = [{"id": "x", "question": "a", "answer": "1"}, {"id": "x", "question": "b", "answer": "2"}]
    with pytest.raises(ProblemSourceError, match="line 2: duplicate id 'x'"):
        load_problems(str(write_jsonl(tmp_path / "dup.jsonl", rows)))


def test_json_list_and_data_object(tmp_path):
    rows = [{"question": "a", "answer": "1"}, {"question": "b", "answer": "2"}]
    (tmp_path / "l.json").write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "d.json").write_text(json.dumps({"data": rows}), encoding="utf-8")
    assert [p.answer for p in load_problems(str(tmp_path / "l.json"))] == ["1", "2"]
    assert [p.id for p in load_problems(str(tmp_path / "d.json"), limit=1)] == ["d-0"]
    (tmp_path / "s.json").write_text('"just a string"', encoding="utf-8")
    with pytest.raises(ProblemSourceError, match="expected a JSON list"):
        load_problems(str(tmp_path / "s.json"))


def test_parquet_file(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a", "b"], "question": ["Q1", "Q2"], "answer": ["3", "4"]}), tmp_path / "t.parquet")
    assert load_problems(str(tmp_path / "t.parquet")) == [Problem("a", "Q1", "3"), Problem("b", "Q2", "4")]


def test_answer_from_solution_prefers_the_gsm8k_line():
    assert answer_from_solution("x \\boxed{2}\n#### 3") == "3"
    assert answer_from_solution("no answer here") is None


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
@pytest.mark.parametrize("name", sorted(NAMED_SETS))
def test_every_named_set_loads_from_shared_data(name):
    problems = load_problems(name, SHARED_DATA)
    assert len(problems) == SHARED_SIZES[name]
    assert all(p.question and p.answer for p in problems)
    assert len({p.id for p in problems}) == len(problems)


class StubDatasets:
    """Stands in for the optional ``datasets`` package (never installed here, never online in tests):
    records the call and returns rows shaped like the hub's."""

    def __init__(self, rows: list[dict]):
        self.rows, self.calls = rows, []

    def load_dataset(self, repo, config, split):
        self.calls.append((repo, config, split))
        return self.rows


def test_hub_rows_are_normalised_like_files(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    stub = StubDatasets([{"question": "Q1", "answer": "Work.\n#### 1,000"}, {"question": "Q2", "answer": "#### 7"}])
    monkeypatch.setitem(sys.modules, "datasets", stub)
    assert load_problems("gsm8k-train", limit=1) == [Problem("gsm8k-train-0", "Q1", "1000")]
    assert stub.calls == [("openai/gsm8k", "main", "train")]


def test_hub_dapo_is_unwrapped_and_deduplicated(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    wrapped = ("Solve the following math problem step by step. The last line of your response should be of "
               "the form Answer: $Answer.\n\nFind x if 2x = 4.\n\nRemember to put your answer on its own line "
               'after "Answer:".')
    row = {"prompt": [{"role": "user", "content": wrapped}], "reward_model": {"ground_truth": "2"}}
    monkeypatch.setitem(sys.modules, "datasets", StubDatasets([row, row, {**row, "reward_model": {"ground_truth": "2"}}]))
    assert load_problems("dapo") == [Problem("dapo-0", "Find x if 2x = 4.", "2")]


def test_hub_failure_names_the_way_out(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)

    class Offline:
        def load_dataset(self, *args, **kwargs):
            raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", Offline())
    with pytest.raises(ProblemSourceError, match="could not fetch HuggingFaceH4/MATH-500.*no network.*--data-dir"):
        load_problems("math500")
