"""Shared helpers of the eval and serve tests (no tests here): a tiny saved model and a scripted policy.

``save_tiny_model(dir)`` writes the toy tokenizer (it holds the six tags) and a seeded random tiny
Qwen3 model, so commands load them by path exactly as they load a real checkpoint.

``ScriptedPolicy`` is a logits processor that forces one fixed, valid parallel response per prompt:
    A <Parallel><Path> c c </Path><Path> c c c </Path></Parallel><Summary> s </Summary>
    \\nFinal Answer: {answer} <eos>
(the engine inserts ``<Path>``, ``</Parallel><Summary>``; the policy samples everything else), with
the answer chosen per prompt index. It is not a mock of the engine: the real engine runs it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from parallel_r1.data.toy_model import build_tiny_model
from parallel_r1.data.toy_tokenizer import build_toy_tokenizer
from parallel_r1.format.tags import PARALLEL_OPEN, PATH_CLOSE, SUMMARY_CLOSE, SUMMARY_OPEN

PATH_LENGTHS = (2, 3)  # content tokens of path 0 and path 1


def save_tiny_model(path) -> None:
    tokenizer = build_toy_tokenizer()
    model = build_tiny_model(tokenizer, seed=0)
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)


def one_token(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{text!r} is {len(ids)} tokens"
    return ids[0]


class ScriptedPolicy:
    """Forces the response of the module docstring; ``answer_of(prompt_index, sample_index)`` gives
    the answer text."""

    def __init__(self, tokenizer, answer_of: Callable[[int, int], str]):
        self.tok = tokenizer
        self.answer_of = answer_of
        self.content = one_token(tokenizer, "a")
        self.ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (PARALLEL_OPEN, PATH_CLOSE, SUMMARY_OPEN, SUMMARY_CLOSE)}
        self.eos = tokenizer.eos_token_id

    def expected_ids_len(self, answer: str) -> int:
        tail = len(self.answer_ids(answer)) + 1  # + eos
        return 2 + sum(n + 2 for n in PATH_LENGTHS) + 2 + 1 + 1 + tail  # ... </Parallel><Summary> s </Summary>

    def answer_ids(self, answer: str) -> list[int]:
        return self.tok(f"\nFinal Answer: {answer}", add_special_tokens=False)["input_ids"]

    def next_token(self, ctx) -> int:
        tokens = list(ctx.tokens)
        if ctx.phase == "path":
            return self.content if len(tokens) - 1 < PATH_LENGTHS[ctx.path_index] else self.ids[PATH_CLOSE]
        if ctx.phase == "summary":
            after = tokens[::-1].index(self.ids[SUMMARY_OPEN])  # tokens since <Summary>
            return self.content if after < 1 else self.ids[SUMMARY_CLOSE]
        if self.ids[PARALLEL_OPEN] not in tokens:
            return self.content if not tokens else self.ids[PARALLEL_OPEN]
        done = tokens[::-1].index(self.ids[SUMMARY_CLOSE])  # tokens since </Summary>
        target = self.answer_ids(self.answer_of(ctx.prompt_index, ctx.sample_index)) + [self.eos]
        return target[done]

    def __call__(self, logits: torch.Tensor, contexts) -> torch.Tensor:
        forced = torch.full_like(logits, float("-inf"))  # (n, V)
        for i, ctx in enumerate(contexts):
            forced[i, self.next_token(ctx)] = 0.0
        return forced
