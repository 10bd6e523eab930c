"""Parse a response into its parallel-thinking tree and validate it against the reference grammar.

The grammar (docs/paper.md section 1), as this parser enforces it:
1. Tags are balanced as a stack.
2. ``<Parallel>`` opens only in the main chain (never inside a path, a summary or another block).
3. ``<Path>`` opens only directly inside ``<Parallel>``; a block holds at least two complete paths.
4. The next tag after every ``</Parallel>`` is ``<Summary>``; a ``<Summary>`` anywhere else is an error
   (so the number of summaries equals the number of closed blocks).
5. As in the reference, a response may end inside its last summary (``</Summary>`` missing at the
   very end): accepted, with a warning.

Departures from the reference checker, on purpose:
- Rule 2 is explicit here; the reference only checks stack balance, so a block nested inside a
  path passes there although no engine can produce it.
- Text between the tags of a block (between ``</Path>`` and ``<Path>``, say) is allowed, as in the
  reference, but recorded as ``stray`` so ``canonicalize`` can drop it: structured positions are
  only defined on canonical sequences.

One left-to-right pass over the tag matches: linear in the length of the text, never raises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from parallel_r1.format.tags import (
    CLOSE_TO_OPEN,
    PARALLEL_CLOSE,
    PARALLEL_OPEN,
    PATH_CLOSE,
    PATH_OPEN,
    SUMMARY_CLOSE,
    SUMMARY_OPEN,
)

TAG_RE = re.compile(r"</?(?:Parallel|Path|Summary)>")
MAX_ERRORS = 20  # a megabyte of junk must not produce a megabyte of messages


@dataclass(frozen=True)
class Span:
    """Content between an opening and a closing tag: ``text[start:end]`` (tags excluded)."""

    start: int
    end: int
    text: str


@dataclass
class Block:
    """One ``<Parallel>`` block; ``start`` is the offset of ``<Parallel>``, ``end`` one past
    ``</Summary>`` (or past ``</Parallel>`` when the summary is missing; -1 when never closed)."""

    start: int
    end: int = -1
    paths: list[Span] = field(default_factory=list)
    summary: Span | None = None
    closed: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.closed and len(self.paths) >= 2 and self.summary is not None and not self.errors


@dataclass
class ParsedResponse:
    text: str
    blocks: list[Block]
    errors: list[str]
    # (start, end) character ranges between the tags of a block: not part of any path or summary
    stray: list[tuple[int, int]]
    # departures that the reference grammar accepts and we accept too, reported for the curious
    warnings: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors

    @property
    def num_parallel(self) -> int:
        """Number of ``<Parallel>`` tags, closed or not (the reference counts them the same way)."""
        return len(self.blocks)

    @property
    def num_valid_blocks(self) -> int:
        return sum(b.valid for b in self.blocks)

    @property
    def canonical(self) -> bool:
        return not self.stray

    @property
    def relative_positions(self) -> list[float]:
        """Offset of each block's ``<Parallel>`` divided by the response length (docs/paper.md 7)."""
        n = max(len(self.text), 1)
        return [b.start / n for b in self.blocks]


