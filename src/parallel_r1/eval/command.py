"""``parallel-r1 eval MODEL --benchmarks LIST --samples K --output FILE``: the thin CLI over ``eval.run``.

Writes FILE (JSON: ``benchmarks``, ``average``, ``config``), ``FILE.partial`` while running (resume
state, see ``eval.resume``) and every judged response to ``--responses`` (default: FILE with the
suffix ``.responses.jsonl``). Prints a Markdown table in the shape of the paper's Table 2, then a
table of the structure figures. A progress bar per benchmark goes to stderr. ``--scorer both`` gives
a table row per scorer and a line per benchmark on the responses they disagree on (``eval.scoring``).

The prompt template, chat setting and mode default to what the model directory records about its
training (``parallel_r1.json``), else to ``parallel``, the tokenizer's chat template and ``unseen``;
a flag wins. The result's ``config`` holds what was used and ``config.settings_from`` where from.
Help texts stay short (no word over ~15 characters): rich fits the options table to the terminal and
cuts option names with "…" at 80 columns when a help word is too long to wrap.
"""

from __future__ import annotations

from dataclasses import replace
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

from parallel_r1.eval.loading import (
    Backend,
    Compat,
    DType,
    Mode,
    PromptSettings,
    backend_problem,
    choose_settings,
)
from parallel_r1.eval.run import EvalConfig, evaluate, prepare
from parallel_r1.eval.scoring import ScorerChoice


