"""Structured ("Unseen") attention and position ids for one sequence (docs/paper.md section 5).

``structured_attention(input_ids, tag_ids) -> (mask (L, L) bool, position_ids (L,) long)`` is the
DESIGN.md contract: causal; inside a block every path (its ``<Path>`` .. ``</Path>`` tokens) is blind
to its siblings; tokens after ``</Parallel>`` see every path; ``<Parallel>`` sits at position p, each
path's ``<Path>`` at p+1 and counting up inside the path; ``</Parallel>`` one past the highest
``</Path>`` position of the block; following tokens count on from there.
``causal_attention`` has the same signature and returns the plain causal mask and 0..L-1 (Seen mode),
so callers never branch on the mode.

Where this departs from / extends the paper and the reference code:
1. Non-canonical sequences (text between the tags of a block, e.g. the newlines of the teacher
   traces): tokens between ``<Parallel>`` and the first ``<Path>`` are shared by all paths and count
   on from p, so the first ``<Path>`` sits one past them (p+1 when there are none). Tokens after a
   ``</Path>`` and before the next tag of the block belong to the path they follow (``path_regions``):
   invisible to siblings, counted on inside that path, and ``</Parallel>`` sits one past the highest
   position of any path region. On canonical sequences this is exactly the contract.
2. Malformed or truncated output follows ``find_blocks``: an unclosed path runs to the end and stays
   blind to its siblings; a block never closed has no ``</Parallel>``, so nothing sees all its paths.

Memory (dense path). The (L, L) bool mask costs L^2 bytes: 16 MiB at L=4096, 64 MiB at L=8192, and
building it needs no more (one triangle filled in place, sibling tiles cleared by slices). The batched
additive float mask a model consumes (``build_batch``) is 4 T^2 bytes per row in fp32, half in bf16.
Measured peak growth of the resident set (``ru_maxrss`` before and after one call in a fresh process,
torch 2.13 CPU, one thread, a sequence with two blocks of three paths):
    structured_attention     L=4096: 18 MiB    L=8192:  66 MiB
    build_batch (B=1, fp32)  T=4096: 84 MiB    T=8192: 324 MiB   (mask + one (T, T) bool row)
That is fine on CPU and in tests, and acceptable on a GPU up to a few thousand tokens per row. Longer
rows on a GPU use ``parallel_r1.structure.flex``: the same rule as a flex_attention ``mask_mod`` over
the per-token labels, compiled into a ``BlockMask`` (O((T/128)^2) memory; fully masked tiles, e.g.
sibling-path tiles, are skipped), with ``build_batch(..., dense_mask=False)`` so no dense mask exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from parallel_r1.structure.spans import BlockSpan, check_tag_ids, find_blocks, path_regions


@dataclass(frozen=True)
class TokenLayout:
    """Per-token labels from which every mask form (dense, batched, flex) is built.

    path: (L,) long, a path id unique within the sequence for tokens in a path region, else -1.
    block: (L,) long, the block index of tokens in a path region, else -1.
    position: (L,) long, the position id of each token.
    """

    path: torch.Tensor
    block: torch.Tensor
    position: torch.Tensor

    def __len__(self) -> int:
        return int(self.position.shape[0])


def _as_list(input_ids: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(input_ids, torch.Tensor):
        assert input_ids.dim() == 1, f"expected a 1-D id sequence, got shape {tuple(input_ids.shape)}"
        return input_ids.tolist()
    return [int(i) for i in input_ids]


def causal_layout(length: int) -> TokenLayout:
    """Seen mode: no path regions, positions 0..L-1."""
    none = torch.full((length,), -1, dtype=torch.long)
    return TokenLayout(path=none, block=none.clone(), position=torch.arange(length, dtype=torch.long))


def layout_from_blocks(blocks: Sequence[BlockSpan], length: int) -> TokenLayout:
    """Unseen mode: label path regions and compute structured positions from block spans."""
    path = torch.full((length,), -1, dtype=torch.long)
    block = torch.full((length,), -1, dtype=torch.long)
    position = torch.arange(length, dtype=torch.long)
    offset, next_path = 0, 0  # main-chain tokens sit at index + offset
    for b_idx, b in enumerate(blocks):
        regions = path_regions(b, length)
        if not regions:
            continue  # a block without paths: its tokens simply count on
        base = regions[0][0] + offset  # first <Path>: one past <Parallel> and any gap before it
        top = base - 1
        for start, end in regions:
            position[start:end] = base + torch.arange(end - start)
            path[start:end] = next_path
            block[start:end] = b_idx
            next_path += 1
            top = max(top, base + end - start - 1)
        if b.close is None:
            break  # an open block runs to the end of the sequence
        offset = top + 1 - b.close  # </Parallel> one past the highest path position
        position[b.close :] = torch.arange(b.close, length) + offset
    return TokenLayout(path=path, block=block, position=position)


def structured_layout(input_ids: Sequence[int] | torch.Tensor, tag_ids: Mapping[str, int]) -> TokenLayout:
    ids = _as_list(input_ids)
    return layout_from_blocks(find_blocks(ids, tag_ids), len(ids))


def sibling_ranges(layout: TokenLayout) -> list[list[tuple[int, int]]]:
    """Per block, the ``[start, end)`` token range of each path region (regions are contiguous)."""
    path = layout.path.tolist()
    blocks: dict[int, list[tuple[int, int]]] = {}
    start = 0
    for i in range(1, len(path) + 1):
        if i == len(path) or path[i] != path[start]:
            if path[start] >= 0:
                blocks.setdefault(int(layout.block[start]), []).append((start, i))
            start = i
    return list(blocks.values())


def block_siblings_(mask: torch.Tensor, layout: TokenLayout, offset: int = 0) -> torch.Tensor:
    """In place on a causal (T, T) mask: clear every (later path rows, earlier sibling columns) tile.

    ``offset``: column where the layout's token 0 sits (the prompt width in a batch row). Only the
    lower triangle needs clearing (the mask is causal), and slices keep the peak memory at one
    (T, T) tensor instead of several broadcast temporaries.
    """
    for regions in sibling_ranges(layout):
        for k, (qs, qe) in enumerate(regions):
            for ks, ke in regions[:k]:
                mask[offset + qs : offset + qe, offset + ks : offset + ke] = False
    return mask


def layout_mask(layout: TokenLayout) -> torch.Tensor:
    """Dense (L, L) bool mask, True where query row i may attend key column j."""
    n = len(layout)
    return block_siblings_(torch.ones(n, n, dtype=torch.bool).tril_(), layout)


def structured_attention(
    input_ids: Sequence[int] | torch.Tensor, tag_ids: Mapping[str, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """**Contract** (DESIGN.md): ``(mask (L, L) bool, position_ids (L,) long)`` for Unseen mode."""
    layout = structured_layout(input_ids, tag_ids)
    return layout_mask(layout), layout.position


def causal_attention(
    input_ids: Sequence[int] | torch.Tensor, tag_ids: Mapping[str, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seen mode with the same signature: plain causal ``(mask (L, L) bool, 0..L-1)``."""
    check_tag_ids(tag_ids)
    layout = causal_layout(len(_as_list(input_ids)))
    return layout_mask(layout), layout.position


def attention_for_mode(mode: str):
    """The single-sequence mask function for ``mode`` ("unseen" | "seen")."""
    fns = {"unseen": structured_attention, "seen": causal_attention}
    if mode not in fns:
        raise ValueError(f"mode must be one of {sorted(fns)}, got {mode!r}")
    return fns[mode]
