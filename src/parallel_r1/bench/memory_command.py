"""``parallel-r1 bench memory RECIPE``: per-GPU memory of each stage, computed (``train.memory``).

Prints one line per stage and sharding, then one JSON object as the last stdout line. ``--markdown``
prints the README's table (8 x 40 GB and 8 x 80 GB, DDP and FSDP) for the given recipes instead of the
lines, before the JSON. Nothing here touches a GPU or downloads weights: known hub names
(``train.memory.KNOWN_SHAPES``) need no network, any other model's config is read by transformers.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer


def bench_memory(
    recipes: Annotated[list[str], typer.Argument(help="recipe files or bundled recipe names")],
    gpus: Annotated[int, typer.Option(help="GPUs (data-parallel ranks)")] = 8,
    gpu_gb: Annotated[float, typer.Option(help="memory per GPU in GiB (an A100 40GB has 40)")] = 40.0,
    headroom: Annotated[float, typer.Option(help="share kept free for CUDA context, NCCL, fragmentation")] = 0.1,
    rollout_batch: Annotated[int | None, typer.Option(
        help="rows the hf engine decodes at once (default: the recipe's rollout.hf.max_batch_size)")] = None,
    markdown: Annotated[bool, typer.Option(help="print the README table (8 x 40 and 8 x 80 GB) first")] = False,
) -> None:
    """Per-GPU memory of each recipe stage under DDP and FSDP (computed, not measured)."""
    from parallel_r1.train.config import RecipeError, load_recipe
    from parallel_r1.train.memory import recipe_memory

    try:
        loaded = [load_recipe(r) for r in recipes]
        results = [recipe_memory(r, gpus, gpu_gb, headroom, rollout_batch) for r in loaded]
    except (RecipeError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if markdown:
        pairs = [(recipe_memory(r, gpus, 40.0, headroom, rollout_batch),
                  recipe_memory(r, gpus, 80.0, headroom, rollout_batch)) for r in loaded]
        typer.echo(markdown_table(pairs, gpus))
    else:
        for result in results:
            for line in summary_lines(result):
                typer.echo(line)
    typer.echo(json.dumps(results[0] if len(results) == 1 else {"recipes": results}))


def summary_lines(result: dict) -> list[str]:
    out = [f"{result['recipe']}: {result['params'] / 1e9:.3f}B params, {result['gpus']} GPUs of "
           f"{result['gpu_gib']} GiB (budget {result['budget_gib']} GiB), computed"]
    for stage in result["stages"]:
        for name, c in stage["configs"].items():
            rows = f", rollout rows that fit {c['max_rollout_rows']}" if c["max_rollout_rows"] is not None else ""
            out.append(f"  {stage['name']:<22} {name:<9} state {c['state'] + c['gathered']:6.1f}  act "
                       f"{c['activations']:6.1f}  logits {c['logits']:5.1f}  kv {c['rollout_kv']:6.1f}  peak "
                       f"train {c['peak_train']:6.1f} rollout {c['peak_rollout']:6.1f}  "
                       f"{'fits' if c['fits'] else 'DOES NOT FIT'}{rows}")
    return out


def _verdict(c: dict) -> str:
    if c["fits"]:
        return "fits"
    if c["fits_training"]:
        return f"train fits; rollout at <= {c['max_rollout_rows']} rows" if c["max_rollout_rows"] else "train fits"
    return "no"


def markdown_table(pairs: list[tuple[dict, dict]], gpus: int) -> str:
    """One row per recipe stage, with the recipe's own gradient-checkpointing setting: peak GiB per GPU
    (training / rollout, computed; the same on either card) and the verdict per card size and sharding.
    'rollout at <= N rows': the hf engine must decode at most N rows at once (its max_batch_size)."""
    lines = [f"| recipe / stage | DDP peak GiB (train / rollout) | FSDP peak GiB (train / rollout) | "
             f"{gpus} x 40 GB DDP | {gpus} x 40 GB FSDP | {gpus} x 80 GB DDP | {gpus} x 80 GB FSDP |",
             "|---|---|---|---|---|---|---|"]
    for r40, r80 in pairs:
        suffix = "_ckpt" if r40["gradient_checkpointing"] else ""
        for s40, s80 in zip(r40["stages"], r80["stages"], strict=True):
            ddp, fsdp = s40["configs"][f"ddp{suffix}"], s40["configs"][f"fsdp{suffix}"]
            peaks = [f"{c['peak_train']:.1f} / {c['peak_rollout']:.1f}" for c in (ddp, fsdp)]
            verdicts = [_verdict(s["configs"][f"{sh}{suffix}"]) for s in (s40, s80) for sh in ("ddp", "fsdp")]
            lines.append(f"| {r40['recipe']} / {s40['name']} | " + " | ".join(peaks + verdicts) + " |")
    return "\n".join(lines)