class RichProgress:
    """One bar per benchmark, counted in problems."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def start(self, name: str, total: int):
        task = self.progress.add_task(name, total=total)
        return lambda n: self.progress.advance(task, n)


def run_eval(cfg: EvalConfig, output: Path, responses: Path | None, fresh: bool, method: str,
             device: str | None, dtype: str, show_progress: bool = True,
             settings: PromptSettings | None = None) -> dict:
    """Check everything, load the model, run, print the tables; returns the result.

    ``settings`` (``loading.choose_settings``) gives the template and where the prompt, chat and mode
    came from; without it ``cfg.prompt`` is loaded and every setting counts as given."""
    from parallel_r1.data.prompts import load_template
    from parallel_r1.engine.backend import HFOptions, RolloutBackend, RolloutConfig, make_backend
    from parallel_r1.eval.loading import load_model, load_tokenizer, uses_chat
    from parallel_r1.eval.resume import ResumeState
    from parallel_r1.eval.table import details_table, disagreement_lines, markdown_table

    template = settings.template if settings is not None else load_template(cfg.prompt)
    tokenizer, _ = load_tokenizer(cfg.model)
    cfg = replace(cfg, chat=uses_chat(tokenizer, cfg.chat))  # the config records the chat setting used
    config = {**cfg.record(template), "settings_from": settings.sources if settings else "flags"}
    state = ResumeState(output, cfg.fingerprint(template), fresh=fresh, config=config)
    runs = prepare(cfg, template, tokenizer, cfg.chat)

    def engine_factory() -> RolloutBackend:
        loaded = load_model(cfg.model, device, dtype)
        rollout = RolloutConfig(backend=cfg.backend, hf=HFOptions(max_batch_size=cfg.batch_size))
        return make_backend(rollout, loaded.model, loaded.tokenizer, loaded.tag_ids)

    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not show_progress) as bar:
        result = evaluate(engine_factory, runs, cfg, state, responses, RichProgress(bar))
    typer.echo(markdown_table(result, method))
    typer.echo("")
    typer.echo(details_table(result))
    for line in disagreement_lines(result):
        typer.echo(line)
    return result


def eval_command(
    model: Annotated[str, typer.Argument(help="HF hub name or local path of a causal LM whose tokenizer has the tags.")],
    benchmarks: Annotated[str, typer.Option(help="Comma-separated NAME[:K]: aime24, aime25, amc23, math500, gsm8k, "
                                                  "toy-easy, toy-hard, or a path to a .jsonl, .json or .parquet file.")],
    output: Annotated[Path, typer.Option(help="Result JSON file (resumed when it or FILE.partial exists).")],
    samples: Annotated[int, typer.Option(min=1, help="Samples per problem (k of mean@k / pass@k).")] = 16,
    data_dir: Annotated[str | None, typer.Option(help="Folder of named benchmarks (like ../shared/data; "
                                                      "default: $PARALLEL_R1_DATA_DIR, else the hub).")] = None,
    prompt: Annotated[str | None, typer.Option(help="Prompt template: parallel, sequential, reference, or a file with {problem} "
                                                    "(default: the model's record, else parallel).")] = None,
    mode: Annotated[Mode | None, typer.Option(metavar="MODE", help="unseen, seen or sequential (default: the "
                                                                   "model's record, else unseen).")] = None,
    compat: Annotated[Compat, typer.Option(metavar="COMPAT", help="ours, or reference: sample as the reference "
                                                                  "engine does, for its checkpoints (README).")] = "ours",
    scorer: Annotated[ScorerChoice, typer.Option(metavar="SCORER", help="Judge: default, reference (the reference "
                                                                        "code's rules) or both (a row each).")] = "default",
    num_paths: Annotated[int, typer.Option(min=1, help="Paths forked at each <Parallel>.")] = 2,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature; 0 is greedy.")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling: keep the top tokens up to this mass, in (0, 1].")] = 1.0,
    top_k: Annotated[int, typer.Option(min=0, help="Keep only the k likeliest tokens; 0 keeps all.")] = 0,
    max_tokens: Annotated[int, typer.Option(min=1, help="Response budget, every path counted.")] = 3000,
    max_path_tokens: Annotated[int | None, typer.Option(min=1, help="Budget of one path (default: max-tokens).")] = None,
    max_blocks: Annotated[int, typer.Option(min=0, help="Most <Parallel> blocks in one response; later ones are "
                                                        "not opened.")] = 4,
    seed: Annotated[int, typer.Option(help="Base seed of every benchmark's samples (same seed, same samples).")] = 0,
    limit: Annotated[int | None, typer.Option(min=1, help="First N problems of each benchmark (toy sets: N problems).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows the engine decodes at once (hf backend).")] = 64,
    backend: Annotated[Backend, typer.Option(metavar="BACKEND", help="Rollout backend: hf (the branching "
                                                 "engine) or vllm (make install-vllm).")] = "hf",
    chat: Annotated[bool | None, typer.Option("--chat/--no-chat", help="Chat template (default: the model's "
                                                                   "record, else when the tokenizer has one).")] = None,
    responses: Annotated[Path | None, typer.Option(help="JSONL of judged responses (default: OUTPUT with the suffix "
                                                        "responses.jsonl).")] = None,
    fresh: Annotated[bool, typer.Option(help="Discard stored results of an earlier run into OUTPUT.")] = False,
    name: Annotated[str | None, typer.Option(help="Row label in the table (default: the model's name).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda when available).")] = None,
    dtype: Annotated[DType, typer.Option(metavar="DTYPE", help="auto, float32, bfloat16 or float16; auto: "
                                                               "bfloat16 on a GPU, else float32.")] = "auto",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr.")] = True,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads; 1 suits tiny models on a busy "
                                                      "machine (measured 6 s vs 164 s on the toy model).")] = None,
) -> None:
    """Evaluate a model on benchmarks: mean@k, pass@k, parallel ratio, format validity, token counts.

    Prompt, chat and mode default to what the model directory recorded in training (parallel_r1.json).
    """
    if (problem := backend_problem(backend)) is not None:  # before anything loads
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        settings = choose_settings(model, prompt, chat, mode)
        typer.echo(settings.describe(), err=True)
        cfg = EvalConfig(
            model=model, benchmarks=[b for b in benchmarks.split(",") if b.strip()], samples=samples,
            prompt=settings.prompt, mode=settings.mode, compat=compat, scorer=scorer, num_paths=num_paths, temperature=temperature, top_p=top_p, top_k=top_k,
            max_tokens=max_tokens, max_path_tokens=max_path_tokens, max_blocks=max_blocks, seed=seed,
            limit=limit, batch_size=batch_size, chat=settings.chat, data_dir=data_dir, backend=backend,
        )
        responses = responses if responses is not None else output.with_suffix(".responses.jsonl")
        run_eval(cfg, output, responses, fresh, name or Path(model.rstrip("/")).name, device, dtype, progress,
                 settings)
    except (ValueError, OSError) as exc:  # bad input: a model, file, setting or stored result
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
