"""The embedded toy world: seeded multi-step arithmetic word problems with integer answers.

A problem is a starting count and a chain of events that change it (gain, loss, buying groups,
doubling/tripling); the answer is the count after the last event. Two splits stand in for the
paper's data (docs/paper.md sections 2-3):

- ``easy`` plays GSM8K: 2-3 events, small numbers, no scaling;
- ``hard`` plays DAPO: 4-6 events, larger numbers, at most one doubling/tripling.

Every problem is generated from its own ``random.Random("toy/<split>/<seed>/<i>")``, so problem ``i``
does not depend on ``n`` and its id ``toy-<split>-<seed>-<i>`` is enough to rebuild the structured
form (``toy_structure``). Wording is a handful of fixed templates over a small vocabulary, so a tiny
model can learn the language in minutes on a CPU.

Two solution routes are planned on the structure (``plan_in_order``, ``plan_changes_first``); they
differ in the order of operations (apply each event in turn vs. net the additive changes of a run of
events first, then apply the net), and every problem is drawn so that the routes really differ
(some run of additive events has at least two). A plan is symbolic; ``run_plan`` computes it with
exact arithmetic or with the teacher's fallible one. ``sequential_solution`` renders the in-order
route as the plain step-by-step text of "stage 0" (no tags), e.g.::

    Start: 12.
    gets 7: 12+7=19.
    buys 3 boxes of 4: 3*4=12. 19+12=31.
    Final Answer: 31

Departures from the paper: the problems are synthetic and far simpler than GSM8K/DAPO; only their
roles (easy cold-start set vs. hard RL set) are kept.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from parallel_r1.data.problem import Problem

SPLITS = ("easy", "hard")
# Named problem sets, as other commands refer to them.
TOY_SETS = {"toy-easy": "easy", "toy-hard": "hard"}

NAMES = ("Ava", "Ben", "Cal", "Dan", "Eve", "Fay", "Gus", "Ivy")
ITEMS = ("apples", "pens", "cards", "coins", "shells", "stamps", "marbles", "books")
CONTAINERS = ("boxes", "bags", "packs")
KINDS = ("gain", "loss", "groups", "scale")
ADDITIVE = ("gain", "loss", "groups")

# Question wording per event kind: (sentence template, short label used in solutions).
GAIN_WORDING = (("{name} finds {a} more {item}.", "finds {a}"), ("{name} gets {a} {item}.", "gets {a}"))
LOSS_WORDING = (
    ("{name} gives away {a} {item}.", "gives away {a}"),
    ("{name} loses {a} {item}.", "loses {a}"),
)
GROUPS_WORDING = (("{name} buys {a} {container} of {b} {item}.", "buys {a} {container} of {b}"),)
SCALE_WORDING = {
    2: ("The number of {item} doubles.", "doubles"),
    3: ("The number of {item} triples.", "triples"),
}

ID_RE = re.compile(r"^toy-(easy|hard)-(\d+)-(\d+)$")


@dataclass(frozen=True)
class SplitSpec:
    """Difficulty knobs of one split; ranges are inclusive."""

    min_events: int
    max_events: int
    start: tuple[int, int]
    amount: tuple[int, int]  # gain / loss sizes
    group_count: tuple[int, int]
    group_size: tuple[int, int]
    scale_factors: tuple[int, ...] = ()
    max_scales: int = 0
    # relative weights of gain, loss, groups, scale when drawing an event
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 0.0)


SPECS = {
    "easy": SplitSpec(2, 3, start=(3, 20), amount=(1, 12), group_count=(2, 5), group_size=(2, 6)),
    "hard": SplitSpec(
        4,
        6,
        start=(20, 99),
        amount=(5, 60),
        group_count=(3, 9),
        group_size=(4, 12),
        scale_factors=(2, 3),
        max_scales=1,
        weights=(1.0, 1.0, 1.0, 0.5),
    ),
}


@dataclass(frozen=True)
class Event:
    """One change to the count. ``a``: amount (gain/loss), number of groups, or scale factor;
    ``b``: size of each group (groups only); ``wording``: index of the phrasing template."""

    kind: str
    a: int
    b: int = 0
    wording: int = 0

    def __post_init__(self) -> None:
        assert self.kind in KINDS, f"unknown event kind {self.kind!r}"
        assert self.a > 0 and self.b >= 0, f"event amounts must be positive: {self}"

    @property
    def additive(self) -> bool:
        return self.kind in ADDITIVE


@dataclass(frozen=True)
class Fact:
    """One written arithmetic step ``a op b = c``; ``c`` is what was written, right or wrong."""

    a: int
    op: str
    b: int
    c: int

    def text(self) -> str:
        # No spaces inside a fact: digits and operators are one token each, and the shorter the
        # solutions the cheaper every rollout of the tiny model.
        return f"{self.a}{self.op}{self.b}={self.c}."

    @property
    def correct(self) -> bool:
        return self.c == apply_op(self.a, self.op, self.b)


@dataclass(frozen=True)
class ToyProblem:
    """The structured form of a toy problem; ``to_problem()`` gives the text record."""

    id: str
    split: str
    name: str
    item: str
    container: str
    start: int
    events: tuple[Event, ...] = field(default_factory=tuple)

    @property
    def answer(self) -> int:
        return evaluate(self.start, self.events)

    @property
    def question(self) -> str:
        sentences = [f"{self.name} has {self.start} {self.item}."]
        sentences += [self._wording(e)[0] for e in self.events]
        sentences.append(f"How many {self.item} does {self.name} have now?")
        return " ".join(sentences)

    def label(self, event: Event) -> str:
        """Short name of an event in a solution, e.g. ``buys 3 boxes of 4``."""
        return self._wording(event)[1]

    def _wording(self, e: Event) -> tuple[str, str]:
        if e.kind == "scale":
            template = SCALE_WORDING[e.a]
        else:
            table = {"gain": GAIN_WORDING, "loss": LOSS_WORDING, "groups": GROUPS_WORDING}[e.kind]
            template = table[e.wording]
        fill = {"name": self.name, "item": self.item, "container": self.container, "a": e.a, "b": e.b}
        return template[0].format(**fill), template[1].format(**fill)

    def to_problem(self) -> Problem:
        return Problem(id=self.id, question=self.question, answer=str(self.answer))


def apply_op(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operator {op!r}")


def apply_event(value: int, e: Event) -> int:
    if e.kind == "gain":
        return value + e.a
    if e.kind == "loss":
        return value - e.a
    if e.kind == "groups":
        return value + e.a * e.b
    return value * e.a


def evaluate(start: int, events: tuple[Event, ...] | list[Event]) -> int:
    value = start
    for e in events:
        value = apply_event(value, e)
    return value


# ---------------------------------------------------------------- generation


def _draw_event(rng: random.Random, spec: SplitSpec, value: int, scales_left: int) -> Event:
    weights = list(spec.weights)
    if scales_left <= 0 or not spec.scale_factors:
        weights[3] = 0.0
    if value <= spec.amount[0]:
        weights[1] = 0.0  # nothing left to lose: counts stay positive
    kind = rng.choices(KINDS, weights=weights)[0]
    if kind == "gain":
        return Event("gain", rng.randint(*spec.amount), wording=rng.randrange(len(GAIN_WORDING)))
    if kind == "loss":
        hi = min(spec.amount[1], value - 1)
        return Event("loss", rng.randint(spec.amount[0], hi), wording=rng.randrange(len(LOSS_WORDING)))
    if kind == "groups":
        return Event("groups", rng.randint(*spec.group_count), rng.randint(*spec.group_size))
    return Event("scale", rng.choice(spec.scale_factors))


def runs(events: tuple[Event, ...]) -> list[tuple[Event, ...]]:
    """Split the events into maximal runs of additive events and single scale events."""
    out: list[tuple[Event, ...]] = []
    current: list[Event] = []
    for e in events:
        if e.additive:
            current.append(e)
            continue
        if current:
            out.append(tuple(current))
            current = []
        out.append((e,))
    if current:
        out.append(tuple(current))
    return out


def routes_differ(events: tuple[Event, ...]) -> bool:
    """The changes-first route differs from in-order iff some additive run has >= 2 events."""
    return any(len(r) >= 2 and r[0].additive for r in runs(events))


def toy_problem(split: str, seed: int, index: int) -> ToyProblem:
    """Problem ``index`` of ``split`` under ``seed``; independent of how many are drawn."""
    assert split in SPECS, f"unknown toy split {split!r}; expected one of {SPLITS}"
    assert seed >= 0 and index >= 0, f"seed and index must be >= 0, got {seed}, {index}"
    spec = SPECS[split]
    rng = random.Random(f"toy/{split}/{seed}/{index}")
    name, item, container = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(CONTAINERS)
    for _ in range(1000):  # rejection sampling; a few tries at most in practice
        start = rng.randint(*spec.start)
        n_events = rng.randint(spec.min_events, spec.max_events)
        value, events, scales_left = start, [], spec.max_scales
        for _ in range(n_events):
            e = _draw_event(rng, spec, value, scales_left)
            scales_left -= e.kind == "scale"
            value = apply_event(value, e)
            events.append(e)
        if routes_differ(tuple(events)):
            pid = f"toy-{split}-{seed}-{index}"
            return ToyProblem(pid, split, name, item, container, start, tuple(events))
    raise RuntimeError(f"could not draw a toy problem for split={split} seed={seed} index={index}")


def toy_structures(split: str, n: int, seed: int) -> list[ToyProblem]:
    assert n >= 0, f"n must be >= 0, got {n}"
    return [toy_problem(split, seed, i) for i in range(n)]


def toy_problems(split: str, n: int, seed: int) -> list[Problem]:
    """``n`` problems of ``split`` ("easy" | "hard"), deterministic in ``seed``."""
    return [p.to_problem() for p in toy_structures(split, n, seed)]


def toy_set(name: str, n: int, seed: int) -> list[Problem]:
    """A named problem set (``toy-easy`` | ``toy-hard``)."""
    if name not in TOY_SETS:
        raise KeyError(f"unknown toy problem set {name!r}; known: {sorted(TOY_SETS)}")
    return toy_problems(TOY_SETS[name], n, seed)


def toy_structure(problem: Problem | ToyProblem) -> ToyProblem:
    """The structured form of a toy problem, rebuilt from its id (and checked against its text)."""
    if isinstance(problem, ToyProblem):
        return problem
    m = ID_RE.match(problem.id)
    if m is None:
        raise ValueError(f"not a toy problem id: {problem.id!r} (expected toy-<split>-<seed>-<index>)")
    toy = toy_problem(m.group(1), int(m.group(2)), int(m.group(3)))
    if toy.question != problem.question or str(toy.answer) != problem.answer:
        raise ValueError(f"problem {problem.id!r} does not match the toy problem its id names")
    return toy


# ---------------------------------------------------------------- solution routes
# A route is a plan: lines of symbolic steps whose operands are numbers from the question or
# references to earlier steps. ``run_plan`` computes it with some arithmetic: exact here, the
# teacher's fallible column arithmetic in teacher.py (a slip then propagates to later steps).


@dataclass(frozen=True)
class Ref:
    """The result of step number ``step`` of the same plan."""

    step: int


@dataclass(frozen=True)
class Step:
    x: int | Ref
    op: str
    y: int | Ref


@dataclass(frozen=True)
class PlanLine:
    """``label`` then the steps; a line with no steps just states ``label``."""

    label: str
    steps: tuple[Step, ...] = ()


class _PlanBuilder:
    """Collects plan lines; ``line`` returns a reference to the result of the line's last step."""

    def __init__(self) -> None:
        self.lines: list[PlanLine] = []
        self.n_steps = 0

    def line(self, label: str, steps: list[Step]) -> Ref | None:
        self.lines.append(PlanLine(label, tuple(steps)))
        self.n_steps += len(steps)
        return Ref(self.n_steps - 1) if steps else None


