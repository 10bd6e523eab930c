"""A lean forward for Llama-family decoders (Llama, Mistral, Qwen2, Qwen3), used by the engine in place of
the model's own ``forward`` where the model's shape allows it.

Why: a decode step of a small model is mostly fixed cost per call, not arithmetic. The model's
``forward`` goes through output capturing, kwarg merging, mask preparation, output dataclasses and a
module call per submodule. On bench rl's 1M-parameter model that is ~15% of a generation.
``LeanPlan`` runs the same tensor operations in the same order, on the model's own parameters (read,
never copied, so an optimiser step is seen by the next ``generate``) and the engine's cache. Its
logits equal the model's bit for bit: tests/test_engine_decoder.py checks each family, on sdpa and
eager, masked and causal, with one and with many queries per row.

Anything else keeps the model's ``forward``; ``lean_plan`` returns the reason:
1. model types other than the four above, or layers with a sliding window;
2. an activation other than SiLU, or norms that are not the plain RMSNorm (weight * x / rms);
3. submodules that are not exactly ``nn.Linear`` / ``nn.Embedding`` (LoRA wrappers, quantised layers);
4. forward hooks anywhere (accelerate's offloading and device maps work through them);
5. a model whose classes or ``forward`` methods are not the ones its modeling file defines (kernel
   libraries that patch them in, a ``forward`` set on an instance): the plan would skip the patch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from parallel_r1.structure.cache import has_sliding_layers

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
ATTENTION = ("sdpa", "eager")


@dataclass(frozen=True)
class _Norm:
    weight: torch.Tensor
    eps: float


_Linear = tuple[torch.Tensor, torch.Tensor | None]  # weight (out, in), bias (out,) or None


@dataclass(frozen=True)
class _Layer:
    attn: nn.Module  # the attention module, for transformers' attention function (reads its GQA groups)
    head_dim: int
    norm_in: _Norm
    qkvo: tuple[_Linear, _Linear, _Linear, _Linear]
    qk_norm: tuple[_Norm, _Norm] | None  # Qwen3 normalises each head's queries and keys
    norm_post: _Norm
    mlp: tuple[_Linear, _Linear, _Linear]  # gate, up, down


class LeanPlan:
    """The model's decoder as a list of layers; ``plan(ids, positions, mask, cache, keep)`` -> logits.

    ids, positions: (R, Q) int64; mask: (R, 1, Q, K) additive float mask over the cache after this
    step's keys are appended, or None for a causal forward over an empty cache; cache: a transformers
    ``Cache`` (``update(key, value, layer)``); keep: trailing query columns to score. Returns (R, keep, V).
    """

    def __init__(self, model: nn.Module, layers: list[_Layer]) -> None:
        base = model.model
        self.embed, self.rotary, self.layers = base.embed_tokens.weight, base.rotary_emb, layers
        self.norm, self.head = _norm(base.norm), _weights(model.lm_head)
        # the attention function the model's own layers would call: its module's eager one, or sdpa
        eager = sys.modules[type(layers[0].attn).__module__].eager_attention_forward if layers else None
        self.eager = model.config._attn_implementation == "eager"
        self.attend = ALL_ATTENTION_FUNCTIONS.get_interface(model.config._attn_implementation, eager)

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, cache,
                 keep: int) -> torch.Tensor:
        x = F.embedding(ids, self.embed)  # (R, Q, H)
        cos, sin = self.rotary(x, positions)  # (R, Q, head_dim) each
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
        if mask is None and self.eager:
            mask = _causal_mask(ids.shape[1], x.dtype, x.device)  # sdpa takes is_causal instead
        for index, layer in enumerate(self.layers):
            x = x + self._attention(layer, _rms(x, layer.norm_in), cos, sin, mask, cache, index)
            gate, up, down = layer.mlp
            h = _rms(x, layer.norm_post)
            x = x + _linear(down, F.silu(_linear(gate, h)) * _linear(up, h))
        return _linear(self.head, _rms(x[:, -keep:], self.norm))

    def _attention(self, layer: _Layer, h, cos, sin, mask, cache, index: int) -> torch.Tensor:
        rows, width = h.shape[:2]
        shape = (rows, width, -1, layer.head_dim)
        q_proj, k_proj, v_proj, o_proj = layer.qkvo
        q, k = _linear(q_proj, h).view(shape), _linear(k_proj, h).view(shape)
        v = _linear(v_proj, h).view(shape).transpose(1, 2)  # (R, kv_heads, Q, D)
        if layer.qk_norm is not None:
            q, k = _rms(q, layer.qk_norm[0]), _rms(k, layer.qk_norm[1])
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (R, heads, Q, D), (R, kv_heads, Q, D)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k, v = cache.update(k, v, index)
        out, _ = self.attend(layer.attn, q, k, v, mask, dropout=0.0, scaling=layer.attn.scaling,
                             sliding_window=None)  # (R, Q, heads, D)
        return _linear(o_proj, out.reshape(rows, width, -1).contiguous())


def lean_plan(model: nn.Module) -> tuple[LeanPlan | None, str]:
    """(plan, "") where the model can run lean, else (None, why not)."""
    config = getattr(model, "config", None)
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        return None, f"model type {family!r} is not one of {FAMILIES}"
    if getattr(config, "_attn_implementation", None) not in ATTENTION:
        return None, f"attention {config._attn_implementation!r} is not one of {ATTENTION}"
    if getattr(config, "hidden_act", None) != "silu":
        return None, f"activation {config.hidden_act!r} is not silu"
    if has_sliding_layers(config):
        return None, "sliding-window layers"
    if family == "mistral" and getattr(config, "sliding_window", None) is not None:
        return None, "sliding-window attention"
    if _hooked(model):
        return None, "forward hooks on the model (accelerate offloading or device maps)"
    try:
        _check_own(model, type(model).__module__)
        _check_type(model.model.embed_tokens, nn.Embedding)
        plan = LeanPlan(model, [_layer(layer) for layer in model.model.layers])
    except (AttributeError, TypeError) as error:
        return None, f"unexpected module layout: {error}"
    return plan, ""


def _check_own(model: nn.Module, home: str) -> None:
    """Every module the plan restates is of a class from the model's modeling file ``home``, with that
    class's own ``forward``; linear and embedding layers are plain torch ones; no instance overrides
    ``forward``; the file's rotary function is its own."""
    base = model.model
    restated = [model, base, base.norm, base.rotary_emb]
    for layer in base.layers:
        restated += [layer, layer.self_attn, layer.mlp, layer.input_layernorm, layer.post_attention_layernorm]
        restated += [m for m in (getattr(layer.self_attn, "q_norm", None), getattr(layer.self_attn, "k_norm", None))
                     if m is not None]
    for module in restated:
        kind = type(module)
        if kind.__module__ != home or getattr(kind.forward, "__module__", None) != home:
            raise TypeError(f"{kind.__name__}.forward is not {home}'s own")
    for module in model.modules():
        if "forward" in vars(module):
            raise TypeError(f"an instance of {type(module).__name__} has its own forward")
    rotary = getattr(sys.modules[home], "apply_rotary_pos_emb", None)
    if rotary is not None and getattr(rotary, "__module__", home) != home:
        raise TypeError(f"{home}.apply_rotary_pos_emb is patched")


