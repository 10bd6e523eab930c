"""Exact checks of the eval metrics (pass@k estimator, mean@k, ratios, averages, tables)."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import pytest

from parallel_r1.eval.metrics import (
    SampleRecord,
    average_metrics,
    benchmark_metrics,
    pass_at_k,
    pass_ks,
)
from parallel_r1.eval.table import markdown_table


def exact_pass(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(comb(n - c, k), comb(n, k))


@pytest.mark.parametrize("n", [1, 2, 5, 16, 40])
def test_pass_at_k_equals_binomial_formula(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(exact_pass(n, c, k)), abs=1e-12), (n, c, k)


def test_pass_at_k_known_values():
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-15)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(16, 0, 16) == 0.0
    assert pass_at_k(16, 1, 16) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-15)  # pass@1 is the mean accuracy


def test_pass_at_k_is_stable_where_binomials_overflow_floats():
    # C(2000, 1000) ~ 2e600 does not fit a float; the product form needs no binomial at all.
    n, c, k = 2000, 3, 1000
    assert pass_at_k(n, c, k) == pytest.approx(float(exact_pass(n, c, k)), rel=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


def test_pass_ks():
    assert pass_ks(1) == [1]
    assert pass_ks(16) == [1, 2, 4, 8, 16]
    assert pass_ks(5) == [1, 2, 4, 5]


def rec(pid, i, correct, *, valid=True, par=0, vblocks=0, tokens=10, crit=10, pos=()):
    return SampleRecord(pid, i, correct, valid, par, vblocks, tokens, crit, list(pos))


def test_benchmark_metrics_exact():
    records = [
        # problem a: 2 of 4 correct; one response has two blocks, one has an invalid open block
        rec("a", 0, True, par=2, vblocks=2, tokens=100, crit=60, pos=(0.25, 0.75)),
        rec("a", 1, True, tokens=20, crit=20),
        rec("a", 2, False, valid=False, par=1, vblocks=0, tokens=40, crit=40, pos=(0.5,)),
        rec("a", 3, False, tokens=40, crit=40),
        # problem b: 0 of 4 correct
        rec("b", 0, False), rec("b", 1, False), rec("b", 2, False), rec("b", 3, False),
    ]
    m = benchmark_metrics(records)
    assert m["num_problems"] == 2 and m["samples"] == 4
    assert m["mean_at_k"] == pytest.approx((2 / 4 + 0) / 2)
    assert m["pass_at_k"] == pytest.approx((1 + 0) / 2)
    assert m["pass_at"]["1"] == pytest.approx(0.25)
    assert m["pass_at"]["2"] == pytest.approx((1 - comb(2, 2) / comb(4, 2)) / 2)  # (1 - 1/6) / 2
    assert m["parallel_ratio"] == pytest.approx(2 / 8)
    assert m["valid_parallel_ratio"] == pytest.approx(1 / 8)
    assert m["format_valid_ratio"] == pytest.approx(7 / 8)
    assert m["mean_blocks"] == pytest.approx(3 / 8)
    assert m["mean_response_tokens"] == pytest.approx((100 + 20 + 40 + 40 + 40) / 8)
    assert m["mean_critical_path_tokens"] == pytest.approx((60 + 20 + 40 + 40 + 40) / 8)
    assert m["mean_relative_position"] == pytest.approx((0.25 + 0.75 + 0.5) / 3)


def test_benchmark_metrics_without_blocks_has_no_position():
    m = benchmark_metrics([rec("a", 0, True), rec("b", 0, False)])
    assert m["mean_relative_position"] is None
    assert m["samples"] == 1 and m["pass_at"] == {"1": 0.5}


def test_benchmark_metrics_rejects_uneven_and_empty():
    with pytest.raises(ValueError, match="different numbers of samples"):
        benchmark_metrics([rec("a", 0, True), rec("a", 1, True), rec("b", 0, True)])
    with pytest.raises(ValueError, match="no samples"):
        benchmark_metrics([])


def test_average_is_unweighted_mean_of_benchmarks_like_table_2():
    # docs/paper.md Table 2, Parallel-R1-Seen: avg 48.9 from 19.2, 19.4, 70.5, 86.7 (the mean@k / MATH cells)
    per = {
        name: {"mean_at_k": v, "pass_at_k": None, "parallel_ratio": 0.273, "samples": 16}
        for name, v in zip(["aime25", "aime24", "amc23", "math"], [0.192, 0.194, 0.705, 0.867], strict=True)
    }
    avg = average_metrics(per)
    assert avg["num_benchmarks"] == 4
    assert round(100 * avg["mean_at_k"], 1) == 48.9
    assert avg["pass_at_k"] is None  # no benchmark has it
    assert avg["mean_relative_position"] is None


def test_markdown_table_has_table_2_shape():
    records16 = [rec("p", i, i < 3, par=int(i < 8)) for i in range(16)]
    records1 = [rec(f"q{i}", 0, i < 7) for i in range(10)]
    per = {"aime25": benchmark_metrics(records16), "math500": benchmark_metrics(records1)}
    table = markdown_table({"benchmarks": per, "average": average_metrics(per)}, "my|model")
    lines = table.splitlines()
    assert lines[0] == "| method | par.% | AIME25 m/p@16 | MATH500 | avg |"
    assert lines[1] == "|---|---|---|---|---|"
    # par.% = mean(8/16, 0/10) = 25.0; AIME25 mean 3/16 = 18.75%, pass 100%; avg (18.75 + 70) / 2 = 44.375
    assert lines[2] == "| my\\|model | 25.0 | 18.8/100.0 | 70.0 | 44.4 |"
