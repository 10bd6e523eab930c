"""``parallel-r1 recipes [NAME]``: list the recipes that ship inside the package, or print one.

Printing one is how a user of an installed wheel gets an editable copy:
``parallel-r1 recipes smoke > my.yaml``, then ``parallel-r1 train my.yaml``.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from parallel_r1 import recipes as bundled


def recipes(
    name: Annotated[str | None, typer.Argument(help="print this recipe's YAML instead of the list")] = None,
) -> None:
    """List the bundled recipes (`parallel-r1 train NAME` runs one), or print one's YAML to stdout."""
    if name is None:
        Console().print(recipe_table())
        return
    file = bundled.path(name)
    if file is None:
        typer.echo(f"error: no bundled recipe {name!r}; bundled: {', '.join(bundled.names())}", err=True)
        raise typer.Exit(2)
    typer.echo(file.read_text(encoding="utf-8"), nl=False)


def recipe_table() -> Table:
    table = Table(title="Bundled recipes: parallel-r1 train NAME --output DIR", title_justify="left")
    for column in ("name", "model"):  # kept whole: a name is what the user types
        table.add_column(column, no_wrap=True)
    table.add_column("stages")
    table.add_column("about")
    for name in bundled.names():
        info = bundled.describe(name)
        table.add_row(info.name, info.model, ", ".join(info.stages), info.summary)
    return table
