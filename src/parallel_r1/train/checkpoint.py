"""Checkpoints under ``OUTPUT/checkpoints/``: everything an exact resume needs.

Layout of ``checkpoints/step-000012/``:
- ``model/``: the policy as a plain Hugging Face directory (safetensors, config, tokenizer with the
  tags), loadable by anything that loads HF models, plus ``parallel_r1.json``: the prompt, chat
  setting and mode the weights were trained with (``model_io.model_record``);
- ``optimizer.pt``, ``scheduler.pt``: the current stage's optimiser and schedule;
- ``rng-<rank>.pt``: Python, NumPy and torch (CPU and CUDA) generator states of each process;
- ``trainer_state.json``: global / stage step, data order, how many metrics lines belong to the run
  so far (the resume truncates ``metrics.jsonl`` to them), whether the stage is complete;
- ``ref/``: the frozen KL reference, only when a stage uses KL.

A checkpoint is written to ``step-N.tmp`` and renamed when complete; ``checkpoints/latest`` (replaced
atomically) names the newest complete one, so a kill at any moment leaves a usable checkpoint.
``keep_last`` bounds the step checkpoints kept; the one at the end of each stage is never deleted.

Under FSDP2 (``train/fsdp.py``) ``model/`` is gathered on rank 0 as above, and ``sharded/`` holds the
model and optimiser shards of every rank (torch distributed checkpoint) in place of ``optimizer.pt``;
a resume loads both into the freshly sharded model and optimiser (same number of processes), so the
CPU tests cover it with 2 gloo processes. Departure: accelerate's own FSDP1 / DeepSpeed would put the
optimiser and RNG through ``accelerator.save_state`` (``accelerate/``); that path is not exercised by
the CPU tests.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from parallel_r1.train.dist import Dist
from parallel_r1.train.fsdp import full_state_dict, is_sharded, load_sharded, save_sharded
from parallel_r1.train.model_io import write_model_record

LATEST = "latest"
SHARDED_DIR = "sharded"  # FSDP2: model and optimiser shards (torch distributed checkpoint)
SHARDED_BACKENDS = ("FSDP", "DEEPSPEED")


@dataclass
class TrainerState:
    global_step: int = 0
    stage_index: int = 0
    stage_step: int = 0  # steps completed in stage ``stage_index``
    stage_done: bool = False  # that stage is complete: a resume starts the next one
    data_order: dict = field(default_factory=dict)
    metrics_lines: int = 0
    rollout_lines: int = 0
    nonfinite_streak: int = 0
    world_size: int = 1
    keep: bool = False  # a stage-end checkpoint, exempt from keep_last


def capture_rng() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state() -> tuple:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


def save_checkpoint(
    root: Path,
    state: TrainerState,
    *,
    model: torch.nn.Module,
    tokenizer,
    optimizer,
    scheduler,
    dist: Dist,
    keep_last: int,
    ref_model: torch.nn.Module | None = None,
    record: dict | None = None,
) -> Path:
    """Write ``root/step-<global_step>`` (all processes call this) and point ``latest`` at it.

    ``record``: how the weights were trained (``model_io.model_record``), written into ``model/``."""
    name = f"step-{state.global_step:06d}"
    tmp, final = root / f"{name}.tmp", root / name
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    _save_weights(model, tokenizer, tmp / "model", dist)
    if record is not None and dist.is_main:
        write_model_record(tmp / "model", record)
    if ref_model is not None:
        _save_weights(ref_model, None, tmp / "ref", dist)
    if is_sharded(model):
        save_sharded(tmp / SHARDED_DIR, model, optimizer)
    elif _sharded(dist):
        dist.accelerator.save_state(str(tmp / "accelerate"))
    elif dist.is_main:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if dist.is_main:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
    torch.save(capture_rng(), tmp / f"rng-{dist.rank}.pt")
    dist.barrier()
    if dist.is_main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _write_latest(root, name)
        _rotate(root, keep_last)
    dist.barrier()
    return final


def _sharded(dist: Dist) -> bool:
    acc = dist.accelerator
    return acc is not None and str(acc.distributed_type).rsplit(".", 1)[-1] in SHARDED_BACKENDS


def _save_weights(model, tokenizer, path: Path, dist: Dist) -> None:
    if is_sharded(model):  # FSDP2: gathered on rank 0, one full copy there
        state_dict, module = full_state_dict(model), model
    elif dist.accelerator is not None:
        state_dict = dist.accelerator.get_state_dict(model)  # gathers shards under FSDP / ZeRO-3
        module = dist.accelerator.unwrap_model(model)
    else:
        state_dict, module = None, model
    if dist.is_main:
        quiet = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a bar per save would break the run's own progress display
        try:
            module.save_pretrained(path, state_dict=state_dict, safe_serialization=True)
        finally:
            if quiet:
                hf_logging.enable_progress_bar()
        if tokenizer is not None:
            tokenizer.save_pretrained(path)


def _write_latest(root: Path, name: str) -> None:
    tmp = root / f"{LATEST}.tmp"
    tmp.write_text(name + "\n", encoding="utf-8")
    os.replace(tmp, root / LATEST)


def _rotate(root: Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` checkpoints and every stage-end one; delete the rest."""
    steps = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in steps[:-keep_last]:
        if not read_state(old).keep:
            shutil.rmtree(old)


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text(encoding="utf-8").strip()
    assert (path / "trainer_state.json").is_file(), f"{pointer} names {path}, which is not a complete checkpoint"
    return path


def read_state(path: Path) -> TrainerState:
    return TrainerState(**json.loads((path / "trainer_state.json").read_text(encoding="utf-8")))


def load_training_state(path: Path, optimizer, scheduler, dist: Dist, model: torch.nn.Module | None = None) -> None:
    """Restore the optimiser, schedule and this process's RNG from checkpoint ``path`` (and, for an
    FSDP2-sharded ``model``, its shards: the ones saved with the optimiser state)."""
    if model is not None and is_sharded(model):
        load_sharded(path / SHARDED_DIR, model, optimizer)
    elif _sharded(dist):
        dist.accelerator.load_state(str(path / "accelerate"))
    else:
        state = torch.load(path / "optimizer.pt", map_location=dist.device, weights_only=True)
        optimizer.load_state_dict(state)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    restore_rng_of(path, dist)


def restore_rng_of(path: Path, dist: Dist) -> None:
    file = path / f"rng-{dist.rank}.pt"
    assert file.is_file(), (
        f"{path} has no RNG state for process {dist.rank}: resume with the number of processes that wrote it"
    )
    restore_rng(torch.load(file, weights_only=False))
