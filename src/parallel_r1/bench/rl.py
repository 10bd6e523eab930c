"""``parallel-r1 bench rl``: our GRPO step against TRL's ``GRPOTrainer`` on the same work, on CPU.

Both sides get the same tiny toy model (same config, same seeded initial weights, fp32), the same
toy tokenizer, the same prompts in the same order (step k of each uses prompts kP .. kP+P-1), the
same group size G, exactly L completion tokens per sample (no EOS before the cap on either side),
the same reward (our judge + accuracy reward), one epoch and one minibatch per batch, no KL, the
same lr, and the same number of torch threads. Our side: ``rl_ours``; TRL's: ``rl_trl`` (each
module says how it is set up). The steps alternate A/B inside one ``trainer.train()``; the first
``warmup`` pairs are dropped.

``vs_trl`` = median over the timed pairs of (our samples/s) / (TRL's samples/s) for the same
prompts; a sample is one completion. Every step's time, both sides' generation times and each
side's completion-token counts are in the JSON (the last stdout line of the command), with the
settings, the library versions, the machine and its 1-minute load average.

The tiny random model never answers a toy problem right, so every reward is 0: both sides still
run the full forward, backward and optimiser step (neither skips a zero-advantage batch).
TRL is a bench-only dependency (``pip install trl``); it is imported inside the functions.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer

from parallel_r1.eval.loading import Backend, backend_problem

OUR_MODES = ("unseen", "sequential")


@dataclass
class RLBenchConfig:
    model_size: str = "small"  # toy_model sizes: tiny (0.17M params) | small (1.07M)
    prompts: int = 4  # P: prompts per step
    group: int = 8  # G: samples per prompt (the paper's n = 8)
    completion_len: int = 128  # L: completion tokens per sample, both sides
    repeats: int = 7  # timed A/B pairs
    warmup: int = 1  # untimed pairs first
    lr: float = 1e-5
    mode: str = "unseen"  # our sampling/training mode: "unseen" (no blocks) | "sequential" (causal)
    threads: int = 1  # torch CPU threads, both sides
    seed: int = 0
    share_prompts: bool = True  # our update computes each group's prompt once (False: the full forward)
    lean: bool = True  # our engine decodes through engine.decoder's lean forward (False: the model's forward)
    backend: str = "hf"  # our rollout backend (engine.backend): hf | vllm

    def __post_init__(self) -> None:
        assert self.mode in OUR_MODES, f"mode must be one of {OUR_MODES}, got {self.mode!r}"
        assert self.group >= 2, f"GRPO needs at least 2 samples per prompt, got group={self.group}"
        assert min(self.prompts, self.completion_len, self.repeats, self.threads) >= 1 and self.warmup >= 0

    @property
    def steps(self) -> int:
        return self.warmup + self.repeats


QUICK = RLBenchConfig(model_size="tiny", prompts=4, group=4, completion_len=32, repeats=5)


def make_config(quick: bool = False, **overrides) -> RLBenchConfig:
    """The default (or quick) settings with the given fields replaced (None values are ignored)."""
    base = asdict(QUICK if quick else RLBenchConfig())
    return RLBenchConfig(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


def run_rl_bench(cfg: RLBenchConfig, output: Path | None = None, log=print) -> dict:
    """Run both sides A/B and return every figure (module docstring). ``output``: where our
    ``metrics.jsonl`` and TRL's output dir go (a temporary directory by default)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        if output is not None:
            return _run(cfg, Path(output), log)
        with tempfile.TemporaryDirectory(prefix="bench-rl-") as tmp:
            return _run(cfg, Path(tmp), log)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: RLBenchConfig, output: Path, log) -> dict:
    import torch

    from parallel_r1.bench.rl_trl import build_trl_trainer, make_alternate, time_generation
    from parallel_r1.data.toy_model import build_tiny_model

    tokenizer, items, texts, answers = _workload(cfg)
    ours_model = build_tiny_model(tokenizer, cfg.seed, cfg.model_size)
    trl_model = build_tiny_model(tokenizer, cfg.seed, cfg.model_size)
    assert all(torch.equal(a, b) for a, b in zip(ours_model.parameters(), trl_model.parameters(), strict=True)), \
        "the two sides must start from the same weights"
    params = sum(p.numel() for p in ours_model.parameters())
    log(f"toy model {cfg.model_size}: {params / 1e6:.2f}M params, {cfg.threads} thread(s); {cfg.prompts} prompts x "
        f"{cfg.group} samples x {cfg.completion_len} tokens per step; {cfg.warmup} + {cfg.repeats} A/B steps")
    ours = _our_side(cfg, ours_model, tokenizer, items, output / "ours")
    log(f"our rollout backend: {ours.engine.info.name}, forward: {ours.engine.info.forward_path}")
    alternate = make_alternate(ours.step)
    trainer = build_trl_trainer(trl_model, tokenizer, texts, answers, group=cfg.group,
                                completion_len=cfg.completion_len, lr=cfg.lr, steps=cfg.steps, seed=cfg.seed,
                                output=output / "trl", callbacks=[alternate])  # fmt: skip
    trl_generate = time_generation(trainer)
    trainer.train()
    ours.close()
    return _figures(cfg, alternate, trainer, trl_generate, params, log) | {"our_forward": ours.engine.info.forward_path}


