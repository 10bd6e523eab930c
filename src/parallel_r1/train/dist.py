"""The few distributed operations the training loops need, with or without ``accelerate``.

Loops take a ``Dist``; without an ``Accelerator`` it is a single process on the model's device, so
the loss and update code is testable as plain functions. Under ``accelerate launch`` it forwards to
the Accelerator (DDP with gloo on CPU, NCCL / DeepSpeed on GPUs). With ``sharded`` set (the policy went
through ``fsdp.shard_model``) the model is FSDP2's, not accelerate's: backward is plain (FSDP2's hooks
reduce-scatter the gradients, averaged over processes as DDP's all-reduce is), nothing skips that
reduction, and the gradient norm is taken over the sharded (DTensor) gradients of all processes.
With ``ordered`` set (the recipe's ``data_parallel: ordered``) the model is not wrapped at all: every
process holds the whole batch and the loops sum micro-batch gradients in one-process order
(``train/ordered.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch


class Dist:
    def __init__(self, accelerator=None, device: torch.device | str | None = None):
        self.accelerator = accelerator
        if accelerator is not None:
            self.device = accelerator.device
            self.world_size = accelerator.num_processes
            self.rank = accelerator.process_index
        else:
            self.device = torch.device(device or "cpu")
            self.world_size = 1
            self.rank = 0
        self.sharded = False  # set by the runner once the model is FSDP2-sharded (train/fsdp.py)
        self.ordered = False  # set by the runner for ``data_parallel: ordered`` (train/ordered.py)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float] | torch.Tensor) -> torch.Tensor:
        """Element-wise sum over processes of their shares of a batch, a small float64 vector (on CPU
        on return). Under ``ordered`` every process holds the whole batch: its values are the total."""
        t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
        if self.world_size > 1 and not self.ordered:
            t = self.accelerator.reduce(t.to(self.device), reduction="sum")
        return t.cpu()

    @property
    def grad_scale(self) -> int:
        """Loss factor that undoes the processes' gradient averaging (DDP, FSDP); 1 under ``ordered``,
        whose gradients are summed, not averaged."""
        return 1 if self.ordered else self.world_size

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every process's ``t`` (same shape everywhere), in rank order."""
        if self.world_size == 1:
            return [t]
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        torch.distributed.all_gather(out, t)
        return out

    def broadcast_object(self, obj):
        """Process 0's ``obj`` on every process (pickled; the others pass anything, e.g. None)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj) -> list:
        """Every process's ``obj``, in rank order, on every process (pickled)."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is True on any (e.g. a Ctrl-C seen by one of them)."""
        if self.world_size == 1:  # not ``sum``: under ordered that is this process's own value
            return flag
        t = torch.tensor([float(flag)], dtype=torch.float64, device=self.device)  # NCCL: on the GPU
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return bool(t[0] > 0)

    def backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is not None and not (self.sharded or self.ordered):
            self.accelerator.backward(loss)
        else:
            loss.backward()

    @contextlib.contextmanager
    def no_sync(self, model: torch.nn.Module, active: bool) -> Iterator[None]:
        """Skip the gradient all-reduce for all but the last micro-batch of an optimiser step."""
        if active and self.accelerator is not None and self.world_size > 1 and not (self.sharded or self.ordered):
            with self.accelerator.no_sync(model):
                yield
        else:
            yield

    def clip_grad_norm(self, params: Iterable[torch.nn.Parameter], max_norm: float | None) -> float:
        """Clip to ``max_norm`` (None: only measure) and return the total norm before clipping."""
        limit = float("inf") if max_norm is None else max_norm
        if self.sharded:  # DTensor gradients: the norm is a DTensor, reduced over processes on demand
            norm = torch.nn.utils.clip_grad_norm_(list(params), limit)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        elif self.accelerator is not None:
            norm = self.accelerator.clip_grad_norm_(params, limit)
        else:
            norm = torch.nn.utils.clip_grad_norm_(list(params), limit)
        return float(norm) if norm is not None else float("nan")

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
