"""Cold-start SFT: next-token loss on the response tokens of (prompt, response) pairs.

1. Seen = the causal forward, Unseen = the structured mask and positions (the batch builder decides;
   this loop never branches on the mode).
2. The loss is a token mean over every response token of the whole optimiser batch (all
   micro-batches, all processes), like the reference SFT trainer, so the update does not depend on
   how the batch is split.
3. Rows of a batch are sorted by length before they are cut into micro-batches, which keeps padding
   low without changing which rows form an optimiser batch (that is the data order's business).

Departure from the reference: rows longer than ``max_length`` are skipped and counted by the caller
(``encode_pairs``), never truncated, since a truncated trace loses its closing tags and final answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from parallel_r1.train.dist import Dist
from parallel_r1.train.grpo import BatchBuilder
from parallel_r1.train.logprobs import response_logprobs
from parallel_r1.train.optim import clip_and_step
from parallel_r1.train.ordered import accumulate_in_order, padded_tokens


@dataclass
class SFTConfig:
    micro_batch_size: int = 4  # rows per forward
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        assert self.micro_batch_size >= 1, f"micro_batch_size must be >= 1, got {self.micro_batch_size}"


@dataclass
class Pair:
    prompt_ids: list[int]
    response_ids: list[int]

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


def micro_batches(pairs: Sequence[Pair], size: int) -> list[list[Pair]]:
    """Rows sorted by length (longest first), cut into micro-batches of ``size`` rows."""
    rows = sorted(pairs, key=len, reverse=True)
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def sft_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    pairs: Sequence[Pair],
    cfg: SFTConfig,
    build: BatchBuilder,
    dist: Dist | None = None,
) -> dict:
    """One optimiser step on this process's share of a batch (``dist.ordered``: on the whole batch,
    whose micro-batches the processes split, ``train/ordered.py``). Returns loss, grad norm, token
    counts.

    A non-finite gradient norm (NaN / inf loss) skips the optimiser step; ``stepped`` says so.
    """
    dist = dist or Dist(device=next(model.parameters()).device)
    local = sum(len(p.response_ids) for p in pairs)
    n_tokens = float(dist.sum([local])[0])  # the token mean's denominator, all processes
    assert n_tokens > 0, "an SFT batch without response tokens"
    optimizer.zero_grad(set_to_none=True)
    micros = micro_batches(pairs, cfg.micro_batch_size)
    dtype = next(model.parameters()).dtype

    def backward(k: int) -> torch.Tensor:  # (2,) float64: summed loss, forward tokens
        batch = build([p.prompt_ids for p in micros[k]], [p.response_ids for p in micros[k]])
        batch = batch.to(dist.device, dtype)
        logprobs, _ = response_logprobs(model, batch)
        token_loss = -(logprobs * batch.response_mask).sum()
        # DDP averages gradients over processes; the factor makes it the global token mean.
        dist.backward(token_loss / n_tokens * dist.grad_scale)
        return torch.tensor([float(token_loss.detach()), batch.num_tokens], dtype=torch.float64)

    if dist.ordered:
        total = accumulate_in_order(model, padded_tokens(micros), backward, 2, dist)
    else:
        sums = torch.zeros(2, dtype=torch.float64)
        for k in range(len(micros)):
            with dist.no_sync(model, active=k < len(micros) - 1):
                sums += backward(k)
        total = dist.sum(sums)
    grad_norm, stepped = clip_and_step(model, optimizer, dist, cfg.max_grad_norm)
    return {
        "loss": float(total[0]) / n_tokens,
        "grad_norm": grad_norm,
        "stepped": stepped,
        "response_tokens": int(n_tokens),
        "tokens": int(total[1]),
    }
