"""Benchmark metrics: mean@k, unbiased pass@k, parallel ratio, format validity, token counts.

1. ``pass_at_k(n, c, k)`` is the unbiased estimator of Chen et al. (2021, "Evaluating Large Language
   Models Trained on Code", eq. 1): ``1 - C(n-c, k) / C(n, k)`` for ``n`` samples of which ``c`` are
   correct, computed as the product ``prod_{i=n-c+1}^{n} (1 - k/i)`` so no binomial ever overflows.
   With ``k == n`` (the paper's pass@16 from 16 samples) it is 1 when any sample is correct, else 0.
2. ``mean@k`` is the mean accuracy over the k samples of a problem, averaged over problems (docs/paper.md 6).
3. Parallel ratio = share of responses with at least one ``<Parallel>`` tag, closed or not, as the
   reference counts them (docs/paper.md 6); ``valid_parallel_ratio`` additionally asks for one *valid* block.
4. Relative position of a block = token index of its ``<Parallel>`` / response length (docs/paper.md 7);
   ``mean_relative_position`` averages over every block of every response (responses without blocks
   do not count), None when no response has a block.
5. Critical-path tokens: main chain + the longest path of each block + summaries, i.e. the tokens a
   parallel engine must decode one after another; the engine computes it per Rollout.

All ratios are fractions in [0, 1]; tables multiply by 100.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field


@dataclass
class SampleRecord:
    """What the metrics need from one judged response."""

    problem_id: str
    sample_index: int
    correct: bool
    format_valid: bool
    num_parallel: int
    num_valid_blocks: int
    response_tokens: int
    critical_path_tokens: int
    relative_positions: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for ``n`` samples with ``c`` correct (module docstring, point 1)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def group_by_problem(records: Iterable[SampleRecord]) -> dict[str, list[SampleRecord]]:
    """Records per problem id, in first-seen order; every problem must hold the same number."""
    groups: dict[str, list[SampleRecord]] = defaultdict(list)
    for record in records:
        groups[record.problem_id].append(record)
    sizes = {len(g) for g in groups.values()}
    if len(sizes) > 1:
        raise ValueError(f"problems hold different numbers of samples: {sorted(sizes)}")
    return dict(groups)


def pass_ks(n: int) -> list[int]:
    """The k at which pass@k is reported for ``n`` samples: powers of two below n, and n itself."""
    ks = [1 << i for i in range(n.bit_length()) if (1 << i) < n]
    return ks + [n]


def benchmark_metrics(records: Sequence[SampleRecord]) -> dict:
    """Metrics of one benchmark from its judged samples (all problems with the same sample count)."""
    if not records:
        raise ValueError("no samples to score")
    groups = group_by_problem(records)
    n = len(next(iter(groups.values())))
    correct = [sum(r.correct for r in g) for g in groups.values()]
    positions = [p for r in records for p in r.relative_positions]
    pass_at = {str(k): _mean([pass_at_k(n, c, k) for c in correct]) for k in pass_ks(n)}
    return {
        "num_problems": len(groups),
        "samples": n,
        "mean_at_k": _mean([c / n for c in correct]),
        "pass_at_k": pass_at[str(n)],
        "pass_at": pass_at,
        "parallel_ratio": _mean([float(r.num_parallel > 0) for r in records]),
        "valid_parallel_ratio": _mean([float(r.num_valid_blocks > 0) for r in records]),
        "format_valid_ratio": _mean([float(r.format_valid) for r in records]),
        "mean_blocks": _mean([float(r.num_parallel) for r in records]),
        "mean_response_tokens": _mean([float(r.response_tokens) for r in records]),
        "mean_critical_path_tokens": _mean([float(r.critical_path_tokens) for r in records]),
        "mean_relative_position": _mean(positions),
    }


AVERAGED = (
    "mean_at_k",
    "pass_at_k",
    "parallel_ratio",
    "valid_parallel_ratio",
    "format_valid_ratio",
    "mean_blocks",
    "mean_response_tokens",
    "mean_critical_path_tokens",
    "mean_relative_position",
)


def average_metrics(per_benchmark: dict[str, dict]) -> dict:
    """Unweighted mean over benchmarks of each metric, as the paper's "avg" column (docs/paper.md 6:
    48.9 = mean of the four mean@k / MATH figures). Benchmarks where a metric is None are left out."""
    out: dict = {"num_benchmarks": len(per_benchmark)}
    for key in AVERAGED:
        values = [m[key] for m in per_benchmark.values() if m.get(key) is not None]
        out[key] = _mean(values)
    return out
