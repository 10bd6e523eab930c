"""``python -m parallel_r1.train RECIPE --output DIR [--resume] [--set key=value ...] [--backend hf|vllm]``.

The same as ``parallel-r1 train``; this form is what ``accelerate launch -m parallel_r1.train`` runs
on every process.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from parallel_r1.engine.backend import BACKENDS
from parallel_r1.train.runner import train_main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m parallel_r1.train", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="YAML recipe")
    parser.add_argument("--output", required=True, help="run directory (metrics.jsonl, checkpoints/)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe entry, e.g. stages[1].steps=10 (repeatable)")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="rollout backend of the GRPO stages (default: the recipe's rollout.backend)")
    args = parser.parse_args(argv)
    train_main(Path(args.recipe), Path(args.output), resume=args.resume, overrides=args.overrides,
               backend=args.backend)


if __name__ == "__main__":
    main()
