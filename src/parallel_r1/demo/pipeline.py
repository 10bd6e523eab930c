"""``run_demo``: the whole Parallel-R1 curriculum on the toy world, evaluated and reported.

In order (each step a phase of the resource meter):
1. teacher: the scripted teacher on the SFT and RL problems, validated and counted (Table 1 shape);
2. train: ``configs/demo/demo.yaml`` through ``train.runner.run_recipe`` into ``DIR`` itself, so
   ``DIR/metrics.jsonl`` and ``DIR/checkpoints/`` are the runner's own: stage 0 (pretraining),
   cold-start SFT, GRPO with the alternating reward on hard problems with easy ones mixed in. Each
   stage ends with a kept checkpoint. With ``processes`` > 1 (the default on a machine with two cores)
   every stage runs on that many processes, under the demo recipe's ``data_parallel: ordered`` with the
   one-process parameters bit for bit (under ``ddp``: the SFT stages only, then GRPO in this process),
   while a background process evaluates the SFT stages' checkpoints (``demo.launch``);
3. export: the final policy (with its tokenizer) copied to ``DIR/model``;
4. eval: every stage's checkpoint (the last one loaded from ``DIR/model``) on the fixed held-out hard
   and easy sets, same settings for all (``demo.evaluate``);
5. ablation (``--ablation``): RL arms from the same checkpoints over several seeds (``demo.ablation``);
6. report: ``DIR/report.json``, ``DIR/report.md`` and ``DIR/plots/*.png`` (``demo.report``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rich.console import Console

from parallel_r1.demo.data import EVAL_SEED, EVAL_SIZE, heldout_problems
from parallel_r1.demo.evaluate import EvalSettings, evaluate_problems, load_for_eval
from parallel_r1.demo.recipes import DEFAULT_RECIPE, FINAL, FIRST, curriculum_raw, stage_names, to_recipe
from parallel_r1.demo.resources import Meter
from parallel_r1.demo.teacher_stats import teacher_table
from parallel_r1.train.data import template_text

QUICK_EVAL_PROBLEMS = 16
FINAL_EASY = f"{FINAL}.easy"  # the final checkpoint's toy-easy half, evaluated by the background process


@dataclass
class DemoConfig:
    output: Path
    seed: int = 0
    quick: bool = False
    ablation: bool = False
    recipe: Path = DEFAULT_RECIPE
    ablation_seeds: tuple[int, ...] = (0, 1, 2)
    # per held-out split; at 400 x 2 samples the paired RL-SFT difference has a standard error of ~1.6
    # points (2.8 at 200 x 2), so a gain of ~3 points is ~2 standard errors
    eval_problems: int = EVAL_SIZE
    eval: EvalSettings = field(default_factory=EvalSettings)
    overrides: tuple[str, ...] = ()  # extra key=value recipe overrides (recorded in the report)
    # torch intra-op threads. 1 by default: the tiny model's ops are too small for a second thread to
    # pay off, and on a 2-core machine with any other load the thread pool's waits made training and
    # generation 10-50x slower in our measurements (README of the demo; report.json records the value).
    threads: int = 1
    # processes for training (data parallel) and for evaluating beside it; 1 runs everything in this
    # process, one stage after another. Default: two where the machine has two cores. The recipe's
    # ``data_parallel: ordered`` makes every stage end at the one-process parameters bit for bit
    # (train/ordered.py), so the figures do not depend on it; a user on a shared machine passes
    # --processes 1 to stay on one core.
    processes: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))

    def __post_init__(self) -> None:
        self.output, self.recipe = Path(self.output), Path(self.recipe)
        if self.quick:
            self.eval_problems = min(self.eval_problems, QUICK_EVAL_PROBLEMS)
        if not 1 <= self.eval_problems <= EVAL_SIZE:
            raise ValueError(f"eval_problems must be in 1..{EVAL_SIZE} (the held-out set that training never "
                             f"draws from), got {self.eval_problems}")
        assert self.ablation_seeds, "the ablation needs at least one seed"
        assert self.threads >= 1, f"threads must be >= 1, got {self.threads}"
        assert self.processes >= 1, f"processes must be >= 1, got {self.processes}"


def finished_stages(run_dir: Path, names: list[str]) -> dict[str, Path]:
    """The checkpoints, so far, that close stages among ``names`` (the first ``len(names)`` of the
    recipe; ``trainer_state.json`` says which stage and that it is done)."""
    from parallel_r1.train.checkpoint import read_state

    found: dict[str, Path] = {}
    for path in sorted((run_dir / "checkpoints").glob("step-*")):
        if path.name.endswith(".tmp"):  # a checkpoint is renamed from .tmp once complete
            continue
        try:
            state = read_state(path)
        except FileNotFoundError:  # rotated away by a running trainer since the glob
            continue
        if state.stage_done and state.stage_index < len(names):
            found[names[state.stage_index]] = path
    return found


def stage_checkpoints(run_dir: Path, names: list[str]) -> dict[str, Path]:
    """The checkpoint that closes each of the stages ``names``; all must exist."""
    found = finished_stages(run_dir, names)
    missing = [n for n in names if n not in found]
    assert not missing, f"{run_dir}: no end-of-stage checkpoint for {missing}"
    return found


class Demo:
    """One demo run: configuration, console, meter and the results gathered so far."""

    def __init__(self, cfg: DemoConfig, console: Console | None = None):
        self.cfg, self.console, self.meter = cfg, console or Console(stderr=True), Meter()
        self.raw = curriculum_raw(cfg.recipe, cfg.seed, cfg.quick, cfg.overrides)
        self.recipe = to_recipe(self.raw)  # validated before any compute
        self.names = stage_names(self.raw)
        rl = self.recipe.stages[-1]
        template = template_text(rl.prompt, f"stages[{len(self.names) - 1}].prompt")
        # every checkpoint is evaluated as the final RL stage samples (prompt, budgets, temperature, mode)
        self.settings = replace(cfg.eval, template=template, generation=rl.generation, mode=self.recipe.mode)
        self.results: dict = {}
        self.heldout = {s: heldout_problems(s, cfg.eval_problems) for s in ("hard", "easy")}

    def run(self) -> dict:
        import torch

        out = self.cfg.output
        if (out / "metrics.jsonl").exists() or (out / "report.json").exists():
            raise FileExistsError(f"{out} already holds a demo run; choose another --output")
        out.mkdir(parents=True, exist_ok=True)
        threads = torch.get_num_threads()
        torch.set_num_threads(self.cfg.threads)
        try:
            return self._run(out)
        finally:
            torch.set_num_threads(threads)

    def _run(self, out: Path) -> dict:
        with self.meter.phase("teacher"):
            self.results["teacher"] = self.teacher()
        background = None
        try:
            with self.meter.phase("train"):
                background = self.train()
            checkpoints = stage_checkpoints(out, self.names)
            with self.meter.phase("export"):
                shutil.copytree(checkpoints[FINAL] / "model", out / "model")
            with self.meter.phase("eval"):
                # the final policy is evaluated from DIR/model, which also checks that the export loads
                sources = {name: checkpoints[name] / "model" for name in self.names} | {FINAL: out / "model"}
                # toy-hard here while the background process (if any) does the final toy-easy split
                halves = background is not None and FINAL_EASY in background.names
                hard = self.evaluate(FINAL, sources[FINAL], splits=("hard",)) if halves else None
                done = self._background_results(background)
                if hard is not None:
                    done[FINAL] = self._merge_final(hard, done.pop(FINAL_EASY))
                evals = {n: done[n] if n in done else self.evaluate(n, p) for n, p in sources.items()}
                self.results["eval"] = evals
                own_name = f"{FIRST}-own-prompt"
                own = done[own_name] if own_name in done else self.evaluate(own_name, sources[FIRST], settings=self.own)
                self.results["stage0_own_prompt"] = own
        finally:
            if background is not None:
                background.stop()
        self.results["checkpoints"] = {k: str(v.relative_to(out)) for k, v in checkpoints.items()}
        if self.cfg.ablation:
            from parallel_r1.demo.ablation import run_ablation

            with self.meter.phase("ablation"):
                self.results["ablation"] = run_ablation(self, checkpoints)
        return self.write_report()

    # --- phases -------------------------------------------------------------------------------------------
    def teacher(self) -> dict:
        self.console.rule("[bold]Scripted teacher -> cold-start traces (validated, filtered)")
        table = teacher_table(self.raw, self.cfg.output / "data")
        self.console.print(table["markdown"])
        return table

    @property
    def own(self) -> EvalSettings:
        """Context, not a comparison row: the base model under the prompt it was trained with."""
        return replace(self.settings, template=template_text(self.recipe.stages[0].prompt, "stages[0].prompt"))

    def train(self):
        """Train every stage; with ``processes`` > 1 returns the ``EvalChild`` evaluating the SFT stages."""
        from parallel_r1.demo.launch import leading_sft_stages, train_sft_stages, train_stages
        from parallel_r1.train.runner import run_recipe

        steps = ", ".join(f"{s.name}: {s.steps} steps" for s in self.recipe.stages)
        self.console.rule(f"[bold]Curriculum via the train runner ({steps})")
        _quiet_logging()
        cfg, out = self.cfg, self.cfg.output
        n_sft = leading_sft_stages(self.raw)
        if cfg.processes == 1 or n_sft == len(self.names):
            run_recipe(self.recipe, out)
            return None
        if self.recipe.data_parallel != "ordered":  # ddp: the SFT stages on N processes, GRPO here on one
            train_sft_stages(self.raw, out, cfg.processes, cfg.threads)
            background = self._evaluate_sft_stages(n_sft)
            try:
                run_recipe(self.recipe, out, resume=True)
            except BaseException:
                background.stop()
                raise
            return background
        # ordered: every stage on N processes (the one-process run bit for bit); the SFT stages'
        # checkpoints are evaluated in the background as soon as the last of them is written
        started: list = []

        def poll() -> None:
            if not started and len(finished_stages(out, self.names[:n_sft])) == n_sft:
                started.append(self._evaluate_sft_stages(n_sft))

        try:
            train_stages(self.raw, out, cfg.processes, cfg.threads, poll=poll)
            poll()
        except BaseException:
            for child in started:
                child.stop()
            raise
        return started[0]

    def _evaluate_sft_stages(self, n_sft: int):
        """The background evaluation: the SFT stages' checkpoints, then (once written) the final
        checkpoint's toy-easy split."""
        from parallel_r1.demo.launch import EvalChild

        both = ("hard", "easy")
        done = stage_checkpoints(self.cfg.output, self.names[:n_sft])
        jobs = {n: (done[n] / "model", self.settings, both, False) for n in self.names[:n_sft]}
        if FIRST in done:
            jobs[f"{FIRST}-own-prompt"] = (done[FIRST] / "model", self.own, both, False)
        steps = [s.steps for s in self.recipe.stages]
        if None not in steps:  # the final checkpoint's name is known: step-<all steps>
            jobs[FINAL_EASY] = (self.cfg.output / "checkpoints" / f"step-{sum(steps):06d}" / "model",
                                self.settings, ("easy",), True)  # fmt: skip
        return EvalChild(self, jobs, self.cfg.threads)

    def _merge_final(self, hard: dict, easy: dict) -> dict:
        """The final checkpoint's result from its two halves (``DIR/eval/rl.json`` as one process writes it)."""
        same = json.loads(json.dumps(hard["settings"])) == easy["settings"]  # the easy half came from JSON
        assert same, "the two halves of the final evaluation used other settings"
        merged = {"model": hard["model"], "hard": hard["hard"], "easy": easy["easy"], "settings": hard["settings"]}
        (self.cfg.output / "eval" / f"{FINAL}.json").write_text(json.dumps(merged, indent=1), encoding="utf-8")
        (self.cfg.output / "eval" / f"{FINAL_EASY}.json").unlink()
        return merged

    def _background_results(self, background) -> dict:
        if background is None:
            return {}
        found = background.wait(self.cfg.output)
        for name, result in found.items():
            self._print_eval(name, result, [s for s in ("hard", "easy") if s in result])
        return found

    def evaluate(self, name: str, model_dir: Path, splits: tuple[str, ...] = ("hard", "easy"),
                 settings: EvalSettings | None = None) -> dict:  # fmt: skip
        """Evaluate one checkpoint on the held-out splits; writes ``DIR/eval/<name>.json``."""
        from rich.progress import Progress

        settings = settings or self.settings
        model, tokenizer, tag_ids = load_for_eval(str(model_dir))
        result = {"model": str(model_dir.relative_to(self.cfg.output)) if model_dir.is_relative_to(self.cfg.output)
                  else str(model_dir)}  # fmt: skip
        with Progress(console=self.console, transient=True) as bar:
            for split in splits:
                task = bar.add_task(f"eval {name} on held-out toy-{split}", total=None)
                result[split] = evaluate_problems(model, tokenizer, tag_ids, self.heldout[split], settings)
                bar.remove_task(task)
        self._print_eval(name, result, splits)
        result["settings"] = settings.to_dict()
        path = self.cfg.output / "eval" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1), encoding="utf-8")
        return result

    def _print_eval(self, name: str, result: dict, splits) -> None:
        parts = [f"{s}: acc {100 * result[s]['accuracy']:.1f}% ± {100 * result[s]['accuracy_se']:.1f}, "
                 f"parallel {100 * result[s]['parallel_ratio']:.1f}%" for s in splits]  # fmt: skip
        self.console.print(f"[bold]{name}[/bold]  " + " | ".join(parts))

    def eval_record(self) -> dict:
        return {
            "settings": self.settings.to_dict(),
            "sets": {s: {"name": f"toy-{s}", "seed": EVAL_SEED, "problems": len(p)} for s, p in self.heldout.items()},
            "noise": "accuracy_se: standard error over problems of per-problem mean accuracy",
        }

    def write_report(self) -> dict:
        from parallel_r1.demo.report import build_report, targets, write_markdown

        with self.meter.phase("report"):
            report = build_report(self)
        report["resources"] = {**self.meter.summary(), "processes": self.cfg.processes,
                               "data_parallel": self.recipe.data_parallel}  # fmt: skip
        report["targets"] = targets(report)
        (self.cfg.output / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        write_markdown(self, report)
        return report

    def config_record(self) -> dict:
        cfg = asdict(self.cfg)
        cfg.pop("eval")  # the settings actually used are in the report's eval.settings
        cfg["output"], cfg["recipe"] = str(self.cfg.output), str(self.cfg.recipe)
        cfg["eval_samples"] = self.settings.samples
        return cfg


def _quiet_logging() -> None:
    """The runner logs stage starts at INFO; show them without the libraries' INFO chatter."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("parallel_r1.train").setLevel(logging.INFO)


def run_demo(cfg: DemoConfig, console: Console | None = None) -> dict:
    return Demo(cfg, console).run()
