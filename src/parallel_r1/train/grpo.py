"""GRPO: group-normalised advantages and a clipped policy-gradient update over Rollouts.

What it does, for one batch of rollouts (``n`` samples for each prompt):
1. Advantage of a sample = its reward minus the mean reward of its group (same prompt), divided by
   the group's standard deviation (unbiased, + eps) unless ``normalize_std`` is off (Dr. GRPO).
   One scalar per sequence, given to every sampled token.
2. Old log-probs come from a forward of the *training* model in the training mode
   (Seen: causal; Unseen: structured mask and positions) before any update, never from the
   sampler; the sampler's log-probs only feed a diagnostic (``logprob_diff_sampler``). The first
   minibatch is trained before any optimiser step, so its old log-probs are its own training
   forward's, detached (ratio exactly 1): only later minibatches get a separate no-grad pass.
   With one minibatch and one epoch (on-policy) that saves a whole forward per step, as TRL does.
3. PPO-clip per token with separate lower / upper ranges (clip-higher: ``1 - clip_low`` ..
   ``1 + clip_high``) and the reference trainer's dual clip (``clip_ratio_c``) for negative advantages.
   Optional k3 KL to a frozen reference (off by default, as in the reference runs).
4. Token-mean: per-token losses are summed over the sampled tokens (Rollout loss mask) of a whole
   minibatch and divided by that minibatch's token count across all processes, so the update does not
   depend on how the minibatch is split into micro-batches or processes.
5. ``ppo_epochs`` passes over the batch, split into minibatches of whole groups in prompt order
   (the data order already shuffled the prompts), the same split every epoch as in the reference;
   one optimiser step per minibatch. Under several processes each holds every ``world_size``-th
   prompt of the step, so minibatch k is the same set of prompts whatever the number of processes;
   under ``data_parallel: ordered`` each holds every prompt and trains whole micro-batches, summed in
   the one-process order (``train/ordered.py``: the one-process update bit for bit).
6. Rows of a micro-batch that share a prompt have it computed once per forward (``share_prompts``,
   see ``logprobs``): the same log-probs and gradients, less work. Micro-batches are still formed
   by length, so a group's rows share only when they land in the same micro-batch.

As in the reference (its fork of verl 0.4.1, ``workers/actor/dp_actor.py`` and
``trainer/ppo/core_algos.py``; docs/paper.md section 3): group advantages, the clip ranges and dual
clip, the log ratio clamped to [-20, 20] before ``exp``, old log-probs from a training-mode forward
(for Unseen models with the structured mask and positions, there too), ``ppo_epochs`` over fixed
minibatches. Departures:
a. Token-mean over the whole minibatch (point 4). The reference takes the token mean of each
   micro-batch and divides it by the number of micro-batches, so a token of a micro-batch with few
   response tokens weighs more than one of a long micro-batch, and the update depends on the
   micro-batch size. The two agree only when every micro-batch holds as many response tokens.
b. Loss mask 0 on the tags the engine inserts (the ``<Path>`` that opens a path, ``</Parallel>``,
   ``<Summary>``, a ``</Path>`` or ``</Summary>`` forced at a length limit or in place of EOS): the
   policy did not sample them, so they get no gradient. The reference's rollout
   (``parallel_thinking_loop_v3.py``) notes which positions it inserted but gives every response
   token mask 1, so it trains on them as if sampled.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from parallel_r1.rollout import Rollout
from parallel_r1.train.batching import TrainBatch, scatter_response
from parallel_r1.train.dist import Dist
from parallel_r1.train.logprobs import response_logprobs
from parallel_r1.train.optim import clip_and_step
from parallel_r1.train.ordered import accumulate_in_order, owners, padded_tokens

# (prompts, responses) -> TrainBatch, with tag ids, mode and padding already bound.
BatchBuilder = Callable[[Sequence[Sequence[int]], Sequence[Sequence[int]]], TrainBatch]


@dataclass
class GRPOConfig:
    """A GRPO stage's ``grpo:`` settings, filled from the recipe as they are (train/config.py).

    What the run derives (the sampling temperature, the stage's micro-batch size and gradient clip,
    the number of processes) is passed to ``grpo_update`` next to it, not copied into it.
    """

    clip_low: float = 0.2
    clip_high: float = 0.2  # clip-higher (DAPO; Parallel-R1 S2 uses 0.28)
    clip_ratio_c: float | None = 3.0  # dual clip for negative advantages; None turns it off
    normalize_std: bool = True  # False: Dr. GRPO (mean-centred rewards only)
    adv_eps: float = 1e-6
    kl_coef: float = 0.0  # > 0 needs a frozen reference model
    ppo_epochs: int = 1
    minibatch_groups: int | None = None  # prompts (groups) per optimiser step, all processes; None: the whole batch
    share_prompts: bool = True  # compute a prompt shared by rows of a micro-batch once (exact; logprobs.py)

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for each bad value; the recipe turns them into errors naming the entry."""
        checks = [
            ("clip_low", 0 <= self.clip_low < 1, f"must be in [0, 1), got {self.clip_low}"),
            ("clip_high", self.clip_high >= 0, f"must be >= 0, got {self.clip_high}"),
            ("clip_ratio_c", self.clip_ratio_c is None or self.clip_ratio_c > 1,
             f"must be > 1 or null, got {self.clip_ratio_c}"),
            ("adv_eps", self.adv_eps > 0, f"must be > 0, got {self.adv_eps}"),
            ("kl_coef", self.kl_coef >= 0, f"must be >= 0, got {self.kl_coef}"),
            ("ppo_epochs", self.ppo_epochs >= 1, f"must be > 0, got {self.ppo_epochs}"),
            ("minibatch_groups", self.minibatch_groups is None or self.minibatch_groups >= 1,
             f"must be > 0, got {self.minibatch_groups}"),
        ]  # fmt: skip
        return [(name, message) for name, ok, message in checks if not ok]



