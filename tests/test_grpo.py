"""GRPO math (advantages, clipped surrogate, k3) on hand-made tensors, and the update on a tiny model."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from parallel_r1.format.tags import TAGS
from parallel_r1.rollout import Rollout
from parallel_r1.train.batching import make_batch
from parallel_r1.train.grpo import GRPOConfig, clipped_surrogate, group_advantages, grpo_update, k3_kl
from parallel_r1.train.logprobs import response_logprobs

VOCAB = 48
TAG_IDS = {tag: VOCAB - 6 + i for i, tag in enumerate(TAGS)}
PO, PC, PA, PAC, SU, SUC = (TAG_IDS[t] for t in TAGS)
PAD = 0


def tiny_model(seed: int = 0) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, head_dim=8, max_position_embeddings=128,
    )
    return Qwen3ForCausalLM(cfg).float()


def builder(mode: str):
    return functools.partial(make_batch, tag_ids=TAG_IDS, mode=mode, pad_id=PAD)


# A response with one block of two paths; the engine inserted <Path>, </Parallel><Summary> (mask 0).
BLOCK_RESPONSE = [5, 6, PO, PA, 7, 8, PAC, PA, 9, PAC, PC, SU, 10, SUC, 11, 12]
BLOCK_MASK = [1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 1]


def make_rollouts(rewards: list[list[float]], seed: int = 0) -> list[Rollout]:
    """Groups of hand-made rollouts; reward [g][k] for sample k of prompt g."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for g, group in enumerate(rewards):
        prompt = torch.randint(1, 40, (3 + g,), generator=gen).tolist()
        for k, reward in enumerate(group):
            if (g + k) % 2 == 0:
                resp, mask = list(BLOCK_RESPONSE), list(BLOCK_MASK)
            else:
                resp = torch.randint(1, 40, (4 + k,), generator=gen).tolist()
                mask = [1] * len(resp)
            out.append(
                Rollout(prompt, resp, mask, [0.0] * len(resp), prompt_index=g, sample_index=k, reward=reward)
            )
    return out


# --- advantages -------------------------------------------------------------------------------------


def test_group_advantages_hand_computed():
    rewards = torch.tensor([1.0, -1.0, -1.0, 0.5, 1.5, 2.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    adv = group_advantages(rewards, groups, normalize_std=True, eps=0.0)
    # group 0: mean -1/3; unbiased var = (16/9 + 4/9 + 4/9) / 2 = 4/3.  group 1: mean 1, var 1/2.
    # group 2 has one sample: mean 0, std 1.
    std = math.sqrt(4 / 3)
    half = 0.5 / math.sqrt(0.5)
    expected = [(4 / 3) / std, (-2 / 3) / std, (-2 / 3) / std, -half, half, 2.0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)


def test_group_advantages_dr_grpo_only_centres():
    rewards = torch.tensor([1.0, -1.0, -1.0, 3.0, 1.0])
    groups = torch.tensor([7, 7, 7, 2, 2])
    adv = group_advantages(rewards, groups, normalize_std=False)
    assert adv.tolist() == pytest.approx([4 / 3, -2 / 3, -2 / 3, 1.0, -1.0], abs=1e-6)


def test_group_advantages_eps_guards_a_constant_group():
    adv = group_advantages(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0, 0, 0]))
    assert adv.tolist() == [0.0, 0.0, 0.0]


# --- surrogate and KL -------------------------------------------------------------------------------


def test_clipped_surrogate_hand_computed():
    ratio = torch.tensor([1.5, 0.5, 0.5, 1.5, 5.0, 1.0])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0, 2.0])
    old = torch.zeros(6)
    loss, r, clipped = clipped_surrogate(ratio.log(), old, adv, clip_low=0.2, clip_high=0.28, clip_ratio_c=3.0)
    # A>0, r above 1.28: clipped at 1.28; A>0, r low: unclipped; A<0, r below 0.8: clipped at 0.8;
    # A<0, r high: unclipped 1.5; A<0, r = 5: dual clip caps the loss at c = 3; r = 1: -A.
    assert loss.tolist() == pytest.approx([-1.28, -0.5, 0.8, 1.5, 3.0, -2.0], abs=1e-6)
    assert clipped.tolist() == [True, False, True, False, False, False]
    assert r.tolist() == pytest.approx(ratio.tolist(), abs=1e-6)


