"""The toy tokenizer: exact round trips, single-token tags and digits, save/load, chat template."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from parallel_r1.data.prompts import TEMPLATES, render
from parallel_r1.data.teacher import TeacherConfig, teacher_traces
from parallel_r1.data.toy import pretraining_text, toy_problems, toy_structures
from parallel_r1.data.toy_tokenizer import BOS, EOS, PAD, build_toy_tokenizer, load_toy_tokenizer
from parallel_r1.format import TAGS
from parallel_r1.structure.tokens import add_tags, tag_ids


@pytest.fixture(scope="module")
def tok():
    return build_toy_tokenizer()


def toy_texts(seed: int) -> list[str]:
    """Questions, stage-0 texts and teacher traces (every failure mode included) of both splits."""
    texts = []
    for split in ("easy", "hard"):
        toys = toy_structures(split, 150, seed)
        texts += [pretraining_text(t) for t in toys]
        texts += [t["response"] for t in teacher_traces(toys, seed)]
        # a teacher that always fits writes parallel traces for hard problems too
        texts += [t["response"] for t in teacher_traces(toys[:30], seed, TeacherConfig(budget_mean=1e4))]
    return texts


def roundtrip(tok, text: str) -> str:
    return tok.decode(tok(text, add_special_tokens=False)["input_ids"], skip_special_tokens=False)


def test_decode_encode_reproduces_toy_texts_exactly(tok):
    texts = toy_texts(seed=123)  # not the seed the tokenizer was trained on
    assert all(tag in "".join(texts) for tag in TAGS)
    for text in texts:
        assert roundtrip(tok, text) == text


def test_round_trip_holds_for_text_outside_the_toy_world(tok):
    rng = random.Random(0)
    alphabet = "abcXYZ 0123456789\n\t.,:;!?+-*/=()[]{}<>\\$%é漢😀" + "".join(TAGS)
    texts = [" leading and trailing  ", "\n\nFinal Answer: 36.00\n", "x<Path>  y  </Path>\nz", ""]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(300)]
    texts += [rng.choice(TAGS).join(["a ", " b"]) for _ in range(20)]
    for text in texts:
        assert roundtrip(tok, text) == text


def test_special_tokens_and_tags(tok):
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == (PAD, BOS, EOS)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tag_ids(tok) == {tag: 3 + i for i, tag in enumerate(TAGS)}
    # nothing is added around an encoding
    assert tok("Start: 3.")["input_ids"] == tok("Start: 3.", add_special_tokens=False)["input_ids"]
    # a tag between newlines keeps the newlines as their own tokens
    ids = tok("\n<Parallel><Path>\n", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["Ċ", "<Parallel>", "<Path>", "Ċ"]


def test_add_tags_from_the_structure_layer_changes_nothing(tok):
    before = len(tok)
    assert add_tags(tok) == tag_ids(tok)
    assert len(tok) == before


def test_digits_are_single_tokens_and_toy_words_whole(tok):
    ids = tok("123 4056", add_special_tokens=False)["input_ids"]
    pieces = [p for p in tok.convert_ids_to_tokens(ids) if p != "Ġ"]
    assert pieces == list("1234056")
    for word in (" apples", " gives", " away", " paths", " Answer", " marbles", " packs", "Changes", "Start"):
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word


def test_texts_are_short(tok):
    """The tiny model's sequences: every easy question + teacher trace fits in 256 tokens."""
    problems = toy_problems("easy", 200, seed=7)
    for p, t in zip(problems, teacher_traces(problems, seed=7), strict=True):
        assert len(tok(p.question + "\n" + t["response"])["input_ids"]) <= 256


def test_prompt_templates_are_in_the_vocabulary(tok):
    p = toy_problems("easy", 1, seed=0)[0]
    bare = build_toy_tokenizer(extra_texts=())
    for template in TEMPLATES.values():
        text = render(template, p)
        assert len(tok(text)["input_ids"]) < 0.6 * len(bare(text)["input_ids"])


def test_build_is_deterministic(tok):
    again = build_toy_tokenizer()
    assert again.get_vocab() == tok.get_vocab()


def test_save_and_load_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    texts = toy_texts(seed=5)[::20]
    for loaded in (load_toy_tokenizer(str(tmp_path)), AutoTokenizer.from_pretrained(tmp_path)):
        assert loaded.get_vocab() == tok.get_vocab()
        assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (1, 2, 0)
        assert tag_ids(loaded) == tag_ids(tok)
        for text in texts:
            ids = tok(text)["input_ids"]
            assert loaded(text)["input_ids"] == ids and loaded.decode(ids) == text


def test_chat_template_is_plain_text(tok):
    q = toy_problems("easy", 1, seed=0)[0].question
    messages = [{"role": "user", "content": q}]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == q + "\n"
    assert tok.apply_chat_template(messages, tokenize=False) == q
