"""The one ``parallel-r1`` command; each sub-command is a thin wrapper over the library.

Help is click's plain layout (``rich_markup_mode=None``): rich's option table shrinks every column
to fit the terminal and cut long option names with "…" at 80 columns; click's never cuts a name.
"""

from __future__ import annotations

import typer

from parallel_r1 import __version__
from parallel_r1.bench.engine_command import bench_engine
from parallel_r1.bench.memory_command import bench_memory
from parallel_r1.bench.rl import bench_rl
from parallel_r1.bench.rollout_command import bench_rollout
from parallel_r1.cli.recipes import recipes
from parallel_r1.cli.score import score
from parallel_r1.cli.train import train
from parallel_r1.data.make_data import make_data
from parallel_r1.demo.command import demo
from parallel_r1.eval.command import eval_command
from parallel_r1.report.command import report
from parallel_r1.serve.command import serve

app = typer.Typer(
    name="parallel-r1",
    help="Parallel-R1: teach language models parallel thinking with reinforcement learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
bench_app = typer.Typer(help="Benchmarks: each prints one JSON object as its last stdout line.", no_args_is_help=True,
                        rich_markup_mode=None)
# short_help: click cuts a command's summary in the command list with "..." past ~55 characters
app.add_typer(bench_app, name="bench", short_help="Engine and RL benchmarks (one JSON line each).")
bench_app.command("engine", short_help="Branching engine vs plain decoding vs re-prefill.")(bench_engine)
bench_app.command("rl", short_help="Our GRPO step vs TRL's GRPOTrainer on the same work.")(bench_rl)
bench_app.command("memory", short_help="Per-GPU memory of a recipe's stages (computed).")(bench_memory)
bench_app.command("rollout", short_help="Rollout backends side by side (hf vs vLLM).")(bench_rollout)

app.command("score", short_help="Judge responses: format, blocks, correctness, reward.")(score)
app.command("train", short_help="Run a training recipe (SFT and GRPO stages).")(train)
app.command("recipes", short_help="List the bundled recipes.")(recipes)
app.command("make-data", short_help="Cold-start traces from an OpenAI-compatible teacher.")(make_data)
app.command("eval", short_help="Evaluate a model on benchmarks (mean@k, pass@k).")(eval_command)
app.command("report", short_help="Plots and a Markdown summary of a training run.")(report)
app.command("serve", short_help="Serve a model over an OpenAI-compatible HTTP API.")(serve)
app.command("demo", short_help="The whole curriculum on the embedded toy world.")(demo)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"parallel-r1 {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the version and exit."),
) -> None:
    """Parallel-R1: teach language models parallel thinking with reinforcement learning."""


def main() -> None:  # pragma: no cover - console-script shim
    app()