def group_advantages(
    rewards: torch.Tensor, groups: torch.Tensor, normalize_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """(N,) rewards and (N,) group ids -> (N,) advantages: ``(r - mean_g) / (std_g + eps)``.

    std is the unbiased (Bessel) standard deviation of the group, as in the reference; a group of one
    sample gets mean 0 and std 1 (its advantage is its raw reward, which callers should avoid).
    """
    assert rewards.shape == groups.shape and rewards.dim() == 1, "rewards and groups must be (N,)"
    rewards = rewards.double()
    adv = torch.empty_like(rewards)
    for g in torch.unique(groups):
        idx = groups == g
        r = rewards[idx]
        mean = r.mean() if r.numel() > 1 else torch.zeros((), dtype=r.dtype)
        centred = r - mean
        if normalize_std:
            std = r.std() if r.numel() > 1 else torch.ones((), dtype=r.dtype)
            centred = centred / (std + eps)
        adv[idx] = centred
    return adv.float()


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float,
    clip_ratio_c: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss; all inputs the same shape. Returns ``(loss, ratio, clipped)``.

    loss = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)), and for A < 0 at most -A c (dual clip).
    ``clipped`` marks tokens where the clipped branch is the one taken (the clip fraction's numerator).
    """
    log_ratio = torch.clamp(logprobs - old_logprobs, -20.0, 20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped_loss = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped_loss)
    clipped = clipped_loss > unclipped
    if clip_ratio_c is not None:
        capped = torch.minimum(loss, -advantages * clip_ratio_c)
        loss = torch.where(advantages < 0, capped, loss)
    return loss, ratio, clipped


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(policy || ref) per token: exp(d) - d - 1, d = ref - policy.

    Non-negative, unbiased; clamped to [-10, 10] like the reference's "low_var_kl".
    """
    d = ref_logprobs - logprobs
    return torch.clamp(torch.exp(d) - d - 1.0, -10.0, 10.0)


@dataclass
class _Row:
    prompt_ids: list[int]
    response_ids: list[int]
    loss_mask: list[int]
    sampler_logprobs: list[float]
    advantage: float
    group: int
    old_logprobs: list[float] | None = None  # None until filled (first minibatch: by its training forward)
    ref_logprobs: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclass
class GRPOStats:
    """Totals of one ``grpo_update``; ``minibatches`` holds each optimiser step's own figures."""

    loss: float = 0.0
    clip_fraction: float = 0.0
    ratio_mean: float = 1.0
    entropy: float = 0.0
    kl: float = 0.0  # to the frozen reference (0 when off)
    ppo_kl: float = 0.0  # mean (old - new) log-prob: how far the update moved the policy
    grad_norm: float = 0.0
    logprob_diff_sampler: float = 0.0  # mean |old (training forward) - sampler| log-prob
    optimizer_steps: int = 0
    skipped_nonfinite: int = 0
    tokens: int = 0  # forward tokens (prompt + response) processed, all processes
    minibatches: list[dict] = field(default_factory=list)

    def as_metrics(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "minibatches"}


@dataclass(frozen=True)
class _Pass:
    """What one update's forwards and steps need besides ``GRPOConfig`` (all given by the caller)."""

    score: Callable  # (model) -> (logprobs, entropy): ``response_logprobs`` with batch still to bind
    max_grad_norm: float | None
    on_step: Callable[[], None] | None


def grpo_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rollouts: Sequence[Rollout],
    cfg: GRPOConfig,
    build: BatchBuilder,
    *,
    temperature: float = 1.0,
    micro_batch_size: int = 4,
    max_grad_norm: float | None = 1.0,
    dist: Dist | None = None,
    ref_model: torch.nn.Module | None = None,
    on_step: Callable[[], None] | None = None,
) -> GRPOStats:
    """One GRPO update on this process's rollouts (each group whole on one process).

    Every rollout needs ``reward`` set. Groups are keyed by ``prompt_index``. Under several
    processes, all must hold the same number of rollouts and groups (the runner shards evenly), and
    ``cfg.minibatch_groups`` (all processes) is split evenly among them. ``temperature``: the sampling
    temperature (logits are divided by it; greedy sampling scores at 1); ``micro_batch_size``: rows
    per forward; ``on_step``: called after every optimiser step taken (the rollout backend's weight
    hand-over).
    """
    dist = dist or Dist(device=next(model.parameters()).device)
    bad = cfg.problems()
    assert not bad, "GRPOConfig: " + "; ".join(f"{name} {message}" for name, message in bad)
    assert micro_batch_size >= 1, f"micro_batch_size must be >= 1, got {micro_batch_size}"
    assert (cfg.kl_coef > 0) == (ref_model is not None), "kl_coef > 0 needs a ref_model, and only then"
    groups = cfg.minibatch_groups
    if groups is not None and not dist.ordered:  # ordered: every process holds every group
        assert groups % dist.world_size == 0, f"minibatch_groups {groups} does not split over {dist.world_size} processes"
        groups //= dist.world_size
    score = functools.partial(response_logprobs, temperature=temperature if temperature > 0 else 1.0,
                              share_prompts=cfg.share_prompts)  # fmt: skip
    run = _Pass(score, max_grad_norm, on_step)
    rows = _rows_with_advantages(rollouts, cfg)
    plan = _minibatches(rows, groups, micro_batch_size)
    _fill_old_logprobs(model, ref_model, plan, run, build, dist)
    stats = GRPOStats()
    for _epoch in range(cfg.ppo_epochs):
        for minibatch in plan:
            mb = _minibatch_step(model, optimizer, minibatch, cfg, run, build, dist)
            if mb is not None:
                stats.minibatches.append(mb)
    _summarise(stats, rows, dist)
    return stats


