"""The ``parallel-r1`` help and usage checks (issue 18, item 10).

Pinned bugs: at 80 columns rich's option table cut names (``--max-path-toke…``); the bench help showed
literal RST ``double backticks``; there was no ``--version``; eval's sampling options had no help;
``--mode`` / ``--dtype`` were free strings checked only after the model loaded; ``--max-path-tokens 0``
passed eval's check but not serve's.
"""

from __future__ import annotations

import click
import pytest
import typer
from typer.testing import CliRunner

from parallel_r1 import __version__
from parallel_r1.cli import app
from parallel_r1.engine.sampling import MODES as ENGINE_MODES
from parallel_r1.eval.loading import MODES

NARROW = {"COLUMNS": "80"}


def commands(group: click.Group, prefix: tuple[str, ...] = ()):
    """Every leaf command as (path, click command)."""
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


ROOT = typer.main.get_command(app)
LEAVES = list(commands(ROOT))


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env=NARROW)


@pytest.mark.parametrize("path", [p for p, _ in LEAVES], ids=" ".join)
def test_help_at_80_columns_shows_every_option_name_whole(path):
    cmd = dict(LEAVES)[path]
    res = invoke(*path, "--help")
    assert res.exit_code == 0, res.output
    assert "…" not in res.output and "``" not in res.output, res.output
    assert max(len(line) for line in res.output.splitlines()) <= 80
    for param in cmd.params:
        for opt in (*param.opts, *param.secondary_opts):
            if opt.startswith("--"):
                assert opt in res.output, f"{' '.join(path)}: {opt} missing or cut in\n{res.output}"


@pytest.mark.parametrize("group", [(), ("bench",)])
def test_command_lists_are_not_cut(group):
    res = invoke(*group, "--help")
    listed = res.output.split("Commands:", 1)[1]
    assert res.exit_code == 0 and "..." not in listed and "…" not in listed, res.output


def test_version():
    res = invoke("--version")
    assert res.exit_code == 0 and res.output.strip() == f"parallel-r1 {__version__}"


def test_eval_documents_every_option():
    cmd = dict(LEAVES)[("eval",)]
    undocumented = [p.name for p in cmd.params if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert undocumented == []


def test_the_cli_mode_choices_are_the_engine_modes():
    assert tuple(MODES) == ENGINE_MODES


@pytest.mark.parametrize(
    ("command", "flag", "value"),
    [("eval", "--mode", "diagonal"), ("eval", "--dtype", "float8"), ("serve", "--mode", "diagonal"),
     ("serve", "--dtype", "float8"), ("eval", "--max-path-tokens", "0"), ("serve", "--max-path-tokens", "0")],
)
def test_bad_choices_are_usage_errors_before_any_model_loads(tmp_path, command, flag, value):
    """The model path does not exist: an error about it would mean the option was checked too late."""
    extra = ["--benchmarks", "toy-easy", "--output", str(tmp_path / "x.json")] if command == "eval" else []
    res = invoke(command, str(tmp_path / "no-model"), *extra, flag, value)
    assert res.exit_code == 2, res.output
    assert f"Invalid value for '{flag}'" in res.output and "does not exist" not in res.output
