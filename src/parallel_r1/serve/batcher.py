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
3. Streaming, cancellation and stop strings use the engine's logits-processor hook as an observer,
   attached only to calls that hold a streaming job or a job with stop strings: each step it hands
   the response-so-far of streaming rows to their job (main chain and summary; paths show up when
   their block closes), and a row whose job's client went away, or whose text already holds one of
   its stop strings, gets only EOS left open, so it ends within a few steps (EOS in a path or
   summary closes that branch first) instead of running to its budget. The engine itself stops at a
   stop string only in the main chain; the observer catches one inside a path (each path's own
   tokens), a summary, a tag, or across a block's pieces (the response, checked incrementally; a
   ``<Parallel>`` just sampled counts as part of it). The exact cut is the app's (``app``, point 4):
   ending early only saves work. The logits of live rows are returned unchanged. (A blocking
   client's departure is only seen when its answer is written.)
   A backend without that hook (``supports_logits_processors`` False: vLLM) gets plain calls: a
   streaming job receives its text when the call returns (in the last chunk), stop strings are
   applied to the returned text by the app (the backend itself stops at one in the main chain), and
   a job cancelled during its call is counted and dropped when the call returns.
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
from parallel_r1.format.tags import PARALLEL_OPEN


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
    """Logits processor that streams, cancels and ends rows at stop strings (module docstring,
    point 3); never changes the logits of live rows."""

    def __init__(self, owners: list[tuple[Job, int]], eos_id: int, stats: BatchStats, tokenizer, par_open: int):
        self.owners, self.eos_id, self.stats = owners, eos_id, stats
        self.tokenizer, self.par_open = tokenizer, par_open
        self.cut: set[int] = set()  # ids of cancelled jobs, counted once
        self.ending: set[int] = set()  # rows (prompt indices) left with EOS only
        self.checked: dict[int, int] = {}  # row -> response tokens already searched for stop strings
        self.tail: dict[int, tuple[int, ...]] = {}  # row -> last response tokens searched

    def __call__(self, logits: torch.Tensor, contexts) -> torch.Tensor:
        # logits: (n, V), one row per branch sampled this step
        for i, ctx in enumerate(contexts):
            job, choice = self.owners[ctx.prompt_index]
            if ctx.prompt_index not in self.ending and self._must_end(job, ctx):
                self.ending.add(ctx.prompt_index)
            if ctx.prompt_index in self.ending:
                logits[i] = float("-inf")
                logits[i, self.eos_id] = 0.0
            elif job.stream and ctx.phase != "path":
                # a copy: ctx.tokens is the engine's own list and grows after this call returns
                job.events.put(("tokens", choice, tuple(ctx.tokens)))
        return logits

    def _must_end(self, job: Job, ctx) -> bool:
        if job.cancelled.is_set():
            if id(job) not in self.cut:
                self.cut.add(id(job))
                self.stats.cancelled_jobs += 1
            return True
        stop = job.config.stop
        if not stop:
            return False
        window = max(len(s) for s in stop) + 4  # tokens: as the engine's own check, a margin for pieces
        if ctx.phase == "path":
            if ctx.path_index == 0 and len(ctx.tokens) == 1:  # a block's first step: the response ends
                opened = self.tail.get(ctx.prompt_index, ()) + (self.par_open,)  # ... with <Parallel>
                if self._holds(opened[-window:], stop):
                    return True
            return self._holds(ctx.tokens[-window:], stop)
        start = max(0, self.checked.get(ctx.prompt_index, 0) - window)
        self.checked[ctx.prompt_index] = len(ctx.tokens)
        self.tail[ctx.prompt_index] = tuple(ctx.tokens[-window:])
        return self._holds(ctx.tokens[start:], stop)

    def _holds(self, ids, stop: tuple[str, ...]) -> bool:
        text = self.tokenizer.decode(list(ids), skip_special_tokens=False)
        return any(s in text for s in stop)


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
        self.observes = engine.supports_logits_processors  # module docstring, point 3
        if self.processors and not self.observes:
            raise ValueError(f"the {engine.info.name} backend takes no logits processors")
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.stats = BatchStats()
        self.thread: threading.Thread | None = None
        if self.observes:  # what the observer needs: the id it leaves open, the tag it watches for
            eos = getattr(getattr(engine, "tags", None), "eos", None) or {engine.tokenizer.eos_token_id}
            self.eos_id = min(eos)
            self.par_open = engine.tag_ids[PARALLEL_OPEN]

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
        self.stats.calls += 1
        self.stats.jobs += len(live)
        self.stats.rows += len(prompts)
        self.stats.max_jobs_per_call = max(self.stats.max_jobs_per_call, len(live))
        try:
            rollouts = self._generate(prompts, config, live, owners)
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
            if not self.observes and job.cancelled.is_set():  # the observer counted the others
                self.stats.cancelled_jobs += 1
                job.events.put(("error", RuntimeError("cancelled while it ran")))
                continue
            job.events.put(("done", results[id(job)]))

    def _generate(self, prompts: list[list[int]], config: SamplingConfig, live: list[Job],
                  owners: list[tuple[Job, int]]) -> list:
        """One backend call for the group; with the observer attached where the backend takes it."""
        if not self.observes:  # module docstring, point 3: plain call, results when it returns
            return self.engine.generate(prompts, 1, config)
        processors = list(self.processors)
        if any(job.stream or job.config.stop for job in live):
            processors.append(_Observer(owners, self.eos_id, self.stats, self.engine.tokenizer, self.par_open))
        return self.engine.generate(prompts, 1, config, logits_processors=processors)
