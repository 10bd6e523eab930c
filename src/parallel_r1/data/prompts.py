"""Prompt templates: the project's own parallel and sequential prompts, or a template read from a file.

A template is plain text with one or more ``{problem}`` placeholders. ``render`` substitutes the
problem text literally (``str.replace``, not ``str.format``), so templates may hold other braces such
as ``\\boxed{}`` without escaping. Names: ``parallel`` (the default), ``sequential``, ``reference``,
or a path.

Departures from the paper (docs/paper.md section 2):
1. ``PARALLEL`` states the same rules as the reference teacher/SFT/RL prompt (insert a block where
   independent perspectives help; at least two independent ``<Path>``s with no cross-references;
   ``</Parallel>`` then a concise ``<Summary>``; repeat as needed; end with ``Final Answer:``) in the
   project's own words. Released checkpoints were trained on the reference wording: to evaluate them,
   use ``reference``, the reference prompt itself (MIT), shipped as package data
   (``assets/prompts/``, where its README says where it came from) so an installed wheel has it.
2. ``SEQUENTIAL`` is the baseline: the problem, then an instruction to reason step by step and give
   the answer after ``Final Answer:``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from parallel_r1.data.problem import Problem
from parallel_r1.files import read_text

PLACEHOLDER = "{problem}"

PARALLEL = """\
Work through the problem below step by step.

At any point where the reasoning could gain from looking at the step in more than one independent \
way (a second method, a check, a different case), open a parallel block:
- Start the block with <Parallel>.
- Inside it, write two or more reasoning paths, each wrapped in <Path> and </Path>.
- Every path must stand on its own: the paths are produced at the same time, so no path may refer to \
another path, to an order between them, or to what another one found.
- End the block with </Parallel>, and right after it condense what the paths showed into a short \
<Summary> ... </Summary>.
Use as many blocks as the problem calls for, wherever they help; let them fit into the reasoning \
without announcing them.

Finish with a last line of the form "Final Answer: <answer>".

Problem: {problem}"""

SEQUENTIAL = """\
{problem}
Reason through this step by step, then write the final answer on a last line after "Final Answer: "."""

TEMPLATES = {"parallel": PARALLEL, "sequential": SEQUENTIAL}
DEFAULT_TEMPLATE = "parallel"
# Named templates read from package data. Kept out of TEMPLATES: the toy tokenizer trains on
# TEMPLATES' texts, and adding one would change its vocabulary and every demo figure.
PACKAGED = {"reference": "reference_parallel_prompt.txt"}


class TemplateError(ValueError):
    """A template that cannot be used; the message names the template."""


def load_template(spec: str | Path = DEFAULT_TEMPLATE) -> str:
    """A template by name (``parallel`` | ``sequential`` | ``reference``) or from a UTF-8 text file."""
    spec_text = str(spec)
    if spec_text in TEMPLATES:
        return TEMPLATES[spec_text]
    if spec_text in PACKAGED:
        return packaged_template(spec_text)
    path = Path(spec_text).expanduser()
    if not path.exists():
        raise TemplateError(
            f"unknown prompt template {spec_text!r}: expected {', '.join(TEMPLATES)} or {', '.join(PACKAGED)}, "
            "or a path to a text file holding a {problem} placeholder"
        )
    template = read_text(path, "prompt template", TemplateError)  # a folder, not UTF-8: named errors
    check_template(template, name=str(path))
    return template


def packaged_template(name: str) -> str:
    """A template shipped in ``parallel_r1/assets/prompts`` (``PACKAGED``)."""
    source = resources.files("parallel_r1").joinpath("assets", "prompts", PACKAGED[name])
    try:
        template = source.read_text(encoding="utf-8")
    except OSError as exc:  # a broken install: name the missing file
        raise TemplateError(f"prompt template {name!r}: cannot read the packaged file {source}: {exc}") from exc
    check_template(template, name=name)
    return template


def template_name(spec: str | Path) -> str:
    """A short label for logs and run records: the name, or the file's name."""
    spec_text = str(spec)
    return spec_text if spec_text in TEMPLATES or spec_text in PACKAGED else Path(spec_text).name


def check_template(template: str, name: str = "template") -> None:
    if PLACEHOLDER not in template:
        raise TemplateError(f"prompt {name} has no {PLACEHOLDER} placeholder, so the problem would be lost")


def render(template: str, problem: Problem | str) -> str:
    """The prompt for one problem: every ``{problem}`` replaced by the question text."""
    check_template(template)
    question = problem.question if isinstance(problem, Problem) else problem
    if not isinstance(question, str):
        raise TypeError(f"render() expects a Problem or a str, got {type(problem).__name__}")
    return template.replace(PLACEHOLDER, question)
