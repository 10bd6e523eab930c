"""Offline stand-ins for engine tests and benchmarks: a character tokenizer with the tags, random Qwen3s.

1. ``char_tokenizer(vocab_size)``: one token per character (a-z, digits, a little punctuation), the
   special ``<pad>`` / ``<eos>`` / ``<unk>``, filler tokens ``<tN>`` up to ``vocab_size`` (so a random
   model with a realistic vocabulary can still be decoded), and the six tags as special tokens last.
2. ``Script``: a logits processor that boosts chosen tokens when a condition on the decode context
   holds and bans others everywhere, so tests and benchmarks get trajectories of a fixed shape from
   a random model (the engine's tag rules still apply after it).
3. ``random_qwen3(vocab_size, size)``: a randomly initialised ``Qwen3ForCausalLM`` from a config;
   "tiny" for tests, "small" (a few M parameters) for CPU benchmarks, "0.5b" shaped like Qwen3-0.6B
   (28 layers, hidden 1024, 16/8 heads of 128) for GPU benchmarks.
Nothing here is used by the engine itself; it only builds inputs for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from parallel_r1.engine.sampling import DecodeContext
from parallel_r1.format.tags import TAGS
from parallel_r1.structure import add_tags

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 +-*/=.,:?!()\n"

SIZES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, head_dim=16),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=768, head_dim=64),
    "0.5b": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                 intermediate_size=3072, head_dim=128),
}


def char_tokenizer(vocab_size: int = 0) -> PreTrainedTokenizerFast:
    """Character-level fast tokenizer with the six tags as special tokens (ids at the end)."""
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    filler = max(0, vocab_size - len(vocab) - len(TAGS))
    for i in range(filler):
        vocab[f"<t{i}>"] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>")
    add_tags(tokenizer)
    return tokenizer


def random_qwen3(vocab_size: int, size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32,
                 attn_implementation: str = "sdpa", device: str | torch.device = "cpu") -> Qwen3ForCausalLM:
    """A seeded random Qwen3 causal LM in eval mode."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    config = Qwen3Config(vocab_size=vocab_size, max_position_embeddings=32768, tie_word_embeddings=True,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None, **SIZES[size])
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3ForCausalLM(config)
    return model.to(dtype).eval()


@dataclass(frozen=True)
class Force:
    """Boost ``token`` whenever ``when(context)`` holds."""

    token: int
    when: Callable[[DecodeContext], bool]


class Script:
    """Logits processor: add ``boost`` to the token of the first matching ``Force`` of each row, and
    -inf to the ``ban`` ids everywhere (a boosted token is never banned)."""

    def __init__(self, forces: Sequence[Force] = (), ban: Sequence[int] = (), boost: float = 1e4) -> None:
        self.forces, self.ban, self.boost = list(forces), list(ban), boost

    def __call__(self, logits: torch.Tensor, contexts: Sequence[DecodeContext]) -> torch.Tensor:
        if self.ban:
            logits[:, self.ban] = float("-inf")
        for i, ctx in enumerate(contexts):
            for force in self.forces:
                if force.when(ctx):
                    logits[i, force.token] = logits[i].clamp(min=-1e4).max() + self.boost
                    break
        return logits
