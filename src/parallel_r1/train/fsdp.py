"""FSDP2 for the training stages: the policy sharded per decoder layer, rollouts from a full copy.

What it does:
1. ``FSDPSettings.from_env()`` reads what ``accelerate launch --config_file configs/accelerate/fsdp_*.yaml``
   exports (``ACCELERATE_USE_FSDP``, ``FSDP_VERSION``, ``FSDP_OFFLOAD_PARAMS``,
   ``FSDP_ACTIVATION_CHECKPOINTING``, ``FSDP_RESHARD_AFTER_FORWARD``, ``FSDP_TRANSFORMER_CLS_TO_WRAP``,
   ``ACCELERATE_MIXED_PRECISION``); without them FSDP is off and nothing here runs.
2. ``shard_model`` calls ``torch.distributed.fsdp.fully_shard`` on every decoder layer, then on the
   root (embeddings, final norm and head; a tied head stays one parameter). Master weights stay in
   the dtype the model was loaded in (fp32 in every recipe); ``mixed_precision: bf16`` computes in
   bf16 and reduces gradients in fp32 (``MixedPrecisionPolicy``); ``fsdp_offload_params`` keeps the
   sharded parameters, gradients and hence AdamW state on the CPU (``CPUOffloadPolicy``);
   activation checkpointing is transformers' gradient checkpointing, the non-reentrant kind (the
   one FSDP2's hooks work with).
3. Each stage builds a fresh AdamW over the sharded (DTensor) parameters: the optimiser state is
   sharded as the parameters are, and a new stage's optimiser inherits nothing.
4. ``gathered_named_tensors(model)`` yields the full tensors one parameter at a time
   (``DTensor.full_tensor()``): whoever consumes it holds one full copy at most plus one parameter.
   ``CopyBackend`` is the rollout side: a private unsharded copy of the policy on each process
   (``shares_policy`` False) that ``update_weights`` overwrites in place, and any backend (the
   branching ``Engine``) decoding over it. Its decode loop holds no collective, so ranks may decode
   different numbers of steps.
5. ``save_sharded`` / ``load_sharded``: model and optimiser through torch distributed checkpoint
   (each rank writes its shards); ``full_state_dict`` gathers the HF model directory on rank 0.

Why ``fully_shard`` directly and not accelerate's FSDP2 plugin: accelerate (1.16) turns FSDP on
only for GPU-type process groups, so the plugin never runs on CPU/gloo and could not be tested
here; and its FSDP2 path wants the model and optimiser prepared together, once, while every stage
of a recipe needs a fresh optimiser. accelerate still launches the processes, sets up the process
group (gloo on CPU, NCCL on GPUs) and carries the config file's settings in its environment.

Departures / limits: gradients are reduce-scattered after every micro-batch (no ``no_sync``: an
unsharded accumulated gradient would cost a full fp32 copy); the log-prob forward does not share a
micro-batch's prompt between rows (``logprobs``: FSDP2 cannot run two forwards into one backward);
a GRPO stage with ``kl_coef > 0`` is refused under FSDP (its frozen reference would need a third
copy; the reference runs use no KL).

Cost of the hand-over (``scripts/bench_fsdp_handover.py``, 2 gloo processes on a busy 2-core CPU):
5.2M parameters 0.12-0.14 s, 42M parameters 0.48-0.58 s; the copy is one full model per process
(20 MB / 160 MB in fp32) and resident memory does not grow across hand-overs. It runs after every
optimiser step (the GRPO update's ``on_step``). On GPUs the gather is in the master dtype, so for
Qwen3-4B the largest tensor in flight is the fp32 embedding (1.6 GB) and the bf16 copy is 8 GB per
GPU (computed, not run here).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from parallel_r1.structure.cache import activation_checkpointing

TRUE = ("1", "true", "yes")


@dataclass(frozen=True)
class FSDPSettings:
    enabled: bool = False
    mixed_precision: str = "no"  # "no" | "bf16"
    offload: bool = False  # sharded params, grads and optimiser state on the CPU
    activation_checkpointing: bool = False
    reshard_after_forward: bool = True  # FULL_SHARD (False: SHARD_GRAD_OP)
    layer_cls: tuple[str, ...] = ()  # decoder-layer class names; () = the model's _no_split_modules

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FSDPSettings:
        env = os.environ if env is None else env
        if env.get("ACCELERATE_USE_FSDP", "false").lower() not in TRUE:
            return cls()
        version = env.get("FSDP_VERSION", "1")
        if version != "2":
            raise ValueError(f"fsdp_version {version} in the accelerate config: only FSDP2 (fsdp_version: 2) "
                             "is supported (configs/accelerate/fsdp_*.yaml)")  # fmt: skip
        mp = env.get("ACCELERATE_MIXED_PRECISION", "no").lower()
        if mp not in ("no", "bf16"):
            raise ValueError(f"mixed_precision {mp} under FSDP: use bf16 (GPU) or no (CPU)")
        wrap = env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
        return cls(
            enabled=True,
            mixed_precision=mp,
            offload=env.get("FSDP_OFFLOAD_PARAMS", "false").lower() in TRUE,
            activation_checkpointing=env.get("FSDP_ACTIVATION_CHECKPOINTING", "false").lower() in TRUE,
            reshard_after_forward=env.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() in TRUE,
            layer_cls=tuple(c.strip() for c in wrap.split(",") if c.strip()),
        )

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The forward's dtype under mixed precision (None: the master weights' own)."""
        return torch.bfloat16 if self.mixed_precision == "bf16" else None


