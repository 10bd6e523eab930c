"""Time and memory of the FSDP2 weight hand-over (train/fsdp.py) on 2 CPU processes (gloo).

    python scripts/bench_fsdp_handover.py [--hidden 512 --layers 8 --vocab 32768]

Launches itself under ``accelerate launch --config_file configs/accelerate/fsdp_cpu_2proc.yaml``. Each
process builds a Qwen3 of that shape (tied embeddings), takes its rollout copy, shards the policy,
runs one AdamW step, then hands the policy to the copy 3 times (``CopyBackend.update_weights`` over
``gathered_named_tensors``). Prints one JSON object (rank 0): parameters, bytes of the copy and of the
largest tensor in flight, seconds per hand-over, and the resident-memory growth of the process
across the copy and across the hand-overs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(hidden: int, layers: int, vocab: int) -> None:
    import psutil
    import torch
    from accelerate import Accelerator
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from parallel_r1.train.dist import Dist
    from parallel_r1.train.fsdp import (
        CopyBackend,
        FSDPSettings,
        gathered_named_tensors,
        rollout_copy,
        shard_model,
    )

    dist = Dist(Accelerator(cpu=True))
    torch.manual_seed(0)
    heads = max(1, hidden // 64)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=max(1, heads // 2), head_dim=64, intermediate_size=3 * hidden,
                      tie_word_embeddings=True)  # fmt: skip
    model = Qwen3ForCausalLM(cfg).float()
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    copy = rollout_copy(model, None)
    rss_copy = proc.memory_info().rss - rss0
    shard_model(model, FSDPSettings.from_env(), dist.device)
    dist.sharded = True
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, vocab, (1, 32))
    dist.backward(model(input_ids=x, labels=x).loss)
    opt.step()
    backend = CopyBackend(copy, inner=None)
    seconds, growth = [], []
    for _ in range(3):
        before = proc.memory_info().rss
        backend.update_weights(gathered_named_tensors(model))
        seconds.append(round(backend.last_handover["seconds"], 4))
        growth.append(proc.memory_info().rss - before)
    shard_bytes = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
    if dist.is_main:
        print(json.dumps({"params": sum(p.numel() for p in copy.parameters()), "world_size": dist.world_size,
                          "copy_MB": backend.last_handover["copy_bytes"] / 2**20,
                          "shard_MB_per_rank": shard_bytes / 2**20,
                          "largest_gathered_MB": backend.last_handover["peak_gathered_bytes"] / 2**20,
                          "handover_s": seconds, "rss_growth_copy_MB": rss_copy / 2**20,
                          "rss_growth_per_handover_MB": [g / 2**20 for g in growth]}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.hidden, args.layers, args.vocab)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs" / "accelerate" / "fsdp_cpu_2proc.yaml"), "--main_process_port", str(port),
           __file__, "--worker", "--hidden", str(args.hidden), "--layers", str(args.layers), "--vocab", str(args.vocab)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        sys.exit(done.stdout[-3000:] + done.stderr[-3000:])
    print(lines[-1])


if __name__ == "__main__":
    main()
