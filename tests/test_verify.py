"""Answer equivalence: normalisation, the exact fast path, math-verify in killable workers."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parallel_r1.rewards import AnswerChecker, answers_match, check_answer, default_checker
from parallel_r1.rewards.normalize import FastResult, fast_compare, normalize_answer, parse_number
from parallel_r1.rewards.sandbox import _Worker

TOWER = "9^{9^{9^{9}}}"  # latex2sympy evaluates the power eagerly: runs for minutes
NESTED = "(" * 900 + "1" + ")" * 900  # math-verify parses this in ~6 s on one core
FACTORIAL = "(10^{8})!"  # sympy computes it during the comparison
GENEROUS_S = 60.0  # "returns at all", not a timing claim


@pytest.fixture(scope="module")
def checker():
    with AnswerChecker(timeout=10.0, max_workers=2) as c:
        yield c


# ---------------------------------------------------------------- normalisation (pure, no sympy)


@pytest.mark.parametrize(
    ("raw", "normalized", "number"),
    [
        ("36.00", "36.00", 36),
        ("$1600.", "1600", 1600),
        ("\\$18", "18", 18),
        ("1,600", "1,600", 1600),
        ("1,234,567.5", "1,234,567.5", 1234567.5),
        ("1,2", "1,2", None),  # not a thousands grouping: math-verify reads a set
        ("$\\boxed{19}$", "19", 19),
        ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", 0.5),
        ("-\\frac{-3}{4}", "-\\frac{-3}{4}", 0.75),
        ("50\\%", "50\\%", 50),
        ("30^\\circ", "30^\\circ", 30),
        ("19 pets", "19 pets", 19),
        ("10\\text{ inches}", "10\\text{ inches}", 10),
        ("\u22125", "-5", -5),  # unicode minus
        ("1\\,000", "1 000", None),  # thin space: left to math-verify
        ("12 and 5", "12 and 5", None),
        ("5 thousand", "5 thousand", None),  # a scale word is not a unit
        ("5\\text{ million}", "5\\text{ million}", None),
        ("3/0", "3/0", None),
        ("x = 5", "x = 5", None),
        ("\\boxed{1}+\\boxed{2}", "\\boxed{1}+\\boxed{2}", None),  # box does not wrap the whole
    ],
)
def test_normalize_and_read_number(raw, normalized, number):
    assert normalize_answer(raw) == normalized
    value = parse_number(normalized)
    assert (value is None) if number is None else value == number


def test_fast_path_is_final_only_where_exact_arithmetic_settles_it():
    assert fast_compare("36.00", "36").decided and fast_compare("36.00", "36").correct
    assert fast_compare("18", "19").decided and not fast_compare("18", "19").correct
    # non-integer mismatch: math-verify rounds to 6 places, so it decides
    assert not fast_compare("0.333333", "1/3").decided
    assert not fast_compare("\\sqrt{8}", "2\\sqrt{2}").decided
    assert fast_compare("2 \\sqrt{2}", "2\\sqrt{2}").correct  # whitespace-insensitive identity


@settings(max_examples=300, deadline=None)
@given(a=st.integers(-10**7, 10**7), b=st.integers(-10**7, 10**7),
       style=st.sampled_from(["{:,}", "{}.00", "${}.", "\\boxed{{{}}}", "{} apples", "{}\\%", "$\\boxed{{{}}}$"]))
def test_integers_compare_exactly_in_any_dress(a, b, style):
    """Integer answers never reach math-verify: the verdict is exact equality, whatever the dress."""
    predicted = style.format(a)
    assert fast_compare(normalize_answer(predicted), normalize_answer(str(b))) == FastResult(True, a == b)


def test_fast_path_number_length_is_bounded():
    assert parse_number("9" * 5000) is None  # would exceed int-from-str limits; math-verify decides


# ---------------------------------------------------------------- check_answer: verdicts


@pytest.mark.parametrize(
    ("predicted", "gold", "method"),
    [
        # the reference checker's false negatives (docs/paper.md 4) and friends
        ("36.00", "36", "exact"),
        ("$1600.", "1600", "exact"),
        ("1,600", "1600", "exact"),
        ("\\boxed{19}", "19", "exact"),
        ("\\frac{1}{2}", "0.5", "exact"),
        ("0.75", "\\frac{3}{4}", "exact"),
        ("50\\%", "50", "exact"),
        ("19 pets", "19", "exact"),
        ("18 \\text{dollars}", "18", "exact"),
        ("2\\sqrt{2}", "2\\sqrt{2}", "exact"),
        ("\\dfrac{3}{4}", "\\frac{3}{4}", "exact"),
        # symbolic / approximate: math-verify
        ("\\sqrt{8}", "2\\sqrt{2}", "math_verify"),
        ("0.333333", "\\frac{1}{3}", "math_verify"),
        ("50\\%", "0.5", "math_verify"),
        ("x = 5", "5", "math_verify"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", "math_verify"),
        ("The answer is $\\frac{3}{4}$.", "\\frac{3}{4}", "math_verify"),
    ],
)
def test_equivalent_answers_match(checker, predicted, gold, method):
    result = checker.check(predicted, gold)
    assert result.correct, result
    assert result.method == method
    assert not result.timed_out and result.error is None


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        ("18", "19"),
        ("-19", "19"),
        ("19.5", "19"),
        ("1,2", "12"),
        ("0.33", "\\frac{1}{3}"),
        ("\\sqrt{7}", "2\\sqrt{2}"),
        ("hello", "19"),
        ("}{$$\\frac{", "19"),  # garbage
        ("19", "\\frac{3}{4}"),
        ("(1,2)", "(2,1)"),
        ("5 thousand", "5"),
    ],
)
def test_wrong_answers_do_not_match(checker, predicted, gold):
    result = checker.check(predicted, gold)
    assert not result.correct, result
    assert not result.timed_out and result.error is None


@pytest.mark.parametrize("predicted", [None, "", "   "])
def test_missing_answer_is_wrong_without_a_check(checker, predicted):
    assert checker.check(predicted, "19").method == "missing"
    assert not checker.check(predicted, "19").correct


def test_overlong_answer_is_rejected_with_a_visible_error(checker):
    result = checker.check("1+" * 5000 + "1", "10001")
    assert (result.correct, result.method) == (False, "too_long")
    assert "chars" in result.error


@pytest.mark.parametrize("gold", ["", "  ", None])
def test_bad_gold_fails_loud(checker, gold):
    with pytest.raises(ValueError, match="gold answer"):
        checker.check("19", gold)


def test_module_level_helpers_use_the_shared_checker():
    assert answers_match("36.00", "36")
    assert check_answer("\\sqrt{8}", "2\\sqrt{2}").method == "math_verify"


# ---------------------------------------------------------------- bounded time, processes, threads


@pytest.mark.parametrize("expression", [TOWER, NESTED, FACTORIAL], ids=["power_tower", "deep_nesting", "huge_factorial"])
def test_pathological_expression_times_out_visibly_and_the_pool_recovers(checker, expression):
    start = time.monotonic()
    result = checker.check(expression, "1", timeout=0.5)
    assert time.monotonic() - start < GENEROUS_S
    assert (result.correct, result.method, result.timed_out) == (False, "timeout", True)
    assert "timed out" in result.error
    # the killed worker was replaced: the next symbolic check still works
    assert checker.check("\\sqrt{8}", "2\\sqrt{2}").correct


def test_worker_that_dies_mid_check_is_reported_as_an_error():
    worker = _Worker()
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(worker.call(TOWER, "1", timeout=GENEROUS_S)))
    thread.start()
    time.sleep(0.3)  # let the request reach the worker
    os.kill(worker.proc.pid, signal.SIGKILL)
    thread.join(GENEROUS_S)
    assert outcome and outcome[0].status == "error"
    assert "died" in outcome[0].error
    assert not worker.alive


def test_threads_give_the_same_verdicts_as_serial_calls(checker):
    """math-verify's own signal-based timeout raises ValueError outside the main thread; ours must not."""
    cases = [
        ("36.00", "36"), ("\\sqrt{8}", "2\\sqrt{2}"), ("18", "19"), ("0.333333", "\\frac{1}{3}"),
        ("\\sqrt{7}", "2\\sqrt{2}"), ("x = 5", "5"), (None, "3"), ("1,2", "12"),
        ("\\frac{\\pi}{2}", "\\frac{\\pi}{2}"), ("\\pi/2", "\\frac{\\pi}{2}"), ("hello", "4"), ("$1600.", "1600"),
    ]
    serial = [checker.check(p, g) for p, g in cases]
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(checker.check, p, g) for _ in range(3) for p, g in cases]
        parallel = [f.result() for f in futures]
    assert parallel == serial * 3
    assert checker.pool.num_idle <= checker.pool.max_workers