def test_clip_higher_is_asymmetric():
    adv = torch.tensor([1.0, 1.0])
    logp = torch.tensor([1.25, 1.3]).log()
    loss, _, clipped = clipped_surrogate(logp, torch.zeros(2), adv, 0.2, 0.28, None)
    assert clipped.tolist() == [False, True]  # 1.25 < 1.28 < 1.3
    loss_sym, _, clipped_sym = clipped_surrogate(logp, torch.zeros(2), adv, 0.2, 0.2, None)
    assert clipped_sym.tolist() == [True, True]
    assert loss_sym.tolist() == pytest.approx([-1.2, -1.2], abs=1e-6)


def test_k3_kl_values():
    logp = torch.tensor([0.0, 0.0, -1.0])
    ref = torch.tensor([0.0, math.log(2.0), -2.0])
    # d = ref - logp: 0 -> 0;  ln 2 -> 2 - ln 2 - 1;  -1 -> e^-1 + 1 - 1
    expected = [0.0, 1.0 - math.log(2.0), math.exp(-1.0)]
    assert k3_kl(logp, ref).tolist() == pytest.approx(expected, abs=1e-6)


# --- update on a tiny model ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["seen", "unseen"])
def test_first_minibatch_ratio_is_one_and_loss_is_minus_mean_advantage(mode):
    model = tiny_model()
    rollouts = make_rollouts([[1.0, -1.0, 0.5], [0.0, 1.0, 1.0]])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    cfg = GRPOConfig(minibatch_groups=1, ppo_epochs=2)
    stats = grpo_update(model, opt, rollouts, cfg, builder(mode), micro_batch_size=2)
    first = stats.minibatches[0]
    assert first["ratio_mean"] == 1.0  # policy == old: bit-identical forward
    assert first["clip_fraction"] == 0.0
    # the first minibatch holds one whole group: with ratio 1, loss = -sum(A * sampled) / sampled tokens
    adv = group_advantages(
        torch.tensor([r.reward for r in rollouts]), torch.tensor([r.prompt_index for r in rollouts])
    ).tolist()
    by_group: dict[int, tuple[float, int]] = {}
    for r, a in zip(rollouts, adv, strict=True):
        s, n = by_group.get(r.prompt_index, (0.0, 0))
        by_group[r.prompt_index] = (s - a * r.num_sampled, n + r.num_sampled)
    s0, n0 = by_group[0]  # minibatches follow the group (prompt) order
    assert first["loss"] == pytest.approx(s0 / n0, abs=1e-6)
    assert first["tokens"] == n0
    # 2 groups x 2 epochs -> 4 optimiser steps; later ones see a moved policy
    assert stats.optimizer_steps == 4 and len(stats.minibatches) == 4
    assert stats.minibatches[-1]["ratio_mean"] != 1.0
    assert stats.ppo_kl != 0.0


def test_update_does_not_depend_on_micro_batch_split():
    """Token-mean over the minibatch: 1-row and 6-row micro-batches give the same step."""
    rollouts = make_rollouts([[1.0, -1.0, 0.5], [0.0, 1.0, 1.0]])
    params = []
    for micro in (1, 6):
        model = tiny_model()
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        grpo_update(model, opt, rollouts, GRPOConfig(), builder("unseen"), micro_batch_size=micro)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.equal(params[0], torch.cat([p.flatten() for p in tiny_model().parameters()]))
    torch.testing.assert_close(params[0], params[1], atol=1e-6, rtol=0)


