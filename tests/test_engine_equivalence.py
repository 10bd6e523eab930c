"""The engine's cached, batched, branching decode against naive full re-encoding.

1. Greedy decode equals a naive decoder that re-encodes the whole sequence for every token, decodes
   the paths one after another, and takes its mask and positions from ``structure`` (STYLE item 12).
2. Sampling log-probs equal one training-style forward per rollout: unseen under
   ``structured_attention`` (4D additive mask + position ids), seen under ``causal_attention`` for
   every token outside the later paths (which are sampled in isolation, as the reference does),
   sequential under ``causal_attention`` for every token.
"""

from __future__ import annotations

import pytest
import torch

from parallel_r1.engine import Engine, SamplingConfig
from parallel_r1.engine.sampling import DecodeContext
from parallel_r1.engine.testing import Force, Script, random_qwen3
from parallel_r1.format.tags import (
    PARALLEL_CLOSE,
    PARALLEL_OPEN,
    PATH_CLOSE,
    PATH_OPEN,
    SUMMARY_CLOSE,
    SUMMARY_OPEN,
    TAGS,
)
from parallel_r1.structure import causal_attention, structured_attention

TOL = 1e-4


@pytest.fixture(scope="module")
def model(tok):
    return random_qwen3(len(tok), "tiny", seed=1)


@pytest.fixture(scope="module")
def engine(model, tok):
    return Engine(model, tok, max_batch_size=4)


def prompts(tok):
    return [tok.encode(t) for t in ("solve 12*7", "ok", "a much longer prompt for row three", "7-5=")]


@torch.no_grad()
def forward_logprobs(model, ids, attention, temperature=1.0):
    """log_softmax(logits / T) of one forward over ``ids`` with the mask and positions from ``attention``.
    Returns (L, V)."""
    allowed, positions = attention(ids)
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    logits = model(input_ids=torch.tensor([ids]), attention_mask=mask[None, None],
                   position_ids=positions[None]).logits[0]
    return torch.log_softmax(logits.float() / temperature, dim=-1)


class NaiveDecoder:
    """Greedy decoding by full re-encoding, paths one after another; restates the engine's rules."""

    def __init__(self, model, tags, eos, config: SamplingConfig, script: Script, mode: str):
        self.model, self.t, self.eos, self.c, self.script, self.mode = model, tags, eos, config, script, mode
        self.unseen = lambda ids: structured_attention(ids, tags)
        self.causal = lambda ids: causal_attention(ids, tags)

    def pick(self, ids, attention, ctx, allowed_tags):
        logits = forward_logprobs(self.model, ids, attention)[-1:].clone()
        logits = self.script(logits, [ctx])
        if self.mode != "sequential":
            banned = [self.t[x] for x in TAGS if x not in allowed_tags]
            logits[0, banned] = float("-inf")
        return int(logits[0].argmax())

    def ctx(self, prompt_index, phase, path_index, blocks, tokens):
        return DecodeContext(prompt_index, 0, phase, path_index, blocks - 1, tokens, -1)

    def decode(self, prompt, prompt_index):
        t, c, resp, blocks = self.t, self.c, [], 0
        attention = self.causal if self.mode != "unseen" else self.unseen
        while len(resp) < c.max_new_tokens:
            main_tags = {PARALLEL_OPEN} if blocks < c.max_blocks else set()
            tok = self.pick(prompt + resp, attention, self.ctx(prompt_index, "main", None, blocks, resp), main_tags)
            resp.append(tok)
            if tok == self.eos:
                break
            if tok != t[PARALLEL_OPEN] or self.mode == "sequential":
                continue
            blocks += 1
            done_paths: list[int] = []
            for j in range(c.num_paths):
                done_paths += self.path(prompt, prompt_index, resp, done_paths, j, blocks)
            resp += done_paths + [t[PARALLEL_CLOSE], t[SUMMARY_OPEN]]
            self.summary(prompt, prompt_index, resp, blocks, attention)
        return resp

    def path(self, prompt, prompt_index, resp, done_paths, j, blocks):
        path, t = [self.t[PATH_OPEN]], self.t
        while True:
            # unseen: siblings are in the sequence but masked; seen: the path alone after the prefix
            ids = prompt + resp + done_paths + path if self.mode == "unseen" else prompt + resp + path
            attention = self.unseen if self.mode == "unseen" else self.causal
            tok = self.pick(ids, attention, self.ctx(prompt_index, "path", j, blocks, path), {PATH_CLOSE})
            if tok in (t[PATH_CLOSE], self.eos):
                return path + [t[PATH_CLOSE]]
            path.append(tok)
            if len(path) - 1 == self.c.max_path_tokens:
                return path + [t[PATH_CLOSE]]

    def summary(self, prompt, prompt_index, resp, blocks, attention):
        count = 0
        while True:
            ctx = self.ctx(prompt_index, "summary", None, blocks, resp)
            tok = self.pick(prompt + resp, attention, ctx, {SUMMARY_CLOSE})
            if tok in (self.t[SUMMARY_CLOSE], self.eos):
                resp.append(self.t[SUMMARY_CLOSE])
                return
            resp.append(tok)
            count += 1
            if count == self.c.max_summary_tokens:
                resp.append(self.t[SUMMARY_CLOSE])
                return


