"""Per-GPU memory of a recipe stage, computed from the model's shape (no GPU, no weights).

What it counts, per GPU, in bytes (every figure is arithmetic, not a measurement):
1. Parameters, from the HF config of a Qwen3/Llama-shaped decoder: embeddings (V x h, once when
   tied), per layer q/k/v/o projections (no biases), the gated MLP (3 x h x I), two RMSNorms of h and
   Qwen3's q/k norms of one head_dim each, the final norm, and an LM head of V x h unless tied.
   ``tests/test_train_memory.py`` checks the count against ``sum(p.numel())`` of a real model.
2. Training state: fp32 master weights 4 + gradients 4 + AdamW moments 8 = 16 bytes per parameter.
   DDP keeps it whole on every GPU; FSDP (full shard) divides it by the GPU count and adds the
   gathered compute copies: the root unit (the embedding, tied to the LM head) and two decoder layers
   (the running one and the prefetched one) in bf16, plus one layer's unsharded fp32 gradients
   before its reduce-scatter.
3. Activations of one micro-batch (rows x tokens). Per token and layer it counts the tensors autograd
   keeps under bf16 autocast over fp32 weights: four residual-width tensors in fp32 (the norms' inputs
   and outputs) and two bf16 casts of them (20 h bytes); q through projection, norm, rotary and the
   attention output, k and v likewise (2 x (4 q + 4 kv) bytes, sdpa keeps no score matrix); the
   MLP's gate, up, silu(gate) and product (2 x 4 I bytes). With gradient checkpointing only each
   layer's fp32 input is kept (4 h bytes per token and layer) plus one layer's full set, recomputed
   in the backward. This is an estimate to about +-30%, not a profile.
4. Logits of the scored tokens (``train/logprobs.py``): the bf16 head output, the bf16 rows picked for
   response tokens, their fp32 copy and the fp32 log-softmax: 12 bytes x vocab per scored token.
5. Rollout KV cache (GRPO stages): 2 (K and V) x layers x kv_heads x head_dim x bytes per token, for
   the rows the backend decodes at once (the hf engine's ``max_batch_size``, or every rollout of the
   GPU's share if fewer), each at prompt + response budget tokens (the budget counts path tokens too,
   and paths share the prefix's cache, so a row never holds more). Bytes: the policy's dtype, since
   the hf engine decodes the trainer's own tensors (fp32 in the Qwen3-4B recipes).
Peak = state + max(training: activations + logits, rollout: KV cache). Where this departs from a
real run: the state is counted whole during rollouts too (gradients are freed there, 4 bytes per
parameter less), CUDA context, NCCL buffers and allocator fragmentation are left to ``headroom``,
and a vLLM backend holds its own weight copy and a pool sized by ``gpu_memory_utilization`` instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from parallel_r1.train.config import GRPOStage, Recipe, SFTStage

GIB = 2**30
STATE_BYTES_PER_PARAM = 16  # fp32 weights 4 + grads 4 + AdamW exp_avg 4 + exp_avg_sq 4
LOGIT_BYTES_PER_VOCAB_ENTRY = 12  # bf16 head out 2 + bf16 picked rows 2 + fp32 copy 4 + fp32 log-softmax 4
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    tie_word_embeddings: bool = True
    qk_norm: bool = True  # Qwen3 normalises q and k per head (one head_dim weight each); Llama does not

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """From an HF config object or its dict (Qwen3, Llama, Mistral: same decoder layout)."""
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        heads = get("num_attention_heads")
        head_dim = get("head_dim") or get("hidden_size") // heads
        return cls(vocab_size=get("vocab_size"), hidden_size=get("hidden_size"),
                   num_hidden_layers=get("num_hidden_layers"), num_attention_heads=heads,
                   num_key_value_heads=get("num_key_value_heads") or heads, head_dim=head_dim,
                   intermediate_size=get("intermediate_size"),
                   tie_word_embeddings=bool(get("tie_word_embeddings", False)),
                   qk_norm=get("model_type") == "qwen3")

    @property
    def q_width(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def layer_params(self) -> int:
        h, i = self.hidden_size, self.intermediate_size
        attention = h * self.q_width + 2 * h * self.kv_width + self.q_width * h  # q, k, v, o (no bias)
        norms = 2 * h + (2 * self.head_dim if self.qk_norm else 0)
        return attention + 3 * h * i + norms

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def param_count(self) -> int:
        head = 0 if self.tie_word_embeddings else self.embedding_params()
        return self.embedding_params() + self.num_hidden_layers * self.layer_params() + self.hidden_size + head

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes


# Qwen/Qwen3-4B-Base config.json on the Hugging Face hub (also the Qwen3 technical report's Table 1):
# 36 layers, hidden 2560, 32 query / 8 KV heads of 128, intermediate 9728, vocabulary 151936, tied
# embeddings. 4,022,468,096 parameters by ``param_count``. Written here so the figures need no download.
QWEN3_4B_BASE = ModelShape(vocab_size=151936, hidden_size=2560, num_hidden_layers=36, num_attention_heads=32,
                           num_key_value_heads=8, head_dim=128, intermediate_size=9728, tie_word_embeddings=True)
KNOWN_SHAPES = {"Qwen/Qwen3-4B-Base": QWEN3_4B_BASE, "Qwen/Qwen3-4B": QWEN3_4B_BASE}


def shape_of_recipe(recipe: Recipe) -> ModelShape:
    """The recipe model's shape: a known hub name, else the config of a local path or the hub cache."""
    name = recipe.model.name_or_path
    if name in KNOWN_SHAPES and not recipe.model.config:
        return KNOWN_SHAPES[name]
    from transformers import AutoConfig

    values = AutoConfig.from_pretrained(name).to_dict() if name else {}
    values.update(recipe.model.config)
    return ModelShape.from_config(values)


