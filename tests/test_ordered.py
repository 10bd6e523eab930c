"""Ordered data parallelism (train/ordered.py): who computes which micro-batch, and the one-process
sum it reproduces. The two-process runs (bit-for-bit equal to one process) are in
tests/test_demo_processes.py."""

from __future__ import annotations

import pytest
import torch

from parallel_r1.train.dist import Dist
from parallel_r1.train.ordered import accumulate_in_order, owners


def test_owners_put_the_costliest_first_on_the_least_loaded_process():
    assert owners([8, 6, 5, 1], 2) == [0, 1, 1, 0]  # loads 9 and 11, not 14 and 6
    assert owners([3, 3, 3], 2) == [0, 1, 0]  # ties go to the lower rank
    assert owners([1, 2, 3], 1) == [0, 0, 0]
    assert owners([5], 3) == [0]  # fewer micro-batches than processes: the others own none


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))


def test_one_process_ordered_sum_equals_plain_accumulation_bit_for_bit():
    xs = [torch.randn(n, 5, generator=torch.Generator().manual_seed(n)) for n in (4, 3, 6, 1)]
    plain = _model()
    for x in xs:  # what a training loop does: backward after backward into .grad
        plain(x).pow(2).sum().backward()
    model = _model()

    def backward(k: int) -> torch.Tensor:
        loss = model(xs[k]).pow(2).sum()
        loss.backward()
        return torch.tensor([float(loss), len(xs[k])], dtype=torch.float64)

    stats = accumulate_in_order(model, [len(x) for x in xs], backward, 2, Dist(device="cpu"))
    for p, q in zip(plain.parameters(), model.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    assert stats[1] == 14
    # the order matters: summing the same gradients last-first would round differently
    assert any(not torch.equal(p.grad, q.grad) for p, q in zip(_reversed_sum(xs), model.parameters(), strict=True))


def _reversed_sum(xs) -> list[torch.nn.Parameter]:
    model = _model()
    for x in reversed(xs):
        model(x).pow(2).sum().backward()
    return list(model.parameters())


def test_ordered_data_parallel_refuses_fsdp_and_other_rollout_backends_on_several_processes(monkeypatch):
    from parallel_r1.train.config import RecipeError, recipe_from_dict
    from parallel_r1.train.runner import _check_data_parallel

    raw = {
        "model": {"init": "scratch", "tokenizer": "tok", "config": {"model_type": "qwen3"}}, "data_parallel": "ordered",
        "stages": [{"name": "s", "type": "sft", "data": {"path": "x.jsonl"}, "batch_size": 2, "steps": 1, "optimizer": {"lr": 1e-3}},
                   {"name": "rl", "type": "grpo", "data": {"path": "x.jsonl"}, "batch_size": 2, "num_samples": 2, "steps": 1, "reward": {"name": "accuracy"},
                    "optimizer": {"lr": 1e-3}}],
    }  # fmt: skip
    dist = Dist(device="cpu")
    dist.world_size, dist.ordered = 2, True
    _check_data_parallel(recipe_from_dict(raw), dist, 2)  # SFT and GRPO with the hf backend
    vllm = recipe_from_dict({**raw, "rollout": {"backend": "vllm"}})
    _check_data_parallel(vllm, dist, 1)  # no GRPO stage in this call
    with pytest.raises(RecipeError, match=r"GRPO stage\(s\) \['rl'\] on process 0 with the hf backend, not vllm"):
        _check_data_parallel(vllm, dist, 2)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(RecipeError, match="cannot run under FSDP"):
        _check_data_parallel(recipe_from_dict(raw), dist, 1)