def _layer(layer: nn.Module) -> _Layer:
    attn, mlp = layer.self_attn, layer.mlp
    qkvo = tuple(_weights(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj))
    gate_up_down = tuple(_weights(m) for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    q_norm = getattr(attn, "q_norm", None)
    qk_norm = (_norm(q_norm), _norm(attn.k_norm)) if q_norm is not None else None
    return _Layer(attn, attn.head_dim, _norm(layer.input_layernorm), qkvo, qk_norm,
                  _norm(layer.post_attention_layernorm), gate_up_down)


def _norm(module: nn.Module) -> _Norm:
    if not type(module).__name__.endswith("RMSNorm"):
        raise TypeError(f"{type(module).__name__} is not an RMSNorm")
    return _Norm(module.weight, module.variance_epsilon)


def _weights(module: nn.Module) -> _Linear:
    _check_type(module, nn.Linear)
    return module.weight, module.bias


def _check_type(module: nn.Module, kind: type) -> None:
    if type(module) is not kind:  # subclasses (quantised, LoRA) compute something else
        raise TypeError(f"{type(module).__name__} is not a plain {kind.__name__}")


def _hooked(model: nn.Module) -> bool:
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or hasattr(m, "_hf_hook") for m in model.modules())


# The three pieces below restate transformers' RMSNorm, rotate_half and Linear call op for op:
# the same operations in the same order give the same bits.
def _rms(x: torch.Tensor, norm: _Norm) -> torch.Tensor:
    dtype = x.dtype
    if dtype != torch.float32:  # ``.to`` of the same dtype returns its input: skipping it changes no bit
        x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)
    return norm.weight * (x if dtype == torch.float32 else x.to(dtype))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _linear(weights: _Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, *weights)


def _causal_mask(width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, 1, Q, Q) additive causal mask, as transformers builds it for eager attention."""
    blocked = torch.ones(width, width, dtype=torch.bool, device=device).triu(1)
    return torch.zeros(width, width, dtype=dtype, device=device).masked_fill(blocked, torch.finfo(dtype).min)[None, None]