def mixed_precision_policy(settings: FSDPSettings):
    """bf16 parameters for compute, fp32 gradient reduction; None when there is no mixed precision."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if settings.compute_dtype is None:
        return None
    return MixedPrecisionPolicy(param_dtype=settings.compute_dtype, reduce_dtype=torch.float32)


def offload_policy(settings: FSDPSettings):
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy

    return CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if settings.offload else OffloadPolicy()


def decoder_layers(model: torch.nn.Module, names: Sequence[str] = ()) -> list[torch.nn.Module]:
    """The modules to shard one by one: instances of ``names`` (default: ``_no_split_modules``)."""
    names = tuple(names) or tuple(getattr(model, "_no_split_modules", None) or ())
    assert names, f"{type(model).__name__}: name the decoder-layer class (fsdp_transformer_layer_cls_to_wrap)"
    layers = [m for m in model.modules() if type(m).__name__ in names]
    assert layers, f"no module of class {', '.join(names)} in {type(model).__name__}"
    return layers


def shard_model(model: torch.nn.Module, settings: FSDPSettings, device: torch.device) -> torch.nn.Module:
    """Shard ``model`` in place over all processes (module docstring, point 2) and return it."""
    import torch.distributed as tdist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    assert tdist.is_initialized(), "FSDP needs a process group: launch with accelerate launch"
    if settings.activation_checkpointing or activation_checkpointing(model):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.to(device)
    mesh = init_device_mesh(device.type, (tdist.get_world_size(),))
    kwargs = {"mesh": mesh, "reshard_after_forward": settings.reshard_after_forward,
              "offload_policy": offload_policy(settings)}  # fmt: skip
    mp = mixed_precision_policy(settings)
    if mp is not None:
        kwargs["mp_policy"] = mp
    for layer in decoder_layers(model, settings.layer_cls):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def gathered_named_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) for every parameter, gathered one at a time (a collective each: every
    process must consume the whole iterator, in the same order). Plain tensors pass through."""
    for name, p in model.named_parameters():
        yield name, (p.full_tensor() if isinstance(p, DTensor) else p).detach()


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model state on rank 0 (CPU tensors); other ranks get an empty dict. Collective.

    A tied weight appears once, under its first name (``named_parameters`` order), as an unsharded
    model's ``save_pretrained`` writes it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    return {k: v for k, v in state.items() if k in names}


def _states(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}


