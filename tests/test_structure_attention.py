"""structured_attention / causal_attention: the DESIGN.md contract, checked exactly.

The property test builds random canonical responses and, while building them, writes down what the
contract says each token's position is and which path it belongs to; the mask and positions of
``structured_attention`` must equal that oracle token for token.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from parallel_r1.format.tags import TAGS
from parallel_r1.structure import attention_for_mode, causal_attention, structured_attention

TID = {t: 100 + i for i, t in enumerate(TAGS)}
PAR, PAR_C, PATH, PATH_C, SUM, SUM_C = (TID[t] for t in TAGS)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensor ops are far slower with a 2-thread pool on a busy 2-core machine; restore after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def oracle_mask(paths: list[tuple[int, int]]) -> torch.Tensor:
    """Brute force from labels: causal, and blind where (block, path) differ within one block."""
    rows = [
        [j <= i and not (pi >= 0 and pj >= 0 and bi == bj and pi != pj) for j, (bj, pj) in enumerate(paths)]
        for i, (bi, pi) in enumerate(paths)
    ]
    return torch.tensor(rows, dtype=torch.bool).reshape(len(paths), len(paths))


# a response: main-chain runs and blocks; a block is (path lengths >= 0 inner tokens, summary length)
blocks_st = st.tuples(st.lists(st.integers(0, 4), min_size=1, max_size=3), st.integers(0, 3))
response_st = st.lists(st.tuples(st.integers(0, 3), blocks_st), max_size=3)


def build(response) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """ids, contract positions, (block, path) label of each token (-1 outside paths)."""
    ids, pos, lab, p = [], [], [], 0
    for b, (main_len, (path_lens, sum_len)) in enumerate(response):
        for _ in range(main_len):
            ids.append(1), pos.append(p), lab.append((-1, -1))
            p += 1
        ids.append(PAR), pos.append(p), lab.append((-1, -1))  # <Parallel> at p
        for k, n in enumerate(path_lens):  # every path: <Path> at p+1, counting up
            toks = [PATH] + [2] * n + [PATH_C]
            ids += toks
            pos += [p + 1 + t for t in range(len(toks))]
            lab += [(b, k)] * len(toks)
        p = p + 1 + max(path_lens) + 2  # </Parallel>: one past the highest </Path> position
        for tok in [PAR_C, SUM] + [3] * sum_len + [SUM_C]:
            ids.append(tok), pos.append(p), lab.append((-1, -1))
            p += 1
    ids.append(4), pos.append(p), lab.append((-1, -1))
    return ids, pos, lab


@settings(max_examples=200, deadline=None)
@given(response_st)
def test_contract_on_random_canonical_responses(response):
    ids, pos, lab = build(response)
    mask, position_ids = structured_attention(ids, TID)
    assert mask.dtype == torch.bool and mask.shape == (len(ids), len(ids))
    assert position_ids.dtype == torch.long and position_ids.tolist() == pos
    assert torch.equal(mask, oracle_mask(lab))


def test_worked_example():
    #      0  1  2    3     4  5  6       7     8  9       10     11   12 13     14
    ids = [1, 1, PAR, PATH, 5, 5, PATH_C, PATH, 7, PATH_C, PAR_C, SUM, 8, SUM_C, 9]
    mask, pos = structured_attention(ids, TID)
    assert pos.tolist() == [0, 1, 2, 3, 4, 5, 6, 3, 4, 5, 7, 8, 9, 10, 11]
    assert not mask[7:10, 3:7].any()  # path 2 is blind to path 1
    assert mask[7:10, :3].all()  # ... but sees the prefix and <Parallel>
    assert mask[10:, :].sum(1).tolist() == [11, 12, 13, 14, 15]  # after </Parallel>: everything before
    assert torch.equal(mask, mask.tril())


def test_text_between_tags_of_a_block():
    """Gaps: before the first <Path> they are shared; after a </Path> they belong to that path."""
    #      0    1  2     3  4       5  6     7       8  9      10
    ids = [PAR, 9, PATH, 1, PATH_C, 9, PATH, PATH_C, 9, PAR_C, 5]
    mask, pos = structured_attention(ids, TID)
    assert pos.tolist() == [0, 1, 2, 3, 4, 5, 2, 3, 4, 6, 7]
    assert mask[6:9, :2].all() and not mask[6:9, 2:6].any()  # path 2 sees the leading gap only
    assert mask[9:, :].all(1).tolist() == [False, True] and mask[9, :10].all()


def test_truncated_path_stays_isolated():
    ids = [1, PAR, PATH, 2, 2, PATH_C, PATH, 3]
    mask, pos = structured_attention(ids, TID)
    assert pos.tolist() == [0, 1, 2, 3, 4, 5, 2, 3]
    assert not mask[6:, 2:6].any()


def test_several_blocks_count_on():
    ids = [PAR, PATH, PATH_C, PATH, 1, 1, PATH_C, PAR_C, SUM, SUM_C, PAR, PATH, 1, PATH_C, PATH, PATH_C, PAR_C, 2]
    _, pos = structured_attention(ids, TID)
    # block 1: <Parallel> 0, paths 1..2 and 1..4, </Parallel> 5; block 2 starts at 8
    assert pos.tolist() == [0, 1, 2, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 9, 10, 12, 13]


def test_accepts_a_tensor_and_an_empty_sequence():
    ids = [1, PAR, PATH, 2, PATH_C, PATH, PATH_C, PAR_C]
    m1, p1 = structured_attention(ids, TID)
    m2, p2 = structured_attention(torch.tensor(ids), TID)
    assert torch.equal(m1, m2) and torch.equal(p1, p2)
    m0, p0 = structured_attention([], TID)
    assert m0.shape == (0, 0) and p0.shape == (0,)


def test_blocks_without_paths_count_on():
    """Regression: path_regions raised on a block with no <Path> (e.g. cut right after <Parallel>)."""
    for ids in ([1, PAR], [1, PAR, 2, 3], [PAR, PAR_C, SUM, 2, SUM_C, 3]):
        mask, pos = structured_attention(ids, TID)
        assert torch.equal(mask, torch.ones(len(ids), len(ids), dtype=torch.bool).tril())
        assert pos.tolist() == list(range(len(ids)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([0, 1, *TID.values()]), max_size=40))
def test_any_id_sequence_gives_a_causal_mask_with_a_diagonal(ids):
    """Malformed output never raises; the mask stays causal and every token sees itself."""
    mask, pos = structured_attention(ids, TID)
    n = len(ids)
    assert torch.equal(mask & ~torch.ones(n, n, dtype=torch.bool).tril(), torch.zeros(n, n, dtype=torch.bool))
    assert mask.diagonal().all() and (mask[:, :1].all() if n else True)
    assert (pos >= 0).all() and (pos <= torch.arange(n)).all()


def test_causal_attention_is_the_seen_form():
    ids = [1, PAR, PATH, 2, PATH_C, PATH, 3, PATH_C, PAR_C, 4]
    mask, pos = causal_attention(ids, TID)
    assert torch.equal(mask, torch.ones(10, 10, dtype=torch.bool).tril())
    assert pos.tolist() == list(range(10))
    assert attention_for_mode("seen") is causal_attention
    assert attention_for_mode("unseen") is structured_attention
    with pytest.raises(ValueError, match="mode"):
        attention_for_mode("sequential")
