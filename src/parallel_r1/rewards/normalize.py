"""Answer-string normalisation and the cheap exact comparison that runs before math-verify.

Pure Python (regexes and ``fractions.Fraction``), no sympy: every step is linear in the length of
the answer, so this part can run in the caller's thread without a timeout.

What it decides, and where it departs from the reference checker (Minerva normalisation + exact
string match, docs/paper.md section 4), on purpose:
1. Wrappers are dropped: a whole-string ``\\boxed{..}`` / ``\\fbox{..}``, ``$..$``, ``\\(..\\)``,
   ``\\[..\\]``, a lone currency ``$`` or ``\\$`` (``$1600.`` -> ``1600``), LaTeX thin spaces, a
   trailing full stop. The reference marks ``$1600.`` vs ``1600`` wrong; here it is right.
2. A plain number is read exactly: integers, decimals (``36.00`` == ``36``, a reference false
   negative), thousands commas in groups of three (``1,600`` == ``1600``; ``1,2`` is *not* a number),
   ``a/b`` and ``\\frac{a}{b}`` with integer parts (``\\frac{1}{2}`` == ``0.5``).
3. Decorations after a number are dropped: ``%`` / ``\\%`` (so ``50\\%`` == ``50``), ``^\\circ``,
   ``\\text{..}`` / ``\\mbox{..}`` units, and plain words after a space (``19 pets`` == ``19``,
   ``18 dollars`` == ``18``), except scale words (``5 thousand`` is not 5). GSM8K-style questions
   ask for a count or an amount; a model that names the unit has the right answer. Cost: ``3 x``
   also reads as 3 (math-verify would read a product); we accept that.
4. The fast path is *final* only where exact arithmetic settles it: two numbers that are equal, or
   two numbers that are both integers (and unequal). Anything else (non-integer mismatches, where
   math-verify rounds to 6 places, and all symbolic answers) goes to math-verify, except that two
   normalised strings that are identical (ignoring whitespace) are a match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

# Longest numeric literal the fast path reads; longer ones go to math-verify (bounded by its timeout).
MAX_NUMBER_CHARS = 200

_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_BOX_PREFIXES = ("\\boxed{", "\\fbox{")
_SPACING = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~")
_UNICODE = str.maketrans({"\u2212": "-", "\u2013": "-", "\u00a0": " ", "\u2009": " ", "\u202f": " "})

_DECIMAL = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+"
# fractions first: ``match`` commits to the first alternative that matches a prefix
_NUMBER_RE = re.compile(rf"-?\\frac\{{-?\d+\}}\{{\d+\}}|-?\d+/\d+|(?:{_DECIMAL})")
# units/decorations that may follow a number: percent, degrees, \text{..}/\mbox{..}, words after a space
_SUFFIX_RE = re.compile(
    r"(?:\s*\\?%|\s*\^\s*\{?\\circ\}?|\s*\\(?:text|mbox|mathrm)\{[^{}\d]*\}|\s+[A-Za-z]+)*"
)
_SCALE_WORDS = {"dozen", "dozens", "hundred", "hundreds", "thousand", "thousands", "million", "millions",
                "billion", "billions", "trillion", "trillions"}
_FRAC_RE = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(\d+)\}")


def _strip_box(s: str) -> str:
    """Content of a ``\\boxed{..}`` that wraps the whole string (braces matched), else ``s``."""
    for prefix in _BOX_PREFIXES:
        if s.startswith(prefix) and s.endswith("}"):
            depth = 0
            for i in range(len(prefix) - 1, len(s)):
                depth += {"{": 1, "}": -1}.get(s[i], 0)
                if depth == 0:
                    return s[len(prefix) : i].strip() if i == len(s) - 1 else s
    return s


def _strip_wrappers(s: str) -> str:
    for left, right in _WRAPPERS:
        if len(s) > len(left) + len(right) and s.startswith(left) and s.endswith(right):
            inner = s[len(left) : -len(right)]
            if "$" not in inner:
                return inner.strip()
    return s


def normalize_answer(text: str) -> str:
    """The answer with wrappers, currency signs, LaTeX spacing and a trailing full stop removed.

    Kept as LaTeX (this string is also what math-verify parses); see the module docstring."""
    s = text.translate(_UNICODE).strip()
    s = s.replace("\\$", "")
    if s.count("$") == 1:  # a lone "$" is a currency sign, not a math delimiter
        s = s.replace("$", "")
    for _ in range(3):  # nested wrappers, e.g. "$\boxed{19}$"
        before = s
        s = _strip_wrappers(_strip_box(s.strip().rstrip(".").strip()))
        if s == before:
            break
    s = _SPACING.sub(" ", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return s.strip().rstrip(".").strip()


def parse_number(text: str) -> Fraction | None:
    """Exact value of a normalised answer that is a plain number (with optional unit), else None."""
    if len(text) > MAX_NUMBER_CHARS:
        return None
    m = _NUMBER_RE.match(text)
    if m is None or _SUFFIX_RE.fullmatch(text, m.end()) is None:
        return None
    if _SCALE_WORDS & set(re.findall(r"[a-z]+", text[m.end() :].lower())):
        return None  # "5 thousand" is not 5; math-verify reads it (as a product, i.e. wrong)
    literal = m.group(0)
    frac = _FRAC_RE.fullmatch(literal)
    if frac is not None:
        sign, num, den = frac.groups()
        literal = f"{sign}{num}/{den}".replace("--", "")
    if literal.endswith("/0"):
        return None
    return Fraction(literal.replace(",", ""))


@dataclass(frozen=True)
class FastResult:
    """Outcome of the exact fast path: ``decided`` False means "ask math-verify"."""

    decided: bool
    correct: bool = False


def fast_compare(predicted: str, gold: str) -> FastResult:
    """Exact comparison of two *normalised* answers; see rule 4 of the module docstring."""
    if "".join(predicted.split()) == "".join(gold.split()) and predicted:
        return FastResult(decided=True, correct=True)
    p, g = parse_number(predicted), parse_number(gold)
    if p is None or g is None:
        return FastResult(decided=False)
    if p == g:
        return FastResult(decided=True, correct=True)
    if p.denominator == 1 and g.denominator == 1:
        return FastResult(decided=True, correct=False)
    return FastResult(decided=False)
