"""Final-answer extraction.

The reference takes the last 300 characters and the last ``Final Answer:\\s*(.+)`` match. Here the
whole response is searched (a long final line is not cut), the last ``Final Answer:`` line wins, and
the last ``\\boxed{...}`` is the fallback for models that box instead.
"""

from __future__ import annotations

import re

FINAL_ANSWER_RE = re.compile(r"Final Answer:[ \t]*([^\n]*)", re.IGNORECASE)
BOXED = "\\boxed{"


def extract_final_answer(text: str) -> str | None:
    """The text after the last ``Final Answer:`` (to the end of its line), else the content of the
    last ``\\boxed{}``; None when neither is present or the answer is empty."""
    last = None
    for m in FINAL_ANSWER_RE.finditer(text):
        last = m
    if last is not None:
        answer = last.group(1).strip()
        if answer:
            return answer
    return extract_boxed(text)


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, braces matched; None if absent or unbalanced."""
    start = text.rfind(BOXED)
    if start < 0:
        return None
    depth, i = 1, start + len(BOXED)
    for j in range(i, len(text)):
        ch = text[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                content = text[i:j].strip()
                return content or None
    return None