def _rows_with_advantages(rollouts: Sequence[Rollout], cfg: GRPOConfig) -> list[_Row]:
    assert rollouts, "grpo_update needs at least one rollout"
    for r in rollouts:
        where = f"rollout (prompt {r.prompt_index}, sample {r.sample_index})"
        assert r.reward is not None, f"{where} has no reward"
        assert math.isfinite(r.reward), f"{where} has a non-finite reward {r.reward}"
        assert len(r.loss_mask) == len(r.response_ids) == len(r.logprobs), "Rollout lists differ in length"
    rewards = torch.tensor([float(r.reward) for r in rollouts])
    groups = torch.tensor([r.prompt_index for r in rollouts])
    adv = group_advantages(rewards, groups, cfg.normalize_std, cfg.adv_eps).tolist()
    return [
        _Row(r.prompt_ids, r.response_ids, list(r.loss_mask), list(r.logprobs), a, r.prompt_index)
        for r, a in zip(rollouts, adv, strict=True)
    ]


def _minibatches(rows: list[_Row], groups_per_step: int | None, micro_batch_size: int) -> list[list[list[_Row]]]:
    """Minibatches (whole groups, in group order) of micro-batches (rows sorted by length)."""
    by_group: dict[int, list[_Row]] = {}
    for row in rows:
        by_group.setdefault(row.group, []).append(row)
    groups = [by_group[g] for g in sorted(by_group)]
    size = groups_per_step or len(groups)
    plan = []
    for start in range(0, len(groups), size):
        mb_rows = [row for g in groups[start : start + size] for row in g]
        mb_rows.sort(key=len, reverse=True)
        step = micro_batch_size
        plan.append([mb_rows[i : i + step] for i in range(0, len(mb_rows), step)])
    return plan