def run_rl_profile(cfg: RLBenchConfig, output: Path | None = None, log=print) -> dict:
    """Our side only (no TRL needed): ``warmup`` steps, then the section breakdown
    (``rl_profile``) over ``repeats`` steps of the same work as the A/B."""
    import torch

    from parallel_r1.bench.rl_profile import profile_our_steps
    from parallel_r1.data.toy_model import build_tiny_model

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-rl-") as tmp:
            tokenizer, items, _, _ = _workload(cfg)
            model = build_tiny_model(tokenizer, cfg.seed, cfg.model_size)
            ours = _our_side(cfg, model, tokenizer, items, Path(output or tmp) / "ours")
            for _ in range(cfg.warmup):
                ours.step()
            profile = profile_our_steps(ours, cfg.repeats)
            forward = ours.engine.info.forward_path
            ours.close()
    finally:
        torch.set_num_threads(threads)
    for name, share in profile["sections_share"].items():
        log(f"  {name:<17} {profile['sections_s'][name] * 1000:8.1f} ms  {share:6.1%}")
    log(f"step {profile['step_s'] * 1000:.1f} ms ({cfg.prompts * cfg.group / profile['step_s']:.1f} samples/s)")
    return {"profile": profile, "ours_samples_per_s": cfg.prompts * cfg.group / profile["step_s"], "our_forward": forward,
            **asdict(cfg), "machine": {"cpu": _cpu_model(), "nproc": os.cpu_count()},
            "load_avg_1m": os.getloadavg()[0]}  # fmt: skip


def _our_side(cfg: RLBenchConfig, model, tokenizer, items, output: Path):
    """Our GRPO step on ``model`` (``rl_ours``), set up from the bench settings."""
    from parallel_r1.bench.rl_ours import OurGRPO, bench_stage

    stage = bench_stage(cfg.prompts, cfg.group, cfg.completion_len, cfg.lr, cfg.steps, share_prompts=cfg.share_prompts,
                        mode=cfg.mode)  # fmt: skip
    return OurGRPO(model, tokenizer, items, stage, cfg.mode, cfg.seed, output, lean=cfg.lean, backend=cfg.backend)


def _workload(cfg: RLBenchConfig):
    """Toy tokenizer, and the hard toy problems as prompt ids (ours) and as text (TRL's)."""
    from parallel_r1.data.toy import toy_problems
    from parallel_r1.data.toy_tokenizer import build_toy_tokenizer
    from parallel_r1.train.data import encode_prompt
    from parallel_r1.train.stages import PromptItem

    tokenizer = build_toy_tokenizer()
    problems = toy_problems("hard", cfg.steps * cfg.prompts, seed=1)
    # The toy chat template renders a question as ``question + "\n"``: TRL gets that text, we its ids.
    texts = [p.question + "\n" for p in problems]
    items = [PromptItem(p.id, encode_prompt(tokenizer, t, chat=False), p.answer) for p, t in zip(problems, texts, strict=True)]
    assert [it.prompt_ids for it in items] == tokenizer(texts)["input_ids"], "prompt ids differ between sides"
    return tokenizer, items, texts, [p.answer for p in problems]


