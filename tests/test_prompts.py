"""Prompt templates: built-in parallel / sequential, templates from files, literal substitution."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from parallel_r1.data.problem import Problem
from parallel_r1.data.prompts import (
    PARALLEL,
    SEQUENTIAL,
    TEMPLATES,
    TemplateError,
    load_template,
    render,
    template_name,
)
from parallel_r1.format import TAGS

SHARED_PROMPTS = (Path(os.environ.get("PARALLEL_R1_SHARED", Path(__file__).resolve().parents[2] / "shared"))
                  / "data" / "prompts")
PROBLEM = Problem("p1", "What is $\\frac{6}{3}$? Write it as {x}.", "2")


def test_names_resolve_and_parallel_is_the_default():
    assert load_template() == PARALLEL
    assert load_template("parallel") == PARALLEL
    assert load_template("sequential") == SEQUENTIAL


def test_parallel_prompt_states_the_format():
    for tag in TAGS:
        assert tag in PARALLEL, tag
    assert "Final Answer:" in PARALLEL
    assert "two or more" in PARALLEL


def test_sequential_prompt_has_no_tags_and_asks_for_final_answer():
    assert not any(tag in SEQUENTIAL for tag in TAGS)
    assert 'after "Final Answer: "' in SEQUENTIAL


def test_render_substitutes_literally_every_placeholder():
    out = render("A {problem} B \\boxed{} {problem}", PROBLEM)
    assert out == f"A {PROBLEM.question} B \\boxed{{}} {PROBLEM.question}"
    assert render(SEQUENTIAL, "2+2?").startswith("2+2?\n")
    assert render(PARALLEL, PROBLEM).endswith("Problem: " + PROBLEM.question)


def test_template_from_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("Q: {problem}\nA:", encoding="utf-8")
    assert render(load_template(str(path)), PROBLEM) == f"Q: {PROBLEM.question}\nA:"
    assert template_name(str(path)) == "mine.txt"
    assert template_name("parallel") == "parallel"


def test_missing_placeholder_is_an_error(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("Solve it.", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"bad\.txt has no \{problem\} placeholder"):
        load_template(str(path))
    with pytest.raises(TemplateError, match="placeholder"):
        render("no slot", PROBLEM)


def test_unknown_template_name_is_an_error():
    with pytest.raises(TemplateError, match="unknown prompt template 'paralel'.*parallel, sequential or reference"):
        load_template("paralel")


def test_reference_is_a_named_template_shipped_with_the_package():
    """``--prompt reference`` needs no ../shared: the file is package data (assets/prompts)."""
    reference = load_template("reference")
    assert reference.startswith("Solve the following problem step by step.")
    assert reference.endswith("Problem: {problem}") and all(tag in reference for tag in TAGS)
    assert template_name("reference") == "reference"
    assert "reference" not in TEMPLATES, "the toy tokenizer trains on TEMPLATES; the demo must not change"


@pytest.mark.skipif(not SHARED_PROMPTS.is_dir(), reason="../shared/data/prompts is not present")
def test_packaged_reference_prompt_is_the_shared_file_byte_for_byte():
    shared = (SHARED_PROMPTS / "reference_parallel_prompt.txt").read_text(encoding="utf-8")
    assert load_template("reference") == shared


@pytest.mark.skipif(not SHARED_PROMPTS.is_dir(), reason="../shared/data/prompts is not present")
def test_reference_prompts_work():
    parallel = render(load_template(str(SHARED_PROMPTS / "reference_parallel_prompt.txt")), PROBLEM)
    assert parallel.endswith("Problem: " + PROBLEM.question)
    assert "<Parallel>" in parallel and "{problem}" not in parallel
    baseline = render(load_template(str(SHARED_PROMPTS / "reference_baseline_prompt.txt")), PROBLEM)
    assert baseline.startswith(PROBLEM.question + " Let's think step by step")