def _batch(rows: list[_Row], build: BatchBuilder, model: torch.nn.Module, dist: Dist) -> TrainBatch:
    batch = build([r.prompt_ids for r in rows], [r.response_ids for r in rows])
    return batch.to(dist.device, next(model.parameters()).dtype)


@torch.no_grad()
def _fill_old_logprobs(model, ref_model, plan, run: _Pass, build: BatchBuilder, dist: Dist) -> None:
    """Old (and reference) log-probs per row, from the very micro-batches the update trains on.

    The first minibatch's old log-probs are left to its training forward (module docstring, point 2).
    Under ``dist.ordered`` each micro-batch is scored by one process and the rows' values shared."""
    done = {}  # (minibatch, micro-batch) -> (old, ref) per row
    for k, minibatch in enumerate(plan):
        if k == 0 and ref_model is None:
            continue
        owner = owners(padded_tokens(minibatch), dist.world_size) if dist.ordered else [dist.rank] * len(minibatch)
        for j, micro in enumerate(minibatch):
            if owner[j] != dist.rank:
                continue
            batch = _batch(micro, build, model, dist)
            score = functools.partial(run.score, batch=batch)
            old = score(model)[0] if k > 0 else None
            ref = score(ref_model)[0] if ref_model is not None else None
            masks = batch.response_mask
            done[k, j] = [(None if old is None else old[i][masks[i]].tolist(),
                           None if ref is None else ref[i][masks[i]].tolist()) for i in range(len(micro))]  # fmt: skip
    for part in dist.gather_objects(done) if dist.ordered else [done]:
        for (k, j), values in part.items():
            for row, (old, ref) in zip(plan[k][j], values, strict=True):
                row.old_logprobs = old if old is not None else row.old_logprobs
                row.ref_logprobs = ref if ref is not None else row.ref_logprobs


def _minibatch_step(model, optimizer, minibatch, cfg: GRPOConfig, run: _Pass, build, dist: Dist) -> dict | None:
    """Accumulate the token-mean loss over the micro-batches, then one optimiser step."""
    local_tokens = sum(sum(r.loss_mask) for micro in minibatch for r in micro)
    n_tokens = float(dist.sum([local_tokens])[0])  # the token-mean's denominator, all processes
    if n_tokens == 0:
        return None
    optimizer.zero_grad(set_to_none=True)
    if dist.ordered:  # train/ordered.py: whole micro-batches per process, gradients summed in order
        pending = [j for j, micro in enumerate(minibatch) if micro[0].old_logprobs is None]
        sums = accumulate_in_order(model, padded_tokens(minibatch), lambda j: _micro_backward(
            model, minibatch[j], cfg, run, build, dist, n_tokens), 7, dist)  # fmt: skip
        _share_first_old_logprobs(minibatch, pending, dist)
    else:
        sums = torch.zeros(7, dtype=torch.float64)  # loss, clipped, ratio, entropy, kl, ppo_kl, fwd tokens
        for k, micro in enumerate(minibatch):
            with dist.no_sync(model, active=k < len(minibatch) - 1):
                sums += _micro_backward(model, micro, cfg, run, build, dist, n_tokens)
    grad_norm, finite = clip_and_step(model, optimizer, dist, run.max_grad_norm)
    if finite and run.on_step is not None:  # a skipped (non-finite) step leaves the weights as they were
        run.on_step()
    total = dist.sum(sums)
    return {
        "loss": float(total[0]) / n_tokens,
        "clip_fraction": float(total[1]) / n_tokens,
        "ratio_mean": float(total[2]) / n_tokens,
        "entropy": float(total[3]) / n_tokens,
        "kl": float(total[4]) / n_tokens,
        "ppo_kl": float(total[5]) / n_tokens,
        "grad_norm": grad_norm,
        "stepped": finite,
        "tokens": int(n_tokens),
        "forward_tokens": int(total[6]),
    }


