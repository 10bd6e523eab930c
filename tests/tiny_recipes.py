"""A tiny SFT recipe on the toy teacher's traces, shared by the multi-process tests (DDP and FSDP),
which import it from their worker scripts as well as from pytest."""

from __future__ import annotations


def tiny_sft_recipe(tok_dir: str, layers: int = 2) -> dict:
    """3 SFT steps of a ``layers``-layer Qwen3 (hidden 32) from scratch, global batch 8, micro-batch 2."""
    return {
        "model": {"init": "scratch", "tokenizer": tok_dir,
                  "config": {"model_type": "qwen3", "hidden_size": 32, "num_hidden_layers": layers,
                             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                             "intermediate_size": 64, "max_position_embeddings": 512, "tie_word_embeddings": True}},
        "stages": [{"name": "sft", "type": "sft", "steps": 3, "batch_size": 8, "micro_batch_size": 2, "max_length": 256,
                    "data": {"factory": "parallel_r1.data.teacher:teacher_traces",
                             "kwargs": {"seed": 0, "problems": {"factory": "parallel_r1.data.toy:toy_problems",
                                                                "kwargs": {"split": "easy", "n": 16, "seed": 0}}}},
                    "optimizer": {"lr": 1e-2}}],
        "logging": {"progress": False, "tensorboard": False},
        "threads": 1,
    }  # fmt: skip