def _where(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, col {col}"


class _Parser:
    """State of one left-to-right pass. ``stack`` holds (tag, offset) of open tags."""

    def __init__(self, text: str):
        self.text = text
        self.stack: list[tuple[str, int]] = []
        self.blocks: list[Block] = []
        self.errors: list[str] = []
        self.n_errors = 0
        self.stray: list[tuple[int, int]] = []
        self.warnings: list[str] = []
        self.block: Block | None = None  # the block whose tags we are inside or just after
        self.awaiting_summary = False  # the previous tag was </Parallel>
        self.after_close = False  # ... as seen by the handler of the current tag
        self.last_end = 0  # end offset of the previous tag

    def error(self, pos: int, message: str) -> None:
        self.n_errors += 1
        if self.n_errors <= MAX_ERRORS:
            msg = f"{_where(self.text, pos)}: {message}"
            self.errors.append(msg)
            if self.block is not None and not (self.block.closed and self.block.summary):
                self.block.errors.append(msg)

    def run(self) -> ParsedResponse:
        for m in TAG_RE.finditer(self.text):
            tag, pos = m.group(0), m.start()
            self.note_gap(tag, pos)
            self.after_close, self.awaiting_summary = self.awaiting_summary, False
            if self.after_close and tag != SUMMARY_OPEN:
                self.error(pos, f"{PARALLEL_CLOSE} must be followed by {SUMMARY_OPEN}, found {tag}")
            getattr(self, _HANDLERS[tag])(pos, m.end())
            self.last_end = m.end()
        self.finish()
        if self.n_errors > MAX_ERRORS:
            self.errors.append(f"... and {self.n_errors - MAX_ERRORS} more errors")
        return ParsedResponse(self.text, self.blocks, self.errors, self.stray, self.warnings)

    def note_gap(self, tag: str, pos: int) -> None:
        """Record text between the tags of a block (after <Parallel>, between paths, before <Summary>)."""
        top = self.stack[-1][0] if self.stack else None
        inside_block_tags = top == PARALLEL_OPEN or (self.awaiting_summary and tag == SUMMARY_OPEN)
        if inside_block_tags and pos > self.last_end:
            self.stray.append((self.last_end, pos))

    def open_parallel(self, pos: int, end: int) -> None:
        if self.stack:
            self.error(pos, f"{PARALLEL_OPEN} inside {self.stack[-1][0]} (blocks cannot nest)")
        self.block = Block(start=pos)
        self.blocks.append(self.block)
        self.stack.append((PARALLEL_OPEN, pos))

    def open_path(self, pos: int, end: int) -> None:
        if not self.stack or self.stack[-1][0] != PARALLEL_OPEN:
            where = self.stack[-1][0] if self.stack else "the main chain"
            self.error(pos, f"{PATH_OPEN} outside a {PARALLEL_OPEN} block (in {where})")
        self.stack.append((PATH_OPEN, end))

    def open_summary(self, pos: int, end: int) -> None:
        if self.after_close and not self.stack:
            self.stack.append((SUMMARY_OPEN, end))
        else:
            self.error(pos, f"{SUMMARY_OPEN} does not follow a {PARALLEL_CLOSE}")
            self.stack.append((SUMMARY_OPEN, -1))  # -1: an orphan summary, attached to no block

    def close(self, pos: int, end: int) -> None:
        tag = self.text[pos:end]
        opener = CLOSE_TO_OPEN[tag]
        if not any(t == opener for t, _ in self.stack):
            self.error(pos, f"{tag} closes nothing (no open {opener})")
            return
        while self.stack[-1][0] != opener:
            t, _ = self.stack.pop()
            self.error(pos, f"{tag} closes {opener} while {t} is still open")
        _, content_start = self.stack.pop()
        getattr(self, _CLOSERS[tag])(pos, end, content_start)

    def closed_path(self, pos: int, end: int, content_start: int) -> None:
        if self.stack and self.stack[-1][0] == PARALLEL_OPEN and self.block is not None:
            self.block.paths.append(Span(content_start, pos, self.text[content_start:pos]))

    def closed_parallel(self, pos: int, end: int, content_start: int) -> None:
        b = self.block
        if b is None:
            return
        b.closed, b.end = True, end
        if len(b.paths) < 2:
            self.error(pos, f"a {PARALLEL_OPEN} block needs at least 2 complete paths, found {len(b.paths)}")
        self.awaiting_summary = True

    def closed_summary(self, pos: int, end: int, content_start: int) -> None:
        b = self.block
        if content_start >= 0 and b is not None and b.summary is None:
            b.summary = Span(content_start, pos, self.text[content_start:pos])
            b.end = end

    def finish(self) -> None:
        end = len(self.text)
        if len(self.stack) == 1 and self.stack[0][0] == SUMMARY_OPEN and self.stack[0][1] >= 0:
            # The reference grammar never checks </Summary>: a response that ends inside its last
            # summary (e.g. `Final Answer:` written before `</Summary>`) is valid there and here.
            self.warnings.append(f"{_where(self.text, end)}: the last {SUMMARY_OPEN} is never closed")
            self.closed_summary(end, end, self.stack.pop()[1])
        if self.awaiting_summary:
            self.error(end, f"{PARALLEL_CLOSE} at the end is not followed by {SUMMARY_OPEN}")
        for tag, _ in reversed(self.stack):
            self.error(end, f"{tag} is never closed")


_HANDLERS = {
    PARALLEL_OPEN: "open_parallel",
    PATH_OPEN: "open_path",
    SUMMARY_OPEN: "open_summary",
    PARALLEL_CLOSE: "close",
    PATH_CLOSE: "close",
    SUMMARY_CLOSE: "close",
}
_CLOSERS = {PATH_CLOSE: "closed_path", PARALLEL_CLOSE: "closed_parallel", SUMMARY_CLOSE: "closed_summary"}


def parse(text: str) -> ParsedResponse:
    """Parse ``text`` into blocks, paths and summaries with character offsets. Never raises."""
    if not isinstance(text, str):
        raise TypeError(f"parse() expects str, got {type(text).__name__}")
    return _Parser(text).run()


def validate(text: str) -> list[str]:
    """Human-readable grammar errors; an empty list means the response is format-valid."""
    return parse(text).errors


def canonicalize(text: str) -> str:
    """Drop everything between the tags of a block, so that ``<Parallel><Path>`` etc. are adjacent.

    Only the gaps are removed; path, summary and main-chain text are kept byte for byte.
    """
    parsed = parse(text)
    if not parsed.stray:
        return text
    out, prev = [], 0
    for start, end in parsed.stray:
        out.append(text[prev:start])
        prev = end
    out.append(text[prev:])
    return "".join(out)
