"""The reference code's scorer: its answer check, its format check and its tiered reward, re-implemented.

``--scorer reference`` picks this module instead of ``judge.py`` so a run can be compared with the
Parallel-R1 reference numbers on the reference's own terms. The rules below were read from the
reference's verl reward code (zhengkid/Parallel-R1, ``verl/utils/reward_score/math_dapo.py`` for
accuracy, ``math_dapo_emphase_parallel.py`` for the tiered reward); this is our own code for them,
checked verdict by verdict against that code in ``tests/test_reference_scorer.py``.

1. Answer: the tags are special tokens in the reference and its reward manager decodes the answer
   text with ``skip_special_tokens=True``, so the six tags are dropped first; then only the last 300
   characters are read, the last ``Final Answer\\s*:\\s*(.+)`` match there (case-insensitive; the
   ``\\s*`` may cross a line break) is the answer, and it is correct iff its Minerva-normalised
   string equals the normalised gold string. No ``\\boxed{}`` fallback, no numeric equivalence
   (``36.00`` vs ``36`` is wrong). A missing answer is compared as the string ``[INVALID]``, as there.
2. Format: a stack over the tags in order. ``</Summary>`` is never looked at, so a block opened
   inside an unclosed summary passes; a block nested inside a path passes; a response may end inside
   its last summary. A block needs >= 2 closed paths, every ``</Parallel>`` needs a ``<Summary>``
   after it, and the number of ``<Summary>`` tags must equal the number of ``</Parallel>`` tags.
3. Rewards: accuracy is +1 / -1 on (1). Tiered gives +1.2 to a correct answer with >= 1
   ``<Parallel>`` and a valid format, +1.0 to a correct answer with no ``<Parallel>`` *whatever its
   format* (a stray ``</Path>`` still earns +1.0), -1.0 otherwise. The reference has no code for the
   gated stage-1 or the parallel-only reward in this form, so those are not offered here.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from parallel_r1.format.tags import PARALLEL_OPEN, TAGS
from parallel_r1.rewards.functions import CORRECT, CORRECT_PARALLEL, WRONG, VerdictLike, accuracy_reward

ANSWER_WINDOW = 300  # characters read from the end of the tag-free response
_ANSWER_RE = re.compile(r"Final Answer\s*:\s*([^\n]+)", re.IGNORECASE)
_TAG_RE = re.compile(r"</?(?:Parallel|Path|Summary)>")
MISSING = "[INVALID]"

# Minerva normalisation (Lewkowycz et al. 2022, appendix D; the same lists as lm-evaluation-harness's
# hendrycks_math utils, which the reference adapts). Order matters: each step sees the previous output.
_REPLACE = ((r"an ", ""), (r"a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
            (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"))
_DROP = ("square", "ways", "integers", "dollars", "mph", "inches", "hours", "km", "units", "\\ldots", "sue",
         "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals",
         "edges", "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}",
         "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;",
         ",\\!", "{,}", '"', "\\dots")
_REWRITE = (
    (re.compile(r".*?\$(.*?)\$.*"), r"$\1$"),  # keep only the first $...$ of a line
    (re.compile(r"\\text\{(.*?)\}"), r"\1"),
    (re.compile(r"\\textbf\{(.*?)\}"), r"\1"),
    (re.compile(r"\\overline\{(.*?)\}"), r"\1"),
    (re.compile(r"\\boxed\{(.*)\}"), r"\1"),
    (re.compile(r"frac([^{])(.)"), r"frac{\1}{\2}"),  # \fracab -> \frac{a}{b}
    (re.compile(r"sqrt([^{])"), r"sqrt{\1}"),  # \sqrta -> \sqrt{a}
)


def minerva_normalize(answer: str) -> str:
    """The reference's normalised form of an answer string (module docstring, point 1)."""
    s = answer.split("=")[-1]
    for old, new in _REPLACE:
        s = s.replace(old, new)
    for word in _DROP:
        s = s.replace(word, "")
    for pattern, repl in _REWRITE:
        s = pattern.sub(repl, s)
    s = s.replace("$", "")
    if s.replace(",", "").isdigit():  # thousands separators go only from plain integers
        s = s.replace(",", "")
    return s.strip()


def strip_tags(text: str) -> str:
    """``text`` as the reference's reward manager decodes it for the answer: the six tags dropped."""
    for tag in TAGS:
        text = text.replace(tag, "")
    return text


