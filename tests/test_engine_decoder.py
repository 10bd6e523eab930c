"""``engine.decoder.LeanPlan`` against the model's own forward, and when the engine falls back to it.

The plan restates the decoder op for op, so its logits and cache must equal the model's bit for bit
(``torch.equal``, not a tolerance) for every family it accepts, on sdpa and eager attention, for a
causal forward over an empty cache, a masked many-query forward over a filled one, and a one-query
decode step; and ``Engine(lean=True)`` must give the rollouts of ``Engine(lean=False)`` exactly.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import (
    DynamicCache,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from parallel_r1.engine import Engine, SamplingConfig
from parallel_r1.engine.decoder import lean_plan
from parallel_r1.engine.testing import Force, Script, random_qwen3
from parallel_r1.format.tags import PARALLEL_OPEN, PATH_CLOSE, SUMMARY_CLOSE
from parallel_r1.structure.cache import cache_kwarg

VOCAB = 97
SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)
FAMILIES = {
    "llama": (LlamaForCausalLM, LlamaConfig, dict(attention_bias=True, mlp_bias=True)),
    "mistral": (MistralForCausalLM, MistralConfig, dict(sliding_window=None, head_dim=16)),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, {}),  # q/k/v biases
    "qwen3": (Qwen3ForCausalLM, Qwen3Config, dict(head_dim=16)),  # per-head q/k norms
}


def build(family: str, attn: str, seed: int = 0, **extra) -> nn.Module:
    model_cls, config_cls, own = FAMILIES[family]
    config = config_cls(**{**SHAPE, **own, **extra})
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # nonzero biases and norm weights, so a plan that skipped one would differ
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def model_logits(model, ids, positions, mask, cache, keep):
    kwargs = {cache_kwarg(model): cache, "use_cache": True, "logits_to_keep": keep}
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs).logits


def structured_mask(rows: int, queries: int, keys: int) -> torch.Tensor:
    """(rows, 1, queries, keys) additive mask over a cache of ``keys - queries`` slots then the
    queries: two sibling paths that each see the prefix, themselves causally, and not each other."""
    allowed = torch.zeros(queries, keys, dtype=torch.bool)
    prefix = keys - queries
    allowed[:, :prefix] = True
    half = queries // 2
    for q in range(queries):
        lo = prefix if q < half else prefix + half
        allowed[q, lo : prefix + q + 1] = True
    allowed = allowed.expand(rows, 1, queries, keys).clone()
    allowed[0, 0, :, :2] = False  # row 0: two padding slots at the front
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)


def as_mask(mask, dtype):
    """The additive mask in the model's dtype (the engine builds it so), its minimum kept."""
    return None if mask is None else mask.clamp(min=torch.finfo(dtype).min).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
@torch.no_grad()
def test_plan_logits_and_cache_equal_the_model_bit_for_bit(family, attn, dtype):
    model = build(family, attn).to(dtype)
    plan, why = lean_plan(model)
    assert plan is not None, why
    g = torch.Generator().manual_seed(1)
    caches = DynamicCache(), DynamicCache()
    rows, prompt = 3, 7
    ids = torch.randint(0, VOCAB, (rows, prompt), generator=g)
    positions = torch.arange(prompt).expand(rows, prompt)
    steps = [  # (ids, positions, mask, keep): causal prefill, a 4-query block step, a 1-query decode
        (ids, positions, None, 1),
        (torch.randint(0, VOCAB, (rows, 4), generator=g), torch.tensor([7, 8, 7, 8]).expand(rows, 4),
         structured_mask(rows, 4, prompt + 4), 4),
        (torch.randint(0, VOCAB, (rows, 1), generator=g), torch.full((rows, 1), 9),
         structured_mask(rows, 1, prompt + 5), 1),
    ]
    for step_ids, step_pos, mask, keep in steps:
        mask = as_mask(mask, dtype)
        expected = model_logits(model, step_ids, step_pos, mask, caches[0], keep)
        got = plan(step_ids, step_pos, mask, caches[1], keep)
        assert got.shape == (rows, keep, VOCAB)
        assert torch.equal(got, expected), (got - expected).abs().max()
        for a, b in zip(caches[0].layers, caches[1].layers, strict=True):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def block_script(tok, tags):
    """Every row opens a block after two tokens; EOS and the closing tags are left to the caps."""
    force = Force(tags[PARALLEL_OPEN], lambda c: c.phase == "main" and len(c.tokens) == 2)
    return Script([force], ban=[tok.eos_token_id, tags[PATH_CLOSE], tags[SUMMARY_CLOSE]])