def _figures(cfg: RLBenchConfig, alternate, trainer, trl_generate: list[float], params: int, log) -> dict:
    import torch
    import transformers
    import trl

    samples = cfg.prompts * cfg.group
    w = cfg.warmup
    ours_s, trl_s = alternate.our_seconds[w:], alternate.trl_seconds[w:]
    assert len(ours_s) == len(trl_s) == cfg.repeats, f"expected {cfg.repeats} timed pairs, got {len(ours_s)}"
    ratios = [t / o for o, t in zip(ours_s, trl_s, strict=True)]  # (our samples/s) / (TRL's)
    for i, (o, t) in enumerate(zip(ours_s, trl_s, strict=True)):
        log(f"  pair {i + 1}: ours {o:.3f} s, TRL {t:.3f} s -> {t / o:.2f}x")
    rows = alternate.our_rows
    trl_logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    result = {
        "vs_trl": statistics.median(ratios),
        "ours_samples_per_s": samples / statistics.median(ours_s),
        "trl_samples_per_s": samples / statistics.median(trl_s),
        "pair_ratios": ratios,
        "ours_seconds": alternate.our_seconds,
        "trl_seconds": alternate.trl_seconds,
        "ours_generate_seconds": [r["generate_time_s"] for r in rows],
        "ours_update_seconds": [r["update_time_s"] for r in rows],
        "trl_generate_seconds": trl_generate,
        "samples_per_step": {"ours": [r["num_rollouts"] for r in rows], "trl": [samples] * len(trl_logs)},
        "completion_tokens_per_step": {
            "ours": [round(r["response_length_mean"] * r["num_rollouts"]) for r in rows],
            "trl": [round(h["completions/mean_length"] * samples) for h in trl_logs],
        },
        "completion_len_range": {
            "ours": [min(r["response_length_mean"] for r in rows), max(r["response_length_mean"] for r in rows)],
            "trl": [min(h["completions/min_length"] for h in trl_logs), max(h["completions/max_length"] for h in trl_logs)],
        },
        "our_side": f"grpo_train_step, {cfg.mode} mode" + (" with max_blocks=0" if cfg.mode == "unseen" else "")
        + ("" if cfg.share_prompts else ", prompt sharing off") + ("" if cfg.lean else ", lean forward off"),
        "params": params,
        **asdict(cfg),
        "samples_per_step_setting": samples,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "machine": {"cpu": _cpu_model(), "nproc": os.cpu_count(), "python": platform.python_version()},
        "load_avg_1m": os.getloadavg()[0],
    }
    log(f"ours {result['ours_samples_per_s']:.1f} samples/s, TRL {result['trl_samples_per_s']:.1f} samples/s, "
        f"vs_trl {result['vs_trl']:.2f} (median of {cfg.repeats} pairs)")
    return result


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench_rl(
    quick: Annotated[bool, typer.Option(help="a few minutes on 2 CPU cores: tiny model, 4 prompts x 4 x 32 tokens")] = False,
    model_size: Annotated[str | None, typer.Option(help="toy model size: tiny | small (default)")] = None,
    prompts: Annotated[int | None, typer.Option(help="prompts per step")] = None,
    group: Annotated[int | None, typer.Option(help="samples per prompt (GRPO group size)")] = None,
    completion_len: Annotated[int | None, typer.Option(help="completion tokens per sample (fixed, both sides)")] = None,
    repeats: Annotated[int | None, typer.Option(help="timed A/B step pairs")] = None,
    warmup: Annotated[int | None, typer.Option(help="untimed A/B step pairs first")] = None,
    mode: Annotated[str | None, typer.Option(help="our mode: unseen (no blocks, default) | sequential")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads for both sides (default 1)")] = None,
    share_prompts: Annotated[bool, typer.Option(
        help="our update computes each prompt once for its samples (--no-share-prompts: before/after)")] = True,
    lean: Annotated[bool, typer.Option(
        help="our engine decodes through its lean forward (--no-lean: the model's own forward, before/after)")] = True,
    output: Annotated[Path | None, typer.Option(help="keep our metrics.jsonl and TRL's output dir here")] = None,
    profile: Annotated[bool, typer.Option(
        help="instead of the A/B: where our step spends its time, per section (TRL not needed)")] = False,
    backend: Annotated[Backend, typer.Option(metavar="BACKEND",
                       help="our rollout backend: hf or vllm (make install-vllm)")] = "hf",
) -> None:
    """Our GRPO step vs TRL's GRPOTrainer on the same work (needs TRL: make install-bench); last stdout
    line is one JSON object with vs_trl (our samples/s over TRL's, median of A/B pairs)."""
    if (problem := backend_problem(backend)) is not None:  # before anything loads
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    cfg = make_config(quick, model_size=model_size, prompts=prompts, group=group, completion_len=completion_len,
                      repeats=repeats, warmup=warmup, mode=mode, threads=threads, share_prompts=share_prompts,
                      lean=lean, backend=backend)
    log = lambda m: print(m, flush=True)  # noqa: E731
    if profile:
        print(json.dumps(run_rl_profile(cfg, output=output, log=log)), flush=True)
        return
    try:
        import trl  # noqa: F401
    except ImportError:
        raise typer.BadParameter("bench rl needs TRL: make install-bench (or pip install -e '.[bench]')") from None
    result = run_rl_bench(cfg, output=output, log=log)
    print(json.dumps(result), flush=True)