def _event_line(pb: _PlanBuilder, toy: ToyProblem, value: int | Ref, e: Event) -> Ref:
    """One event applied to the running count, labelled with its wording (``gets 7: 12+7=19.``)."""
    if e.kind == "groups":
        product = Ref(pb.n_steps)
        return pb.line(toy.label(e), [Step(e.a, "*", e.b), Step(value, "+", product)])
    op = {"gain": "+", "loss": "-", "scale": "*"}[e.kind]
    return pb.line(toy.label(e), [Step(value, op, e.a)])


def plan_in_order(toy: ToyProblem) -> list[PlanLine]:
    """Apply each event to the running count, in the order of the story."""
    pb, value = _PlanBuilder(), toy.start
    for e in toy.events:
        value = _event_line(pb, toy, value, e)
    return pb.lines


def _sum_line(pb: _PlanBuilder, label: str, terms: list[int | Ref], pre: list[Step]) -> int | Ref:
    """Write ``label`` with the steps ``pre`` (products) and a running sum of ``terms``."""
    if len(terms) == 1 and not pre:
        assert isinstance(terms[0], int)
        pb.line(f"{label} {terms[0]}", [])
        return terms[0]
    steps, first = list(pre), pb.n_steps + len(pre)
    total = terms[0]
    for k, term in enumerate(terms[1:]):
        steps.append(Step(total, "+", term))
        total = Ref(first + k)
    pb.line(label, steps)
    return total


