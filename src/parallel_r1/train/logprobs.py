"""Per-token log-probabilities (and entropies) of response tokens under a model, from one forward.

The forward takes the batch's own attention mask and position ids, so a "seen" batch is scored with
causal attention and an "unseen" one with the structured mask: the same call serves SFT, the GRPO
old-policy pass, the GRPO update and the frozen reference.

Logits are divided by the sampling temperature before the softmax (as the reference trainer does), so
at temperature != 1 the ratio compares like with like.

Only the columns from the one before the first response column on go through the LM head
(``logits_to_keep``, where the model takes it): prompts are left-padded, so for a typical RL batch
that skips the head's forward and backward over every prompt column.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from parallel_r1.train.batching import TrainBatch


def response_logprobs(
    model: torch.nn.Module,
    batch: TrainBatch,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return ``(logprobs, entropy)``, each (B, T) float32, nonzero only on response positions.

    ``logprobs[b, t] = log p(input_ids[b, t] | tokens before t)``; the entropy (no gradient) is that of
    the same next-token distribution. Only response positions go through the softmax, which keeps the
    (tokens, vocab) float32 buffer to the part that matters.
    """
    assert temperature > 0, f"temperature must be > 0, got {temperature}"
    mask = batch.response_mask
    assert not bool(mask[:, 0].any()), "a response token at position 0 has no context to be scored from"
    width = mask.shape[1]
    columns = mask.any(dim=0).nonzero()  # (n, 1) columns holding a response token in some row
    first = int(columns[0, 0]) if len(columns) else width  # first response column (>= 1)
    keep = width - first + 1  # logits of columns first-1 .. T-1
    extra = {"logits_to_keep": keep} if _takes_logits_to_keep(model) else {}
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        **extra,
    )
    target = mask[:, first:]  # (B, T-first): column t+1 >= first holds a response token
    logits = out.logits[:, -keep:][:, :-1][target].float() / temperature  # (N, V), predicting those tokens
    log_p = F.log_softmax(logits, dim=-1)  # (N, V)
    tokens = batch.input_ids[:, first:][target]  # (N,)
    token_lp = log_p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (N,)
    logprobs = _place(token_lp, mask)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = _place(-(log_p.exp() * log_p).sum(-1), mask)
    return logprobs, entropy


def _takes_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether ``model.forward`` accepts ``logits_to_keep`` (wrappers taking ``**kwargs`` pass it on)."""
    params = inspect.signature(model.forward).parameters
    return "logits_to_keep" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _place(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scatter (N,) values to the True positions of the (B, T) mask (shifted by one); differentiable."""
    b = mask.shape[0]
    body = torch.zeros(mask[:, 1:].shape, dtype=values.dtype, device=values.device)
    body = body.masked_scatter(mask[:, 1:], values)  # (B, T-1)
    first = torch.zeros((b, 1), dtype=values.dtype, device=values.device)
    return torch.cat([first, body], dim=1)  # (B, T)
