"""Where one of our GRPO steps spends its time: exclusive wall time per section, over a few steps.

``profile_our_steps(ours, steps)`` runs ``OurGRPO.step()`` ``steps`` times with the functions below
wrapped by a timer (restored afterwards), and returns seconds per step for each section:

| section           | what is timed                                                               |
|-------------------|-----------------------------------------------------------------------------|
| generation        | ``Engine.generate`` (prefill, decode loop, sampling, decoding text)          |
| rewards           | ``judge_many`` (parse, extract, verify) in ``grpo_train_step``               |
| rollout_metrics   | ``rollout_metrics``                                                          |
| batch_build       | building the padded training batch (``grpo._batch``: mask, positions)        |
| old_logprobs_fwd  | no-grad forwards for old / reference log-probs                               |
| train_fwd         | the forward with gradient, log-softmax, entropy                             |
| backward          | ``loss.backward()``                                                          |
| grad_clip         | gradient-norm clipping                                                       |
| optimizer         | ``optimizer.step()``                                                         |
| logging           | the ``metrics.jsonl`` row                                                    |
| other             | the rest (advantages, loss arithmetic, stats, lr schedule, Python glue)      |

Sections are exclusive: a section nested in another is subtracted from it. The timer adds a few
microseconds per call, nothing a step of tens of milliseconds notices.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

SECTIONS = ("generation", "rewards", "rollout_metrics", "batch_build", "old_logprobs_fwd", "train_fwd",
            "backward", "grad_clip", "optimizer", "logging", "other")  # fmt: skip


class SectionTimer:
    """Exclusive wall time per named section; sections may nest."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []  # [name, start, time spent in nested sections]

    def wrap(self, name: str | Callable[..., str], fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            label = name(*args, **kwargs) if callable(name) else name
            self._stack.append([label, time.perf_counter(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                label, start, nested = self._stack.pop()
                spent = time.perf_counter() - start
                self.seconds[label] += spent - nested
                if self._stack:
                    self._stack[-1][2] += spent

        return timed


@contextlib.contextmanager
def _patched(targets: list[tuple[object, str, Callable]]) -> Iterator[None]:
    # (object, attribute, its value, whether the object itself held it: else it came from the class)
    saved = [(obj, attr, getattr(obj, attr), attr in vars(obj)) for obj, attr, _ in targets]
    try:
        for obj, attr, make in targets:
            setattr(obj, attr, make(getattr(obj, attr)))
        yield
    finally:
        for obj, attr, value, own in reversed(saved):
            if own:
                setattr(obj, attr, value)
            else:
                delattr(obj, attr)


def profile_our_steps(ours, steps: int) -> dict:
    """Seconds per step of each section (``SECTIONS``) over ``steps`` of ``ours`` (an ``OurGRPO``)."""
    import torch

    from parallel_r1.train import grpo, stages

    timer = SectionTimer()
    fwd_label = lambda *a, **k: "train_fwd" if torch.is_grad_enabled() else "old_logprobs_fwd"  # noqa: E731
    ctx = ours.ctx
    targets = [
        (ctx.engine, "generate", lambda f: timer.wrap("generation", f)),
        (stages, "reward_rollouts", lambda f: timer.wrap("rewards", f)),
        (stages, "rollout_metrics", lambda f: timer.wrap("rollout_metrics", f)),
        (grpo, "_batch", lambda f: timer.wrap("batch_build", f)),
        (grpo, "response_logprobs", lambda f: timer.wrap(fwd_label, f)),
        (ctx.dist, "backward", lambda f: timer.wrap("backward", f)),
        (ctx.dist, "clip_grad_norm", lambda f: timer.wrap("grad_clip", f)),
        (ctx.optimizer, "step", lambda f: timer.wrap("optimizer", f)),
        (ours.metrics, "write", lambda f: timer.wrap("logging", f)),
    ]
    with _patched(targets):
        step = timer.wrap("other", ours.step)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        total = time.perf_counter() - start
    per_step = {name: timer.seconds.get(name, 0.0) / steps for name in SECTIONS}
    return {"step_s": total / steps, "sections_s": per_step,
            "sections_share": {k: v / (total / steps) for k, v in per_step.items()}, "steps": steps}
