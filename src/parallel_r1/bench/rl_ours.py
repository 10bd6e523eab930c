"""Our side of ``bench rl``: one GRPO step exactly as the runner takes it, on a given model and prompts.

``OurGRPO.step()`` = ``train.stages.grpo_train_step`` (engine generation, judging and rewards, rollout
metrics, ``grpo_update``) + the learning-rate schedule + one ``metrics.jsonl`` row, which is what
``train.runner`` does per GRPO step, minus checkpoints and the optional rollout log.

Departures from a recipe run, each to make the comparison with TRL like for like:
1. The hf backend is built with no EOS id (``HFOptions(eos_token_ids=[])``), so every rollout runs
   to ``max_new_tokens``; TRL gets ``min_new_tokens = max_new_tokens`` for the same effect. (The vllm
   backend has no such option: its rollouts may end early.)
2. ``max_blocks = 0``: in unseen mode the model may not open a ``<Parallel>`` block, so the work
   is plain decoding (sequential mode samples tags as ordinary tokens and trains causally).
3. Prompts are taken in data order (TRL's ``shuffle_dataset=False``), so step k of both sides
   sees the same prompts; a single process without ``accelerate`` (the runner wraps the optimiser
   with it, which changes nothing on one CPU process).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import torch

from parallel_r1.bench.rl import OUR_MODES
from parallel_r1.engine.backend import HFOptions, RolloutConfig, make_backend
from parallel_r1.engine.sampling import SamplingConfig
from parallel_r1.structure import tag_ids as tag_ids_of
from parallel_r1.train.batching import make_batch
from parallel_r1.train.config import DataConfig, GRPOStage, OptimizerConfig, RewardConfig
from parallel_r1.train.data import DataReport
from parallel_r1.train.dist import Dist
from parallel_r1.train.grpo import GRPOConfig
from parallel_r1.train.metrics import MetricsLog
from parallel_r1.train.optim import build_optimizer, build_scheduler
from parallel_r1.train.stages import PromptItem, StageData, StepContext, grpo_train_step


class InOrder:
    """Batches of consecutive rows (the ``DataOrder`` interface the step uses), wrapping around."""

    def __init__(self, size: int) -> None:
        self.size, self.position = size, 0

    def next_batch(self, batch_size: int) -> list[int]:
        assert 0 < batch_size <= self.size, f"batch of {batch_size} from {self.size} rows"
        if self.position + batch_size > self.size:
            self.position = 0
        batch = list(range(self.position, self.position + batch_size))
        self.position += batch_size
        return batch


def bench_stage(prompts: int, group: int, completion_len: int, lr: float, steps: int,
                reward: str = "accuracy", share_prompts: bool = True, mode: str = "unseen") -> GRPOStage:
    """The GRPO stage both sides share: one epoch, one minibatch, one micro-batch, no KL, no dual clip,
    constant lr without weight decay, temperature 1 without top-k / top-p. ``share_prompts=False``:
    our update without prompt sharing, for a before/after."""
    return GRPOStage(
        name="bench", type="grpo", data=DataConfig(), steps=steps,
        optimizer=OptimizerConfig(lr=lr, weight_decay=0.0, schedule="constant", max_grad_norm=1.0),
        reward=RewardConfig(name=reward), batch_size=prompts, num_samples=group,
        micro_batch_size=prompts * group,
        generation=SamplingConfig(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=completion_len,
                                  max_blocks=0, mode=mode),
        grpo=GRPOConfig(clip_low=0.2, clip_high=0.2, clip_ratio_c=None, normalize_std=True, kl_coef=0.0,
                        ppo_epochs=1, minibatch_groups=None, share_prompts=share_prompts),
    )  # fmt: skip


class OurGRPO:
    """Holds the step context of one bench run; ``step()`` runs and logs one GRPO step."""

    def __init__(self, model: torch.nn.Module, tokenizer, items: Sequence[PromptItem], stage: GRPOStage,
                 mode: str, seed: int, output: Path, lean: bool = True, backend: str = "hf") -> None:
        assert mode in OUR_MODES, f"mode must be one of {OUR_MODES}, got {mode!r}"
        tags = tag_ids_of(tokenizer)
        build = functools.partial(make_batch, tag_ids=tags, mode="seen" if mode == "sequential" else mode,
                                  pad_id=tokenizer.pad_token_id)  # fmt: skip
        dist = Dist(device="cpu")
        model.train()
        self.stage = stage
        self.optimizer = build_optimizer(model, stage.optimizer)
        self.scheduler = build_scheduler(self.optimizer, stage.optimizer, stage.steps)
        # no EOS: every completion runs to its full length, as TRL's side is set up to (bench.rl_trl)
        rollout = RolloutConfig(backend=backend, hf=HFOptions(max_batch_size=64, lean=lean, eos_token_ids=[]))
        self.engine = make_backend(rollout, model, tokenizer, tags)
        self.ctx = StepContext(model, model, tokenizer, tags, build, dist, seed, mode, self.optimizer, self.engine)
        self.data = StageData(list(items), DataReport("bench"))
        self.order = InOrder(len(items))
        output.mkdir(parents=True, exist_ok=True)
        self.metrics = MetricsLog(output, dist, tensorboard=False, wandb_project=None, run_name="bench-rl",
                                  config={})  # fmt: skip
        self.global_step = 0

    def step(self) -> dict:
        """One GRPO step and its metrics row (the row is also appended to ``metrics.jsonl``)."""
        self.global_step += 1
        lr = self.optimizer.param_groups[0]["lr"]
        row = grpo_train_step(self.ctx, self.stage, self.data, self.order, self.global_step, self.global_step)
        self.scheduler.step()
        row = {"stage": self.stage.name, "step": self.global_step, "type": "grpo", "lr": lr, **row}
        self.metrics.write(row)
        return row

    def close(self) -> None:
        self.engine.close()
        self.metrics.close()
