"""Benchmark of the branching engine: branching vs plain decoding vs the reference's re-prefill.

One run measures, side by side on the same random Qwen3-shaped model and the same prompts:
1. ``branching``: ``Engine.generate`` in unseen mode; each rollout is a main chain of ``main_len``
   tokens, ``<Parallel>``, ``num_paths`` paths of ``path_len`` sampled tokens (``</Path>`` inserted at
   the cap), ``</Parallel><Summary>``, a summary of ``summary_len`` tokens, ``</Summary>`` and a tail of
   ``tail_len`` main-chain tokens. Tags are forced by a logits processor so the shape is fixed.
2. ``plain``: batched decoding of the same number of response tokens per row by the same model, the
   plainest transformers loop (``DynamicCache``, one token per row and step, no custom mask).
3. ``reprefill``: the reference engine's way (docs/paper.md section 5) with the same loop: the main chain,
   then one request per path that re-encodes the whole prefix, then one summary request that
   re-encodes prefix and paths and decodes summary and tail.
Also timed: (1) in seen mode (the block is re-encoded causally before the summary), as
``seen_vs_plain``; and (1) through the model's own forward instead of the engine's lean one
(``engine.decoder``), as ``lean_vs_model_forward`` = time of that / time of (1).
``branching_vs_plain`` = tokens/s of (1) / tokens/s of (2) for the same token count;
``branching_vs_reprefill`` = time of (3) / time of (1). Times include the prefill. One untimed round
warms up, then ``repeats`` rounds run the methods interleaved; ratios use each method's best time
(the least disturbed by other processes on a shared machine); every time is in the JSON, with the
1-minute load average, because CPU figures from a busy machine mean little.
``unseen_logprob_max_abs_diff`` compares the engine's sampling log-probs with one forward per rollout
under ``structure.structured_attention`` (in the model's dtype, so bf16 runs show bf16 noise).
The last stdout line of the CLI is one JSON object with every figure.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from transformers.cache_utils import DynamicCache

from parallel_r1.engine import SamplingConfig
from parallel_r1.engine.backend import HFOptions, RolloutConfig, make_backend
from parallel_r1.engine.engine import Engine
from parallel_r1.engine.sampling import make_generator, sample_tokens
from parallel_r1.engine.testing import char_tokenizer, random_qwen3
from parallel_r1.format.tags import PARALLEL_OPEN, PATH_CLOSE, SUMMARY_CLOSE
from parallel_r1.structure import cache_kwarg
from parallel_r1.structure import tag_ids as tag_ids_of


@dataclass
class BenchShape:
    model_size: str = "small"
    vocab_size: int = 8192
    batch: int = 8
    prefix_len: int = 1024
    main_len: int = 32
    num_paths: int = 2
    path_len: int = 128
    summary_len: int = 32
    tail_len: int = 32
    repeats: int = 3

    @property
    def response_len(self) -> int:
        return self.main_len + 1 + self.num_paths * (self.path_len + 2) + 2 + self.summary_len + 1 + self.tail_len


QUICK = BenchShape(batch=4, path_len=64, repeats=2)


def make_shape(quick: bool = False, **overrides) -> BenchShape:
    """The default (or quick) shape with the given fields replaced (None values are ignored)."""
    base = asdict(QUICK if quick else BenchShape())
    shape = BenchShape(**{**base, **{k: v for k, v in overrides.items() if v is not None}})
    if shape.model_size == "0.5b" and shape.vocab_size < 151936:
        shape.vocab_size = 151936  # Qwen3's vocabulary: the LM head is a large part of a 0.5B step
    return shape


def run_engine_bench(shape: BenchShape, device: str = "cpu", dtype: str = "float32", seed: int = 0,
                     log=print) -> dict:
    """Run the three methods side by side and return every figure (module docstring). The branching
    methods use the hf backend only: each rollout's shape is forced through its logits-processor hook,
    which is not part of the backend protocol (``bench rollout`` compares the backends)."""
    torch_dtype = getattr(torch, dtype)
    tokenizer = char_tokenizer(shape.vocab_size)
    model = random_qwen3(len(tokenizer), shape.model_size, seed=seed, dtype=torch_dtype, device=device)
    tags = tag_ids_of(tokenizer)
    gen = torch.Generator().manual_seed(seed)
    prompts = torch.randint(3, 40, (shape.batch, shape.prefix_len), generator=gen).tolist()
    params = sum(p.numel() for p in model.parameters())
    log(f"model {shape.model_size}: {params / 1e6:.1f}M params, {dtype} on {device}, "
        f"{torch.get_num_threads()} CPU threads; batch {shape.batch}, prefix {shape.prefix_len}, "
        f"{shape.num_paths} paths x {shape.path_len}, response {shape.response_len} tokens per row")
    engine = make_backend(RolloutConfig(hf=HFOptions(max_batch_size=shape.batch)), model, tokenizer, tags)
    model_forward = make_backend(RolloutConfig(hf=HFOptions(max_batch_size=shape.batch, lean=False)), model, tokenizer,
                                 tags)  # fmt: skip
    log(f"engine forward: {engine.info.forward_path}")
    methods = {
        "branching": lambda: _run_branching(engine, prompts, shape, seed),
        "branching_model_forward": lambda: _run_branching(model_forward, prompts, shape, seed),
        "branching_seen": lambda: _run_branching(engine, prompts, shape, seed, mode="seen"),
        "plain": lambda: _run_plain(model, prompts, shape.response_len, seed),
        "reprefill": lambda: _run_reprefill(model, prompts, shape, tags, seed),
    }
    seconds, peaks = _time_round_robin(methods, shape.repeats, device, log)
    best = {k: min(v) for k, v in seconds.items()}
    tokens = shape.batch * shape.response_len
    for name, t in best.items():
        log(f"{name}: best {t:.2f} s, median {statistics.median(seconds[name]):.2f} s ({tokens / t:.0f} tok/s)")
    diff = _unseen_logprob_diff(model, _run_branching(engine, prompts, shape, seed), tags)
    log(f"unseen log-prob max abs diff vs structured forward: {diff:.2e}")
    return {
        "branching_vs_plain": best["plain"] / best["branching"],
        "branching_vs_reprefill": best["reprefill"] / best["branching"],
        "seen_vs_plain": best["plain"] / best["branching_seen"],
        "lean_vs_model_forward": best["branching_model_forward"] / best["branching"],
        "engine_forward": engine.info.forward_path,
        "unseen_logprob_max_abs_diff": diff,
        "seconds_best": best,
        "seconds_all": seconds,
        "tokens_per_s": {k: tokens / v for k, v in best.items()},
        "peak_memory_mb": peaks,
        "params": params,
        "device": str(device),
        "device_name": torch.cuda.get_device_name() if str(device).startswith("cuda") else "cpu",
        "dtype": dtype,
        "cpu_threads": torch.get_num_threads(),
        "load_avg_1m": os.getloadavg()[0],  # other processes on the machine skew CPU timings
        **asdict(shape),
        "response_len": shape.response_len,
    }


def _time_round_robin(methods: dict, repeats: int, device: str, log) -> tuple[dict, dict]:
    """Seconds of each method over ``repeats`` rounds (one untimed warm-up round first), the methods
    interleaved so that load from other processes hits them alike; peak memory in MB (CUDA: per
    method; CPU: the process's resident high-water mark, one figure for all)."""
    cuda = str(device).startswith("cuda")
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    peaks: dict[str, float] = {name: 0.0 for name in methods}
    for round_ in range(repeats + 1):
        for name, fn in methods.items():
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated() / 2**20)
            if round_ > 0:
                seconds[name].append(time.perf_counter() - start)
                log(f"  round {round_} {name}: {seconds[name][-1]:.2f} s")
    if not cuda:  # Linux reports KiB
        peaks = {"process_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    return seconds, peaks


class _ShapeForcer:
    """Logits processor that fixes the trajectory shape: <Parallel> after ``main_len`` main tokens,
    no </Path> / </Summary> / EOS (the caps insert the closing tags), nothing else forced."""

    def __init__(self, main_len: int, tags: dict[str, int], eos: int, vocab: int, device) -> None:
        self.main_len, self.par = main_len, tags[PARALLEL_OPEN]
        self.ban = torch.zeros(vocab, device=device)
        self.ban[[tags[PATH_CLOSE], tags[SUMMARY_CLOSE], eos, self.par]] = float("-inf")

    def __call__(self, logits, contexts):
        logits = logits + self.ban
        for i, ctx in enumerate(contexts):
            if ctx.phase == "main" and ctx.block_index < 0 and ctx.num_generated == self.main_len:
                logits[i] = float("-inf")
                logits[i, self.par] = 0.0
        return logits


def _run_branching(engine: Engine, prompts, shape: BenchShape, seed: int, mode: str = "unseen"):
    config = SamplingConfig(max_new_tokens=shape.response_len, max_path_tokens=shape.path_len,
                            max_summary_tokens=shape.summary_len, num_paths=shape.num_paths, max_blocks=1,
                            seed=seed, mode=mode)
    forcer = _ShapeForcer(shape.main_len, engine.tag_ids, engine.tokenizer.eos_token_id, engine.vocab_size,
                          engine.device)
    rollouts = engine.generate(prompts, 1, config, logits_processors=[forcer])
    assert all(len(r.response_ids) == shape.response_len and len(r.blocks) == 1 for r in rollouts), \
        "benchmark trajectories did not take the forced shape"
    return rollouts


@torch.inference_mode()
def _plain_decode(model, prompts: list[list[int]], new_tokens: int, generator, forced: list[int] | None = None):
    """The plainest batched decode: equal-length prompts, DynamicCache, one token per row per step.
    ``forced``: tokens appended after the sampled ones without a forward (e.g. a closing tag)."""
    device = next(model.parameters()).device
    config = SamplingConfig(max_new_tokens=max(1, new_tokens), seed=0)
    cache = DynamicCache(config=model.config)
    ids = torch.tensor(prompts, device=device)
    out = []
    for _ in range(new_tokens):
        kwargs = {cache_kwarg(model): cache, "use_cache": True}  # `cache=` would be ignored by 5.19
        logits = model(input_ids=ids, logits_to_keep=1, **kwargs).logits[:, -1]
        token, _ = sample_tokens(logits, None, config, generator)
        ids = token[:, None]
        out.append(token)
    sampled = torch.stack(out, dim=1).tolist() if out else [[] for _ in prompts]
    return [s + (forced or []) for s in sampled]


def _run_plain(model, prompts, new_tokens: int, seed: int):
    generator = make_generator(seed, next(model.parameters()).device)
    return _plain_decode(model, prompts, new_tokens, generator)


def _run_reprefill(model, prompts, shape: BenchShape, tags: dict[str, int], seed: int):
    """Main chain; one request per path re-encoding the prefix; one summary request re-encoding all."""
    generator = make_generator(seed, next(model.parameters()).device)
    main = _plain_decode(model, prompts, shape.main_len, generator, forced=[tags[PARALLEL_OPEN]])
    contexts = [p + m for p, m in zip(prompts, main, strict=True)]
    path_requests = [c + [tags["<Path>"]] for c in contexts for _ in range(shape.num_paths)]
    paths = _plain_decode(model, path_requests, shape.path_len, generator, forced=[tags[PATH_CLOSE]])
    summary_requests = []
    for i, context in enumerate(contexts):
        block = [t for j in range(shape.num_paths) for t in [tags["<Path>"]] + paths[i * shape.num_paths + j]]
        summary_requests.append(context + block + [tags["</Parallel>"], tags["<Summary>"]])
    # summary, </Summary> (sampled in the reference), then the tail: one request, as the reference does
    return _plain_decode(model, summary_requests, shape.summary_len + 1 + shape.tail_len, generator)


@torch.inference_mode()
def _unseen_logprob_diff(model, rollouts, tags: dict[str, int]) -> float:
    from parallel_r1.structure import structured_attention

    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    worst = 0.0
    for rollout in rollouts:
        ids = rollout.prompt_ids + rollout.response_ids
        allowed, positions = structured_attention(ids, tags)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        mask.masked_fill_(~allowed.to(device), torch.finfo(dtype).min)
        n = len(rollout.response_ids)
        logits = model(input_ids=torch.tensor([ids], device=device), attention_mask=mask[None, None],
                       position_ids=positions[None].to(device), logits_to_keep=n + 1).logits[0, :-1]
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # (n, V): row k predicts response token k
        target = torch.tensor(rollout.response_ids, device=device)
        recomputed = logprobs.gather(-1, target[:, None]).squeeze(-1)
        sampled = torch.tensor(rollout.logprobs, device=device)
        keep = torch.tensor(rollout.loss_mask, device=device).bool()
        worst = max(worst, (recomputed - sampled)[keep].abs().max().item())
    return worst
