"""The curriculum runner: one recipe, its stages in order, checkpoints and an exact resume.

``run_recipe(recipe, output_dir, resume=False)`` does, in this order:
1. refuses to start a fresh run over an existing one, and (resume) refuses a changed recipe;
2. loads every stage's data as text and fails on an empty stage before touching a model;
3. loads the tokenizer and model (from the latest checkpoint when resuming), adds the tags,
   tokenises (skipping, with a count, what does not fit a stage's budget);
4. runs the stages: one metrics row per step, a checkpoint every ``checkpoint.every`` global steps
   and at the end of each stage; Ctrl-C (or SIGTERM) finishes the step, saves a checkpoint and stops
   with ``TrainingInterrupted`` (a second Ctrl-C aborts at once).

Exact resume: the checkpoint holds weights, optimiser, schedule, every RNG, the data order and the
number of metrics lines it covers; sampling and minibatch order are seeded by the global step. A
resumed run therefore writes the same ``metrics.jsonl`` as an uninterrupted one (timing fields aside).

Under ``accelerate launch`` every process runs this; batches are split evenly across processes.
``first_stages=N`` runs only the first N stages; a later ``resume=True`` runs the rest, with another
number of processes if wanted: a checkpoint that closes a stage holds no optimiser or data-order state
the next stage needs (the demo trains its SFT stages on two processes and its GRPO stage on one).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from parallel_r1.engine.backend import (
    BackendFactory,
    BackendUnavailable,
    check_backend_available,
    make_backend,
)
from parallel_r1.train.batching import make_batch
from parallel_r1.train.checkpoint import (
    TrainerState,
    latest_checkpoint,
    load_training_state,
    read_state,
    restore_rng_of,
    save_checkpoint,
)
from parallel_r1.train.config import GRPOStage, Recipe, RecipeError, load_recipe, recipe_to_dict
from parallel_r1.train.data import (
    DataOrder,
    DataReport,
    examples,
    load_rows,
    template_text,
    uses_chat_template,
)
from parallel_r1.train.dist import Dist
from parallel_r1.train.fsdp import CopyBackend, FSDPSettings, gathered_named_tensors, prepare_fsdp
from parallel_r1.train.metrics import MetricsLog, Progress, truncate_jsonl
from parallel_r1.train.model_io import load_model, load_tokenizer, model_record
from parallel_r1.train.optim import build_optimizer, build_scheduler
from parallel_r1.train.stages import (
    StageData,
    StepContext,
    grpo_train_step,
    prepare_grpo,
    prepare_sft,
    sft_train_step,
    total_steps,
)

log = logging.getLogger("parallel_r1.train")
MAX_NONFINITE_STEPS = 5  # consecutive steps whose gradient was NaN/inf before the run gives up
# recipe sections that may change between resumes (the rollout backend: where sampling runs, e.g. hf
# on a laptop and vllm on a GPU; the samples then differ, so metrics.jsonl is no longer exact)
RESUME_IGNORES = ("logging", "checkpoint", "rollout")


class TrainingInterrupted(Exception):
    """Stopped on request after saving ``checkpoint``; resume with ``resume=True``."""

    def __init__(self, checkpoint: Path):
        super().__init__(f"interrupted; checkpoint saved at {checkpoint}")
        self.checkpoint = checkpoint


@dataclass
class RunResult:
    output: Path
    global_step: int
    checkpoint: Path | None


def train_main(
    recipe_path: Path, output: Path, resume: bool = False, overrides: list[str] | None = None,
    backend: str | None = None,
) -> None:
    """Run a training recipe (``parallel-r1 train RECIPE --output DIR [--resume]``).

    Exits 2 on a bad recipe (the message names the entry) and 130 when interrupted (Ctrl-C saves a
    checkpoint first). `parallel-r1 train` (cli/train.py) and `python -m parallel_r1.train` call it.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        recipe = load_recipe(recipe_path, tuple(overrides or ()))
        if backend is not None:  # --backend: the recipe's rollout section with another backend
            recipe.rollout = dataclasses.replace(recipe.rollout, backend=backend)
        run_recipe(recipe, output, resume=resume)
    except RecipeError as e:
        log.error("bad recipe: %s", e)
        raise SystemExit(2) from None
    except BackendUnavailable as e:
        log.error("%s", e)
        raise SystemExit(2) from None
    except TrainingInterrupted as e:
        log.warning("%s; continue with --resume", e)
        raise SystemExit(130) from None


