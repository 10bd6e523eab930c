"""Branching generation: ``Engine`` (token in, token out) and its ``SamplingConfig``.

- ``engine``: ``Engine.generate`` — the batched decode loop, prefill, admission of waiting rollouts.
- ``rows``: ``RowState`` — one rollout's phase machine (main -> paths -> summary), the tag rules.
- ``kvcache``: ``SlotCache`` — one cache row per rollout, slot owners, the 4D masks built from them.
- ``sampling``: ``SamplingConfig``, ``sample_tokens`` (temperature, top-k, top-p, seeded).
- ``testing``: a character tokenizer with the tags, random Qwen3 models, a scripted logits processor.
"""

from parallel_r1.engine.engine import Engine
from parallel_r1.engine.sampling import DecodeContext, SamplingConfig

__all__ = ["DecodeContext", "Engine", "SamplingConfig"]
