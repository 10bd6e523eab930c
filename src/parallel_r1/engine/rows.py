"""Per-rollout decoding state: the phase machine main -> paths -> summary -> main.

Token in, token out: a ``RowState`` receives the sampled token of each of its branches, records it,
and queues the tokens the next forward must feed (``Feed``: id, rotary position, owner, whether its
logits are sampled). It never touches tensors; the engine batches the feeds of all rows.

Rules (where the engine issue left a choice, the choice is stated here):
1. ``<Parallel>`` sampled in the main chain opens a block (at most ``max_blocks``): each of the N paths
   starts with an inserted ``<Path>`` at position p+1 (p = position of ``<Parallel>``).
2. Tags the grammar does not allow at a point are suppressed (logit -inf): in the main chain every tag
   but ``<Parallel>`` (and that one once ``max_blocks`` blocks were opened); inside a path every tag but
   ``</Path>``; inside a summary every tag but ``</Summary>``. Sequential mode suppresses nothing.
3. EOS inside a path closes that path (an inserted ``</Path>`` replaces it, the other paths go on);
   EOS inside a summary closes the summary the same way. EOS in the main chain ends the response (the
   EOS token is kept, sampled, so the policy learns to stop).
4. A path that reaches ``max_path_tokens`` sampled tokens gets an inserted ``</Path>``; a summary at
   ``max_summary_tokens`` an inserted ``</Summary>``. When every path is closed the engine inserts
   ``</Parallel><Summary>``. Inserted tokens have loss mask 0 and log-prob 0.0.
5. Unseen: ``</Parallel>`` sits one past the highest ``</Path>`` position, and the path slots join the
   trunk after that step. Seen: the isolated path keys are retired and the serialised block
   (paths in order, ``</Parallel>``, ``<Summary>``) is re-encoded causally at sequential positions.
6. ``max_new_tokens`` is a hard cap on the response length (all paths counted). A response cut inside a
   block keeps its closed paths and then its first unclosed path, which runs to the end (span
   ``close=None``); the other unclosed paths are dropped (``Rollout.dropped_paths`` keeps their ids,
   so a caller can report them). That way ``structure.find_blocks`` reads the
   response back exactly as it was generated, and the training forward conditions every kept token
   on what it was sampled from.
7. Stop strings are checked in the main chain only (stopping inside a block would leave it unclosed);
   the tokens that completed the stop string stay in the response.
8. ``compat="reference"`` samples as the reference engine does (its ``parallel_thinking_loop_v3``), to
   evaluate and serve its released checkpoints as they were trained: after the paths it inserts
   ``</Parallel>``, the tokenizer's ids of ``"\n"`` and ``<Summary>`` (loss mask 0 on all of them); the
   ``</Summary>`` of block ``max_blocks`` ends the response (finish reason ``"max_blocks"``) where
   ours suppresses ``<Parallel>`` and goes on; and unseen mode samples the summary and everything
   after it at causal positions over the serialised block (the seen re-encode of point 5), where
   ours uses the structured positions of training. The rollout keeps its mode, so training still
   reads it under the structured mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from parallel_r1.engine.sampling import DecodeContext, SamplingConfig
from parallel_r1.format.tags import (
    PARALLEL_CLOSE,
    PARALLEL_OPEN,
    PATH_CLOSE,
    PATH_OPEN,
    SUMMARY_CLOSE,
    SUMMARY_OPEN,
)
from parallel_r1.rollout import Rollout
from parallel_r1.structure.spans import BlockSpan

MAIN, PATHS, SUMMARY, DONE = "main", "paths", "summary", "done"

# Rule sets (module docstring, point 2); the engine turns each into a (V,) 0/-inf bias row.
RULE_FREE, RULE_MAIN, RULE_MAIN_NO_BLOCK, RULE_PATH, RULE_SUMMARY = range(5)


class Feed(NamedTuple):  # a tuple: built for every fed token, cheaper than a frozen dataclass
    token: int
    position: int
    owner: int  # 0 = trunk, j >= 1 = path j (kvcache module docstring)
    emit: bool  # sample this branch's next token from this query's logits


@dataclass
class TagSet:
    """Token ids of the six tags plus the EOS ids, resolved once per engine."""

    par_open: int
    par_close: int
    path_open: int
    path_close: int
    sum_open: int
    sum_close: int
    eos: frozenset[int]
    newline: tuple[int, ...] = ()  # ids of "\n", inserted after </Parallel> under compat="reference"

    @classmethod
    def from_tag_ids(cls, tag_ids: dict[str, int], eos_ids: set[int]) -> TagSet:
        missing = [t for t in (PARALLEL_OPEN, PARALLEL_CLOSE, PATH_OPEN, PATH_CLOSE, SUMMARY_OPEN, SUMMARY_CLOSE)
                   if t not in tag_ids]
        if missing:
            raise ValueError(f"tag_ids lacks {missing}; add the tags to the tokenizer first")
        return cls(tag_ids[PARALLEL_OPEN], tag_ids[PARALLEL_CLOSE], tag_ids[PATH_OPEN], tag_ids[PATH_CLOSE],
                   tag_ids[SUMMARY_OPEN], tag_ids[SUMMARY_CLOSE], frozenset(eos_ids))

    def all_tags(self) -> tuple[int, ...]:
        return (self.par_open, self.par_close, self.path_open, self.path_close, self.sum_open, self.sum_close)

    def for_compat(self, tokenizer, compat: str) -> TagSet:
        """The tags rows use: reference compat adds the ids of "\n" (point 8), encoded without special
        tokens as the reference's Qwen tokenizer does (a BOS would put a stray token into every block)."""
        if compat != "reference":
            return self
        newline = tuple(tokenizer.encode("\n", add_special_tokens=False))
        if not newline:
            raise ValueError('compat="reference" inserts "\\n" after </Parallel>, but this tokenizer '
                             'encodes "\\n" to no tokens')
        return dataclasses.replace(self, newline=newline)


