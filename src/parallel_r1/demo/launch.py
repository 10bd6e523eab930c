"""The demo's second core: child processes for training and for the held-out evaluations.

1. ``train_stages``: the recipe's stages (all, or the first N; ``train_sft_stages``: the leading SFT
   ones) as ``processes`` processes (``torchrun``, gloo on CPU, through the runner's accelerate path).
   Under the demo recipe's ``data_parallel: ordered`` every process holds the whole batch and the
   updates are the one-process ones bit for bit (``train/ordered.py``); under ``ddp`` each process
   takes every ``processes``-th row (``train.data.shard``) and an update equals the one-process one up
   to the order of the float sums (``tests/test_demo_processes.py``). ``poll()`` is called about once a
   second meanwhile: the demo starts its evaluation child from it once the SFT checkpoints exist.
2. ``EvalChild``: the held-out evaluation of finished checkpoints in one background process while the
   GRPO stage trains; it writes ``DIR/eval/<name>.json`` as the in-process evaluation does. It then
   waits for the final checkpoint and evaluates its toy-easy split while the demo evaluates toy-hard.

Fail loud, never hang: a child that fails makes the demo raise with the child's traceback (training:
each rank writes its own to ``DIR/logs/``; ``torchrun`` stops the other rank) or its log tail
(evaluation: ``DIR/logs/eval.log``). The training children print to the demo's terminal (progress bar).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

LOG_DIR = "logs"
TAIL_CHARS = 6000
POLL_S = 1.0  # how often the demo looks for finished stages while the training processes run


def leading_sft_stages(raw: dict) -> int:
    """How many stages at the start of the recipe are SFT stages (those run as data-parallel processes)."""
    n = 0
    for stage in raw["stages"]:
        if stage.get("type") != "sft":
            break
        n += 1
    return n


def child_env(threads: int) -> dict:
    """The environment of a child: this package importable, ``threads`` intra-op threads per process."""
    src = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads)}


def _tail(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-TAIL_CHARS:] if path.is_file() else ""


def train_sft_stages(raw: dict, output: Path, processes: int, threads: int, timeout: float | None = None) -> None:
    """Run the first ``leading_sft_stages(raw)`` stages of the recipe ``raw`` into ``output`` on
    ``processes`` processes; raises ``RuntimeError`` with the failing rank's traceback."""
    n = leading_sft_stages(raw)
    assert n >= 1, "the recipe starts with no SFT stage"
    train_stages(raw, output, processes, threads, stages=n, timeout=timeout)


