"""The batched form a model consumes: prompt+response rows with a 4D additive mask and position ids.

``build_batch(prompts, responses, tag_ids, pad_id, mode)`` lays a batch out the way the SFT and GRPO
trainers need it:

    column:   0 ........ P-1 | P ............ P+R-1
    row b:    pad pad prompt | response ...... pad pad
              (left-padded)    (right-padded)

so response token j of every row sits at column ``P + j`` and is predicted by the logits at column
``P + j - 1``. The prompt part is plain causal with positions 0..n_prompt-1; the structure
(Unseen mode) is read from the *response only*, because a prompt may contain the tag text (the
reference prompt names every tag) and would otherwise open blocks. Response positions count on
from n_prompt. Seen mode is the same layout with a plain causal mask and positions.

The mask is additive, (B, 1, T, T), in the model's dtype: 0 where allowed, ``finfo(dtype).min``
where not. transformers 5.24 passes a 4D mask through unchanged to the ``sdpa`` and ``eager``
attention (verified in tests/test_structure_model.py); together with explicit ``position_ids`` the
model then computes exactly the structured forward. Every pad query row is allowed to see itself
only, so no softmax row is fully masked (no NaN); pad keys are invisible to real rows.
Do not call a model with structured ``position_ids`` and *no* mask: transformers then reads the
position restarts as packed sequences and builds a different mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from parallel_r1.structure.attention import TokenLayout, block_siblings_, causal_layout, layout_from_blocks
from parallel_r1.structure.spans import BlockSpan, check_tag_ids, find_blocks

MODES = ("seen", "unseen")


@dataclass(frozen=True)
class StructuredBatch:
    """A padded batch ready for ``model(**batch.model_inputs())``.

    input_ids: (B, T) long, T = prompt_width + response_width.
    attention_mask: (B, 1, T, T) additive float mask (0 allowed, dtype-min blocked); None when built
        with ``dense_mask=False`` (then pass ``flex_block_mask(batch)`` to ``model_inputs``).
    position_ids: (B, T) long (0 on pads).
    valid: (B, T) bool, True on real (non-pad) tokens.
    path: (B, T) long, path id of each response token in a path region, else -1 (see TokenLayout).
    block: (B, T) long, block index of each token in a path region, else -1.
    response_mask: (B, R) bool, True on real response tokens.
    prompt_width: P, the column where every response starts.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor
    valid: torch.Tensor
    path: torch.Tensor
    block: torch.Tensor
    response_mask: torch.Tensor
    prompt_width: int
    mode: str

    @property
    def response_width(self) -> int:
        return int(self.response_mask.shape[1])

    def model_inputs(self, attention_mask=None) -> dict:
        """Keyword arguments for a transformers causal LM; ``attention_mask`` overrides the dense mask
        (e.g. a flex_attention ``BlockMask``). A mask is required: see the module docstring."""
        mask = self.attention_mask if attention_mask is None else attention_mask
        assert mask is not None, "no mask: build with dense_mask=True or pass flex_block_mask(batch)"
        return {"input_ids": self.input_ids, "attention_mask": mask, "position_ids": self.position_ids}

    def to(self, device: torch.device | str) -> StructuredBatch:
        names = ("input_ids", "attention_mask", "position_ids", "valid", "path", "block", "response_mask")
        return replace(self, **{k: getattr(self, k).to(device) for k in names if getattr(self, k) is not None})

    def response_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, T, V) -> (B, R, V): the logits that predict each response token."""
        assert self.prompt_width >= 1, "every row needs at least one prompt token to predict the response"
        p = self.prompt_width
        return logits[:, p - 1 : p - 1 + self.response_width]

    def response_logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, T, V) -> (B, R) log-prob of each response token (0.0 on pads), computed in fp32."""
        logp = torch.log_softmax(self.response_logits(logits).float(), dim=-1)
        targets = self.input_ids[:, self.prompt_width :]
        picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, R)
        return picked.masked_fill(~self.response_mask, 0.0)

    def labels(self, loss_masks: Sequence[Sequence[int]] | None = None, ignore_index: int = -100) -> torch.Tensor:
        """(B, T) labels for a transformers causal-LM loss (which shifts them itself): the response
        token where it carries loss (``loss_masks[b][j] == 1``, all real tokens when None), else
        ``ignore_index``. Prompt tokens never carry loss."""
        keep = self.response_mask.clone()
        if loss_masks is not None:
            assert len(loss_masks) == keep.shape[0], f"{len(loss_masks)} loss masks for {keep.shape[0]} rows"
            for b, m in enumerate(loss_masks):
                n = int(keep[b].sum())
                assert len(m) == n, f"row {b}: loss mask has {len(m)} entries for {n} response tokens"
                keep[b, :n] &= torch.tensor(list(m), dtype=torch.bool, device=keep.device)
        labels = torch.full_like(self.input_ids, ignore_index)
        labels[:, self.prompt_width :] = self.input_ids[:, self.prompt_width :].masked_fill(~keep, ignore_index)
        return labels


