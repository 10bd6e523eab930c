"""Token-level structure of a response: where each parallel block, path and summary lies.

Spans are half-open token index ranges ``[start, end)`` into the id sequence they were found in.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BlockSpan:
    """One ``<Parallel>`` block, as token indices.

    parallel: index of the ``<Parallel>`` token.
    paths: ``[start, end)`` of each path, from its ``<Path>`` token through its ``</Path>`` token
        (an unclosed path runs to the end of the sequence).
    close: index of the ``</Parallel>`` token, or None when the block was never closed.
    summary: ``[start, end)`` from ``<Summary>`` through ``</Summary>``, or None.
    """

    parallel: int
    paths: list[tuple[int, int]] = field(default_factory=list)
    close: int | None = None
    summary: tuple[int, int] | None = None