def shaping_script(tok, tags):
    """A block at main length 1 + prompt index (rows stagger) and one at 30 or later, an EOS inside path 0 of every block at its 3rd
    token, a sampled </Path> in path 1 at its 2nd, EOS from main length 62; depends only on
    branch-local state (the naive decoder runs the paths one after another)."""
    forces = [
        Force(tags[PARALLEL_OPEN], lambda c: c.phase == "main" and len(c.tokens) == 1 + c.prompt_index),
        Force(tags[PARALLEL_OPEN], lambda c: c.phase == "main" and c.block_index == 0 and len(c.tokens) >= 30),
        Force(tok.eos_token_id, lambda c: c.phase == "path" and c.path_index == 0 and len(c.tokens) == 3),
        Force(tags[PATH_CLOSE], lambda c: c.phase == "path" and c.path_index == 1 and len(c.tokens) == 2),
        Force(tok.eos_token_id, lambda c: c.phase == "main" and len(c.tokens) >= 62),
    ]
    return Script(forces, ban=[tok.eos_token_id, tags[PARALLEL_OPEN]])


@pytest.mark.parametrize("mode,num_paths", [("unseen", 2), ("unseen", 3), ("seen", 2), ("seen", 3), ("sequential", 2)])
def test_greedy_decode_equals_naive_reencoding(model, engine, tok, tags, mode, num_paths):
    """Seen with 3 paths re-encodes 18 tokens at a block's end: more than LONG_FEED, so that row runs
    in a forward of its own while the others decode."""
    config = SamplingConfig(temperature=0.0, max_new_tokens=90, max_path_tokens=8, max_summary_tokens=4,
                            num_paths=num_paths, mode=mode)
    script = shaping_script(tok, tags)
    rollouts = engine.generate(prompts(tok), 1, config, [script])
    naive = NaiveDecoder(model, tags, tok.eos_token_id, config, script, mode)
    for r in rollouts:
        expected = naive.decode(r.prompt_ids, r.prompt_index)
        assert r.response_ids == expected
        if mode != "sequential":
            assert len(r.blocks) == 2 and r.finish_reason == "eos"


def max_diff(recomputed, r, positions):
    """Largest |engine log-prob - recomputed| over the given response positions with loss 1."""
    p = len(r.prompt_ids)
    diffs = [abs(recomputed[p + k - 1, r.response_ids[k]].item() - r.logprobs[k])
             for k in positions if r.loss_mask[k] == 1]
    return max(diffs, default=0.0)


