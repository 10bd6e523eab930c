"""The curriculum runner on the toy world: metrics rows, checkpoints, bad input, exact resume after
SIGKILL and after Ctrl-C (real subprocesses), all with a tiny model built from a config."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from parallel_r1.data.teacher import teacher_traces
from parallel_r1.data.toy import toy_problems
from parallel_r1.data.toy_tokenizer import build_toy_tokenizer
from parallel_r1.train.config import RecipeError, recipe_from_dict
from parallel_r1.train.metrics import TIMING_KEYS
from parallel_r1.train.runner import run_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("toy_tok")
    build_toy_tokenizer().save_pretrained(path)
    return path


TOY = "parallel_r1.data.toy:toy_problems"
SFT_DATA = {"factory": "parallel_r1.data.teacher:teacher_traces",
            "kwargs": {"seed": 0, "problems": {"factory": TOY, "kwargs": {"split": "easy", "n": 32, "seed": 0}}}}  # fmt: skip


def scratch_model(tok_dir: Path) -> dict:
    return {
        "init": "scratch",
        "tokenizer": str(tok_dir),
        "config": {"model_type": "qwen3", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 64,
                   "max_position_embeddings": 512, "tie_word_embeddings": True},
    }  # fmt: skip


def sft_stage(steps: int, lr: float, batch: int = 8) -> dict:
    return {"name": "sft", "type": "sft", "data": SFT_DATA, "steps": steps, "batch_size": batch,
            "micro_batch_size": 4, "max_length": 256, "optimizer": {"lr": lr}}  # fmt: skip


def grpo_stage(steps: int, data: dict) -> dict:
    return {
        "name": "grpo", "type": "grpo", "data": data, "reward": {"name": "parallel_only"},
        "steps": steps, "batch_size": 4, "num_samples": 3, "micro_batch_size": 3,
        "generation": {"max_new_tokens": 24, "max_path_tokens": 6, "max_summary_tokens": 4},
        "grpo": {"minibatch_groups": 2, "clip_high": 0.28}, "optimizer": {"lr": 3e-3},
    }  # fmt: skip


def recipe(model: dict, stages: list[dict], every: int) -> dict:
    return {"name": "test", "mode": "unseen", "seed": 0, "threads": 1, "model": model, "stages": stages,
            "checkpoint": {"every": every, "keep_last": 1},
            "logging": {"progress": False, "tensorboard": False, "log_rollouts": 1}}  # fmt: skip


def read_metrics(path: Path, drop_timing: bool = True) -> list[dict]:
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not (drop_timing and k in TIMING_KEYS)} for r in rows]


@pytest.fixture(scope="module")
def warm(tok_dir, tmp_path_factory) -> Path:
    """A 20-step SFT run from scratch: the model then opens parallel blocks often enough that GRPO
    groups have reward variance (a random model never does, and its GRPO steps would be no-ops)."""
    out = tmp_path_factory.mktemp("warm")
    run_recipe(recipe_from_dict(recipe(scratch_model(tok_dir), [sft_stage(20, 2e-2)], every=8)), out)
    return out


def test_sft_run_writes_metrics_and_loadable_checkpoints(warm):
    rows = read_metrics(warm, drop_timing=False)
    assert [r["step"] for r in rows] == list(range(1, 21)) and {r["stage"] for r in rows} == {"sft"}
    for r in rows:
        for key in ("stage", "step", "reward_mean", "accuracy", "parallel_ratio", "format_valid_ratio",
                    "relative_position_mean", "response_length_mean", "critical_path_mean", "loss",
                    "grad_norm", "lr", "tokens_per_s", "step_time_s"):  # fmt: skip
            assert key in r, f"{key} missing from step {r['step']}"
    assert rows[-1]["loss"] < rows[0]["loss"] - 2.0  # it learns the toy traces
    ckpts = warm / "checkpoints"
    # saved at 8, 16 and 20 (stage end); keep_last 1 leaves the newest
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-000020"]
    model = AutoModelForCausalLM.from_pretrained(ckpts / "step-000020" / "model")
    tok = AutoTokenizer.from_pretrained(ckpts / "step-000020" / "model")
    assert tok.convert_tokens_to_ids("<Parallel>") == 3 and model.config.num_hidden_layers == 1
    state = json.loads((ckpts / "step-000020" / "trainer_state.json").read_text())
    assert state["stage_done"] and state["metrics_lines"] == 20 and state["data_order"]["position"] > 0
    with pytest.raises(RecipeError, match="already holds a run"):
        run_recipe(recipe_from_dict(recipe({"name_or_path": str(ckpts / "step-000020" / "model")},
                                           [sft_stage(1, 1e-3)], every=0)), warm)  # fmt: skip


def test_empty_dataset_and_missing_answers_are_reported(tok_dir, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [{"id": "a", "question": "1+1?"}, {"id": "b", "question": "2+2?", "answer": ""}]))
    raw = recipe(scratch_model(tok_dir), [sft_stage(1, 1e-3), grpo_stage(1, {"path": str(data)})], every=0)
    with pytest.raises(RecipeError, match=r"stages\[1\]\.data: no usable rows .*2 without an answer \(first: a\)"):
        run_recipe(recipe_from_dict(raw), tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_prompt_over_budget_is_skipped_and_counted(tok_dir, tmp_path):
    raw = recipe(scratch_model(tok_dir), [grpo_stage(1, {"factory": TOY, "kwargs": {"split": "easy", "n": 40, "seed": 1}})], every=0)
    raw["stages"][0]["max_prompt_tokens"] = 30
    run_recipe(recipe_from_dict(raw), tmp_path)
    report = json.loads((tmp_path / "run_info.json").read_text())["data"][0]
    skipped = report["skipped"]["prompt longer than max_prompt_tokens 30"]
    assert skipped > 0 and report["kept"] == 40 - skipped


# --- exact resume --------------------------------------------------------------------------------------


def _start(recipe_file: Path, out: Path, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "parallel_r1.train", str(recipe_file), "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(cmd + (["--resume"] if resume else []), env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _signal_after(proc: subprocess.Popen, out: Path, lines: int, sig: int) -> None:
    """Send ``sig`` once metrics.jsonl has ``lines`` rows (the run must still be going)."""
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if metrics.exists() and metrics.read_text().count("\n") >= lines:
            assert proc.poll() is None, "the run finished before it could be interrupted"
            proc.send_signal(sig)
            return
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.005)
    raise AssertionError("the run made no progress")


def start_rows(path: Path) -> dict:
    """GRPO prompts that end where the teacher traces open their block ("Start: N."), so the warm
    model's samples differ in whether they hold a valid block: parallel_only rewards then vary."""
    rows = [{"id": t["id"], "question": t["question"] + "\n" + t["response"].split("\n")[0], "answer": t["answer"]}
            for t in teacher_traces(toy_problems("easy", 8, 1), 0)]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return {"path": str(path)}


