"""``parallel-r1 bench engine``: the CLI over ``bench.engine`` (imports torch only when it runs)."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import typer


def bench_engine(
    quick: Annotated[bool, typer.Option(help="~1 minute on 2 CPU cores: batch 4, 1k prefix, paths of 64")] = False,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N")] = "cpu",
    dtype: Annotated[Literal["float32", "bfloat16", "float16"], typer.Option(metavar="DTYPE",
                     help="float32, bfloat16 or float16")] = "float32",
    model_size: Annotated[str | None, typer.Option(help="tiny | small (5M, default) | 0.5b")] = None,
    batch: Annotated[int | None, typer.Option(help="rows (prompts) decoded together")] = None,
    prefix_len: Annotated[int | None, typer.Option(help="prompt tokens per row")] = None,
    main_len: Annotated[int | None, typer.Option(help="main-chain tokens before <Parallel>")] = None,
    num_paths: Annotated[int | None, typer.Option(help="paths per block")] = None,
    path_len: Annotated[int | None, typer.Option(help="sampled tokens per path")] = None,
    summary_len: Annotated[int | None, typer.Option(help="summary tokens")] = None,
    tail_len: Annotated[int | None, typer.Option(help="main-chain tokens after the block")] = None,
    repeats: Annotated[int | None, typer.Option(help="timed rounds after the warm-up")] = None,
    threads: Annotated[int | None, typer.Option(
        help="torch CPU threads (default: torch's choice; 1 is far steadier on a busy shared machine)")] = None,
) -> None:
    """Branching engine vs plain decoding vs per-path re-prefill; last stdout line is one JSON object.

    GPU: --device cuda --dtype bfloat16 --model-size 0.5b (a random Qwen3-0.6B-shaped model)."""
    import torch

    from parallel_r1.bench.engine import make_shape, run_engine_bench

    if threads is not None:
        torch.set_num_threads(threads)
    shape = make_shape(quick, model_size=model_size, batch=batch, prefix_len=prefix_len, main_len=main_len,
                       num_paths=num_paths, path_len=path_len, summary_len=summary_len, tail_len=tail_len,
                       repeats=repeats)
    result = run_engine_bench(shape, device=device, dtype=dtype, log=lambda m: print(m, flush=True))
    print(json.dumps(result), flush=True)