def test_positive_advantage_raises_the_sampled_tokens_probability():
    model = tiny_model()
    rollouts = make_rollouts([[1.0, -1.0]])
    good = next(r for r in rollouts if r.reward == 1.0)
    batch = builder("unseen")([good.prompt_ids], [good.response_ids])

    def sampled_logprob() -> float:
        with torch.no_grad():
            lp, _ = response_logprobs(model, batch)
        return float(lp[batch.response_mask].sum())

    before = sampled_logprob()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grpo_update(model, opt, rollouts, GRPOConfig(), builder("unseen"), max_grad_norm=None)
    assert sampled_logprob() > before


def test_old_logprobs_come_from_the_training_forward_in_its_mode():
    """Sampler log-probs equal to the Unseen forward: no gap in Unseen mode, a gap in Seen mode."""
    model = tiny_model()
    rollouts = make_rollouts([[1.0, 0.0, 1.0]])
    for r in rollouts:
        batch = builder("unseen")([r.prompt_ids], [r.response_ids])
        with torch.no_grad():
            lp, _ = response_logprobs(model, batch)
        r.logprobs = lp[batch.response_mask].tolist()
    gaps = {}
    for mode in ("unseen", "seen"):
        m = copy.deepcopy(model)
        stats = grpo_update(m, torch.optim.SGD(m.parameters(), lr=0.0), rollouts, GRPOConfig(), builder(mode))
        gaps[mode] = stats.logprob_diff_sampler
    assert gaps["unseen"] < 1e-6
    assert gaps["seen"] > 1e-4  # the second path / summary see the first path under causal attention


def test_kl_to_a_copy_is_zero_then_grows():
    model = tiny_model()
    ref = copy.deepcopy(model).eval()
    rollouts = make_rollouts([[1.0, -1.0, 0.5], [0.0, 1.0, 1.0]])
    cfg = GRPOConfig(kl_coef=0.1, minibatch_groups=1)
    stats = grpo_update(model, torch.optim.SGD(model.parameters(), lr=0.5), rollouts, cfg, builder("seen"), ref_model=ref)
    assert stats.minibatches[0]["kl"] == 0.0
    assert stats.minibatches[1]["kl"] > 0.0
    with pytest.raises(AssertionError, match="ref_model"):
        grpo_update(model, torch.optim.SGD(model.parameters(), lr=0.1), rollouts, cfg, builder("seen"))


def test_nonfinite_gradient_skips_the_step_and_counts_it():
    model = tiny_model()
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    rollouts = make_rollouts([[1.0, -1.0]])
    stats = grpo_update(model, torch.optim.SGD(model.parameters(), lr=0.1), rollouts, GRPOConfig(), builder("seen"))
    assert stats.skipped_nonfinite == 1 and stats.optimizer_steps == 0
    for a, b in zip(before, model.parameters(), strict=True):
        assert torch.equal(a.nan_to_num(), b.detach().nan_to_num())


def test_missing_reward_is_an_error():
    rollouts = make_rollouts([[1.0, 0.0]])
    rollouts[1].reward = None
    model = tiny_model()
    with pytest.raises(AssertionError, match="no reward"):
        grpo_update(model, torch.optim.SGD(model.parameters(), lr=0.1), rollouts, GRPOConfig(), builder("seen"))


@pytest.mark.parametrize("response", [[5, 6, PO], [5, PO, 7, 8], [5, PO, PC, SU, 9, SUC]])
def test_blocks_without_paths_train_like_the_main_chain(response):
    """Regression: a rollout cut right after <Parallel> (no <Path>) crashed the Unseen batch builder."""
    model = tiny_model()
    batches = {m: builder(m)([[1, 2, 3]], [response]) for m in ("seen", "unseen")}
    assert torch.equal(batches["seen"].position_ids, batches["unseen"].position_ids)
    with torch.no_grad():
        lp = {m: response_logprobs(model, b)[0] for m, b in batches.items()}
    torch.testing.assert_close(lp["seen"], lp["unseen"], atol=1e-6, rtol=0)