@pytest.mark.parametrize("mode", ["unseen", "seen", "sequential"])
def test_engine_rollouts_are_the_same_with_and_without_the_plan(tok, tags, mode):
    model = random_qwen3(len(tok), "tiny", seed=3)
    lean, plain = Engine(model, tok), Engine(model, tok, lean=False)
    assert lean.forward_path == "lean" and plain.forward_path == "model (lean=False)"
    prompts = [tok.encode("what is 2+3?"), tok.encode("x"), tok.encode("a longer prompt, with more tokens")]
    config = SamplingConfig(max_new_tokens=40, max_path_tokens=6, max_summary_tokens=4, num_paths=3, seed=5,
                            mode=mode)
    got = lean.generate(prompts, 2, config, [block_script(tok, tags)])
    want = plain.generate(prompts, 2, config, [block_script(tok, tags)])
    assert mode == "sequential" or all(r.blocks for r in got), "the script must open blocks"
    assert [(r.response_ids, r.logprobs) for r in got] == [(r.response_ids, r.logprobs) for r in want]


def test_families_and_layouts_it_does_not_cover_keep_the_model_forward():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0))
    assert "model type 'gpt2'" in lean_plan(gpt2)[1]
    sliding = build("qwen3", "sdpa", layer_types=["full_attention", "sliding_attention"], sliding_window=4)
    assert lean_plan(sliding) == (None, "sliding-window layers")
    mistral = build("mistral", "sdpa", sliding_window=4)
    assert lean_plan(mistral) == (None, "sliding-window attention")
    gelu = build("llama", "sdpa", hidden_act="gelu")
    assert "activation 'gelu'" in lean_plan(gelu)[1]

    class Wrapped(nn.Linear):  # what a LoRA or quantised layer looks like from outside
        pass

    wrapped = build("qwen3", "sdpa")
    old = wrapped.model.layers[1].mlp.up_proj
    wrapped.model.layers[1].mlp.up_proj = Wrapped(old.in_features, old.out_features, bias=False)
    assert "Wrapped is not a plain Linear" in lean_plan(wrapped)[1]


def test_modules_patched_from_outside_the_modeling_file_keep_the_model_forward():
    class PatchedRMSNorm(type(build("qwen3", "sdpa").model.norm)):  # a kernel library's drop-in norm
        def forward(self, hidden_states):
            return super().forward(hidden_states)

    patched = build("qwen3", "sdpa")
    old = patched.model.layers[0].input_layernorm
    patched.model.layers[0].input_layernorm = PatchedRMSNorm(old.weight.shape[0], eps=old.variance_epsilon)
    assert "PatchedRMSNorm.forward is not transformers.models.qwen3.modeling_qwen3's own" in lean_plan(patched)[1]

    instance = build("llama", "sdpa")
    mlp = instance.model.layers[1].mlp
    mlp.forward = lambda x: type(mlp).forward(mlp, x)
    assert "an instance of LlamaMLP has its own forward" in lean_plan(instance)[1]
    del mlp.forward
    assert lean_plan(instance)[0] is not None


def test_a_hook_added_after_the_engine_was_built_is_honoured(tok):
    model = random_qwen3(len(tok), "tiny", seed=0)
    engine = Engine(model, tok)
    config = SamplingConfig(max_new_tokens=5, seed=0)
    engine.generate([tok.encode("hi")], 1, config)
    calls = []
    handle = model.model.layers[0].register_forward_hook(lambda *args: calls.append(1))
    try:
        assert engine.forward_path.startswith("model (forward hooks")
        engine.generate([tok.encode("hi")], 1, config)
    finally:
        handle.remove()
    assert len(calls) == 5, "every forward of the generate went through the hooked model"
    assert engine.forward_path == "lean"
