"""Wall time, CPU time and peak memory of the demo, overall and per phase.

1. CPU time is user + system of this process and of its reaped children (``os.times``): on a machine
   shared with other work, wall time grows with the load while CPU time mostly does not, so both are
   reported, with the load average at the start and at the end.
2. Peak RSS is ``getrusage(...).ru_maxrss`` (KiB on Linux) of this process; the largest reaped child
   (e.g. a math-verify worker) is reported beside it, not added: children run at the same time as
   this process but are small.
3. Steal time (Linux ``/proc/stat``, all CPUs): seconds the hypervisor gave this virtual machine's
   CPUs to other guests. On a shared host it slows every stage without showing in the load average;
   a run with steal is not a quiet-host measurement. ``None`` where the kernel does not report it.
"""

from __future__ import annotations

import os
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def steal_seconds() -> float | None:
    """CPU time stolen from this machine's CPUs so far, summed over CPUs (``/proc/stat``)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")  # cpu user nice system idle iowait irq softirq steal
    except (OSError, IndexError, ValueError):
        return None


def peak_rss_mb() -> dict:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"self": round(own, 1), "largest_child": round(children, 1)}


@dataclass
class Meter:
    """Times named phases; ``summary()`` is JSON-ready."""

    start_wall: float = field(default_factory=time.perf_counter)
    start_cpu: float = field(default_factory=cpu_seconds)
    load_start: tuple[float, float, float] = field(default_factory=os.getloadavg)
    steal_start: float | None = field(default_factory=steal_seconds)
    phases: dict[str, dict] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str):
        wall, cpu = time.perf_counter(), cpu_seconds()
        try:
            yield
        finally:
            entry = self.phases.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
            entry["wall_s"] = round(entry["wall_s"] + time.perf_counter() - wall, 2)
            entry["cpu_s"] = round(entry["cpu_s"] + cpu_seconds() - cpu, 2)

    def summary(self) -> dict:
        import torch

        return {
            "wall_s": round(time.perf_counter() - self.start_wall, 1),
            "cpu_s": round(cpu_seconds() - self.start_cpu, 1),
            "peak_rss_mb": peak_rss_mb(),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average_start": [round(x, 2) for x in self.load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "steal_s": _since(self.steal_start, steal_seconds()),
            "phases": self.phases,
        }


def _since(start: float | None, now: float | None) -> float | None:
    return None if start is None or now is None else round(now - start, 1)
