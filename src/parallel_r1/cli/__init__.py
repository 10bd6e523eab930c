"""The one ``parallel-r1`` command; each sub-command is a thin wrapper over the library."""

from __future__ import annotations

import typer

from parallel_r1.bench.engine_command import bench_engine
from parallel_r1.bench.rl import bench_rl
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
)
bench_app = typer.Typer(help="Benchmarks: each prints one JSON object as its last stdout line.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
bench_app.command("engine")(bench_engine)
bench_app.command("rl")(bench_rl)

app.command("score")(score)
app.command("train")(train)
app.command("recipes")(recipes)
app.command("make-data")(make_data)
app.command("eval")(eval_command)
app.command("report")(report)
app.command("serve")(serve)
app.command("demo")(demo)


def main() -> None:  # pragma: no cover - console-script shim
    app()
