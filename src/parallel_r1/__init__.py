"""Parallel-R1: parallel thinking for language models, trained with reinforcement learning."""
__version__ = "0.1.0"
