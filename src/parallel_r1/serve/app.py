"""The server's logic without HTTP: requests become engine jobs, rollouts become OpenAI bodies.

1. Prompts: a completion prompt is encoded as plain text (with the tokenizer's own special tokens);
   chat messages go through the tokenizer's chat template (without one, contents are joined by
   newlines). With a prompt template (``ServeOptions.prompt_template``: by default the one the model
   was trained with, from its directory's ``parallel_r1.json``) the last user message is rendered
   into it first, as training rendered each problem. A prompt plus ``max_tokens`` must fit the
   model's context: else 400 ``context_length_exceeded``, before anything is queued.
2. The sampling config per request: the request's temperature, top-p, top-k, max tokens, stop and
   seed; the server's mode, compat, paths per block (a request may set ``num_paths``) and block limit. A path
   may use the whole ``max_tokens`` budget unless the server caps it.
3. Streaming text is decoded incrementally (``IncrementalText``): only text that can no longer change
   is sent (an incomplete UTF-8 sequence is held back), the last ``len(stop) - 1`` characters are
   held back while a stop string could still be forming, and nothing from the first stop string on
   is ever sent, so the streamed text is always a prefix of the blocking answer. Paths are decoded
   side by side and so appear in the stream when their block closes. The last chunk of each choice
   carries ``finish_reason``, ``stop_reason`` and the ``parallel`` structure.
4. What a choice returns, and what it counts:
   - Stop strings: the text is cut before the first occurrence of any stop string in the response
     as the engine serialises it (main chain, then each block's paths in order, its summary, and
     the tags), ``finish_reason`` "stop", ``stop_reason`` the string. A cut inside a block returns
     the block open: the paths before the one that holds the stop string, that path up to it, and
     no summary (``parallel.blocks[-1].closed`` false, ``format_valid`` false). The batcher ends such
     a row within a few steps (``batcher``, point 3); what it generated after the stop string is not
     returned but counted.
   - A ``length`` cut inside a block keeps the closed paths and the first unclosed one in the text
     (the engine's rule, so the text reads as it was generated); the other unclosed paths are
     returned in ``parallel.dropped_paths``, never silently lost.
   - ``usage.completion_tokens`` (and ``parallel.completion_tokens`` per choice) count every token
     generated: the text's, the dropped paths', and those after a stop string. So a ``length``
     answer counts exactly ``max_tokens``.
   - ``parallel.blocks`` and ``format_valid`` describe the returned text; ``critical_path_tokens``
     the generated response.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from dataclasses import dataclass, field

from parallel_r1.data.prompts import render
from parallel_r1.engine.sampling import SamplingConfig
from parallel_r1.format import parse
from parallel_r1.format.tags import PATH_CLOSE, PATH_OPEN
from parallel_r1.serve.batcher import Batcher, Job
from parallel_r1.serve.protocol import (
    APIError,
    GenRequest,
    Limits,
    choice_body,
    chunk_body,
    cut_at_stop,
    finish_reason,
    first_stop,
    parse_request,
    response_body,
    usage_chunk,
)

POLL_S = 1.0  # how often a waiting handler checks that the batcher is still alive


@dataclass
class ServeOptions:
    model_name: str
    limits: Limits = field(default_factory=Limits)
    mode: str = "unseen"
    compat: str = "ours"  # "reference": sample as the reference engine does (engine.rows, point 8)
    num_paths: int = 2
    max_blocks: int = 4
    max_path_tokens: int | None = None  # None: a path may use the whole max_tokens budget
    batch_window_s: float = 0.01
    max_batch_rows: int = 256
    chat_template: bool | None = None  # None: use the tokenizer's template when it has one
    prompt_template: str | None = None  # {problem} template for the last user message of a chat request
    seed: int | None = None  # seeds the batcher's generator of per-call seeds


class IncrementalText:
    """Stable text of a growing token sequence (module docstring, point 3)."""

    def __init__(self, tokenizer, stop: tuple[str, ...]):
        self.tokenizer, self.stop = tokenizer, stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.prefix_offset = self.read_offset = 0
        self.text = ""
        self.sent = 0
        self.cut: int | None = None  # offset of the first stop string, once seen

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def update(self, ids) -> str:
        """New sendable text after the response grew to ``ids``."""
        prefix = self._decode(ids[self.prefix_offset : self.read_offset])
        full = self._decode(ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            searched = len(self.text)
            self.text += full[len(prefix) :]
            if self.cut is None and (hit := first_stop(self.text, self.stop, max(0, searched - self.hold))):
                self.cut = hit[0]
            self.prefix_offset, self.read_offset = self.read_offset, len(ids)
        # an occurrence that is not complete yet starts at or after len(text) - hold, so the text
        # before that, and before the first complete one, is final
        safe = len(self.text) - self.hold if self.cut is None else min(self.cut, len(self.text) - self.hold)
        if safe <= self.sent:
            return ""
        delta, self.sent = self.text[self.sent : safe], safe
        return delta

    def rest(self, final: str) -> str:
        """What is left to send of ``final``; the sent text is always a prefix of it."""
        sent = self.text[: self.sent]
        assert final.startswith(sent), f"streamed {sent!r} is not a prefix of the final text {final!r}"
        return final[self.sent :]


def generated_tokens(rollout) -> int:
    """Tokens the engine generated for a rollout: its response and the paths a length cut dropped."""
    return len(rollout.response_ids) + sum(len(ids) for ids in rollout.dropped_paths)


def text_blocks(text: str) -> list[dict]:
    """The blocks of a returned text: paths, summary, closed; the open path of a block cut by a stop
    string or a length limit counts as a path running to the end of the text."""
    parsed = parse(text)
    blocks = [{"paths": [p.text for p in b.paths], "summary": None if b.summary is None else b.summary.text,
               "closed": b.closed} for b in parsed.blocks]
    if parsed.blocks and not parsed.blocks[-1].closed:
        opened = text.rfind(PATH_OPEN, parsed.blocks[-1].start)
        if opened >= 0 and text.find(PATH_CLOSE, opened) < 0:
            blocks[-1]["paths"].append(text[opened + len(PATH_OPEN) :])
    return blocks


class ServeApp:
    def __init__(self, engine, tokenizer, options: ServeOptions, logits_processors=()):
        self.engine, self.tokenizer, self.options = engine, tokenizer, options
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.chat_template = has_template if options.chat_template is None else options.chat_template
        config = getattr(engine.model, "config", None)
        self.context = getattr(config, "max_position_embeddings", None)
        self.batcher = Batcher(engine, options.batch_window_s, options.max_batch_rows, options.seed,
                               logits_processors)
        SamplingConfig(mode=options.mode, num_paths=options.num_paths, max_blocks=options.max_blocks,
                       compat=options.compat)  # validate

    def models(self) -> dict:
        return {"object": "list", "data": [self.model_card()]}

    def model_card(self) -> dict:
        return {"id": self.options.model_name, "object": "model", "created": 0, "owned_by": "parallel-r1"}

    # ---- requests -------------------------------------------------------------------------------
    def _encode(self, prompt, chat: bool) -> list[int]:
        if not chat:
            return list(self.tokenizer(prompt)["input_ids"])
        prompt = self._templated(prompt)
        if self.chat_template:
            text = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(self.tokenizer("\n".join(m["content"] for m in prompt) + "\n")["input_ids"])

    def _templated(self, messages: list[dict]) -> list[dict]:
        """The messages with the last user message rendered into the prompt template (point 1)."""
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if self.options.prompt_template is None or not users:
            return messages
        out = list(messages)
        out[users[-1]] = {**out[users[-1]], "content": render(self.options.prompt_template, out[users[-1]]["content"])}
        return out

    def _sampling(self, req: GenRequest) -> SamplingConfig:
        o = self.options
        return SamplingConfig(
            temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, max_new_tokens=req.max_tokens,
            max_path_tokens=o.max_path_tokens if o.max_path_tokens is not None else req.max_tokens,
            max_summary_tokens=None, num_paths=req.num_paths or o.num_paths, max_blocks=o.max_blocks,
            stop=req.stop, seed=(req.seed or 0) % (1 << 63), mode=o.mode, compat=o.compat,  # seeds: unsigned
        )

    def prepare(self, body: object, chat: bool) -> tuple[GenRequest, Job]:
        """Validate a request body and build its job (nothing is queued yet)."""
        req = parse_request(body, chat, self.options.limits)
        if req.model is not None and req.model != self.options.model_name:
            raise APIError(404, f"The model '{req.model}' does not exist; this server serves "
                                f"'{self.options.model_name}'", "model", "model_not_found")
        prompts = [self._encode(p, chat) for p in req.prompts]
        for i, ids in enumerate(prompts):
            if not ids:
                raise APIError(400, f"prompt {i} encodes to no tokens", "prompt")
            if self.context is not None and len(ids) + req.max_tokens > self.context:
                raise APIError(400, f"prompt {i} has {len(ids)} tokens; with max_tokens={req.max_tokens} it "
                                    f"exceeds the model's context of {self.context}", "max_tokens",
                               "context_length_exceeded")
        job = Job(prompts, req.n, self._sampling(req), seeded=req.seed is not None, stream=req.stream)
        return req, job

    def submit(self, job: Job) -> None:
        if not self.batcher.alive:
            raise APIError(503, "the generation loop is not running", type_="server_error")
        self.batcher.submit(job)

    def next_event(self, job: Job) -> tuple:
        while True:
            try:
                return job.events.get(timeout=POLL_S)
            except queue.Empty:
                if not self.batcher.alive:
                    raise APIError(503, "the generation loop stopped", type_="server_error") from None

    # ---- results --------------------------------------------------------------------------------
    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def served_text(self, rollout, stop: tuple[str, ...]) -> tuple[str, str, str | None]:
        """(text, finish_reason, stop_reason) of a choice (module docstring, point 4)."""
        text, stop_reason = cut_at_stop(rollout.text, stop)
        reason = "stop" if stop_reason is not None else finish_reason(rollout.finish_reason)
        return text, reason, stop_reason

    def parallel(self, rollout, text: str) -> dict:
        blocks = text_blocks(text)
        return {"num_blocks": len(blocks), "blocks": blocks, "format_valid": parse(text).valid,
                "critical_path_tokens": rollout.critical_path_tokens, "completion_tokens": generated_tokens(rollout),
                "dropped_paths": [self._decode(ids) for ids in rollout.dropped_paths]}

    def usage(self, job: Job, rollouts) -> dict:
        prompt = sum(len(p) for p in job.prompts)
        completion = sum(generated_tokens(r) for r in rollouts)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _choice(self, req: GenRequest, index: int, rollout, sent: IncrementalText | None = None) -> dict:
        text, reason, stop_reason = self.served_text(rollout, req.stop)
        if sent is None:
            return choice_body(req, index, text, reason, self.parallel(rollout, text), stop_reason)
        return chunk_body(req, self.options.model_name, index, sent.rest(text), reason, self.parallel(rollout, text),
                          stop_reason=stop_reason)

    def respond(self, req: GenRequest, job: Job) -> dict:
        """Wait for a blocking job and build its body."""
        self.submit(job)
        kind, payload = self.next_event(job)
        if kind == "error":
            raise APIError(500, f"generation failed: {payload}", type_="server_error")
        choices = [self._choice(req, i, rollout) for i, rollout in enumerate(payload)]
        return response_body(req, self.options.model_name, choices, self.usage(job, payload))

    def stream(self, req: GenRequest, job: Job) -> Iterator[dict]:
        """Chunks of a streaming job; the caller sets ``job.cancelled`` if it stops iterating early."""
        self.submit(job)
        model = self.options.model_name
        texts = [IncrementalText(self.tokenizer, req.stop) for _ in range(job.rows)]
        if req.chat:
            for i in range(job.rows):
                yield chunk_body(req, model, i, "", None, role=True)
        while True:
            kind, *payload = self.next_event(job)
            if kind == "tokens":
                choice, ids = payload
                delta = texts[choice].update(ids)
                if delta:
                    yield chunk_body(req, model, choice, delta, None)
            elif kind == "error":
                raise APIError(500, f"generation failed: {payload[0]}", type_="server_error")
            else:
                for i, rollout in enumerate(payload[0]):
                    yield self._choice(req, i, rollout, texts[i])
                if req.include_usage:
                    yield usage_chunk(req, model, self.usage(job, payload[0]))
                return
