"""A training recipe: typed dataclasses filled from YAML and validated before any compute.

A recipe names a model, an attention mode (Seen / Unseen) and a list of stages run in order
(e.g. sft -> grpo-easy -> grpo-hard); each stage has its data, prompt template, optimiser, step
count, and for GRPO its reward, generation settings and clip / KL settings (docs/paper.md sections 3-5).

Every mistake is a ``RecipeError`` whose message starts with the path of the bad entry, e.g.
``stages[1].reward.name: unknown reward 'acc'; valid: accuracy, parallel, ...``. Unknown keys are
errors (a typo must not silently fall back to a default). Checks that only need the recipe run
here; checks against files and data (a missing file, an empty dataset) run when the runner loads
the data, still before a model is built.

Things are referred to by name where code is needed: ``"module:attribute"`` strings for a data
factory, a tokenizer factory or a prompt-template constant, so recipes reach the data layer
without this layer importing it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import yaml

from parallel_r1 import recipes as bundled
from parallel_r1.files import read_text

if TYPE_CHECKING:  # imported when a recipe is built (_layer_types), so the CLI starts without torch
    from parallel_r1.engine.backend import RolloutConfig
    from parallel_r1.engine.sampling import SamplingConfig
    from parallel_r1.train.grpo import GRPOConfig


@functools.cache
def _layer_types() -> dict[str, type]:
    """The recipe sections whose dataclasses live with the code that uses them (engine, GRPO update)."""
    from parallel_r1.engine.backend import RolloutConfig
    from parallel_r1.engine.sampling import SamplingConfig
    from parallel_r1.train.grpo import GRPOConfig

    return {"RolloutConfig": RolloutConfig, "SamplingConfig": SamplingConfig, "GRPOConfig": GRPOConfig}


def _default(name: str):
    """A dataclass field defaulting to a fresh ``name`` from ``_layer_types``."""
    return field(default_factory=lambda: _layer_types()[name]())


class RecipeError(ValueError):
    """A recipe that cannot run; the message starts with the path of the bad entry."""


@dataclass
class ModelConfig:
    # Hub name or local directory of an HF causal LM (a checkpoint of ours is one too).
    name_or_path: str | None = None
    # "pretrained": load the weights; "scratch": build fresh weights from the architecture, read from
    # ``name_or_path``'s config and/or ``config`` (an HF config dict with ``model_type``).
    init: Literal["pretrained", "scratch"] = "pretrained"
    config: dict = field(default_factory=dict)
    tokenizer: str | None = None  # hub name or path; default: name_or_path
    tokenizer_factory: str | None = None  # "module:function" that returns a tokenizer
    tokenizer_kwargs: dict = field(default_factory=dict)
    gguf_file: str | None = None  # a .gguf file inside name_or_path (transformers loads it offline)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    path: str | None = None  # a .jsonl file, or .json holding a list of objects
    factory: str | None = None  # "module:function" returning rows (Problem-like objects or dicts)
    kwargs: dict = field(default_factory=dict)  # values may be nested {factory:, kwargs:} specs
    question_field: str = "question"
    answer_field: str = "answer"
    response_field: str = "response"  # SFT target
    prompt_field: str | None = None  # a ready prompt text (the template is then not applied)
    id_field: str = "id"
    limit: int | None = None  # keep the first N rows


@dataclass
class PromptConfig:
    template: str | None = None  # text with a {problem} placeholder
    template_file: str | None = None
    template_ref: str | None = None  # "module:NAME" of a template string
    chat_template: bool | None = None  # None: use the tokenizer's chat template when it has one


@dataclass
class OptimizerConfig:
    lr: float
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0


@dataclass
class RewardConfig:
    name: str
    params: dict = field(default_factory=dict)
    scorer: str = "default"  # "reference": the reference code's answer/format check and tiered rule


@dataclass
class SFTStage:
    name: str
    type: Literal["sft"]
    data: DataConfig
    optimizer: OptimizerConfig
    prompt: PromptConfig = field(default_factory=PromptConfig)
    steps: int | None = None  # give steps or epochs
    epochs: float | None = None
    batch_size: int = 128  # rows per optimiser step, all processes together
    micro_batch_size: int = 4  # rows per forward
    max_length: int = 4096  # prompt + response tokens; longer rows are skipped and counted
    seed: int | None = None  # data order; default: the recipe seed


@dataclass
class GRPOStage:
    name: str
    type: Literal["grpo"]
    data: DataConfig
    optimizer: OptimizerConfig
    reward: RewardConfig
    steps: int
    prompt: PromptConfig = field(default_factory=PromptConfig)
    batch_size: int = 256  # prompts per step, all processes together
    num_samples: int = 8  # rollouts per prompt (the group)
    max_prompt_tokens: int = 2000  # longer prompts are skipped and counted
    micro_batch_size: int = 4
    # the sampling settings; ``mode`` comes from the recipe and ``seed`` from each step, never from here
    generation: SamplingConfig = _default("SamplingConfig")
    grpo: GRPOConfig = _default("GRPOConfig")  # the update's settings (train/grpo.py)
    seed: int | None = None


Stage = Union[SFTStage, GRPOStage]  # noqa: UP007 - dispatched on the "type" key below


@dataclass
class CheckpointConfig:
    every: int = 0  # save every N global steps (0: only at the end of each stage)
    keep_last: int = 2  # older step checkpoints are deleted (stage-end ones are kept)


@dataclass
class LoggingConfig:
    progress: bool | None = None  # Rich progress bar; None: when stderr is a terminal
    tensorboard: bool | None = None  # None: when tensorboard is installed
    wandb_project: str | None = None  # W&B only when named here (and installed)
    log_rollouts: int = 2  # rollouts per step written to rollouts.jsonl (0: none)


@dataclass
class Recipe:
    model: ModelConfig
    stages: list[Stage]
    name: str = "run"
    mode: Literal["seen", "unseen"] = "unseen"
    seed: int = 0
    # torch CPU threads for this run (None: torch's default). Tiny models gain nothing from more than
    # one, and on a busy machine a spinning OpenMP team can make them many times slower.
    threads: int | None = None
    # Under several processes: "ddp" (each process a share of the batch, gradients all-reduced: the
    # update equals the one-process one up to the order of float sums) or "ordered" (every process
    # holds the whole batch, computes whole micro-batches and sums their gradients in one-process
    # order: every stage ends at the one-process parameters bit for bit, for an all-gather of
    # micro-batches x parameters floats a step; small models only; train/ordered.py).
    data_parallel: Literal["ddp", "ordered"] = "ddp"
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    rollout: RolloutConfig = _default("RolloutConfig")  # the GRPO stages' rollout backend


# --- loading -----------------------------------------------------------------------------------------


def load_recipe(path: str | Path, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Read a YAML recipe (a file, or a bundled recipe's name: ``parallel-r1 recipes``), apply
    ``key.path=value`` overrides (YAML values), validate it."""
    path = bundled.resolve(path)
    if not path.exists():
        raise RecipeError(f"recipe file not found: {path} (nor a bundled recipe: {', '.join(bundled.names())})")
    raw = read_yaml(path)
    for item in overrides:
        apply_override(raw, item)
    return recipe_from_dict(raw)


