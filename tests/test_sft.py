"""SFT loss and step, prompt/response encoding, data order and row filtering."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

from parallel_r1.format.tags import TAGS
from parallel_r1.train.batching import make_batch
from parallel_r1.train.config import DataConfig, RecipeError
from parallel_r1.train.data import (
    DataOrder,
    DataReport,
    encode_prompt,
    encode_response,
    examples,
    uses_chat_template,
)
from parallel_r1.train.sft import Pair, SFTConfig, micro_batches, sft_step

VOCAB = 48
TAG_IDS = {tag: VOCAB - 6 + i for i, tag in enumerate(TAGS)}
PO, PC, PA, PAC, SU, SUC = (TAG_IDS[t] for t in TAGS)
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def tiny_model(seed: int = 0) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, head_dim=8, max_position_embeddings=128)  # fmt: skip
    return Qwen3ForCausalLM(cfg).float()


def build(mode: str):
    return functools.partial(make_batch, tag_ids=TAG_IDS, mode=mode, pad_id=0)


PAIRS = [
    Pair([1, 2, 3], [5, 6, 7, 8]),
    Pair([4, 9], [PO, PA, 10, 11, PAC, PA, 12, PAC, PC, SU, 13, SUC, 14, 2]),
    Pair([7, 7, 7, 7, 7], [20, 21]),
]


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_seen_loss_is_hf_cross_entropy_on_response_tokens_only():
    model = tiny_model()
    out = sft_step(model, torch.optim.SGD(model.parameters(), lr=0.0), PAIRS, SFTConfig(micro_batch_size=2), build("seen"))
    # Reference: each row alone, labels -100 on the prompt, summed CE / all response tokens.
    total, count = 0.0, 0
    for p in PAIRS:
        ids = torch.tensor([p.prompt_ids + p.response_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        labels = torch.tensor([-100] * (len(p.prompt_ids) - 1) + p.response_ids)
        total += float(F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum"))
        count += len(p.response_ids)
    assert out["response_tokens"] == count == 20
    assert out["loss"] == pytest.approx(total / count, abs=1e-5)


def test_unseen_changes_the_loss_only_where_there_is_structure():
    model = tiny_model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = {m: sft_step(model, sgd, PAIRS[1:2], SFTConfig(), build(m))["loss"] for m in ("seen", "unseen")}
    assert abs(loss["seen"] - loss["unseen"]) > 1e-4  # the second path is blind to the first
    plain = {m: sft_step(model, sgd, PAIRS[::2], SFTConfig(), build(m))["loss"] for m in ("seen", "unseen")}
    assert plain["seen"] == pytest.approx(plain["unseen"], abs=1e-6)


def test_step_does_not_depend_on_the_micro_batch_split():
    params = []
    for micro in (1, 3):
        model = tiny_model()
        sft_step(model, torch.optim.SGD(model.parameters(), lr=1.0), PAIRS, SFTConfig(micro_batch_size=micro), build("unseen"))
        params.append(flat_params(model))
    assert not torch.equal(params[0], flat_params(tiny_model()))
    torch.testing.assert_close(params[0], params[1], atol=1e-6, rtol=0)


def test_nonfinite_loss_skips_the_step():
    model = tiny_model()
    with torch.no_grad():
        model.model.embed_tokens.weight[5, 0] = float("inf")
    before = flat_params(model)
    out = sft_step(model, torch.optim.SGD(model.parameters(), lr=0.1), PAIRS, SFTConfig(), build("seen"))
    assert not out["stepped"]
    assert torch.equal(flat_params(model).nan_to_num(), before.nan_to_num())


def test_micro_batches_are_sorted_longest_first():
    micros = micro_batches(PAIRS, 2)
    assert [[len(p) for p in m] for m in micros] == [[16, 7], [7]]


# --- encoding -----------------------------------------------------------------------------------------------


def test_chat_template_wraps_the_prompt_and_the_response_ends_with_eos():
    tok = AutoTokenizer.from_pretrained(FIXTURES / "smollm2_tokenizer")
    assert uses_chat_template(tok, None) and not uses_chat_template(tok, False)
    chat = tok.decode(encode_prompt(tok, "What is 2+2?", chat=True))
    assert chat.startswith("<|im_start|>") and chat.endswith("What is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(encode_prompt(tok, "What is 2+2?", chat=False)) == "What is 2+2?"
    resp = encode_response(tok, "Final Answer: 4")
    assert resp[-1] == tok.eos_token_id and tok.decode(resp[:-1]) == "Final Answer: 4"
    tok.chat_template = None
    with pytest.raises(RecipeError, match="no chat template"):
        uses_chat_template(tok, True)


def test_rows_without_answer_or_response_are_counted():
    rows = [
        {"id": "a", "question": "q1", "answer": "1", "response": "r"},
        {"id": "b", "question": "q2", "answer": " ", "response": "r"},
        {"id": "c", "question": "q3", "answer": "3"},
        {"id": "d", "answer": "4", "response": "r"},
        {"id": "e", "question": "q5", "answer": 5, "response": "r"},
    ]
    report = DataReport("s")
    got = examples(rows, DataConfig(path="x"), "Q: {problem}", report, need="answer")
    assert [(e.id, e.prompt, e.answer) for e in got] == [("a", "Q: q1", "1"), ("c", "Q: q3", "3"), ("e", "Q: q5", "5")]
    assert report.skipped == {"without an answer": 1, "without a question": 1}
    report = DataReport("s")
    got = examples(rows, DataConfig(path="x"), "{problem}", report, need="response")
    assert [e.id for e in got] == ["a", "b", "e"] and report.skipped["without a response"] == 1
    assert "skipped 1 without a response (first: c)" in report.summary()


# --- data order ------------------------------------------------------------------------------------------------


def test_data_order_is_seeded_whole_batches_and_resumable():
    order = DataOrder(size=10, seed=3)
    batches = [order.next_batch(4) for _ in range(5)]
    # two batches per epoch (the tail of 2 is dropped), each epoch a permutation
    assert [order.epoch, order.position] == [2, 4]
    for e in range(2):
        first_two = batches[2 * e] + batches[2 * e + 1]
        assert len(set(first_two)) == 8
    assert batches[0] != batches[2]  # a new permutation per epoch
    replay = DataOrder(size=10, seed=3)
    assert [replay.next_batch(4) for _ in range(5)] == batches
    resumed = DataOrder(size=10, seed=3)
    mid = DataOrder(size=10, seed=3)
    for _ in range(3):
        mid.next_batch(4)
    resumed.load_state_dict(copy.deepcopy(mid.state_dict()))
    assert [resumed.next_batch(4) for _ in range(2)] == batches[3:]
    with pytest.raises(AssertionError, match="data changed"):
        DataOrder(size=11, seed=3).load_state_dict(mid.state_dict())


def test_jsonl_rows_may_hold_unicode_line_separators(tmp_path):
    """Regression: str.splitlines() cut a pilot trace at an unescaped U+2028 inside its JSON string."""
    from parallel_r1.train.data import load_rows

    file = tmp_path / "rows.jsonl"
    file.write_text('{"id": "a", "question": "x\u2028y", "answer": "1"}\n\n{"id": "b", "question": "z", "answer": "2"}\n',
                    encoding="utf-8")  # fmt: skip
    rows = load_rows(DataConfig(path=str(file)), "data")
    assert [r["question"] for r in rows] == ["x\u2028y", "z"]
    with pytest.raises(RecipeError, match=r"data\.path: .*rows\.jsonl, line 2: not valid JSON"):
        file.write_text('{"id": 1}\n{"id": \n', encoding="utf-8")
        load_rows(DataConfig(path=str(file)), "data")


def test_factory_arguments_it_refuses_are_recipe_errors_naming_the_entry():
    from parallel_r1.train.data import load_rows

    demo = "parallel_r1.demo.data:rl_problems"
    rows = load_rows(DataConfig(factory=demo, kwargs={"split": "hard", "n": 4, "seed": 2}), "stages[1].data")
    assert len(rows) == 4
    bad = [({"split": "hard", "n": 4, "seed": 2, "easy_share": 1.5}, r"easy_share must be in \[0, 1\)"),
           ({"split": "hard", "n": 4, "seed": 2, "shuffle": True}, "unexpected keyword argument 'shuffle'"),
           ({"split": "hard", "n": 4}, "missing a required argument: 'seed'")]
    for kwargs, why in bad:
        with pytest.raises(RecipeError, match=rf"stages\[1\]\.data\.factory: {demo}: .*{why}"):
            load_rows(DataConfig(factory=demo, kwargs=kwargs), "stages[1].data")
