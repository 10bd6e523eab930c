"""Token level of the parallel-thinking format: tag tokens, block spans, structured attention.

- ``tokens``: ``add_tags`` / ``tag_ids`` (the six tags as special tokens of a tokenizer and model).
- ``spans``: ``BlockSpan`` and ``find_blocks`` (blocks, paths, summaries as token ranges).
- ``attention``: ``structured_attention`` (Unseen) and ``causal_attention`` (Seen), one sequence.
- ``batch``: ``build_batch`` -> ``StructuredBatch``, the padded 4D-mask form a model consumes.
- ``cache``: join KV caches of separately computed paths (``concat_caches``) for the summary, and
  ``cache_kwarg`` / ``output_cache`` for the transformers rename of ``past_key_values`` to ``cache``.
- ``flex``: ``flex_block_mask``, the same mask as a flex_attention ``BlockMask`` for long rows on GPU
  (import ``parallel_r1.structure.flex`` explicitly; it needs torch's flex_attention).
"""

from parallel_r1.structure.attention import (
    TokenLayout,
    attention_for_mode,
    causal_attention,
    causal_layout,
    layout_from_blocks,
    layout_mask,
    structured_attention,
    structured_layout,
)
from parallel_r1.structure.batch import MODES, StructuredBatch, build_batch
from parallel_r1.structure.cache import (
    cache_from_tensors,
    cache_kwarg,
    cache_tensors,
    concat_caches,
    output_cache,
    slice_cache,
)
from parallel_r1.structure.spans import BlockSpan, check_tag_ids, find_blocks, path_regions
from parallel_r1.structure.tokens import add_tags, tag_ids

__all__ = [
    "BlockSpan",
    "MODES",
    "StructuredBatch",
    "TokenLayout",
    "add_tags",
    "attention_for_mode",
    "build_batch",
    "cache_from_tensors",
    "cache_kwarg",
    "cache_tensors",
    "causal_attention",
    "causal_layout",
    "check_tag_ids",
    "concat_caches",
    "find_blocks",
    "layout_from_blocks",
    "layout_mask",
    "output_cache",
    "path_regions",
    "slice_cache",
    "structured_attention",
    "structured_layout",
    "tag_ids",
]
