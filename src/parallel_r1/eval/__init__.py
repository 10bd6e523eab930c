"""Benchmark evaluation: run problems through the engine, judge them, report mean@k / pass@k.

- ``metrics``: pass@k estimator, mean@k, parallel ratio and the other per-benchmark figures.
- ``table``: the Markdown table in the shape of the paper's Table 2.
- ``loading``: load an HF causal LM and its tagged tokenizer; encode prompts.
- ``resume``: the per-benchmark resume state next to the output file.
- ``run``: sample, judge and score benchmarks (the library behind the command).
- ``command``: ``parallel-r1 eval``.
"""

from parallel_r1.eval.metrics import SampleRecord, average_metrics, benchmark_metrics, pass_at_k

__all__ = ["SampleRecord", "average_metrics", "benchmark_metrics", "pass_at_k"]