def run_recipe(recipe: Recipe, output_dir: str | Path, resume: bool = False, *,
               accelerator: Accelerator | None = None, engine_factory: BackendFactory | None = None,
               first_stages: int | None = None) -> RunResult:  # fmt: skip
    """Run (or resume) the stages of ``recipe`` (all, or the first ``first_stages``) into ``output_dir``;
    see the module docstring. ``engine_factory(policy, tokenizer, tag_ids)`` gives each GRPO stage its
    rollout backend (default: the one ``recipe.rollout`` names, ``engine.backend.make_backend``)."""
    n_stages = len(recipe.stages) if first_stages is None else first_stages
    assert 1 <= n_stages <= len(recipe.stages), f"first_stages must be in 1..{len(recipe.stages)}, got {first_stages}"
    threads = torch.get_num_threads()
    if recipe.threads is not None:
        torch.set_num_threads(recipe.threads)
    try:
        return _run(recipe, Path(output_dir), resume, accelerator, engine_factory, n_stages)
    finally:
        torch.set_num_threads(threads)


def _run(recipe: Recipe, output: Path, resume: bool, accelerator, engine_factory, n_stages: int) -> RunResult:
    dist = Dist(accelerator or Accelerator(cpu=not torch.cuda.is_available()))
    dist.ordered = recipe.data_parallel == "ordered" and dist.world_size > 1  # one process: nothing to order
    _check_data_parallel(recipe, dist, n_stages)
    _check_output(output, recipe, resume, dist)
    recipe_backend = engine_factory is None  # the rollout backend is the recipe's (else the caller's)
    if engine_factory is None and any(s.type == "grpo" for s in recipe.stages[:n_stages]):
        check_backend_available(recipe.rollout)  # a missing vLLM fails here, before any model loads
        engine_factory = functools.partial(make_backend, recipe.rollout)
    ckpt = latest_checkpoint(output / "checkpoints") if resume else None
    state = _initial_state(ckpt, dist)
    tokenizer = load_tokenizer(recipe.model, from_dir=str(ckpt / "model") if ckpt else None)
    # only the stages this call runs: their data (and batch split) is all it needs. Stages a resume
    # finds finished are not loaded again (the demo's GRPO stage skipped 16,000 stage-0 rows: ~9 s).
    runs = range(state.stage_index, n_stages)
    texts = {i: _stage_examples(recipe, i, tokenizer) for i in runs}
    set_seed(recipe.seed)
    model, tag_ids = load_model(recipe.model, tokenizer, recipe.seed, from_dir=str(ckpt / "model") if ckpt else None)
    if recipe_backend:
        _check_rollout_model(recipe, model)
    datasets = {i: _tokenise(recipe, i, ex, rep, tokenizer, dist) for i, (ex, rep) in texts.items()}
    _write_run_info(output, recipe, datasets, dist)
    run = _Run(recipe, output, dist, tokenizer, tag_ids, state, ckpt, engine_factory)
    run.setup_model(model)
    with _Interrupt() as interrupt:
        run.interrupt = interrupt
        try:
            for i, stage in enumerate(recipe.stages[:n_stages]):
                if i >= state.stage_index:
                    run.run_stage(i, stage, datasets[i])
        finally:
            run.close()
    return RunResult(output, state.global_step, latest_checkpoint(output / "checkpoints"))


