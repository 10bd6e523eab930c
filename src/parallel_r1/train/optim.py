"""AdamW and its learning-rate schedule for one stage (docs/paper.md section 3).

Weight decay applies to every parameter, as in the reference trainer (verl). The schedule advances
once per training step (one rollout batch for GRPO, one batch for SFT), so a GRPO step with several
minibatches uses one learning rate throughout, as in the reference. With warm-up the first step
runs at learning rate 0 (transformers' / verl's convention).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from transformers import get_scheduler

if TYPE_CHECKING:  # the recipe imports the GRPO update, which ends its steps here: no import at run time
    from parallel_r1.train.config import OptimizerConfig

SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    assert params, "the model has no trainable parameters"
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, total_steps: int):
    warmup = int(cfg.warmup_ratio * total_steps)
    return get_scheduler(
        SCHEDULES[cfg.schedule], optimizer, num_warmup_steps=warmup, num_training_steps=total_steps
    )


def clip_and_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, dist, max_grad_norm: float | None):
    """Clip the accumulated gradient (norm over all processes of ``dist``), take the optimiser step
    unless that norm is non-finite (a NaN / inf loss: the step is skipped, not applied), then clear
    the gradient. Returns ``(grad_norm, stepped)``; SFT and GRPO both end an optimiser step here."""
    grad_norm = dist.clip_grad_norm(model.parameters(), max_grad_norm)
    stepped = math.isfinite(grad_norm)
    if stepped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, stepped