def test_grpo_resume_after_sigkill_and_ctrl_c_gives_the_same_metrics(warm, tmp_path):
    model = {"name_or_path": str(warm / "checkpoints" / "step-000020" / "model")}
    raw = recipe(model, [sft_stage(2, 1e-3, batch=4), grpo_stage(6, start_rows(tmp_path / "rows.jsonl"))], every=3)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(raw))
    run_recipe(recipe_from_dict(raw), tmp_path / "ref")
    reference = read_metrics(tmp_path / "ref")
    grpo = [r for r in reference if r["type"] == "grpo"]
    assert len(grpo) == 6 and all(r["num_rollouts"] == 12 for r in grpo)
    for key in ("clip_fraction", "entropy", "kl", "ppo_kl", "optimizer_steps", "relative_position_mean"):
        assert all(key in r for r in grpo), key
    assert all(abs(r["logprob_diff_sampler"]) < 1e-4 for r in grpo)  # Unseen engine == Unseen trainer
    assert sum(r["grad_norm"] > 0 for r in grpo) >= 2, "GRPO barely updated: a weak resume test"
    assert (tmp_path / "ref" / "rollouts.jsonl").read_text().count("\n") == 6  # one logged rollout per step

    out = tmp_path / "run"
    proc = _start(recipe_file, out, resume=False)
    _signal_after(proc, out, lines=4, sig=signal.SIGKILL)  # checkpoint at 3; step 4 (or 5) is redone
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed = read_metrics(out)
    assert 4 <= len(killed) < len(reference) - 2

    proc = _start(recipe_file, out, resume=True)
    _signal_after(proc, out, lines=len(killed) + 1, sig=signal.SIGINT)
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, log
    stopped = read_metrics(out)
    last = (out / "checkpoints" / "latest").read_text().strip()
    assert last == f"step-{len(stopped):06d}", "Ctrl-C must checkpoint the last completed step"

    proc = _start(recipe_file, out, resume=True)
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, log
    resumed = read_metrics(out)
    # The sampler-vs-trainer gap is a diagnostic of the engine's own float noise (~3e-7 here); its
    # last digits differ between a pytest process and a fresh one, even with no interruption at all.
    gap = "logprob_diff_sampler"
    assert [r.get(gap) for r in resumed] == pytest.approx([r.get(gap) for r in reference], abs=1e-6)
    assert [{k: v for k, v in r.items() if k != gap} for r in resumed] == [
        {k: v for k, v in r.items() if k != gap} for r in reference
    ]


