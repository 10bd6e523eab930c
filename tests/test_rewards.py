"""Judge verdicts, the base rewards, the step schedules and the registry."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from parallel_r1.rewards import (
    REWARDS,
    AnswerChecker,
    Verdict,
    get_reward,
    judge,
    judge_many,
    score,
)

PILOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "parallel_gsm8k_pilot.jsonl"

VALID = "<Parallel>\n<Path>\n2+2=4\n</Path>\n<Path>\n4\n</Path>\n</Parallel>\n<Summary>\nBoth give 4.\n</Summary>\n"
INVALID = "<Parallel>\n<Path>\n2+2=4\n</Path>\n</Parallel>\n<Summary>\nOne path only.\n</Summary>\n"  # 1 path
BLOCKS = {"none": "", "valid": VALID, "invalid": INVALID, "valid+invalid": VALID + INVALID}


def response(block: str, answer: str) -> str:
    return f"Let me think.\n{BLOCKS[block]}So the total is {answer}.\n\nFinal Answer: {answer}"


@pytest.fixture(scope="module")
def checker():
    with AnswerChecker(timeout=10.0, max_workers=1) as c:
        yield c


@pytest.fixture(scope="module")
def verdicts(checker):
    """Real verdicts from ``judge`` on real text: (correct?, block kind) -> Verdict."""
    return {
        (correct, block): judge(response(block, "4" if correct else "5"), "4", checker=checker)
        for correct in (True, False)
        for block in BLOCKS
    }


# ---------------------------------------------------------------- judge


def test_verdict_fields_for_each_case(verdicts):
    v = verdicts[(True, "valid")]
    assert (v.correct, v.format_valid, v.num_parallel, v.num_valid_blocks, v.extracted) == (True, True, 1, 1, "4")
    assert v.errors == () and v.check_method == "exact" and len(v.relative_positions) == 1
    v = verdicts[(True, "none")]
    assert (v.correct, v.format_valid, v.num_parallel, v.num_valid_blocks) == (True, True, 0, 0)
    v = verdicts[(False, "invalid")]
    assert (v.correct, v.format_valid, v.num_parallel, v.num_valid_blocks) == (False, False, 1, 0)
    assert v.errors and all(e.startswith("format: ") for e in v.errors)
    v = verdicts[(True, "valid+invalid")]
    assert (v.format_valid, v.num_parallel, v.num_valid_blocks) == (False, 2, 1)


def test_judge_records_missing_answer_and_timeout(checker):
    v = judge("I give up.", "4", checker=checker)
    assert (v.correct, v.extracted, v.check_method) == (False, None, "missing")
    assert "answer: no final answer found" in v.errors
    v = judge("Final Answer: 9^{9^{9^{9}}}", "1", checker=checker, timeout=0.5)
    assert (v.correct, v.timed_out, v.check_method) == (False, True, "timeout")
    assert any(e.startswith("answer: math-verify timed out") for e in v.errors)


def test_verdict_to_dict_is_json(verdicts):
    d = verdicts[(True, "valid")].to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) >= {"correct", "format_valid", "num_parallel", "num_valid_blocks", "extracted", "errors"}


def test_judge_many_keeps_order_and_checks_lengths(checker):
    golds = ["4", "5", "\\frac{1}{2}", "2\\sqrt{2}"]
    answers = ["4", "4", "0.5", "\\sqrt{8}"]
    out = judge_many([response("none", a) for a in answers], golds, checker=checker, num_threads=3)
    assert [v.correct for v in out] == [True, False, True, True]
    with pytest.raises(ValueError, match="2 responses but 1"):
        judge_many(["a", "b"], ["1"], checker=checker)


def test_judge_rejects_non_text(checker):
    with pytest.raises(TypeError, match="response must be a str"):
        judge(None, "4", checker=checker)


# ---------------------------------------------------------------- base rewards: full table

# (correct, block) -> accuracy, parallel (stage-1 gated), tiered, parallel_only
TABLE = {
    (True, "none"): (1.0, -1.0, 1.0, -1.0),
    (True, "valid"): (1.0, 1.0, 1.2, 1.0),
    (True, "invalid"): (1.0, -1.0, -1.0, -1.0),
    (True, "valid+invalid"): (1.0, 1.0, -1.0, -1.0),  # gated needs one valid block; tiered a valid response
    (False, "none"): (-1.0, -1.0, -1.0, -1.0),
    (False, "valid"): (-1.0, -1.0, -1.0, 1.0),  # parallel_only ignores correctness
    (False, "invalid"): (-1.0, -1.0, -1.0, -1.0),
    (False, "valid+invalid"): (-1.0, -1.0, -1.0, -1.0),
}


@pytest.mark.parametrize("case", sorted(TABLE), ids=lambda c: f"{'correct' if c[0] else 'wrong'}-{c[1]}")
def test_base_reward_table(verdicts, case):
    names = ("accuracy", "parallel", "tiered", "parallel_only")
    got = tuple(get_reward(name)(verdicts[case], step=1) for name in names)
    assert got == TABLE[case]


# ---------------------------------------------------------------- schedules: every boundary

ACC, TIER = "accuracy", "tiered"


@pytest.mark.parametrize(
    ("step", "component"),
    [(1, ACC), (8, ACC), (9, TIER), (10, TIER), (11, ACC), (18, ACC), (19, TIER), (20, TIER), (21, ACC)],
)
def test_alternating_boundaries(verdicts, step, component):
    reward = get_reward("alternating")
    assert reward.component(step) == component
    expected = 1.0 if component == ACC else 1.2
    assert reward(verdicts[(True, "valid")], step) == expected


@pytest.mark.parametrize(
    ("switch", "step", "component"),
    [
        (200, 1, ACC), (200, 9, TIER), (200, 191, ACC), (200, 198, ACC), (200, 199, TIER), (200, 200, TIER),
        (200, 201, ACC), (200, 209, ACC), (200, 210, ACC), (200, 10_000, ACC),
        (15, 15, ACC), (15, 16, ACC), (15, 9, TIER), (0, 1, ACC), (0, 9, ACC),
    ],
)
def test_scaffold_switches_after_switch_step(switch, step, component):
    assert get_reward("scaffold", switch_step=switch).component(step) == component


def test_alternating_params_change_the_cycle():
    reward = get_reward("alternating", window=4, accuracy_steps=1)
    assert [reward.component(s) for s in range(1, 10)] == [ACC, TIER, TIER, TIER, ACC, TIER, TIER, TIER, ACC]
    assert {get_reward("alternating", accuracy_steps=0).component(s) for s in range(1, 30)} == {TIER}
    assert {get_reward("alternating", accuracy_steps=10).component(s) for s in range(1, 30)} == {ACC}


@pytest.mark.parametrize("name", sorted(REWARDS))
@pytest.mark.parametrize(("step", "error"), [(0, ValueError), (-3, ValueError), (1.0, TypeError), (True, TypeError)])
def test_bad_steps_fail_loud(verdicts, name, step, error):
    with pytest.raises(error, match="step"):
        get_reward(name)(verdicts[(True, "none")], step)


# ---------------------------------------------------------------- registry and logging


def test_registry_names_match_the_contract():
    assert set(REWARDS) == {"accuracy", "parallel", "tiered", "alternating", "parallel_only", "scaffold"}


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown reward 'acc'.*accuracy.*scaffold"):
        get_reward("acc")


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("accuracy", {"window": 3}, r"takes no parameter.*\['window'\].*valid: none"),
        ("alternating", {"windw": 3}, r"\['windw'\].*window.*accuracy_steps"),
        ("scaffold", {"switch": 3}, r"switch_step"),
        ("alternating", {"window": 0}, r"window must be an int >= 1"),
        ("alternating", {"window": 4, "accuracy_steps": 5}, r"accuracy_steps \(5\) must be <= window \(4\)"),
        ("scaffold", {"switch_step": -1}, r"switch_step must be"),
        ("scaffold", {"window": 2.5}, r"window must be"),
    ],
)
def test_bad_params_fail_loud(name, params, match):
    with pytest.raises(ValueError, match=match):
        get_reward(name, **params)


def test_score_logs_the_parts_it_used(verdicts):
    v = verdicts[(True, "valid")]
    assert score(v, get_reward("alternating"), 9) == {
        "reward": 1.2,
        "reward_name": "alternating",
        "reward_component": "tiered",
        "step": 9,
        "correct": True,
        "format_valid": True,
        "num_parallel": 1,
        "num_valid_blocks": 1,
        "timed_out": False,
    }
    assert score(v, get_reward("scaffold"), 201)["reward_component"] == "accuracy"


def test_rewards_are_picklable_and_report_params():
    reward = get_reward("scaffold", switch_step=50)
    assert pickle.loads(pickle.dumps(reward)) == reward
    assert reward.params == {"switch_step": 50, "window": 10, "accuracy_steps": 8}
    assert get_reward("tiered").params == {}


def test_rewards_read_only_the_verdict_fields():
    """A hand-made verdict: the reward functions depend on these four fields and nothing else."""
    v = Verdict(correct=True, format_valid=True, num_parallel=3, num_valid_blocks=3, extracted="x")
    assert get_reward("tiered")(v, 1) == 1.2


# ---------------------------------------------------------------- the released pilot traces


@pytest.mark.skipif(not PILOT.exists(), reason="needs ../shared/data/parallel_gsm8k_pilot.jsonl")
def test_pilot_traces_are_all_correct_and_valid(checker):
    rows = [json.loads(line) for line in PILOT.read_text(encoding="utf-8").split("\n") if line.strip()]
    assert len(rows) == 341
    verdicts = judge_many([r["response"] for r in rows], [r["answer"] for r in rows], checker=checker)
    assert [r["id"] for r, v in zip(rows, verdicts, strict=True) if not v.correct] == []
    assert [r["id"] for r, v in zip(rows, verdicts, strict=True) if not v.format_valid] == []
    # three released traces (pilot-93, -137, -405) contain no block at all
    assert [r["id"] for r, v in zip(rows, verdicts, strict=True) if v.num_parallel == 0] == [
        "pilot-93", "pilot-137", "pilot-405"]