@dataclass(frozen=True)
class Workload:
    """What one GPU does in a stage: one micro-batch forward/backward, and its share of the rollouts."""

    rows: int  # micro-batch rows per forward
    tokens_per_row: int  # prompt + response, the padded row length at worst
    scored_per_row: int  # response tokens that go through the LM head and log-softmax
    rollout_rows: int = 0  # rows the rollout backend decodes at once on this GPU (0: no rollouts)
    rollout_tokens_per_row: int = 0


def stage_workload(stage: SFTStage | GRPOStage, gpus: int, rollout_batch: int) -> Workload:
    """The worst case the recipe allows: full-length rows (``max_length``, or prompt + response budget)."""
    if isinstance(stage, SFTStage):
        # the SFT loss scores response tokens only; the prompt share varies per row, so count all
        return Workload(stage.micro_batch_size, stage.max_length, stage.max_length)
    gen = stage.generation  # a dict as read, a SamplingConfig once the recipe is validated
    new_tokens = int(gen.get("max_new_tokens", 256) if isinstance(gen, dict) else gen.max_new_tokens)
    per_gpu = -(-stage.batch_size * stage.num_samples // gpus)  # each rank samples its share of the prompts
    return Workload(stage.micro_batch_size, stage.max_prompt_tokens + new_tokens, new_tokens,
                    rollout_rows=min(per_gpu, rollout_batch), rollout_tokens_per_row=stage.max_prompt_tokens + new_tokens)


def state_bytes(shape: ModelShape, sharding: str, gpus: int) -> dict[str, int]:
    """Training state per GPU: DDP whole; FSDP a 1/gpus shard plus the gathered units (docstring 2)."""
    params = shape.param_count()
    if sharding == "ddp":
        return {"state": STATE_BYTES_PER_PARAM * params, "gathered": 0}
    if sharding != "fsdp":
        raise ValueError(f"sharding must be ddp or fsdp, got {sharding!r}")
    layer = shape.layer_params()
    gathered = 2 * (shape.embedding_params() + 2 * layer) + 4 * layer
    return {"state": -(-STATE_BYTES_PER_PARAM * params // gpus), "gathered": gathered}


def activation_bytes(shape: ModelShape, tokens: int, checkpointing: bool) -> int:
    """Activations kept for the backward of ``tokens`` (rows x length) tokens (docstring 3)."""
    h = shape.hidden_size
    per_layer = 20 * h + 2 * (4 * shape.q_width + 4 * shape.kv_width) + 2 * 4 * shape.intermediate_size
    if not checkpointing:
        return tokens * per_layer * shape.num_hidden_layers
    return tokens * (4 * h * shape.num_hidden_layers + per_layer)


def logit_bytes(shape: ModelShape, scored_tokens: int) -> int:
    return scored_tokens * shape.vocab_size * LOGIT_BYTES_PER_VOCAB_ENTRY


def stage_memory(shape: ModelShape, work: Workload, sharding: str, gpus: int, checkpointing: bool,
                 kv_dtype_bytes: int) -> dict[str, int]:
    """Bytes per GPU of each part and the peak (module docstring)."""
    parts = state_bytes(shape, sharding, gpus)
    parts["activations"] = activation_bytes(shape, work.rows * work.tokens_per_row, checkpointing)
    parts["logits"] = logit_bytes(shape, work.rows * work.scored_per_row)
    parts["rollout_kv"] = work.rollout_rows * work.rollout_tokens_per_row * shape.kv_bytes_per_token(kv_dtype_bytes)
    resident = parts["state"] + parts["gathered"]
    parts["peak_train"] = resident + parts["activations"] + parts["logits"]
    parts["peak_rollout"] = resident + parts["rollout_kv"]
    parts["peak"] = max(parts["peak_train"], parts["peak_rollout"])
    return parts


def max_rollout_rows(shape: ModelShape, work: Workload, resident: int, budget: int, kv_dtype_bytes: int) -> int:
    """Rows the backend could decode at once in ``budget`` bytes beside the resident state."""
    per_row = work.rollout_tokens_per_row * shape.kv_bytes_per_token(kv_dtype_bytes)
    return max(0, (budget - resident) // per_row) if per_row else 0


def recipe_memory(recipe: Recipe, gpus: int = 8, gpu_gb: float = 40.0, headroom: float = 0.1,
                  rollout_batch: int | None = None, shape: ModelShape | None = None) -> dict:
    """Every stage of ``recipe`` under DDP and FSDP, with and without gradient checkpointing.

    ``gpu_gb`` is read as GiB (an "A100 40GB" has 40 GiB); a figure fits when its peak is at most
    (1 - headroom) of it. ``rollout_batch``: rows the hf engine decodes at once (default: the recipe's
    ``rollout.hf.max_batch_size``, where the recipe has that section, else the engine's default 64).
    """
    if rollout_batch is None:
        rollout = getattr(recipe, "rollout", None)  # the rollout section is newer than some checkouts
        rollout_batch = rollout.hf.max_batch_size if rollout is not None else 64
    if gpus < 1 or gpu_gb <= 0 or not 0 <= headroom < 1 or rollout_batch < 1:
        raise ValueError(f"need gpus >= 1, gpu_gb > 0, 0 <= headroom < 1, rollout_batch >= 1; got "
                         f"{gpus}, {gpu_gb}, {headroom}, {rollout_batch}")
    shape = shape or shape_of_recipe(recipe)
    budget = int((1 - headroom) * gpu_gb * GIB)
    kv_bytes = DTYPE_BYTES[recipe.model.dtype]
    stages = []
    for stage in recipe.stages:
        work = stage_workload(stage, gpus, rollout_batch)
        entry = {"name": stage.name, "type": stage.type, "workload": asdict(work), "configs": {}}
        for sharding in ("ddp", "fsdp"):
            for ckpt in (True, False):
                parts = stage_memory(shape, work, sharding, gpus, ckpt, kv_bytes)
                resident = parts["state"] + parts["gathered"]
                entry["configs"][f"{sharding}{'_ckpt' if ckpt else ''}"] = {
                    **{k: round(v / GIB, 2) for k, v in parts.items()},
                    "fits": parts["peak"] <= budget,
                    "fits_training": parts["peak_train"] <= budget,
                    "max_rollout_rows": max_rollout_rows(shape, work, resident, budget, kv_bytes) if work.rollout_rows else None,
                }
        stages.append(entry)
    return {"recipe": recipe.name, "model": recipe.model.name_or_path, "params": shape.param_count(),
            "shape": asdict(shape), "gpus": gpus, "gpu_gib": gpu_gb, "headroom": headroom,
            "budget_gib": round(budget / GIB, 2), "gradient_checkpointing": recipe.model.gradient_checkpointing,
            "rollout_batch": rollout_batch, "kv_dtype_bytes": kv_bytes, "units": "GiB, computed", "stages": stages}
