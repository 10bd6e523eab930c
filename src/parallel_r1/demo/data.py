"""The demo's data: named factories that the demo recipe (``configs/demo/demo.yaml``) calls by name.

1. ``heldout_problems(split, n)``: the fixed evaluation set of a split, drawn under ``EVAL_SEED``,
   which no training factory uses; every stage is evaluated on the same one.
2. ``training_problems(split, n, seed)``: toy problems with any question of the held-out set of that
   split removed (seeded draws rarely collide, but "rarely" is not "never"), so the evaluation is
   held out by construction, not by luck.
3. ``pretraining_rows``: stage 0, "pretraining": easy and hard problems, each with a plain
   step-by-step solution (no tags) by one of the two routes the teacher knows (``route_solution``:
   in story order, or net the changes first), interleaved so every batch mixes both splits.
4. ``cold_start_rows``: stage 1: the scripted teacher's traces on easy problems, kept only when they
   pass the same validation as real teacher output (``teacher.filter_traces``), optionally with some
   stage-0 rows mixed back in (``replay``: the share of the set that is stage-0 text). Each row carries
   its rendered prompt (``template`` for traces, ``replay_template`` for replay rows; the demo recipe
   gives both the parallel prompt, so under it the model keeps writing both formats).
5. ``rl_problems``: GRPO rows (question and answer only), optionally with a share of easy problems
   mixed into the hard ones (the demo recipe's RL stage: see its comments for why).

Every row is a dict ``{id, question, answer[, response][, prompt]}``, the shape the recipe's data
config reads. Departures from the paper: all data is synthetic (``data/toy.py``); the roles are the
paper's. The pretraining text holds both routes the teacher's paths use, as a real base model knows
more than one method; without it, SFT has to teach a new method and the format at once, which the
tiny model could not do without losing its arithmetic (see the demo's notes in the README).
"""

from __future__ import annotations

import random

from parallel_r1.data.problem import Problem
from parallel_r1.data.prompts import render
from parallel_r1.data.teacher import ROUTES, filter_traces, teacher_traces
from parallel_r1.data.toy import (
    render_line,
    route_result,
    run_plan,
    toy_problem,
    toy_problems,
    toy_structure,
)

EVAL_SEED = 9001  # the held-out sets' seed; no training factory draws from it
EVAL_SIZE = 400  # the largest held-out set: training draws exclude all of its questions


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


def route_solution(problem: Problem, route: str) -> str:
    """Plain step-by-step text (no tags) of one solution route, laid out so that everything between
    ``Start: N.`` and ``Final Answer: N`` is word for word the body of the teacher's path for that
    route (its name, one line per step, ``So N.``). SFT then adds the tags and the summary around
    text the model already writes, instead of a new layout."""
    if route not in ROUTES:
        raise ValueError(f"unknown route {route!r}; known: {sorted(ROUTES)}")
    toy = toy_structure(problem)
    intro, planner = ROUTES[route]
    lines = run_plan(planner(toy))
    result = route_result(lines, toy.start)
    assert result == toy.answer, f"{problem.id}: route {route} ends at {result}, not at the answer {toy.answer}"
    body = [render_line(label, facts) for label, facts in lines]
    return "\n".join([f"Start: {toy.start}.", intro, *body, f"So {result}.", f"Final Answer: {toy.answer}"])


def pretraining_rows(n_easy: int, n_hard: int, seed: int, changes_first: float = 0.0) -> list[dict]:
    """Stage-0 rows: question + plain step-by-step solution, easy and hard interleaved by a seeded shuffle.

    A ``changes_first`` share of the problems (chosen per problem, seeded) is solved by the other route
    the teacher knows (net the changes first) instead of in story order: a base model knows several
    methods, and cold-start SFT then has to teach the format, not a method never seen before.
    """
    assert 0.0 <= changes_first <= 1.0, f"changes_first must be in [0, 1], got {changes_first}"
    problems = training_problems("easy", n_easy, seed) + training_problems("hard", n_hard, seed)
    rows = []
    for p in problems:
        pick = random.Random(f"route/{seed}/{p.id}").random() < changes_first
        rows.append(_row(p, route_solution(p, "changes_first" if pick else "in_order")))
    random.Random(f"pretraining/{seed}").shuffle(rows)
    return rows