def read_yaml(path: Path, what: str = "recipe") -> dict:
    """A recipe file as a mapping; a file that is unreadable, not UTF-8, not YAML or not a mapping is
    a ``RecipeError`` naming the file and, where there is one, the line."""
    text = read_text(path, what, RecipeError)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
        raise RecipeError(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(raw, dict):
        found = "nothing (the file is empty)" if raw is None else f"a {type(raw).__name__}"
        raise RecipeError(f"{path}: a {what} is a YAML mapping of settings, found {found}")
    return raw


def recipe_from_dict(raw: Any) -> Recipe:
    recipe = _fill(Recipe, raw, "")
    for stage in recipe.stages:  # the recipe's mode is every stage's sampling mode
        if stage.type == "grpo":
            stage.generation = dataclasses.replace(stage.generation, mode=recipe.mode)
    validate(recipe)
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict:
    """Plain-data form of a recipe (logged whole with each run)."""
    return dataclasses.asdict(recipe)


def apply_override(raw: dict, item: str) -> None:
    """Set ``a.b[1].c=value`` in the raw dict; the value is parsed as YAML (``3``, ``1e-6``, ``[1, 2]``)."""
    if "=" not in item:
        raise RecipeError(f"override {item!r}: expected key.path=value")
    key, value = item.split("=", 1)
    parts = [p for chunk in key.strip().split(".") for p in _split_index(chunk, item)]
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            where = _join(parts[: i + 1])
            raise RecipeError(f"override {item!r}: {where} does not exist in the recipe") from None
    last = parts[-1]
    if isinstance(node, list) and not (isinstance(last, int) and 0 <= last < len(node)):
        raise RecipeError(f"override {item!r}: {_join(parts)} is out of range")
    if not isinstance(node, list | dict):
        raise RecipeError(f"override {item!r}: {_join(parts[:-1])} is not a mapping or list")
    node[last] = yaml.safe_load(value)


def _split_index(chunk: str, item: str) -> list[str | int]:
    name, *rest = chunk.split("[")
    out: list[str | int] = [name] if name else []
    for r in rest:
        if not r.endswith("]") or not r[:-1].isdigit():
            raise RecipeError(f"override {item!r}: bad index in {chunk!r}")
        out.append(int(r[:-1]))
    return out


def _join(parts: list) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(parts))


# --- typed filling -------------------------------------------------------------------------------------


