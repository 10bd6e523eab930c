"""Text level of the parallel-thinking format: tags, parse tree, validation, canonical form, answers.

Pure Python, no torch: everything above (rewards, metrics, data filters) reads this tree instead of
matching tags with ad-hoc regexes.
"""

from parallel_r1.format.answer import extract_boxed, extract_final_answer
from parallel_r1.format.grammar import Block, ParsedResponse, Span, canonicalize, parse, validate
from parallel_r1.format.tags import (
    PARALLEL_CLOSE,
    PARALLEL_OPEN,
    PATH_CLOSE,
    PATH_OPEN,
    SUMMARY_CLOSE,
    SUMMARY_OPEN,
    TAGS,
)

__all__ = [
    "TAGS",
    "PARALLEL_OPEN",
    "PARALLEL_CLOSE",
    "PATH_OPEN",
    "PATH_CLOSE",
    "SUMMARY_OPEN",
    "SUMMARY_CLOSE",
    "Block",
    "ParsedResponse",
    "Span",
    "parse",
    "validate",
    "canonicalize",
    "extract_final_answer",
    "extract_boxed",
]
