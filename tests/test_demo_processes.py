"""``demo --processes 2``: the SFT stages as two data-parallel processes (torchrun, gloo on CPU) give the
one-process parameters, the GRPO stage resumes in one process from their stage-closing checkpoint, the
background evaluation gives the in-process result, and a failing child fails the demo with its traceback
instead of hanging. Real processes, a tiny model built from a config."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from parallel_r1.demo.launch import EvalChild, train_sft_stages, train_stages
from parallel_r1.demo.recipes import to_recipe
from parallel_r1.train.runner import run_recipe


def _raw(tok_dir) -> dict:
    easy = {"factory": "parallel_r1.data.toy:toy_problems", "kwargs": {"split": "easy", "n": 16, "seed": 0}}
    sft = {"type": "sft", "steps": 3, "batch_size": 8, "micro_batch_size": 2, "max_length": 256,
           "data": {"factory": "parallel_r1.data.teacher:teacher_traces", "kwargs": {"seed": 0, "problems": easy}},
           "optimizer": {"lr": 1e-2}}  # fmt: skip
    return {
        "model": {"init": "scratch", "tokenizer": str(tok_dir),
                  "config": {"model_type": "qwen3", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                             "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 64,
                             "max_position_embeddings": 512, "tie_word_embeddings": True}},
        "stages": [{"name": "a", **sft}, {"name": "b", **copy.deepcopy(sft), "steps": 2},
                   {"name": "rl", "type": "grpo", "steps": 2, "batch_size": 2, "num_samples": 2,
                    "data": copy.deepcopy(easy), "reward": {"name": "accuracy"}, "optimizer": {"lr": 1e-3},
                    "generation": {"max_new_tokens": 24, "max_path_tokens": 8, "max_summary_tokens": 8}}],
        "checkpoint": {"every": 0, "keep_last": 1},
        "logging": {"progress": False, "tensorboard": False},
    }  # fmt: skip


def _weights(run_dir, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "checkpoints" / f"step-{step:06d}" / "model" / "model.safetensors")


@pytest.fixture
def tok_dir(tmp_path):
    from parallel_r1.data.toy_tokenizer import build_toy_tokenizer

    path = tmp_path / "tok"
    build_toy_tokenizer().save_pretrained(path)
    return path


def _metrics(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


TIMING = ("step_time_s", "tokens_per_s", "elapsed_s", "generate_time_s", "update_time_s")


@pytest.mark.slow
def test_ordered_two_process_sft_stages_equal_one_process_bit_for_bit_then_grpo_resumes_in_one(tmp_path, tok_dir):
    raw = {**_raw(tok_dir), "data_parallel": "ordered"}
    raw["stages"][0]["micro_batch_size"] = 1  # 8 micro-batches of uneven length: a real split
    one, two = tmp_path / "one", tmp_path / "two"
    run_recipe(to_recipe(raw), one, first_stages=2)
    train_sft_stages(raw, two, processes=2, threads=1, timeout=300)
    assert json.loads((two / "run_info.json").read_text())["world_size"] == 2
    assert not (one / "checkpoints" / "step-000007").exists(), "first_stages=2 must stop before the GRPO stage"
    for step in (3, 5):  # the end of each SFT stage
        w1, w2 = _weights(one, step), _weights(two, step)
        assert w1.keys() == w2.keys()
        for name, p in w1.items():
            assert torch.equal(w2[name], p), f"step {step}: {name} differs"
    for run_dir in (one, two):  # the GRPO stage in one process, from the 1- and the 2-process checkpoint
        run_recipe(to_recipe(raw), run_dir, resume=True)
        assert json.loads((run_dir / "run_info.json").read_text())["world_size"] == 1
    rows = [[{k: v for k, v in r.items() if k not in TIMING} for r in _metrics(d)] for d in (one, two)]
    assert [r["stage"] for r in rows[1]] == ["a"] * 3 + ["b"] * 2 + ["rl"] * 2
    assert rows[0] == rows[1]  # losses, gradient norms, rewards: every figure to the last bit
    w1, w2 = _weights(one, 7), _weights(two, 7)
    assert all(torch.equal(w2[name], p) for name, p in w1.items())


@pytest.mark.slow
def test_ordered_two_processes_run_sft_and_grpo_stages_as_one_process_bit_for_bit(tmp_path, tok_dir):
    raw = {**_raw(tok_dir), "data_parallel": "ordered"}
    raw["stages"][2].update(batch_size=3, num_samples=3, micro_batch_size=2,  # odd counts: uneven splits
                            grpo={"minibatch_groups": 1, "ppo_epochs": 2})  # 3 minibatches, 2 passes
    one, two = tmp_path / "one", tmp_path / "two"
    run_recipe(to_recipe(raw), one)
    polls = []
    train_stages(raw, two, processes=2, threads=1, timeout=300, poll=lambda: polls.append(1))
    assert json.loads((two / "run_info.json").read_text())["world_size"] == 2
    assert polls, "poll() is called while the processes train"
    rows = [[{k: v for k, v in r.items() if k not in TIMING} for r in _metrics(d)] for d in (one, two)]
    assert [r["stage"] for r in rows[1]] == ["a"] * 3 + ["b"] * 2 + ["rl"] * 2
    assert rows[1][-1]["optimizer_steps"] == 6
    assert rows[0] == rows[1]
    w1, w2 = _weights(one, 7), _weights(two, 7)
    assert all(torch.equal(w2[name], p) for name, p in w1.items())


@pytest.mark.slow
def test_ddp_two_process_sft_stages_match_one_process_up_to_summation_order(tmp_path, tok_dir):
    raw = _raw(tok_dir)
    one, two = tmp_path / "one", tmp_path / "two"
    run_recipe(to_recipe(raw), one, first_stages=2)
    train_sft_stages(raw, two, processes=2, threads=1, timeout=300)
    for step in (3, 5):  # same global batch, same update up to the order of the float sums
        w1, w2 = _weights(one, step), _weights(two, step)
        for name, p in w1.items():
            torch.testing.assert_close(w2[name], p, atol=2e-5, rtol=1e-4, msg=f"step {step}: {name} differs")
    losses = [[r["loss"] for r in _metrics(d)] for d in (one, two)]
    assert len(losses[0]) == 5 and losses[0] == pytest.approx(losses[1], abs=1e-5)


@pytest.mark.slow
def test_a_failing_training_child_fails_loudly_with_its_traceback(tmp_path, tok_dir):
    raw = _raw(tok_dir)
    raw["stages"][0]["data"]["kwargs"]["problems"]["kwargs"]["no_such_argument"] = 1
    with pytest.raises(RuntimeError, match="2-process training failed") as info:
        train_sft_stages(raw, tmp_path / "run", processes=2, threads=1, timeout=300)
    assert "no_such_argument" in str(info.value) and "train-rank0.err" in str(info.value)


def test_a_batch_that_does_not_split_is_refused_before_any_process_starts(tmp_path, tok_dir):
    from parallel_r1.train.config import RecipeError

    raw = _raw(tok_dir)
    raw["stages"][1]["batch_size"] = 7
    with pytest.raises(RecipeError, match=r"stages\[1\].batch_size: 7 does not split over 2"):
        train_sft_stages(raw, tmp_path / "run", processes=2, threads=1)
    assert not (tmp_path / "run" / "logs").exists()


@pytest.mark.slow
def test_quick_demo_on_two_processes_evaluates_in_the_background_as_in_process(tmp_path):
    from parallel_r1.demo.pipeline import Demo, DemoConfig

    out = tmp_path / "demo"
    demo = Demo(DemoConfig(out, quick=True, processes=2))
    report = demo.run()
    assert report["config"]["processes"] == 2
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["stage0"] * 40 + ["sft"] * 10 + ["rl"] * 2
    assert json.loads((out / "run_info.json").read_text())["world_size"] == 2  # every stage, ordered
    assert "stage0-own-prompt" in (out / "logs" / "eval.log").read_text()  # evaluated by the child
    again = Demo(DemoConfig(tmp_path / "again", quick=True, processes=1))
    again.cfg.output.mkdir()
    checkpoints = demo.results["checkpoints"]
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["rl.json", "sft.json", "stage0-own-prompt.json",
                                                                 "stage0.json"]  # the final halves merged
    for name, stage, settings, got in (("sft", "sft", again.settings, demo.results["eval"]["sft"]),
                                       ("own", "stage0", again.own, demo.results["stage0_own_prompt"]),
                                       ("rl", "rl", again.settings, demo.results["eval"]["rl"])):  # fmt: skip
        mine = again.evaluate(name, out / checkpoints[stage] / "model", settings=settings)
        for split in ("hard", "easy"):
            assert got[split] == mine[split], (name, split)

def test_a_failing_evaluation_child_raises_with_its_log(tmp_path):
    from parallel_r1.demo.pipeline import Demo, DemoConfig

    demo = Demo(DemoConfig(tmp_path / "demo", quick=True, processes=2))
    child = EvalChild(demo, {"stage0": (tmp_path / "no-such-model", demo.settings, ("hard",), False)}, threads=1)
    with pytest.raises(RuntimeError, match="background evaluation failed") as info:
        child.wait(demo.cfg.output)
    assert "no-such-model" in str(info.value)


@pytest.mark.slow
def test_an_evaluation_child_waiting_for_a_checkpoint_exits_when_the_demo_is_gone(tmp_path):
    import subprocess
    import sys
    import time

    script = f"""
from pathlib import Path
from parallel_r1.demo.launch import EvalChild
from parallel_r1.demo.pipeline import Demo, DemoConfig
demo = Demo(DemoConfig(Path({str(tmp_path / "demo")!r}), quick=True, processes=2))
child = EvalChild(demo, {{"rl.easy": (Path({str(tmp_path / "never")!r}), demo.settings, ("easy",), True)}}, threads=1)
print(child.proc.pid, flush=True)
"""  # the demo process starts a child that waits for a checkpoint, then exits without a word
    demo = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    pid = int(demo.stdout.split()[-1])
    status = Path(f"/proc/{pid}/status")
    deadline = time.monotonic() + 60
    while status.is_file() and "\tZ" not in status.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not status.is_file() or "\tZ" in status.read_text(), "the orphaned evaluation child is still waiting"
    assert "the demo process exited before" in (tmp_path / "demo" / "logs" / "eval.log").read_text()
