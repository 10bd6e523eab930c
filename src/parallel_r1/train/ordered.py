"""Ordered data parallelism: several processes, the one-process update bit for bit.

DDP gives each process a share of the batch and all-reduces the summed gradients, so the float sums
run in another order than one process accumulating its micro-batches, and over thousands of steps of
a small model that rounding grows into a different model (the demo measured it: README, Demo results).

Here every process holds the whole batch and its micro-batches; each micro-batch is computed whole
by one process (``owners``: the largest first, onto the least loaded process), and every
micro-batch's gradient travels on its own:

    grads: (micro-batches this process owns, parameters), computed from an empty .grad each
    all-gather -> every process holds every micro-batch's gradient g_k, exactly as computed
    .grad = ((g_0 + g_1) + g_2) + ...   the order in which one process's backward passes accumulate

so every process ends the step with the gradient one process computes, and all take the same
optimiser step. The price is an all-gather of (micro-batches x parameters) floats per step instead
of an all-reduce of one gradient: right for small models on CPU cores (the demo's 0.17 M parameters:
2.7 MB a step), not for large ones (use DDP or FSDP there). The recipe's ``data_parallel: ordered``
selects it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from parallel_r1.train.dist import Dist


def owners(costs: Sequence[float], world: int) -> list[int]:
    """The process that computes each micro-batch: the costliest first, each onto the process with
    the least work so far (ties: the lower rank). Deterministic, so every process agrees."""
    load = [0.0] * world
    owner = [0] * len(costs)
    for k in sorted(range(len(costs)), key=lambda k: (-costs[k], k)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owner[k], load[rank] = rank, load[rank] + costs[k]
    return owner


def padded_tokens(micros: Sequence[Sequence]) -> list[int]:
    """Each micro-batch's rows x its longest row (rows have a ``len``): the cost ``owners`` balances."""
    return [len(micro) * max(len(row) for row in micro) for micro in micros]


def accumulate_in_order(
    model: torch.nn.Module,
    costs: Sequence[float],
    backward: Callable[[int], torch.Tensor],
    n_stats: int,
    dist: Dist,
) -> torch.Tensor:
    """Leave in every process's ``.grad`` the sum of the micro-batches' gradients in the order one
    process accumulates them, and return their statistics summed in that order.

    ``backward(k)`` runs micro-batch k's forward and backward on this process (``.grad`` starts
    empty) and returns its ``n_stats`` statistics as a float64 vector; ``costs[k]`` is its expected
    cost (e.g. padded tokens)."""
    params = [p for p in model.parameters() if p.requires_grad]
    owner = owners(costs, dist.world_size)
    mine = [k for k, rank in enumerate(owner) if rank == dist.rank]
    rows = max(owner.count(r) for r in range(dist.world_size))  # the most micro-batches any process owns
    grads = params[0].new_zeros(rows, sum(p.numel() for p in params))  # (rows, parameters): mine, padded
    stats = grads.new_zeros(rows, n_stats, dtype=torch.float64)  # on the gradients' device (NCCL)
    for i, k in enumerate(mine):
        for p in params:
            p.grad = None
        stats[i] = backward(k)
        missing = [j for j, p in enumerate(params) if p.grad is None]
        assert not missing, f"micro-batch {k} left parameters {missing} without a gradient"
        grads[i] = torch.cat([p.grad.reshape(-1) for p in params])
    by_rank = list(zip(dist.all_gather(grads), dist.all_gather(stats), strict=True))
    index = [owner[:k].count(owner[k]) for k in range(len(owner))]  # row of micro-batch k on its owner
    total = by_rank[owner[0]][0][index[0]].clone()
    for k in range(1, len(owner)):  # the one-process order: g_0 + g_1 + ...
        total += by_rank[owner[k]][0][index[k]]
    offset = 0
    for p in params:
        p.grad = total[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    summed = torch.zeros(n_stats, dtype=torch.float64)
    for k in range(len(owner)):
        summed += by_rank[owner[k]][1][index[k]].cpu()
    return summed
