"""``VLLMBackend``: rollouts from a vLLM engine in the trainer's own process, with prefix caching.

1. Start: the policy is saved once to a temporary folder (``save_pretrained``) and a ``vllm.LLM`` is
   built from it in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set here unless the caller set
   it), with the policy's dtype, automatic prefix caching, eager mode and, on CPU, a KV pool of
   ``kv_cache_gb``. The tokenizer is not given to vLLM: ids go in and come out, text is decoded here.
2. Generation follows the paper's inference loop (``vllm_loop``): decode until ``<Parallel>``, one
   request per path from the shared prefix plus ``<Path>`` (the prefix comes from the prefix cache),
   stop at ``</Path>``, append ``</Parallel><Summary>``, decode the summary, go on. The budgets, tag
   rules, inserted tags, loss masks, spans and finish reasons are ``rows.RowState``'s, so rollouts
   carry what the branching engine's carry; ``compat="reference"`` works the same way.
3. Exactness by mode. Sequential and Seen: exact (the model sees what training feeds it). Unseen:
   each path is exact (it sees only the prefix, at the positions training uses), but the summary and
   everything after the first block are sampled at causal positions over the concatenated paths,
   the reference's approximation, where training uses the structured mask and positions. The trainer
   recomputes old log-probs with its own forward and logs the sampler gap every step
   (``logprob_diff_sampler``); the branching engine (``hf``) stays the exact default for Unseen.
4. Log-probs: vLLM's ``raw_logprobs`` mode, ``log_softmax`` of the raw logits before any bias, tag
   rule, top-k or top-p: the engine's quantity (sampling module docstring, point 3) at temperature 1
   and when greedy. vLLM's mode is fixed per engine and untempered, so at another temperature the
   recorded values are ``log_softmax(logits)``, not ``log_softmax(logits / T)`` (the trainer never
   uses them for the update, only for the gap it logs).
5. Weights: ``update_weights`` streams the trainer's tensors into the running engine (the worker's
   ``reload_weights``, no disk) and clears the prefix cache, whose keys the old weights computed.
   With ``sleep_mode`` (GPU only) the engine sleeps after each ``generate`` (level 1: weights to host
   memory, KV pool freed) so the policy update has the memory, and wakes for the next call.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence

import torch

from parallel_r1.engine.backend import BackendInfo, VLLMOptions
from parallel_r1.engine.engine import check_prompts, eos_ids
from parallel_r1.engine.rows import RowState, TagSet, stop_checker
from parallel_r1.engine.sampling import SamplingConfig
from parallel_r1.engine.vllm_loop import BAN_BIAS, Completion, Request, run_rounds
from parallel_r1.rollout import Rollout

log = logging.getLogger(__name__)
GIB = 1 << 30


class VLLMBackend:
    """The ``vllm`` rollout backend (engine.backend protocol) bound to one policy and tokenizer."""

    shares_policy = False  # vLLM holds its own copy of the weights: the trainer must push updates
    supports_logits_processors = False  # requests go to vLLM whole: no per-step hook of ours runs

    def __init__(self, model, tokenizer, tag_ids: dict[str, int] | None, options: VLLMOptions) -> None:
        options.validate()
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: weights by reference
        import vllm  # optional install (make install-vllm)
        from vllm.platforms import current_platform

        self.device_type = current_platform.device_type  # "cpu" | "cuda" | ...
        if (problem := model_problem(model.config)) is not None:
            raise ValueError(problem)
        if options.sleep_mode and self.device_type != "cuda":
            raise ValueError(f"rollout.vllm.sleep_mode needs a CUDA GPU; this vLLM runs on {self.device_type}")
        if tag_ids is None:
            from parallel_r1.structure import tag_ids as lookup_tag_ids

            tag_ids = lookup_tag_ids(tokenizer)
        self.model, self.tokenizer, self.options = model, tokenizer, options
        self.tag_ids = dict(tag_ids)
        self.tags = TagSet.from_tag_ids(self.tag_ids, eos_ids(model, tokenizer))
        head = model.get_output_embeddings()
        self.vocab_size = head.weight.shape[0] if head is not None else model.config.vocab_size
        self.version = vllm.__version__
        self._aliases = _tied_aliases(model)
        self._asleep = False
        self._warned_unseen = False
        self._dir = tempfile.mkdtemp(prefix="parallel-r1-vllm-")
        try:
            self.llm = self._start(vllm)
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def _start(self, vllm):
        """Save the policy once and build the engine from that folder (module docstring, point 1)."""
        self.model.save_pretrained(self._dir)
        opts = self.options
        dtype = opts.dtype if opts.dtype != "auto" else str(next(self.model.parameters()).dtype).removeprefix("torch.")
        kwargs = dict(model=self._dir, dtype=dtype, enable_prefix_caching=opts.enable_prefix_caching,
                      enforce_eager=opts.enforce_eager, logprobs_mode="raw_logprobs", skip_tokenizer_init=True,
                      max_model_len=opts.max_model_len, enable_sleep_mode=opts.sleep_mode, seed=0)
        if self.device_type == "cpu":
            kwargs["kv_cache_memory_bytes"] = int(opts.kv_cache_gb * GIB)
            # vLLM 0.32 on CPU crashes ("CPU Generator does not use offset") when a seeded request's
            # prefill is split over scheduler steps, so prefills are scheduled whole (needs a step
            # budget of at least max_model_len tokens)
            longest = opts.max_model_len or getattr(self.model.config, "max_position_embeddings", None) or 8192
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(longest, 8192))
        else:
            kwargs["gpu_memory_utilization"] = opts.gpu_memory_utilization
        return vllm.LLM(**kwargs)

    # ---- rollout-backend protocol (engine.backend) ----------------------------------------------
    @property
    def info(self) -> BackendInfo:
        cache = " (prefix caching)" if self.options.enable_prefix_caching else ""
        device = "cpu" if self.device_type == "cpu" else f"{self.device_type}:0"
        return BackendInfo(name="vllm", forward_path=f"vllm {self.version}{cache}", device=device)

    def generate(self, prompts: Sequence[Sequence[int]], num_samples: int = 1,
                 config: SamplingConfig | None = None) -> list[Rollout]:
        """Sample ``num_samples`` responses per prompt; rollouts ordered by (prompt, sample)."""
        config = config or SamplingConfig()
        config.validate()
        self._check(prompts, num_samples, config)
        tags = self.tags.for_compat(self.tokenizer, config.compat)
        stop = stop_checker(self.tokenizer, config.stop)
        rows = [RowState(list(prompts[i]), i, s, config, tags, stop)
                for i in range(len(prompts)) for s in range(num_samples)]
        # torch gives a thread its OpenMP thread count lazily, at its first query; vLLM's CPU attention
        # checks that count against the one its metadata was built with, and a thread that never asked
        # (serve's batcher) failed that check: "Check failed: ... thread_num == thread_num (2 vs. 1)"
        torch.get_num_threads()
        self._wake()
        try:
            run_rounds(rows, lambda requests: self._submit(requests, config))
        finally:
            self._sleep()
        find_blocks = self._find_blocks if config.mode == "sequential" else None
        rollouts = [row.to_rollout(self.tokenizer, find_blocks) for row in rows]
        return sorted(rollouts, key=lambda r: (r.prompt_index, r.sample_index))

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Stream new weights (Hugging Face names) into the running engine; no disk round trip."""
        if self._asleep:
            self.llm.wake_up(tags=["weights"])  # the KV pool stays freed until the next generate
        weights = self._with_tied_aliases((name, tensor.detach()) for name, tensor in named_tensors)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()  # cached keys and values were computed by the old weights

    def _with_tied_aliases(self, named: Iterable[tuple[str, torch.Tensor]]):
        """``named`` plus each tied parameter under its other names. ``named_parameters()`` names a
        tied tensor once (``model.embed_tokens.weight``, not ``lm_head.weight``), and vLLM's reload
        does not re-tie: its head kept the weights it started with, so a tied model's rollouts came
        from a stale head (a resumed run, whose engine starts from the checkpoint, then sampled
        differently from an uninterrupted one)."""
        for name, tensor in named:
            yield name, tensor
            for alias in self._aliases.get(name, ()):
                yield alias, tensor

    def close(self) -> None:
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            del llm
            gc.collect()
        shutil.rmtree(self._dir, ignore_errors=True)

    # ---- helpers --------------------------------------------------------------------------------
    def _check(self, prompts, num_samples: int, config: SamplingConfig) -> None:
        check_prompts(prompts, num_samples, self.vocab_size)
        need = max(len(p) for p in prompts) + config.max_new_tokens if prompts else 0
        if need > self.max_model_len:
            raise ValueError(f"longest prompt + max_new_tokens = {need} tokens exceeds the vLLM engine's "
                             f"max_model_len {self.max_model_len}; raise rollout.vllm.max_model_len")
        if config.mode == "unseen" and not self._warned_unseen:
            self._warned_unseen = True
            log.warning("vllm backend, unseen mode: paths are exact, summaries and the chain after a block "
                        "are sampled at causal positions (the reference's approximation); the hf backend "
                        "samples them exactly")

    def _submit(self, requests: list[Request], config: SamplingConfig) -> list[Completion]:
        """One batched ``LLM.generate`` for the round's requests."""
        from vllm import SamplingParams

        params = [SamplingParams(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                                 max_tokens=q.max_tokens, seed=q.seed, stop_token_ids=list(q.stop_ids),
                                 logit_bias=dict.fromkeys(q.banned, BAN_BIAS) or None, logprobs=0,
                                 detokenize=False)
                  for q in requests]
        outputs = self.llm.generate([{"prompt_token_ids": q.ids} for q in requests], params, use_tqdm=False)
        return [_completion(out.outputs[0]) for out in outputs]

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def _sleep(self) -> None:
        if self.options.sleep_mode:
            self.llm.sleep(level=1)
            self._asleep = True

    def _find_blocks(self, ids: list[int]):
        from parallel_r1.structure import find_blocks

        return find_blocks(ids, self.tag_ids)


