"""The rollout-backend interface: token ids in, ``Rollout``s out, plus a weight hand-over.

Everything that samples from a policy (GRPO stages, ``eval``, ``serve``, ``demo``, ``bench``) obtains a
``RolloutBackend`` from ``make_backend(RolloutConfig, ...)`` and talks to it only through this protocol:

1. ``generate(prompts, num_samples, config)``: ``num_samples`` rollouts per prompt, ordered by
   (prompt, sample), each carrying what the branching engine's carry (response ids, loss mask 0 on
   inserted tags, sampling log-probs, block spans, critical path, finish reason, text).
2. ``update_weights(named_tensors)``: new policy weights, called by the trainer after every optimizer
   step of a GRPO stage. A backend that reads the live policy's own tensors (``shares_policy``, the
   in-process branching engine) ignores it without consuming the iterator, so the trainer can pass a
   lazy generator (under FSDP: full tensors gathered one layer at a time) and pay nothing.
3. ``info``: name, forward path and device, for logs and the ``serve`` start line; ``close()`` frees
   the backend's memory (a vLLM engine holds its own copy of the weights and a KV-cache pool).
4. ``supports_logits_processors``: whether ``generate`` also takes ``logits_processors=`` (the
   branching engine's per-step hook, which ``serve`` uses to stream, cancel and end rows at stop
   strings). vLLM's in-process engine takes none, so a caller asks instead of assuming it.

Backends: ``hf`` (``engine.Engine``, exact in every mode; the default) and ``vllm``
(``engine.vllm_backend``, imported only when asked for, since vLLM is an optional install).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import torch

from parallel_r1.engine.sampling import SamplingConfig
from parallel_r1.rollout import Rollout

BackendName = Literal["hf", "vllm"]
BACKENDS = get_args(BackendName)


@dataclass(frozen=True)
class BackendInfo:
    name: str  # "hf" | "vllm"
    forward_path: str  # e.g. "lean", "model (sliding-window layers)", "vllm 0.32.0 (prefix caching)"
    device: str  # e.g. "cpu", "cuda:0"


@runtime_checkable
class RolloutBackend(Protocol):
    shares_policy: bool  # True: reads the trainer's live tensors, ``update_weights`` is a no-op
    supports_logits_processors: bool  # True: ``generate(..., logits_processors=[...])`` (point 4)

    @property
    def info(self) -> BackendInfo: ...

    def generate(self, prompts: Sequence[Sequence[int]], num_samples: int,
                 config: SamplingConfig) -> list[Rollout]: ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def close(self) -> None: ...


@dataclass
class HFOptions:
    """Options of the branching engine on transformers (``engine.Engine``)."""

    max_batch_size: int = 64  # rows decoded at once
    lean: bool = True  # the lean Llama-family forward where the model allows it (engine.decoder)
    # None: from the model's generation config and tokenizer; []: never stop at EOS (fixed-length benches)
    eos_token_ids: list[int] | None = None

    def validate(self, path: str = "rollout.hf") -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"{path}.max_batch_size must be >= 1, got {self.max_batch_size}")


@dataclass
class VLLMOptions:
    """Options of the vLLM backend (colocated, in the trainer's process)."""

    gpu_memory_utilization: float = 0.5  # share of GPU memory vLLM may take (weights + KV pool)
    dtype: str = "auto"  # "auto" follows the policy's dtype
    max_model_len: int | None = None  # default: the model config's max_position_embeddings (vLLM's own)
    enable_prefix_caching: bool = True  # paths reuse the shared prefix's KV blocks
    enforce_eager: bool = True  # no CUDA graphs: faster start, and weights can change in place
    sleep_mode: bool = False  # on GPU: free vLLM's memory during the policy update
    kv_cache_gb: float = 1.0  # CPU only: size of the KV-cache pool (VLLM_CPU_KVCACHE_SPACE)

    def validate(self, path: str = "rollout.vllm") -> None:
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"{path}.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_gb <= 0:
            raise ValueError(f"{path}.kv_cache_gb must be > 0, got {self.kv_cache_gb}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"{path}.max_model_len must be >= 1, got {self.max_model_len}")


@dataclass
class RolloutConfig:
    """``rollout:`` in a recipe, ``--backend`` on the commands: which backend and its own options."""

    backend: BackendName = "hf"
    hf: HFOptions = field(default_factory=HFOptions)
    vllm: VLLMOptions = field(default_factory=VLLMOptions)

    def validate(self, path: str = "rollout") -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"{path}.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        self.hf.validate(f"{path}.hf")
        self.vllm.validate(f"{path}.vllm")


class BackendUnavailable(RuntimeError):
    """The chosen backend's package is not installed; the message is the one line to show."""


def check_backend_available(config: RolloutConfig) -> None:
    """Fail before any model loads when ``config`` names a backend whose package is missing."""
    config.validate()
    if config.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise BackendUnavailable("vLLM is not installed: run `make install-vllm`")


# (model, tokenizer, tag_ids) -> the backend bound to that live policy: what the trainer asks for
BackendFactory = Callable[[Any, Any, dict[str, int] | None], RolloutBackend]


def make_backend(config: RolloutConfig, model, tokenizer, tag_ids: dict[str, int] | None = None) -> RolloutBackend:
    """The backend ``config`` names, bound to ``model`` (the live policy) and its tokenizer."""
    check_backend_available(config)
    if config.backend == "vllm":
        from parallel_r1.engine.vllm_backend import VLLMBackend  # optional install: imported on demand

        return VLLMBackend(model, tokenizer, tag_ids, config.vllm)
    from parallel_r1.engine.engine import Engine

    hf = config.hf
    return Engine(model, tokenizer, tag_ids, max_batch_size=hf.max_batch_size, lean=hf.lean,
                  eos_token_ids=hf.eos_token_ids)