def reference_extract(response: str) -> str | None:
    """The raw last ``Final Answer:`` match in the last 300 tag-free characters, or None."""
    matches = _ANSWER_RE.findall(strip_tags(response)[-ANSWER_WINDOW:])
    return matches[-1] if matches else None


class _FormatCheck:
    """One pass over the tags of a response with the reference checker's rules (point 2)."""

    def __init__(self) -> None:
        self.open: list[str] = []  # "Parallel" / "Path", innermost last
        self.closed_paths: list[int] = []  # closed paths of each open block, innermost last
        self.awaiting_summary = False
        self.summaries = 0
        self.errors: list[str] = []

    def feed(self, k: int, tag: str) -> None:
        if tag in ("<Parallel>", "<Path>"):
            self.open.append(tag[1:-1])
            if tag == "<Parallel>":
                self.closed_paths.append(0)
                self.awaiting_summary = False
        elif tag in ("</Path>", "</Parallel>"):
            self._close(k, tag[2:-1])
        elif tag == "<Summary>":
            if not self.awaiting_summary:
                self.errors.append(f"tag #{k}: <Summary> without a </Parallel> right before it")
            self.awaiting_summary = False
            self.summaries += 1
        # "</Summary>": the reference checker ignores it

    def _close(self, k: int, name: str) -> None:
        if not self.open or self.open[-1] != name:
            self.errors.append(f"tag #{k}: </{name}> closes nothing open")
            return
        self.open.pop()
        if name == "Path" and self.closed_paths:
            self.closed_paths[-1] += 1
        elif name == "Parallel":
            paths = self.closed_paths.pop()
            if paths < 2:
                self.errors.append(f"tag #{k}: block closed with {paths} path(s), needs 2")
            self.awaiting_summary = True

    def finish(self, text: str) -> tuple[str, ...]:
        if self.open:
            self.errors.append(f"unclosed at the end: {self.open}")
        if self.awaiting_summary:
            self.errors.append("no <Summary> after the last </Parallel>")
        closes = text.count("</Parallel>")
        if self.summaries != closes:
            self.errors.append(f"{self.summaries} <Summary> for {closes} </Parallel>")
        return tuple(self.errors)


def reference_format_errors(text: str) -> tuple[str, ...]:
    """Why the reference checker rejects ``text``; empty when it accepts it."""
    check = _FormatCheck()
    for k, m in enumerate(_TAG_RE.finditer(text)):
        check.feed(k, m.group())
    return check.finish(text)


@dataclass(frozen=True)
class ReferenceVerdict:
    """What the reference scorer found; the fields rewards and metrics read match ``Verdict``'s.

    ``num_valid_blocks`` has no per-block meaning here (the reference checks the response as a
    whole): it is ``num_parallel`` when the whole format is valid, else 0. ``extracted`` is the raw
    match, ``normalized`` the string that was compared."""

    correct: bool
    format_valid: bool
    num_parallel: int
    num_valid_blocks: int
    extracted: str | None
    normalized: str
    errors: tuple[str, ...] = ()
    timed_out: bool = False
    check_method: str = "reference"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["errors"] = list(self.errors)
        return d


def reference_judge(response: str, gold: str) -> ReferenceVerdict:
    """Judge ``response`` against ``gold`` by the reference's rules (module docstring)."""
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    extracted = reference_extract(response)
    normalized = minerva_normalize(extracted if extracted is not None else MISSING)
    format_errors = reference_format_errors(response)
    num_parallel = response.count(PARALLEL_OPEN)
    errors = [f"format: {e}" for e in format_errors]
    if extracted is None:
        errors.append(f"answer: no 'Final Answer:' in the last {ANSWER_WINDOW} characters")
    return ReferenceVerdict(
        correct=normalized == minerva_normalize(str(gold)),
        format_valid=not format_errors,
        num_parallel=num_parallel,
        num_valid_blocks=num_parallel if not format_errors else 0,
        extracted=extracted,
        normalized=normalized,
        errors=tuple(errors),
    )


def reference_tiered_reward(v: VerdictLike) -> float:
    """Point 3: +1.0 for a correct answer with no ``<Parallel>`` even when the format is invalid."""
    if v.correct and v.num_parallel == 0:
        return CORRECT
    if v.correct and v.format_valid:
        return CORRECT_PARALLEL
    return WRONG


REFERENCE_BASE_REWARDS = {"accuracy": accuracy_reward, "tiered": reference_tiered_reward}
