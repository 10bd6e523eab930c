"""Load the tokenizer and model a recipe names, with the six tags added, by hub name or local path.

One code path for every model: a hub name or a directory (our own checkpoints are plain HF
directories), optionally a GGUF file inside it, or fresh weights built from an architecture
(``init: scratch``: the config of ``name_or_path`` and/or an inline config dict). The toy world uses
the same path: its tokenizer comes from a named factory, its model is built from a config.

Every model directory a run saves also holds ``parallel_r1.json`` (``MODEL_RECORD``): the prompt
template, chat setting and mode it was trained with, so ``eval`` and ``serve`` prompt it the same way
by default (``write_model_record`` / ``read_model_record``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from parallel_r1.structure import add_tags
from parallel_r1.train.config import ModelConfig, RecipeError, resolve_ref

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODEL_RECORD = "parallel_r1.json"  # next to config.json in every model directory a run saves


def local_path_problem(name: str) -> str | None:
    """Why ``name`` cannot be loaded, when it can only be a local path and is not a directory; else None.

    Without this check transformers takes a mistyped path for a hub id and reports a repo-id
    validation error. A hub id is ``name`` or ``owner/name``; anything starting with ``/ . ~`` or
    holding more than one ``/`` can only be a path.
    """
    path = Path(name).expanduser()
    looks_local = name.startswith(("/", ".", "~")) or name.count("/") > 1
    if looks_local and not path.is_dir():
        return "is a file, not a model directory" if path.exists() else "does not exist"
    return None


def _check_source(entry: str, name: str | None) -> None:
    problem = local_path_problem(name) if name else None
    if problem:
        raise RecipeError(f"{entry}: {name} {problem} (expected a hub name or a directory saved by save_pretrained)")


def load_tokenizer(cfg: ModelConfig, from_dir: str | None = None):
    """The recipe's tokenizer, or the one saved in ``from_dir`` (a checkpoint) when given."""
    if from_dir is not None:
        tok = AutoTokenizer.from_pretrained(from_dir)
    elif cfg.tokenizer_factory:
        tok = resolve_ref(cfg.tokenizer_factory, "model.tokenizer_factory")(**cfg.tokenizer_kwargs)
    else:
        source = cfg.tokenizer or cfg.name_or_path
        _check_source("model.tokenizer" if cfg.tokenizer else "model.name_or_path", source)
        gguf = {"gguf_file": cfg.gguf_file} if cfg.gguf_file and not cfg.tokenizer else {}
        tok = AutoTokenizer.from_pretrained(source, **gguf)
    if tok.pad_token_id is None:
        # Padding is masked out everywhere; any id will do, EOS is the usual choice.
        assert tok.eos_token_id is not None, "the tokenizer has neither a pad nor an EOS token"
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: ModelConfig, tokenizer, seed: int, from_dir: str | None = None):
    """The recipe's model (or a checkpoint's), the tags added to ``tokenizer`` and the embeddings.

    Returns ``(model, tag_ids)``. Fresh weights (``init: scratch``) are drawn under ``seed`` without
    touching the global RNG.
    """
    dtype = DTYPES[cfg.dtype]
    common = {"dtype": dtype, "attn_implementation": cfg.attn_implementation}
    if from_dir is not None:
        model = AutoModelForCausalLM.from_pretrained(from_dir, **common)
    else:
        _check_source("model.name_or_path", cfg.name_or_path)
        if cfg.init == "pretrained" and cfg.gguf_file:
            model = _from_gguf(cfg, common)
        elif cfg.init == "pretrained":
            model = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, **common)
        else:
            model = _from_scratch(cfg, tokenizer, seed, common)
    tag_ids = add_tags(tokenizer, model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model, tag_ids


def _from_gguf(cfg: ModelConfig, common: dict):
    """A GGUF file, unpacked into plain dense weights (training needs them; so does saving).

    transformers keeps its GGUF quantizer on the model even when every weight was dequantized, and
    then refuses ``save_pretrained``; with nothing left quantized the quantizer is dropped.
    """
    from transformers import GgufConfig

    model = AutoModelForCausalLM.from_pretrained(
        cfg.name_or_path, gguf_file=cfg.gguf_file, quantization_config=GgufConfig(dequantize=True), **common
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        assert quantizer.quantization_config.dequantize, f"{cfg.gguf_file}: weights were left in GGUF blocks"
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def _from_scratch(cfg: ModelConfig, tokenizer, seed: int, common: dict):
    values = AutoConfig.from_pretrained(cfg.name_or_path).to_dict() if cfg.name_or_path else {}
    values.update(cfg.config)
    if "num_hidden_layers" in cfg.config:
        values.pop("layer_types", None)  # derived from the layer count; rebuilt by the config class
    values.setdefault("vocab_size", len(tokenizer))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        values.setdefault(name, getattr(tokenizer, name))
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, **common)


# --- how a saved model was trained ----------------------------------------------------------------------


def model_record(prompt_template: str | None, chat: bool, mode: str, stage: str) -> dict:
    """The settings a saved model was trained with, as ``MODEL_RECORD`` holds them.

    ``prompt_template`` is the template text (None when the stage's rows carried ready-made prompts,
    so no single template describes them); ``stage`` names the stage that produced the weights.
    """
    assert prompt_template is None or "{problem}" in prompt_template, "a prompt template needs {problem}"
    return {"prompt_template": prompt_template, "chat_template": bool(chat), "mode": mode, "stage": stage}


def write_model_record(model_dir: Path, record: dict) -> None:
    (Path(model_dir) / MODEL_RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def read_model_record(model_dir: str | Path) -> dict | None:
    """``MODEL_RECORD`` of a local model directory; None when there is none (a hub name, a foreign
    model). A malformed record is an error naming the file, not a silent fallback."""
    path = Path(model_dir).expanduser() / MODEL_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    prompt = record.get("prompt_template") if isinstance(record, dict) else None
    ok = (isinstance(record, dict) and isinstance(record.get("chat_template"), bool)
          and isinstance(record.get("mode"), str) and (prompt is None or (isinstance(prompt, str) and "{problem}" in prompt)))
    if not ok:
        raise ValueError(f"{path}: expected prompt_template (text with {{problem}} or null), chat_template (bool) "
                         f"and mode (str); got {record!r}")
    return record
