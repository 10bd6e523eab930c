"""Proof on real (tiny, random) transformers models that the structured forward is what Unseen means.

(a) isolation: every path token's logits equal those of the path run alone after the prefix;
(b) every token from ``</Parallel>`` on has the logits of a forward over a KV cache assembled from
    separately computed paths at their structured positions (what the branching engine does);
(c) the batched form (``build_batch``) reproduces the single-row forward of every row.
fp32, tolerance 1e-5, for Qwen3 and Llama shapes and for both attention implementations we rely on
(sdpa and eager): this is also the check that transformers 5.24 honours custom 4D masks and
position ids. Each check has a negative control so that it can fail.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from parallel_r1.format.tags import TAGS
from parallel_r1.structure import (
    build_batch,
    cache_kwarg,
    concat_caches,
    output_cache,
    slice_cache,
    structured_attention,
)

VOCAB = 64
TID = {t: VOCAB + i for i, t in enumerate(TAGS)}
PAR, PAR_C, PATH, PATH_C, SUM, SUM_C = (TID[t] for t in TAGS)
TOL = 1e-5


def tiny_model(family: str, attn: str):
    torch.manual_seed(0)
    shape = dict(
        vocab_size=VOCAB + len(TAGS), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, head_dim=16, attn_implementation=attn,
    )
    if family == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(**shape)).eval()
    return LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=False)).eval()


def rand_ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


PREFIX = rand_ids(5, 1)
PATHS = [[PATH, *rand_ids(4, 2), PATH_C], [PATH, *rand_ids(7, 3), PATH_C], [PATH, *rand_ids(2, 4), PATH_C]]
TAIL = [PAR_C, SUM, *rand_ids(3, 5), SUM_C, *rand_ids(4, 6)]
IDS = PREFIX + [PAR] + sum(PATHS, []) + TAIL
PATH_STARTS = [len(PREFIX) + 1 + sum(len(p) for p in PATHS[:k]) for k in range(len(PATHS))]
TAIL_START = len(IDS) - len(TAIL)



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls are ~1000x slower with a 2-thread pool on a busy 2-core machine; restore after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


MODELS = [("qwen3", "sdpa"), ("qwen3", "eager"), ("llama", "sdpa"), ("llama", "eager")]


def additive(mask: torch.Tensor) -> torch.Tensor:
    """(L, L) bool -> (1, 1, L, L) fp32 additive."""
    return torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)[None, None]


@torch.no_grad()
def structured_logits(model, ids=IDS, positions=None):
    mask, pos = structured_attention(ids, TID)
    pos = pos if positions is None else positions
    return model(torch.tensor([ids]), attention_mask=additive(mask), position_ids=pos[None]).logits[0]


@pytest.mark.parametrize(("family", "attn"), MODELS)
def test_isolation_every_path_token_equals_the_path_alone(family, attn):
    model = tiny_model(family, attn)
    logits = structured_logits(model)
    n_pre = len(PREFIX) + 1
    for start, path in zip(PATH_STARTS, PATHS, strict=True):
        with torch.no_grad():
            alone = model(torch.tensor([PREFIX + [PAR] + path])).logits[0, n_pre:]
        diff = (logits[start : start + len(path)] - alone).abs().max().item()
        assert diff < TOL, f"path at {start}: max abs diff {diff}"
    # negative controls: plain causal attention, or structured mask with plain positions, leak
    with torch.no_grad():
        plain = model(torch.tensor([IDS])).logits[0]
    wrong_pos = structured_logits(model, positions=torch.arange(len(IDS)))
    s, n = PATH_STARTS[1], len(PATHS[1])
    alone = model(torch.tensor([PREFIX + [PAR] + PATHS[1]])).logits[0, n_pre:].detach()
    assert (plain[s : s + n] - alone).abs().max() > 1e-3
    assert (wrong_pos[s : s + n] - alone).abs().max() > 1e-3


@pytest.mark.parametrize(("family", "attn"), MODELS)
def test_summary_equals_forward_over_assembled_path_caches(family, attn):
    model = tiny_model(family, attn)
    logits = structured_logits(model)
    _, pos = structured_attention(IDS, TID)
    n_pre = len(PREFIX) + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the helpers pick the argument name: no deprecation warning
        kw = cache_kwarg(model)  # "cache" in transformers 5.24, "past_key_values" in 5.17
        with torch.no_grad():
            prefix = output_cache(model(torch.tensor([PREFIX + [PAR]]), use_cache=True))
            parts = [prefix]
            for start, path in zip(PATH_STARTS, PATHS, strict=True):
                fork = copy.deepcopy(prefix)
                out = model(torch.tensor([path]), **{kw: fork}, use_cache=True, position_ids=pos[None, start : start + len(path)])
                parts.append(slice_cache(output_cache(out), n_pre))  # the path's own keys/values only
            cache = concat_caches(parts)
            assert cache.get_seq_length() == TAIL_START
            tail = model(torch.tensor([TAIL]), **{kw: cache}, use_cache=True, position_ids=pos[None, TAIL_START:]).logits[0]
    diff = (tail - logits[TAIL_START:]).abs().max().item()
    assert diff < TOL, f"summary: max abs diff {diff}"
    # negative control: Seen positions for the tail (cache length + arange) give other logits
    with torch.no_grad():
        seen = model(torch.tensor([TAIL]), **{kw: concat_caches(parts)}, use_cache=True).logits[0]
    assert (seen - logits[TAIL_START:]).abs().max() > 1e-3


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", ["unseen", "seen"])
def test_batch_rows_equal_single_row_forwards(attn, mode):
    model = tiny_model("qwen3", attn)
    # the second prompt holds tag tokens: they must not open a block (structure is response-only)
    prompts = [rand_ids(3, 7), [1, PAR, PATH, 2, PATH_C], rand_ids(6, 8)]
    responses = [IDS[len(PREFIX) :], [PAR, PATH, 5, PATH_C, PATH, 6, 6, PATH_C, PAR_C, 9], rand_ids(2, 9)]
    batch = build_batch(prompts, responses, TID, pad_id=0, mode=mode)
    with torch.no_grad():
        logits = model(**batch.model_inputs()).logits  # (B, T, V)
    assert torch.isfinite(logits).all(), "pad rows must not produce NaN"
    resp_logits = batch.response_logits(logits)
    for b, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        # reference: the unpadded row, prompt causal with plain positions, response structured after it
        mask, pos = structured_attention(response, TID) if mode == "unseen" else (None, torch.arange(len(response)))
        full = torch.ones(len(prompt) + len(response), len(prompt) + len(response), dtype=torch.bool).tril()
        if mask is not None:
            full[len(prompt) :, len(prompt) :] = mask
        positions = torch.cat([torch.arange(len(prompt)), pos + len(prompt)])
        with torch.no_grad():
            ref = model(torch.tensor([prompt + response]), attention_mask=additive(full), position_ids=positions[None]).logits[0]
        got = resp_logits[b, : len(response)]
        diff = (got - ref[len(prompt) - 1 : -1]).abs().max().item()
        assert diff < TOL, f"row {b}: max abs diff {diff}"


def test_forward_argument_lookup_through_wrappers():
    """``cache_kwarg`` / ``takes_kwarg`` on a model, a ``**kwargs`` wrapper (PEFT-like), a DDP-like holder
    (``.module``, whose own forward takes ``**kwargs``) and a forward that takes neither."""
    from parallel_r1.structure.cache import takes_kwarg

    model = tiny_model("qwen3", "sdpa")
    name = cache_kwarg(model)
    assert name in ("cache", "past_key_values") and takes_kwarg(model, "logits_to_keep")

    class PassOn(torch.nn.Module):
        def forward(self, input_ids, **kwargs):
            return input_ids

    class Holder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.module = inner

        def forward(self, *inputs, **kwargs):
            return self.module(*inputs, **kwargs)

    class Plain(torch.nn.Module):
        def forward(self, input_ids):
            return input_ids

    assert cache_kwarg(PassOn()) == "cache" and takes_kwarg(PassOn(), "logits_to_keep")
    assert cache_kwarg(Holder(model)) == name
    # looked up on the held model: the holder's own **kwargs would answer "cache" / True
    assert cache_kwarg(Holder(Plain())) is None and not takes_kwarg(Holder(Plain()), "logits_to_keep")
    assert cache_kwarg(Plain()) is None and not takes_kwarg(Plain(), "logits_to_keep")