def test_workers_outlive_the_threads_that_asked_for_them():
    """Regression: on Linux a worker dies with the *thread* that started it (PR_SET_PDEATHSIG). Workers
    first started from ``judge_many``'s short-lived threads were killed when those threads ended, so
    every batch paid for fresh workers, and a worker shared with a live thread died mid-check ("worker
    died" errors). They are now started from one long-lived launcher thread."""
    with AnswerChecker(max_workers=2) as c:
        with ThreadPoolExecutor(max_workers=2) as pool:
            assert all(pool.map(lambda _: c.check("\\sqrt{8}", "2\\sqrt{2}").correct, range(6)))
        pids = sorted(c.pool.idle_pids())
        time.sleep(0.3)  # the pool's threads have ended; give a signal time to land
        for _ in range(3):
            assert c.check("\\sqrt{8}", "2\\sqrt{2}").correct
        assert sorted(c.pool.idle_pids()) == pids  # the same processes served: none had died


CHILD = """
import os, sys, threading, time
from parallel_r1.rewards import AnswerChecker

def children():
    found = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]
        except OSError:
            continue  # exited while we looked
        if ppid == str(os.getpid()):
            found.append(p)
    return found

c = AnswerChecker(timeout=600)
threading.Thread(target=c.check, args=(sys.argv[1], "1"), daemon=True).start()
while not children():
    time.sleep(0.1)
time.sleep(1.0)  # the worker is now busy in the pathological check
print(children()[0], flush=True)
os._exit(0)  # die abruptly: no atexit, no close()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_busy_worker_dies_with_its_parent_process():
    # stderr to /dev/null: the worker inherits it, and a captured pipe would keep run() waiting for the worker
    out = subprocess.run([sys.executable, "-c", CHILD, TOWER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, timeout=GENEROUS_S)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + GENEROUS_S
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break  # gone and reaped
        if state == "Z":
            break  # dead, waiting for its new parent to reap it
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)  # do not leave it running if the test fails
        pytest.fail(f"math-verify worker {pid} outlived its parent")


def _check_in_child(case: tuple[str, str]) -> tuple[bool, list[int]]:
    return check_answer(*case).correct, default_checker().pool.idle_pids()


def test_forked_child_starts_its_own_workers():
    """A forked process (a DataLoader or process-pool worker) must not talk to its parent's workers:
    two processes writing to one worker's pipe would mix their answers."""
    assert check_answer("\\sqrt{8}", "2\\sqrt{2}").correct  # the shared checker now has a worker
    pids = default_checker().pool.idle_pids()
    assert pids
    cases = [("\\sqrt{8}", "2\\sqrt{2}"), ("\\sqrt{7}", "2\\sqrt{2}"), ("x = 5", "5")]
    with multiprocessing.get_context("fork").Pool(1) as pool:  # leaving the block terminates the child
        results = pool.map_async(_check_in_child, cases).get(timeout=GENEROUS_S)  # hung child: fail, not hang
    assert [correct for correct, _ in results] == [True, False, True]
    assert all(child_pids and not set(child_pids) & set(pids) for _, child_pids in results)
    assert default_checker().pool.idle_pids() == pids
    assert check_answer("\\sqrt{8}", "2\\sqrt{2}").correct


def test_closed_checker_refuses_work():
    c = AnswerChecker(max_workers=1)
    assert c.check("\\sqrt{4}", "2").correct
    c.close()
    with pytest.raises(RuntimeError, match="closed"):
        c.check("\\sqrt{4}", "2")
    assert c.check("2", "2").correct  # the fast path needs no worker


@pytest.mark.parametrize("kwargs", [{"timeout": 0}, {"timeout": -1.0}, {"max_workers": 0}])
def test_bad_checker_settings_fail_loud(kwargs):
    with pytest.raises(ValueError):
        AnswerChecker(**kwargs)
