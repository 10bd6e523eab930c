"""TRL's side of ``bench rl``: a ``GRPOTrainer`` set up offline for the same work as our step.

Settings (read from TRL 1.16's ``GRPOConfig`` / ``GRPOTrainer`` source), chosen so one TRL optimiser
step is one of ours:
- ``per_device_train_batch_size = P * G`` with ``num_generations = G``, ``gradient_accumulation_steps
  = steps_per_generation = 1`` and ``num_iterations = 1``: each step generates G completions for P
  prompts and takes one optimiser step on all of them in one forward (TRL then skips the separate
  old-log-prob pass, as our update now does on-policy);
- ``max_completion_length = min_new_tokens = L``: EOS is masked until the cap, so every completion
  has exactly L tokens; ``temperature 1``, ``top_p 1``, ``top_k 0``;
- ``loss_type="dapo"`` (token mean over the batch, as ours), ``epsilon = epsilon_high = 0.2``,
  ``beta = 0`` (no reference model), ``scale_rewards="group"``, ``max_grad_norm = 1``, constant lr,
  no weight decay, fp32 on CPU (``bf16`` and gradient checkpointing, both on by default, off),
  ``shuffle_dataset=False`` (prompts in data order), no vLLM, ``report_to="none"``, logging every
  step (as our ``metrics.jsonl``), no checkpoints, no progress bar or console printer.
- the reward function judges each completion against the gold answer with our ``judge_many`` and
  scores it with our accuracy reward, as our step does.

``Alternate`` is a ``TrainerCallback`` that runs one of our steps after each TRL step, so the two
alternate (A/B) inside one ``trainer.train()``. A TRL step's time is measured from the end of our
previous step to TRL's ``on_step_end``, so it includes TRL's logging of the step before and its data
loading; one of ours is timed around ``OurGRPO.step``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from parallel_r1.rewards import get_reward, judge_many


def accuracy_reward_fn(prompts, completions, answer, **_) -> list[float]:
    """TRL reward function: our judge + accuracy reward on each completion (``answer`` column)."""
    reward = get_reward("accuracy")
    verdicts = judge_many(list(completions), list(answer))
    return [float(reward(v, 1)) for v in verdicts]


def build_trl_trainer(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], *, group: int,
                      completion_len: int, lr: float, steps: int, seed: int, output: Path,
                      callbacks: Sequence = ()):  # fmt: skip
    """A ``GRPOTrainer`` over ``prompts`` (plain text; ``len(prompts) / steps`` per step)."""
    from datasets import Dataset
    from transformers import PrinterCallback, ProgressCallback
    from trl import GRPOConfig, GRPOTrainer

    assert len(prompts) % steps == 0, f"{len(prompts)} prompts do not split into {steps} steps"
    per_step = len(prompts) // steps
    dataset = Dataset.from_list([{"prompt": p, "answer": a} for p, a in zip(prompts, answers, strict=True)])
    args = GRPOConfig(
        output_dir=str(output), per_device_train_batch_size=per_step * group, gradient_accumulation_steps=1,
        num_generations=group, num_iterations=1, max_completion_length=completion_len,
        generation_kwargs={"min_new_tokens": completion_len}, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=lr, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
        beta=0.0, epsilon=0.2, epsilon_high=0.2, loss_type="dapo", scale_rewards="group",
        max_steps=steps, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, shuffle_dataset=False,
        dataloader_num_workers=0, seed=seed, use_vllm=False, log_completions=False,
    )  # fmt: skip
    trainer = GRPOTrainer(model=model, reward_funcs=accuracy_reward_fn, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=list(callbacks))  # fmt: skip
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    return trainer


def time_generation(trainer) -> list[float]:
    """Record the seconds of each of the trainer's generation calls (wraps the bound method)."""
    seconds: list[float] = []
    inner = trainer._generate_single_turn

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = inner(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        return out

    trainer._generate_single_turn = timed
    return seconds


def make_alternate(our_step: Callable[[], dict]):
    """The A/B callback (module docstring); built lazily so importing this module needs no transformers."""
    from transformers import TrainerCallback

    class Alternate(TrainerCallback):
        def __init__(self) -> None:
            self.trl_seconds: list[float] = []
            self.our_seconds: list[float] = []
            self.our_rows: list[dict] = []
            self._mark = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self._mark = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.trl_seconds.append(time.perf_counter() - self._mark)
            start = time.perf_counter()
            self.our_rows.append(our_step())
            self.our_seconds.append(time.perf_counter() - start)
            self._mark = time.perf_counter()

    return Alternate()