# --- set-up -------------------------------------------------------------------------------------------------


def _check_data_parallel(recipe: Recipe, dist: Dist, n_stages: int) -> None:
    """``data_parallel: ordered`` replicates the model and samples on process 0 with the branching
    engine; refuse what it cannot run, up front."""
    if not dist.ordered:
        return
    if FSDPSettings.from_env().enabled:
        raise RecipeError("data_parallel: ordered replicates the model on every process; it cannot run under FSDP")
    grpo = [s.name for s in recipe.stages[:n_stages] if s.type == "grpo"]
    if grpo and recipe.rollout.backend != "hf":
        raise RecipeError(f"data_parallel: ordered samples GRPO stage(s) {grpo} on process 0 with the hf backend, "
                          f"not {recipe.rollout.backend}; use data_parallel: ddp or one process")  # fmt: skip


def _check_output(output: Path, recipe: Recipe, resume: bool, dist: Dist) -> None:
    info = output / "run_info.json"
    if not resume:
        if (output / "metrics.jsonl").exists() or (output / "checkpoints").exists():
            raise RecipeError(f"{output} already holds a run: pass --resume to continue it, or choose another --output")
        return
    if info.is_file():
        before = json.loads(info.read_text(encoding="utf-8"))["recipe"]
        now = json.loads(json.dumps(recipe_to_dict(recipe)))
        diff = _first_difference(
            {k: v for k, v in before.items() if k not in RESUME_IGNORES},
            {k: v for k, v in now.items() if k not in RESUME_IGNORES},
            "",
        )  # fmt: skip
        if diff:
            raise RecipeError(f"{diff}: the recipe changed since the run in {output} started; cannot resume it")


