"""The two kinds of stage a recipe chains: what one SFT step and one GRPO step do, and their data.

``prepare_*`` turn a stage's examples into token ids (skipping, with a count, what does not fit the
budget); ``*_step`` run one training step on this process's share of the global batch and return the
step's metrics row (without stage / step keys, which the runner adds).

GRPO step t of a stage: take the next ``batch_size`` prompts in data order, this process samples
``num_samples`` responses for every ``world_size``-th of them with the rollout backend (seed fixed by
the global step and rank, so a resumed run samples the same), judges each response against the gold
answer, rewards it with the stage's reward at stage step t (1-based: the reward schedules count
steps of the RL run, as the reference's ``global_steps`` do), and updates the policy (``grpo.py``),
handing the new weights to the backend after every optimiser step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch

from parallel_r1.engine.backend import RolloutBackend
from parallel_r1.rewards import get_reward, get_scorer
from parallel_r1.train.config import GRPOStage, SFTStage
from parallel_r1.train.data import DataOrder, DataReport, Example, encode_prompts, encode_responses, shard
from parallel_r1.train.dist import Dist
from parallel_r1.train.grpo import BatchBuilder, grpo_update
from parallel_r1.train.metrics import empty_rollout_metrics, rollout_metrics
from parallel_r1.train.sft import Pair, SFTConfig, sft_step


@dataclass
class StageData:
    """A stage's training items after tokenisation: ``Pair``s (SFT) or ``PromptItem``s (GRPO)."""

    items: list
    report: DataReport


@dataclass(frozen=True)
class PromptItem:
    id: str
    prompt_ids: list[int]
    answer: str


@dataclass
class StepContext:
    model: torch.nn.Module  # as prepared by accelerate (maybe DDP-wrapped)
    policy: torch.nn.Module  # the bare model, for generation
    tokenizer: object
    tag_ids: dict[str, int]
    build: BatchBuilder
    dist: Dist
    seed: int
    mode: str  # "seen" | "unseen"
    optimizer: torch.optim.Optimizer | None = None  # the current stage's
    engine: RolloutBackend | None = None  # the current GRPO stage's rollout backend
    ref_model: torch.nn.Module | None = None
    sample_log: list[dict] = field(default_factory=list)  # a few rollouts of the last step, for rollouts.jsonl


# --- data -----------------------------------------------------------------------------------------------


def prepare_sft(examples: Sequence[Example], stage: SFTStage, tokenizer, chat: bool, report: DataReport) -> StageData:
    pairs = []
    prompts = encode_prompts(tokenizer, [ex.prompt for ex in examples], chat)
    responses = encode_responses(tokenizer, [ex.response for ex in examples])
    for ex, prompt, response in zip(examples, prompts, responses, strict=True):
        pair = Pair(prompt, response)
        if len(pair) > stage.max_length:
            report.skip(f"longer than max_length {stage.max_length}", ex.id)
        else:
            pairs.append(pair)
    report.kept = len(pairs)
    return StageData(pairs, report)


def prepare_grpo(examples: Sequence[Example], stage: GRPOStage, tokenizer, chat: bool, report: DataReport) -> StageData:
    items = []
    for ex, ids in zip(examples, encode_prompts(tokenizer, [ex.prompt for ex in examples], chat), strict=True):
        if len(ids) > stage.max_prompt_tokens:
            report.skip(f"prompt longer than max_prompt_tokens {stage.max_prompt_tokens}", ex.id)
        else:
            items.append(PromptItem(ex.id, ids, ex.answer))
    report.kept = len(items)
    return StageData(items, report)


