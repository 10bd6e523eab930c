"""``eval --scorer {default,reference,both}``: per-scorer mean@k / pass@k, disagreements, table rows, resume.

The two scorers disagree deterministically on an answer written with decimals: gold ``5`` and
``Final Answer: 5.00`` is correct under the default scorer (numeric equivalence) and wrong under the
reference's (string match after Minerva normalisation). ``ScriptedPolicy`` makes the real engine
write such answers for chosen (problem, sample) pairs.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from parallel_r1.cli import app
from parallel_r1.data.problems import load_problems
from parallel_r1.data.prompts import load_template
from parallel_r1.engine.engine import Engine
from parallel_r1.eval.loading import load_model
from parallel_r1.eval.metrics import SampleRecord
from parallel_r1.eval.resume import ResumeError, ResumeState
from parallel_r1.eval.run import EvalConfig, evaluate, prepare
from parallel_r1.eval.scoring import judge_with, line_fields, scorer_metrics, scorer_names
from parallel_r1.eval.table import disagreement_lines, markdown_table
from test_eval_fixtures import ScriptedPolicy, save_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    save_tiny_model(path)
    return path


def test_scorer_names():
    assert scorer_names("default") == ("default",)
    assert scorer_names("reference") == ("reference",)
    assert scorer_names("both") == ("default", "reference")
    with pytest.raises(ValueError, match="unknown scorer 'exact'"):
        scorer_names("exact")
    with pytest.raises(ValueError, match="unknown scorer"):
        EvalConfig(model="m", benchmarks=["toy-easy"], scorer="exact")


def _judged(answers: list[tuple[str, str, str]]):
    """Records (default verdicts) and response lines (+ reference verdicts) for (problem, answer, gold)."""
    responses = [f"work\nFinal Answer: {a}" for _, a, _ in answers]
    verdicts = judge_with(("default", "reference"), responses, [g for _, _, g in answers])
    records, rows = [], []
    for i, (pid, _, gold) in enumerate(answers):
        v = verdicts["default"][i]
        records.append(SampleRecord(pid, i % 2, v.correct, v.format_valid, 0, 0, 5, 5))
        rows.append({"problem_id": pid, "sample_index": i % 2, "gold": gold, "correct": v.correct,
                     "extracted": v.extracted, "reference": line_fields(verdicts["reference"][i])})
    return records, rows


def test_scorer_metrics_on_constructed_verdicts():
    records, rows = _judged([("p0", "36", "36"), ("p0", "36.00", "36"),  # both right / only default
                             ("p1", "7", "8"), ("p1", "8.0", "8")])  # both wrong / only default
    out = scorer_metrics(records, rows, ("default", "reference"))
    assert out["by_scorer"]["default"] == {"mean_at_k": 0.75, "pass_at_k": 1.0, "pass_at": {"1": 0.75, "2": 1.0}}
    assert out["by_scorer"]["reference"] == {"mean_at_k": 0.25, "pass_at_k": 0.5, "pass_at": {"1": 0.25, "2": 0.5}}
    dis = out["disagreements"]
    assert dis["count"] == 2 and dis["responses"] == 4
    assert dis["examples"][0] == {"problem_id": "p0", "sample_index": 1, "gold": "36",
                                  "extracted": {"default": "36.00", "reference": "36.00"},
                                  "correct": {"default": True, "reference": False}}
    assert [e["problem_id"] for e in dis["examples"]] == ["p0", "p1"]
    assert "disagreements" not in scorer_metrics(records, rows, ("default",))


def _scripted_eval(model_dir, tmp_path, scorer: str, answer_of):
    cfg = EvalConfig(model=str(model_dir), benchmarks=["toy-easy"], samples=2, limit=3, max_tokens=64, scorer=scorer)
    loaded = load_model(str(model_dir))
    template = load_template("parallel")
    runs = prepare(cfg, template, loaded.tokenizer, chat=True)
    state = ResumeState(tmp_path / "out.json", cfg.fingerprint(template), config=cfg.record(template))
    engine = Engine(loaded.model, loaded.tokenizer, loaded.tag_ids)
    result = evaluate(lambda: engine, runs, cfg, state, tmp_path / "r.jsonl",
                      logits_processors=[ScriptedPolicy(loaded.tokenizer, answer_of)])
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    return result, rows


@pytest.fixture(scope="module")
def toy_answers():
    """(0,0) right; (0,1) and (2,0) right only by value ("5.00"); (1,0), (2,1) wrong; (1,1) right."""
    golds = [p.answer for p in load_problems("toy-easy", limit=3)]
    kinds = {(0, 0): "", (0, 1): ".00", (1, 0): "7", (1, 1): "", (2, 0): ".00", (2, 1): "7"}
    return lambda i, s: golds[i] + kinds[(i, s)]


def test_both_scorers_through_the_engine(model_dir, tmp_path, toy_answers):
    result, rows = _scripted_eval(model_dir, tmp_path, "both", toy_answers)
    m = result["benchmarks"]["toy-easy"]
    default, reference = m["by_scorer"]["default"], m["by_scorer"]["reference"]
    assert default["mean_at_k"] == pytest.approx((1 + 0.5 + 0.5) / 3) and default["pass_at_k"] == 1.0
    assert reference["mean_at_k"] == pytest.approx((0.5 + 0.5 + 0) / 3) and reference["pass_at_k"] == pytest.approx(2 / 3)
    assert m["mean_at_k"] == default["mean_at_k"]  # the top-level figures stay the default scorer's
    assert result["average"]["by_scorer"]["reference"]["mean_at_k"] == reference["mean_at_k"]
    assert result["config"]["scorer"] == "both"

    dis = m["disagreements"]
    assert dis["count"] == 2 and dis["responses"] == 6
    assert [(e["problem_id"], e["sample_index"]) for e in dis["examples"]] == [("toy-easy-0-0", 1), ("toy-easy-0-2", 0)]
    assert dis["examples"][0]["correct"] == {"default": True, "reference": False}
    assert all(r["reference"]["format_valid"] for r in rows)  # the scripted trace is valid for both
    assert sum(r["correct"] != r["reference"]["correct"] for r in rows) == 2

    table = markdown_table(result, "tiny")
    assert "| tiny (default scorer) | 100.0 | 66.7/100.0 | 66.7 |" in table
    assert "| tiny (reference scorer) | 100.0 | 33.3/66.7 | 33.3 |" in table
    assert disagreement_lines(result)[0].startswith("toy-easy: the scorers disagree on 2 of 6 responses")


def test_reference_scorer_alone(model_dir, tmp_path, toy_answers):
    result, rows = _scripted_eval(model_dir, tmp_path, "reference", toy_answers)
    m = result["benchmarks"]["toy-easy"]
    assert m["mean_at_k"] == pytest.approx(1 / 3) and m["pass_at_k"] == pytest.approx(2 / 3)
    assert list(m["by_scorer"]) == ["reference"] and "disagreements" not in m
    assert [r["correct"] for r in rows] == [True, False, False, True, False, False]
    assert "reference" not in rows[0]
    table = markdown_table(result, "tiny")
    assert "| tiny (reference scorer) | 100.0 | 33.3/66.7 | 33.3 |" in table and "default scorer" not in table
    assert disagreement_lines(result) == []


def test_result_stored_without_scorer_resumes_as_default(tmp_path):
    """Results written before ``scorer`` existed were judged by the default scorer: reused by a
    default run, refused (naming the setting) by another."""
    template = load_template("parallel")
    cfg = EvalConfig(model="m", benchmarks=["toy-easy"], samples=2)
    old_config = {k: v for k, v in cfg.record(template).items() if k != "scorer"}
    stored = {"samples": 2, "data_digest": "d", "mean_at_k": 0.5}
    out = tmp_path / "old.json"
    out.write_text(json.dumps({"config": old_config, "benchmarks": {"toy-easy": stored}}))
    assert ResumeState(out, cfg.fingerprint(template)).finished("toy-easy", 2, "d") == stored
    both = EvalConfig(model="m", benchmarks=["toy-easy"], samples=2, scorer="both")
    with pytest.raises(ResumeError, match="scorer: 'default' -> 'both'"):
        ResumeState(out, both.fingerprint(template))


def test_old_default_result_table_has_one_plain_row():
    """A stored result without ``by_scorer`` (before the setting) still prints as before."""
    m = {"samples": 2, "mean_at_k": 0.5, "pass_at_k": 1.0}
    table = markdown_table({"benchmarks": {"aime24": m}, "average": {"parallel_ratio": 0.25, "mean_at_k": 0.5}}, "x")
    assert table.splitlines()[-1] == "| x | 25.0 | 50.0/100.0 | 50.0 |"


def test_bad_scorer_is_a_usage_error_before_loading(tmp_path):
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "no-model"), "--benchmarks", "toy-easy",
                                      "--output", str(tmp_path / "o.json"), "--scorer", "exact"])
    assert result.exit_code == 2, result.output
    assert "--scorer" in result.output and not (tmp_path / "o.json").exists()


def test_cli_both_scorers(model_dir, tmp_path):
    out = tmp_path / "res.json"
    args = ["eval", str(model_dir), "--benchmarks", "toy-easy,toy-hard:1", "--output", str(out), "--samples", "2",
            "--limit", "2", "--max-tokens", "12", "--batch-size", "8", "--no-progress", "--scorer", "both"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    result = json.loads(out.read_text())
    rows = [json.loads(line) for line in (tmp_path / "res.responses.jsonl").read_text().splitlines()]
    for bench, m in result["benchmarks"].items():
        assert set(m["by_scorer"]) == {"default", "reference"}
        assert all(0 <= s["mean_at_k"] <= s["pass_at_k"] <= 1 for s in m["by_scorer"].values())
        mine = [r for r in rows if r["benchmark"] == bench]
        assert m["disagreements"]["count"] == sum(r["correct"] != r["reference"]["correct"] for r in mine)
        assert m["disagreements"]["responses"] == len(mine)
        assert f"{bench}: the scorers disagree on {m['disagreements']['count']} of " in first.output
    assert result["config"]["scorer"] == "both"
    assert f"| {model_dir.name} (default scorer) | " in first.output
    assert f"| {model_dir.name} (reference scorer) | " in first.output

    again = CliRunner().invoke(app, args[:-1] + ["default"])  # stored verdicts of another scorer: refused
    assert again.exit_code == 1 and "scorer: 'both' -> 'default'" in again.output
