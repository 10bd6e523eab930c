"""``parallel-r1 demo``: the whole curriculum on the embedded toy world, offline, on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from parallel_r1.demo.data import EVAL_SIZE
from parallel_r1.demo.recipes import DEFAULT_RECIPE
from parallel_r1.eval.loading import Backend, backend_problem


def demo(
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directory (must not hold a run yet).")] = Path(
        "runs/demo"
    ),
    seed: Annotated[int, typer.Option(help="Recipe seed: model init, data order, sampling.")] = 0,
    ablation: Annotated[
        bool, typer.Option("--ablation", help="Also run the reward ablation (3 arms x 3 seeds; much longer).")
    ] = False,
    quick: Annotated[
        bool, typer.Option("--quick", help="Shrunken smoke run (a minute or two): checks the plumbing, not a result.")
    ] = False,
    recipe: Annotated[Path, typer.Option(help="Curriculum recipe with stages stage0, sft, rl.")] = DEFAULT_RECIPE,
    eval_problems: Annotated[int, typer.Option(min=1, max=EVAL_SIZE, help="Held-out problems per split.")] = EVAL_SIZE,
    eval_samples: Annotated[int, typer.Option(min=1, help="Samples per held-out problem.")] = 2,
    ablation_seeds: Annotated[int, typer.Option(min=1, help="Seeds per ablation arm (0..N-1).")] = 3,
    threads: Annotated[int, typer.Option(min=1, help="torch threads (1 is fastest for the tiny model).")] = 1,
    processes: Annotated[
        int | None, typer.Option(min=1, help="Processes: every stage data-parallel (the one-process model bit "
                                 "for bit), evaluation beside it. Default: 2 on a machine with 2+ cores; 1 stays on "
                                 "one core, one stage after another.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Recipe override key.path=value (repeatable).")
    ] = None,
    backend: Annotated[Backend, typer.Option(metavar="BACKEND", help="Rollout backend of RL and evaluation: hf "
                                             "(the branching engine) or vllm (make install-vllm).")] = "hf",
) -> None:
    """Pretrain a tiny model, cold-start SFT on scripted-teacher traces, GRPO with the alternating
    reward; evaluate every stage on held-out problems; write DIR/model, DIR/report.{json,md}, plots."""
    from dataclasses import replace

    from parallel_r1.demo.evaluate import EvalSettings
    from parallel_r1.demo.pipeline import DemoConfig, run_demo
    from parallel_r1.train.config import RecipeError

    if (problem := backend_problem(backend)) is not None:  # before anything loads
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    # the recipe's rollout section (the demo recipe has none; a --set of it comes after and wins)
    overrides = (() if backend == "hf" else (f"rollout={{backend: {backend}}}",)) + tuple(set_ or ())
    cfg = DemoConfig(
        output=output, seed=seed, quick=quick, ablation=ablation, recipe=recipe,
        ablation_seeds=tuple(range(ablation_seeds)), eval_problems=eval_problems,
        eval=replace(EvalSettings(), samples=1 if quick else eval_samples, backend=backend), overrides=overrides,
        threads=threads,
        **({} if processes is None else {"processes": processes}),
    )  # fmt: skip
    try:
        report = run_demo(cfg)
    except (RecipeError, FileExistsError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    res = report["resources"]
    typer.echo(f"{output / 'report.md'}  (wall {res['wall_s']:.0f} s, CPU {res['cpu_s']:.0f} s, "
               f"peak RSS {res['peak_rss_mb']['self']:.0f} MB)")  # fmt: skip
