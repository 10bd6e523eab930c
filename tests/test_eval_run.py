"""``parallel-r1 eval``: benchmark specs, exact metrics through the real engine, the CLI, resume, bad input.

A tiny random Qwen3 model with the toy tokenizer is saved to a temporary folder and loaded by path.
Where exact figures are checked, ``ScriptedPolicy`` (a logits processor the real engine runs) forces
a known valid parallel response with a chosen answer per (problem, sample).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from parallel_r1.cli import app
from parallel_r1.data.problems import load_problems
from parallel_r1.data.prompts import load_template
from parallel_r1.engine.engine import Engine
from parallel_r1.eval.loading import ModelLoadError, load_model, load_tokenizer
from parallel_r1.eval.resume import ResumeState, sidecar_path
from parallel_r1.eval.run import BenchmarkSpec, EvalConfig, evaluate, parse_benchmarks, prepare
from test_eval_fixtures import PATH_LENGTHS, ScriptedPolicy, save_tiny_model

SHARED = Path(os.environ.get("PARALLEL_R1_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    save_tiny_model(path)
    return path


def test_parse_benchmarks():
    specs = parse_benchmarks(["aime24", "math500:1", "data/my.set.jsonl:4", "toy-easy"], 16)
    assert specs == [
        BenchmarkSpec("aime24", "aime24", 16),
        BenchmarkSpec("math500", "math500", 1),
        BenchmarkSpec("my.set", "data/my.set.jsonl", 4),
        BenchmarkSpec("toy-easy", "toy-easy", 16),
    ]
    with pytest.raises(ValueError, match="listed twice"):
        parse_benchmarks(["aime24", "aime24:2"], 16)
    with pytest.raises(ValueError, match="bad benchmark spec"):
        parse_benchmarks(["aime24:0"], 16)


def test_scripted_eval_gives_exact_metrics(model_dir, tmp_path):
    """Problem 0: both samples right; problem 1: sample 0 right; problem 2: none right."""
    problems = load_problems("toy-easy", limit=3)
    right = {(0, 0), (0, 1), (1, 0)}

    def answer_of(i, s):
        gold = problems[i].answer
        return gold if (i, s) in right else gold + "7"

    cfg = EvalConfig(model=str(model_dir), benchmarks=["toy-easy"], samples=2, limit=3, max_tokens=64)
    loaded = load_model(str(model_dir))
    policy = ScriptedPolicy(loaded.tokenizer, answer_of)
    runs = prepare(cfg, load_template("parallel"), loaded.tokenizer, chat=True)
    template = load_template("parallel")
    state = ResumeState(tmp_path / "out.json", cfg.fingerprint(template), config=cfg.record(template))
    engine = Engine(loaded.model, loaded.tokenizer, loaded.tag_ids)
    result = evaluate(lambda: engine, runs, cfg, state, tmp_path / "r.jsonl", logits_processors=[policy])

    m = result["benchmarks"]["toy-easy"]
    lengths = [policy.expected_ids_len(answer_of(i, s)) for i in range(3) for s in range(2)]
    assert m["num_problems"] == 3 and m["samples"] == 2
    assert m["mean_at_k"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["pass_at_k"] == pytest.approx(2 / 3)
    assert m["pass_at"]["1"] == pytest.approx(0.5)
    assert m["parallel_ratio"] == 1.0 and m["valid_parallel_ratio"] == 1.0 and m["format_valid_ratio"] == 1.0
    assert m["mean_blocks"] == 1.0
    assert m["mean_response_tokens"] == pytest.approx(sum(lengths) / 6)
    # the critical path skips the shorter path (its <Path>, content and </Path>)
    assert m["mean_critical_path_tokens"] == pytest.approx(sum(lengths) / 6 - (min(PATH_LENGTHS) + 2))
    # <Parallel> is response token 1
    assert m["mean_relative_position"] == pytest.approx(sum(1 / n for n in lengths) / 6)
    assert result["average"]["mean_at_k"] == m["mean_at_k"]
    assert result["config"]["samples"] == 2 and result["config"]["benchmarks"] == ["toy-easy"]
    assert json.loads((tmp_path / "out.json").read_text()) == result
    assert not sidecar_path(tmp_path / "out.json").exists()

    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [(r["problem_id"], r["sample_index"], r["correct"]) for r in rows] == [
        (problems[i].id, s, (i, s) in right) for i in range(3) for s in range(2)
    ]
    assert rows[0]["response"].startswith("a<Parallel><Path>aa</Path><Path>aaa</Path></Parallel><Summary>a</Summary>")
    assert rows[0]["extracted"] == problems[0].answer and rows[0]["finish_reason"] == "eos"


def invoke(*args):
    result = CliRunner().invoke(app, ["eval", *map(str, args)])
    return result


def base_args(model_dir, out, *extra):
    return (model_dir, "--output", out, "--samples", 2, "--limit", 2, "--max-tokens", 12, "--batch-size", 8,
            "--no-progress", *extra)


def test_cli_writes_result_table_and_resumes(model_dir, tmp_path):
    out = tmp_path / "res.json"
    first = invoke(*base_args(model_dir, out, "--benchmarks", "toy-easy"))
    assert first.exit_code == 0, first.output
    result = json.loads(out.read_text())
    assert set(result) == {"benchmarks", "average", "config"}
    assert result["config"]["benchmarks"] == ["toy-easy"] and result["config"]["temperature"] == 1.0
    m = result["benchmarks"]["toy-easy"]
    assert m["num_problems"] == 2 and m["samples"] == 2 and 0 <= m["mean_at_k"] <= 1
    assert m["mean_response_tokens"] <= 12
    assert "| method | par.% | toy-easy m/p@2 | avg |" in first.output
    assert f"| {model_dir.name} | " in first.output
    responses = tmp_path / "res.responses.jsonl"
    assert len(responses.read_text().splitlines()) == 4

    # an interrupted run: toy-easy finished (only in the sidecar), toy-hard not; the stored toy-easy
    # entry carries a marker, so reusing it (rather than re-sampling) is visible in the final file
    m["mean_at_k"] = 0.123
    sidecar_path(out).write_text(json.dumps({"config": result["config"], "benchmarks": {"toy-easy": m}}))
    out.unlink()
    second = invoke(*base_args(model_dir, out, "--benchmarks", "toy-easy,toy-hard:1"))
    assert second.exit_code == 0, second.output
    result2 = json.loads(out.read_text())
    assert result2["benchmarks"]["toy-easy"]["mean_at_k"] == 0.123
    assert result2["benchmarks"]["toy-hard"]["samples"] == 1
    assert list(result2["benchmarks"]) == ["toy-easy", "toy-hard"]
    assert not sidecar_path(out).exists()
    lines = [json.loads(x) for x in responses.read_text().splitlines()]
    assert [r["benchmark"] for r in lines] == ["toy-easy"] * 4 + ["toy-hard"] * 2
    assert "toy-hard" in second.output and "| toy-easy m/p@2 | toy-hard |" in second.output

    # a different config is refused (naming the difference) unless --fresh
    third = invoke(*base_args(model_dir, out, "--benchmarks", "toy-easy", "--temperature", 0.5))
    assert third.exit_code == 1
    assert "different eval config" in third.output and "temperature: 1.0 -> 0.5" in third.output
    fourth = invoke(*base_args(model_dir, out, "--benchmarks", "toy-easy", "--temperature", 0.5, "--fresh"))
    assert fourth.exit_code == 0, fourth.output
    assert json.loads(out.read_text())["benchmarks"]["toy-easy"]["mean_at_k"] != 0.123
    assert len(responses.read_text().splitlines()) == 4
    # another k is not a config conflict: that benchmark alone is sampled again
    fifth = invoke(*base_args(model_dir, out, "--benchmarks", "toy-easy:3", "--temperature", 0.5))
    assert fifth.exit_code == 0, fifth.output
    assert json.loads(out.read_text())["benchmarks"]["toy-easy"]["samples"] == 3
    assert len(responses.read_text().splitlines()) == 6


def test_finished_run_reprints_without_loading_the_model(model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    out = tmp_path / "res.json"
    first = invoke(*base_args(model, out, "--benchmarks", "toy-easy"))
    assert first.exit_code == 0, first.output
    for weights in model.glob("*.safetensors"):
        weights.unlink()  # loading the model would now fail
    again = invoke(*base_args(model, out, "--benchmarks", "toy-easy"))
    assert again.exit_code == 0, again.output
    tables = [[ln for ln in r.stdout.splitlines() if ln.startswith("|")] for r in (first, again)]
    assert tables[0] == tables[1] and len(tables[0]) == 6


def test_same_seed_same_result_and_changed_data_reruns(model_dir, tmp_path):
    data = tmp_path / "set.jsonl"
    data.write_text('{"id": "p1", "question": "What is 2 + 3?", "answer": "5"}\n')
    out_a, out_b = tmp_path / "a.json", tmp_path / "b.json"
    assert invoke(*base_args(model_dir, out_a, "--benchmarks", str(data))).exit_code == 0
    assert invoke(*base_args(model_dir, out_b, "--benchmarks", str(data))).exit_code == 0
    ra = (tmp_path / "a.responses.jsonl").read_text()
    assert ra == (tmp_path / "b.responses.jsonl").read_text()
    # the file changes under the same name: its stored entry no longer matches and is re-evaluated
    result = json.loads(out_a.read_text())
    result["benchmarks"]["set"]["mean_at_k"] = 0.5
    out_a.write_text(json.dumps(result))
    data.write_text('{"id": "p1", "question": "What is 2 + 4?", "answer": "6"}\n')
    assert invoke(*base_args(model_dir, out_a, "--benchmarks", str(data))).exit_code == 0
    rerun = json.loads(out_a.read_text())["benchmarks"]["set"]
    assert rerun["mean_at_k"] != 0.5 and rerun["data_digest"] != result["benchmarks"]["set"]["data_digest"]


def test_tokenizer_without_tags_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"lacks the parallel-thinking tags.*add_tags"):
        load_tokenizer(str(FIXTURES / "smollm2_tokenizer"))
    res = invoke(FIXTURES / "smollm2_tokenizer", "--benchmarks", "toy-easy", "--output", tmp_path / "x.json")
    assert res.exit_code == 1 and "lacks the parallel-thinking tags" in res.output


def test_missing_local_model_path_is_a_clear_error(tmp_path):
    (tmp_path / "latest").write_text("step-000100\n")
    with pytest.raises(ModelLoadError, match=r"model path .*/nope does not exist"):
        load_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match=r"is a file, not a model directory"):
        load_tokenizer(str(tmp_path / "latest"))
    res = invoke(tmp_path / "nope", "--benchmarks", "toy-easy", "--output", tmp_path / "x.json")
    assert res.exit_code == 1 and "does not exist" in res.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--benchmarks", "nonesuch"], "unknown problem set 'nonesuch'"),
        (["--benchmarks", "toy-easy", "--prompt", "missing.txt"], "unknown prompt template"),
        (["--benchmarks", "toy-easy", "--top-p", "0"], "top_p must be in (0, 1]"),
    ],
)
def test_bad_input_fails_before_sampling(model_dir, tmp_path, extra, message):
    out = tmp_path / "x.json"
    res = invoke(model_dir, "--output", out, "--no-progress", *extra)
    assert res.exit_code == 1 and message in res.output
    assert not out.exists() and not sidecar_path(out).exists()


@pytest.mark.skipif(not (SHARED / "data" / "aime24.jsonl").is_file(), reason="../shared/data is absent")
def test_named_benchmark_with_the_reference_prompt(model_dir, tmp_path):
    out = tmp_path / "ref.json"
    prompt = SHARED / "data" / "prompts" / "reference_parallel_prompt.txt"
    res = invoke(model_dir, "--benchmarks", "aime24:1,amc23:1", "--data-dir", SHARED / "data", "--limit", 1,
                 "--prompt", prompt, "--max-tokens", 4, "--output", out, "--no-progress", "--mode", "seen")
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert [m["num_problems"] for m in result["benchmarks"].values()] == [1, 1]
    assert result["config"]["mode"] == "seen"
    assert "| method | par.% | AIME24 | AMC23 | avg |" in res.output
