"""find_blocks: token spans of blocks, paths and summaries, tolerant of malformed output."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parallel_r1.format.tags import TAGS
from parallel_r1.structure import BlockSpan, find_blocks, path_regions

TID = {t: 100 + i for i, t in enumerate(TAGS)}
PAR, PAR_C, PATH, PATH_C, SUM, SUM_C = (TID[t] for t in TAGS)


def test_canonical_response():
    ids = [1, 2, PAR, PATH, 3, PATH_C, PATH, 4, 5, PATH_C, PAR_C, SUM, 6, SUM_C, 7]
    assert find_blocks(ids, TID) == [BlockSpan(parallel=2, paths=[(3, 6), (6, 10)], close=10, summary=(11, 14))]


def test_two_blocks_and_text_between_tags():
    # newlines (id 9) between the tags of a block, as in the teacher traces
    ids = [PAR, 9, PATH, 3, PATH_C, 9, PATH, 4, PATH_C, 9, PAR_C, 9, SUM, 5, SUM_C, 8, PAR, PATH, 1, PATH_C, PAR_C]
    assert find_blocks(ids, TID) == [
        BlockSpan(parallel=0, paths=[(2, 5), (6, 9)], close=10, summary=(12, 15)),
        BlockSpan(parallel=16, paths=[(17, 20)], close=20, summary=None),
    ]


def test_truncated_path_runs_to_the_end():
    ids = [1, PAR, PATH, 2, PATH_C, PATH, 3, 4]
    assert find_blocks(ids, TID) == [BlockSpan(parallel=1, paths=[(2, 5), (5, 8)], close=None)]


def test_truncated_summary_runs_to_the_end():
    ids = [PAR, PATH, 2, PATH_C, PAR_C, SUM, 3]
    assert find_blocks(ids, TID)[0].summary == (5, 7)


def test_stray_closing_tags_are_ignored():
    ids = [PATH_C, PAR_C, SUM_C, 1, PAR, PATH_C, PATH, 2, PATH_C, PAR_C, PATH_C, 3]
    assert find_blocks(ids, TID) == [BlockSpan(parallel=4, paths=[(6, 9)], close=9)]


def test_tags_inside_a_path_are_content_until_its_first_close():
    """The engine decodes a path until its first </Path>: a nested block is path content."""
    ids = [PAR, PATH, 1, PAR, PATH, 2, PATH_C, 3, PATH_C, PAR_C]
    # the first </Path> closes the outer path; the second </Path> closes nothing and is ignored
    assert find_blocks(ids, TID) == [BlockSpan(parallel=0, paths=[(1, 7)], close=9)]
    ids = [PAR, PATH, 1, PAR_C, SUM, 2, PATH_C, PAR_C]
    assert find_blocks(ids, TID) == [BlockSpan(parallel=0, paths=[(1, 7)], close=7)]


def test_parallel_inside_an_open_block_is_content():
    ids = [PAR, PATH, 1, PATH_C, PAR, PATH, 2, PATH_C, PAR_C]
    assert find_blocks(ids, TID) == [BlockSpan(parallel=0, paths=[(1, 4), (5, 8)], close=8)]


def test_summary_must_be_the_first_tag_after_the_close():
    ids = [PAR, PATH, 1, PATH_C, PAR_C, 5, 5, SUM, 2, SUM_C]  # text between is allowed
    assert find_blocks(ids, TID)[0].summary == (7, 10)
    ids = [PAR, PATH, 1, PATH_C, PAR_C, PATH_C, SUM, 2, SUM_C]  # another tag first: orphan summary
    assert find_blocks(ids, TID)[0].summary is None
    assert find_blocks([SUM, 1, SUM_C], TID) == []


def test_tags_inside_a_summary_are_content():
    ids = [PAR, PATH, 1, PATH_C, PAR_C, SUM, PAR, PATH, 2, SUM_C, 3]
    assert find_blocks(ids, TID) == [BlockSpan(parallel=0, paths=[(1, 4)], close=4, summary=(5, 10))]


def test_path_regions_keep_gaps_with_the_path_they_follow():
    b = find_blocks([PAR, 9, PATH, 1, PATH_C, 9, PATH, 2, PATH_C, 9, PAR_C], TID)[0]
    assert path_regions(b, 11) == [(2, 6), (6, 10)]
    open_block = find_blocks([PAR, PATH, 1, PATH_C, 9, 9], TID)[0]
    assert path_regions(open_block, 6) == [(1, 6)]


def test_bad_tag_map_is_an_error():
    with pytest.raises(ValueError, match="lacks"):
        find_blocks([1], {TAGS[0]: 1})
    with pytest.raises(ValueError, match="distinct"):
        find_blocks([1], dict.fromkeys(TAGS, 5))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([0, 1, *TID.values()]), max_size=40))
def test_never_raises_and_spans_are_well_formed(ids):
    blocks = find_blocks(ids, TID)
    n, prev_end = len(ids), 0
    for b in blocks:
        assert ids[b.parallel] == PAR and b.parallel >= prev_end
        cursor = b.parallel + 1
        for s, e in b.paths:
            assert cursor <= s < e <= n and ids[s] == PATH
            assert ids[e - 1] == PATH_C or e == n  # closed, or unclosed and running to the end
            assert PATH_C not in ids[s + 1 : e - 1]
            cursor = e
        if b.close is not None:
            assert ids[b.close] == PAR_C and b.close >= cursor
            cursor = b.close + 1
        if b.summary is not None:
            s, e = b.summary
            assert b.close is not None and ids[s] == SUM and s > b.close
            assert ids[e - 1] == SUM_C or e == n
            cursor = e
        prev_end = cursor


# --- agreement with the text-level parser on valid responses -------------------------------------
# A character-level "tokenizer": each tag is one token, every other character its code point.
CHAR_TAG = {t: 1_000_000 + i for i, t in enumerate(TAGS)}
words = st.text(alphabet="ab \n", max_size=4)


@st.composite
def valid_response(draw) -> list[str]:
    """Pieces of a valid response: main-chain text, blocks of >= 2 paths, each with a summary."""
    out = []
    for _ in range(draw(st.integers(0, 3))):
        out += [draw(words), "<Parallel>", draw(words)]
        for _ in range(draw(st.integers(2, 3))):
            out += ["<Path>", draw(words), "</Path>", draw(words)]
        out += ["</Parallel>", draw(words), "<Summary>", draw(words), "</Summary>"]
    return [*out, draw(words)]


def char_tokens(pieces: list[str]) -> tuple[list[int], list[int]]:
    """Token ids and the character offset where each token starts."""
    ids, starts, at = [], [], 0
    for piece in pieces:
        toks = [CHAR_TAG[piece]] if piece in CHAR_TAG else [ord(c) for c in piece]
        for tok in toks:
            ids.append(tok), starts.append(at)
            at += len(piece) if piece in CHAR_TAG else 1
    return ids, starts


@settings(max_examples=200, deadline=None)
@given(valid_response())
def test_agrees_with_the_text_parser_on_valid_responses(pieces):
    from parallel_r1.format import parse

    text = "".join(pieces)
    parsed = parse(text)
    assert parsed.valid, parsed.errors
    ids, starts = char_tokens(pieces)
    blocks = find_blocks(ids, CHAR_TAG)
    assert len(blocks) == len(parsed.blocks)

    def chars(span, open_tag):  # content between the tags, as character offsets
        s, e = span
        return starts[s] + len(open_tag), starts[e - 1]

    for tb, pb in zip(blocks, parsed.blocks, strict=True):
        assert starts[tb.parallel] == pb.start
        assert [chars(p, "<Path>") for p in tb.paths] == [(s.start, s.end) for s in pb.paths]
        assert chars(tb.summary, "<Summary>") == (pb.summary.start, pb.summary.end)
