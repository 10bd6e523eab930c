"""The toy math world: determinism, answers checked independently, split difficulty, solution routes."""

from __future__ import annotations

import re
import statistics

import pytest

from parallel_r1.data.problem import Problem
from parallel_r1.data.toy import (
    SPECS,
    plan_changes_first,
    plan_in_order,
    pretraining_text,
    route_result,
    run_plan,
    sequential_solution,
    toy_problem,
    toy_problems,
    toy_set,
    toy_structure,
    toy_structures,
)
from parallel_r1.format import extract_final_answer

FACT_RE = re.compile(r"(\d+)([+*-])(\d+)=(-?\d+)\.")


def answer_from_text(question: str) -> int:
    """Recompute the answer from the question's words alone: an evaluator that shares no code with
    toy.py (its own sentence patterns and arithmetic)."""
    sentences = re.findall(r"[^.?]+[.?]", question)
    value = int(re.fullmatch(r"\s*\w+ has (\d+) \w+\.", sentences[0]).group(1))
    patterns = [
        (r"\w+ (?:finds|gets) (\d+)(?: more)? \w+\.", lambda v, m: v + int(m[1])),
        (r"\w+ (?:gives away|loses) (\d+) \w+\.", lambda v, m: v - int(m[1])),
        (r"\w+ buys (\d+) \w+ of (\d+) \w+\.", lambda v, m: v + int(m[1]) * int(m[2])),
        (r"The number of \w+ doubles\.", lambda v, m: 2 * v),
        (r"The number of \w+ triples\.", lambda v, m: 3 * v),
    ]
    for sentence in sentences[1:-1]:
        for pattern, update in patterns:
            m = re.fullmatch(r"\s*" + pattern, sentence)
            if m:
                value = update(value, m)
                break
        else:
            raise AssertionError(f"unrecognised sentence {sentence!r}")
    assert re.fullmatch(r"\s*How many \w+ does \w+ have now\?", sentences[-1])
    return value


def test_same_seed_same_problems_and_prefix_stable():
    a = toy_problems("easy", 50, seed=3)
    assert a == toy_problems("easy", 50, seed=3)
    # problem i does not depend on n: a shorter draw is a prefix
    assert toy_problems("easy", 10, seed=3) == a[:10]
    assert toy_problems("easy", 50, seed=4) != a
    assert [p.id for p in a[:3]] == ["toy-easy-3-0", "toy-easy-3-1", "toy-easy-3-2"]
    assert all(isinstance(p, Problem) for p in a)


@pytest.mark.parametrize("split", ["easy", "hard"])
def test_answers_match_an_independent_reading_of_the_question(split):
    for p in toy_problems(split, 300, seed=11):
        assert int(p.answer) == answer_from_text(p.question), p


@pytest.mark.parametrize("split", ["easy", "hard"])
def test_counts_stay_positive_through_every_event(split):
    for toy in toy_structures(split, 300, seed=5):
        value = toy.start
        for label, facts in run_plan(plan_in_order(toy)):
            value = facts[-1].c
            assert value > 0, (toy, label)


def test_easy_and_hard_differ_in_steps_and_sizes():
    easy, hard = toy_structures("easy", 500, 0), toy_structures("hard", 500, 0)
    n_easy, n_hard = [len(t.events) for t in easy], [len(t.events) for t in hard]
    assert set(n_easy) == {2, 3} and set(n_hard) == {4, 5, 6}
    assert not any(e.kind == "scale" for t in easy for e in t.events)
    assert any(e.kind == "scale" for t in hard for e in t.events)
    assert all(sum(e.kind == "scale" for e in t.events) <= SPECS["hard"].max_scales for t in hard)
    assert statistics.median(t.answer for t in hard) > 4 * statistics.median(t.answer for t in easy)
    assert max(t.answer for t in easy) < 100 <= statistics.median(t.answer for t in hard)


@pytest.mark.parametrize("split", ["easy", "hard"])
def test_sequential_solution_is_true_step_by_step_and_ends_with_the_answer(split):
    for toy in toy_structures(split, 200, seed=2):
        text = sequential_solution(toy)
        lines = text.split("\n")
        assert lines[0] == f"Start: {toy.start}." and lines[-1] == f"Final Answer: {toy.answer}"
        assert len(lines) == len(toy.events) + 2  # one line per event
        facts = FACT_RE.findall(text)
        assert facts, text
        for a, op, b, c in facts:
            assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] == int(c), text
        assert int(facts[-1][3]) == toy.answer
        assert extract_final_answer(text) == str(toy.answer)
        assert not re.search(r"</?(Parallel|Path|Summary)>", text)


@pytest.mark.parametrize("split", ["easy", "hard"])
def test_both_routes_reach_the_answer_by_different_steps(split):
    for toy in toy_structures(split, 200, seed=9):
        in_order, changes_first = run_plan(plan_in_order(toy)), run_plan(plan_changes_first(toy))
        assert route_result(in_order, toy.start) == toy.answer
        assert route_result(changes_first, toy.start) == toy.answer
        assert all(f.correct for _, facts in changes_first for f in facts)
        steps_a = [(f.a, f.op, f.b) for _, facts in in_order for f in facts]
        steps_b = [(f.a, f.op, f.b) for _, facts in changes_first for f in facts]
        assert steps_a != steps_b, toy


def test_changes_first_nets_a_run_of_gains_and_losses():
    """Pins the wording of the second route on one hand-checked problem."""
    toy = next(
        t for t in toy_structures("easy", 200, 0) if [e.kind for e in t.events] == ["loss", "gain", "gain"]
    )
    (g_label, g_facts), (l_label, l_facts), (n_label, n_facts) = run_plan(plan_changes_first(toy))
    loss, g1, g2 = (e.a for e in toy.events)
    assert g_label == "gains" and [(f.a, f.b) for f in g_facts] == [(g1, g2)]
    assert l_label == f"losses {loss}" and l_facts == []
    net = g1 + g2 - loss
    expected = ("net gain", net, "+") if net >= 0 else ("net loss", -net, "-")
    assert (n_label, n_facts[0].c, n_facts[1].op) == expected
    assert n_facts[1].c == toy.answer


def test_structure_is_rebuilt_from_a_problem_and_checked():
    p = toy_problems("hard", 8, seed=21)[7]
    toy = toy_structure(p)
    assert toy == toy_problem("hard", 21, 7) and toy.to_problem() == p
    assert sequential_solution(p) == sequential_solution(toy)
    assert pretraining_text(p) == p.question + "\n" + sequential_solution(p)
    with pytest.raises(ValueError, match="does not match"):
        toy_structure(Problem(p.id, p.question, str(int(p.answer) + 1)))
    with pytest.raises(ValueError, match="not a toy problem id"):
        toy_structure(Problem("gsm8k-1", p.question, p.answer))


def test_named_sets():
    assert toy_set("toy-easy", 5, 1) == toy_problems("easy", 5, 1)
    assert toy_set("toy-hard", 5, 1) == toy_problems("hard", 5, 1)
    with pytest.raises(KeyError, match="toy-medium"):
        toy_set("toy-medium", 5, 1)
    with pytest.raises(AssertionError, match="unknown toy split"):
        toy_problems("medium", 5, 1)


def test_vocabulary_is_small():
    words = set()
    for split in ("easy", "hard"):
        for p in toy_problems(split, 500, 0):
            words |= set(re.findall(r"[A-Za-z]+", p.question + " " + sequential_solution(p)))
    assert len(words) < 60, sorted(words)
