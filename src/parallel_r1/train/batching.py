"""Turn (prompt ids, response ids) rows into the tensors a training forward consumes.

A thin adapter over ``parallel_r1.structure.build_batch``, so that SFT and GRPO never branch on the
attention mode: "seen" gives plain causal masks and positions, "unseen" the structured ones.

It also places per-response-token values (a Rollout's loss mask, its sampling log-probs) at the
positions the batch gives to response tokens, whatever padding side the builder uses.

``shared_prefix`` finds the rows whose prompt columns are the same computation (a GRPO group's
samples), so that ``logprobs`` can compute each prompt once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from parallel_r1.structure import MODES, build_batch


@dataclass
class TrainBatch:
    """One padded batch of prompt+response rows.

    input_ids: (B, T) long; attention_mask: (B, 1, T, T) additive float mask (0 = may attend);
    position_ids: (B, T) long; response_mask: (B, T) bool, True on response tokens.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_mask: torch.Tensor
    num_tokens: int = 0  # real (non-padding) tokens, for tokens/s

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TrainBatch:
        """Move to ``device``; the additive mask takes the model's float dtype when given."""
        mask = self.attention_mask.to(device)
        if dtype is not None and dtype.is_floating_point and mask.dtype != dtype:
            # Re-derive from "blocked" rather than cast: float32's min overflows to -inf in bf16/fp16,
            # and a row of -inf gives NaN in softmax.
            mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(
                mask < 0, torch.finfo(dtype).min
            )
        return TrainBatch(
            self.input_ids.to(device),
            mask,
            self.position_ids.to(device),
            self.response_mask.to(device),
            self.num_tokens,
        )


def make_batch(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    tag_ids: Mapping[str, int],
    mode: str,
    pad_id: int,
) -> TrainBatch:
    """Build a ``TrainBatch`` for ``mode`` ("seen" | "unseen") from token id rows.

    The structure is read from each response's own ids (``find_blocks``), prompt part plain causal.
    """
    assert mode in MODES, f"mode must be one of {MODES}, got {mode!r}"
    assert len(prompts) == len(responses) > 0, "need as many prompts as responses, at least one"
    out = build_batch(prompts, responses, tag_ids=tag_ids, pad_id=pad_id, mode=mode)
    response_mask = torch.zeros(out.input_ids.shape, dtype=torch.bool)  # (B, T)
    response_mask[:, out.prompt_width :] = out.response_mask
    num_tokens = sum(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    batch = TrainBatch(out.input_ids, out.attention_mask, out.position_ids, response_mask, num_tokens)
    lengths = batch.response_mask.sum(dim=1).tolist()
    assert lengths == [len(r) for r in responses], "builder lost response tokens"
    return batch


def scatter_response(values: Sequence[Sequence[float]], response_mask: torch.Tensor) -> torch.Tensor:
    """Place row i's per-response-token ``values[i]`` at its response positions; 0 elsewhere.

    response_mask: (B, T) bool. Returns (B, T) float32. Boolean indexing walks rows, then positions, in
    order, so the k-th True of row i receives ``values[i][k]``.
    """
    counts = response_mask.sum(dim=1).tolist()
    for i, (row, n) in enumerate(zip(values, counts, strict=True)):
        assert len(row) == n, f"row {i}: {len(row)} values for {n} response tokens"
    out = torch.zeros(response_mask.shape, dtype=torch.float32)
    flat = [float(v) for row in values for v in row]
    out[response_mask.cpu()] = torch.tensor(flat, dtype=torch.float32)
    return out.to(response_mask.device)


@dataclass(frozen=True)
class SharedPrefix:
    """Rows of a ``TrainBatch`` whose first ``split`` columns are the same computation.

    Rows b and c share their prefix when columns ``[0, split)`` hold the same ids, the same positions
    and the same (split, split) mask block, and no query there sees a column >= split: then every
    layer's keys / values over those columns are equal for b and c, so they are computed once.
    rows: (U,) long, one representative row per distinct prefix (U < B);
    index: (B,) long, row b's prefix is ``rows[index[b]]``'s.
    """

    split: int
    rows: torch.Tensor
    index: torch.Tensor


def shared_prefix(batch: TrainBatch, split: int) -> SharedPrefix | None:
    """The rows' shared prefixes over columns ``[0, split)``, or None when no two rows share one
    (or the mask lets a prefix column see past ``split``, or is not an additive float mask)."""
    b = batch.input_ids.shape[0]
    mask = batch.attention_mask  # (B, 1, T, T), 0 = may attend, negative = blocked
    if split < 1 or b < 2 or not mask.dtype.is_floating_point:
        return None
    key = torch.cat([batch.input_ids[:, :split], batch.position_ids[:, :split]], dim=1)  # (B, 2 split)
    distinct, index = torch.unique(key, dim=0, return_inverse=True)
    if len(distinct) == b:
        return None
    # first row holding each distinct prefix: (U,)
    rows = torch.full((len(distinct),), b, dtype=torch.long, device=index.device)
    rows = rows.scatter_reduce(0, index, torch.arange(b, device=index.device), reduce="amin")
    block = mask[:, :, :split, :split]  # (B, 1, split, split)
    if not torch.equal(block, block[rows[index]]):  # same ids and positions, other mask: don't share
        return None
    if not bool((mask[:, :, :split, split:] < 0).all()):  # a prefix query sees a later column
        return None
    return SharedPrefix(split, rows, index)
