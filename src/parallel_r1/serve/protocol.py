"""OpenAI wire format: validate request bodies into typed requests, build response and chunk bodies.

1. Validation is strict where silence would mislead: a parameter out of range, of the wrong type, or
   one this server cannot honour (``logprobs``, ``echo``, ``best_of`` > 1, ``suffix``, tools, a
   non-zero presence/frequency penalty, a ``response_format`` other than text, a ``tool_choice``
   other than "none") is a 400 ``invalid_request_error`` naming the parameter, and so is a parameter
   the API does not define (as OpenAI answers one). Fields that change nothing here (``user``,
   ``metadata``, ``store``, ``stream_options``, zero penalties) are accepted.
2. Extensions: ``top_k`` and ``num_paths`` (paths per block) in the request; ``choices[i].parallel``
   in the response with the blocks of the returned text (their paths' and summaries' text, whether
   closed), its format validity, the critical-path length (the tokens a parallel decoder must produce
   one after another), and ``dropped_paths``: the text of unclosed paths that a ``length`` cut inside
   a block left out of the text (module ``app``, point 4); ``choices[i].stop_reason`` names the stop
   string that cut the text (as vLLM does).
   ``usage.completion_tokens`` counts every token generated: all paths (dropped ones too), and the
   tags the engine inserted (``<Path>``, ``</Parallel><Summary>``).
3. Stop strings: the returned text ends before the first occurrence of any stop string, wherever it
   occurs (main chain, path, summary, or a tag); ``cut_at_stop`` does the cut.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field

MAX_STOP = 4
UNSUPPORTED = {
    "logprobs": "log-probabilities are not returned by this server",
    "top_logprobs": "log-probabilities are not returned by this server",
    "echo": "echo is not supported",
    "suffix": "suffix (insertion) is not supported",
    "tools": "tool calls are not supported",
    "functions": "function calls are not supported",
    "logit_bias": "logit_bias is not supported",
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "reasoning_effort": "reasoning_effort is not supported",
    "verbosity": "verbosity is not supported",
}
# accepted only with the value that asks for what the server does anyway
DEFAULT_ONLY = {
    "response_format": ({"type": "text"}, "only {\"type\": \"text\"} is supported (no JSON mode or schema)"),
    "tool_choice": ("none", "tool calls are not supported (only \"none\")"),
    "function_call": ("none", "function calls are not supported (only \"none\")"),
    "modalities": (["text"], "only [\"text\"] output is supported"),
}
# change nothing here: accepted and ignored
NO_EFFECT = ("user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier",
             "parallel_tool_calls")
SUPPORTED = ("model", "n", "temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "stop",
             "seed", "stream", "stream_options", "num_paths",
             "presence_penalty", "frequency_penalty", "best_of")  # the last three: only their no-op values
KNOWN = {"prompt", "messages", *UNSUPPORTED, *DEFAULT_ONLY, *NO_EFFECT, *SUPPORTED}


class APIError(Exception):
    """An error answered with an OpenAI-style body ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_n: int = 16
    max_prompts: int = 32
    max_rows: int = 256  # prompts x n
    max_tokens: int = 4096
    default_max_tokens: int = 512
    max_num_paths: int = 8


@dataclass
class GenRequest:
    """A validated completion or chat request; ``prompts`` are texts or (chat) message lists."""

    chat: bool
    model: str | None
    prompts: list
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage
    num_paths: int | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])


