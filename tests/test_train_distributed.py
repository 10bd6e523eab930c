"""Two CPU processes (accelerate, gloo) end with the same parameters as one process with the same
global batch: an SFT run through the runner, and GRPO updates on fixed rollouts.

The test launches this file as a script (``accelerate launch``); ``worker`` is what each process runs.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_recipes import tiny_sft_recipe

REPO = Path(__file__).resolve().parents[1]


def _grpo_part(out: Path) -> None:
    from accelerate import Accelerator
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from parallel_r1.format.tags import TAGS
    from parallel_r1.rollout import Rollout
    from parallel_r1.train.batching import make_batch
    from parallel_r1.train.dist import Dist
    from parallel_r1.train.grpo import GRPOConfig, grpo_update

    acc = Accelerator(cpu=True)
    dist = Dist(acc)
    tag_ids = {t: 42 + i for i, t in enumerate(TAGS)}
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=48, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, head_dim=8, max_position_embeddings=128)  # fmt: skip
    model = Qwen3ForCausalLM(cfg).float()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, opt = acc.prepare(model, opt)
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
    mine = [r for r in rollouts if r.prompt_index % dist.world_size == dist.rank]
    build = functools.partial(make_batch, tag_ids=tag_ids, mode="unseen", pad_id=0)
    grpo_cfg = GRPOConfig(minibatch_groups=2, ppo_epochs=2)  # groups per step, all processes
    for _ in range(2):
        stats = grpo_update(model, opt, mine, grpo_cfg, build, micro_batch_size=2, dist=dist)
    if dist.is_main:
        params = {k: v.detach().clone() for k, v in acc.unwrap_model(model).state_dict().items()}
        torch.save({"init": init, "params": params, "stats": stats.as_metrics(), "world_size": dist.world_size},
                   out / "grpo.pt")  # fmt: skip
    acc.wait_for_everyone()


def _sft_part(out: Path, tok_dir: str) -> None:
    from accelerate import Accelerator

    from parallel_r1.train.config import recipe_from_dict
    from parallel_r1.train.runner import run_recipe

    raw = tiny_sft_recipe(tok_dir, layers=1)
    run_recipe(recipe_from_dict(raw), out / "sft", accelerator=Accelerator(cpu=True))


def worker(out: str, tok_dir: str) -> None:
    _grpo_part(Path(out))
    _sft_part(Path(out), tok_dir)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(procs: int, out: Path, tok_dir: Path) -> None:
    # On a machine without CUDA, "--multi_gpu" makes accelerate start the processes with torchrun;
    # Accelerator(cpu=True) in each then joins a gloo group (distributed type MULTI_CPU).
    multi = ["--multi_gpu"] if procs > 1 else []
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *multi, "--num_processes", str(procs),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), __file__, str(out), str(tok_dir)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    from safetensors.torch import load_file

    from parallel_r1.data.toy_tokenizer import build_toy_tokenizer

    tok_dir = tmp_path / "tok"
    build_toy_tokenizer().save_pretrained(tok_dir)
    runs = {}
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        out.mkdir()
        _launch(procs, out, tok_dir)
        runs[procs] = out
    one, two = (torch.load(runs[p] / "grpo.pt") for p in (1, 2))
    assert one["stats"]["optimizer_steps"] == two["stats"]["optimizer_steps"] == 4
    assert one["world_size"] == 1 and two["world_size"] == 2
    for name, p in one["params"].items():
        torch.testing.assert_close(two["params"][name], p, atol=2e-5, rtol=1e-4, msg=f"GRPO: {name} differs")
    assert not torch.equal(one["params"]["lm_head.weight"], one["init"]["lm_head.weight"])
    weights = [load_file(runs[p] / "sft" / "checkpoints" / "step-000003" / "model" / "model.safetensors") for p in (1, 2)]
    for name, p in weights[0].items():
        torch.testing.assert_close(weights[1][name], p, atol=2e-5, rtol=1e-4, msg=f"SFT: {name} differs")
    losses = [[json.loads(x)["loss"] for x in (runs[p] / "sft" / "metrics.jsonl").read_text().splitlines()] for p in (1, 2)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)  # the global token mean, whatever the split
    info = json.loads((runs[2] / "sft" / "run_info.json").read_text())
    assert info["world_size"] == 2


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
