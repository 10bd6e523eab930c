"""Read the files a user hands a command (UTF-8 text, JSON, JSON Lines) with errors that say where.

Every reader of a user file goes through here, so each bad file ends in one kind of message that
names the file and the place, never in a traceback:

1. missing: ``recipe not found: PATH``; a folder: ``PATH is a directory, not a recipe``; unreadable:
   ``cannot read recipe PATH: Permission denied``;
2. not UTF-8: ``PATH: not UTF-8 text: byte 0xff at line 3 (byte offset 57)``: the offset counts
   from the start of the file, so ``head -c``/``xxd -s`` find the byte;
3. damaged JSON: ``PATH, line 4: not valid JSON: Expecting value (column 22)``.

A leading UTF-8 byte-order mark (Notepad writes one) is dropped. Callers pass their own error
class (``RecipeError``, ``ProblemSourceError`` ...), the one their command already turns into a
clean exit, so no command needs a second ``except`` for file trouble. This module sits below every
layer and imports nothing from the package.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

BOM = "\ufeff"


class FileReadError(ValueError):
    """A user file that cannot be read or parsed; the message names it and the place."""


def read_text(path: str | Path, what: str = "file", error: type[Exception] = FileReadError) -> str:
    """The UTF-8 text of ``path``; ``what`` names the file's role in messages ("recipe", "prompt")."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{path} is a directory, not a {what}") from None
    except OSError as exc:  # permissions, a device, a broken mount
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    return decode(data, path, error)


def decode(data: bytes, source: str | Path, error: type[Exception] = FileReadError) -> str:
    """``data`` as UTF-8 text; the error names ``source``, the first bad byte, its line and offset."""
    try:
        return data.decode("utf-8").removeprefix(BOM)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(
            f"{source}: not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line} (byte offset {exc.start}); "
            "save the file as UTF-8"
        ) from None


def parse_json(text: str, source: str | Path, line_no: int | None = None,
               error: type[Exception] = FileReadError) -> object:  # fmt: skip
    """One JSON document; ``line_no`` is the line ``text`` came from (a JSON Lines row), if any."""
    if line_no is None and not text.strip():
        raise error(f"{source} is empty (expected a JSON document)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        line = exc.lineno if line_no is None else line_no + exc.lineno - 1
        raise error(f"{source}, line {line}: not valid JSON: {exc.msg} (column {exc.colno})") from None


def json_lines(text: str, source: str | Path, error: type[Exception] = FileReadError) -> Iterator[tuple[int, object]]:
    """(line number, value) for each non-blank line of a JSON Lines text."""
    # split on "\n" only: str.splitlines() also splits on U+2028 and friends, which JSON strings may
    # hold unescaped (the pilot traces do)
    for line_no, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield line_no, parse_json(line, source, line_no, error)


def read_json(path: str | Path, what: str = "file", error: type[Exception] = FileReadError) -> object:
    """The JSON document in ``path`` (``read_text`` and ``parse_json`` errors)."""
    return parse_json(read_text(path, what, error), path, error=error)


def read_json_lines(path: str | Path, what: str = "file",
                    error: type[Exception] = FileReadError) -> list[tuple[int, object]]:  # fmt: skip
    """Every (line number, value) of a JSON Lines file."""
    return list(json_lines(read_text(path, what, error), path, error))
