"""Tiny Qwen3 models for the toy world: config, seeding, a finite loss that training lowers."""

from __future__ import annotations

import pytest
import torch

from parallel_r1.data.toy import pretraining_text, toy_structures
from parallel_r1.data.toy_model import build_tiny_model, tiny_model_config
from parallel_r1.data.toy_tokenizer import build_toy_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_toy_tokenizer()


def test_config_sizes():
    tiny, small = tiny_model_config(500, "tiny"), tiny_model_config(500, "small")
    assert (tiny.hidden_size, tiny.num_hidden_layers, tiny.head_dim) == (64, 2, 16)
    assert (small.hidden_size, small.num_hidden_layers, small.head_dim) == (128, 4, 32)
    assert tiny.model_type == "qwen3" and tiny.tie_word_embeddings and tiny.vocab_size == 500
    with pytest.raises(ValueError, match="unknown tiny model size"):
        tiny_model_config(500, "huge")


def test_model_matches_tokenizer_and_is_seeded(tok):
    a, b, c = build_tiny_model(tok, seed=0), build_tiny_model(tok, seed=0), build_tiny_model(tok, seed=1)
    assert a.get_input_embeddings().weight.shape[0] == len(tok)
    assert (a.config.bos_token_id, a.config.eos_token_id, a.config.pad_token_id) == (1, 2, 0)
    assert a.generation_config.eos_token_id == tok.eos_token_id
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.get_input_embeddings().weight, c.get_input_embeddings().weight)
    assert all(p.dtype == torch.float32 for p in a.parameters())


def test_building_does_not_touch_the_global_rng(tok):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tok, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_a_few_steps_on_toy_text_lower_the_loss(tok):
    torch.manual_seed(0)
    model = build_tiny_model(tok, seed=0, size="tiny")
    texts = [pretraining_text(t) for t in toy_structures("easy", 8, 0)]
    batch = tok(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # (B, T)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        loss = model(**batch, labels=labels).loss
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.1, losses


def test_small_size_runs_a_forward_pass(tok):
    model = build_tiny_model(tok, seed=0, size="small")
    assert sum(p.numel() for p in model.parameters()) > 5 * sum(
        p.numel() for p in build_tiny_model(tok, seed=0, size="tiny").parameters()
    )
    batch = tok(["Start: 3.\nFinal Answer: 3"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits  # (1, T, V)
    assert logits.shape == (1, batch["input_ids"].shape[1], len(tok)) and torch.isfinite(logits).all()
