"""Done criterion of the structure issue: every pilot trace, tokenised with a real tokenizer plus the
tags, round-trips: the spans ``find_blocks`` reads from the ids match the text-level parse.

Tokenizer: SmolLM2-135M-Instruct's (tests/fixtures/smollm2_tokenizer, see tests/fixtures/README.md).
Traces: the shipped slice (tests/fixtures/pilot_slice.jsonl) always, the whole pilot set from
../shared/data when present (or $PARALLEL_R1_SHARED/data).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from parallel_r1.format import PARALLEL_CLOSE, PATH_CLOSE, SUMMARY_CLOSE, parse
from parallel_r1.structure import add_tags, find_blocks

HERE = Path(__file__).resolve().parent
SLICE = HERE / "fixtures" / "pilot_slice.jsonl"
SHARED = Path(os.environ.get("PARALLEL_R1_SHARED", HERE.parents[1] / "shared"))
PILOT = SHARED / "data" / "parallel_gsm8k_pilot.jsonl"


@pytest.fixture(scope="module")
def tokenizer_and_tags():
    tok = AutoTokenizer.from_pretrained(HERE / "fixtures" / "smollm2_tokenizer")
    return tok, add_tags(tok)


def check_trace(tok, tids, text: str) -> None:
    """Token spans of ``text`` == its text parse: same blocks, same path and summary contents."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    closing = {v: k for k, v in tids.items()}
    parsed = parse(text)
    blocks = find_blocks(ids, tids)
    assert len(blocks) == len(parsed.blocks)

    def content(span, close_tag):  # char range and text after the opening tag, up to its closing tag
        s, e = span
        if closing.get(ids[e - 1]) != close_tag:  # unclosed: runs to the end of the text
            return offsets[s][1], len(text), tok.decode(ids[s + 1 : e], skip_special_tokens=False)
        return offsets[s][1], offsets[e - 1][0], tok.decode(ids[s + 1 : e - 1], skip_special_tokens=False)

    for tb, pb in zip(blocks, parsed.blocks, strict=True):
        assert offsets[tb.parallel][0] == pb.start
        assert (tb.close is not None) == pb.closed
        if tb.close is not None:
            assert text[slice(*offsets[tb.close])] == PARALLEL_CLOSE
        closed_paths = [p for p in tb.paths if closing.get(ids[p[1] - 1]) == PATH_CLOSE]
        assert [content(p, PATH_CLOSE) for p in closed_paths] == [(s.start, s.end, s.text) for s in pb.paths]
        expected = None if pb.summary is None else (pb.summary.start, pb.summary.end, pb.summary.text)
        assert (None if tb.summary is None else content(tb.summary, SUMMARY_CLOSE)) == expected


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def test_shipped_slice_round_trips(tokenizer_and_tags):
    rows = load(SLICE)
    assert len(rows) >= 20
    truncated = [r for r in rows if r["id"] == "pilot-475"]  # ends inside its last summary
    assert truncated and parse(truncated[0]["response"]).blocks[-1].summary is not None
    for row in rows:
        check_trace(*tokenizer_and_tags, row["response"])


@pytest.mark.skipif(not PILOT.exists(), reason="../shared/data/parallel_gsm8k_pilot.jsonl is not present")
def test_every_pilot_trace_round_trips(tokenizer_and_tags):
    rows = load(PILOT)
    assert len(rows) == 341
    for row in rows:
        check_trace(*tokenizer_and_tags, row["response"])


def test_tag_text_in_a_prompt_is_tokenised_as_tags(tokenizer_and_tags):
    """Why build_batch reads structure from the response only: the reference prompt names the tags."""
    tok, tids = tokenizer_and_tags
    prompt = "Within each <Parallel> block, enclose every path in <Path> and </Path>."
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert tids["<Parallel>"] in ids and tids["<Path>"] in ids