@pytest.mark.slow
def test_smoke_recipe(tmp_path):
    """configs/smoke.yaml: SFT then GRPO on the toy world, a checkpoint before the end."""
    from parallel_r1.train.config import load_recipe

    recipe_file = REPO / "configs" / "smoke.yaml"
    recipe = load_recipe(recipe_file)
    run_recipe(recipe, tmp_path)
    rows = read_metrics(tmp_path)
    n_sft, n_grpo = recipe.stages[0].steps, recipe.stages[1].steps
    assert [r["type"] for r in rows] == ["sft"] * n_sft + ["grpo"] * n_grpo
    assert rows[n_sft - 1]["loss"] < rows[0]["loss"]
    assert all(r["loss"] is not None for r in rows)
    saved = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert saved[0] < f"step-{len(rows):06d}" and saved[-1] == f"step-{len(rows):06d}"


def test_nonfinite_loss_is_skipped_counted_then_stops_the_run(tok_dir, tmp_path):
    """An absurd learning rate blows the weights up after step 1: later steps are skipped (and logged
    as such) until MAX_NONFINITE_STEPS in a row stop the run with a clear error."""
    from parallel_r1.train.runner import MAX_NONFINITE_STEPS

    raw = recipe(scratch_model(tok_dir), [sft_stage(10, 1e30, batch=4)], every=0)
    with pytest.raises(FloatingPointError, match=f"non-finite for {MAX_NONFINITE_STEPS} steps in a row"):
        run_recipe(recipe_from_dict(raw), tmp_path)
    rows = read_metrics(tmp_path)
    assert rows[0]["skipped_nonfinite"] == 0
    assert [r["skipped_nonfinite"] for r in rows[-MAX_NONFINITE_STEPS:]] == [1] * MAX_NONFINITE_STEPS
    assert rows[-1]["grad_norm"] is None  # inf / NaN are written as null: metrics.jsonl stays valid JSON


def test_cli_entry_reports_a_bad_recipe_and_exits_2(tmp_path, caplog):
    from parallel_r1.train.runner import train_main

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"name_or_path": "x"}, "stages": [{"name": "a", "type": "sft",
                   "data": {"path": "x.jsonl"}, "steps": 1, "optimizer": {"lr": 1e-5, "lrr": 1}}]}))  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        train_main(bad, tmp_path / "out")
    assert exit_info.value.code == 2
    assert "stages[0].optimizer.lrr: unknown key" in caplog.text


@pytest.mark.parametrize("entry", ["tokenizer", "name_or_path"])
def test_missing_or_file_model_paths_name_the_recipe_entry(tok_dir, tmp_path, entry):
    """A mistyped local path fails as a bad recipe naming the entry, not as a hub repo-id error."""
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"")
    for path, why in ((tmp_path / "nope", "does not exist"), (a_file, "is a file, not a model directory")):
        model = {**scratch_model(tok_dir), entry: str(path)}
        with pytest.raises(RecipeError, match=rf"model\.{entry}: .* {why}"):
            run_recipe(recipe_from_dict(recipe(model, [sft_stage(1, 1e-3)], every=0)), tmp_path / "out")


def test_resume_refuses_a_changed_recipe_and_a_finished_run_stays_finished(warm, tok_dir):
    raw = recipe(scratch_model(tok_dir), [sft_stage(20, 2e-2)], every=8)
    changed = copy.deepcopy(raw)
    changed["stages"][0]["optimizer"]["lr"] = 1e-3
    with pytest.raises(RecipeError, match=r"^stages\[0\]\.optimizer\.lr: the recipe changed"):
        run_recipe(recipe_from_dict(changed), warm, resume=True)
    before = (warm / "metrics.jsonl").read_text()
    result = run_recipe(recipe_from_dict(raw), warm, resume=True)
    assert result.global_step == 20 and (warm / "metrics.jsonl").read_text() == before


def test_each_stage_starts_with_a_fresh_optimiser(tok_dir, tmp_path):
    """Recipes rely on it: the scaffold recipe's accuracy-only stage must not inherit the moment
    estimates of the stage before (the reference starts a new run there). AdamW's per-parameter step
    count at the end of the second stage is that stage's own step count, not the run's."""
    import torch

    stages = [sft_stage(3, 1e-3), {**sft_stage(2, 1e-3), "name": "sft-again"}]
    run_recipe(recipe_from_dict(recipe(scratch_model(tok_dir), stages, every=0)), tmp_path)
    for step, stage_steps in ((3, 3), (5, 2)):
        state = torch.load(tmp_path / "checkpoints" / f"step-{step:06d}" / "optimizer.pt", weights_only=True)
        counts = {float(s["step"]) for s in state["state"].values()}
        assert counts == {float(stage_steps)}, (step, counts)
