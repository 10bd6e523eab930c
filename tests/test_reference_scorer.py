"""``--scorer reference``: the reference code's answer check, format check and tiered reward.

The expected verdicts in ``fixtures/reference_verdicts.jsonl.gz`` were produced by running the
reference's own reward functions (see ``fixtures/README.md``) over the 341 pilot traces and the
mutations in ``reference_mutations.py``; here our implementation must agree on every one.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from parallel_r1.rewards import get_reward, get_scorer
from parallel_r1.rewards.reference import (
    minerva_normalize,
    reference_extract,
    reference_format_errors,
    reference_judge,
)
from reference_mutations import MUTATIONS

FIXTURE = Path(__file__).parent / "fixtures" / "reference_verdicts.jsonl.gz"
PILOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "parallel_gsm8k_pilot.jsonl"
REF = get_scorer("reference")
ALTERNATING = get_reward("alternating")


def _pilot() -> list[dict]:
    if not PILOT.is_file():
        pytest.skip(f"{PILOT} is absent (the offline data folder is not checked out here)")
    return [json.loads(line) for line in PILOT.open(encoding="utf-8")]


def _expected() -> dict[tuple[str, str], dict]:
    with gzip.open(FIXTURE, "rt", encoding="utf-8") as f:
        return {(r["id"], r["mutation"]): r for r in map(json.loads, f)}


def test_reference_scorer_matches_the_reference_code_on_every_pilot_case():
    """Acceptance (issue 17): verdict and reward at steps 1 and 9 equal the reference's for all
    341 traces x every mutation; zero disagreements."""
    traces, expected = _pilot(), _expected()
    assert len(expected) == len(traces) * len(MUTATIONS)
    disagreements = []
    for trace in traces:
        for name, mutate in MUTATIONS.items():
            v = reference_judge(mutate(trace["response"], trace["answer"]), trace["answer"])
            got = {"correct": v.correct, "pred": v.normalized, "format_valid": v.format_valid,
                   "num_parallel": v.num_parallel, "reward_step1": REF.reward(ALTERNATING, v, 1),
                   "reward_step9": REF.reward(ALTERNATING, v, 9)}
            want = {k: expected[trace["id"], name][k] for k in got}
            if got != want:
                disagreements.append((trace["id"], name, got, want))
    assert disagreements == []


def test_both_scorers_side_by_side_on_the_pilot_traces():
    """The known differences, counted on the real traces: the reference marks `36.00` and `1600.`
    wrong (12 of 341 originals), ignores `\\boxed{}`, and accepts blocks our grammar rejects."""
    traces = _pilot()
    default = get_scorer("default")
    golds = [t["answer"] for t in traces]
    flips = Counter()
    for name in ("original", "trailing_00", "boxed_only", "nested", "block_in_open_summary",
                 "sequential_stray_tag"):
        responses = [MUTATIONS[name](t["response"], t["answer"]) for t in traces]
        ours, ref = default.judge_many(responses, golds), REF.judge_many(responses, golds)
        for o, r in zip(ours, ref, strict=True):
            flips[name, "correct", o.correct, r.correct] += o.correct != r.correct
            flips[name, "format", o.format_valid, r.format_valid] += o.format_valid != r.format_valid
            tiered = (default.reward(ALTERNATING, o, 9), REF.reward(ALTERNATING, r, 9))
            flips[(name, "tiered", *tiered)] += tiered[0] != tiered[1]
    assert flips["original", "correct", True, False] == 12
    assert flips["trailing_00", "correct", True, False] == 341
    assert flips["boxed_only", "correct", True, False] == 341
    assert flips["nested", "format", False, True] == 338  # 3 traces have no block
    assert flips["block_in_open_summary", "format", False, True] == 338
    # no <Parallel>, a stray </Path>, right answer: +1.0 there, -1.0 under our grammar
    assert flips["sequential_stray_tag", "tiered", -1.0, 1.0] == 329


def test_answer_is_read_from_the_last_300_tag_free_characters():
    tail = "x" * 280  # with "Final Answer: 7\n" (16 chars): 296 of 300
    assert reference_extract(f"Final Answer: 7\n{tail}") == "7"
    assert reference_extract(f"Final Answer: 7\n{tail}yyyyy") is None  # "F" falls out
    # the tags do not count towards the window (they are special tokens, decoded away there)
    assert reference_extract("Final Answer: 7\n" + "<Path></Path>" * 40 + tail) == "7"
    assert reference_extract("Final Answer: 1\nFINAL ANSWER :\n 2") == "2"


@pytest.mark.parametrize(("raw", "normal"), [
    ("1,234", "1234"), ("$1600.", "1600."), ("36.00", "36.00"), ("x = 5", "5"), ("\\boxed{12}", "12"),
    ("12 dollars", "12"), ("\\frac12", "\\frac{1}{2}"), ("1,2", "12"), ("(1,2)", "(1,2)"),
])
def test_minerva_normalisation(raw, normal):
    assert minerva_normalize(raw) == normal


def test_format_check_ignores_summary_closes_and_nesting():
    block = "<Parallel><Path>a</Path><Path>b</Path></Parallel><Summary>s"
    assert reference_format_errors(block) == ()  # ends inside its summary
    assert reference_format_errors(block + block + "</Summary>") == ()  # block inside an open summary
    assert reference_format_errors("<Parallel><Path>" + block + "</Summary></Path><Path>c</Path></Parallel>"
                                   "<Summary>t</Summary>") == ()  # block nested inside a path
    assert reference_format_errors("<Parallel><Path>a</Path></Parallel><Summary>s</Summary>")
    assert reference_format_errors(block.replace("<Summary>s", "no summary"))
    assert reference_format_errors("text </Path> more")


def test_reference_tiered_pays_a_correct_sequential_answer_with_broken_tags():
    v = reference_judge("5 + 2 = 7 </Path>\nFinal Answer: 7", "7")
    assert v.correct and not v.format_valid and v.num_parallel == 0
    assert REF.reward(get_reward("tiered"), v, 1) == 1.0
    assert get_scorer("default").reward(get_reward("tiered"), v, 1) == -1.0  # same rules, our verdict shape


@pytest.mark.parametrize("name", ["parallel", "parallel_only"])
def test_reference_scorer_refuses_rewards_the_reference_has_no_rule_for(name):
    with pytest.raises(ValueError, match="scorer 'reference' has no"):
        REF.check(get_reward(name))
    REF.check(get_reward("scaffold"))  # accuracy + tiered only: fine


def _score(args: list[str], stdin: str):
    from typer.testing import CliRunner

    from parallel_r1.cli import app

    return CliRunner().invoke(app, ["score", *args], input=stdin)


def test_score_cli_scorer_option():
    line = json.dumps({"response": "<Parallel><Path>a</Path><Path>b</Path></Parallel><Summary>s</Summary>\n"
                                   "Final Answer: 36.00", "answer": "36"})
    ref = _score(["--scorer", "reference", "--reward", "alternating", "--step", "9"], line + "\n")
    ours = _score(["--reward", "alternating", "--step", "9"], line + "\n")
    assert ref.exit_code == 0 and ours.exit_code == 0, (ref.output, ours.output)
    got_ref, got_ours = json.loads(ref.stdout.splitlines()[0]), json.loads(ours.stdout.splitlines()[0])
    assert (got_ref["correct"], got_ref["reward"], got_ref["normalized"]) == (False, -1.0, "36.00")
    assert (got_ours["correct"], got_ours["reward"]) == (True, 1.2)
    assert json.loads(ref.stderr.splitlines()[-1])["scorer"] == "reference"


@pytest.mark.parametrize("args", [["--scorer", "nope"], ["--scorer", "reference", "--reward", "parallel_only"]])
def test_score_cli_bad_scorer_is_a_usage_error(args):
    result = _score(args, json.dumps({"response": "Final Answer: 1", "answer": "1"}) + "\n")
    assert result.exit_code == 2
    assert "--scorer" in result.output


@pytest.mark.parametrize(("stdin", "args", "why"), [
    ("", [], "the input has no non-blank line"),
    ("\n  \n", [], "the input has no non-blank line"),
    ("junk\n{\"answer\": \"1\"}\n", ["--skip-bad"], "all 2 non-blank line(s) were skipped"),
])
def test_score_cli_without_any_line_to_score_exits_2(stdin, args, why):
    """Issue 18: an empty input, or one whose every line was skipped, used to exit 0 with a summary
    saying accuracy 0.0; it now says there was no input and exits 2."""
    result = _score(args, stdin)
    assert result.exit_code == 2, result.output
    assert f"no input to score ({why})" in result.stderr
    assert result.stdout == ""


def _recipe(reward: dict):
    import copy

    from parallel_r1.train.config import recipe_from_dict
    from test_recipe import BASE

    raw = copy.deepcopy(BASE)
    raw["stages"][1]["reward"] = reward
    return recipe_from_dict(raw)


def test_recipe_reward_scorer():
    assert _recipe({"name": "alternating"}).stages[1].reward.scorer == "default"
    assert _recipe({"name": "alternating", "scorer": "reference"}).stages[1].reward.scorer == "reference"
    from parallel_r1.train.config import RecipeError

    with pytest.raises(RecipeError, match=r"stages\[1\]\.reward\.scorer: unknown scorer 'ref'"):
        _recipe({"name": "alternating", "scorer": "ref"})
    with pytest.raises(RecipeError, match=r"stages\[1\]\.reward\.scorer: scorer 'reference' has no parallel_only"):
        _recipe({"name": "parallel_only", "scorer": "reference"})


def test_grpo_stage_rewards_rollouts_with_its_scorer():
    """A GRPO stage with ``scorer: reference`` rewards by the reference's rules (here `36.00` is wrong
    there and right by default), at the stage step the schedule reads."""
    from parallel_r1.rollout import Rollout
    from parallel_r1.train.stages import reward_rollouts

    text = "<Parallel><Path>a</Path><Path>b</Path></Parallel><Summary>s</Summary>\nFinal Answer: 36.00"
    got = {}
    for scorer in ("default", "reference"):
        stage = _recipe({"name": "alternating", "scorer": scorer}).stages[1]
        rollouts = [Rollout(prompt_ids=[1], response_ids=[2], loss_mask=[1], logprobs=[0.0], text=text)]
        verdicts = reward_rollouts(rollouts, ["36"], stage, stage_step=9)
        got[scorer] = (rollouts[0].reward, rollouts[0].reward_info["correct"], verdicts[0].check_method)
    assert got["default"][:2] == (1.2, True)
    assert got["reference"] == (-1.0, False, "reference")
