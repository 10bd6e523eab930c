"""Structured attention for long sequences on a GPU: a flex_attention ``BlockMask``.

The dense batched mask (``build_batch``) costs 4 T^2 bytes per row in fp32 (256 MiB at T=8192) and
makes sdpa fall back to its masked kernels. flex_attention takes the mask as a ``mask_mod`` predicate
over (batch, head, query, key) instead; ``create_block_mask`` evaluates it once per 128x128 tile,
stores only which tiles are full, partial or empty (O((T/128)^2) memory), and the fused kernel skips
empty tiles, so sibling paths even save compute.

The predicate reads the same per-token labels as the dense mask (``valid``, ``path``, ``block`` of a
``StructuredBatch``), so both describe one mask; tests/test_structure_flex.py checks they agree
element for element on CPU (``create_mask`` materialises a mask_mod) and, on CUDA, that a Qwen3
forward with ``attn_implementation="flex_attention"`` and this block mask matches the dense sdpa one.

Use: ``batch = build_batch(..., dense_mask=False).to("cuda")``, load the model with
``attn_implementation="flex_attention"`` and call ``model(**batch.model_inputs(flex_block_mask(batch)))``.
On CPU flex_attention runs unfused (it warns and materialises the scores); use the dense mask there.

Measured on one H200 (torch 2.11, transformers 5.17; a bf16 Qwen3-shaped model, 4 layers, hidden 512,
8 heads of 64, B=1, T=8192, two blocks of three paths): the dense bf16 mask took 128 MiB (peak
290 MiB with the forward), the compiled BlockMask 0.1 MiB (peak 130 MiB); the last-token logits agreed
to bf16 precision. A forward took 5.5 ms dense vs 11.4 ms flex at that toy size, so flex is a memory
tool here, not a speed-up; measure on the real model before choosing.
"""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

from parallel_r1.structure.batch import StructuredBatch


def structured_mask_mod(valid: torch.Tensor, path: torch.Tensor, block: torch.Tensor):
    """mask_mod(b, h, q, kv) -> bool over (B, T) labels; the same rule as the dense batched mask:
    causal, real keys only, sibling paths blind, and a pad query sees itself (no empty row)."""

    def mask_mod(b, h, q, kv):
        pq, pk = path[b, q], path[b, kv]
        sib = (pq >= 0) & (pk >= 0) & (pq != pk) & (block[b, q] == block[b, kv])
        allowed = (kv <= q) & valid[b, q] & valid[b, kv] & ~sib
        return allowed | ((q == kv) & ~valid[b, q])

    return mask_mod


def flex_block_mask(batch: StructuredBatch, block_size: int = 128) -> BlockMask:
    """A ``BlockMask`` (B, 1, T, T) for ``batch``, built on the batch's device.

    On CUDA the mask creation is compiled (``_compile=True``): uncompiled, torch evaluates the
    mask_mod over the full (B, T, T) grid with index tensors, which on an H200 took 640 MiB at
    T=8192 (more than the dense bf16 mask). The first call per shape pays the compilation.
    """
    b_size, t = batch.input_ids.shape
    mod = structured_mask_mod(batch.valid, batch.path, batch.block)
    device = batch.input_ids.device
    return create_block_mask(
        mod, b_size, None, t, t, device=device, BLOCK_SIZE=block_size, _compile=device.type == "cuda"
    )
