"""build_batch: layout, padding, 4D additive mask, positions and label helpers (no model needed)."""

from __future__ import annotations

import pytest
import torch

from parallel_r1.format.tags import TAGS
from parallel_r1.structure import build_batch, find_blocks, structured_attention

TID = {t: 100 + i for i, t in enumerate(TAGS)}
PAR, PAR_C, PATH, PATH_C, SUM, SUM_C = (TID[t] for t in TAGS)
PAD = 0

PROMPTS = [[1, 2], [3, PAR, PATH, 4]]  # the second prompt holds tag tokens (as the reference prompt does)
RESPONSES = [[PAR, PATH, 6, PATH_C, PATH, 7, 7, PATH_C, PAR_C, 8], [9]]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensor ops are far slower with a 2-thread pool on a busy 2-core machine; restore after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def expected_row_mask(prompt: list[int], response: list[int]) -> torch.Tensor:
    """Causal prompt, structured response that sees the whole prompt."""
    n_p, n = len(prompt), len(prompt) + len(response)
    full = torch.ones(n, n, dtype=torch.bool).tril()
    full[n_p:, n_p:] = structured_attention(response, TID)[0]
    return full


def test_layout_padding_and_positions():
    batch = build_batch(PROMPTS, RESPONSES, TID, pad_id=PAD)
    assert batch.prompt_width == 4 and batch.response_width == 10
    assert batch.input_ids.tolist() == [
        [PAD, PAD, 1, 2, *RESPONSES[0]],
        [3, PAR, PATH, 4, 9] + [PAD] * 9,
    ]
    # row 0: prompt 0..1, then <Parallel> at 2, paths restart at 3, </Parallel> at 3+4, ...
    assert batch.position_ids[0].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8]
    assert batch.position_ids[1].tolist() == [0, 1, 2, 3, 4] + [0] * 9
    assert batch.valid.sum(1).tolist() == [12, 5]
    assert batch.response_mask.sum(1).tolist() == [10, 1]
    assert batch.attention_mask.shape == (2, 1, 14, 14) and batch.attention_mask.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_rows_match_the_single_sequence_masks(dtype):
    batch = build_batch(PROMPTS, RESPONSES, TID, pad_id=PAD, dtype=dtype)
    add = batch.attention_mask[:, 0]
    assert set(add.unique().tolist()) == {0.0, torch.finfo(dtype).min}
    allowed = add == 0
    for b, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        real = batch.valid[b].nonzero().squeeze(1)
        assert torch.equal(allowed[b][real][:, real], expected_row_mask(prompt, response))
        pads = (~batch.valid[b]).nonzero().squeeze(1)
        assert torch.equal(allowed[b][pads], torch.eye(14, dtype=torch.bool)[pads])  # a pad sees itself only
        assert not allowed[b][real][:, pads].any()  # real tokens never see pads
    assert torch.isfinite(torch.softmax(add.float(), dim=-1)).all()


def test_seen_mode_is_plain_causal():
    batch = build_batch(PROMPTS, RESPONSES, TID, pad_id=PAD, mode="seen")
    allowed = batch.attention_mask[0, 0] == 0
    assert torch.equal(allowed[2:, 2:], torch.ones(12, 12, dtype=torch.bool).tril())
    assert batch.position_ids[0].tolist() == [0, 0] + list(range(12))
    assert (batch.path == -1).all()
    with pytest.raises(AssertionError, match="mode"):
        build_batch(PROMPTS, RESPONSES, TID, pad_id=PAD, mode="sequential")


def test_known_blocks_are_used_instead_of_reading_the_ids():
    known = [find_blocks(r, TID) for r in RESPONSES]
    a = build_batch(PROMPTS, RESPONSES, TID, pad_id=PAD)
    b = build_batch(PROMPTS, RESPONSES, TID, pad_id=PAD, blocks=known)
    assert torch.equal(a.attention_mask, b.attention_mask) and torch.equal(a.position_ids, b.position_ids)
    none = build_batch(PROMPTS, RESPONSES, TID, pad_id=PAD, blocks=[[], []])
    assert torch.equal(none.position_ids, build_batch(PROMPTS, RESPONSES, TID, pad_id=PAD, mode="seen").position_ids)


def test_labels_follow_the_loss_mask():
    batch = build_batch(PROMPTS, RESPONSES, TID, pad_id=PAD)
    labels = batch.labels()
    assert (labels[:, :4] == -100).all()
    assert labels[0, 4:].tolist() == RESPONSES[0] and labels[1, 4:].tolist() == [9] + [-100] * 9
    forced = [[0, 0, 1, 1, 0, 1, 1, 1, 0, 1], [1]]  # e.g. engine-inserted <Parallel>, <Path>
    labels = batch.labels(forced)
    assert labels[0, 4:].tolist() == [t if m else -100 for t, m in zip(RESPONSES[0], forced[0], strict=True)]
    with pytest.raises(AssertionError, match="loss mask"):
        batch.labels([[1], [1]])


def test_response_logits_and_logprobs_take_the_shifted_columns():
    batch = build_batch(PROMPTS, RESPONSES, TID, pad_id=PAD)
    logits = torch.randn(2, 14, 128, generator=torch.Generator().manual_seed(0))
    assert torch.equal(batch.response_logits(logits), logits[:, 3:13])
    logp = batch.response_logprobs(logits)
    want = torch.log_softmax(logits[0, 3 + 5], -1)[RESPONSES[0][5]]
    torch.testing.assert_close(logp[0, 5], want)
    assert (logp[1, 1:] == 0).all()


def test_without_dense_mask_model_inputs_need_one():
    batch = build_batch(PROMPTS, RESPONSES, TID, pad_id=PAD, dense_mask=False)
    assert batch.attention_mask is None
    with pytest.raises(AssertionError, match="flex_block_mask"):
        batch.model_inputs()
    assert batch.to("cpu").model_inputs(attention_mask="given")["attention_mask"] == "given"