def train_stages(raw: dict, output: Path, processes: int, threads: int, stages: int | None = None,
                 timeout: float | None = None, poll: Callable[[], None] | None = None) -> None:  # fmt: skip
    """Run the first ``stages`` stages (all: None) of the recipe ``raw`` into ``output`` on
    ``processes`` processes, calling ``poll()`` about once a second while they train; raises
    ``RuntimeError`` with the failing rank's traceback."""
    n = len(raw["stages"]) if stages is None else stages
    if raw.get("data_parallel", "ddp") != "ordered":  # ddp splits every batch; ordered gives each process all
        for i, stage in enumerate(raw["stages"][:n]):
            if stage["batch_size"] % processes:
                from parallel_r1.train.config import RecipeError

                raise RecipeError(f"stages[{i}].batch_size: {stage['batch_size']} does not split over {processes} "
                                  f"processes (pass --processes 1)")  # fmt: skip
    logs = output / LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    spec = logs / "train-spec.json"
    spec.write_text(json.dumps({"recipe": raw, "output": str(output), "stages": n, "threads": threads}), "utf-8")
    for old in logs.glob("train-rank*.err"):
        old.unlink()
    # --standalone: a local rendezvous on a free port; torchrun stops every rank when one fails
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           "-m", "parallel_r1.demo.launch", "train", str(spec)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=child_env(threads), stdout=subprocess.DEVNULL)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(cmd, timeout)
            if poll is not None:
                poll()
            time.sleep(POLL_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        errors = "\n".join(f"--- {p.name}\n{_tail(p)}" for p in sorted(logs.glob("train-rank*.err")))
        raise RuntimeError(f"the {processes}-process training failed (torchrun exit {proc.returncode}):\n"
                           f"{errors or '(no traceback written; see the output above)'}")  # fmt: skip


def _train_worker(spec_path: str) -> None:
    """One rank of ``train_sft_stages`` (under torchrun: RANK, WORLD_SIZE, MASTER_* are set)."""
    import torch
    from accelerate import Accelerator

    from parallel_r1.demo.pipeline import _quiet_logging
    from parallel_r1.demo.recipes import to_recipe
    from parallel_r1.train.runner import run_recipe

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    torch.set_num_threads(spec["threads"])
    _quiet_logging()
    err = Path(spec["output"]) / LOG_DIR / f"train-rank{os.environ.get('RANK', '0')}.err"
    try:
        run_recipe(to_recipe(spec["recipe"]), spec["output"], accelerator=Accelerator(cpu=True),
                   first_stages=spec["stages"])  # fmt: skip
    except BaseException:
        err.write_text(traceback.format_exc(), encoding="utf-8")
        raise


class EvalChild:
    """Evaluate ``jobs`` (name -> (model dir, settings, splits, wait)) of a demo in a background
    process, in order; with ``wait`` set a model dir that does not exist yet (the final checkpoint) is
    waited for, else a missing one fails the child."""

    def __init__(self, demo, jobs: dict, threads: int):
        import pickle

        logs = demo.cfg.output / LOG_DIR
        logs.mkdir(parents=True, exist_ok=True)
        self.names, self.log = list(jobs), logs / "eval.log"
        spec = logs / "eval-spec.pkl"
        spec.write_bytes(pickle.dumps({"cfg": demo.cfg, "jobs": jobs, "parent": os.getpid()}))
        cmd = [sys.executable, "-m", "parallel_r1.demo.launch", "eval", str(spec)]
        with self.log.open("w", encoding="utf-8") as out:
            self.proc = subprocess.Popen(cmd, env=child_env(threads), stdout=out, stderr=subprocess.STDOUT)

    def wait(self, output: Path) -> dict:
        """The results by name (read from ``DIR/eval/<name>.json``); raises with the log tail on failure."""
        code = self.proc.wait()
        if code != 0:
            raise RuntimeError(f"the background evaluation failed (exit {code}); {self.log}:\n{_tail(self.log)}")
        return {n: json.loads((output / "eval" / f"{n}.json").read_text(encoding="utf-8")) for n in self.names}

    def stop(self) -> None:
        """Kill the child (the demo failed elsewhere); a no-op once it has exited."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _eval_worker(spec_path: str) -> None:
    import pickle

    import torch
    from rich.console import Console

    from parallel_r1.demo.pipeline import Demo

    spec = pickle.loads(Path(spec_path).read_bytes())
    torch.set_num_threads(spec["cfg"].threads)
    # below the training processes: they take the core back as soon as they wake (the GRPO stage's
    # second process sleeps while the first samples; this child fills that time)
    os.nice(10)
    demo = Demo(spec["cfg"], Console(stderr=True, force_terminal=False))
    parent = spec["parent"]  # the demo process (it may be gone already when this child starts)
    for name, (model_dir, settings, splits, wait) in spec["jobs"].items():
        while wait and not (Path(model_dir) / "config.json").is_file():  # a checkpoint appears whole (renamed)
            if os.getppid() != parent:  # the demo is gone (killed): nobody will write it or read the result
                raise SystemExit(f"the demo process exited before {model_dir} was written")
            time.sleep(POLL_S)
        demo.evaluate(name, Path(model_dir), splits=splits, settings=settings)


if __name__ == "__main__":
    role, path = sys.argv[1], sys.argv[2]
    {"train": _train_worker, "eval": _eval_worker}[role](path)
