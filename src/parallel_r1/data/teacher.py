"""A scripted teacher that writes parallel-thinking traces for toy problems, and fails like a real one.

The paper's cold-start data comes from prompting a strong model (docs/paper.md section 2); Table 1 reports
that it wrote the parallel format on 83.7% of GSM8K problems and on none of DAPO's. This teacher plays
that role for the toy world (``toy.py``) with one mechanism behind every failure, a working-memory
budget:

1. Load. Each route of a problem (in order; changes first) costs the number of digits the teacher
   must hold to write it (operands and result of every step). Writing a parallel block means holding
   both routes plus the open tags, ``load = load(route 1) + load(route 2) + 3 * tag_cost``.
2. Budget. The teacher's budget for one problem is drawn once, ``gauss(budget_mean, budget_sd)``
   (its focus that day), from a generator seeded by ``(seed, problem id)``.
3. Dropping the format. When ``load > budget`` the teacher cannot keep two routes apart and falls
   back to one ordinary step-by-step solution with no tags, as the real teacher did on DAPO.
4. Forgetting a tag. When the block fits with less than ``tag_cost`` to spare, the teacher loses track
   of the block's bookkeeping at the end: with under half a tag to spare it never writes
   ``</Parallel>``; otherwise it writes the summary without its ``<Summary>`` tags.
5. Arithmetic slips. Every step is done in columns; each carry or borrow is dropped with probability
   ``slip_rate * pressure`` where ``pressure = load / budget`` (the fuller the memory, the more
   slips). Longer and larger problems have more carries, so they slip more; a slip propagates to the
   later steps of its route.
6. Summary. Equal results: "Both paths give N." Different results: the teacher trusts the in-order
   route and says so; the final answer is then wrong whenever that route slipped.

Traces are canonical (nothing between the tags of a block) and go through the same validation as
real teacher output: ``parallel_r1.format.parse`` (valid, >= 1 valid block) and
``parallel_r1.rewards.judge`` (correct answer), in ``filter_traces``.

Departures: a real teacher's failures have many causes; here one knob (the budget) produces all of
them, which makes the easy/hard gap a property of problem size rather than of phrasing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from parallel_r1.data.problem import Problem
from parallel_r1.data.toy import (
    PlanLine,
    ToyProblem,
    apply_op,
    plan_changes_first,
    plan_in_order,
    render_line,
    route_result,
    run_plan,
    toy_problems,
    toy_structure,
)
from parallel_r1.format import (
    PARALLEL_CLOSE,
    PARALLEL_OPEN,
    PATH_CLOSE,
    PATH_OPEN,
    SUMMARY_CLOSE,
    SUMMARY_OPEN,
    parse,
)
from parallel_r1.rewards import judge

ROUTES = {"in_order": ("In order.", plan_in_order), "changes_first": ("Changes first.", plan_changes_first)}


@dataclass(frozen=True)
class TeacherConfig:
    """The teacher's working memory, in digits held (see the module docstring)."""

    budget_mean: float = 68.0
    budget_sd: float = 8.0
    slip_rate: float = 0.04
    tag_cost: float = 6.0


# ---------------------------------------------------------------- fallible column arithmetic