def _tied_aliases(model) -> dict[str, list[str]]:
    """First name of each parameter shared under several names -> its other names."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return {group[0]: group[1:] for group in names.values() if len(group) > 1}


def model_problem(config) -> str | None:
    """Why this vLLM cannot run a model of ``config``'s shape here, else None. Checked before vLLM
    starts, whose own error comes from deep inside engine start; today the one case is the CPU
    attention's head sizes (vLLM 0.32: 32, 64, 80, ...; the toy "tiny" models have 16)."""
    from vllm.platforms import current_platform

    if current_platform.device_type != "cpu":
        return None
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if CPUAttentionBackend.supports_head_size(head):
        return None
    sizes = ", ".join(map(str, CPUAttentionBackend.get_supported_head_sizes()))
    return (f"vLLM on CPU takes attention head sizes {sizes}; this model's head_dim is {head} "
            "(a recipe's scratch model: --set model.config.head_dim=32)")


def _completion(output) -> Completion:
    """Sampled ids and their log-probs from one vLLM ``CompletionOutput`` (``logprobs=0``: the
    sampled token's entry in each position's dict)."""
    ids = list(output.token_ids)
    assert output.logprobs is not None and len(output.logprobs) == len(ids), "vLLM returned no log-probs"
    return Completion(ids, [float(lp[t].logprob) for t, lp in zip(ids, output.logprobs, strict=True)])
