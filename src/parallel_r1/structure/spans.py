"""Token-level structure of a response: where each parallel block, path and summary lies.

Spans are half-open token index ranges ``[start, end)`` into the id sequence they were found in.

``find_blocks`` reads the structure from token ids in one left-to-right pass and never raises on any
id sequence. Its rules follow what the branching engine does, because the training-time mask must
describe the structure a response was *generated* under:

1. ``<Parallel>`` in the main chain opens a block. Inside an open block (between paths) or inside a
   path or a summary it is ordinary content: blocks do not nest (the text grammar calls a nested block
   an error; the engine never branches inside a branch).
2. Inside a block, ``<Path>`` opens a path and ``</Parallel>`` closes the block.
3. Inside a path only ``</Path>`` counts (the engine decodes a path until its first ``</Path>``);
   every other tag there is content. A path still open at the end runs to the end of the sequence.
4. A ``<Summary>`` belongs to the block just closed when it is the first tag after ``</Parallel>``
   (ordinary tokens may lie between, as in the text grammar). Inside a summary only ``</Summary>``
   counts; an unclosed summary runs to the end. A ``<Summary>`` anywhere else is ignored.
5. A closing tag that closes nothing is ignored. A block never closed keeps ``close=None``.

On well-formed responses this agrees with ``parallel_r1.format.parse`` (tested on the pilot traces).
On malformed ones the two differ on purpose: the text parser reports errors with a stack, this
reader only has to say which tokens belong to which path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from parallel_r1.format.tags import (
    PARALLEL_CLOSE,
    PARALLEL_OPEN,
    PATH_CLOSE,
    PATH_OPEN,
    SUMMARY_CLOSE,
    SUMMARY_OPEN,
    TAGS,
)


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


def check_tag_ids(tag_ids: Mapping[str, int]) -> dict[str, int]:
    """Return ``tag_ids`` as a plain dict after checking it maps all six tags to distinct ints."""
    missing = [t for t in TAGS if t not in tag_ids]
    if missing:
        raise ValueError(f"tag_ids lacks {missing}; it must map all six tags {TAGS} to token ids")
    ids = {t: tag_ids[t] for t in TAGS}
    bad = {t: i for t, i in ids.items() if isinstance(i, bool) or not isinstance(i, int)}
    if bad:
        raise ValueError(f"tag ids must be ints, got {bad}")
    if len(set(ids.values())) != len(TAGS):
        raise ValueError(f"tag ids must be distinct, got {ids}")
    return ids


class _Reader:
    """State of one pass over the ids; ``mode`` is main | block | path | summary."""

    def __init__(self, tag_ids: Mapping[str, int]):
        self.tag_of = {i: t for t, i in check_tag_ids(tag_ids).items()}
        self.blocks: list[BlockSpan] = []
        self.mode = "main"
        self.opened = 0  # index of the open path's <Path> or the open summary's <Summary>
        self.just_closed = False  # the previous tag token was a </Parallel>

    def step(self, i: int, tag: str) -> None:
        after_close, self.just_closed = self.just_closed, False
        if self.mode == "path":
            if tag == PATH_CLOSE:
                self.blocks[-1].paths.append((self.opened, i + 1))
                self.mode = "block"
        elif self.mode == "summary":
            if tag == SUMMARY_CLOSE:
                self.blocks[-1].summary = (self.opened, i + 1)
                self.mode = "main"
        elif self.mode == "block":
            if tag == PATH_OPEN:
                self.mode, self.opened = "path", i
            elif tag == PARALLEL_CLOSE:
                self.blocks[-1].close = i
                self.mode, self.just_closed = "main", True
        elif tag == PARALLEL_OPEN:
            self.blocks.append(BlockSpan(parallel=i))
            self.mode = "block"
        elif tag == SUMMARY_OPEN and after_close:
            self.mode, self.opened = "summary", i

    def finish(self, length: int) -> list[BlockSpan]:
        if self.mode == "path":
            self.blocks[-1].paths.append((self.opened, length))
        elif self.mode == "summary":
            self.blocks[-1].summary = (self.opened, length)
        return self.blocks


def find_blocks(ids: Sequence[int], tag_ids: Mapping[str, int]) -> list[BlockSpan]:
    """Blocks, paths and summaries of ``ids`` as token spans, in order; never raises on any ids.

    ``tag_ids`` maps each of the six tag strings to its token id (a bad map raises ValueError:
    that is a programming error, not model output). See the module docstring for the rules.
    """
    reader = _Reader(tag_ids)
    tag_of = reader.tag_of
    for i, tok in enumerate(ids):
        tag = tag_of.get(int(tok))
        if tag is not None:
            reader.step(i, tag)
    return reader.finish(len(ids))


def path_regions(block: BlockSpan, length: int) -> list[tuple[int, int]]:
    """Token ranges that belong to each path for attention and positions, ``[start, end)``.

    A region runs from the path's ``<Path>`` up to the next path's ``<Path>`` (or the block's
    ``</Parallel>``, or the end when the block is open), so tokens between ``</Path>`` and the next
    tag of the block (e.g. a newline) stay with the path they follow: no token between the tags of a
    block can carry information from one path to a sibling. On canonical sequences a region is
    exactly the path span.
    """
    starts = [s for s, _ in block.paths]
    last_end = block.close if block.close is not None else length
    return list(zip(starts, [*starts[1:], last_end][: len(starts)], strict=True))  # [] without paths
