"""SamplingConfig validation and token sampling from logits."""

from __future__ import annotations

import pytest
import torch

from parallel_r1.engine.sampling import SamplingConfig, filter_top_k_top_p, make_generator, sample_tokens


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("temperature", -0.1, "temperature"),
        ("top_p", 0.0, "top_p"),
        ("top_p", 1.5, "top_p"),
        ("top_k", -1, "top_k"),
        ("max_new_tokens", 0, "max_new_tokens"),
        ("max_path_tokens", 0, "max_path_tokens"),
        ("max_summary_tokens", 0, "max_summary_tokens"),
        ("num_paths", 0, "num_paths"),
        ("max_blocks", -1, "max_blocks"),
        ("mode", "parallel", "mode"),
        ("stop", ("",), "stop"),
    ],
)
def test_config_rejects_bad_values_naming_them(field, value, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**{field: value})


def test_config_accepts_a_single_stop_string_a_list_or_none():
    assert SamplingConfig(stop="Final Answer:").stop == ("Final Answer:",)
    assert SamplingConfig(stop=None).stop == () and SamplingConfig(stop=["a", "b"]).stop == ("a", "b")
    assert SamplingConfig(max_summary_tokens=None).max_summary_tokens is None


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0]])
    kept = filter_top_k_top_p(logits, top_k=2, top_p=1.0)
    assert torch.isfinite(kept).tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = filter_top_k_top_p(probs.log(), top_k=0, top_p=0.8)
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    kept = filter_top_k_top_p(probs.log(), top_k=0, top_p=0.81)
    assert torch.isfinite(kept).tolist() == [[True, True, True, False]]
    kept = filter_top_k_top_p(probs.log()[:, [2, 0, 3, 1]], top_k=0, top_p=0.5)  # order-free
    assert torch.isfinite(kept).tolist() == [[False, True, False, False]]


def test_greedy_takes_argmax_and_records_raw_logprob():
    logits = torch.tensor([[1.0, 4.0, 2.0], [0.5, 0.1, 0.2]])
    tokens, logprobs = sample_tokens(logits, None, SamplingConfig(temperature=0.0), make_generator(0, "cpu"))
    assert tokens.tolist() == [1, 0]
    assert torch.allclose(logprobs, torch.log_softmax(logits, -1)[[0, 1], [1, 0]])


def test_logprobs_are_of_logits_over_temperature_before_filtering_and_rules():
    torch.manual_seed(0)
    logits = torch.randn(64, 10)
    bias = torch.zeros(64, 10)
    bias[:, 0] = float("-inf")
    config = SamplingConfig(temperature=0.7, top_k=3)
    tokens, logprobs = sample_tokens(logits, bias, config, make_generator(1, "cpu"))
    assert (tokens != 0).all(), "rule bias is applied"
    top3 = torch.topk(logits[:, 1:], 3, dim=-1).indices + 1
    assert (tokens[:, None] == top3).any(-1).all(), "top-k applies after the bias"
    expected = torch.log_softmax(logits / 0.7, -1).gather(-1, tokens[:, None]).squeeze(-1)
    assert torch.allclose(logprobs, expected)


def test_seeded_sampling_repeats_and_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).repeat(4000, 1)
    config = SamplingConfig(temperature=1.0)
    a, _ = sample_tokens(logits, None, config, make_generator(7, "cpu"))
    b, _ = sample_tokens(logits, None, config, make_generator(7, "cpu"))
    c, _ = sample_tokens(logits, None, config, make_generator(8, "cpu"))
    assert torch.equal(a, b) and not torch.equal(a, c)
    freq = torch.bincount(a, minlength=3).float() / len(a)
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.03)


def test_processors_run_before_the_rules_and_cannot_bring_back_a_banned_token():
    logits = torch.zeros(2, 4)
    bias = torch.zeros(2, 4)
    bias[:, 2] = float("-inf")

    def boost_two(lg, contexts):
        lg[:, 2] += 100.0
        return lg

    tokens, _ = sample_tokens(logits, bias, SamplingConfig(temperature=0.0), make_generator(0, "cpu"),
                              [boost_two], [None, None])
    assert 2 not in tokens.tolist()


def test_nothing_left_to_sample_fails_loud():
    logits = torch.zeros(1, 3)
    bias = torch.full((1, 3), float("-inf"))
    with pytest.raises(ValueError, match="no token left"):
        sample_tokens(logits, bias, SamplingConfig(), make_generator(0, "cpu"))
