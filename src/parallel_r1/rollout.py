"""``Rollout``: the one record that flows through generation, reward, training and logging.

Every list over response tokens has the same length (``len(response_ids)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from parallel_r1.structure.spans import BlockSpan


@dataclass
class Rollout:
    prompt_ids: list[int]
    response_ids: list[int]
    # 1 for tokens the policy sampled, 0 for tokens the engine inserted (a forced <Path>,
    # </Parallel><Summary>, a closing tag at a budget); only sampled tokens carry loss.
    loss_mask: list[int]
    # log-prob of each response token under the sampling distribution (0.0 where inserted).
    logprobs: list[float]
    text: str = ""
    # block spans, as indices into response_ids
    blocks: list[BlockSpan] = field(default_factory=list)
    prompt_index: int = 0
    sample_index: int = 0
    finish_reason: str = ""  # "eos" | "length" | "stop" | "max_blocks" (engine.rows, point 8)
    # tokens on the longest route through the response: main chain + longest path per block + summary
    critical_path_tokens: int = 0
    mode: str = "unseen"  # "unseen" | "seen" | "sequential"
    # ids of the unclosed paths that a length cut inside a block left out of response_ids (they were
    # sampled and count against the budget; engine.rows point 6); never trained on
    dropped_paths: list[list[int]] = field(default_factory=list)
    # filled in by the reward step
    answer: str | None = None
    reward: float | None = None
    reward_info: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return len(self.response_ids)

    @property
    def num_sampled(self) -> int:
        return sum(self.loss_mask)
