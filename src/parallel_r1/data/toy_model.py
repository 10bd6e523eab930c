"""Tiny Qwen3-shaped causal LMs for the toy world, built from a config (never downloaded).

``tiny_model_config(vocab_size, size)`` gives a ``Qwen3Config``; ``build_tiny_model(tokenizer, seed)``
builds the model with seeded fp32 weights and the tokenizer's special ids. Two sizes:

| size  | layers | hidden | heads (kv) | head dim | mlp | params (669-token vocab) |
|-------|--------|--------|------------|----------|-----|-------------------------|
| tiny  | 2      | 64     | 4 (2)      | 16       | 256 | 0.17 M                  |
| small | 4      | 128    | 4 (2)      | 32       | 512 | 1.07 M                  |

Input and output embeddings are tied (most of a tiny model's weights would otherwise be the two
vocabulary matrices). ``benchmark_train_step`` times forward + backward + AdamW on random tokens;
measured on 2 pinned cores of an otherwise idle Xeon, 32 x 128 tokens: tiny 88 ms, small 281 ms.

Departure: the paper trains Qwen3-4B-Base; the shape (RMSNorm, RoPE, GQA, SwiGLU, q/k norms) is the
same, only the sizes are toy ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM


@dataclass(frozen=True)
class TinySize:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int


SIZES = {
    "tiny": TinySize(layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16, mlp=256),
    "small": TinySize(layers=4, hidden=128, heads=4, kv_heads=2, head_dim=32, mlp=512),
}
MAX_POSITIONS = 1024  # toy prompts + responses stay well under 512 tokens


def tiny_model_config(vocab_size: int, size: str = "tiny", **special_ids: int | None) -> Qwen3Config:
    """A Qwen3 config of the named size; ``special_ids`` may set bos/eos/pad_token_id."""
    if size not in SIZES:
        raise ValueError(f"unknown tiny model size {size!r}; known: {sorted(SIZES)}")
    assert vocab_size > 0, f"vocab_size must be positive, got {vocab_size}"
    s = SIZES[size]
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=s.hidden,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        head_dim=s.head_dim,
        intermediate_size=s.mlp,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        **special_ids,
    )


def build_tiny_model(tokenizer, seed: int, size: str = "tiny") -> Qwen3ForCausalLM:
    """A freshly initialised fp32 model whose vocabulary covers ``tokenizer`` (``len(tokenizer)``)."""
    config = tiny_model_config(
        len(tokenizer),
        size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # fork_rng: seeding must not disturb the caller's global torch generator.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.float()


def benchmark_train_step(model, batch_size: int = 32, seq_len: int = 128, steps: int = 6, warmup: int = 2) -> dict:
    """Median wall time of one forward + backward + AdamW step on random tokens (a benchmark for
    reports, never a test assertion). Trains ``model`` in place: pass a throwaway copy."""
    x = torch.randint(0, model.config.vocab_size, (batch_size, seq_len))  # (B, T)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for _ in range(warmup + steps):
        t0 = time.perf_counter()
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    times = sorted(times[warmup:])
    return {
        "batch": [batch_size, seq_len],
        "threads": torch.get_num_threads(),
        "median_s": times[len(times) // 2],
        "min_s": times[0],
        "max_s": times[-1],
    }
