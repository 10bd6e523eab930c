"""A batched KV cache whose slots carry an owner, and the attention masks built from the owners.

How the engine shares the prefix between paths (the choice asked for in the engine issue):
1. One cache row per rollout. The N paths of a block do not get rows of their own: every decode step
   appends one slot per active path to the *same* row, and the attention mask hides each path from
   its siblings. The prefix is stored once and never copied or recomputed; the merged cache the
   summary needs is simply the row as it stands (attention is order-free over keys, and every key
   already carries its rotary position).
2. Each slot has an owner: -1 = padding or retired (seen mode hides the isolated path keys before
   the causal re-encode), 0 = trunk (prompt, main chain, summary, and paths of closed blocks),
   j >= 1 = path j of the open block. A query of owner 0 sees every live slot before it; a query of
   path j sees trunk slots and its own path's slots; every query also sees its own slot, so padding
   queries never get an all-masked row (an all-masked row makes NaN keys that poison later layers).
3. Slots live in preallocated buffers (batch, kv_heads, capacity, head_dim) that double when full;
   the live window is ``[start, end)``, and a leading run of slots that no row uses is dropped by
   moving ``start`` (no copy). Rows are removed or duplicated with one index_select.
The model gets these through the ordinary ``transformers`` cache protocol (``Cache.update`` per layer)
plus an explicit 4D additive mask and position ids, so any HF causal LM on ``sdpa`` or ``eager``
attention works; nothing here depends on a model family.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

PAD_OWNER = -1
TRUNK_OWNER = 0


class SlotLayer(DynamicLayer):
    """One layer's keys and values in a growable buffer; live window ``[start, end)``."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.buf_k: torch.Tensor | None = None
        self.buf_v: torch.Tensor | None = None
        self.start = 0
        self.end = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def _ensure_capacity(self, key_states: torch.Tensor, value_states: torch.Tensor, extra: int) -> None:
        need = self.end - self.start + extra
        if self.buf_k is not None and self.end + extra <= self.buf_k.shape[2]:
            return
        capacity = max(64, 2 * need)
        batch = self.buf_k.shape[0] if self.buf_k is not None else key_states.shape[0]
        _, heads, _, dim_k = key_states.shape
        new_k = key_states.new_empty((batch, heads, capacity, dim_k))
        new_v = value_states.new_empty((batch, heads, capacity, value_states.shape[-1]))
        live = self.end - self.start
        if self.buf_k is not None and live > 0:
            new_k[:, :, :live] = self.buf_k[:, :, self.start : self.end]
            new_v[:, :, :live] = self.buf_v[:, :, self.start : self.end]
        self.buf_k, self.buf_v, self.start, self.end = new_k, new_v, 0, live

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        # key_states: (R, kv_heads, Q, head_dim) for the Q slots of this step
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        q = key_states.shape[2]
        if self.buf_k is None or self.end + q > self.buf_k.shape[2]:
            self._ensure_capacity(key_states, value_states, q)
        # narrow: the same views as slicing, with less Python per call (once per layer and step)
        self.buf_k.narrow(2, self.end, q).copy_(key_states)
        self.buf_v.narrow(2, self.end, q).copy_(value_states)
        self.end += q
        self.keys = self.buf_k.narrow(2, self.start, self.end - self.start)
        self.values = self.buf_v.narrow(2, self.start, self.end - self.start)
        return self.keys, self.values

    def update_rows(self, rows: torch.Tensor, key_states: torch.Tensor, value_states: torch.Tensor):
        """``update`` for a subset of rows: their new slots get the states, every other row's new slots
        get zeros (finite: they stay masked). Returns the subset's live keys and values (a copy)."""
        q = key_states.shape[2]
        self._ensure_capacity(key_states, value_states, q)
        for buf, states in ((self.buf_k, key_states), (self.buf_v, value_states)):
            window = buf[:, :, self.end : self.end + q]
            window.zero_()
            window.index_copy_(0, rows, states)
        self.end += q
        keys, values = self.live()
        self.keys, self.values = keys, values
        return keys.index_select(0, rows), values.index_select(0, rows)

    def get_seq_length(self) -> int:
        return self.end - self.start

    def select_rows(self, index: torch.Tensor) -> None:
        if self.buf_k is None:
            return
        self.buf_k = self.buf_k[:, :, self.start : self.end].index_select(0, index)
        self.buf_v = self.buf_v[:, :, self.start : self.end].index_select(0, index)
        self.start, self.end = 0, self.buf_k.shape[2]
        self.keys, self.values = self.buf_k, self.buf_v

    def live(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.buf_k is not None, "empty cache layer"
        return self.buf_k[:, :, self.start : self.end], self.buf_v[:, :, self.start : self.end]

    def set_live(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.buf_k, self.buf_v = keys, values
        self.start, self.end = 0, keys.shape[2]
        self.keys, self.values = keys, values
        self.device = keys.device
        self.is_initialized = True


class SlotCache(Cache):
    """The engine's cache: per-layer ``SlotLayer`` plus an owner per slot, (rows, live length)."""

    def __init__(self, device: torch.device | str) -> None:
        super().__init__(layer_class_to_replicate=SlotLayer)
        self.device = torch.device(device)
        self.owners = torch.empty((0, 0), dtype=torch.int8, device=self.device)  # (R, K) live window

    @property
    def num_rows(self) -> int:
        return self.owners.shape[0]

    @property
    def length(self) -> int:
        return self.owners.shape[1]

    def append_slots(self, new_owners: torch.Tensor) -> None:
        """Register the owners of the Q slots the next forward writes. new_owners: (R, Q) int8."""
        new_owners = new_owners.to(device=self.owners.device, dtype=self.owners.dtype)
        if self.length == 0:
            self.owners = new_owners
            return
        assert new_owners.shape[0] == self.num_rows, f"{new_owners.shape[0]} rows fed, cache has {self.num_rows}"
        self.owners = torch.cat([self.owners, new_owners], dim=1)

    def attention_mask(self, query_owners: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """4D additive mask (R, 1, Q, K) for queries of the given owners written in the last Q slots."""
        return owner_mask(self.owners, query_owners, dtype)

    def remap_path_owners(self, rows: list[int], value: int) -> None:
        """Set every path-owned slot (owner >= 1) of ``rows`` to ``value`` (0 = merge, -1 = retire)."""
        if not rows:
            return
        index = torch.tensor(rows, device=self.owners.device)
        sub = self.owners.index_select(0, index)
        sub = torch.where(sub > 0, torch.full_like(sub, value), sub)
        self.owners[index] = sub

    def select_rows(self, index: list[int]) -> None:
        """Keep (or repeat) rows in the given order."""
        idx = torch.tensor(index, dtype=torch.long, device=self.owners.device)
        self.owners = self.owners.index_select(0, idx)
        for layer in self.layers:
            layer.select_rows(idx.to(layer.buf_k.device) if layer.buf_k is not None else idx)

    def trim_front(self) -> int:
        """Drop leading slots that no row uses; returns how many. Moves ``start``, copies nothing."""
        used = (self.owners >= 0).any(dim=0)  # (K,)
        if self.length == 0 or bool(used[0]):
            return 0
        first = int(torch.nonzero(used)[0]) if bool(used.any()) else self.length
        self.owners = self.owners[:, first:]
        for layer in self.layers:
            layer.start += first
            layer.keys, layer.values = layer.live()
        return first

    def dead_fraction(self) -> float:
        """Share of slots that no query will ever see (padding and retired keys)."""
        return float((self.owners < 0).float().mean()) if self.length else 0.0

    def compact(self) -> int:
        """Move every row's live slots to the right end, in order, and drop the columns that are left
        empty (padding accumulates while rows in other phases feed more tokens per step). One gather
        of the whole cache; returns the new length. Order is kept, so the causal rule between slots
        still holds; keys carry their rotary position, so moving them changes nothing else."""
        live = self.owners >= 0  # (R, K)
        counts = live.sum(dim=1)  # (R,)
        width = int(counts.max())
        # destination column of each live slot: right-aligned, in order
        dest = live.long().cumsum(dim=1) - 1 + (width - counts)[:, None]  # (R, K)
        source = torch.zeros((self.num_rows, width), dtype=torch.long, device=self.owners.device)
        rows, cols = torch.nonzero(live, as_tuple=True)
        source[rows, dest[rows, cols]] = cols
        owners = torch.full((self.num_rows, width), PAD_OWNER, dtype=self.owners.dtype, device=self.owners.device)
        owners[rows, dest[rows, cols]] = self.owners[rows, cols]
        self.owners = owners
        for layer in self.layers:
            keys, values = layer.live()
            index = source.to(keys.device)[:, None, :, None]  # (R, 1, K', 1)
            gathered_k = keys.gather(2, index.expand(-1, keys.shape[1], -1, keys.shape[3]))
            gathered_v = values.gather(2, index.expand(-1, values.shape[1], -1, values.shape[3]))
            # padding columns gathered slot 0 of their row: zero them (finite, and masked anyway)
            pad = (owners < 0).to(keys.device)[:, None, :, None]
            layer.set_live(gathered_k.masked_fill(pad, 0), gathered_v.masked_fill(pad, 0))
        return width

    def extend(self, other: SlotCache) -> None:
        """Append the rows of ``other`` below ours; the shorter side is left-padded with retired slots."""
        if self.num_rows == 0:
            self.owners, self.layers = other.owners, other.layers
            return
        length = max(self.length, other.length)
        self.owners = torch.cat([_left_pad(self.owners, length), _left_pad(other.owners, length)], dim=0)
        assert len(self.layers) == len(other.layers), "caches from different models"
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            mk, mv = mine.live()
            tk, tv = theirs.live()
            keys = torch.cat([_left_pad_kv(mk, length), _left_pad_kv(tk, length)], dim=0)
            values = torch.cat([_left_pad_kv(mv, length), _left_pad_kv(tv, length)], dim=0)
            mine.set_live(keys, values)


class _RowsLayer(DynamicLayer):
    """One layer of a ``RowsView``: writes into and reads from the parent layer's chosen rows."""

    def __init__(self, parent: SlotLayer, rows: torch.Tensor) -> None:
        super().__init__()
        self.parent, self.rows = parent, rows
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.keys, self.values = self.parent.update_rows(self.rows, key_states, value_states)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.parent.get_seq_length()


class RowsView(Cache):
    """A forward over some rows of a ``SlotCache``: the other rows get retired (owner -1, zero) slots.

    The engine uses it when one row must feed many tokens in a step (seen mode re-encodes a whole
    block) so the other rows are not padded to that width; the price is a copy of the chosen rows'
    keys and values per layer, so it is only worth it for a few long rows.
    """

    def __init__(self, parent: SlotCache, rows: list[int]) -> None:
        self.parent = parent
        self.rows = torch.tensor(rows, dtype=torch.long, device=parent.owners.device)
        super().__init__(layers=[_RowsLayer(layer, self.rows) for layer in parent.layers])

    def append_slots(self, new_owners: torch.Tensor) -> None:
        full = torch.full((self.parent.num_rows, new_owners.shape[1]), PAD_OWNER, dtype=self.parent.owners.dtype,
                          device=self.parent.owners.device)
        full[self.rows] = new_owners.to(full.device, full.dtype)
        self.parent.append_slots(full)

    def attention_mask(self, query_owners: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return owner_mask(self.parent.owners.index_select(0, self.rows), query_owners, dtype)


def _left_pad(owners: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - owners.shape[1]
    if missing == 0:
        return owners
    pad = torch.full((owners.shape[0], missing), PAD_OWNER, dtype=owners.dtype, device=owners.device)
    return torch.cat([pad, owners], dim=1)


def _left_pad_kv(states: torch.Tensor, length: int) -> torch.Tensor:
    # states: (R, H, K, D); zeros are safe: padded slots are masked for every real query
    missing = length - states.shape[2]
    if missing == 0:
        return states
    pad = states.new_zeros((states.shape[0], states.shape[1], missing, states.shape[3]))
    return torch.cat([pad, states], dim=2)


def owner_mask(key_owners: torch.Tensor, query_owners: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask from slot owners (module docstring, point 2).

    key_owners: (R, K) owners of all live slots, the last Q of which the queries write;
    query_owners: (R, Q). Returns (R, 1, Q, K) with 0 where allowed and the dtype's minimum elsewhere.
    """
    num_keys, num_queries = key_owners.shape[1], query_owners.shape[1]
    kown = key_owners[:, None, :]  # (R, 1, K)
    qown = query_owners[:, :, None].to(key_owners.dtype)  # (R, Q, 1)
    allowed = (kown == qown) | (kown == TRUNK_OWNER) | (qown == TRUNK_OWNER)  # (R, Q, K)
    allowed &= kown >= 0
    # causal order only matters among the Q new slots: every older key precedes every query
    new = allowed[:, :, num_keys - num_queries :]  # (R, Q, Q) view
    if num_queries == 1:
        new.fill_(True)  # the query's own slot
    else:
        lower = torch.ones((num_queries, num_queries), dtype=torch.bool, device=key_owners.device).tril_()
        new &= lower
        new |= torch.eye(num_queries, dtype=torch.bool, device=key_owners.device)  # own slot
    mask = torch.full(allowed.shape, torch.finfo(dtype).min, dtype=dtype, device=key_owners.device)
    mask.masked_fill_(allowed, 0.0)
    return mask[:, None]