def _fill(cls: type, raw: Any, path: str):
    """Build dataclass ``cls`` from a mapping, checking keys and value types (errors name ``path``)."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{path or 'recipe'}: expected a mapping, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls, localns=_layer_types())
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise RecipeError(f"{_sub(path, key)}: unknown key; valid: {', '.join(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            kwargs[f.name] = _coerce(hints[f.name], raw[f.name], _sub(path, f.name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{_sub(path, f.name)}: required")
    return cls(**kwargs)


def _sub(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return _coerce_union(args, value, path)
    if origin is Literal:
        if value not in args:
            raise RecipeError(f"{path}: bad value {value!r}; valid: {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{path}: expected a list, got {type(value).__name__}")
        return [_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise RecipeError(f"{path}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is _layer_types()["SamplingConfig"]:
        return _generation(value, path)
    if dataclasses.is_dataclass(tp):
        return _fill(tp, value, path)
    return _scalar(tp, value, path)


def _generation(raw: Any, path: str) -> SamplingConfig:
    """A stage's ``generation`` mapping as a ``SamplingConfig``: keys and types checked here, ranges by
    ``SamplingConfig`` itself; ``mode`` and ``seed`` are not recipe settings of a stage."""
    SamplingConfig = _layer_types()["SamplingConfig"]  # noqa: N806 - the class, imported on demand
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(SamplingConfig)
    valid = [f.name for f in dataclasses.fields(SamplingConfig) if f.name not in ("mode", "seed")]
    kwargs = {}
    for key, value in raw.items():
        if key not in valid:
            hint = " (set by the recipe's mode / seed)" if key in ("mode", "seed") else ""
            raise RecipeError(f"{path}.{key}: unknown generation setting{hint}; valid: {', '.join(valid)}")
        # stop: one string or a list of them (SamplingConfig normalises both to a tuple)
        tp = list[str] | str | None if key == "stop" else hints[key]
        kwargs[key] = _coerce(tp, value, f"{path}.{key}")
    try:
        return SamplingConfig(**kwargs)
    except ValueError as e:
        raise RecipeError(f"{path}: {e}") from None


def _coerce_union(args: tuple, value: Any, path: str) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise RecipeError(f"{path}: must not be empty")
    options = [a for a in args if a is not type(None)]
    stages = [a for a in options if dataclasses.is_dataclass(a) and "type" in a.__dataclass_fields__]
    if stages:  # a tagged union: pick the dataclass by its "type" key
        kinds = {typing.get_args(typing.get_type_hints(a, localns=_layer_types())["type"])[0]: a for a in stages}
        kind = value.get("type") if isinstance(value, dict) else None
        if kind not in kinds:
            raise RecipeError(f"{path}.type: bad value {kind!r}; valid: {', '.join(kinds)}")
        return _fill(kinds[kind], value, path)
    errors = []
    for option in options:
        try:
            return _coerce(option, value, path)
        except RecipeError as e:
            errors.append(str(e))
    raise RecipeError(errors[-1])


def _scalar(tp: Any, value: Any, path: str) -> Any:
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:
        if isinstance(value, dict):
            return value
    else:
        raise TypeError(f"recipe field type {tp!r} is not supported")  # a bug in this module
    name = getattr(tp, "__name__", str(tp))
    raise RecipeError(f"{path}: expected {name}, got {type(value).__name__} {value!r}")


# --- semantic checks -----------------------------------------------------------------------------------


def validate(recipe: Recipe) -> None:
    """Checks between fields and against the registries (rewards, engine settings)."""
    _validate_model(recipe.model)
    if not recipe.stages:
        raise RecipeError("stages: at least one stage is required")
    names = [s.name for s in recipe.stages]
    for i, stage in enumerate(recipe.stages):
        path = f"stages[{i}]"
        if stage.name in names[:i]:
            raise RecipeError(f"{path}.name: duplicate stage name {stage.name!r}")
        _validate_data(stage.data, f"{path}.data", needs_response=stage.type == "sft")
        _validate_prompt(stage.prompt, f"{path}.prompt")
        _validate_optimizer(stage.optimizer, f"{path}.optimizer")
        _positive(stage, ("batch_size", "micro_batch_size"), path)
        if stage.type == "sft":
            _validate_sft(stage, path)
        else:
            _validate_grpo(stage, path)
    _positive(recipe.checkpoint, ("keep_last",), "checkpoint")
    _positive(recipe, ("threads",), "")
    try:
        recipe.rollout.validate()
    except ValueError as e:  # its message starts with the entry, e.g. "rollout.hf.max_batch_size must be >= 1"
        raise RecipeError(str(e)) from None
    if recipe.checkpoint.every < 0:
        raise RecipeError(f"checkpoint.every: must be >= 0, got {recipe.checkpoint.every}")


def _positive(obj: Any, names: tuple[str, ...], path: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise RecipeError(f"{_sub(path, name)}: must be > 0, got {value}")


def _validate_model(m: ModelConfig) -> None:
    if m.init == "pretrained" and not m.name_or_path:
        raise RecipeError("model.name_or_path: required to load a pretrained model")
    if m.init == "scratch" and not (m.name_or_path or m.config.get("model_type")):
        raise RecipeError("model.config.model_type: required to build a model from scratch")
    if not (m.tokenizer or m.tokenizer_factory or m.name_or_path):
        raise RecipeError("model.tokenizer: required when there is no name_or_path")
    if m.tokenizer and m.tokenizer_factory:
        raise RecipeError("model.tokenizer_factory: give tokenizer or tokenizer_factory, not both")
    if m.tokenizer_factory:
        resolve_ref(m.tokenizer_factory, "model.tokenizer_factory")


def _validate_data(d: DataConfig, path: str, needs_response: bool) -> None:
    if (d.path is None) == (d.factory is None):
        raise RecipeError(f"{path}: give exactly one of path or factory")
    if d.factory:
        resolve_ref(d.factory, f"{path}.factory")
    if d.kwargs and not d.factory:
        raise RecipeError(f"{path}.kwargs: only used with factory")
    if d.limit is not None and d.limit <= 0:
        raise RecipeError(f"{path}.limit: must be > 0, got {d.limit}")


def _validate_prompt(p: PromptConfig, path: str) -> None:
    given = [k for k in ("template", "template_file", "template_ref") if getattr(p, k) is not None]
    if len(given) > 1:
        raise RecipeError(f"{path}: give one of template, template_file, template_ref (got {given})")
    if p.template is not None and "{problem}" not in p.template:
        raise RecipeError(f"{path}.template: has no {{problem}} placeholder")
    if p.template_ref is not None:
        value = resolve_ref(p.template_ref, f"{path}.template_ref")
        if not isinstance(value, str) or "{problem}" not in value:
            raise RecipeError(f"{path}.template_ref: {p.template_ref} is not a template with {{problem}}")


def _validate_optimizer(o: OptimizerConfig, path: str) -> None:
    if not o.lr > 0:
        raise RecipeError(f"{path}.lr: must be > 0, got {o.lr}")
    if o.weight_decay < 0:
        raise RecipeError(f"{path}.weight_decay: must be >= 0, got {o.weight_decay}")
    if not all(0 <= b < 1 for b in o.betas):
        raise RecipeError(f"{path}.betas: each must be in [0, 1), got {list(o.betas)}")
    if not 0 <= o.warmup_ratio < 1:
        raise RecipeError(f"{path}.warmup_ratio: must be in [0, 1), got {o.warmup_ratio}")
    if o.max_grad_norm is not None and o.max_grad_norm <= 0:
        raise RecipeError(f"{path}.max_grad_norm: must be > 0 or null, got {o.max_grad_norm}")


def _validate_sft(s: SFTStage, path: str) -> None:
    if (s.steps is None) == (s.epochs is None):
        raise RecipeError(f"{path}: give exactly one of steps or epochs")
    _positive(s, ("steps", "epochs", "max_length"), path)


def _validate_grpo(s: GRPOStage, path: str) -> None:
    _positive(s, ("steps", "num_samples", "max_prompt_tokens"), path)
    if s.num_samples < 2:
        raise RecipeError(f"{path}.num_samples: GRPO needs >= 2 samples per prompt, got {s.num_samples}")
    _validate_reward(s.reward, f"{path}.reward")
    g = s.grpo
    if bad := g.problems():  # GRPOConfig's own checks, reported at the entry
        name, message = bad[0]
        raise RecipeError(f"{path}.grpo.{name}: {message}")
    if g.minibatch_groups is not None and s.batch_size % g.minibatch_groups:
        raise RecipeError(f"{path}.grpo.minibatch_groups: {g.minibatch_groups} does not divide batch_size {s.batch_size}")


def _validate_reward(r: RewardConfig, path: str) -> None:
    from parallel_r1.rewards import REWARDS, get_reward, get_scorer

    if r.name not in REWARDS:
        raise RecipeError(f"{path}.name: unknown reward {r.name!r}; valid: {', '.join(REWARDS)}")
    try:
        reward = get_reward(r.name, **r.params)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{path}.params: {e}") from None
    try:
        get_scorer(r.scorer).check(reward)
    except ValueError as e:
        raise RecipeError(f"{path}.scorer: {e}") from None


def resolve_ref(ref: str, path: str) -> Any:
    """Import ``"package.module:attribute"``; errors name the recipe entry."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise RecipeError(f"{path}: expected 'package.module:attribute', got {ref!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RecipeError(f"{path}: cannot import {module_name!r}: {e}") from None
    if not hasattr(module, attr):
        raise RecipeError(f"{path}: module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)
