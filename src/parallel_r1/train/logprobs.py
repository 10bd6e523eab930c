"""Per-token log-probabilities (and entropies) of response tokens under a model.

The forward takes the batch's own attention mask and position ids, so a "seen" batch is scored with
causal attention and an "unseen" one with the structured mask: the same call serves SFT, the GRPO
old-policy pass, the GRPO update and the frozen reference.

Logits are divided by the sampling temperature before the softmax (as the reference trainer does), so
at temperature != 1 the ratio compares like with like.

Only the columns from the one before the first response column on go through the LM head
(``logits_to_keep``, where the model takes it): prompts are left-padded, so for a typical RL batch
that skips the head's forward and backward over every prompt column.

Shared prompts (GRPO's G samples of a prompt): the columns before that one (``split``) hold only
prompt tokens, plain causal, so rows with the same prompt compute the same keys and values there.
When some rows share a prompt (``batching.shared_prefix``), the forward runs in two parts: the
distinct prompts once (with gradient, returning their KV cache), then every row's remaining
columns against its prompt's keys / values, indexed out to its rows. Autograd sums each prompt's
gradient over its rows, so log-probs and gradients equal the one-forward result up to float
summation order (tests/test_logprobs_shared.py: seen and unseen, left padding, mixed prompts). It
falls back to the one forward when no two rows share a prompt (SFT), for models whose forward takes
no KV cache, and for models with sliding-window layers (their cache drops old keys).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from parallel_r1.structure.cache import (
    cache_from_tensors,
    cache_kwarg,
    cache_tensors,
    has_sliding_layers,
    output_cache,
    takes_kwarg,
)
from parallel_r1.train.batching import SharedPrefix, TrainBatch, shared_prefix


def response_logprobs(
    model: torch.nn.Module,
    batch: TrainBatch,
    temperature: float = 1.0,
    with_entropy: bool = False,
    share_prompts: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return ``(logprobs, entropy)``, each (B, T) float32, nonzero only on response positions.

    ``logprobs[b, t] = log p(input_ids[b, t] | tokens before t)``; the entropy (no gradient) is that of
    the same next-token distribution. Only response positions go through the softmax, which keeps the
    (tokens, vocab) float32 buffer to the part that matters. ``share_prompts=False`` forces the single
    forward (module docstring).
    """
    assert temperature > 0, f"temperature must be > 0, got {temperature}"
    mask = batch.response_mask
    assert not bool(mask[:, 0].any()), "a response token at position 0 has no context to be scored from"
    width = mask.shape[1]
    columns = mask.any(dim=0).nonzero()  # (n, 1) columns holding a response token in some row
    first = int(columns[0, 0]) if len(columns) else width  # first response column (>= 1)
    keep = width - first + 1  # logits of columns first-1 .. T-1
    out_logits = _tail_logits(model, batch, keep, share_prompts)  # (B, keep, V)
    target = mask[:, first:]  # (B, T-first): column t+1 >= first holds a response token
    logits, tokens = _select(out_logits[:, :-1], batch.input_ids[:, first:], target)  # (N, V), (N,)
    logits = logits.float()
    if temperature != 1.0:  # x / 1.0 == x exactly: skip the (N, V) copy and its backward
        logits = logits / temperature
    log_p = F.log_softmax(logits, dim=-1)  # (N, V)
    token_lp = log_p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (N,)
    logprobs = _place(token_lp, mask)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = _place(-(log_p.exp() * log_p).sum(-1), mask)
    return logprobs, entropy


def _tail_logits(model: torch.nn.Module, batch: TrainBatch, keep: int, share_prompts: bool) -> torch.Tensor:
    """(B, keep, V) logits of the last ``keep`` columns, through the shared-prompt path when it applies."""
    cache_arg = _cache_kwarg(model) if share_prompts else None
    shared = shared_prefix(batch, batch.input_ids.shape[1] - keep) if cache_arg is not None else None
    if shared is not None:
        return _shared_prefix_logits(model, batch, shared, keep, cache_arg)
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        **_keep_kwargs(model, keep),
    )
    return out.logits[:, -keep:]


def _shared_prefix_logits(
    model: torch.nn.Module, batch: TrainBatch, shared: SharedPrefix, keep: int, cache_arg: str
) -> torch.Tensor:
    """Two forwards: the U distinct prefixes (columns < s, s = ``shared.split``), then all B rows'
    columns >= s over the prefix keys / values indexed out to the rows. Returns (B, keep, V)."""
    s, rows = shared.split, shared.rows
    prefix = model(
        input_ids=batch.input_ids[rows, :s],  # (U, s)
        attention_mask=batch.attention_mask[rows][:, :, :s, :s],  # (U, 1, s, s)
        position_ids=batch.position_ids[rows, :s],
        use_cache=True,
        **_keep_kwargs(model, 1),  # its logits are not needed; the head runs on one column
    )
    # per layer (U, H_kv, s, D) -> (B, H_kv, s, D); the backward of the indexing sums over rows
    layers = [(_to_rows(k, shared), _to_rows(v, shared)) for k, v in cache_tensors(output_cache(prefix))]
    out = model(
        input_ids=batch.input_ids[:, s:],  # (B, T - s)
        attention_mask=batch.attention_mask[:, :, s:],  # (B, 1, T - s, T): queries >= s over all keys
        position_ids=batch.position_ids[:, s:],
        use_cache=True,
        **{cache_arg: cache_from_tensors(layers)},
        **_keep_kwargs(model, keep),
    )
    return out.logits[:, -keep:]


def _to_rows(t: torch.Tensor, shared: SharedPrefix) -> torch.Tensor:
    """(U, ...) -> (B, ...) by ``shared.index``; a view when all rows share one prefix."""
    if t.shape[0] == 1:
        return t.expand(shared.index.shape[0], *t.shape[1:])
    return t.index_select(0, shared.index)


def _keep_kwargs(model: torch.nn.Module, keep: int) -> dict:
    return {"logits_to_keep": keep} if takes_kwarg(model, "logits_to_keep") else {}


def _cache_kwarg(model: torch.nn.Module) -> str | None:
    """``structure.cache_kwarg``, or None when the model has sliding-window layers (their cache
    drops old keys, so a shared prefix cannot be reused), or when FSDP2 shards the model (the two
    forwards of the shared path share one backward, and FSDP2 frees a layer's gathered weights after
    the first backward through it: the second then finds them gone)."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        return None
    if has_sliding_layers(getattr(getattr(model, "module", model), "config", None)):
        return None
    return cache_kwarg(model)


def _select(logits: torch.Tensor, ids: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (N, V) logits and (N,) ids at the True positions of ``target`` (B, C), row-major. When every
    position is a target (responses of equal length, as in a GRPO group run to the cap) a reshape
    gives the same rows without the boolean-index copy."""
    if bool(target.all()):
        return logits.reshape(-1, logits.shape[-1]), ids.reshape(-1)
    return logits[target], ids[target]


def _place(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scatter (N,) values to the True positions of the (B, T) mask (shifted by one); differentiable."""
    b = mask.shape[0]
    body = torch.zeros(mask[:, 1:].shape, dtype=values.dtype, device=values.device)
    body = body.masked_scatter(mask[:, 1:], values)  # (B, T-1)
    first = torch.zeros((b, 1), dtype=values.dtype, device=values.device)
    return torch.cat([first, body], dim=1)  # (B, T)
