"""FSDP2 (train/fsdp.py) on two CPU processes with gloo, launched with
``configs/accelerate/fsdp_cpu_2proc.yaml``:

1. GRPO updates on fixed rollouts and an SFT run through the runner end at the same parameters as one
   unsharded process with the same global batch (as test_train_distributed does for DDP);
2. a GRPO stage whose ranks decode very different numbers of steps completes (the rollout copy's
   decode loop holds no collective; decoding the sharded policy would hang here);
3. the weight hand-over: the rollout copy equals the gathered policy after an optimiser step; its
   time and memory are measured and written to ``handover.json``;
4. ``accelerate launch ... -m parallel_r1.train configs/smoke.yaml``: SIGKILL mid-run, ``--resume``,
   and ``metrics.jsonl`` equals an uninterrupted run's (timing keys aside).

The test launches this file as a script; ``worker`` is what each process runs.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tiny_recipes import tiny_sft_recipe

REPO = Path(__file__).resolve().parents[1]
FSDP_CPU = REPO / "configs" / "accelerate" / "fsdp_cpu_2proc.yaml"
# configs/smoke.yaml shrunk to fit 2 processes on 2 busy cores: checkpoints at 2, 4, 5 (SFT end), 6, 7 (end)
SMOKE_SETS = ["stages[0].steps=5", "stages[1].steps=2", "stages[1].batch_size=4", "stages[1].num_samples=2",
              "stages[1].grpo.minibatch_groups=2", "stages[1].generation.max_new_tokens=40", "checkpoint.every=2"]  # fmt: skip


def tiny_qwen3(tie: bool = False):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=48, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, head_dim=8, max_position_embeddings=128,
                      tie_word_embeddings=tie)  # fmt: skip
    return Qwen3ForCausalLM(cfg).float()


def fixed_rollouts():
    from parallel_r1.rollout import Rollout

    gen = torch.Generator().manual_seed(1)
    rollouts = []
    for g in range(4):  # 4 groups of 3, responses of different lengths, one with a parallel block
        prompt = torch.randint(1, 40, (3 + g,), generator=gen).tolist()
        for k in range(3):
            resp = torch.randint(1, 40, (2 + 3 * k + g,), generator=gen).tolist()
            if k == 1:
                resp = resp[:2] + [42, 44, 5, 45, 44, 6, 7, 45, 43, 46, 8, 47] + resp[2:]
            reward = float(torch.rand((), generator=gen) > 0.5) + 0.1 * k
            rollouts.append(Rollout(prompt, resp, [1] * len(resp), [0.0] * len(resp), prompt_index=g,
                                    sample_index=k, reward=reward))  # fmt: skip
    return rollouts


def grpo_run(dist, shard: bool, settings=None) -> dict:
    """Two GRPO updates (2 minibatches x 2 epochs each) on the fixed rollouts; returns full params.
    ``settings``: the FSDPSettings to shard with (default: fp32, no offload, no checkpointing)."""
    from parallel_r1.format.tags import TAGS
    from parallel_r1.structure.cache import activation_checkpointing
    from parallel_r1.train.batching import make_batch
    from parallel_r1.train.fsdp import FSDPSettings, full_state_dict, shard_model
    from parallel_r1.train.grpo import GRPOConfig, grpo_update

    model = tiny_qwen3()
    if shard:
        shard_model(model, settings or FSDPSettings(enabled=True, layer_cls=("Qwen3DecoderLayer",)), dist.device)
        dist.sharded = True
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    mine = [r for r in fixed_rollouts() if r.prompt_index % dist.world_size == dist.rank]
    build = functools.partial(make_batch, tag_ids={t: 42 + i for i, t in enumerate(TAGS)}, mode="unseen", pad_id=0)
    # grpo_update's signature is changing (micro_batch_size moves out of GRPOConfig): accept both
    if "micro_batch_size" in inspect.signature(grpo_update).parameters:
        cfg, kw = GRPOConfig(minibatch_groups=2, ppo_epochs=2), {"micro_batch_size": 2}
    else:
        cfg, kw = GRPOConfig(minibatch_groups=2 // dist.world_size, micro_batch_size=2, ppo_epochs=2), {}
    for _ in range(2):
        stats = grpo_update(model, opt, mine, cfg, build, dist=dist, **kw)
    params = full_state_dict(model) if shard else {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"params": params, "optimizer_steps": stats.optimizer_steps,
            "checkpointing": activation_checkpointing(model) and model.training}


def sft_recipe(tok_dir: str) -> dict:
    return tiny_sft_recipe(tok_dir, layers=2)


class UnevenEngine:
    """The branching engine, but rank 0 stops after 3 tokens and rank 1 may decode 120: the ranks
    run very different numbers of decode steps. Records the response lengths it produced."""

    shares_policy = True

    def __init__(self, inner, rank: int, out: Path):
        self.inner, self.rank, self.out, self.lengths = inner, rank, out, []

    @property
    def info(self):
        return self.inner.info

    def generate(self, prompts, num_samples, config):
        budget = 3 if self.rank == 0 else 120
        config = replace(config, max_new_tokens=budget, max_path_tokens=budget, max_summary_tokens=budget)
        rollouts = self.inner.generate(prompts, num_samples, config)
        self.lengths += [r.num_tokens for r in rollouts]
        (self.out / f"uneven-{self.rank}.json").write_text(json.dumps(self.lengths))
        return rollouts

    def update_weights(self, named_tensors):
        pass

    def close(self):
        self.inner.close()


def uneven_run(acc, out: Path, tok_dir: str) -> None:
    from parallel_r1.engine.engine import Engine
    from parallel_r1.train.config import recipe_from_dict
    from parallel_r1.train.runner import run_recipe

    raw = sft_recipe(tok_dir)
    raw["stages"] = [{"name": "grpo", "type": "grpo", "steps": 2, "batch_size": 2, "num_samples": 2,
                      "micro_batch_size": 2, "reward": {"name": "parallel_only"},
                      "data": {"factory": "parallel_r1.data.toy:toy_problems", "kwargs": {"split": "hard", "n": 8, "seed": 1}},
                      "grpo": {"minibatch_groups": 2}, "optimizer": {"lr": 1e-3}}]  # fmt: skip
    rank = acc.process_index

    def factory(model, tokenizer, tag_ids):
        return UnevenEngine(Engine(model, tokenizer, tag_ids=tag_ids), rank, out)

    run_recipe(recipe_from_dict(raw), out / "uneven", accelerator=acc, engine_factory=factory)


def handover_run(dist, out: Path) -> None:
    """A small Qwen3 (4 layers, 256 wide, 8k vocabulary: ~6M parameters) sharded over 2 processes;
    the hand-over to its rollout copy timed, its memory counted, the copy checked against the policy."""
    import psutil
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from parallel_r1.train.fsdp import (
        CopyBackend,
        FSDPSettings,
        gathered_named_tensors,
        rollout_copy,
        shard_model,
    )

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=768, head_dim=64, tie_word_embeddings=True)  # fmt: skip
    model = Qwen3ForCausalLM(cfg).float()
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    copy = rollout_copy(model, None)
    rss_copy = proc.memory_info().rss
    shard_model(model, FSDPSettings(enabled=True, layer_cls=("Qwen3DecoderLayer",)), dist.device)
    dist.sharded = True
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 8192, (2, 16))
    dist.backward(model(input_ids=x, labels=x).loss)
    opt.step()
    backend = CopyBackend(copy, inner=None)
    times = []
    for _ in range(3):
        rss_before = proc.memory_info().rss
        backend.update_weights(gathered_named_tensors(model))
        times.append(backend.last_handover["seconds"])
    rss_after = proc.memory_info().rss
    max_diff = max(float((t - backend._params[n]).abs().max()) for n, t in gathered_named_tensors(model))
    if dist.is_main:
        result = {**backend.last_handover, "seconds_all": times, "max_abs_diff": max_diff,
                  "params": sum(p.numel() for p in copy.parameters()), "world_size": dist.world_size,
                  "rss_copy_bytes": rss_copy - rss0, "rss_handover_growth_bytes": rss_after - rss_before,
                  "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}  # fmt: skip
        (out / "handover.json").write_text(json.dumps(result, indent=1))


def worker(out: str, tok_dir: str) -> None:
    from accelerate import Accelerator

    from parallel_r1.train.config import load_recipe, recipe_from_dict
    from parallel_r1.train.dist import Dist
    from parallel_r1.train.fsdp import FSDPSettings
    from parallel_r1.train.runner import run_recipe

    out_dir = Path(out)
    acc = Accelerator(cpu=True)
    assert FSDPSettings.from_env().enabled, "launched without the FSDP accelerate config"
    base = FSDPSettings(enabled=True, layer_cls=("Qwen3DecoderLayer",))
    variants = {"fp32": base, "checkpointing+offload": replace(base, activation_checkpointing=True, offload=True),
                "bf16": replace(base, mixed_precision="bf16")}  # fmt: skip
    grpo = {name: grpo_run(Dist(acc), shard=True, settings=s) for name, s in variants.items()}
    if acc.is_main_process:
        torch.save(grpo, out_dir / "grpo.pt")
    run_recipe(recipe_from_dict(sft_recipe(tok_dir)), out_dir / "sft", accelerator=acc)
    uneven_run(acc, out_dir, tok_dir)
    handover_run(Dist(acc), out_dir)
    # the uninterrupted reference of the CLI resume test (same recipe, same overrides)
    run_recipe(load_recipe(REPO / "configs" / "smoke.yaml", SMOKE_SETS), out_dir / "smoke-ref", accelerator=acc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CPU),
            "--main_process_port", str(_free_port()), *args]  # fmt: skip


ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


# --- single process -----------------------------------------------------------------------------------


def test_settings_come_from_the_accelerate_environment():
    from parallel_r1.train.fsdp import FSDPSettings, mixed_precision_policy

    assert not FSDPSettings.from_env({}).enabled
    env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "ACCELERATE_MIXED_PRECISION": "bf16",
           "FSDP_OFFLOAD_PARAMS": "true", "FSDP_ACTIVATION_CHECKPOINTING": "true",
           "FSDP_TRANSFORMER_CLS_TO_WRAP": "Qwen3DecoderLayer"}  # fmt: skip
    s = FSDPSettings.from_env(env)
    assert (s.enabled, s.offload, s.activation_checkpointing, s.layer_cls) == (True, True, True, ("Qwen3DecoderLayer",))
    mp = mixed_precision_policy(s)
    assert (mp.param_dtype, mp.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert mixed_precision_policy(replace(s, mixed_precision="no")) is None
    with pytest.raises(ValueError, match="only FSDP2"):
        FSDPSettings.from_env({**env, "FSDP_VERSION": "1"})
    with pytest.raises(ValueError, match="mixed_precision fp16"):
        FSDPSettings.from_env({**env, "ACCELERATE_MIXED_PRECISION": "fp16"})


def test_accelerate_configs_name_fsdp2_and_their_precision():
    import yaml

    from parallel_r1.train.fsdp import FSDPSettings

    for name, mp, procs in (("fsdp_cpu_2proc.yaml", "no", 2), ("fsdp_8gpu.yaml", "bf16", 8)):
        cfg = yaml.safe_load((REPO / "configs" / "accelerate" / name).read_text())
        assert cfg["distributed_type"] == "FSDP" and cfg["fsdp_config"]["fsdp_version"] == 2, name
        assert (cfg["mixed_precision"], cfg["num_processes"]) == (mp, procs), name
        env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "ACCELERATE_MIXED_PRECISION": mp,
               "FSDP_TRANSFORMER_CLS_TO_WRAP": cfg["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]}  # fmt: skip
        assert FSDPSettings.from_env(env).layer_cls == ("Qwen3DecoderLayer",)


def test_copy_backend_overwrites_every_parameter_and_refuses_strangers():
    from parallel_r1.train.fsdp import CopyBackend, rollout_copy

    policy = tiny_qwen3(tie=True)
    backend = CopyBackend(rollout_copy(policy, None), inner=None)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    backend.update_weights(policy.named_parameters())
    for (name, p), q in zip(policy.named_parameters(), backend.model.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert backend.model.lm_head.weight is backend.model.model.embed_tokens.weight  # still tied
    assert backend.last_handover["copy_bytes"] == sum(p.numel() * 4 for p in policy.parameters())
    with pytest.raises(AssertionError, match="no tensor for"):
        backend.update_weights(list(policy.named_parameters())[1:])
    with pytest.raises(AssertionError, match="not a parameter"):
        backend.update_weights([("nope.weight", torch.zeros(1))])


def test_kl_stage_is_refused_under_fsdp_before_sharding(tmp_path):
    from parallel_r1.train.config import RecipeError, recipe_from_dict
    from parallel_r1.train.dist import Dist
    from parallel_r1.train.fsdp import FSDPSettings, is_sharded, prepare_fsdp

    raw = sft_recipe(str(tmp_path))
    raw["stages"] = [{"name": "grpo", "type": "grpo", "steps": 1, "batch_size": 2, "data": {"path": "x.jsonl"},
                      "reward": {"name": "accuracy"},
                      "grpo": {"kl_coef": 0.1}, "optimizer": {"lr": 1e-3}}]  # fmt: skip
    model = tiny_qwen3()
    with pytest.raises(RecipeError, match="kl_coef > 0 is not supported under FSDP"):
        prepare_fsdp(model, Dist(), recipe_from_dict(raw).stages, FSDPSettings(enabled=True))
    assert not is_sharded(model)


# --- two processes ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> Path:
    from parallel_r1.data.toy_tokenizer import build_toy_tokenizer

    out = tmp_path_factory.mktemp("fsdp")
    build_toy_tokenizer().save_pretrained(out / "tok")
    done = subprocess.run(_launch_cmd(__file__, str(out), str(out / "tok")), env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=400)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return out


@pytest.mark.slow
def test_fsdp_updates_match_one_process(fsdp_run, tmp_path):
    from safetensors.torch import load_file

    from parallel_r1.train.config import recipe_from_dict
    from parallel_r1.train.dist import Dist
    from parallel_r1.train.runner import run_recipe

    one, runs = grpo_run(Dist(), shard=False), torch.load(fsdp_run / "grpo.pt")
    init = tiny_qwen3().state_dict()
    assert not torch.equal(one["params"]["lm_head.weight"], init["lm_head.weight"])
    assert runs["checkpointing+offload"]["checkpointing"] and not runs["fp32"]["checkpointing"]
    for variant in ("fp32", "checkpointing+offload"):
        two = runs[variant]
        assert one["optimizer_steps"] == two["optimizer_steps"] == 4
        for name, p in one["params"].items():
            torch.testing.assert_close(two["params"][name], p, atol=2e-5, rtol=1e-4, msg=f"GRPO {variant}: {name}")
    # bf16 compute over fp32 masters: the masters stay fp32 and near the fp32 run (AdamW moves each
    # weight ~lr per step, so 4 steps at lr 1e-2 bound the gap by ~0.04-0.08 where gradient signs flip)
    bf16 = runs["bf16"]["params"]
    assert all(bf16[n].dtype == torch.float32 for n in bf16)
    assert max(float((bf16[n] - p).abs().max()) for n, p in one["params"].items()) < 0.1
    assert any(not torch.equal(bf16[n], p) for n, p in one["params"].items())  # it did compute in bf16

    run_recipe(recipe_from_dict(sft_recipe(str(fsdp_run / "tok"))), tmp_path / "sft")
    weights = [load_file(d / "sft" / "checkpoints" / "step-000003" / "model" / "model.safetensors")
               for d in (tmp_path, fsdp_run)]  # fmt: skip
    assert weights[0].keys() == weights[1].keys()
    for name, p in weights[0].items():
        torch.testing.assert_close(weights[1][name], p, atol=2e-5, rtol=1e-4, msg=f"SFT: {name} differs")
    losses = [[json.loads(x)["loss"] for x in (d / "sft" / "metrics.jsonl").read_text().splitlines()]
              for d in (tmp_path, fsdp_run)]  # fmt: skip
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert (fsdp_run / "sft" / "checkpoints" / "step-000003" / "sharded" / ".metadata").is_file()


@pytest.mark.slow
def test_grpo_stage_with_uneven_rollout_lengths_completes(fsdp_run):
    lengths = [json.loads((fsdp_run / f"uneven-{r}.json").read_text()) for r in (0, 1)]
    assert len(lengths[0]) == len(lengths[1]) == 4  # 2 steps x 1 prompt x 2 samples on each rank
    assert max(lengths[0]) <= 3 and sum(lengths[1]) >= 4 * sum(lengths[0]), lengths
    rows = [json.loads(x) for x in (fsdp_run / "uneven" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]


@pytest.mark.slow
def test_handover_gives_the_copy_the_policy_weights(fsdp_run):
    h = json.loads((fsdp_run / "handover.json").read_text())
    print("hand-over:", json.dumps(h))
    assert h["max_abs_diff"] == 0.0 and h["world_size"] == 2
    assert h["copy_bytes"] == 4 * h["params"]  # the fp32 copy; the largest tensor in flight is one parameter
    assert h["peak_gathered_bytes"] == 4 * 8192 * 256  # the (tied) embedding


def _start(out: Path, resume: bool) -> subprocess.Popen:
    cmd = _launch_cmd("-m", "parallel_r1.train", str(REPO / "configs" / "smoke.yaml"), "--output", str(out),
                      *[a for s in SMOKE_SETS for a in ("--set", s)], *(["--resume"] if resume else []))  # fmt: skip
    return subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip


def _kill_after(proc: subprocess.Popen, out: Path, lines: int) -> None:
    """SIGKILL the launcher and every process under it once metrics.jsonl has ``lines`` rows. (torch
    elastic starts the workers in sessions of their own: killing the launcher's group leaves them
    running, and they would finish the run.)"""
    import psutil

    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if metrics.exists() and metrics.read_text().count("\n") >= lines:
            assert proc.poll() is None, "the run finished before it could be killed"
            root = psutil.Process(proc.pid)
            procs = [root, *root.children(recursive=True)]
            assert len(procs) >= 3, f"expected the launcher and 2 workers, found {procs}"
            for p in procs:
                p.send_signal(signal.SIGKILL)
            _, alive = psutil.wait_procs(procs, timeout=30)
            assert not alive, f"still alive after SIGKILL: {alive}"
            proc.wait()
            return
        assert proc.poll() is None, proc.communicate()[0][-5000:]
        time.sleep(0.01)
    raise AssertionError("the run made no progress")


@pytest.mark.slow
def test_cli_sigkill_then_resume_gives_the_uninterrupted_metrics(fsdp_run, tmp_path):
    from parallel_r1.train.metrics import TIMING_KEYS

    def metrics(d: Path) -> list[dict]:
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]

    reference = metrics(fsdp_run / "smoke-ref")
    assert [r["type"] for r in reference] == ["sft"] * 5 + ["grpo"] * 2
    out = tmp_path / "run"
    proc = _start(out, resume=False)
    # Killed mid-SFT: the resume restores the sharded AdamW state (SFT at lr 2e-2 depends on it; the
    # GRPO steps of so short a run barely move the weights, so they could not tell).
    _kill_after(proc, out, lines=3)
    killed = metrics(out)
    assert 3 <= len(killed) < 5
    assert (out / "checkpoints" / "latest").read_text().strip() in ("step-000002", "step-000004")
    proc = _start(out, resume=True)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log[-5000:]
    resumed = metrics(out)
    gap = "logprob_diff_sampler"  # float noise of the sampler-vs-trainer diagnostic, as in test_train_runner
    assert [r.get(gap) for r in resumed] == pytest.approx([r.get(gap) for r in reference], abs=1e-6)
    assert [{k: v for k, v in r.items() if k != gap} for r in resumed] == [
        {k: v for k, v in r.items() if k != gap} for r in reference
    ]
    saved = out / "checkpoints" / "step-000007"
    assert (saved / "model" / "model.safetensors").is_file() and (saved / "sharded" / ".metadata").is_file()
    # AdamW's step count in the sharded state at each stage's end: the SFT stage's 5 steps (2 of them
    # restored by the resume), then the GRPO stage's own optimiser steps only (a fresh optimiser)
    grpo_steps = sum(r["optimizer_steps"] for r in resumed if r["type"] == "grpo")
    for step, expected in ((5, 5), (7, grpo_steps)):
        assert _adam_steps(out / "checkpoints" / f"step-{step:06d}" / "sharded", tmp_path) == {float(expected)}, step


def _adam_steps(sharded: Path, tmp: Path) -> set[float]:
    """The per-parameter AdamW step counts in a torch distributed checkpoint, read without a process group."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(sharded, tmp / "state.pt")
    state = torch.load(tmp / "state.pt", weights_only=False)["optimizer"]["state"]
    return {float(s["step"]) for s in state.values()}


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