def total_steps(stage: SFTStage | GRPOStage, data: StageData) -> int:
    if stage.steps is not None:
        return stage.steps
    return max(1, int(stage.epochs * len(data.items)) // stage.batch_size)


# --- steps ----------------------------------------------------------------------------------------------


def sft_train_step(ctx: StepContext, stage: SFTStage, data: StageData, order: DataOrder, stage_step: int) -> dict:
    start = time.perf_counter()
    rows = [data.items[i] for i in order.next_batch(stage.batch_size)]
    # Longest first before sharding: every process gets a similar mix of lengths.
    rows.sort(key=len, reverse=True)
    mine = _share(rows, ctx.dist)
    cfg = SFTConfig(micro_batch_size=stage.micro_batch_size, max_grad_norm=stage.optimizer.max_grad_norm)
    out = sft_step(ctx.model, ctx.optimizer, mine, cfg, ctx.build, ctx.dist)
    elapsed = time.perf_counter() - start
    return {
        **empty_rollout_metrics(),
        "loss": out["loss"],
        "grad_norm": out["grad_norm"],
        "response_tokens": out["response_tokens"],
        "skipped_nonfinite": int(not out["stepped"]),
        "step_time_s": elapsed,
        "tokens_per_s": out["tokens"] / elapsed,
    }


def reward_rollouts(rollouts: Sequence, answers: Sequence[str], stage: GRPOStage, stage_step: int) -> list:
    """Judge each rollout with the stage's scorer and set its ``answer``, ``reward`` and ``reward_info``."""
    reward, scorer = get_reward(stage.reward.name, **stage.reward.params), get_scorer(stage.reward.scorer)
    verdicts = scorer.judge_many([r.text for r in rollouts], list(answers))
    for r, answer, v in zip(rollouts, answers, verdicts, strict=True):
        r.answer = answer
        r.reward = scorer.reward(reward, v, stage_step)
        r.reward_info = {"correct": v.correct, "format_valid": v.format_valid, "num_parallel": v.num_parallel,
                         "component": reward.component(stage_step)}  # fmt: skip
    return verdicts


def grpo_train_step(ctx: StepContext, stage: GRPOStage, data: StageData, order: DataOrder,
                    stage_step: int, global_step: int) -> dict:  # fmt: skip
    start = time.perf_counter()
    items = [data.items[i] for i in order.next_batch(stage.batch_size)]
    mine = _share(items, ctx.dist)
    if ctx.dist.ordered:  # process 0 samples the whole batch as one process would; the others wait
        rollouts, verdicts = ctx.dist.broadcast_object(_sample(ctx, stage, mine, stage_step, global_step)
                                                       if ctx.dist.is_main else None)  # fmt: skip
    else:
        rollouts, verdicts = _sample(ctx, stage, mine, stage_step, global_step)
    generated = time.perf_counter()
    reward = get_reward(stage.reward.name, **stage.reward.params)
    metrics = rollout_metrics(rollouts, verdicts, ctx.dist)
    backend = ctx.engine
    stats = grpo_update(ctx.model, ctx.optimizer, rollouts, stage.grpo, ctx.build,
                        temperature=stage.generation.temperature, micro_batch_size=stage.micro_batch_size,
                        max_grad_norm=stage.optimizer.max_grad_norm, dist=ctx.dist, ref_model=ctx.ref_model,
                        on_step=lambda: backend.update_weights(policy_tensors(ctx.policy)))  # fmt: skip
    end = time.perf_counter()
    ctx.sample_log = [_rollout_record(r, mine) for r in rollouts]
    return {
        **metrics,
        "reward_component": reward.component(stage_step),
        **stats.as_metrics(),
        "step_time_s": end - start,
        "generate_time_s": generated - start,
        "update_time_s": end - generated,
        "tokens_per_s": stats.tokens / (end - start),
    }


def _share(items: Sequence, dist: Dist) -> list:
    """This process's items of a global batch: every ``world_size``-th one, or all of them under
    ordered data parallelism (each process holds the batch and computes some micro-batches)."""
    return list(items) if dist.ordered else shard(items, dist.rank, dist.world_size)


def _sample(ctx: StepContext, stage: GRPOStage, mine: Sequence[PromptItem], stage_step: int, global_step: int):
    """``num_samples`` rollouts of each prompt of ``mine``, judged and rewarded: (rollouts, verdicts)."""
    step_seed = (ctx.seed * 1_000_003 + global_step) * 4096 + ctx.dist.rank
    assert stage.generation.mode == ctx.mode, "the recipe sets every stage's sampling mode (config.recipe_from_dict)"
    config = replace(stage.generation, seed=step_seed)
    rollouts = ctx.engine.generate([it.prompt_ids for it in mine], stage.num_samples, config)
    verdicts = reward_rollouts(rollouts, [mine[r.prompt_index].answer for r in rollouts], stage, stage_step)
    return rollouts, verdicts


def policy_tensors(policy: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights by name, produced lazily: a backend that shares the policy never asks for
    one. (Under FSDP each would be a full tensor gathered on demand; the backends take them one by one.)"""
    for name, param in policy.named_parameters():
        yield name, param.detach()


def _rollout_record(r, mine: Sequence[PromptItem]) -> dict:
    return {
        "id": mine[r.prompt_index].id,
        "sample": r.sample_index,
        "reward": r.reward,
        **r.reward_info,
        "answer": r.answer,
        "finish_reason": r.finish_reason,
        "tokens": r.num_tokens,
        "text": r.text,
    }
