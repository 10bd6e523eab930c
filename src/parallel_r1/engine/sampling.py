"""Sampling settings and token sampling from logits.

1. ``SamplingConfig`` holds every knob of one ``Engine.generate`` call and validates itself, so a bad
   value fails at the call with a message naming it, not deep inside the decode loop.
2. ``sample_tokens`` draws one token per row of a logits matrix with an explicit ``torch.Generator``
   (temperature, top-k, top-p; temperature 0 is greedy).
3. Recorded log-probs are ``log_softmax(logits / T)`` of the model's raw logits (T = temperature, or 1
   when greedy), taken before top-k/top-p and before the engine's tag rules: that is the quantity a
   trainer recomputes with a forward pass, so sampling and training log-probs can be compared exactly.
   (The paper evaluates with temperature 1.0 and top-p 1.0, where both notions coincide.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

MODES = ("unseen", "seen", "sequential")
# "ours": the engine's own rules (rows module docstring); "reference": sample as the reference engine
# does, to evaluate and serve its released checkpoints on their own terms (rows module docstring,
# point 8). A Literal, so the commands' typer options offer and check the choices.
Compat = Literal["ours", "reference"]
COMPATS = get_args(Compat)

# A logits processor gets the (n, V) logits of the n queries sampled this step and one context per
# row, and returns (n, V) logits (it may change them in place). It runs before the engine's tag rules
# (so it cannot produce a tag the grammar forbids) and before temperature, top-k and top-p.
LogitsProcessor = Callable[[torch.Tensor, Sequence["DecodeContext"]], torch.Tensor]


@dataclass(frozen=True)
class DecodeContext:
    """What a logits processor may know about the token being sampled.

    phase: "main" | "path" | "summary"; path_index: 0-based index of the path (None outside a path);
    block_index: 0-based index of the current or last block (-1 before the first);
    tokens: the ids of this branch so far (the response for main/summary, the path's own ids for a
    path, starting with its ``<Path>``); num_generated: response tokens so far, all paths counted.
    """

    prompt_index: int
    sample_index: int
    phase: str
    path_index: int | None
    block_index: int
    tokens: Sequence[int]  # the engine's own list, not a copy: read it, never change it
    num_generated: int


@dataclass
class SamplingConfig:
    """Settings of one generation call.

    max_new_tokens: hard cap on response tokens (every path counted, inserted tags too);
    max_path_tokens: cap on the tokens sampled inside one path (its tags not counted); at the cap the
        engine inserts ``</Path>``;
    max_summary_tokens: the same for a summary (``</Summary>`` inserted), None = no cap;
    num_paths: paths forked at each ``<Parallel>``; max_blocks: after this many blocks ``<Parallel>``
        is suppressed; stop: strings that end the response when the main chain produces them;
    mode: "unseen" (structured attention), "seen" (causal re-encode before the summary) or
        "sequential" (plain decoding, the tags are ordinary tokens);
    compat: "ours" (default) or "reference": insert ``</Parallel>\n<Summary>``, end the response after
        block ``max_blocks`` and sample unseen summaries at causal positions, as the reference engine
        does (rows module docstring, point 8); no effect in sequential mode.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 512
    max_path_tokens: int = 256
    max_summary_tokens: int | None = 128
    num_paths: int = 2
    max_blocks: int = 4
    stop: Sequence[str] | str | None = ()  # normalised to a tuple
    seed: int = 0
    mode: str = "unseen"
    compat: Compat = "ours"

    def __post_init__(self) -> None:
        if self.stop is None:
            self.stop = ()
        elif isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        self.validate()

    def validate(self) -> None:
        checks = [
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 = off), got {self.top_k}"),
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.max_path_tokens >= 1, f"max_path_tokens must be >= 1, got {self.max_path_tokens}"),
            (
                self.max_summary_tokens is None or self.max_summary_tokens >= 1,
                f"max_summary_tokens must be >= 1 or None, got {self.max_summary_tokens}",
            ),
            (1 <= self.num_paths <= 64, f"num_paths must be in 1..64, got {self.num_paths}"),
            (self.max_blocks >= 0, f"max_blocks must be >= 0, got {self.max_blocks}"),
            (self.mode in MODES, f"mode must be one of {MODES}, got {self.mode!r}"),
            (self.compat in COMPATS, f"compat must be one of {COMPATS}, got {self.compat!r}"),
            (all(isinstance(s, str) and s for s in self.stop), f"stop strings must be non-empty: {self.stop!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SamplingConfig: {message}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k / nucleus to -inf. logits: (n, V) float; returns a new tensor."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (n, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass strictly before it already reaches top_p (the first token is kept)
        drop_sorted = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(
    raw_logits: torch.Tensor,
    rule_bias: torch.Tensor | None,
    config: SamplingConfig,
    generator: torch.Generator,
    processors: Sequence[LogitsProcessor] = (),
    contexts: Sequence[DecodeContext] | None = None,
    check: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row.

    raw_logits: (n, V) model logits; rule_bias: (n, V) or (1, V) additive 0/-inf bias from the engine's
    tag rules (or None). Returns (tokens (n,) long, logprobs (n,) float32) where logprobs are taken from the raw
    logits (module docstring, point 3). A row with nothing left to sample raises ValueError, or with
    ``check=False`` gets token -1 so a caller can check after its own device sync (``assert_alive``).
    """
    raw = raw_logits.float()
    scale = config.temperature if config.temperature > 0 else 1.0
    # x / 1.0 == x exactly: skip the division (a full (n, V) pass) at temperature 1
    logprobs_all = torch.log_softmax(raw / scale if scale != 1.0 else raw, dim=-1)  # (n, V)
    logits = raw.clone() if processors else raw  # processors may write in place
    for processor in processors:
        assert contexts is not None, "logits processors need decode contexts"
        logits = processor(logits, contexts)
        assert logits.shape == raw.shape, f"a logits processor changed the shape to {tuple(logits.shape)}"
    if rule_bias is not None:  # last, so no processor can break the grammar
        logits = logits + rule_bias
    if config.greedy:
        best, tokens = logits.max(dim=-1)
        dead = torch.isneginf(best)
    else:
        if config.temperature != 1.0:
            logits = logits / config.temperature
        logits = filter_top_k_top_p(logits, config.top_k, config.top_p)
        tokens, dead = _draw(torch.softmax(logits, dim=-1), generator)
    logprobs = logprobs_all.gather(-1, tokens[:, None]).squeeze(-1)
    if check:
        assert_alive(tokens.masked_fill(dead, -1))
    return tokens.masked_fill(dead, -1), logprobs


def assert_alive(tokens: torch.Tensor | list[int]) -> None:
    """Fail loud on rows ``sample_tokens`` marked -1 (nothing left to sample)."""
    values = tokens.tolist() if isinstance(tokens, torch.Tensor) else tokens
    if any(t < 0 for t in values):
        raise ValueError("no token left to sample: every logit is -inf after the processors and tag rules")


def _draw(probs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw per row by inverting the CDF with a single uniform per row. probs: (n, V).

    ``torch.multinomial`` costs about as much as generating V random numbers per row on CPU (50 ms
    for 8 rows of a 152k vocabulary); this costs one cumsum. Returns (tokens (n,), dead (n,) bool)
    where dead marks rows with no finite probability (all logits -inf gives NaN).
    """
    cdf = probs.cumsum(dim=-1)  # (n, V)
    total = cdf[:, -1:]  # (n, 1), 1 up to rounding
    u = torch.rand(total.shape, generator=generator, device=probs.device, dtype=cdf.dtype) * total
    tokens = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)
    return tokens, ~torch.isfinite(total.squeeze(-1))
