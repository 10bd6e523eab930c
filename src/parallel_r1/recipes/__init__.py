"""The recipes that ship inside the package, by name: ``parallel-r1 train smoke``, ``parallel-r1 recipes``.

1. One copy of each recipe. The ``*.yaml`` entries here are relative symbolic links to the repository's
   ``configs/`` (where users of the checkout read and edit them, and where the README points);
   building a wheel or an sdist copies the linked contents in, so an installed package carries the
   recipes without the repository. ``tests/test_wheel_install.py`` checks that every entry is still
   a link into ``configs/`` (a plain copy here would drift) and that every recipe there has one.
2. A recipe's name is its file's stem; a name never shadows a file: ``resolve`` takes an existing path
   first, so ``parallel-r1 train configs/smoke.yaml`` and ``parallel-r1 train smoke`` read the same file.

No imports from the rest of the package: ``train`` and ``demo`` read recipes through this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

SUFFIX = ".yaml"


@dataclass(frozen=True)
class BundledRecipe:
    name: str  # what `parallel-r1 train NAME` takes
    path: Path
    summary: str  # first sentence of the file's leading comment
    stages: tuple[str, ...]  # "name (type)" per stage
    model: str


def _folder() -> Path:
    # Installed packages are plain directories (pip unpacks wheels; torch cannot run from a zip),
    # so a resource here is a real file whose path other code (e.g. the demo's report) can print.
    folder = resources.files(__name__)
    assert isinstance(folder, Path), f"{__name__} is not a directory on disk: {folder!r}"
    return folder


def names() -> list[str]:
    """Names of the bundled recipes, sorted."""
    return sorted(p.name[: -len(SUFFIX)] for p in _folder().iterdir() if p.name.endswith(SUFFIX))


def path(name: str) -> Path | None:
    """The bundled recipe called ``name`` (``.yaml`` optional), or None if there is none."""
    stem = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    return _folder() / f"{stem}{SUFFIX}" if stem in names() else None


def resolve(recipe: str | Path) -> Path:
    """An existing file as given, else the bundled recipe of that name, else the path unchanged
    (the caller reports it missing, naming the bundled recipes)."""
    given = Path(recipe)
    if given.is_file():
        return given
    return path(str(recipe)) or given


def describe(name: str) -> BundledRecipe:
    """What ``parallel-r1 recipes`` shows for one bundled recipe."""
    file = path(name)
    if file is None:
        raise KeyError(f"no bundled recipe {name!r}; bundled: {', '.join(names())}")
    text = file.read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    model = raw.get("model", {})
    stages = tuple(f"{s.get('name')} ({s.get('type')})" for s in raw.get("stages", []))
    source = model.get("name_or_path") or f"{model.get('init', '?')} ({model.get('config', {}).get('model_type', '?')})"
    return BundledRecipe(name, file, _summary(text), stages, str(source))


def _summary(text: str) -> str:
    """First sentence of the comment block that opens the file ('' if none)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    words = " ".join(lines)
    end = words.find(". ")
    return words if end < 0 else words[: end + 1]
