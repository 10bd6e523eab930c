"""The demo's pieces: data factories, recipes, evaluation statistics, teacher table, report, targets.

The end-to-end run of a shrunken demo is in ``test_demo_e2e.py`` (marked slow)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from parallel_r1.cli import app
from parallel_r1.data.teacher import check_trace, teacher_traces
from parallel_r1.data.toy import toy_problems
from parallel_r1.data.toy_model import build_tiny_model
from parallel_r1.data.toy_tokenizer import build_toy_tokenizer
from parallel_r1.demo.ablation import mean_sd, summarise
from parallel_r1.demo.data import (
    EVAL_SEED,
    EVAL_SIZE,
    cold_start_rows,
    draw_excluding,
    heldout_problems,
    pretraining_rows,
    rl_problems,
    route_solution,
    training_problems,
)
from parallel_r1.demo.evaluate import EvalSettings, evaluate_problems, paired_difference, standard_error
from parallel_r1.demo.pipeline import stage_checkpoints
from parallel_r1.demo.recipes import (
    DEFAULT_RECIPE,
    curriculum_raw,
    quick_overrides,
    read_raw,
    rl_only_raw,
    to_recipe,
)
from parallel_r1.demo.report import markdown, targets
from parallel_r1.demo.resources import Meter
from parallel_r1.demo.teacher_stats import teacher_table
from parallel_r1.engine.sampling import SamplingConfig
from parallel_r1.format import TAGS, parse
from parallel_r1.structure import add_tags
from parallel_r1.train.config import RecipeError

# --- data ---------------------------------------------------------------------------------------------------


def test_draw_excluding_skips_excluded_questions_in_index_order():
    first = toy_problems("easy", 8, 3)
    drawn = draw_excluding("easy", 5, 3, {p.question for p in first[:3]})
    assert [p.id for p in drawn] == [f"toy-easy-3-{i}" for i in range(3, 8)]


def test_training_problems_are_disjoint_from_the_heldout_set():
    held = {p.question for p in heldout_problems("easy", EVAL_SIZE)}
    train = training_problems("easy", 300, seed=1)
    assert len(train) == 300 and not held & {p.question for p in train}
    with pytest.raises(AssertionError, match="held-out evaluation seed"):
        training_problems("easy", 3, seed=EVAL_SEED)


def test_demo_refuses_more_eval_problems_than_the_held_out_set(tmp_path):
    from parallel_r1.demo.pipeline import DemoConfig

    assert DemoConfig(tmp_path).eval_problems == EVAL_SIZE
    with pytest.raises(ValueError, match=f"eval_problems must be in 1..{EVAL_SIZE}"):
        DemoConfig(tmp_path, eval_problems=EVAL_SIZE + 1)


def test_pretraining_rows_are_tag_free_solutions_of_both_splits_and_routes():
    rows = pretraining_rows(30, 20, seed=0, changes_first=0.5)
    assert len(rows) == 50 and len({r["id"] for r in rows}) == 50
    assert sum(r["id"].startswith("toy-hard") for r in rows) == 20
    for r in rows:
        assert not any(tag in r["response"] for tag in TAGS)
        assert r["response"].endswith(f"So {r['answer']}.\nFinal Answer: {r['answer']}")
    routes = [r["response"].split("\n")[1] for r in rows]
    assert set(routes) == {"In order.", "Changes first."} and 10 <= routes.count("Changes first.") <= 40
    assert rows == pretraining_rows(30, 20, seed=0, changes_first=0.5), "seeded: the same rows every time"
    assert [r["id"] for r in rows] != sorted(r["id"] for r in rows), "shuffled, not grouped by split"
    in_order = pretraining_rows(5, 5, seed=0)
    assert all(r["response"].split("\n")[1] == "In order." for r in in_order)


def test_route_solution_holds_the_teachers_path_bodies_word_for_word():
    problems = training_problems("easy", 60, seed=1)
    checked = 0
    for trace, problem in zip(teacher_traces(problems, 0), problems, strict=True):
        if not check_trace(trace)["kept"] or trace["teacher"]["slips"]:
            continue  # a slip changes the numbers a path writes
        for path in parse(trace["response"]).blocks[0].paths:
            route = "in_order" if path.text.startswith("In order.") else "changes_first"
            assert "\n" + path.text + "\n" in route_solution(problem, route)
            checked += 1
    assert checked >= 40
    with pytest.raises(ValueError, match="unknown route"):
        route_solution(problems[0], "backwards")


def test_cold_start_rows_are_validated_traces_and_replay_is_the_asked_share():
    cue = "{problem}\nUse parallel paths."
    rows = cold_start_rows(60, seed=1, teacher_seed=0, template=cue)
    assert rows and all(check_trace(r)["kept"] for r in rows)
    assert all(r["prompt"] == r["question"] + "\nUse parallel paths." for r in rows)
    mixed = cold_start_rows(60, seed=1, teacher_seed=0, replay=0.25, template=cue)
    replayed = [r for r in mixed if "<Parallel>" not in r["response"]]
    assert len(mixed) - len(replayed) == len(rows)
    assert len(replayed) == round(len(rows) * 0.25 / 0.75)
    for r in replayed:
        assert r["prompt"] == r["question"], "replay rows keep stage 0's prompt"
        assert r["response"] == route_solution(_problem(r), "in_order")


def _problem(row):
    from parallel_r1.data.problem import Problem

    return Problem(row["id"], row["question"], row["answer"])


def test_rl_problems_have_answers_and_no_responses():
    rows = rl_problems("hard", 5, seed=2)
    assert [r["id"] for r in rows] == [f"toy-hard-2-{i}" for i in range(5)]
    assert all(set(r) == {"id", "question", "answer"} for r in rows)


def test_rl_problems_mix_in_the_asked_share_of_easy_problems():
    hard_only = rl_problems("hard", 6, seed=2)
    mixed = rl_problems("hard", 20, seed=2, easy_share=0.3, easy_seed=3)
    ids = [r["id"] for r in mixed]
    assert len(ids) == len(set(ids)) == 20
    assert sorted(i for i in ids if i.startswith("toy-easy-3-")) == sorted(f"toy-easy-3-{i}" for i in range(6))
    assert {r["id"] for r in hard_only} < set(ids)  # the same hard draw, minus the easy share
    assert [i for i, r in enumerate(ids) if r.startswith("toy-easy")] != list(range(14, 20))  # shuffled together
    assert mixed == rl_problems("hard", 20, seed=2, easy_share=0.3, easy_seed=3)
    with pytest.raises(ValueError, match="easy_seed other than seed"):
        rl_problems("hard", 20, seed=2, easy_share=0.3)
    with pytest.raises(ValueError, match=r"easy_share must be in \[0, 1\), got 1.5"):
        rl_problems("hard", 20, seed=2, easy_share=1.5, easy_seed=3)


# --- recipes ------------------------------------------------------------------------------------------------


def test_demo_recipe_validates_and_quick_shrinks_only_sizes():
    full = to_recipe(curriculum_raw(DEFAULT_RECIPE, seed=5, quick=False))
    quick = to_recipe(curriculum_raw(DEFAULT_RECIPE, seed=5, quick=True))
    assert [s.name for s in full.stages] == ["stage0", "sft", "rl"] and full.seed == quick.seed == 5
    assert [s.type for s in full.stages] == ["sft", "sft", "grpo"]
    assert full.stages[-1].reward.name == "alternating" and full.stages[-1].data.kwargs["split"] == "hard"
    assert all(q.steps < f.steps for q, f in zip(quick.stages, full.stages, strict=True))
    assert quick.stages[-1].generation == full.stages[-1].generation and quick.mode == full.mode
    assert quick.stages[-1].prompt == full.stages[-1].prompt
    assert "stages[2].num_samples=4" in quick_overrides(read_raw(DEFAULT_RECIPE))


def test_rl_only_recipe_keeps_the_rl_stage_but_reward_model_and_seed(tmp_path):
    raw = curriculum_raw(DEFAULT_RECIPE, seed=0, quick=False)
    derived = rl_only_raw(raw, tmp_path / "ckpt", "accuracy", seed=2, name="x")
    recipe = to_recipe(derived)
    assert [s.name for s in recipe.stages] == ["rl"] and recipe.seed == 2
    assert recipe.model.init == "pretrained" and recipe.model.name_or_path == str(tmp_path / "ckpt")
    original = to_recipe(raw).stages[-1]
    assert recipe.stages[0].reward.name == "accuracy"
    for key in ("steps", "batch_size", "num_samples", "generation", "grpo", "optimizer", "data", "prompt"):
        assert getattr(recipe.stages[0], key) == getattr(original, key), key
    assert raw["stages"][-1]["reward"]["name"] == "alternating", "the curriculum dict must not be changed"


def test_recipe_with_other_stages_is_refused(tmp_path):
    path = tmp_path / "r.yaml"
    raw = read_raw(DEFAULT_RECIPE)
    raw["stages"] = raw["stages"][1:]
    path.write_text(json.dumps(raw))
    with pytest.raises(RecipeError, match="stage0"):
        read_raw(path)
    with pytest.raises(RecipeError, match="not found"):
        read_raw(tmp_path / "missing.yaml")


# --- evaluation statistics ----------------------------------------------------------------------------------


def test_standard_error_is_the_binomial_one_for_zero_one_values():
    values = [1.0] * 30 + [0.0] * 70
    # sample sd with n - 1: sqrt(0.3 * 0.7 * 100 / 99) / sqrt(100)
    assert standard_error(values) == pytest.approx(math.sqrt(0.21 * 100 / 99) / 10, rel=1e-12)
    assert standard_error([0.5]) == 0.0


def test_paired_difference_cancels_problem_difficulty():
    a, b = [0.0, 0.5, 1.0, 0.5], [0.5, 1.0, 1.0, 1.0]
    out = paired_difference(a, b)
    diffs = [0.5, 0.5, 0.0, 0.5]
    assert out["difference"] == pytest.approx(0.375)
    assert out["se"] == pytest.approx(standard_error(diffs))
    assert out["z"] == pytest.approx(0.375 / standard_error(diffs))
    assert paired_difference([1.0, 0.0], [1.0, 0.0])["z"] is None


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    tok = build_toy_tokenizer()
    model = build_tiny_model(tok, seed=0)
    add_tags(tok, model)
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_evaluate_problems_scores_a_real_tiny_model(tiny_checkpoint):
    from parallel_r1.demo.evaluate import load_for_eval

    torch.manual_seed(0)
    model, tok, tags = load_for_eval(str(tiny_checkpoint))
    problems = heldout_problems("easy", 3)
    generation = SamplingConfig(max_new_tokens=24, max_path_tokens=8, max_summary_tokens=4)
    settings = EvalSettings(samples=2, generation=generation)
    out = evaluate_problems(model, tok, tags, problems, settings)
    assert out["num_problems"] == 3 and out["samples"] == 2
    assert len(out["per_problem_accuracy"]) == 3 and 0.0 <= out["accuracy"] <= 1.0
    assert out["accuracy"] == pytest.approx(sum(out["per_problem_accuracy"]) / 3)
    assert 0.0 <= out["truncated_ratio"] <= 1.0 and out["accuracy_se"] >= 0.0
    again = evaluate_problems(model, tok, tags, problems, settings)
    assert again == out, "the same settings must give the same samples"


# --- teacher table ------------------------------------------------------------------------------------------


def test_teacher_table_counts_the_recipes_own_problems(tmp_path):
    raw = curriculum_raw(DEFAULT_RECIPE, seed=0, quick=True)
    raw["stages"][1]["data"]["kwargs"]["n"] = 40
    raw["stages"][-1]["data"]["kwargs"]["n"] = 30  # with easy_share 0.5: 15 hard problems, 15 easy ones
    table = teacher_table(raw, tmp_path)
    easy, hard = table["splits"]["toy-easy"], table["splits"]["toy-hard"]
    assert (easy["samples"], hard["samples"]) == (40, 15)
    kept = len(cold_start_rows(40, **{k: raw["stages"][1]["data"]["kwargs"][k] for k in ("seed", "teacher_seed")}))
    assert easy["kept"] == pytest.approx(kept / 40)
    assert easy["valid_format"] > hard["valid_format"], "the teacher should fail on hard problems"
    lines = (tmp_path / "traces.jsonl").read_text().splitlines()
    assert len(lines) == 55 and {"set", "response", "check"} <= set(json.loads(lines[0]))
    assert "| toy-easy | 40 |" in table["markdown"]


def test_teacher_table_refuses_a_recipe_with_other_data(tmp_path):
    raw = curriculum_raw(DEFAULT_RECIPE, seed=0, quick=True)
    raw["stages"][1]["data"] = {"path": "x.jsonl"}
    with pytest.raises(ValueError, match="cold_start_rows"):
        teacher_table(raw, tmp_path)


# --- checkpoints, ablation summary, report ------------------------------------------------------------------


def test_stage_checkpoints_reads_the_stage_end_ones(tmp_path):
    def write(step, stage_index, done):
        path = tmp_path / "checkpoints" / f"step-{step:06d}"
        path.mkdir(parents=True)
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "stage_index": stage_index,
                                                             "stage_done": done}))  # fmt: skip

    write(10, 0, True)
    write(15, 1, False)
    write(20, 1, True)
    write(25, 2, True)
    found = stage_checkpoints(tmp_path, ["stage0", "sft", "rl"])
    assert {k: v.name for k, v in found.items()} == {"stage0": "step-000010", "sft": "step-000020", "rl": "step-000025"}
    (tmp_path / "checkpoints" / "step-000025" / "trainer_state.json").unlink()
    (tmp_path / "checkpoints" / "step-000025").rmdir()
    with pytest.raises(AssertionError, match="rl"):
        stage_checkpoints(tmp_path, ["stage0", "sft", "rl"])


def test_mean_sd_and_ablation_summary():
    assert mean_sd([0.2, 0.4, 0.6]) == (pytest.approx(0.4), pytest.approx(0.2))
    assert mean_sd([0.3]) == (0.3, 0.0)
    runs = [{"arm": "a", "seed": s, "start": "sft", "reward": "accuracy", "hard_accuracy": x, "parallel_ratio": p}
            for s, x, p in ((0, 0.2, 0.1), (1, 0.4, 0.3))]  # fmt: skip
    table = summarise(runs)
    assert table["a"]["hard_accuracy"] == pytest.approx(0.3)
    assert table["a"]["parallel_ratio_sd"] == pytest.approx(math.sqrt(0.02))
    assert table["a"]["seeds"] == [0, 1] and table["a"]["per_seed_accuracy"] == [0.2, 0.4]


def fake_report(rl_acc=0.30, wall=500.0, ablation=None) -> dict:
    stage = {"hard_accuracy": 0.2, "hard_accuracy_se": 0.02, "parallel_ratio": 0.9, "relative_position": 0.1,
             "response_tokens": 200.0, "easy_accuracy": 0.5, "easy_accuracy_se": 0.03, "easy_parallel_ratio": 0.95}  # fmt: skip
    report = {
        "config": {"seed": 0, "recipe": "r.yaml", "quick": False},
        "eval": {"settings": EvalSettings().to_dict(),
                 "sets": {"hard": {"problems": 200, "seed": EVAL_SEED}, "easy": {"problems": 200, "seed": EVAL_SEED}}},
        "stages": {"stage0": {**stage, "parallel_ratio": 0.0, "relative_position": None}, "sft": stage,
                   "rl": {**stage, "hard_accuracy": rl_acc, "parallel_ratio": 0.4}},
        "rl_dynamics": {"steps": 40, "window": 10, "first": {"accuracy": 0.1}, "last": {"accuracy": 0.3}},
        "outputs": {"plots": ["plots/parallel_ratio.png"]},
        "ablation": ablation,
        "resources": {"wall_s": wall, "cpu_s": 400.0, "peak_rss_mb": {"self": 700.0, "largest_child": 50.0},
                      "torch_threads": 1, "cpu_count": 2, "load_average_start": [1.0, 1.0, 1.0],
                      "load_average_end": [1.0, 1.0, 1.0], "phases": {"train": {"wall_s": 400.0, "cpu_s": 390.0}}},
    }  # fmt: skip
    report["rl_vs_sft"] = paired_difference([0.0] * 25 + [1.0] * 25, [1.0] * 25 + [1.0] * 25)
    report["rl_vs_start"] = {**report["rl_vs_sft"], "start": "sft"}
    report["stage0_own_prompt"] = {**stage, "parallel_ratio": 0.0, "template": "{problem}"}
    return report


def test_targets_report_what_was_measured():
    arm = {"seeds": [0, 1, 2], "hard_accuracy_sd": 0.02}
    ablation = {"arms": {"alternating": {**arm, "hard_accuracy": 0.35, "parallel_ratio": 0.5},
                         "accuracy": {**arm, "hard_accuracy": 0.36, "parallel_ratio": 0.1}}}  # fmt: skip
    report = fake_report(ablation=ablation)
    met = {t["target"].split(" ")[0]: t["met"] for t in targets(report)}
    assert len(targets(report)) == 6 and all(t["met"] for t in targets(report)), targets(report)
    assert met["wall"] and met["peak"]
    slow = fake_report(wall=900.0)
    assert [t["met"] for t in targets(slow)][:2] == [False, True]
    slow["resources"]["phases"]["ablation"] = {"wall_s": 400.0, "cpu_s": 390.0}
    assert targets(slow)[0]["met"] and targets(slow)[0]["measured"].startswith("500 s"), "the ablation is left out"
    flat = fake_report()
    flat["rl_vs_sft"] = paired_difference([0.5] * 10, [0.5] * 10)
    assert targets(flat)[2]["met"] is False
    # +3 points over SFT with a seed sd of 0.5 is "more than 2 sd", but not more than twice the noise
    # that includes SFT's own standard error (2 points): sqrt(0.5^2 / 3 + 2^2) = 2.02
    close = fake_report(ablation={"arms": {"alternating": {**arm, "hard_accuracy": 0.23, "hard_accuracy_sd": 0.005,
                                                           "parallel_ratio": 0.5}}})  # fmt: skip
    arm_target = targets(close)[4]
    assert arm_target["target"].startswith("alternating-arm RL beats SFT") and arm_target["met"] is False
    assert arm_target["measured"] == "+3.0 pts; seed sd 0.5 over 3 seeds, SFT se 2.0: noise 2.0"


def test_markdown_has_the_tables():
    report = fake_report()
    report["targets"] = targets(report)
    text = markdown(report, "| set | samples |")
    assert "| checkpoint | hard acc." in text and "| rl | 30.0 ± 2.0 | 40.0 |" in text
    assert "![plots/parallel_ratio.png](plots/parallel_ratio.png)" in text
    assert "## Targets" in text and "## Resources" in text and "| set | samples |" in text
    assert "with the prompt it was trained with ('{problem}')" in text


def test_meter_accumulates_phases():
    meter = Meter()
    for _ in range(2):
        with meter.phase("work"):
            sum(range(10_000))
    summary = meter.summary()
    assert set(summary["phases"]) == {"work"} and summary["phases"]["work"]["wall_s"] >= 0
    assert summary["peak_rss_mb"]["self"] > 0 and summary["cpu_count"] >= 1


# --- command ------------------------------------------------------------------------------------------------


def test_demo_command_is_registered_and_refuses_an_existing_run(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["demo", "--help"])
    assert result.exit_code == 0 and "--ablation" in result.output and "--quick" in result.output
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    result = runner.invoke(app, ["demo", "--quick", "--output", str(tmp_path)])
    assert result.exit_code == 2 and "already holds a demo run" in result.output
