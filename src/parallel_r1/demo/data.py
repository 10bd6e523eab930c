"""The demo's data: named factories that the demo recipes (``configs/demo/``) call by name.

1. ``heldout_problems(split, n)``: the fixed evaluation set of a split, drawn under ``EVAL_SEED``,
   which no training factory uses; every stage is evaluated on the same one.
2. ``training_problems(split, n, seed)``: toy problems with any question of the held-out set of that
   split removed (seeded draws rarely collide, but "rarely" is not "never"), so the evaluation is
   held out by construction, not by luck.
3. ``pretraining_rows``: stage 0, "pretraining": easy and hard problems, each with its plain
   step-by-step solution (``toy.sequential_solution``: no tags), interleaved so every batch mixes both.
4. ``cold_start_rows``: stage 1: the scripted teacher's traces on easy problems, kept only when they
   pass the same validation as real teacher output (``teacher.filter_traces``), optionally with some
   stage-0 rows mixed back in (``replay``: the share of the set that is stage-0 text).

Every row is a dict ``{id, question, answer[, response]}``, the shape the recipe's data config reads.
Departure from the paper: all data is synthetic (``data/toy.py``); the roles are the paper's.
"""

from __future__ import annotations

import random

from parallel_r1.data.problem import Problem
from parallel_r1.data.teacher import filter_traces, teacher_traces
from parallel_r1.data.toy import sequential_solution, toy_problem, toy_problems

EVAL_SEED = 9001  # the held-out sets' seed; no training factory draws from it
EVAL_SIZE = 200


def heldout_problems(split: str, n: int = EVAL_SIZE) -> list[Problem]:
    """The fixed evaluation problems of ``split`` (``EVAL_SEED``)."""
    return toy_problems(split, n, EVAL_SEED)


def training_problems(split: str, n: int, seed: int, heldout_n: int = EVAL_SIZE) -> list[Problem]:
    """``n`` problems of ``split`` under ``seed``, none of whose questions is in the held-out set."""
    assert seed != EVAL_SEED, f"seed {seed} is the held-out evaluation seed; pick another"
    return draw_excluding(split, n, seed, {p.question for p in heldout_problems(split, heldout_n)})


def draw_excluding(split: str, n: int, seed: int, excluded: set[str]) -> list[Problem]:
    """The first ``n`` problems of ``split`` under ``seed`` (by index) whose question is not in ``excluded``."""
    out: list[Problem] = []
    index = 0
    while len(out) < n:
        p = toy_problem(split, seed, index).to_problem()  # problems are drawn per index
        if p.question not in excluded:
            out.append(p)
        index += 1
        assert index < 2 * n + len(excluded) + 10, f"could not draw {n} {split} problems outside the excluded set"
    return out


def _row(problem: Problem, response: str | None = None) -> dict:
    row = {"id": problem.id, "question": problem.question, "answer": problem.answer}
    if response is not None:
        row["response"] = response
    return row


def pretraining_rows(n_easy: int, n_hard: int, seed: int) -> list[dict]:
    """Stage-0 rows: question + plain sequential solution, easy and hard interleaved by a seeded shuffle."""
    rows = [_row(p, sequential_solution(p)) for p in training_problems("easy", n_easy, seed)]
    rows += [_row(p, sequential_solution(p)) for p in training_problems("hard", n_hard, seed)]
    random.Random(f"pretraining/{seed}").shuffle(rows)
    return rows


def cold_start_traces(n: int, seed: int, teacher_seed: int) -> list[dict]:
    """The teacher's traces on ``n`` easy training problems (all of them, before filtering)."""
    return teacher_traces(training_problems("easy", n, seed), teacher_seed)


def cold_start_rows(n: int, seed: int, teacher_seed: int, replay: float = 0.0, replay_seed: int | None = None) -> list[dict]:
    """The cold-start SFT set: filtered teacher traces on easy problems, plus stage-0 replay rows.

    ``replay`` in [0, 1) is the share of the final set that is stage-0 text (sequential solutions of
    easy and hard problems drawn under ``replay_seed``, default ``seed + 1``); 0 gives traces only.
    """
    assert 0.0 <= replay < 1.0, f"replay must be in [0, 1), got {replay}"
    kept = [_row_from_trace(t) for t in filter_traces(cold_start_traces(n, seed, teacher_seed))]
    assert kept, f"the teacher kept no trace of {n} easy problems (seed {seed})"
    n_replay = round(len(kept) * replay / (1.0 - replay))
    if n_replay == 0:
        return kept
    replay_rows = pretraining_rows(n_replay - n_replay // 2, n_replay // 2, seed + 1 if replay_seed is None else replay_seed)
    rows = kept + replay_rows
    random.Random(f"cold-start/{seed}").shuffle(rows)
    return rows


def _row_from_trace(trace: dict) -> dict:
    return {"id": trace["id"], "question": trace["question"], "answer": trace["answer"], "response": trace["response"]}


def rl_problems(split: str, n: int, seed: int) -> list[dict]:
    """GRPO rows: problems without responses (the reward checks the answer)."""
    return [_row(p) for p in training_problems(split, n, seed)]
