"""The six control tags of the parallel-thinking format (docs/paper.md section 1)."""

from __future__ import annotations

PARALLEL_OPEN = "<Parallel>"
PARALLEL_CLOSE = "</Parallel>"
PATH_OPEN = "<Path>"
PATH_CLOSE = "</Path>"
SUMMARY_OPEN = "<Summary>"
SUMMARY_CLOSE = "</Summary>"

# Order matters only for display and for adding them to a tokenizer deterministically.
TAGS: tuple[str, ...] = (
    PARALLEL_OPEN,
    PARALLEL_CLOSE,
    PATH_OPEN,
    PATH_CLOSE,
    SUMMARY_OPEN,
    SUMMARY_CLOSE,
)

OPEN_TO_CLOSE = {PARALLEL_OPEN: PARALLEL_CLOSE, PATH_OPEN: PATH_CLOSE, SUMMARY_OPEN: SUMMARY_CLOSE}
CLOSE_TO_OPEN = {close: open_ for open_, close in OPEN_TO_CLOSE.items()}