def cold_start_traces(n: int, seed: int, teacher_seed: int) -> list[dict]:
    """The teacher's traces on ``n`` easy training problems (all of them, before filtering)."""
    return teacher_traces(training_problems("easy", n, seed), teacher_seed)


def cold_start_rows(n: int, seed: int, teacher_seed: int, replay: float = 0.0, replay_seed: int | None = None,
                    template: str = "{problem}", replay_template: str = "{problem}",
                    changes_first: float = 0.0) -> list[dict]:  # fmt: skip
    """The cold-start SFT set: filtered teacher traces on easy problems, plus stage-0 replay rows.

    ``replay`` in [0, 1) is the share of the final set that is stage-0 text (sequential solutions of
    easy and hard problems drawn under ``replay_seed``, default ``seed + 1``, with stage 0's share of
    ``changes_first`` solutions); 0 gives traces only.
    Every row carries its ready ``prompt``: traces rendered with ``template`` (the prompt RL and
    evaluation use), replay rows with ``replay_template``. With stage 0's bare prompt there, the
    prompt alone tells the formats apart and the parallel prompt is only ever seen on easy problems;
    with the parallel prompt for both (the demo recipe), the model meets hard problems under the
    prompt RL uses and writes both formats there, which measured better on toy-hard.
    """
    assert 0.0 <= replay < 1.0, f"replay must be in [0, 1), got {replay}"
    kept = [_row_from_trace(t, template) for t in filter_traces(cold_start_traces(n, seed, teacher_seed))]
    assert kept, f"the teacher kept no trace of {n} easy problems (seed {seed})"
    n_replay = round(len(kept) * replay / (1.0 - replay))
    if n_replay == 0:
        return kept
    replay_seed = seed + 1 if replay_seed is None else replay_seed
    replay_rows = pretraining_rows(n_replay - n_replay // 2, n_replay // 2, replay_seed, changes_first)
    rows = kept + [{**r, "prompt": render(replay_template, r["question"])} for r in replay_rows]
    random.Random(f"cold-start/{seed}").shuffle(rows)
    return rows


def _row_from_trace(trace: dict, template: str) -> dict:
    return {"id": trace["id"], "question": trace["question"], "answer": trace["answer"],
            "response": trace["response"], "prompt": render(template, trace["question"])}  # fmt: skip


def rl_problems(split: str, n: int, seed: int, easy_share: float = 0.0, easy_seed: int | None = None) -> list[dict]:
    """GRPO rows: problems without responses (the reward checks the answer).

    ``easy_share`` in [0, 1): that share of the ``n`` rows are easy problems (drawn under
    ``easy_seed``), the rest from ``split`` (under ``seed``), shuffled together so every batch mixes
    both; 0 gives ``split`` only.
    """
    if not 0.0 <= easy_share < 1.0:
        raise ValueError(f"easy_share must be in [0, 1), got {easy_share}")
    n_easy = rl_easy_count(n, easy_share)
    rows = [_row(p) for p in training_problems(split, n - n_easy, seed)]
    if n_easy == 0:
        return rows
    if easy_seed is None or easy_seed == seed:
        raise ValueError(f"mixed-in easy problems need an easy_seed other than seed ({seed}), got {easy_seed}")
    rows += [_row(p) for p in training_problems("easy", n_easy, easy_seed)]
    random.Random(f"rl-mix/{seed}/{easy_seed}").shuffle(rows)
    return rows


def rl_easy_count(n: int, easy_share: float) -> int:
    """How many of ``rl_problems``' ``n`` rows are the mixed-in easy ones."""
    return round(n * easy_share)