def rule_bans(tags: TagSet) -> dict[int, tuple[int, ...]]:
    """The tag ids each rule set suppresses (point 2); a backend turns them into its own bias."""
    t = tags
    return {
        RULE_FREE: (),
        RULE_MAIN: (t.par_close, t.path_open, t.path_close, t.sum_open, t.sum_close),
        RULE_MAIN_NO_BLOCK: t.all_tags(),
        RULE_PATH: tuple(x for x in t.all_tags() if x != t.path_close),
        RULE_SUMMARY: tuple(x for x in t.all_tags() if x != t.sum_close),
    }


def stop_checker(tokenizer, stop: Sequence[str]) -> Callable[[list[int]], bool] | None:
    """A test of the main chain's ids so far for any of the ``stop`` strings (point 7), or None."""
    if not stop:
        return None
    window = max(len(s) for s in stop) + 4  # tokens; every token decodes to >= 1 char or less

    def hit(ids: list[int]) -> bool:
        tail = tokenizer.decode(ids[-window:], skip_special_tokens=False)
        return any(s in tail for s in stop)

    return hit


@dataclass
class Branch:
    """Tokens of one path (or of the response), with their loss mask and log-probs."""

    ids: list[int] = field(default_factory=list)
    loss: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    next_pos: int = 0
    sampled: int = 0  # tokens sampled inside this path or summary (tags not counted)
    closed: bool = False

    def add(self, token: int, sampled: bool, logprob: float = 0.0) -> None:
        self.ids.append(token)
        self.loss.append(1 if sampled else 0)
        self.logprobs.append(logprob if sampled else 0.0)