def _run_changes_first(pb: _PlanBuilder, value: int | Ref, run: tuple[Event, ...]) -> int | Ref:
    """Net the gains and losses of one additive run, then apply the net to the count."""
    products, gains = [], []
    for e in run:
        if e.kind == "groups":
            gains.append(Ref(pb.n_steps + len(products)))
            products.append(Step(e.a, "*", e.b))
        elif e.kind == "gain":
            gains.append(e.a)
    losses = [e.a for e in run if e.kind == "loss"]
    # The sign of the net is read off the exact totals: a slip in the teacher's sums does not change
    # which way round it writes the subtraction.
    g_total = sum(e.a * e.b if e.kind == "groups" else e.a for e in run if e.kind != "loss")
    l_total = sum(losses)
    g = _sum_line(pb, "gains", gains, products) if gains else None
    lo = _sum_line(pb, "losses", losses, []) if losses else None
    if g is None:
        return pb.line("total", [Step(value, "-", lo)])
    if lo is None:
        return pb.line("total", [Step(value, "+", g)])
    at = pb.n_steps
    if g_total >= l_total:
        return pb.line("net gain", [Step(g, "-", lo), Step(value, "+", Ref(at))])
    return pb.line("net loss", [Step(lo, "-", g), Step(value, "-", Ref(at))])


