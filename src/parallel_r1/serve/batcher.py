"""Background batching loop: requests arriving within a short window share one ``Engine.generate`` call.

1. HTTP handler threads ``submit`` a ``Job`` (prompt ids, n, sampling config) and read its ``events``
   queue. One worker thread owns the engine: it takes the first waiting job, collects whatever else
   arrives within ``window_s`` (up to ``max_rows`` rows), and runs each group of compatible jobs as one
   call, every (prompt, sample) a row. The engine shares one prefill among identical prompts, so a
   prompt repeated n times costs one prefill, as ``num_samples=n`` would.
2. Jobs are compatible when their sampling settings are equal. A job that names a ``seed`` runs in
   a call of its own: the engine draws every row of a call from one generator, so sharing a call would
   make a seeded answer depend on its neighbours. Unseeded calls get a fresh seed from the batcher's
   own generator (else every call would repeat the same draws).
3. Streaming and cancellation use the engine's logits-processor hook as an observer, attached only
   to calls that hold a streaming job: each step it hands the response-so-far of streaming rows to
   their job (main chain and summary; paths show up when their block closes), and for a job whose
   client went away it leaves only EOS open, so the row ends within a few steps (EOS in a path or
   summary closes that branch first) instead of running to its budget. The logits of live rows are
   returned unchanged. (A blocking client's departure is only seen when its answer is written.)
4. An exception inside a call is sent to every job of that call (the handlers answer 500) and the
   loop goes on serving.
"""

from __future__ import annotations

import dataclasses
import queue
import random
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from parallel_r1.engine.sampling import SamplingConfig


@dataclass
class Job:
    """One request's rows: ``prompts[i]`` sampled ``n`` times; choice index = i * n + j.

    ``events`` receives ("tokens", choice, ids) while streaming, then ("done", rollouts by choice)
    or ("error", exception)."""

    prompts: list[list[int]]
    n: int
    config: SamplingConfig
    seeded: bool = False
    stream: bool = False
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n


@dataclass
class BatchStats:
    calls: int = 0
    jobs: int = 0
    rows: int = 0
    max_jobs_per_call: int = 0
    cancelled_jobs: int = 0
    errors: int = 0


class _Observer:
    """Logits processor that streams and cancels (module docstring, point 3); never changes the
    logits of live rows."""

    def __init__(self, owners: list[tuple[Job, int]], eos_id: int, stats: BatchStats):
        self.owners, self.eos_id, self.stats = owners, eos_id, stats
        self.cut: set[int] = set()

    def __call__(self, logits: torch.Tensor, contexts) -> torch.Tensor:
        # logits: (n, V), one row per branch sampled this step
        for i, ctx in enumerate(contexts):
            job, choice = self.owners[ctx.prompt_index]
            if job.cancelled.is_set():
                if id(job) not in self.cut:
                    self.cut.add(id(job))
                    self.stats.cancelled_jobs += 1
                logits[i] = float("-inf")
                logits[i, self.eos_id] = 0.0
            elif job.stream and ctx.phase != "path":
                # a copy: ctx.tokens is the engine's own list and grows after this call returns
                job.events.put(("tokens", choice, tuple(ctx.tokens)))
        return logits


def group_key(job: Job, index: int) -> tuple:
    """Jobs with equal keys share a call (module docstring, point 2)."""
    if job.seeded:
        return ("seeded", index)
    return ("free", *dataclasses.astuple(dataclasses.replace(job.config, seed=0)))


class Batcher:
    """Owns the engine; see the module docstring."""

    def __init__(self, engine, window_s: float = 0.01, max_rows: int = 256, seed: int | None = None,
                 logits_processors: Sequence = ()):
        assert window_s >= 0, f"window_s must be >= 0, got {window_s}"
        assert max_rows >= 1, f"max_rows must be >= 1, got {max_rows}"
        self.engine, self.window_s, self.max_rows = engine, window_s, max_rows
        self.rng = random.Random(seed)
        self.processors = list(logits_processors)
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.stats = BatchStats()
        self.thread: threading.Thread | None = None
        eos = getattr(getattr(engine, "tags", None), "eos", None) or {engine.tokenizer.eos_token_id}
        self.eos_id = min(eos)

    def start(self) -> None:
        assert self.thread is None, "batcher already started"
        self.thread = threading.Thread(target=self._loop, name="parallel-r1-batcher", daemon=True)
        self.thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def submit(self, job: Job) -> None:
        assert self.alive, "batcher is not running"
        self.queue.put(job)

    def _collect(self) -> tuple[list[Job], bool]:
        """Block for one job, then gather more for ``window_s``; returns (jobs, stop requested)."""
        first = self.queue.get()
        if first is None:
            return [], True
        jobs, rows = [first], first.rows
        deadline = time.monotonic() + self.window_s
        while rows < self.max_rows:
            remaining = deadline - time.monotonic()
            try:
                job = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            rows += job.rows
        return jobs, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            jobs, stop = self._collect()
            groups: dict[tuple, list[Job]] = {}
            for i, job in enumerate(jobs):
                groups.setdefault(group_key(job, i), []).append(job)
            for group in groups.values():
                self._run(group)

    def _run(self, group: list[Job]) -> None:
        live = [job for job in group if not job.cancelled.is_set()]
        for job in group:
            if job.cancelled.is_set():
                job.events.put(("error", RuntimeError("cancelled before it ran")))
        if not live:
            return
        prompts, owners = [], []
        for job in live:
            for i, prompt in enumerate(job.prompts):
                for j in range(job.n):
                    prompts.append(prompt)
                    owners.append((job, i * job.n + j))
        config = live[0].config if live[0].seeded else dataclasses.replace(live[0].config, seed=self.rng.getrandbits(63))
        observe = any(job.stream for job in live)
        processors = self.processors + ([_Observer(owners, self.eos_id, self.stats)] if observe else [])
        self.stats.calls += 1
        self.stats.jobs += len(live)
        self.stats.rows += len(prompts)
        self.stats.max_jobs_per_call = max(self.stats.max_jobs_per_call, len(live))
        try:
            rollouts = self.engine.generate(prompts, 1, config, logits_processors=processors)
        except Exception as exc:  # answered as a 500 to each job; the loop must keep serving
            self.stats.errors += 1
            traceback.print_exc(file=sys.stderr)
            for job in live:
                job.events.put(("error", exc))
            return
        results: dict[int, list] = {id(job): [None] * job.rows for job in live}
        for rollout in rollouts:
            job, choice = owners[rollout.prompt_index]
            results[id(job)][choice] = rollout
        for job in live:
            job.events.put(("done", results[id(job)]))