def _number(body: dict, key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise APIError(400, f"'{key}' must be a number, got {value!r}", key)
    if value < lo or value > hi or (lo_open and value == lo):
        bracket = "(" if lo_open else "["
        raise APIError(400, f"'{key}' must be in {bracket}{lo}, {hi}], got {value}", key)
    return float(value)


def _integer(body: dict, key: str, default: int | None, lo: int, hi: int) -> int | None:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise APIError(400, f"'{key}' must be an integer, got {value!r}", key)
    if not lo <= value <= hi:
        raise APIError(400, f"'{key}' must be in [{lo}, {hi}], got {value}", key)
    return value


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP:
        raise APIError(400, f"'stop' must be a non-empty string or a list of at most {MAX_STOP} of them", "stop")
    return tuple(stops)


def _check_unsupported(body: dict, chat: bool) -> None:
    other = "prompt" if chat else "messages"
    for key in body:
        if key not in KNOWN or key == other:
            raise APIError(400, f"Unrecognized request argument supplied: '{key}'", key)
    for key, (default, why) in DEFAULT_ONLY.items():
        if body.get(key) not in (None, default):
            raise APIError(400, f"'{key}': {why}", key)
    for key, why in UNSUPPORTED.items():
        if body.get(key) not in (None, False, 0, [], {}):
            raise APIError(400, f"'{key}': {why}", key)
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise APIError(400, f"'{key}' is not supported (only 0)", key)
    best_of = body.get("best_of")
    if best_of not in (None, 1) and best_of != body.get("n", 1):
        raise APIError(400, "'best_of' is not supported", "best_of")


def _completion_prompts(body: dict) -> list[str]:
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise APIError(400, "'prompt' must be a string or a non-empty list of strings", "prompt")
    return prompts


def _message_text(content, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise APIError(400, f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def _chat_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise APIError(400, f"messages[{i}] needs a role of system, developer, user or assistant", f"messages[{i}]")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": _message_text(m.get("content"), i)})
    return out


def parse_request(body: object, chat: bool, limits: Limits) -> GenRequest:
    """Validate a decoded JSON body (module docstring, point 1)."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    _check_unsupported(body, chat)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, "'model' must be a string", "model")
    prompts = [_chat_messages(body)] if chat else _completion_prompts(body)
    if len(prompts) > limits.max_prompts:
        raise APIError(400, f"at most {limits.max_prompts} prompts per request, got {len(prompts)}", "prompt")
    n = _integer(body, "n", 1, 1, limits.max_n)
    if n * len(prompts) > limits.max_rows:
        raise APIError(400, f"n x prompts = {n * len(prompts)} exceeds {limits.max_rows}", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise APIError(400, "'stream_options' must be an object with a boolean include_usage", "stream_options")
    max_tokens = _integer(body, "max_completion_tokens", None, 1, limits.max_tokens)
    max_tokens = _integer(body, "max_tokens", max_tokens or limits.default_max_tokens, 1, limits.max_tokens)
    return GenRequest(
        chat=chat, model=model, prompts=prompts, n=n,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0), top_p=_number(body, "top_p", 1.0, 0.0, 1.0, True),
        top_k=_integer(body, "top_k", 0, 0, 1 << 20), max_tokens=max_tokens, stop=_stop(body),
        seed=_integer(body, "seed", None, -(1 << 63), (1 << 63) - 1), stream=stream,
        include_usage=stream and bool(options.get("include_usage", False)),
        num_paths=_integer(body, "num_paths", None, 1, limits.max_num_paths),
    )


def finish_reason(engine_reason: str) -> str:
    return "length" if engine_reason == "length" else "stop"


def first_stop(text: str, stop: tuple[str, ...], start: int = 0) -> tuple[int, str] | None:
    """(offset, stop string) of the earliest stop string in ``text[start:]``, or None; on a tie the
    longer string (its text is cut either way)."""
    hits = [(p, -len(s), s) for s in stop if (p := text.find(s, start)) >= 0]
    if not hits:
        return None
    p, _, s = min(hits)
    return p, s


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, str | None]:
    """``text`` up to the first occurrence of any stop string, and that string (module docstring, point 3)."""
    hit = first_stop(text, stop)
    return (text, None) if hit is None else (text[: hit[0]], hit[1])


def choice_body(req: GenRequest, index: int, text: str, reason: str, parallel: dict,
                stop_reason: str | None = None) -> dict:
    if req.chat:
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": reason, "stop_reason": stop_reason, "parallel": parallel}
    return {"index": index, "text": text, "logprobs": None, "finish_reason": reason, "stop_reason": stop_reason,
            "parallel": parallel}


def response_body(req: GenRequest, model: str, choices: list[dict], usage: dict) -> dict:
    kind = "chat.completion" if req.chat else "text_completion"
    prefix = "chatcmpl-" if req.chat else "cmpl-"
    return {"id": prefix + req.id, "object": kind, "created": req.created, "model": model,
            "choices": choices, "usage": usage}


def usage_chunk(req: GenRequest, model: str, usage: dict) -> dict:
    kind = "chat.completion.chunk" if req.chat else "text_completion"
    prefix = "chatcmpl-" if req.chat else "cmpl-"
    return {"id": prefix + req.id, "object": kind, "created": req.created, "model": model, "choices": [],
            "usage": usage}


def chunk_body(req: GenRequest, model: str, index: int, text: str | None, reason: str | None,
               parallel: dict | None = None, role: bool = False, stop_reason: str | None = None) -> dict:
    """One streamed chunk; the last chunk of a choice carries ``finish_reason``, ``stop_reason`` and
    ``parallel``."""
    if req.chat:
        delta = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
    else:
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}
    if parallel is not None:
        choice["stop_reason"], choice["parallel"] = stop_reason, parallel
    kind = "chat.completion.chunk" if req.chat else "text_completion"
    prefix = "chatcmpl-" if req.chat else "cmpl-"
    return {"id": prefix + req.id, "object": kind, "created": req.created, "model": model, "choices": [choice]}
