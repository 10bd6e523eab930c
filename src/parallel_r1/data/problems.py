"""Problem sources: one call, ``load_problems(spec)``, turns a set name or a file into ``Problem`` rows.

``spec`` is one of
1. a named benchmark or training set (``NAMED_SETS``): ``gsm8k`` (the test split), ``gsm8k-train``,
   ``math500``, ``math300``, ``aime24``, ``aime25``, ``amc23``, ``dapo``. These are read from a local
   folder laid out like ``../shared/data`` (``gsm8k_test.jsonl`` etc.; the folder is ``data_dir``, else
   the environment variable ``PARALLEL_R1_DATA_DIR``). With neither, and the optional ``datasets``
   package installed, they are fetched from the Hugging Face hub by dataset name, after one warning
   that names where it looked locally and the hub dataset (the hub client retries with back-off,
   which would otherwise look like a hang); otherwise the error says to pass ``--data-dir``.
   ``math300`` has no hub source.
2. an embedded toy set, ``toy-easy`` or ``toy-hard`` (``data/toy.py``): ``limit`` problems (default
   ``TOY_DEFAULT_SIZE``) generated under ``seed``.
3. a path to a ``.jsonl``, ``.json`` (a list of objects, or an object with a ``data`` list) or
   ``.parquet`` file (needs pyarrow).

Rows are read leniently, in this order of preference (``row_to_problem``):
- question: ``question``, else ``problem``, else ``prompt`` (a string, or a chat list whose last user
  message is taken, as in verl-style parquet files);
- answer: ``answer``, ``gold``, ``final_answer``, ``ground_truth``, ``reward_model.ground_truth``, else
  derived from ``solution`` (its ``#### N`` line as in GSM8K, else its last ``\\boxed{}``). An answer
  that itself holds a GSM8K ``#### N`` line is cut to ``N`` (the hub's GSM8K rows look like that);
- id: ``id``, ``unique_id``, ``problem_id``, ``idx``, else ``<file stem>-<row index>``.

A row without a question or an answer is an error naming the file and line (not a silent skip: a
benchmark that quietly lost rows would report a wrong score). Duplicate ids are an error too, since
downstream tools (make-data resume, eval) key their records by id. ``limit`` keeps the first N rows
in file order, so a limited run is a prefix of the full one and resumes stay consistent.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from parallel_r1.data.problem import Problem
from parallel_r1.files import read_json, read_json_lines

log = logging.getLogger("parallel_r1.data")
DATA_DIR_ENV = "PARALLEL_R1_DATA_DIR"
TOY_SETS = ("toy-easy", "toy-hard")
TOY_DEFAULT_SIZE = 200
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")

QUESTION_KEYS = ("question", "problem", "prompt")
ANSWER_KEYS = ("answer", "gold", "final_answer", "ground_truth")
ID_KEYS = ("id", "unique_id", "problem_id", "idx")
GSM8K_ANSWER_RE = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


@dataclass(frozen=True)
class NamedSet:
    """A named set: its file in a local data folder and where the hub keeps it (None: nowhere)."""

    filename: str
    hub: tuple[str, str | None, str] | None  # (dataset name, config, split)


NAMED_SETS: dict[str, NamedSet] = {
    "gsm8k": NamedSet("gsm8k_test.jsonl", ("openai/gsm8k", "main", "test")),
    "gsm8k-train": NamedSet("gsm8k_train.jsonl", ("openai/gsm8k", "main", "train")),
    "math500": NamedSet("math500.jsonl", ("HuggingFaceH4/MATH-500", None, "test")),
    "math300": NamedSet("math300.jsonl", None),
    "aime24": NamedSet("aime24.jsonl", ("HuggingFaceH4/aime_2024", None, "train")),
    "aime25": NamedSet("aime25.jsonl", ("math-ai/aime25", None, "test")),
    "amc23": NamedSet("amc23.jsonl", ("math-ai/amc23", None, "test")),
    "dapo": NamedSet("dapo17k.jsonl", ("BytedTsinghua-SIA/DAPO-Math-17k", None, "train")),
}


class ProblemSourceError(ValueError):
    """A problem source that cannot be read; the message names the set, file or line at fault."""


def known_sets() -> list[str]:
    return sorted(NAMED_SETS) + list(TOY_SETS)


def default_data_dir() -> Path | None:
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value) if value else None


def load_problems(spec: str, data_dir: Path | str | None = None, limit: int | None = None,
                  seed: int = 0) -> list[Problem]:
    """Problems of a named set, a toy set or a file (see the module docstring)."""
    if limit is not None and limit < 0:
        raise ProblemSourceError(f"limit must be >= 0, got {limit}")
    spec = str(spec).strip()
    if spec in TOY_SETS:
        from parallel_r1.data.toy import toy_set  # lazy: the toy world is not needed for real data

        return toy_set(spec, TOY_DEFAULT_SIZE if limit is None else limit, seed)
    if spec in NAMED_SETS:
        rows = _named_rows(spec, Path(data_dir) if data_dir is not None else default_data_dir())
        return _take(rows, limit)
    path = Path(spec).expanduser()
    if path.exists():  # a folder or an unreadable file fails in read_problem_file, naming it
        return _take(read_problem_file(path), limit)
    if path.suffix in FILE_SUFFIXES or os.sep in spec or "/" in spec:
        raise ProblemSourceError(f"problem file not found: {spec}")
    raise ProblemSourceError(
        f"unknown problem set {spec!r}: expected one of {', '.join(known_sets())}, "
        f"or a path to a {'/'.join(FILE_SUFFIXES)} file"
    )


def _take(problems: list[Problem], limit: int | None) -> list[Problem]:
    return problems if limit is None else problems[:limit]


def _named_rows(name: str, data_dir: Path | None) -> list[Problem]:
    entry = NAMED_SETS[name]
    if data_dir is not None:
        path = data_dir / entry.filename
        if not path.is_file():
            raise ProblemSourceError(f"problem set {name!r}: {path} does not exist (data dir {data_dir})")
        return read_problem_file(path)
    return _hub_rows(name, entry)


def _hub_rows(name: str, entry: NamedSet) -> list[Problem]:
    """Fetch a named set from the hub with the optional ``datasets`` package."""
    hint = f"pass --data-dir (a folder with {entry.filename}) or set {DATA_DIR_ENV}"
    if entry.hub is None:
        raise ProblemSourceError(f"problem set {name!r} has no hub source: {hint}")
    try:
        import datasets  # optional: never a requirement of this package
    except ImportError as exc:
        raise ProblemSourceError(
            f"problem set {name!r} needs a local data folder: {hint} "
            f"(or install `datasets` to fetch {entry.hub[0]} from the hub)"
        ) from exc
    repo, config, split = entry.hub
    log.warning("problem set %r: no local data folder (--data-dir not given, %s unset), so fetching %s (%s) "
                "from the Hugging Face hub; set HF_HUB_OFFLINE=1 to fail at once instead of retrying",
                name, DATA_DIR_ENV, repo, split)  # fmt: skip
    try:
        ds = datasets.load_dataset(repo, config, split=split)
    except Exception as exc:  # offline, gated, renamed: all end here, with the way out named
        raise ProblemSourceError(f"could not fetch {repo} ({split}) for {name!r}: {exc}; {hint}") from exc
    problems = rows_to_problems(((i + 1, dict(r)) for i, r in enumerate(ds)), f"{name}-", f"hub:{repo}")
    return _dapo_unique(problems) if name == "dapo" else problems


DAPO_HEAD = "Solve the following math problem step by step."
DAPO_TAIL = "\n\nRemember to put your answer on its own line after"


def _dapo_unique(problems: list[Problem]) -> list[Problem]:
    """The hub's DAPO-Math-17k wraps each problem in its own answer-format instruction and repeats
    it many times; docs/paper.md uses the ~17k unique problems. Best effort (not checkable offline): the
    wrapper is cut when it has the expected head and tail, then repeats are dropped."""
    seen: set[str] = set()
    out = []
    for p in problems:
        question = p.question
        if question.startswith(DAPO_HEAD) and DAPO_TAIL in question and "\n\n" in question:
            question = question.split("\n\n", 1)[1].split(DAPO_TAIL, 1)[0].strip()
        if question not in seen:
            seen.add(question)
            out.append(Problem(p.id, question, p.answer))
    return out


# ---------------------------------------------------------------- files


def read_problem_file(path: Path) -> list[Problem]:
    """All problems of a JSONL / JSON / parquet file, in file order."""
    if path.is_dir():
        raise ProblemSourceError(f"{path} is a directory, not a problem file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = _jsonl_rows(path)
    elif suffix == ".json":
        rows = _json_rows(path)
    elif suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        raise ProblemSourceError(f"{path}: unsupported file type {suffix!r}; use one of {FILE_SUFFIXES}")
    problems = rows_to_problems(rows, f"{path.stem}-", str(path))
    if not problems:  # an empty benchmark would score 0 of 0; an empty make-data run asks nothing
        raise ProblemSourceError(f"{path}: the file holds no problems")
    return problems


def _jsonl_rows(path: Path) -> list[tuple[int, object]]:
    return read_json_lines(path, "problem file", ProblemSourceError)


def _json_rows(path: Path) -> Iterator[tuple[int, object]]:
    data = read_json(path, "problem file", ProblemSourceError)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ProblemSourceError(f"{path}: expected a JSON list of problems (or {{\"data\": [...]}})")
    yield from enumerate(data, start=1)


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ProblemSourceError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from exc
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ProblemSourceError(f"{path}: not a readable parquet file ({exc})") from None
    yield from enumerate(table.to_pylist(), start=1)


def rows_to_problems(rows: Iterable[tuple[int, dict]], id_prefix: str, source: str) -> list[Problem]:
    """Convert numbered rows; errors name ``source`` and the row's number (its line in a JSONL file)."""
    problems: list[Problem] = []
    first_seen: dict[str, int] = {}
    for index, (line_no, row) in enumerate(rows):
        where = f"{source}, line {line_no}" if source.endswith(".jsonl") else f"{source}, row {line_no}"
        problem = row_to_problem(row, f"{id_prefix}{index}", where)
        if problem.id in first_seen:
            raise ProblemSourceError(f"{where}: duplicate id {problem.id!r} (first at row {first_seen[problem.id]})")
        first_seen[problem.id] = line_no
        problems.append(problem)
    return problems