class RowState:
    """Decoding state of one rollout (one prompt, one sample)."""

    def __init__(self, prompt_ids: list[int], prompt_index: int, sample_index: int,
                 config: SamplingConfig, tags: TagSet, stop_checker=None) -> None:
        self.prompt_ids = list(prompt_ids)
        self.prompt_index, self.sample_index = prompt_index, sample_index
        self.config, self.tags, self.stop_checker = config, tags, stop_checker
        self.reference = config.compat == "reference"  # point 8
        # inserted after the paths: </Parallel> [ids of "\n" in reference compat] <Summary>
        self.block_tail = (tags.par_close, *(tags.newline if self.reference else ()), tags.sum_open)
        self.phase = MAIN
        self.out = Branch(next_pos=len(prompt_ids))  # the serialised response
        self.paths: list[Branch] = []
        self.blocks: list[BlockSpan] = []
        self.block_pos = 0  # rotary position of the open block's <Parallel>
        self.summary = Branch()  # counts summary tokens only; ids live in self.out
        self.pending: list[Feed] = []
        self.remap_before: int | None = None  # owner value for path slots before the next forward
        self.remap_after: int | None = None  # ... and after it
        self.finish_reason = ""
        self.cut_phase = ""  # phase the row was in when it finished

    # ---- queries ----------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.phase == DONE

    @property
    def num_generated(self) -> int:
        return len(self.out.ids) + sum(len(p.ids) for p in self.paths)

    def room(self) -> int:
        return self.config.max_new_tokens - self.num_generated

    def rule(self, branch: int) -> int:
        if self.config.mode == "sequential":
            return RULE_FREE
        if branch > 0:
            return RULE_PATH
        if self.phase == SUMMARY:
            return RULE_SUMMARY
        return RULE_MAIN if len(self.blocks) < self.config.max_blocks else RULE_MAIN_NO_BLOCK

    def context(self, branch: int) -> DecodeContext:
        phase = "path" if branch > 0 else ("summary" if self.phase == SUMMARY else "main")
        tokens = self.paths[branch - 1].ids if branch > 0 else self.out.ids
        return DecodeContext(self.prompt_index, self.sample_index, phase, branch - 1 if branch > 0 else None,
                             len(self.blocks) - 1, tokens, self.num_generated)

    def take_pending(self) -> list[Feed]:
        feeds, self.pending = self.pending, []
        return feeds

    # ---- transitions --------------------------------------------------------------------------
    def finish(self, reason: str) -> None:
        self.finish_reason = reason
        self.cut_phase = self.phase
        self.phase = DONE
        self.pending = []

    def on_sample(self, branch: int, token: int, logprob: float) -> None:
        """Record the token sampled for ``branch`` (0 = main chain or summary, j = path j)."""
        if self.done:
            return  # the budget ran out on an earlier branch of this step
        if branch > 0:
            self._on_path_token(branch, token, logprob)
        elif self.phase == SUMMARY:
            self._on_summary_token(token, logprob)
        else:
            assert self.phase == MAIN, f"trunk sample in phase {self.phase}"
            self._on_main_token(token, logprob)

    def end_step(self) -> None:
        """Called once per step after every sample: closes the block when all its paths closed."""
        if self.phase == PATHS and all(p.closed for p in self.paths):
            self._close_block()

    def _feed(self, token: int, owner: int, emit: bool, branch: Branch) -> None:
        self.pending.append(Feed(token, branch.next_pos, owner, emit))
        branch.next_pos += 1

    def _on_main_token(self, token: int, logprob: float) -> None:
        self.out.add(token, True, logprob)
        if token in self.tags.eos:
            return self.finish("eos")
        branching = self.config.mode != "sequential"
        if branching and token == self.tags.par_open:
            assert len(self.blocks) < self.config.max_blocks, "<Parallel> past max_blocks was not suppressed"
            return self._open_block()
        if self.stop_checker is not None and self.stop_checker(self.out.ids):
            return self.finish("stop")
        if self.room() <= 0:
            return self.finish("length")
        self._feed(token, 0, True, self.out)

    def _open_block(self) -> None:
        self.blocks.append(BlockSpan(parallel=len(self.out.ids) - 1))
        if self.room() <= 0:
            return self.finish("length")
        self.block_pos = self.out.next_pos
        self._feed(self.tags.par_open, 0, False, self.out)
        self.paths = []
        self.phase = PATHS
        for j in range(1, self.config.num_paths + 1):
            path = Branch(next_pos=self.block_pos + 1)
            self.paths.append(path)
            path.add(self.tags.path_open, sampled=False)
            self._feed(self.tags.path_open, j, True, path)
            if self.room() <= 0:
                return self.finish("length")

    def _on_path_token(self, j: int, token: int, logprob: float) -> None:
        path = self.paths[j - 1]
        assert not path.closed, f"sample for closed path {j}"
        if token == self.tags.path_close or token in self.tags.eos:
            # point 3: EOS inside a path is replaced by an inserted </Path>
            path.add(self.tags.path_close, token == self.tags.path_close, logprob)
            return self._close_path(j)
        path.add(token, True, logprob)
        path.sampled += 1
        if self.room() <= 0:
            return self.finish("length")
        at_cap = path.sampled >= self.config.max_path_tokens
        self._feed(token, j, not at_cap, path)
        if at_cap:
            path.add(self.tags.path_close, sampled=False)
            self._close_path(j)

    def _close_path(self, j: int) -> None:
        path = self.paths[j - 1]
        path.closed = True
        if self.config.mode == "unseen":
            self._feed(self.tags.path_close, j, False, path)  # its key is needed by the summary
        if self.room() <= 0:
            self.finish("length")

    def _close_block(self) -> None:
        block = self.blocks[-1]
        for path in self.paths:
            start = len(self.out.ids)
            self.out.ids += path.ids
            self.out.loss += path.loss
            self.out.logprobs += path.logprobs
            block.paths.append((start, len(self.out.ids)))
        longest = max(len(p.ids) for p in self.paths)
        self.paths = []
        block.close = len(self.out.ids)
        for token in self.block_tail:
            self.out.add(token, sampled=False)
            if token == self.tags.sum_open:
                block.summary = (len(self.out.ids) - 1, len(self.out.ids))  # grows until </Summary>
            if self.room() <= 0:
                return self.finish("length")
        self.phase = SUMMARY
        self.summary = Branch()
        if self.config.mode == "unseen" and not self.reference:
            self.out.next_pos = self.block_pos + longest + 1  # one past the highest </Path>
            self._feed(self.tags.par_close, 0, False, self.out)
            self._feed(self.tags.sum_open, 0, True, self.out)
            self.remap_after = 0  # the paths join the trunk once their last tokens are written
        else:  # seen (or reference compat, point 8): retire the isolated keys, re-encode the block causally
            self.pending = [f for f in self.pending if f.owner == 0]
            self.remap_before = -1
            self.out.next_pos = self.block_pos + 1
            tail = self.out.ids[block.parallel + 1 :]
            for i, token in enumerate(tail):
                self._feed(token, 0, i == len(tail) - 1, self.out)

    def _on_summary_token(self, token: int, logprob: float) -> None:
        if token == self.tags.sum_close or token in self.tags.eos:
            self.out.add(self.tags.sum_close, token == self.tags.sum_close, logprob)
            return self._close_summary()
        self.out.add(token, True, logprob)
        self.summary.sampled += 1
        if self.room() <= 0:
            return self.finish("length")
        cap = self.config.max_summary_tokens
        at_cap = cap is not None and self.summary.sampled >= cap
        self._feed(token, 0, not at_cap, self.out)
        if at_cap:
            self.out.add(self.tags.sum_close, sampled=False)
            self._close_summary()

    def _close_summary(self) -> None:
        block = self.blocks[-1]
        block.summary = (block.summary[0], len(self.out.ids))
        if self.reference and len(self.blocks) >= self.config.max_blocks:
            return self.finish("max_blocks")  # point 8; checked first: the response is whole, not cut
        if self.room() <= 0:
            return self.finish("length")
        self.phase = MAIN
        self._feed(self.tags.sum_close, 0, True, self.out)

    # ---- output -------------------------------------------------------------------------------
    def to_rollout(self, tokenizer, find_blocks=None) -> Rollout:
        assert self.done, "rollout of an unfinished row"
        ids, loss, logprobs = list(self.out.ids), list(self.out.loss), list(self.out.logprobs)
        blocks = [BlockSpan(b.parallel, list(b.paths), b.close, b.summary) for b in self.blocks]
        unclosed = [p for p in self.paths if not p.closed]
        if self.paths:  # cut inside a block (point 6)
            kept = [p for p in self.paths if p.closed] + unclosed[:1]
            for path in kept:
                blocks[-1].paths.append((len(ids), len(ids) + len(path.ids)))
                ids += path.ids
                loss += path.loss
                logprobs += path.logprobs
        if self.cut_phase == SUMMARY:  # cut inside a summary: it runs to the end
            blocks[-1].summary = (blocks[-1].summary[0], len(ids))
        if self.config.mode == "sequential":
            blocks = find_blocks(ids) if find_blocks is not None else []
            critical = len(ids)
        else:
            critical = len(ids) - sum(e - s for b in blocks for s, e in b.paths)
            critical += sum(max((e - s for s, e in b.paths), default=0) for b in blocks)
        text_ids = ids[:-1] if ids and ids[-1] in self.tags.eos else ids
        return Rollout(
            prompt_ids=list(self.prompt_ids), response_ids=ids, loss_mask=loss, logprobs=logprobs,
            text=tokenizer.decode(text_ids, skip_special_tokens=False), blocks=blocks,
            prompt_index=self.prompt_index, sample_index=self.sample_index,
            finish_reason=self.finish_reason, critical_path_tokens=critical, mode=self.config.mode,
            dropped_paths=[list(p.ids) for p in unclosed[1:]],
        )
