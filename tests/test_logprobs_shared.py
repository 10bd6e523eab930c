"""The shared-prompt forward of ``response_logprobs`` equals the single forward, and falls back cleanly.

Tiny seeded fp32 Qwen3 models; batches mix prompts of different lengths (left padding), groups of
several rows, rows whose prompt is unique, and responses with a parallel block (structured mask and
positions in unseen mode).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from parallel_r1.format.tags import TAGS
from parallel_r1.rollout import Rollout
from parallel_r1.train.batching import make_batch, shared_prefix
from parallel_r1.train.grpo import GRPOConfig, grpo_update
from parallel_r1.train.logprobs import response_logprobs

VOCAB = 48
TAG_IDS = {tag: VOCAB - 6 + i for i, tag in enumerate(TAGS)}
PO, PC, PA, PAC, SU, SUC = (TAG_IDS[t] for t in TAGS)
PAD = 0
BLOCK = [5, 6, PO, PA, 7, 8, PAC, PA, 9, PAC, PC, SU, 10, SUC, 11]  # one block of two paths
TOL = 1e-5


def tiny_model(seed: int = 0, **extra) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, head_dim=8, max_position_embeddings=128, **extra,
    )  # fmt: skip
    return Qwen3ForCausalLM(cfg).float()


def rows(seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """Prompts of lengths 6 (x3), 3 (x2), 5 (x1, unique), each sample its own response."""
    gen = torch.Generator().manual_seed(seed)
    prompts, responses = [], []
    for length, copies in ((6, 3), (3, 2), (5, 1)):
        prompt = torch.randint(1, 40, (length,), generator=gen).tolist()
        for k in range(copies):
            resp = torch.randint(1, 40, (2 + 3 * k,), generator=gen).tolist()
            prompts.append(prompt)
            responses.append(BLOCK + resp if k == 1 else resp)
    order = torch.randperm(len(prompts), generator=gen).tolist()  # groups interleaved in the batch
    return [prompts[i] for i in order], [responses[i] for i in order]


def count_forwards(model: torch.nn.Module) -> list[int]:
    """Append each inner (decoder) forward's query length to the returned list."""
    calls: list[int] = []
    model.model.register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs["input_ids"].shape[1]),
                                      with_kwargs=True)  # fmt: skip
    return calls


