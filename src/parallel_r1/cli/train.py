"""``parallel-r1 train``: the curriculum runner. A lazy wrapper, so that `parallel-r1 score` and
`--help` start without importing torch, transformers and accelerate (about 1.5 s)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from parallel_r1.eval.loading import Backend


def train(
    recipe_path: Annotated[Path, typer.Argument(metavar="RECIPE", help="YAML recipe file, or a bundled recipe's name (parallel-r1 recipes)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="run directory: metrics.jsonl, checkpoints/")],
    resume: Annotated[bool, typer.Option("--resume", help="continue from the latest checkpoint in --output")] = False,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="override a recipe entry, e.g. stages[1].steps=10")
    ] = None,
    backend: Annotated[Backend | None, typer.Option(metavar="BACKEND", help="rollout backend of the GRPO stages: "
                                                    "hf or vllm (default: the recipe's rollout.backend)")] = None,
) -> None:
    """Run a training recipe: its stages in order, checkpoints under OUTPUT/checkpoints/, metrics.jsonl.

    RECIPE is a YAML file or the name of a recipe that ships with the package (`parallel-r1 recipes`
    lists them; an existing file of the same name wins).

    Exits 2 on a bad recipe (the message names the entry) and 130 when interrupted (Ctrl-C saves a
    checkpoint first). Under `accelerate launch`, use `python -m parallel_r1.train` with the same arguments.
    """
    from parallel_r1.train.runner import train_main

    train_main(recipe_path, output, resume=resume, overrides=overrides, backend=backend)