def _row_layout(response: Sequence[int], mode: str, tag_ids, blocks: Sequence[BlockSpan] | None) -> TokenLayout:
    if mode == "seen":
        return causal_layout(len(response))
    spans = find_blocks(response, tag_ids) if blocks is None else blocks
    return layout_from_blocks(spans, len(response))


def _fill_row_mask_(out: torch.Tensor, valid: torch.Tensor, layout: TokenLayout, p_w: int) -> None:
    """Write one row's (T, T) additive mask into ``out`` from its (T,) validity and response layout.

    Causal over columns, real keys only, sibling paths blind (tiles offset by the prompt width), and
    a pad query row sees itself so that no softmax row is empty. Peak extra memory: one (T, T) bool.
    """
    t = valid.shape[0]
    allowed = torch.ones(t, t, dtype=torch.bool).tril_()
    allowed &= valid[None, :]
    allowed &= valid[:, None]
    block_siblings_(allowed, layout, offset=p_w)
    allowed.diagonal().logical_or_(~valid)
    out.zero_().masked_fill_(allowed.logical_not_(), torch.finfo(out.dtype).min)


def build_batch(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    tag_ids: Mapping[str, int],
    pad_id: int,
    mode: str = "unseen",
    dtype: torch.dtype = torch.float32,
    blocks: Sequence[Sequence[BlockSpan]] | None = None,
    dense_mask: bool = True,
) -> StructuredBatch:
    """Pad ``prompts`` (left) and ``responses`` (right) into one batch with the mask of ``mode``.

    ``blocks``: the block spans of each response when already known (e.g. ``Rollout.blocks``);
    read from the ids with ``find_blocks`` when None. ``dtype``: the model's dtype, for the mask.
    ``dense_mask=False`` skips the (B, 1, T, T) mask (long rows on a GPU: use ``flex_block_mask``).
    """
    assert mode in MODES, f"mode must be one of {MODES}, got {mode!r}"
    assert len(prompts) == len(responses) > 0, f"{len(prompts)} prompts for {len(responses)} responses"
    assert blocks is None or len(blocks) == len(responses), "one list of block spans per response"
    tag_ids = check_tag_ids(tag_ids)
    b_size = len(prompts)
    p_w, r_w = max(len(p) for p in prompts), max(len(r) for r in responses)
    t = p_w + r_w
    ids = torch.full((b_size, t), pad_id, dtype=torch.long)
    pos = torch.zeros((b_size, t), dtype=torch.long)
    valid = torch.zeros((b_size, t), dtype=torch.bool)
    path = torch.full((b_size, t), -1, dtype=torch.long)
    block = torch.full((b_size, t), -1, dtype=torch.long)
    layouts = []
    for b, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        n_p, n_r = len(prompt), len(response)
        lay = _row_layout(response, mode, tag_ids, None if blocks is None else blocks[b])
        layouts.append(lay)
        ids[b, p_w - n_p : p_w] = torch.tensor(list(prompt), dtype=torch.long)
        ids[b, p_w : p_w + n_r] = torch.tensor(list(response), dtype=torch.long)
        pos[b, p_w - n_p : p_w] = torch.arange(n_p)
        pos[b, p_w : p_w + n_r] = lay.position + n_p
        valid[b, p_w - n_p : p_w + n_r] = True
        path[b, p_w : p_w + n_r], block[b, p_w : p_w + n_r] = lay.path, lay.block
    mask = None
    if dense_mask:
        mask = torch.empty((b_size, 1, t, t), dtype=dtype)  # (B, 1, T, T), filled row by row
        for b, lay in enumerate(layouts):
            _fill_row_mask_(mask[b, 0], valid[b], lay, p_w)
    return StructuredBatch(ids, mask, pos, valid, path, block, valid[:, p_w:].clone(), p_w, mode)
