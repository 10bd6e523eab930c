"""Load any Hugging Face causal LM (hub name or local path) with its tokenizer, ready for the engine,
and turn a prompt text into prompt ids the way training does.

1. The tokenizer must already hold the six tags as single tokens: a model that was never taught the
   format cannot be evaluated in it, and adding fresh random tag rows here would silently evaluate a
   different model. The error says how to add them.
2. Attention is loaded as ``sdpa`` (the engine needs custom 4D masks). ``dtype="auto"`` is bfloat16 on
   a GPU and float32 on a CPU.
3. ``encode_prompt``: with the tokenizer's chat template (when it has one, or when ``chat=True``) the
   prompt becomes one user message plus the generation prompt; otherwise the plain text is encoded
   with the tokenizer's own special tokens (a BOS where the tokenizer adds one).
4. ``choose_settings``: the prompt template, chat setting and mode come from the flags when given,
   else from the record a training run saves in the model directory (``parallel_r1.json``), else
   from the defaults; ``PromptSettings.sources`` says which, and eval writes it into its result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

DTYPES = ("float32", "bfloat16", "float16")  # torch is imported lazily: the CLI starts without it
# Literal types make typer offer (and check) the choices before any model is loaded
DType = Literal["auto", "float32", "bfloat16", "float16"]
Mode = Literal["unseen", "seen", "sequential"]
MODES = get_args(Mode)  # = engine.sampling.MODES, kept here so --help needs no torch
Compat = Literal["ours", "reference"]  # = engine.sampling.Compat, kept here so --help needs no torch
Backend = Literal["hf", "vllm"]  # = engine.backend.BackendName, kept here so --help needs no torch


def backend_problem(backend: str) -> str | None:
    """The one line to show when rollout backend ``backend`` cannot run here (its package is not
    installed), else None; the commands check it before loading anything."""
    from parallel_r1.engine.backend import BackendUnavailable, RolloutConfig, check_backend_available

    try:
        check_backend_available(RolloutConfig(backend=backend))
    except BackendUnavailable as e:
        return str(e)
    return None


class ModelLoadError(ValueError):
    """The model or tokenizer cannot be used; the message names it and the fix."""


@dataclass
class LoadedModel:
    name: str
    model: object
    tokenizer: object
    tag_ids: dict[str, int]


def resolve_device(device: str | None):
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}: expected auto or one of {DTYPES}")
    return getattr(torch, dtype)


def check_local(name: str) -> None:
    """Fail with a plain message when ``name`` can only be a local path and is not a directory
    (``train.model_io.local_path_problem``)."""
    from parallel_r1.train.model_io import local_path_problem

    problem = local_path_problem(name)
    if problem:
        raise ModelLoadError(f"model path {name} {problem} (expected a directory saved by save_pretrained)")


def load_tokenizer(name: str):
    """The tokenizer of ``name`` with its tag ids checked (module docstring, point 1)."""
    from transformers import AutoTokenizer

    from parallel_r1.structure import tag_ids

    check_local(name)
    tokenizer = AutoTokenizer.from_pretrained(name)
    try:
        ids = tag_ids(tokenizer)
    except ValueError as exc:
        raise ModelLoadError(
            f"the tokenizer of {name} lacks the parallel-thinking tags ({exc}). Add them once with "
            "parallel_r1.structure.add_tags(tokenizer, model), then tokenizer.save_pretrained(...) and "
            "model.save_pretrained(...) (a cold-start SFT run saves checkpoints that have them)."
        ) from exc
    return tokenizer, ids


def load_model(name: str, device: str | None = None, dtype: str = "auto") -> LoadedModel:
    """Tokenizer (with tags) and model in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM

    tokenizer, ids = load_tokenizer(name)
    dev = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=resolve_dtype(dtype, dev), attn_implementation="sdpa")
    rows = model.get_input_embeddings().weight.shape[0]
    if max(ids.values()) >= rows:
        raise ModelLoadError(
            f"{name}: tag ids {ids} do not fit the model's {rows} embedding rows; the tokenizer was given "
            "the tags but the model was not resized (use parallel_r1.structure.add_tags(tokenizer, model))"
        )
    model.to(dev).eval()
    return LoadedModel(name, model, tokenizer, ids)


def uses_chat(tokenizer, chat: bool | None) -> bool:
    """Whether prompts go through the chat template (None: when the tokenizer has one)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat and not has_template:
        raise ModelLoadError("chat formatting was asked for but the tokenizer has no chat template")
    return has_template if chat is None else chat


def encode_prompt(tokenizer, text: str, chat: bool) -> list[int]:
    """Prompt ids for ``text`` (module docstring, point 3): the training code's own encoder, so a
    model is evaluated on exactly the prompt ids it was trained on."""
    from parallel_r1.train.data import encode_prompt as train_encode_prompt

    return train_encode_prompt(tokenizer, text, chat)


@dataclass
class PromptSettings:
    """The prompt template, chat setting and mode of a run, and where each came from."""

    prompt: str | None  # label for records: a template name, a file path, or "recorded"
    template: str | None  # None: prompts go to the model as they are (serve without a template)
    chat: bool | None  # None: the tokenizer decides (its chat template when it has one)
    mode: str
    sources: dict[str, str]  # prompt / chat / mode -> "flag", "model record", "default", "tokenizer"

    def describe(self) -> str:
        chat = {True: "on", False: "off", None: "when the tokenizer has a template"}[self.chat]
        return (f"prompt: {self.prompt or 'none'} ({self.sources['prompt']}), chat: {chat} "
                f"({self.sources['chat']}), mode: {self.mode} ({self.sources['mode']})")


def choose_settings(model: str, prompt: str | None, chat: bool | None, mode: str | None,
                    default_prompt: str | None = "parallel") -> PromptSettings:
    """Flags (not None) win, then the model directory's record, then the defaults (point 4)."""
    from parallel_r1.data.prompts import TEMPLATES, load_template
    from parallel_r1.train.model_io import MODEL_RECORD, read_model_record

    record = read_model_record(model) if _is_dir(model) else None
    recorded = record or {}
    where = f"model record {MODEL_RECORD}"
    sources = {"prompt": "flag", "chat": "flag", "mode": "flag"}
    if prompt is not None:
        template = load_template(prompt)
    elif recorded.get("prompt_template") is not None:
        template, sources["prompt"] = recorded["prompt_template"], where
        prompt = next((name for name, text in TEMPLATES.items() if text == template), "recorded")
    else:
        prompt, sources["prompt"] = default_prompt, "default"
        template = load_template(prompt) if prompt is not None else None
    if chat is None:
        chat, sources["chat"] = recorded.get("chat_template"), where if record else "tokenizer"
    if mode is None:
        mode, sources["mode"] = recorded.get("mode", MODES[0]), where if record else "default"
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return PromptSettings(prompt, template, chat, mode, sources)


def _is_dir(name: str) -> bool:
    from pathlib import Path

    return Path(name).expanduser().is_dir()
