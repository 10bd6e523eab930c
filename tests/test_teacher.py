"""The scripted teacher: format and accuracy per split, failures from its memory budget, filtering."""

from __future__ import annotations

import random

import pytest

from parallel_r1.data.teacher import (
    ColumnArithmetic,
    TeacherConfig,
    check_trace,
    filter_traces,
    format_teacher_report,
    teacher_report,
    teacher_trace,
    teacher_traces,
)
from parallel_r1.data.toy import toy_problems, toy_structures
from parallel_r1.format import TAGS, extract_final_answer, parse
from parallel_r1.rewards import judge

N = 300


@pytest.fixture(scope="module")
def traces():
    return {split: teacher_traces(toy_problems(split, N, seed=0), seed=0) for split in ("easy", "hard")}


def rate(rows, key):
    return sum(check_trace(t)[key] for t in rows) / len(rows)


def test_deterministic_by_seed():
    problems = toy_problems("easy", 40, seed=1)
    assert teacher_traces(problems, seed=5) == teacher_traces(problems, seed=5)
    assert teacher_traces(problems, seed=5) != teacher_traces(problems, seed=6)


def test_valid_on_most_easy_problems_and_strictly_worse_on_hard(traces):
    easy_valid, hard_valid = rate(traces["easy"], "valid_format"), rate(traces["hard"], "valid_format")
    assert easy_valid >= 0.75 and hard_valid <= 0.10, (easy_valid, hard_valid)
    assert rate(traces["easy"], "kept") > rate(traces["hard"], "kept")
    assert rate(traces["easy"], "correct") > rate(traces["hard"], "correct")


def test_parallel_traces_have_two_different_routes_and_a_merging_summary(traces):
    good = [t for t in traces["easy"] if t["teacher"]["mode"] == "parallel"]
    assert len(good) > N // 2
    for t in good:
        parsed = parse(t["response"])
        assert parsed.valid and parsed.canonical and parsed.num_valid_blocks == 1, parsed.errors
        (block,) = parsed.blocks
        assert len(block.paths) == 2
        a, b = (p.text for p in block.paths)
        assert a != b and {a.split(".")[0], b.split(".")[0]} == {"In order", "Changes first"}
        results = t["teacher"]["path_results"]
        kept = results["in_order"]
        assert f"So {results['in_order']}." in (a + b) and f"So {results['changes_first']}." in (a + b)
        assert str(kept) in block.summary.text
        assert extract_final_answer(t["response"]) == str(kept)
    orders = {tuple(t["teacher"]["route_order"]) for t in good}
    assert orders == {("in_order", "changes_first"), ("changes_first", "in_order")}


def test_each_failure_mode_shows_in_the_text(traces):
    rows = traces["easy"] + traces["hard"]
    modes = {t["teacher"]["mode"] for t in rows}
    assert modes == {"parallel", "dropped_format", "forgot_close", "forgot_summary_tags"}
    for t in rows:
        mode, parsed = t["teacher"]["mode"], parse(t["response"])
        if mode == "dropped_format":
            assert not any(tag in t["response"] for tag in TAGS) and parsed.num_parallel == 0
        elif mode == "forgot_close":
            assert not parsed.valid and "</Parallel>" not in t["response"]
        elif mode == "forgot_summary_tags":
            assert not parsed.valid and "<Summary>" not in t["response"]
        else:
            assert parsed.valid and parsed.num_valid_blocks == 1


def test_dropped_format_follows_the_memory_budget(traces):
    """The format is dropped exactly when the planned load exceeds the budget drawn for the problem."""
    for t in traces["easy"] + traces["hard"]:
        info = t["teacher"]
        assert (info["mode"] == "dropped_format") == (info["load"] > info["budget"]), info


def test_an_unlimited_teacher_never_fails():
    """With a huge budget and no slips every trace is valid and correct: failures come only from
    the mechanism, never from a separate coin."""
    cfg = TeacherConfig(budget_mean=1e6, budget_sd=0.0, slip_rate=0.0)
    for split in ("easy", "hard"):
        rows = teacher_traces(toy_problems(split, 100, seed=3), seed=3, cfg=cfg)
        assert all(check_trace(t)["kept"] for t in rows)


def test_slips_make_wrong_paths_and_mismatched_summaries():
    cfg = TeacherConfig(budget_mean=300.0, budget_sd=0.0, slip_rate=0.5)  # every block fits; p ~ 0.2
    rows = teacher_traces(toy_structures("hard", 100, seed=4), seed=4, cfg=cfg)
    mismatched = [t for t in rows if len(set(t["teacher"]["path_results"].values())) == 2]
    assert mismatched and all("The paths give" in t["response"] for t in mismatched)
    assert any(not check_trace(t)["correct"] for t in rows)
    assert all(t["teacher"]["slips"] > 0 for t in mismatched)


def test_filter_keeps_exactly_the_valid_and_correct_traces(traces):
    rows = traces["easy"] + traces["hard"]
    kept = filter_traces(rows)
    assert 0 < len(kept) < len(rows)
    for t in rows:
        parsed, verdict = parse(t["response"]), judge(t["response"], t["answer"])
        should_keep = parsed.valid and parsed.num_valid_blocks >= 1 and verdict.correct
        assert (t in kept) == should_keep


def test_column_arithmetic_is_exact_without_slips_and_drops_carries_with_them():
    rng = random.Random(0)
    exact = ColumnArithmetic(rng, p=0.0)
    for _ in range(2000):
        a, b = rng.randint(0, 5000), rng.randint(0, 5000)
        assert exact(a, "+", b) == a + b and exact(a, "*", b) == a * b
        assert exact(max(a, b), "-", min(a, b)) == max(a, b) - min(a, b)
    sloppy = ColumnArithmetic(rng, p=1.0)
    assert sloppy(15, "+", 7) == 12  # the carry into the tens is lost
    assert sloppy(42, "-", 7) == 45  # the borrow from the tens is lost
    assert sloppy(12, "*", 9) == 98  # 2*9=18 writes 8 and loses the 1
    assert sloppy.slips == 3


def test_report_has_the_shape_of_table_1():
    report = teacher_report(n=200, seed=0)
    assert set(report) == {"toy-easy", "toy-hard"}
    assert report["toy-easy"]["valid_format"] > report["toy-hard"]["valid_format"]
    table = format_teacher_report(report)
    print("\n" + table)
    lines = table.splitlines()
    assert lines[0].startswith("| set | samples | valid parallel format")
    assert lines[2].startswith("| toy-easy | 200 | ") and lines[3].startswith("| toy-hard | 200 | ")


def test_trace_of_a_problem_equals_trace_of_its_structure():
    p = toy_problems("easy", 3, seed=2)[2]
    toy = toy_structures("easy", 3, seed=2)[2]
    assert teacher_trace(p, seed=1) == teacher_trace(toy, seed=1)