def _share_first_old_logprobs(minibatch: list[list[_Row]], pending: list[int], dist: Dist) -> None:
    """Ordered: the old log-probs that micro-batches ``pending`` took from their own training forward
    (first minibatch) were set on the process that ran each; copy them to every process."""
    mine = {j: [r.old_logprobs for r in minibatch[j]] for j in pending if minibatch[j][0].old_logprobs is not None}
    for part in dist.gather_objects(mine):
        for j, values in part.items():
            for row, old in zip(minibatch[j], values, strict=True):
                row.old_logprobs = old


def _micro_backward(model, micro: list[_Row], cfg: GRPOConfig, run: _Pass, build, dist: Dist, n_tokens: float):
    batch = _batch(micro, build, model, dist)
    mask = scatter_response([r.loss_mask for r in micro], batch.response_mask)  # (B, T)
    adv = torch.tensor([r.advantage for r in micro], device=mask.device)[:, None].expand_as(mask)
    logprobs, entropy = run.score(model, batch=batch, with_entropy=True)
    if micro[0].old_logprobs is None:  # first minibatch, no optimiser step yet: old = this forward
        old = logprobs.detach()
        for i, row in enumerate(micro):
            row.old_logprobs = old[i][batch.response_mask[i]].tolist()
    else:
        old = scatter_response([r.old_logprobs for r in micro], batch.response_mask)
    per_token, ratio, clipped = clipped_surrogate(
        logprobs, old, adv, cfg.clip_low, cfg.clip_high, cfg.clip_ratio_c
    )
    kl = torch.zeros_like(per_token)
    if cfg.kl_coef > 0:
        ref = scatter_response([r.ref_logprobs for r in micro], batch.response_mask)
        kl = k3_kl(logprobs, ref)
        per_token = per_token + cfg.kl_coef * kl
    # DDP averages gradients over processes, hence the world-size factor (1 under ordered, which
    # sums): the result is the gradient of (sum of all token losses) / (all processes' token count).
    loss = (per_token * mask).sum() / n_tokens * dist.grad_scale
    dist.backward(loss)
    with torch.no_grad():
        return torch.tensor(
            [
                float((per_token * mask).sum()),
                float((clipped.float() * mask).sum()),
                float((ratio * mask).sum()),
                float((entropy * mask).sum()),
                float((kl * mask).sum()),
                float(((old - logprobs) * mask).sum()),
                float(batch.num_tokens),
            ],
            dtype=torch.float64,
        )


def _summarise(stats: GRPOStats, rows: list[_Row], dist: Dist) -> None:
    """Token-weighted means over the minibatch steps, plus the sampler / trainer log-prob gap."""
    mbs = stats.minibatches
    weight = sum(m["tokens"] for m in mbs)
    if weight:
        for key in ("loss", "clip_fraction", "ratio_mean", "entropy", "kl", "ppo_kl"):
            setattr(stats, key, sum(m[key] * m["tokens"] for m in mbs) / weight)
        norms = [m["grad_norm"] for m in mbs if m["stepped"]]
        stats.grad_norm = sum(norms) / len(norms) if norms else float("nan")
    stats.optimizer_steps = sum(m["stepped"] for m in mbs)
    stats.skipped_nonfinite = sum(not m["stepped"] for m in mbs)
    stats.tokens = sum(m["forward_tokens"] for m in mbs)
    gap = [0.0, 0.0]
    for row in rows:
        if row.old_logprobs is None:  # its minibatch had no sampled token and was skipped
            continue
        for keep, old, samp in zip(row.loss_mask, row.old_logprobs, row.sampler_logprobs, strict=True):
            if keep:
                gap[0] += abs(old - samp)
                gap[1] += 1
    gap_sum, count = dist.sum(gap).tolist()
    stats.logprob_diff_sampler = gap_sum / count if count else 0.0
