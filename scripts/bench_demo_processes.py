"""Stage-0 step time of the demo recipe on 1 and on 2 data-parallel processes, alternated (A B A B ...).

    .venv/bin/python scripts/bench_demo_processes.py [--steps 100] [--rounds 2]

Both arms go through ``demo.launch.train_sft_stages`` (torchrun, gloo, 1 torch thread per process) on the
bundled demo recipe cut to its stage 0 with ``--steps`` steps (same global batch, 32 rows in micro-batches
of 8). Prints, per run, the median ``step_time_s`` of rank 0 after the first 10 steps and the wall time
of the launch (data preparation and process start included), with the load average before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from parallel_r1.demo.launch import train_sft_stages
from parallel_r1.demo.recipes import DEFAULT_RECIPE, curriculum_raw


def stage0_raw(steps: int) -> dict:
    raw = curriculum_raw(DEFAULT_RECIPE, seed=0, quick=False)
    raw["stages"] = [dict(raw["stages"][0], steps=steps)]
    raw["logging"] = {**raw.get("logging", {}), "progress": False, "tensorboard": False}
    return raw


def one_run(raw: dict, processes: int, root: Path) -> dict:
    out = root / f"p{processes}-{time.monotonic_ns()}"
    load = os.getloadavg()[0]
    start = time.perf_counter()
    train_sft_stages(raw, out, processes=processes, threads=1)
    wall = time.perf_counter() - start
    times = [json.loads(x)["step_time_s"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {"processes": processes, "median_step_s": statistics.median(times[10:]), "wall_s": wall, "load": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    raw = stage0_raw(args.steps)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for processes in (1, 2):
                r = one_run(raw, processes, Path(tmp))
                results.append(r)
                print(f"processes {r['processes']}: {r['median_step_s']:.3f} s/step (median), launch wall "
                      f"{r['wall_s']:.1f} s, load {r['load']:.2f} before", flush=True)  # fmt: skip
    for p in (1, 2):
        mine = [r["median_step_s"] for r in results if r["processes"] == p]
        print(f"processes {p}: mean of medians {statistics.mean(mine):.3f} s/step over {len(mine)} runs")
    one, two = ([r["median_step_s"] for r in results if r["processes"] == p] for p in (1, 2))
    print(f"ratio 1-process / 2-process step time: {statistics.mean(one) / statistics.mean(two):.2f}")


if __name__ == "__main__":
    main()