class ColumnArithmetic:
    """Pencil-and-paper arithmetic that drops each carry/borrow with probability ``p``."""

    def __init__(self, rng: random.Random, p: float):
        self.rng, self.p, self.slips = rng, p, 0

    def _drop(self) -> bool:
        if self.rng.random() < self.p:
            self.slips += 1
            return True
        return False

    def __call__(self, a: int, op: str, b: int) -> int:
        if a < 0 or b < 0 or (op == "-" and a < b):
            return apply_op(a, op, b)  # only reachable after an earlier slip; no columns to work in
        if op == "+":
            return self.add(a, b)
        if op == "-":
            return self.sub(a, b)
        if op == "*":
            return self.mul(a, b)
        raise ValueError(f"unknown operator {op!r}")

    def add(self, a: int, b: int) -> int:
        out, carry, place = 0, 0, 1
        while a or b or carry:
            s = a % 10 + b % 10 + carry
            carry = s // 10
            if carry and self._drop():
                carry = 0
            out += (s % 10) * place
            a, b, place = a // 10, b // 10, place * 10
        return out

    def sub(self, a: int, b: int) -> int:
        out, borrow, place = 0, 0, 1
        while a or b:
            d = a % 10 - b % 10 - borrow
            borrow = int(d < 0)
            if borrow and self._drop():
                borrow = 0  # the digit is still written as d + 10; the next column is not reduced
            out += (d + 10 * (d < 0)) * place
            a, b, place = a // 10, b // 10, place * 10
        return out

    def mul_digit(self, a: int, d: int) -> int:
        out, carry, place = 0, 0, 1
        while a or carry:
            s = (a % 10) * d + carry
            carry = s // 10
            if carry and self._drop():
                carry = 0
            out += (s % 10) * place
            a, place = a // 10, place * 10
        return out

    def mul(self, a: int, b: int) -> int:
        """Long multiplication: one partial product per digit of ``b``, then column addition."""
        total, place = 0, 1
        while True:
            total = self.add(total, self.mul_digit(a, b % 10) * place)
            b, place = b // 10, place * 10
            if not b:
                return total


# ---------------------------------------------------------------- one trace


def digits(n: int) -> int:
    return len(str(abs(n)))


def route_load(plan: list[PlanLine]) -> int:
    """Digits the teacher must hold to write a route: operands and result of each exact step."""
    return sum(digits(f.a) + digits(f.b) + digits(f.c) for _, facts in run_plan(plan) for f in facts)


def _path_text(intro: str, lines, result: int) -> str:
    """A path: its route's name, then one line per step as in ``sequential_solution``, then the result.
    The in-order path is the stage-0 solution body verbatim, so the base model's skill carries over."""
    body = [render_line(label, facts) for label, facts in lines]
    return "\n".join([intro, *body, f"So {result}."])


def _sequential_text(toy: ToyProblem, arith: ColumnArithmetic) -> tuple[str, int]:
    lines = run_plan(plan_in_order(toy), arith)
    result = route_result(lines, toy.start)
    body = [f"Start: {toy.start}."] + [render_line(label, facts) for label, facts in lines]
    return "\n".join(body + [f"Final Answer: {result}"]), result


def _summary(results: dict[str, int]) -> tuple[str, int]:
    """The merge of the two paths; on disagreement the in-order route is trusted."""
    kept = results["in_order"]
    if results["in_order"] == results["changes_first"]:
        return f"Both paths give {kept}.", kept
    return (
        f"The paths give {results['in_order']} and {results['changes_first']}. Keep in order: {kept}.",
        kept,
    )


def _parallel_text(
    toy: ToyProblem, order: list[str], arith: ColumnArithmetic, headroom: float, cfg: TeacherConfig
) -> tuple[str, int, str, dict[str, int]]:
    """The block (paths in ``order``), summary and final answer; the tag forgotten depends on headroom."""
    paths, results = [], {}
    for name in order:
        intro, planner = ROUTES[name]
        lines = run_plan(planner(toy), arith)
        results[name] = route_result(lines, toy.start)
        paths.append(f"{PATH_OPEN}{_path_text(intro, lines, results[name])}{PATH_CLOSE}")
    summary, answer = _summary(results)
    if headroom < cfg.tag_cost / 2:
        mode, close, summary_block = "forgot_close", "", f"{SUMMARY_OPEN}{summary}{SUMMARY_CLOSE}"
    elif headroom < cfg.tag_cost:
        mode, close, summary_block = "forgot_summary_tags", PARALLEL_CLOSE, summary
    else:
        mode, close, summary_block = "parallel", PARALLEL_CLOSE, f"{SUMMARY_OPEN}{summary}{SUMMARY_CLOSE}"
    block = PARALLEL_OPEN + "".join(paths) + close + summary_block
    text = f"Start: {toy.start}.\n{block}\nFinal Answer: {answer}"
    return text, answer, mode, results