def plan_changes_first(toy: ToyProblem) -> list[PlanLine]:
    """Within each run of additive events, add up gains and losses first, then apply the net;
    doubling/tripling and lone events are applied as they come."""
    pb, value = _PlanBuilder(), toy.start
    for run in runs(toy.events):
        value = _run_changes_first(pb, value, run) if len(run) >= 2 else _event_line(pb, toy, value, run[0])
    return pb.lines


def exact_arithmetic(a: int, op: str, b: int) -> int:
    return apply_op(a, op, b)


def run_plan(plan: list[PlanLine], arith=exact_arithmetic) -> list[tuple[str, list[Fact]]]:
    """Compute a plan with ``arith(a, op, b) -> int``; returns (label, facts) per line."""
    results: list[int] = []

    def value(x: int | Ref) -> int:
        return results[x.step] if isinstance(x, Ref) else x

    out = []
    for line in plan:
        facts = []
        for s in line.steps:
            a, b = value(s.x), value(s.y)
            c = arith(a, s.op, b)
            results.append(c)
            facts.append(Fact(a, s.op, b, c))
        out.append((line.label, facts))
    return out


def render_line(label: str, facts: list[Fact]) -> str:
    if not facts:
        return f"{label}."
    return f"{label}: " + " ".join(f.text() for f in facts)


def route_result(lines: list[tuple[str, list[Fact]]], start: int) -> int:
    """The count a computed route ends with (the last written result, else the start)."""
    last = [f for _, facts in lines for f in facts]
    return last[-1].c if last else start


def sequential_solution(problem: Problem | ToyProblem) -> str:
    """The stage-0 text: the in-order route, one event per line, then ``Final Answer: N``."""
    toy = toy_structure(problem)
    lines = [f"Start: {toy.start}."]
    lines += [render_line(label, facts) for label, facts in run_plan(plan_in_order(toy))]
    lines.append(f"Final Answer: {toy.answer}")
    return "\n".join(lines)


def pretraining_text(problem: Problem | ToyProblem) -> str:
    """Prompt and sequential solution as one document: ``question + "\\n" + solution``."""
    toy = toy_structure(problem)
    return toy.question + "\n" + sequential_solution(toy)
