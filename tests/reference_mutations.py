"""Deterministic mutations of the Parallel-GSM8K pilot traces, for comparing the two scorers.

Each mutation maps ``(response, gold)`` to a new response; it is a pure function of its input, so
the reference verdicts in ``fixtures/reference_verdicts.jsonl.gz`` can name a case by trace id and
mutation name instead of storing the text.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_FINAL = re.compile(r"Final Answer:[^\n]*")
_BLOCK = "<Parallel>\n<Path>\nx = 1\n</Path>\n<Path>\nx = 2\n</Path>\n</Parallel>\n<Summary>\nx is 1 or 2\n"
_TAGS = ("<Parallel>", "</Parallel>", "<Path>", "</Path>", "<Summary>", "</Summary>")


def _set_final(response: str, answer: str) -> str:
    """The last ``Final Answer:`` line rewritten to ``Final Answer: {answer}`` (appended if absent)."""
    found = list(_FINAL.finditer(response))
    if not found:
        return response + f"\nFinal Answer: {answer}"
    last = found[-1]
    return response[: last.start()] + f"Final Answer: {answer}" + response[last.end():]


def _drop_final(response: str) -> str:
    found = list(_FINAL.finditer(response))
    return response[: found[-1].start()] + response[found[-1].end():] if found else response


def _wrong(gold: str) -> str:
    return str(int(gold) + 1) if gold.lstrip("-").isdigit() else gold + "1"


def _commas(gold: str) -> str:
    return f"{int(gold):,}" if gold.lstrip("-").isdigit() else gold


def _one_path(response: str) -> str:
    """Every block loses its second path (a two-path block keeps one path)."""
    return re.sub(r"(</Path>)\s*<Path>.*?</Path>", r"\1", response, flags=re.S)


def _strip_tags(response: str) -> str:
    for tag in _TAGS:
        response = response.replace(tag, "")
    return response


def _nested(response: str) -> str:
    """A whole block inside the first path (reference: valid; our grammar: invalid)."""
    return response.replace("<Path>", "<Path>" + _BLOCK + "</Summary>\n", 1)


def _block_in_open_summary(response: str) -> str:
    """The first summary left unclosed, with a block opened inside it."""
    at = response.find("</Summary>")
    if at < 0:
        return response
    return response[:at] + _BLOCK + response[at:]


def _truncated(response: str) -> str:
    return response[: len(response) // 2]


def _end_in_summary(response: str) -> str:
    """Cut inside the last summary, just after its first line."""
    at = response.rfind("<Summary>")
    if at < 0:
        return response
    nl = response.find("\n", at + len("<Summary>\n"))
    return response[: nl if nl >= 0 else len(response)]


MUTATIONS: dict[str, Callable[[str, str], str]] = {
    "original": lambda r, g: r,
    "wrong_answer": lambda r, g: _set_final(r, _wrong(g)),
    "trailing_00": lambda r, g: _set_final(r, f"{g}.00"),
    "dollar": lambda r, g: _set_final(r, f"${g}"),
    "dollar_period": lambda r, g: _set_final(r, f"${g}."),
    "commas": lambda r, g: _set_final(r, _commas(g)),
    "units": lambda r, g: _set_final(r, f"{g} dollars"),
    "equation": lambda r, g: _set_final(r, f"x = {g}"),
    "lowercase": lambda r, g: _set_final(r, g).replace("Final Answer:", "final answer:"),
    "answer_next_line": lambda r, g: _set_final(r, f"\n{g}"),
    "boxed_only": lambda r, g: _drop_final(r) + f"\nThe answer is \\boxed{{{g}}}.",
    "answer_then_300_chars": lambda r, g: r + "\n" + "Let me double-check the arithmetic once more. " * 8,
    "truncated": lambda r, g: _truncated(r),
    "end_in_summary": lambda r, g: _end_in_summary(r),
    "no_summary": lambda r, g: re.sub(r"<Summary>.*?</Summary>\s*", "", r, flags=re.S),
    "one_path": lambda r, g: _one_path(r),
    "nested": lambda r, g: _nested(r),
    "block_in_open_summary": lambda r, g: _block_in_open_summary(r),
    "stray_path_close": lambda r, g: _set_final(r, g).replace("Final Answer:", "</Path>\nFinal Answer:"),
    "unclosed_parallel": lambda r, g: _set_final(r, g).replace("Final Answer:", "<Parallel>\nFinal Answer:"),
    "sequential": lambda r, g: _strip_tags(r),
    "sequential_stray_tag": lambda r, g: _strip_tags(r) + "\n</Summary></Path>",
}