def save_sharded(path: Path, model: torch.nn.Module, optimizer) -> None:
    """Each rank writes its shards of the model and optimiser under ``path`` (collective)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_states(model, optimizer), checkpoint_id=str(path))


def load_sharded(path: Path, model: torch.nn.Module, optimizer) -> None:
    """Load what ``save_sharded`` wrote into the (already sharded) model and a fresh optimiser."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    assert path.is_dir(), f"{path}: no sharded model/optimiser state in this checkpoint"
    states = _states(model, optimizer)  # the layout to load into: this run's shards
    dcp.load(states, checkpoint_id=str(path))
    set_model_state_dict(model, states["model"])
    set_optimizer_state_dict(model, optimizer, states["optimizer"])


def rollout_copy(model: torch.nn.Module, dtype: torch.dtype | None) -> torch.nn.Module:
    """An unsharded copy of ``model`` for decoding (call before ``shard_model``), in ``dtype``."""
    dup = copy.deepcopy(model)
    if dtype is not None:
        dup.to(dtype)
    return dup.eval().requires_grad_(False)


def prepare_fsdp(model: torch.nn.Module, dist, stages: Sequence, settings: FSDPSettings | None = None):
    """Shard ``model`` for the runner; returns ``(sharded model, rollout copy or None)``.

    ``stages``: the recipe stages still to run; a GRPO stage among them needs the rollout copy, taken
    before sharding (one full copy per process, in the compute dtype), and may not use KL."""
    from parallel_r1.train.config import RecipeError

    settings = settings or FSDPSettings.from_env()
    assert settings.enabled, "prepare_fsdp without FSDP in the accelerate config"
    grpo = [s for s in stages if s.type == "grpo"]
    if any(s.grpo.kl_coef > 0 for s in grpo):
        raise RecipeError("grpo.kl_coef > 0 is not supported under FSDP (the frozen reference would be a "
                          "third copy of the model); use a DDP config or kl_coef: 0")  # fmt: skip
    copy_ = rollout_copy(model, settings.compute_dtype).to(dist.device) if grpo else None
    model = shard_model(model, settings, dist.device)
    dist.sharded = True
    return model, copy_


class CopyBackend:
    """A rollout backend over a private unsharded copy of a sharded policy (module docstring, point 4).

    ``inner`` decodes over ``model`` (the copy) and reads its tensors (the branching ``Engine``);
    ``update_weights`` overwrites the copy in place, parameter by parameter, gathering any DTensor it
    is given, so a caller may pass ``policy.named_parameters()`` of the sharded policy as it is.
    ``last_handover`` holds the seconds and peak bytes in flight of the latest hand-over.
    """

    shares_policy = False
    supports_logits_processors = False  # generate passes no hook through to ``inner``

    def __init__(self, model: torch.nn.Module, inner) -> None:
        self.model, self.inner = model, inner
        self._params = dict(model.named_parameters())
        self.last_handover: dict = {}
        self.handovers = 0  # completed update_weights calls

    @property
    def info(self):
        return self.inner.info

    def generate(self, prompts, num_samples, config):
        return self.inner.generate(prompts, num_samples, config)

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        start, seen, peak = time.perf_counter(), set(), 0
        for name, t in named_tensors:
            full = t.full_tensor() if isinstance(t, DTensor) else t
            target = self._params.get(name)
            assert target is not None, f"update_weights: {name} is not a parameter of the rollout copy"
            assert full.shape == target.shape, f"update_weights: {name} has shape {tuple(full.shape)}, " \
                                               f"the rollout copy {tuple(target.shape)}"  # fmt: skip
            target.copy_(full)
            peak = max(peak, full.numel() * full.element_size())
            seen.add(name)
            del full
        missing = set(self._params) - seen
        assert not missing, f"update_weights: no tensor for {sorted(missing)[:3]} ({len(missing)} in all)"
        if self.inner is not None and not self.inner.shares_policy:  # e.g. vLLM: its own weights, from the copy
            self.inner.update_weights(self.model.named_parameters())
        self.handovers += 1
        self.last_handover = {"seconds": time.perf_counter() - start, "peak_gathered_bytes": peak,
                              "copy_bytes": sum(p.numel() * p.element_size() for p in self._params.values())}  # fmt: skip

    def close(self) -> None:
        self.inner.close()  # the copy itself belongs to the runner and serves the next GRPO stage
