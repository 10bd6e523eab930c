"""Run math-verify in worker processes that are killed and replaced when a check runs too long.

Why processes: math-verify's own timeouts use ``signal.alarm``, which works only in the main thread,
and a Python thread cannot be stopped from outside. Parsing ``9^{9^{9^{9}}}`` or a deeply nested
expression can run for minutes and take gigabytes; the only honest bound is a process we can kill.

Design:
1. A pool of at most ``max_workers`` long-lived worker processes, each ``python -m
   parallel_r1.rewards.mv_worker`` talking JSON lines over its stdin/stdout. A plain subprocess, not
   ``multiprocessing``: spawn/forkserver re-import the caller's ``__main__`` (a script without an
   ``if __name__ == "__main__"`` guard would then crash), and fork is unsafe next to threads or CUDA.
   Workers start lazily, on first need.
2. A call takes an idle worker (or starts one), sends ``(predicted, gold)`` and waits at most
   ``timeout`` seconds for the answer. Start-up time (importing sympy) is not counted. POSIX only
   (``poll`` on pipes).
3. On timeout the worker is killed (SIGKILL) and dropped; the next call starts a fresh one. A worker
   that dies on its own (e.g. killed by the OOM killer) is reported as an error, also dropped.
4. Thread-safe: any number of threads may call ``check``; a semaphore lets at most ``max_workers``
   checks run at once, the rest wait (waiting does not count against the timeout).
5. Workers die with the parent process: an idle one sees EOF on stdin; a busy one (stuck in C code,
   holding its GIL) is killed by the kernel on Linux (PR_SET_PDEATHSIG, see ``mv_worker.py``).
6. Fork-aware: in a forked child (a DataLoader or ProcessPoolExecutor worker) the pool forgets the
   parent's workers, locks and launcher thread, and starts its own workers on demand.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 120.0  # importing sympy + antlr on a loaded 2-core machine can take a while
WORKER_MODULE = "parallel_r1.rewards.mv_worker"


@dataclass(frozen=True)
class Outcome:
    """What a worker said: ``status`` is "ok" (``value`` holds the verdict), "timeout" or "error"."""

    status: str
    value: bool = False
    error: str | None = None


def _worker_env() -> dict[str, str]:
    """The caller's environment, with this package's source root first on PYTHONPATH so that the
    worker imports the same ``parallel_r1`` however the caller found it."""
    import parallel_r1

    root = str(Path(parallel_r1.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


class _Worker:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", WORKER_MODULE, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_worker_env(),
        )
        self._poller = select.poll()  # readable, or hung up (the worker died)
        self._poller.register(self.proc.stdout, select.POLLIN)
        try:
            first = self._read(START_TIMEOUT_S)
        except EOFError:
            first = None
        if first != ["ready", None]:
            self.kill()
            raise RuntimeError(f"math-verify worker failed to start (first message {first!r}, "
                               f"exit code {self.proc.returncode}); its stderr is above")

    def _read(self, timeout: float) -> list | None:
        """The worker's next message; None if nothing came within ``timeout`` seconds; EOFError if the
        worker closed its end (it died).

        Strict request/reply, one line in flight, so the reader's buffer is empty whenever we wait
        and polling the pipe is accurate (``poll``, not ``select``: no limit on descriptor numbers)."""
        if not self._poller.poll(max(0, int(timeout * 1000))):
            return None
        line = self.proc.stdout.readline()
        if not line:
            raise EOFError("math-verify worker closed its output")
        return json.loads(line)

    def call(self, predicted: str, gold: str, timeout: float) -> Outcome:
        try:
            self.proc.stdin.write((json.dumps([predicted, gold]) + "\n").encode())
            self.proc.stdin.flush()
            message = self._read(timeout)
        except (EOFError, OSError) as e:  # BrokenPipeError is an OSError
            self.kill()
            return Outcome("error", error=f"math-verify worker died ({type(e).__name__}, exit code "
                                          f"{self.proc.returncode})")
        if message is None:
            self.kill()
            return Outcome("timeout", error=f"math-verify timed out after {timeout:g} s")
        status, value = message
        if status == "ok":
            return Outcome("ok", value=bool(value))
        return Outcome("error", error=f"math-verify raised {value}")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):  # a broken pipe to a dead process: nothing to flush
                pipe.close()


class VerifierPool:
    """A thread-safe pool of math-verify worker processes; see the module docstring."""

    def __init__(self, max_workers: int = 2) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.max_workers = max_workers
        self._lock = threading.Lock()
        self._reset()
        # A forked child (DataLoader / ProcessPoolExecutor worker) gets fresh state: a copied lock may
        # be held by a parent thread that does not exist in the child, and the workers are the parent's.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (pool := ref()) is not None and pool._after_fork())

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._idle: list[_Worker] = []
        self._slots = threading.BoundedSemaphore(self.max_workers)
        # Workers are started from this one long-lived thread: on Linux a worker dies with the thread
        # that started it (PR_SET_PDEATHSIG), and a caller's thread may be short-lived.
        self._launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="math-verify-launcher")
        self._closed = False

    def check(self, predicted: str, gold: str, timeout: float) -> Outcome:
        """math-verify's verdict on ``predicted`` vs ``gold``, bounded by ``timeout`` seconds."""
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        with self._lock:
            if self._pid != os.getpid():  # forked child: the parent's workers are not ours
                self._reset()
            if self._closed:
                raise RuntimeError("VerifierPool is closed")
            slots = self._slots
        with slots:
            worker = self._take()
            outcome = worker.call(predicted, gold, timeout)
            if worker.alive:
                with self._lock:
                    keep = not self._closed and self._pid == os.getpid()
                    if keep:
                        self._idle.append(worker)
                if not keep:
                    worker.kill()  # workers hold no state: nothing to shut down politely
            return outcome

    def _take(self) -> _Worker:
        while True:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is None:
                break
            if worker.alive:
                return worker
            worker.kill()  # died while idle (OOM killer, a stray signal): reap it, start another
        return self._launcher.submit(_Worker).result()  # outside the lock: other threads keep going

    @property
    def num_idle(self) -> int:
        with self._lock:
            return len(self._idle)

    def idle_pids(self) -> list[int]:
        """Process ids of the idle workers (for logs and tests)."""
        with self._lock:
            return [w.proc.pid for w in self._idle]

    def close(self) -> None:
        """Kill the idle workers; later ``check`` calls raise. Call when no check is running."""
        with self._lock:
            idle, self._idle, self._closed = self._idle, [], True
            mine = self._pid == os.getpid()
        if mine:
            self._launcher.shutdown(wait=False)
            for worker in idle:
                worker.kill()  # workers hold no state: nothing to shut down politely

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
