"""Resume state of an eval run: finished benchmarks kept in a sidecar file next to the output.

1. After each benchmark the sidecar ``OUTPUT.partial`` is rewritten atomically (write + rename) with
   the run's config fingerprint and every finished benchmark's metrics. When the whole run is done the
   final OUTPUT is written and the sidecar removed; the final OUTPUT then serves as the state of a
   later run (so re-running a finished command only reprints the table).
2. A rerun with the same fingerprint skips a benchmark whose stored entry has the same sample count
   and the same data digest (a changed data file or another k is re-evaluated). Adding benchmarks to
   the list is fine: the fingerprint leaves the list out (``RUN_ONLY_KEYS``).
3. A rerun with a *different* fingerprint is an error naming the differing settings: results of
   hours of sampling are never thrown away silently. ``fresh=True`` (``--fresh``) starts over.
4. A setting added to the fingerprint after results were stored is read, in a stored config that
   lacks it, as the value those results were made with (``LEGACY_DEFAULTS``), so they stay resumable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from parallel_r1.files import read_json

# settings recorded in a result's config but not compared on resume (each stored benchmark carries
# its own sample count and data digest)
RUN_ONLY_KEYS = ("benchmarks", "samples", "data_dir", "settings_from")

# settings stored results may lack, with the value they were made with (eval.scoring, point 4; the
# rollout backend: results from before --backend existed were sampled by the branching engine)
LEGACY_DEFAULTS = {"scorer": "default", "backend": "hf"}


class ResumeError(ValueError):
    """Stored results belong to another configuration; the message lists the differences."""


def atomic_write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def sidecar_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def config_diff(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


class ResumeState:
    """Finished benchmarks of the run writing ``output`` under ``fingerprint``."""

    def __init__(self, output: Path, fingerprint: dict, fresh: bool = False, config: dict | None = None):
        """``config``: what the result records as its config (default: the fingerprint)."""
        self.output, self.fingerprint = output, fingerprint
        self.config = dict(fingerprint if config is None else config)
        self.sidecar = sidecar_path(output)
        self.done: dict[str, dict] = {}
        if fresh:
            self.sidecar.unlink(missing_ok=True)
            return
        source = self.sidecar if self.sidecar.is_file() else output if output.is_file() else None
        if source is not None:
            self._load(source)

    def _load(self, source: Path) -> None:
        try:  # not UTF-8 or damaged JSON: the message names the line and byte (parallel_r1.files)
            stored = read_json(source, "eval result", ResumeError)
            old = stored["config"]
            benchmarks = stored["benchmarks"]
        except (ResumeError, KeyError, TypeError) as exc:
            raise ResumeError(f"{source} is not an eval result this command can resume from ({exc}); "
                              "pass --fresh to overwrite it or choose another --output") from exc
        legacy = {k: v for k, v in LEGACY_DEFAULTS.items() if k in self.fingerprint}
        old = {**legacy, **{k: v for k, v in old.items() if k not in RUN_ONLY_KEYS}}
        diff = config_diff(old, self.fingerprint)
        if diff:
            raise ResumeError(f"{source} holds results of a different eval config ({'; '.join(diff)}); "
                              "pass --fresh to discard them or choose another --output")
        self.done = dict(benchmarks)

    def finished(self, name: str, samples: int, digest: str) -> dict | None:
        """Stored metrics of ``name`` when they match this sample count and data, else None."""
        entry = self.done.get(name)
        if entry is None or entry.get("samples") != samples or entry.get("data_digest") != digest:
            return None
        return entry

    def record(self, name: str, metrics: dict) -> None:
        self.done[name] = metrics
        atomic_write_json(self.sidecar, {"config": self.fingerprint, "benchmarks": self.done})

    def finish(self, result: dict) -> None:
        atomic_write_json(self.output, result)
        self.sidecar.unlink(missing_ok=True)