def teacher_trace(problem: Problem | ToyProblem, seed: int, cfg: TeacherConfig | None = None) -> dict:
    """The teacher's response to one toy problem. ``teacher`` holds the mechanism's state: budget,
    load, mode (``parallel`` | ``dropped_format`` | ``forgot_close`` | ``forgot_summary_tags``),
    route_order, path_results (each route's written result) and slips (carries/borrows dropped)."""
    cfg = cfg or TeacherConfig()
    toy = toy_structure(problem)
    rng = random.Random(f"teacher/{seed}/{toy.id}")
    budget = max(1.0, rng.gauss(cfg.budget_mean, cfg.budget_sd))
    loads = {name: route_load(planner(toy)) for name, (_, planner) in ROUTES.items()}
    load = sum(loads.values()) + 3 * cfg.tag_cost
    info = {"budget": round(budget, 2), "load": load}
    if load > budget:
        # Only the in-order route is held; its pressure sets the slip rate (it may exceed 1).
        arith = ColumnArithmetic(rng, min(1.0, cfg.slip_rate * loads["in_order"] / budget))
        text, answer = _sequential_text(toy, arith)
        info.update(mode="dropped_format", route_order=["in_order"], path_results={"in_order": answer})
    else:
        arith = ColumnArithmetic(rng, cfg.slip_rate * load / budget)
        order = rng.sample(list(ROUTES), k=len(ROUTES))
        text, answer, mode, results = _parallel_text(toy, order, arith, budget - load, cfg)
        info.update(mode=mode, route_order=order, path_results=results)
    info["slips"] = arith.slips
    return {
        "id": toy.id,
        "question": toy.question,
        "answer": str(toy.answer),
        "response": text,
        "teacher": info,
    }


def teacher_traces(
    problems: list[Problem] | list[ToyProblem], seed: int, cfg: TeacherConfig | None = None
) -> list[dict]:
    """One trace per problem: ``{id, question, answer, response, teacher}``."""
    return [teacher_trace(p, seed, cfg) for p in problems]


# ---------------------------------------------------------------- validation, filtering, report


def check_trace(trace: dict) -> dict:
    """The validation real teacher output gets: format (valid, >= 1 valid block) and the answer."""
    parsed = parse(trace["response"])
    verdict = judge(trace["response"], trace["answer"])
    valid_parallel = parsed.valid and parsed.num_valid_blocks >= 1
    return {
        "valid_format": valid_parallel,
        "correct": bool(verdict.correct),
        "kept": valid_parallel and bool(verdict.correct),
    }


def filter_traces(traces: list[dict]) -> list[dict]:
    """Keep the traces that pass both checks (the cold-start SFT set)."""
    return [t for t in traces if check_trace(t)["kept"]]


def teacher_report(n: int = 1000, seed: int = 0, cfg: TeacherConfig | None = None) -> dict[str, dict]:
    """Per split: samples, valid parallel format, correct answer, kept (both): the shape of Table 1."""
    report = {}
    for split in ("easy", "hard"):
        traces = teacher_traces(toy_problems(split, n, seed), seed, cfg)
        checks = [check_trace(t) for t in traces]
        modes: dict[str, int] = {}
        for t in traces:
            modes[t["teacher"]["mode"]] = modes.get(t["teacher"]["mode"], 0) + 1
        report[f"toy-{split}"] = {
            "samples": n,
            "valid_format": sum(c["valid_format"] for c in checks) / max(n, 1),
            "correct": sum(c["correct"] for c in checks) / max(n, 1),
            "kept": sum(c["kept"] for c in checks) / max(n, 1),
            "modes": dict(sorted(modes.items())),
        }
    return report


def format_teacher_report(report: dict[str, dict]) -> str:
    """A markdown table in the shape of docs/paper.md Table 1."""
    rows = [
        "| set | samples | valid parallel format | correct | kept (valid and correct) |",
        "|---|---|---|---|---|",
    ]
    for name, r in report.items():
        rows.append(
            f"| {name} | {r['samples']} | {100 * r['valid_format']:.1f}% | {100 * r['correct']:.1f}% | {100 * r['kept']:.1f}% |"
        )
    return "\n".join(rows)