def _first_difference(a, b, path: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else path


def _initial_state(ckpt: Path | None, dist: Dist) -> TrainerState:
    if ckpt is None:
        return TrainerState(world_size=dist.world_size)
    state = read_state(ckpt)
    if state.world_size != dist.world_size and not state.stage_done:
        raise RecipeError(
            f"{ckpt} was written by {state.world_size} processes; resume it with the same number, not {dist.world_size}"
        )
    if state.world_size != dist.world_size:  # a stage boundary: only each process's RNG state carries over
        log.info("%s closes a stage of a %d-process run; continuing with %d", ckpt, state.world_size, dist.world_size)
        state.world_size = dist.world_size
    if state.stage_done:  # the checkpoint closes a stage: continue with the next one
        state.stage_index, state.stage_step, state.stage_done, state.data_order = state.stage_index + 1, 0, False, {}
    log.info("resuming from %s at global step %d", ckpt, state.global_step)
    return state


def _stage_examples(recipe: Recipe, i: int, tokenizer):
    stage, path = recipe.stages[i], f"stages[{i}]"
    report = DataReport(stage.name)
    rows = load_rows(stage.data, f"{path}.data")
    report.rows = len(rows)
    template = template_text(stage.prompt, f"{path}.prompt")
    need = "response" if stage.type == "sft" else "answer"
    found = examples(rows, stage.data, template, report, need)
    if not found:
        raise RecipeError(f"{path}.data: no usable rows ({report.summary()})")
    return found, report


def _tokenise(recipe: Recipe, i: int, found, report: DataReport, tokenizer, dist: Dist) -> StageData:
    stage, path = recipe.stages[i], f"stages[{i}]"
    chat = uses_chat_template(tokenizer, stage.prompt.chat_template)
    prepare = prepare_sft if stage.type == "sft" else prepare_grpo
    data = prepare(found, stage, tokenizer, chat, report)
    if report.skipped and dist.is_main:
        log.warning(report.summary())
    if len(data.items) < stage.batch_size:
        raise RecipeError(f"{path}.batch_size: {stage.batch_size} is more than the {len(data.items)} usable rows "
                          f"({report.summary()})")  # fmt: skip
    if stage.batch_size % dist.world_size and not dist.ordered:  # ordered: every process holds the batch
        raise RecipeError(f"{path}.batch_size: {stage.batch_size} does not split over {dist.world_size} processes")
    return data


def _check_rollout_model(recipe: Recipe, model) -> None:
    """Fail before the first stage when a GRPO stage, this run's or a later one's (a demo runs its
    SFT stages first), names a rollout backend that cannot run this model here."""
    if recipe.rollout.backend != "vllm" or not any(s.type == "grpo" for s in recipe.stages):
        return
    check_backend_available(recipe.rollout)
    from parallel_r1.engine.vllm_backend import model_problem  # vLLM is installed: checked above

    if (problem := model_problem(model.config)) is not None:
        raise RecipeError(f"rollout.backend vllm: {problem}")


def _write_run_info(output: Path, recipe: Recipe, datasets: dict[int, StageData], dist: Dist) -> None:
    """``run_info.json``: the recipe, the process count and each stage's data report (a stage this
    resume did not load keeps the report of the run that loaded it)."""
    if dist.is_main:
        output.mkdir(parents=True, exist_ok=True)
        path = output / "run_info.json"
        before = json.loads(path.read_text(encoding="utf-8")).get("data", []) if path.is_file() else []
        reports = [vars(datasets[i].report) if i in datasets else before[i] if i < len(before) else None
                   for i in range(max(len(before), max(datasets, default=-1) + 1))]  # fmt: skip
        info = {"recipe": recipe_to_dict(recipe), "world_size": dist.world_size, "data": reports}
        (output / "run_info.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    dist.barrier()


class _Interrupt:
    """First SIGINT / SIGTERM: ask the loop to checkpoint and stop; a second SIGINT aborts at once."""

    def __init__(self):
        self.requested = False
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stop requested: finishing this step and saving a checkpoint (Ctrl-C again to abort)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False


# --- the loop -------------------------------------------------------------------------------------------


class _Run:
    """State shared by the stages of one run (model, logs, trainer state)."""

    def __init__(self, recipe, output, dist, tokenizer, tag_ids, state, ckpt, engine_factory):
        self.recipe, self.output, self.dist, self.state = recipe, output, dist, state
        self.tokenizer, self.tag_ids, self.engine_factory = tokenizer, tag_ids, engine_factory
        self.pending = ckpt  # the checkpoint whose optimiser / RNG state the first stage run restores
        self.root = output / "checkpoints"
        self.interrupt: _Interrupt | None = None
        self.started = time.perf_counter()
        lg = recipe.logging
        self.metrics = MetricsLog(output, dist, tensorboard=lg.tensorboard, wandb_project=lg.wandb_project,
                                  run_name=recipe.name, config=recipe_to_dict(recipe))  # fmt: skip
        self.metrics.truncate(state.metrics_lines)
        if dist.is_main:
            truncate_jsonl(output / "rollouts.jsonl", state.rollout_lines)
        self.progress = Progress(lg.progress, dist)

    def setup_model(self, model) -> None:
        acc = self.dist.accelerator
        self.rollout_copy = None  # under FSDP: this process's unsharded copy for the rollout backend
        if acc is not None and FSDPSettings.from_env().enabled:  # train/fsdp.py shards it, not accelerate
            ahead = self.recipe.stages[self.state.stage_index :]
            self.model, self.rollout_copy = prepare_fsdp(model, self.dist, ahead)
            self.policy = self.model
        elif self.dist.ordered:  # replicated, not wrapped: train/ordered.py sums the gradients
            self.model = self.policy = model.to(self.dist.device)
        else:
            self.model = acc.prepare(model) if acc is not None else model.to(self.dist.device)
            self.policy = acc.unwrap_model(self.model) if acc is not None else self.model
        self.model.train()
        build = functools.partial(make_batch, tag_ids=self.tag_ids, mode=self.recipe.mode,
                                  pad_id=self.tokenizer.pad_token_id)  # fmt: skip
        self.ctx = StepContext(self.model, self.policy, self.tokenizer, self.tag_ids, build, self.dist,
                               self.recipe.seed, self.recipe.mode)  # fmt: skip

    def close(self) -> None:
        self.progress.stop()
        self.metrics.close()

    def run_stage(self, i: int, stage, data: StageData) -> None:
        total = total_steps(stage, data)
        optimizer, scheduler, order = self._stage_state(i, stage, data, total)
        self.ctx.optimizer = optimizer
        self.ctx.engine = self._rollout_backend() if stage.type == "grpo" else None
        if self.dist.is_main:
            log.info("stage %d %r (%s): steps %d..%d of %d", i, stage.name, stage.type,
                     self.state.stage_step + 1, total, total)  # fmt: skip
            if self.ctx.engine is not None:
                info = self.ctx.engine.info
                log.info("rollout backend: %s (forward: %s, device: %s)", info.name, info.forward_path, info.device)
        try:
            self.progress.start(stage.name, total, self.state.stage_step)
            for stage_step in range(self.state.stage_step + 1, total + 1):
                self._step(i, stage, data, order, optimizer, scheduler, stage_step, total)
            self.progress.stop()
        finally:  # a vLLM backend holds its own weights and KV pool: free them before the next stage
            if self.ctx.engine is not None:
                self.ctx.engine.close()
                self.ctx.engine = None

    def _rollout_backend(self):
        """The GRPO stage's backend: over the live policy, or under FSDP over the rollout copy, which
        first receives the policy's weights as the stage starts (gathered one tensor at a time)."""
        if self.rollout_copy is None:
            return self.engine_factory(self.policy, self.tokenizer, self.tag_ids)
        inner = self.engine_factory(self.rollout_copy, self.tokenizer, self.tag_ids)
        backend = CopyBackend(self.rollout_copy, inner)
        backend.update_weights(gathered_named_tensors(self.policy))
        if self.dist.is_main:
            h = backend.last_handover
            log.info("FSDP weight hand-over to the rollout copy: %.3f s, copy %.1f MB, largest gathered tensor "
                     "%.1f MB", h["seconds"], h["copy_bytes"] / 2**20, h["peak_gathered_bytes"] / 2**20)  # fmt: skip
        return backend

    def _grpo_step(self, stage, data, order, stage_step: int, global_step: int) -> dict:
        """A GRPO step; under FSDP the rollout copy then gets the updated policy, unless the update
        already handed it over after each optimiser step (same decision on every process)."""
        backend = self.ctx.engine
        before = backend.handovers if isinstance(backend, CopyBackend) else None
        row = grpo_train_step(self.ctx, stage, data, order, stage_step, global_step)
        if before is not None and row["optimizer_steps"] > 0 and backend.handovers == before:
            backend.update_weights(gathered_named_tensors(self.policy))
        return row

    def _stage_state(self, i: int, stage, data: StageData, total: int):
        optimizer = build_optimizer(self.model, stage.optimizer)  # the wrapped model: FSDP owns its params
        if self.dist.accelerator is not None and not self.dist.sharded:  # FSDP2: a plain AdamW over DTensors
            optimizer = self.dist.accelerator.prepare(optimizer)
        scheduler = build_scheduler(optimizer, stage.optimizer, total)
        seed = stage.seed if stage.seed is not None else self.recipe.seed + i
        order = DataOrder(len(data.items), seed)
        mid_stage = self.state.stage_index == i and self.state.stage_step > 0
        self.ctx.ref_model = self._reference(stage, mid_stage)
        if self.pending is not None:
            if mid_stage:
                load_training_state(self.pending, optimizer, scheduler, self.dist, model=self.model)
                order.load_state_dict(self.state.data_order)
            else:
                restore_rng_of(self.pending, self.dist)
            self.pending = None
        if self.state.stage_index != i:
            self.state.stage_index, self.state.stage_step = i, 0
        return optimizer, scheduler, order

    def _reference(self, stage, mid_stage: bool):
        """The frozen KL reference: the policy as it entered the stage (saved with checkpoints)."""
        if not (isinstance(stage, GRPOStage) and stage.grpo.kl_coef > 0):
            return None
        if mid_stage and self.pending is not None:
            from transformers import AutoModelForCausalLM

            ref = AutoModelForCausalLM.from_pretrained(self.pending / "ref", dtype=self.policy.dtype,
                                                       attn_implementation=self.recipe.model.attn_implementation)  # fmt: skip
            ref.to(self.dist.device)
        else:
            ref = copy.deepcopy(self.policy)
        ref.eval().requires_grad_(False)
        return ref

    def _step(self, i, stage, data, order, optimizer, scheduler, stage_step: int, total: int) -> None:
        state = self.state
        lr = optimizer.param_groups[0]["lr"]
        if stage.type == "sft":
            row = sft_train_step(self.ctx, stage, data, order, stage_step)
        else:
            row = self._grpo_step(stage, data, order, stage_step, state.global_step + 1)
        scheduler.step()
        state.global_step, state.stage_step, state.data_order = state.global_step + 1, stage_step, order.state_dict()
        head = {"stage": stage.name, "step": state.global_step, "stage_step": stage_step, "type": stage.type, "lr": lr}
        row = {**head, **row, "elapsed_s": time.perf_counter() - self.started}
        self.metrics.write(row)
        state.metrics_lines += 1
        self._log_rollouts(state.global_step)
        self.progress.update(row)
        self._check_finite(row)
        done = stage_step == total
        stop = self.dist.any(self.interrupt is not None and self.interrupt.requested)
        every = self.recipe.checkpoint.every
        if done or stop or (every and state.global_step % every == 0):
            state.stage_done = state.keep = done
            path = save_checkpoint(self.root, state, model=self.model, tokenizer=self.tokenizer,
                                   optimizer=optimizer, scheduler=scheduler, dist=self.dist,
                                   keep_last=self.recipe.checkpoint.keep_last, ref_model=self.ctx.ref_model,
                                   record=self._model_record(i, stage))  # fmt: skip
            state.stage_done = state.keep = False
            if stop:
                raise TrainingInterrupted(path)

    def _model_record(self, i: int, stage) -> dict:
        """How stage ``i`` prompts the model, saved with its weights so eval and serve can match it."""
        prompted = stage.data.prompt_field is None  # else the rows carry prompts rendered elsewhere
        template = template_text(stage.prompt, f"stages[{i}].prompt") if prompted else None
        chat = uses_chat_template(self.tokenizer, stage.prompt.chat_template)
        return model_record(template, chat, self.recipe.mode, stage.name)

    def _log_rollouts(self, step: int) -> None:
        n = self.recipe.logging.log_rollouts
        records, self.ctx.sample_log = self.ctx.sample_log[:n], []
        if records and self.dist.is_main:
            with (self.output / "rollouts.jsonl").open("a", encoding="utf-8") as f:
                for rec in records:
                    f.write(json.dumps({"step": step, **rec}) + "\n")
        self.state.rollout_lines += len(records)

    def _check_finite(self, row: dict) -> None:
        bad = row["skipped_nonfinite"] > 0  # at least one optimiser step of this step was skipped
        self.state.nonfinite_streak = self.state.nonfinite_streak + 1 if bad else 0
        if bad and self.dist.is_main:
            log.warning("step %d: non-finite loss or gradient; optimiser step skipped", row["step"])
        if self.state.nonfinite_streak >= MAX_NONFINITE_STEPS:
            raise FloatingPointError(
                f"the loss or gradient was non-finite for {self.state.nonfinite_streak} steps in a row "
                f"(last at step {row['step']}); stopping. Lower the learning rate or check the data."
            )
