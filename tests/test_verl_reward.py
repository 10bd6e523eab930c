"""``parallel_r1/rewards/verl.py``: our rewards through verl's custom-reward hook.

verl loads ``custom_reward_function.path`` as a file (not as a package import), takes the function
named by ``custom_reward_function.name``, binds ``reward_kwargs`` and calls it with keyword
arguments; the helper below does the same, so these tests call it the way verl does.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import parallel_r1.rewards

VERL_FILE = Path(parallel_r1.rewards.__file__).parent / "verl.py"
BLOCK = "<Parallel><Path>a</Path><Path>b</Path></Parallel><Summary>s</Summary>\n"


def _load_like_verl(name: str = "compute_score", **reward_kwargs):
    spec = importlib.util.spec_from_file_location("custom_module", VERL_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["custom_module"] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["custom_module"]
    fn = getattr(module, name)
    return lambda **kwargs: fn(**kwargs, **reward_kwargs)


def _call(fn, text: str, gold="7", step: int | None = 1, **extra):
    info = {"index": 0, **({"global_steps": step} if step is not None else {})}
    return fn(data_source="gsm8k", solution_str=text, ground_truth=gold, extra_info=info, **extra)


def test_alternating_reads_the_step_from_extra_info():
    fn = _load_like_verl()
    text = BLOCK + "Final Answer: 7"
    assert _call(fn, text, step=1) == {"score": 1.0, "acc": True, "format_valid": True, "num_parallel": 1}
    assert _call(fn, text, step=9)["score"] == 1.2  # tiered at steps 9-10 of every 10
    assert _call(fn, text, step=11)["score"] == 1.0
    assert _call(fn, text, step=0)["score"] == 1.0  # verl's validation before step 1


def test_scaffold_with_params_from_reward_kwargs():
    fn = _load_like_verl(reward="scaffold", switch_step=5)
    text = BLOCK + "Final Answer: 7"
    assert _call(fn, text, step=4)["score"] == 1.0
    assert _call(fn, text, step=9)["score"] == 1.0  # past the switch: accuracy only
    assert _load_like_verl(reward="scaffold", switch_step=20)(
        data_source="x", solution_str=text, ground_truth=7, extra_info={"global_steps": 9})["score"] == 1.2


def test_reference_scorer_through_verl():
    ours, ref = _load_like_verl(), _load_like_verl(scorer="reference")
    text = BLOCK + "Final Answer: 7.00"
    assert _call(ours, text, step=9)["score"] == 1.2
    assert _call(ref, text, step=9) == {"score": -1.0, "acc": False, "format_valid": True, "num_parallel": 1}
    stray = "7 </Path>\nFinal Answer: 7"  # no block, broken tag, right answer
    assert _call(ref, stray, step=9)["score"] == 1.0 and _call(ours, stray, step=9)["score"] == -1.0


def test_text_with_special_tokens_is_judged_when_given():
    """verl's stock manager drops special tokens from solution_str; the reference fork passes the
    text with the tags too, and then the grammar must read that one."""
    fn = _load_like_verl(reward="tiered")
    plain = "a\nb\ns\nFinal Answer: 7"
    assert _call(fn, plain)["num_parallel"] == 0
    got = _call(fn, plain, solution_str_with_special_tokens=BLOCK + "Final Answer: 7")
    assert got["num_parallel"] == 1 and got["score"] == 1.2


def test_schedule_without_a_step_fails_loud_and_fixed_rewards_do_not_need_one():
    with pytest.raises(ValueError, match="extra_info has no 'global_steps'"):
        _call(_load_like_verl(), "Final Answer: 7", step=None)
    assert _call(_load_like_verl(reward="accuracy"), "Final Answer: 7", step=None)["score"] == 1.0


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"reward": "nope"}, "unknown reward"), ({"scorer": "nope"}, "unknown scorer"),
    ({"scorer": "reference", "reward": "parallel"}, "scorer 'reference' has no parallel"),
    ({"reward": "alternating", "window": 0}, "window must be"),
])
def test_bad_reward_kwargs_fail_loud(kwargs, error):
    with pytest.raises(ValueError, match=error):
        _call(_load_like_verl(**kwargs), "Final Answer: 7")


def test_gold_must_be_an_answer():
    with pytest.raises(TypeError, match="ground_truth"):
        _call(_load_like_verl(), "Final Answer: 7", gold={"target": "7"})
