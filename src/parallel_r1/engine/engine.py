"""``Engine``: batched branching generation on any Hugging Face causal LM (CPU or GPU).

1. Token in, token out: ``generate(prompts, num_samples, config)`` takes prompt ids and returns one
   ``Rollout`` per (prompt, sample) with response ids, loss mask, sampling log-probs, block spans and
   the critical-path length. Text is decoded once at the end, for the record.
2. All live rollouts advance together: each step every row contributes the tokens it must feed
   (1 in the main chain or a summary, one per active path in a block, a few more where tags are
   inserted); rows are right-aligned into one (R, Q) batch with padding queries, and one forward
   with a 4D mask and explicit position ids serves main chains, paths and summaries alike. Per-row
   caches were the alternative: they need a forward per phase group, which costs more than the
   padding on CPU where one forward's fixed overhead dominates a small model. The exception is a
   row that feeds many tokens at once (seen mode re-encodes a whole block): it runs in a forward of
   its own over a view of its cache rows, so the others are not padded to its width.
3. Paths share their row's prefix keys through the mask (see ``kvcache``): nothing is copied or
   recomputed at a fork. Samples of one prompt share one prefill (the cache row is then repeated).
4. At most ``max_batch_size`` rows run at once; finished rows are dropped after each step and waiting
   rollouts are prefilled in groups and appended to the running batch. Padding slots pile up while
   rows feed different numbers of tokens; when they pass ``compact_above`` of the cache it is
   re-packed (one gather).
5. Seeded sampling draws from one generator for the whole call (one uniform per sampled token), so
   it repeats exactly for the same prompts, config and engine settings (``max_batch_size`` and
   ``prefill_tokens`` change the order of draws); greedy decoding does not depend on batching.
6. Differences from the reference engine (docs/paper.md section 5): it sends one request per path and
   recomputes the prefix for each; it samples Unseen models at causal positions. Here unseen mode
   samples at the structured positions the model is trained with, so sampling log-probs equal the
   training forward's. ``SamplingConfig(compat="reference")`` samples as the reference does instead
   (``rows`` module docstring, point 8), for its released checkpoints.
7. Llama-family models (Llama, Mistral, Qwen2, Qwen3) run through ``decoder.LeanPlan``: the same
   tensor operations as their own ``forward`` without its per-call wrapping, so the same logits at
   less fixed cost per step; any other model, or one with hooks or patched modules, runs its own
   ``forward`` (``Engine.forward_path`` says which and why).
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence

import torch

from parallel_r1.engine.backend import BackendInfo
from parallel_r1.engine.decoder import lean_plan
from parallel_r1.engine.kvcache import PAD_OWNER, RowsView, SlotCache
from parallel_r1.engine.rows import (
    RULE_FREE,
    Feed,
    RowState,
    TagSet,
    rule_bans,
    stop_checker,
)
from parallel_r1.engine.sampling import (
    LogitsProcessor,
    SamplingConfig,
    assert_alive,
    make_generator,
    sample_tokens,
)
from parallel_r1.rollout import Rollout
from parallel_r1.structure.cache import cache_kwarg, takes_kwarg

SUPPORTED_ATTENTION = ("sdpa", "eager")
LONG_FEED = 16  # a row feeding more tokens than this in one step gets a forward of its own
PREFILL_TOKENS = 16384  # padded prompt tokens per prefill forward (bounds the (U, 1, L, L) mask)
COMPACT_EVERY = 32  # steps between checks of the cache's dead (padding) share


class Engine:
    """Branching generator bound to one model and tokenizer (the tokenizer must have the six tags).

    tag_ids: tag -> id (default: read from the tokenizer); max_batch_size: rows decoded at once;
    eos_token_ids: default from the generation config and tokenizer; prefill_tokens: padded prompt
    tokens per prefill forward; compact_above: share of dead (padding) cache slots above which the
    cache is re-packed (checked every ``COMPACT_EVERY`` steps); lean: run Llama-family models through
    ``decoder.LeanPlan`` (same logits, less fixed cost per step) where they allow it, else their forward.
    """

    def __init__(self, model, tokenizer, tag_ids: dict[str, int] | None = None,
                 max_batch_size: int = 64, eos_token_ids: Sequence[int] | None = None,
                 prefill_tokens: int = PREFILL_TOKENS, compact_above: float = 0.5, lean: bool = True) -> None:
        attn = getattr(model.config, "_attn_implementation", None)
        if attn not in SUPPORTED_ATTENTION:
            raise ValueError(f"Engine needs attention in {SUPPORTED_ATTENTION} (custom 4D masks), got {attn!r}; "
                             "load the model with attn_implementation='sdpa'")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model, self.tokenizer, self.max_batch_size = model, tokenizer, max_batch_size
        self.prefill_tokens, self.compact_above = prefill_tokens, compact_above
        if tag_ids is None:
            from parallel_r1.structure import tag_ids as lookup_tag_ids

            tag_ids = lookup_tag_ids(tokenizer)
        self.tag_ids = dict(tag_ids)
        eos = set(eos_token_ids) if eos_token_ids is not None else eos_ids(model, tokenizer)
        self.tags = TagSet.from_tag_ids(self.tag_ids, eos)
        head = model.get_output_embeddings()
        self.vocab_size = head.weight.shape[0] if head is not None else model.config.vocab_size  # logits width
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._cache_kwarg = cache_kwarg(model)
        assert self._cache_kwarg is not None, f"{type(model).__name__}.forward takes no KV cache"
        self._has_logits_to_keep = takes_kwarg(model, "logits_to_keep")
        self.lean, self._plan = lean, None

    @property
    def forward_path(self) -> str:
        """Which forward ``generate`` runs: "lean", or "model" with the reason."""
        if not self.lean:
            return "model (lean=False)"
        plan, why = lean_plan(self.model)
        return "lean" if plan is not None else f"model ({why})"

    # ---- rollout-backend protocol (engine.backend) ----------------------------------------------
    shares_policy = True  # decodes with the trainer's live tensors: an optimizer step is seen at once
    supports_logits_processors = True  # generate(..., logits_processors=...): serve's per-step observer

    @property
    def info(self) -> BackendInfo:
        return BackendInfo(name="hf", forward_path=self.forward_path, device=str(self.device))

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """No-op: the engine reads the policy's own tensors (the iterator is not consumed)."""

    def close(self) -> None:
        self._plan = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ---- public ---------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], num_samples: int = 1,
                 config: SamplingConfig | None = None,
                 logits_processors: Sequence[LogitsProcessor] = ()) -> list[Rollout]:
        """Sample ``num_samples`` responses per prompt; rollouts ordered by (prompt, sample)."""
        config = config or SamplingConfig()
        config.validate()
        tags = self._row_tags(config)
        self._check_prompts(prompts, num_samples)
        was_training = self.model.training
        self.model.eval()
        # read once per call: ``device`` walks the module tree, too slow for every step; the plan is
        # rebuilt per call so hooks or modules swapped in between calls are seen
        self._run_device, self._run_dtype = self.device, self.dtype
        self._plan = lean_plan(self.model)[0] if self.lean else None
        try:
            with torch.inference_mode():
                rows = self._run(prompts, num_samples, config, list(logits_processors), tags)
        finally:
            self.model.train(was_training)
        find_blocks = self._find_blocks if config.mode == "sequential" else None
        rollouts = [row.to_rollout(self.tokenizer, find_blocks) for row in rows]
        return sorted(rollouts, key=lambda r: (r.prompt_index, r.sample_index))

    # ---- loop -----------------------------------------------------------------------------------
    def _run(self, prompts, num_samples, config, processors, tags: TagSet) -> list[RowState]:
        waiting = deque(RowState(list(prompts[i]), i, s, config, tags, self._stop_checker(config))
                        for i in range(len(prompts)) for s in range(num_samples))
        generator = make_generator(config.seed, self._run_device)
        rule_bias = self._rule_bias(config)
        cache, rows, finished = SlotCache(self._run_device), [], []
        sample = _Sampler(config, generator, rule_bias, processors)
        steps = 0
        while waiting or rows:
            steps += 1
            if steps % COMPACT_EVERY == 0 and rows and cache.dead_fraction() > self.compact_above:
                cache.compact()  # padding from rows in other phases (kvcache.SlotCache.compact)
            free = self.max_batch_size - len(rows)
            if waiting and free >= min(len(waiting), max(1, self.max_batch_size // 4)):
                group = [waiting.popleft() for _ in range(min(free, len(waiting)))]
                cache.extend(self._prefill(group, sample))
                rows += group
            else:
                self._step(rows, cache, sample)
            keep = [i for i, row in enumerate(rows) if not row.done]
            finished += [row for row in rows if row.done]
            if len(keep) < len(rows):
                rows = [rows[i] for i in keep]
                if rows:
                    cache.select_rows(keep)
                    cache.trim_front()
                else:
                    cache = SlotCache(self._run_device)
        return finished

    def _prefill(self, group: list[RowState], sample: _Sampler) -> SlotCache:
        """Encode the distinct prompts of ``group`` (left-padded, in chunks of at most ``prefill_tokens``
        padded tokens), repeat the cache rows per sample, and sample every row's first token."""
        unique: dict[tuple[int, ...], int] = {}
        for row in group:
            unique.setdefault(tuple(row.prompt_ids), len(unique))
        cache, logits = SlotCache(self._run_device), []
        for chunk in _chunks(list(unique), self.prefill_tokens):
            part = SlotCache(self._run_device)
            feeds = [[Feed(t, i, 0, i == len(p) - 1) for i, t in enumerate(p)] for p in chunk]
            # no padding: let the model build its own causal mask (sdpa's causal kernel is faster)
            causal = len({len(p) for p in chunk}) == 1
            logits.append(self._forward(feeds, part, causal)[0])  # (len(chunk), V): one emit per prompt
            cache.extend(part)
        index = [unique[tuple(row.prompt_ids)] for row in group]
        cache.select_rows(index)
        rows_logits = torch.cat(logits)[torch.tensor(index, device=self._run_device)]  # (len(group), V)
        sample(rows_logits, group, [(r, 0) for r in range(len(group))], [row.rule(0) for row in group])
        return cache

    def _step(self, rows: list[RowState], cache: SlotCache, sample: _Sampler) -> None:
        feeds = [row.take_pending() for row in rows]
        assert all(feeds), "a live row has nothing to feed"
        before = [r for r, row in enumerate(rows) if row.remap_before is not None]
        for value in {rows[r].remap_before for r in before}:
            cache.remap_path_owners([r for r in before if rows[r].remap_before == value], value)
        logits, emits = self._forward_split(feeds, cache)
        after = [r for r, row in enumerate(rows) if row.remap_after is not None]
        for value in {rows[r].remap_after for r in after}:
            cache.remap_path_owners([r for r in after if rows[r].remap_after == value], value)
        for row in rows:
            row.remap_before = row.remap_after = None
        targets = [(r, owner) for r, _, owner in emits]
        sample(logits, rows, targets, [rows[r].rule(owner) for r, owner in targets])
        for row in rows:
            row.end_step()

    def _forward_split(self, feeds: list[list[Feed]], cache: SlotCache):
        """Rows feeding more than ``LONG_FEED`` tokens (a seen-mode re-encode) run in a forward of their
        own, so the other rows are not padded to their width (module docstring, point 2)."""
        long = [r for r, f in enumerate(feeds) if len(f) > LONG_FEED]
        if not long or len(long) == len(feeds):
            return self._forward(feeds, cache)
        long_logits, long_emits = self._forward([feeds[r] for r in long], RowsView(cache, long))
        rest = set(long)
        logits, emits = self._forward([[] if r in rest else f for r, f in enumerate(feeds)], cache)
        emits = [(long[i], q, owner) for i, q, owner in long_emits] + emits
        return torch.cat([long_logits, logits]), emits

    def _forward(self, feeds: list[list[Feed]], cache: SlotCache | RowsView, causal: bool = False):
        """One model forward over right-aligned feeds. Returns ((n, V) logits of emitting queries, emits).
        ``causal``: the cache is empty and nothing is padded, so the model's own causal mask is exact."""
        width = max(len(f) for f in feeds)
        ids = [[self.pad_id] * width for _ in feeds]
        pos = [[0] * width for _ in feeds]
        own = [[PAD_OWNER] * width for _ in feeds]
        emits = []  # (row, query column, owner)
        for r, row_feeds in enumerate(feeds):
            offset = width - len(row_feeds)
            for i, feed in enumerate(row_feeds):
                ids[r][offset + i], pos[r][offset + i], own[r][offset + i] = feed.token, feed.position, feed.owner
                if feed.emit:
                    emits.append((r, offset + i, feed.owner))
        device = self._run_device
        grid = torch.tensor([ids, pos, own], device=device)  # (3, R, Q): one host-to-device copy
        owners = grid[2].to(torch.int8)  # (R, Q)
        cache.append_slots(owners)
        assert not causal or cache.length == width, "the causal shortcut needs an empty cache"
        mask = None if causal else cache.attention_mask(owners, self._run_dtype)  # (R, 1, Q, K)
        keep = width - min(q for _, q, _ in emits)
        with _masked_gqa(mask is not None and width > 1 and device.type == "cpu"):
            logits = self._model_forward(grid[0], grid[1], mask, cache, keep)  # (R, keep, V)
        if keep == 1 and len(emits) == len(feeds):  # every row emits from its last query, rows in order
            return logits[:, 0], emits
        rows_idx = torch.tensor([r for r, _, _ in emits], device=device)
        cols_idx = torch.tensor([q - (width - keep) for _, q, _ in emits], device=device)
        return logits[rows_idx, cols_idx], emits

    def _model_forward(self, ids, positions, mask, cache, keep: int) -> torch.Tensor:
        if self._plan is not None:
            return self._plan(ids, positions, mask, cache, keep)
        kwargs = {self._cache_kwarg: cache, "use_cache": True}
        if self._has_logits_to_keep:
            kwargs["logits_to_keep"] = keep
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        return out.logits[:, -keep:]

    # ---- helpers --------------------------------------------------------------------------------
    def _row_tags(self, config: SamplingConfig) -> TagSet:
        return self.tags.for_compat(self.tokenizer, config.compat)

    def _rule_bias(self, config: SamplingConfig) -> torch.Tensor:
        """(5, V) additive bias per rule set (rows module docstring, point 2)."""
        bias = torch.zeros((5, self.vocab_size), dtype=torch.float32, device=self.device)
        for rule, banned in rule_bans(self.tags).items():
            if banned:
                bias[rule, list(banned)] = float("-inf")
        return bias

    def _stop_checker(self, config: SamplingConfig) -> Callable[[list[int]], bool] | None:
        return stop_checker(self.tokenizer, config.stop)

    def _find_blocks(self, ids: list[int]):
        from parallel_r1.structure import find_blocks

        return find_blocks(ids, self.tag_ids)

    def _check_prompts(self, prompts, num_samples: int) -> None:
        check_prompts(prompts, num_samples, self.vocab_size)


def check_prompts(prompts, num_samples: int, vocab_size: int) -> None:
    """Fail loud on a bad ``generate`` call: no samples, an empty prompt, ids outside the vocabulary."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty")
        bad = [t for t in prompt if not (0 <= int(t) < vocab_size)]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside the vocabulary: {bad[:5]}")


class _Sampler:
    """Samples the emitting queries of one forward and hands each token to its row."""

    def __init__(self, config: SamplingConfig, generator: torch.Generator, rule_bias: torch.Tensor,
                 processors: list[LogitsProcessor]) -> None:
        self.config, self.generator, self.rule_bias, self.processors = config, generator, rule_bias, processors

    def __call__(self, logits: torch.Tensor, rows: list[RowState], targets: list[tuple[int, int]],
                 rules: list[int]) -> None:
        # logits: (n, V), one row per (row index, branch) in targets
        bias = None
        if any(r != rules[0] for r in rules):
            bias = self.rule_bias.index_select(0, torch.tensor(rules, device=self.rule_bias.device))  # (n, V)
        elif rules[0] != RULE_FREE:
            bias = self.rule_bias[rules[0] : rules[0] + 1]  # (1, V), broadcast: same sums as (n, V)
        contexts = [rows[r].context(b) for r, b in targets] if self.processors else None
        tokens, logprobs = sample_tokens(logits, bias, self.config, self.generator, self.processors, contexts,
                                         check=False)
        tokens = tokens.tolist()  # the one device sync of a step
        assert_alive(tokens)
        for (r, branch), token, logprob in zip(targets, tokens, logprobs.tolist(), strict=True):
            rows[r].on_sample(branch, token, logprob)


# transformers' sdpa path reads this on every attention call (``use_gqa_in_sdpa``)
_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextlib.contextmanager
def _masked_gqa(enabled: bool):
    """Let sdpa run grouped-query attention under our 4D mask when Q > 1 (paths, inserted tags).

    Without it, transformers repeats the K/V heads (``repeat_kv``: a copy of every layer's whole live
    cache, (R, heads, K, head_dim), per forward) because CUDA's masked GQA falls back to the math
    kernel; torch's CPU flash kernel takes masked GQA directly and returns the same bits as on the
    repeated heads (tests/test_engine_kvcache.py checks this). Only used on CPU; Q = 1 steps already
    avoid the copy (``pack_gqa``). Restores the variable's previous state.
    """
    if not enabled or os.environ.get(_FORCE_GQA) == "1":
        yield
        return
    before = os.environ.get(_FORCE_GQA)
    os.environ[_FORCE_GQA] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[_FORCE_GQA]
        else:
            os.environ[_FORCE_GQA] = before


def _chunks(prompts: list[tuple[int, ...]], budget: int) -> list[list[tuple[int, ...]]]:
    """Consecutive groups whose padded size (rows x longest) stays within ``budget`` (or one row)."""
    groups: list[list[tuple[int, ...]]] = []
    for prompt in prompts:
        group = groups[-1] if groups else None
        if group is not None and (len(group) + 1) * max(len(prompt), *map(len, group)) <= budget:
            group.append(prompt)
        else:
            groups.append([prompt])
    return groups


def eos_ids(model, tokenizer) -> set[int]:
    """EOS ids from the model's generation config and the tokenizer (fail loud when there are none)."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        ids.update([value] if isinstance(value, int) else list(value))
    if not ids:
        raise ValueError("no EOS token id found on the tokenizer or generation config; pass eos_token_ids")
    return ids
