"""The paper's inference loop as rounds of batched requests, driving the rows' phase machine.

The vLLM backend (``vllm_backend``) cannot fork a KV cache mid-sequence, so a rollout advances in
rounds instead of steps: each round every unfinished rollout submits the request(s) of its phase,
all rollouts' requests go to the engine as one batch, and the sampled tokens are handed back to the
same ``rows.RowState`` the branching engine uses, token by token. The tag rules, budgets, inserted
tags, loss masks, block spans and finish reasons are therefore the branching engine's own.

1. Main chain (and sequential mode): prompt + response so far; stops at EOS and, while blocks may
   still open, at ``<Parallel>``. A summary: the same ids (they end in ``<Summary>``); stops at
   ``</Summary>`` or EOS.
2. A block: one request per path, prompt + response so far (ending in ``<Parallel>``) + the path's
   ``<Path>``; stops at ``</Path>`` or EOS. The paths share that prefix, which the engine's prefix
   cache serves instead of recomputing it. Each path sees only the prefix, at the positions
   training gives it, in every mode.
3. Paths are handed back interleaved, one token of each open path per step, as the branching engine
   samples them, so a length cut inside a block (``max_new_tokens``) falls where it would there.
4. ``max_tokens`` of a request is what its budgets leave: the response's room, a path's
   ``max_path_tokens``, a summary's ``max_summary_tokens``. Tags the grammar forbids in a phase
   (rows module docstring, point 2) are given a bias of ``BAN_BIAS``; a forbidden tag that still
   comes back fails loud.
5. Seeds: each request's seed is derived from (``config.seed``, prompt, sample, branch, tokens
   generated so far, blocks so far), so a seeded call repeats request by request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from parallel_r1.engine.rows import PATHS, RULE_MAIN, RULE_PATH, RULE_SUMMARY, RowState, rule_bans

BAN_BIAS = -100.0  # the most negative logit bias vLLM accepts (SamplingParams clamps to [-100, 100])


@dataclass(frozen=True)
class Request:
    """One generation request of one rollout branch (0 = main chain or summary, j = path j)."""

    row: int  # index into the round's rows
    branch: int
    ids: list[int]  # prompt + response so far [+ the path's own ids]
    stop_ids: tuple[int, ...]
    banned: tuple[int, ...]
    max_tokens: int
    seed: int


class Completion:
    """What the engine returned for one request: sampled ids and their log-probs, same length."""

    __slots__ = ("ids", "logprobs")

    def __init__(self, ids: Sequence[int], logprobs: Sequence[float]) -> None:
        assert len(ids) == len(logprobs), f"{len(ids)} ids but {len(logprobs)} log-probs"
        self.ids, self.logprobs = list(ids), list(logprobs)


# a batch of requests -> one completion per request, in order
Submit = Callable[[list[Request]], list[Completion]]


def request_seed(row: RowState, branch: int) -> int:
    """A seed fixed by the call's seed and where this request starts (module docstring, point 5)."""
    key = (row.config.seed, row.prompt_index, row.sample_index, branch, row.num_generated, len(row.blocks))
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # < 2**63


def row_requests(row: RowState, index: int) -> list[Request]:
    """The requests ``row`` needs this round: one per open path in a block, else one."""
    tags, cfg, bans = row.tags, row.config, rule_bans(row.tags)
    eos = tuple(sorted(tags.eos))
    room = row.room()
    if row.phase == PATHS:
        cut = bans[RULE_PATH]
        return [Request(index, j, row.prompt_ids + row.out.ids + path.ids, (*eos, tags.path_close), cut,
                        min(room, cfg.max_path_tokens - path.sampled), request_seed(row, j))
                for j, path in enumerate(row.paths, start=1) if not path.closed]
    rule = row.rule(0)
    stops, budget = eos, room
    if rule == RULE_MAIN:
        stops = (*eos, tags.par_open)
    elif rule == RULE_SUMMARY:
        stops = (*eos, tags.sum_close)
        if cfg.max_summary_tokens is not None:
            budget = min(room, cfg.max_summary_tokens - row.summary.sampled)
    return [Request(index, 0, row.prompt_ids + row.out.ids, stops, bans[rule], budget, request_seed(row, 0))]


def feed(row: RowState, done: dict[int, Completion], banned: dict[int, tuple[int, ...]]) -> None:
    """Hand the round's completions to ``row``: interleaved one step per token (point 3)."""
    for branch, completion in done.items():
        bad = set(completion.ids) & set(banned[branch])
        assert not bad, f"the engine returned tag ids {sorted(bad)} that branch {branch} must not produce"
    longest = max(len(c.ids) for c in done.values())
    for t in range(longest):
        for branch, completion in done.items():
            if t < len(completion.ids):
                row.on_sample(branch, completion.ids[t], completion.logprobs[t])
        row.end_step()
        row.take_pending()  # the branching engine's KV feeds: nothing to do with them here
        if row.done:
            return


def run_rounds(rows: list[RowState], submit: Submit) -> None:
    """Advance every row to its end, one batched ``submit`` per round."""
    while live := [i for i, row in enumerate(rows) if not row.done]:
        requests = [q for i in live for q in row_requests(rows[i], i)]
        assert all(q.max_tokens >= 1 for q in requests), "a request with no budget left"
        completions = submit(requests)
        assert len(completions) == len(requests), "the engine lost requests"
        if not any(c.ids for c in completions):
            raise RuntimeError("the engine returned no tokens for any request: the loop would not advance")
        per_row: dict[int, dict[int, Completion]] = {}
        bans: dict[int, dict[int, tuple[int, ...]]] = {}
        for q, c in zip(requests, completions, strict=True):
            per_row.setdefault(q.row, {})[q.branch] = c
            bans.setdefault(q.row, {})[q.branch] = q.banned
        for i, done in per_row.items():
            feed(rows[i], dict(sorted(done.items())), bans[i])
