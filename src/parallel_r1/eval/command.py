"""``parallel-r1 eval MODEL --benchmarks LIST --samples K --output FILE``: the thin CLI over ``eval.run``.

Writes FILE (JSON: ``benchmarks``, ``average``, ``config``), ``FILE.partial`` while running (resume
state, see ``eval.resume``) and every judged response to ``--responses`` (default: FILE with the
suffix ``.responses.jsonl``). Prints a Markdown table in the shape of the paper's Table 2, then a
table of the structure figures. A progress bar per benchmark goes to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from parallel_r1.eval.loading import Compat
from parallel_r1.eval.run import EvalConfig, evaluate, prepare


class RichProgress:
    """One bar per benchmark, counted in problems."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def start(self, name: str, total: int):
        task = self.progress.add_task(name, total=total)
        return lambda n: self.progress.advance(task, n)


def run_eval(cfg: EvalConfig, output: Path, responses: Path | None, fresh: bool, method: str,
             device: str | None, dtype: str, show_progress: bool = True) -> dict:
    """Check everything, load the model, run, print the tables; returns the result."""
    from parallel_r1.data.prompts import load_template
    from parallel_r1.engine import Engine
    from parallel_r1.eval.loading import load_model, load_tokenizer, uses_chat
    from parallel_r1.eval.resume import ResumeState
    from parallel_r1.eval.table import details_table, markdown_table

    template = load_template(cfg.prompt)
    state = ResumeState(output, cfg.fingerprint(template), fresh=fresh, config=cfg.record(template))
    tokenizer, _ = load_tokenizer(cfg.model)
    runs = prepare(cfg, template, tokenizer, uses_chat(tokenizer, cfg.chat))

    def engine_factory() -> Engine:
        loaded = load_model(cfg.model, device, dtype)
        return Engine(loaded.model, loaded.tokenizer, loaded.tag_ids, max_batch_size=cfg.batch_size)

    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not show_progress) as bar:
        result = evaluate(engine_factory, runs, cfg, state, responses, RichProgress(bar))
    typer.echo(markdown_table(result, method))
    typer.echo("")
    typer.echo(details_table(result))
    return result


def eval_command(
    model: Annotated[str, typer.Argument(help="HF hub name or local path of a causal LM whose tokenizer has the tags.")],
    benchmarks: Annotated[str, typer.Option(help="Comma-separated NAME[:K]: aime24, aime25, amc23, math500, gsm8k, "
                                                  "toy-easy, toy-hard, or a .jsonl/.json/.parquet path.")],
    output: Annotated[Path, typer.Option(help="Result JSON file (resumed when it or FILE.partial exists).")],
    samples: Annotated[int, typer.Option(min=1, help="Samples per problem (k of mean@k / pass@k).")] = 16,
    data_dir: Annotated[str | None, typer.Option(help="Folder laid out like ../shared/data.")] = None,
    prompt: Annotated[str, typer.Option(help="Prompt template: parallel, sequential, reference, or a file with {problem}.")] = "parallel",
    mode: Annotated[str, typer.Option(help="Engine mode: unseen, seen or sequential.")] = "unseen",
    compat: Annotated[Compat, typer.Option(metavar="COMPAT", help="ours, or reference: sample as the reference "
                                                                  "engine does, for its checkpoints (README).")] = "ours",
    num_paths: Annotated[int, typer.Option(min=1, help="Paths forked at each <Parallel>.")] = 2,
    temperature: Annotated[float, typer.Option(min=0.0)] = 1.0,
    top_p: Annotated[float, typer.Option()] = 1.0,
    top_k: Annotated[int, typer.Option(min=0)] = 0,
    max_tokens: Annotated[int, typer.Option(min=1, help="Response budget, every path counted.")] = 3000,
    max_path_tokens: Annotated[int | None, typer.Option(min=0, help="Budget of one path (default: max-tokens).")] = None,
    max_blocks: Annotated[int, typer.Option(min=0)] = 4,
    seed: Annotated[int, typer.Option()] = 0,
    limit: Annotated[int | None, typer.Option(min=1, help="First N problems of each benchmark (toy sets: N problems).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows the engine decodes at once.")] = 64,
    chat: Annotated[bool | None, typer.Option("--chat/--no-chat", help="Chat template (default: when the tokenizer has one).")] = None,
    responses: Annotated[Path | None, typer.Option(help="JSONL of judged responses (default: OUTPUT stem + .responses.jsonl).")] = None,
    fresh: Annotated[bool, typer.Option(help="Discard stored results of an earlier run into OUTPUT.")] = False,
    name: Annotated[str | None, typer.Option(help="Row label in the table (default: the model's name).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda when available).")] = None,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads; 1 suits tiny models on a busy "
                                                      "machine (measured 6 s vs 164 s on the toy model).")] = None,
) -> None:
    """Evaluate a model on benchmarks: mean@k, pass@k, parallel ratio, format validity, token counts."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        cfg = EvalConfig(
            model=model, benchmarks=[b for b in benchmarks.split(",") if b.strip()], samples=samples,
            prompt=prompt, mode=mode, compat=compat, num_paths=num_paths, temperature=temperature, top_p=top_p, top_k=top_k,
            max_tokens=max_tokens, max_path_tokens=max_path_tokens, max_blocks=max_blocks, seed=seed,
            limit=limit, batch_size=batch_size, chat=chat, data_dir=data_dir,
        )
        responses = responses if responses is not None else output.with_suffix(".responses.jsonl")
        run_eval(cfg, output, responses, fresh, name or Path(model.rstrip("/")).name, device, dtype, progress)
    except (ValueError, OSError) as exc:  # bad input: a model, file, setting or stored result
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
