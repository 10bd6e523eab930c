"""add_tags / tag_ids on a real tokenizer (SmolLM2's, shipped in tests/fixtures) and tiny models."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from parallel_r1.format.tags import TAGS
from parallel_r1.structure import add_tags, tag_ids

TOKENIZER_DIR = Path(__file__).parent / "fixtures" / "smollm2_tokenizer"


@pytest.fixture(scope="module")
def base_tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture
def tok(base_tokenizer):
    return copy.deepcopy(base_tokenizer)  # each test mutates its own copy


def tiny(family: str, vocab: int, tied: bool):
    torch.manual_seed(0)
    shape = dict(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, head_dim=16, tie_word_embeddings=tied,
    )
    cls, cfg = (Qwen3ForCausalLM, Qwen3Config) if family == "qwen3" else (LlamaForCausalLM, LlamaConfig)
    return cls(cfg(**shape)).eval()


def test_tags_become_single_tokens_and_keep_surrounding_whitespace(tok):
    n = len(tok)
    ids = add_tags(tok)
    assert ids == {t: n + i for i, t in enumerate(TAGS)} and tag_ids(tok) == ids
    text = "x\n<Parallel>\n<Path>\n a</Path> <Path>b</Path></Parallel>\n<Summary>c</Summary>"
    enc = tok(text, add_special_tokens=False)["input_ids"]
    assert [i for i in enc if i in ids.values()] == [ids[t] for t in [TAGS[0], TAGS[2], TAGS[3], TAGS[2], TAGS[3], TAGS[1], TAGS[4], TAGS[5]]]
    assert tok.decode(enc, skip_special_tokens=False) == text
    # special tokens vanish under skip_special_tokens=True: responses must be decoded without it
    assert "<Path>" not in tok.decode(enc, skip_special_tokens=True)


def test_tag_ids_names_what_is_missing(tok):
    with pytest.raises(ValueError, match=r"'<Parallel>' encodes to \[") as err:
        tag_ids(tok)
    assert "add_tags" in str(err.value)


@pytest.mark.parametrize(("family", "tied"), [("qwen3", True), ("llama", False)])
def test_new_rows_are_the_mean_of_the_tag_pieces(tok, family, tied):
    model = tiny(family, len(tok), tied)
    pieces = {t: tok(t, add_special_tokens=False)["input_ids"] for t in TAGS}
    assert all(len(p) > 1 for p in pieces.values())
    emb_before = model.get_input_embeddings().weight.detach().clone()
    head_before = model.get_output_embeddings().weight.detach().clone()
    ids = add_tags(tok, model)
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    assert emb.shape[0] == len(tok) == emb_before.shape[0] + len(TAGS)
    assert torch.equal(emb[: emb_before.shape[0]], emb_before)  # old rows untouched
    for tag, tid in ids.items():
        torch.testing.assert_close(emb[tid], emb_before[pieces[tag]].mean(0))
        torch.testing.assert_close(head[tid], head_before[pieces[tag]].mean(0))
    assert (head is emb) == tied


def test_idempotent(tok):
    model = tiny("llama", len(tok), tied=False)
    first = add_tags(tok, model)
    n, emb = len(tok), model.get_input_embeddings().weight.detach().clone()
    with torch.no_grad():
        model.get_input_embeddings().weight[first[TAGS[0]]] += 1.0  # as if trained
    trained = model.get_input_embeddings().weight.detach().clone()
    assert add_tags(tok, model) == first
    assert len(tok) == n and torch.equal(model.get_input_embeddings().weight, trained)
    assert not torch.equal(trained, emb)


def test_padded_vocabulary_is_not_resized_but_rows_are_initialised(tok):
    model = tiny("qwen3", len(tok) + 64, tied=True)  # like Qwen3: more rows than tokens
    rows = model.get_input_embeddings().weight.shape[0]
    pieces = tok("<Summary>", add_special_tokens=False)["input_ids"]
    before = model.get_input_embeddings().weight.detach().clone()
    ids = add_tags(tok, model)
    assert model.get_input_embeddings().weight.shape[0] == rows
    torch.testing.assert_close(model.get_input_embeddings().weight[ids["<Summary>"]], before[pieces].mean(0))


def test_tokenizer_with_tags_and_a_model_without_rows(tok, base_tokenizer):
    """Pieces are then encoded one by one; for SmolLM2 that gives the same pieces as the whole text."""
    add_tags(tok)
    model = tiny("llama", len(base_tokenizer), tied=False)
    before = model.get_input_embeddings().weight.detach().clone()
    ids = add_tags(tok, model)
    for tag, tid in ids.items():
        pieces = base_tokenizer(tag, add_special_tokens=False)["input_ids"]
        torch.testing.assert_close(model.get_input_embeddings().weight[tid], before[pieces].mean(0))


def test_save_pretrained_round_trip(tok, tmp_path):
    model = tiny("qwen3", len(tok), tied=True)
    ids = add_tags(tok, model)
    tok.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    model2 = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert tag_ids(tok2) == ids
    text = "a <Parallel><Path>b</Path><Path>c</Path></Parallel><Summary>d</Summary>"
    assert tok2(text)["input_ids"] == tok(text)["input_ids"]
    rows = list(ids.values())
    assert torch.equal(model2.get_input_embeddings().weight[rows], model.get_input_embeddings().weight[rows])
    assert add_tags(tok2, model2) == ids and len(tok2) == len(tok)