def logprobs_and_grads(model, batch, share: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Log-probs, and the gradient of a GRPO-like token-mean loss (row weights as advantages)."""
    model.zero_grad(set_to_none=True)
    lp, entropy = response_logprobs(model, batch, temperature=0.7, with_entropy=True, share_prompts=share)
    adv = torch.linspace(-1.0, 1.0, lp.shape[0])[:, None]  # (B, 1)
    loss = -(torch.exp(lp - lp.detach()) * adv * batch.response_mask).sum() / batch.response_mask.sum()
    loss.backward()
    return torch.cat([lp.detach(), entropy]), [p.grad.clone() for p in model.parameters()]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(("mode", "attention"), [("seen", "sdpa"), ("unseen", "sdpa"), ("unseen", "eager")])
def test_shared_prompts_equal_one_forward(mode, attention):
    model = tiny_model(attn_implementation=attention)
    assert model.config._attn_implementation == attention
    prompts, responses = rows()
    batch = make_batch(prompts, responses, TAG_IDS, mode, PAD)
    split = int(batch.response_mask.any(dim=0).nonzero()[0, 0]) - 1
    shared = shared_prefix(batch, split)
    assert shared is not None and len(shared.rows) == 3, "three distinct prompts among six rows"
    assert sorted(shared.index.bincount().tolist()) == [1, 2, 3]
    calls = count_forwards(model)
    ref_lp, ref_grads = logprobs_and_grads(model, batch, share=False)
    assert calls == [batch.input_ids.shape[1]]
    lp, grads = logprobs_and_grads(model, batch, share=True)
    assert calls[1:] == [split, batch.input_ids.shape[1] - split], "prefix once, then the rest"
    assert float((lp - ref_lp).abs().max()) <= TOL
    assert max_diff(grads, ref_grads) <= TOL
    assert max(float(g.abs().max()) for g in grads) > 1e-3, "the loss must reach the weights"


def test_all_rows_one_prompt_and_prompt_of_one_token():
    model = tiny_model(1)
    for prompt in ([7, 8, 9, 10], [7]):
        responses = [[11, 12, 13], BLOCK, [14]]
        batch = make_batch([prompt] * 3, responses, TAG_IDS, "unseen", PAD)
        ref_lp, ref_grads = logprobs_and_grads(model, batch, share=False)
        lp, grads = logprobs_and_grads(model, batch, share=True)
        assert float((lp - ref_lp).abs().max()) <= TOL and max_diff(grads, ref_grads) <= TOL


def test_unique_prompts_take_the_single_forward():
    model = tiny_model()
    batch = make_batch([[1, 2, 3], [4, 5], [6]], [[7, 8], [9], [10, 11, 12]], TAG_IDS, "unseen", PAD)
    assert shared_prefix(batch, 2) is None  # column 2 is the last prompt column
    calls = count_forwards(model)
    response_logprobs(model, batch)
    assert calls == [batch.input_ids.shape[1]]


def test_same_ids_other_padding_are_not_shared():
    # The pad id used as a real token: [PAD, 5] and [5] give the same ids over the prompt columns but
    # not the same positions or mask, so they must not share.
    batch = make_batch([[PAD, 5], [5]], [[6, 7], [8]], TAG_IDS, "seen", PAD)
    assert torch.equal(batch.input_ids[0, :2], batch.input_ids[1, :2])
    assert shared_prefix(batch, 2) is None


def test_prefix_that_sees_later_columns_is_not_shared():
    batch = make_batch([[1, 2, 3]] * 2, [[4, 5], [6]], TAG_IDS, "seen", PAD)
    assert shared_prefix(batch, 2) is not None
    batch.attention_mask[:, :, 0, 2] = 0.0  # column 0 may now see column 2
    assert shared_prefix(batch, 2) is None


class NoCacheLM(torch.nn.Module):
    """A model whose forward takes no KV cache (and no ``logits_to_keep``)."""

    def __init__(self, inner: Qwen3ForCausalLM) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask, position_ids, use_cache=False):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


def test_models_without_cache_or_with_sliding_windows_fall_back():
    prompts, responses = rows(1)
    batch = make_batch(prompts, responses, TAG_IDS, "unseen", PAD)
    model = tiny_model()
    ref = response_logprobs(model, batch, share_prompts=False)[0]
    wrapped = NoCacheLM(model)
    calls = count_forwards(model)
    assert torch.equal(response_logprobs(wrapped, batch)[0], ref)
    assert calls == [batch.input_ids.shape[1]]
    sliding = tiny_model(use_sliding_window=True, sliding_window=4, max_window_layers=1)
    assert "sliding_attention" in sliding.config.layer_types
    calls = count_forwards(sliding)
    response_logprobs(sliding, batch)
    assert calls == [batch.input_ids.shape[1]]


def grpo_rollouts() -> list[Rollout]:
    """Three groups (prompt lengths 4, 7, 5) of four samples, rewards varied, one block per group."""
    gen = torch.Generator().manual_seed(3)
    out = []
    for g, length in enumerate((4, 7, 5)):
        prompt = torch.randint(1, 40, (length,), generator=gen).tolist()
        for k in range(4):
            resp = torch.randint(1, 40, (3 + 2 * k + g,), generator=gen).tolist()
            resp = BLOCK + resp if k == g else resp
            mask = [0 if t in (PA, SU) else 1 for t in resp]
            reward = float(torch.rand((), generator=gen))
            out.append(Rollout(prompt, resp, mask, [-1.0] * len(resp), prompt_index=g, sample_index=k, reward=reward))
    return out


@pytest.mark.parametrize("mode", ["seen", "unseen"])
def test_grpo_update_same_with_and_without_sharing(mode):
    # micro-batches of 5 rows split groups; two minibatches and two epochs exercise the no-grad
    # old-log-prob pass, and the KL reference the frozen-model pass.
    build = functools.partial(make_batch, tag_ids=TAG_IDS, mode=mode, pad_id=PAD)
    results = []
    for share in (False, True):
        model = tiny_model(2)
        ref_model = copy.deepcopy(model).eval()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        cfg = GRPOConfig(minibatch_groups=2, ppo_epochs=2, kl_coef=0.1, share_prompts=share)
        stats = grpo_update(model, opt, grpo_rollouts(), cfg, build, micro_batch_size=5, ref_model=ref_model)
        results.append((stats, [p.detach().clone() for p in model.parameters()]))
    (plain, plain_params), (shared, shared_params) = results
    assert shared.optimizer_steps == plain.optimizer_steps == 4
    assert max_diff(shared_params, plain_params) <= TOL
    for key in ("loss", "clip_fraction", "ratio_mean", "entropy", "kl", "ppo_kl", "grad_norm"):
        assert getattr(shared, key) == pytest.approx(getattr(plain, key), abs=TOL), key


def test_bench_switch_turns_sharing_off():
    """``bench rl --no-share-prompts`` goes through the recipe setting to the update's forward."""
    from parallel_r1.bench.rl_ours import bench_stage
    model = tiny_model()
    prompts, responses = rows()
    batch = make_batch(prompts, responses, TAG_IDS, "seen", PAD)
    calls = count_forwards(model)
    for share, forwards in ((False, 1), (True, 3)):
        cfg = bench_stage(2, 3, 8, 1e-3, 1, share_prompts=share).grpo
        assert cfg.share_prompts is share
        response_logprobs(model, batch, share_prompts=cfg.share_prompts)
        assert len(calls) == forwards


@pytest.mark.parametrize("equal_lengths", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_a_plain_log_softmax(equal_lengths, temperature):
    """Every response token's log-prob and entropy against a full forward and a per-position softmax,
    both where every response column is a target (the reshape path) and where short rows pad."""
    model = tiny_model(2)
    prompts, responses = rows(4)
    if equal_lengths:
        responses = [(r * 9)[:7] for r in responses]
    batch = make_batch(prompts, responses, TAG_IDS, mode="seen", pad_id=PAD)
    with torch.no_grad():
        lp, entropy = response_logprobs(model, batch, temperature=temperature, with_entropy=True)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids).logits  # fmt: skip
    log_p = torch.log_softmax(logits[:, :-1] / temperature, dim=-1)  # (B, T-1, V) predicting column t+1
    mask = batch.response_mask
    want = log_p.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    torch.testing.assert_close(lp[:, 1:][mask[:, 1:]], want[mask[:, 1:]], rtol=0, atol=TOL)
    want_entropy = -(log_p.exp() * log_p).sum(-1)
    torch.testing.assert_close(entropy[:, 1:][mask[:, 1:]], want_entropy[mask[:, 1:]], rtol=0, atol=TOL)
    assert not lp[~mask].any() and not entropy[~mask].any()
    assert bool(mask[:, -1].all()) == equal_lengths  # which path of _select ran
