"""Training: cold-start SFT and GRPO, chained by one YAML recipe, with checkpoints and exact resume.

- ``config``: the recipe's typed dataclasses, filled from YAML and validated before any compute.
- ``runner``: ``run_recipe`` / ``train_main`` (``parallel-r1 train``), the curriculum loop.
- ``stages``: one SFT step and one GRPO step (data, engine rollouts, rewards, update).
- ``sft``: the response-token loss and its optimiser step.
- ``grpo``: group advantages, the clipped surrogate, k3 KL and the minibatch update.
- ``logprobs``: per-token log-probs / entropy of response tokens from one forward.
- ``batching``: rows -> tensors through ``structure.build_batch`` (Seen / Unseen masks).
- ``data``: rows from files or named factories, prompt rendering, the resumable data order.
- ``model_io``: tokenizer and model by hub name or path (or GGUF, or fresh from a config).
- ``optim``: AdamW and its schedule. ``dist``: the few distributed operations, with or without
  accelerate. ``checkpoint``: what is saved and restored. ``metrics``: metrics.jsonl and progress.

Nothing is imported here, so ``import parallel_r1.train.grpo`` stays light.
"""
