"""Answer checking and reward functions (layer 2: imports only ``parallel_r1.format``).

- ``normalize.py`` -- answer-string normalisation and the exact fast path (no sympy).
- ``mv_worker.py`` -- the math-verify worker process.
- ``sandbox.py`` -- a thread-safe pool of those workers, killed and replaced on timeout.
- ``verify.py`` -- ``check_answer`` / ``answers_match``: fast path, then math-verify, bounded.
- ``judge.py`` -- ``judge(response, gold) -> Verdict``: parse once, extract, check.
- ``functions.py`` -- base rewards, step schedules, the registry (``get_reward``) and ``score``.
- ``reference.py`` -- the reference code's answer check, format check and tiered reward.
- ``scorers.py`` -- ``get_scorer``: ``default`` (judge.py) or ``reference`` (reference.py) rules.
- ``verl.py`` -- ``compute_score`` for verl's ``custom_reward_function`` (loaded by file path).
"""

from parallel_r1.rewards.functions import (
    BASE_REWARDS,
    REWARDS,
    Alternating,
    Fixed,
    Reward,
    Scaffold,
    accuracy_reward,
    check_step,
    get_reward,
    parallel_gated_reward,
    parallel_only_reward,
    score,
    tiered_reward,
)
from parallel_r1.rewards.judge import Verdict, judge, judge_many
from parallel_r1.rewards.reference import ReferenceVerdict, reference_judge
from parallel_r1.rewards.scorers import DEFAULT_SCORER, SCORERS, Scorer, get_scorer
from parallel_r1.rewards.verify import (
    DEFAULT_TIMEOUT_S,
    AnswerCheck,
    AnswerChecker,
    answers_match,
    check_answer,
    default_checker,
)

__all__ = [
    "AnswerCheck",
    "AnswerChecker",
    "answers_match",
    "check_answer",
    "default_checker",
    "DEFAULT_TIMEOUT_S",
    "Verdict",
    "judge",
    "judge_many",
    "ReferenceVerdict",
    "reference_judge",
    "Scorer",
    "SCORERS",
    "DEFAULT_SCORER",
    "get_scorer",
    "Reward",
    "Fixed",
    "Alternating",
    "Scaffold",
    "BASE_REWARDS",
    "REWARDS",
    "get_reward",
    "score",
    "check_step",
    "accuracy_reward",
    "parallel_gated_reward",
    "tiered_reward",
    "parallel_only_reward",
]