@pytest.mark.parametrize("num_paths", [1, 2, 3, 4])
def test_unseen_logprobs_equal_the_structured_training_forward(model, engine, tok, tags, num_paths):
    script = Script([Force(tags[PARALLEL_OPEN], lambda c: c.phase == "main" and len(c.tokens) in (2, 25))])
    config = SamplingConfig(max_new_tokens=70, max_path_tokens=6, max_summary_tokens=5, num_paths=num_paths,
                            temperature=0.8, top_k=20, seed=num_paths)
    rollouts = engine.generate(prompts(tok), 2, config, [script])
    assert sum(len(r.blocks) for r in rollouts) >= 8
    worst = 0.0
    for r in rollouts:
        ids = r.prompt_ids + r.response_ids
        # logprobs are of logits / temperature (sampling module, point 3)
        scaled = forward_logprobs(model, ids, lambda x: structured_attention(x, tags), temperature=0.8)
        worst = max(worst, max_diff(scaled, r, range(len(r.response_ids))))
    assert worst <= TOL


def test_seen_summary_and_main_equal_the_causal_training_forward(model, engine, tok, tags):
    script = Script([Force(tags[PARALLEL_OPEN], lambda c: c.phase == "main" and len(c.tokens) in (1, 24))])
    config = SamplingConfig(max_new_tokens=70, max_path_tokens=6, max_summary_tokens=5, num_paths=3,
                            mode="seen", seed=3)
    rollouts = engine.generate(prompts(tok), 2, config, [script])
    for r in rollouts:
        ids = r.prompt_ids + r.response_ids
        causal = forward_logprobs(model, ids, lambda x: causal_attention(x, tags))
        later_paths = {k for b in r.blocks for s, e in b.paths[1:] for k in range(s, e)}
        outside = [k for k in range(len(ids) - len(r.prompt_ids)) if k not in later_paths]
        assert max_diff(causal, r, outside) <= TOL
        for b in r.blocks:  # later paths were sampled after the prefix alone, at positions p+1...
            for s, e in b.paths[1:]:
                alone = r.prompt_ids + r.response_ids[: b.parallel + 1] + r.response_ids[s:e]
                lp = forward_logprobs(model, alone, lambda x: causal_attention(x, tags))
                shift = s - (b.parallel + 1)
                diffs = [abs(lp[len(r.prompt_ids) + k - shift - 1, r.response_ids[k]].item() - r.logprobs[k])
                         for k in range(s, e) if r.loss_mask[k]]
                assert max(diffs, default=0.0) <= TOL
    assert sum(len(r.blocks) for r in rollouts) >= 8


def test_sequential_logprobs_equal_the_causal_forward(model, engine, tok, tags):
    config = SamplingConfig(max_new_tokens=40, mode="sequential", seed=5)
    for r in engine.generate(prompts(tok), 2, config):
        causal = forward_logprobs(model, r.prompt_ids + r.response_ids, lambda x: causal_attention(x, tags))
        assert max_diff(causal, r, range(len(r.response_ids))) <= TOL


def test_a_llama_model_works_too(tok, tags):
    """Nothing in the engine is Qwen-specific: a tiny Llama gives the same log-prob equivalence."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(2)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, eos_token_id=tok.eos_token_id,
                         attn_implementation="sdpa")
    llama = LlamaForCausalLM(config).eval()
    script = Script([Force(tags[PARALLEL_OPEN], lambda c: c.phase == "main" and len(c.tokens) == 2)])
    sampling = SamplingConfig(max_new_tokens=40, max_path_tokens=5, max_summary_tokens=4, num_paths=3, seed=2)
    rollouts = Engine(llama, tok).generate(prompts(tok), 1, sampling, [script])
    assert all(r.blocks for r in rollouts)
    for r in rollouts:
        recomputed = forward_logprobs(llama, r.prompt_ids + r.response_ids, lambda x: structured_attention(x, tags))
        assert max_diff(recomputed, r, range(len(r.response_ids))) <= TOL