def row_to_problem(row: object, fallback_id: str, where: str) -> Problem:
    """One row as a Problem; ``where`` names the row in error messages."""
    if not isinstance(row, dict):
        raise ProblemSourceError(f"{where}: expected a JSON object, got {type(row).__name__}")
    question = _question(row)
    if not question:
        raise ProblemSourceError(f"{where}: no question (looked for {', '.join(QUESTION_KEYS)})")
    answer = _answer(row)
    if answer is None or answer == "":
        raise ProblemSourceError(
            f"{where}: no answer (looked for {', '.join(ANSWER_KEYS)}, reward_model.ground_truth, "
            "and a '####' line or \\boxed{} in solution)"
        )
    pid = next((str(row[k]) for k in ID_KEYS if row.get(k) not in (None, "")), fallback_id)
    return Problem(id=pid, question=question, answer=answer)


def _question(row: dict) -> str | None:
    for key in QUESTION_KEYS:
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, list):  # chat messages: the last user turn is the problem
            users = [m.get("content") for m in value if isinstance(m, dict) and m.get("role") == "user"]
            if users and isinstance(users[-1], str) and users[-1].strip():
                return users[-1].strip()
    return None


def _answer(row: dict) -> str | None:
    for key in ANSWER_KEYS:
        if row.get(key) not in (None, ""):
            return _gold_text(row[key])
    reward_model = row.get("reward_model")
    if isinstance(reward_model, dict) and reward_model.get("ground_truth") not in (None, ""):
        return _gold_text(reward_model["ground_truth"])
    solution = row.get("solution")
    if isinstance(solution, str):
        return answer_from_solution(solution)
    return None


def _gold_text(value: object) -> str:
    if isinstance(value, list) and len(value) == 1:  # verl rows sometimes wrap the gold in a list
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ProblemSourceError(f"answer must be a string or a number, got {value!r}")
    text = str(value).strip()
    m = GSM8K_ANSWER_RE.search(text)
    return m.group(1).strip().replace(",", "") if m else text


def answer_from_solution(solution: str) -> str | None:
    """The gold answer written in a worked solution: a GSM8K ``#### N`` line, else the last ``\\boxed{}``."""
    m = GSM8K_ANSWER_RE.search(solution)
    if m:
        return m.group(1).strip().replace(",", "")
    from parallel_r1.format import extract_boxed

    return extract_boxed(solution)
