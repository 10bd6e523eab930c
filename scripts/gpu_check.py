"""One GPU check in one command: ``python scripts/gpu_check.py OUT.json`` (``scripts/gpu_check.sh``).

Runs each step below in its own process (a crash, a CUDA out-of-memory or a hang in one step cannot
take the others down), each under its own time limit, and writes one JSON object to OUT.json:
``device`` (what ran it), ``profile``, ``total_seconds``, and one entry per step with its figures or
its ``error`` (the message, or the last lines of the step's output), plus ``seconds`` and ``ok``.

Steps (``gpu`` profile: one CUDA device, about 8 minutes in all; ``cpu`` profile: the same steps at
tiny shapes, under 3 minutes on 2 cores, which CI runs as ``make gpu-check-cpu``):
1. ``gpu_tests``: ``pytest -m gpu`` (on a CPU machine they all skip; the counts say so).
2. ``bench_engine``: ``bench.engine`` on a random Qwen3-0.6B-shaped model in bf16 (cpu: tiny, fp32).
3. ``grpo_fsdp``: three GRPO steps of a random Qwen3-0.6B-shaped model (fp32 master weights, bf16
   compute) under FSDP2 on one process, once per rollout backend (hf, vllm), through the train runner
   on a generated recipe (reward ``parallel_only``: a random model is never right, a format reward
   still varies within a group, so the update does something; ``updated`` says whether it did). Launched as ``torchrun`` with the environment ``accelerate launch`` exports
   for an FSDP2 config: accelerate uses its simple launcher for one CPU process, which would leave
   FSDP off, so the variables are set here the same way on both profiles.
4. ``flex_vs_dense``: the Unseen training forward and backward at 4k and 8k tokens (cpu: 256, 512),
   flex_attention block mask (``structure.flex``) vs the dense 4D mask: time, peak memory, and the
   max abs difference of the response log-probs.
5. ``bench_rollout``: ``bench.rollout``, hf and vLLM on a random Qwen3-0.6B-shaped model in bf16,
   256 rollouts x 1k tokens (cpu: ``--quick``).
``--steps a,b`` runs a subset; ``--step-timeout S`` overrides every step's limit (tests use it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUTS = {  # seconds per step: gpu profile (sums to 7.75 minutes), cpu profile
    "gpu_tests": (45, 90), "bench_engine": (60, 40), "grpo_fsdp": (150, 100), "flex_vs_dense": (90, 40),
    "bench_rollout": (120, 40),
}
LIMIT_ENV = "GPU_CHECK_STEP_LIMIT"  # the parent tells the child its limit, for limits inside the step
TOTAL_LIMIT = {"gpu": 480, "cpu": 300}


# --- steps (each runs in a child process; returns its figures, raises on failure) ---------------------


def step_gpu_tests(profile: str) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", str(ROOT / "tests")]
    proc = run_group(cmd, _step_limit() - 2)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    counts = {k: _count(summary, k) for k in ("passed", "failed", "skipped", "deselected")}
    counts["errors"] = _count(summary, "error")  # not "error": that key marks a failed step
    out = {"returncode": proc.returncode, "summary": summary, **counts}
    if proc.returncode not in (0, 5):  # 5: nothing collected
        out["error"] = _tail(proc.stdout + proc.stderr)
    return out


def _count(summary: str, word: str) -> int:
    for part in summary.replace(",", " ,").split(","):
        bits = part.split()
        if len(bits) >= 2 and bits[1].startswith(word):
            return int(bits[0])
    return 0


def step_bench_engine(profile: str) -> dict:
    import torch

    from parallel_r1.bench.engine import make_shape, run_engine_bench

    if profile == "gpu":
        shape = make_shape(model_size="0.5b", batch=8, repeats=1)
        result = run_engine_bench(shape, device="cuda", dtype="bfloat16", log=_log)
    else:
        torch.set_num_threads(1)
        shape = make_shape(quick=True, model_size="tiny", batch=2, prefix_len=64, main_len=8, path_len=16,
                           summary_len=8, tail_len=8, repeats=1)
        result = run_engine_bench(shape, device="cpu", dtype="float32", log=_log)
    keep = ("branching_vs_plain", "branching_vs_reprefill", "seen_vs_plain", "lean_vs_model_forward",
            "unseen_logprob_max_abs_diff", "tokens_per_s", "peak_memory_mb", "params", "dtype", "engine_forward",
            "batch", "prefix_len", "response_len", "load_avg_1m")
    return {k: result[k] for k in keep if k in result}


def grpo_recipe(backend: str, profile: str) -> dict:
    """Three GRPO steps on toy problems with a random Qwen3 (0.6B-shaped on GPU, 3M parameters on CPU)."""
    from parallel_r1.engine.testing import SIZES

    gpu = profile == "gpu"
    size = SIZES["0.5b" if gpu else "small"]  # small: head_dim 64 (vLLM's CPU attention takes no 16)
    return {
        "name": f"gpu-check-grpo-{backend}", "mode": "unseen", "seed": 0, "threads": None if gpu else 1,
        "model": {"init": "scratch", "dtype": "float32",
                  "tokenizer_factory": "parallel_r1.engine.testing:char_tokenizer",
                  "tokenizer_kwargs": {"vocab_size": 151936 if gpu else 128},
                  "config": {"model_type": "qwen3", **size, "max_position_embeddings": 4096,
                             "tie_word_embeddings": True}},
        "checkpoint": {"every": 0}, "logging": {"progress": False, "tensorboard": False, "log_rollouts": 0},
        "rollout": {"backend": backend},
        "stages": [{
            "name": "grpo", "type": "grpo", "steps": 3, "batch_size": 4, "num_samples": 4,
            "micro_batch_size": 4 if gpu else 8, "max_prompt_tokens": 512,
            "data": {"factory": "parallel_r1.data.toy:toy_problems", "kwargs": {"split": "hard", "n": 16, "seed": 0}},
            "prompt": {"template": "{problem}"}, "reward": {"name": "parallel_only"},
            "generation": {"max_new_tokens": 256 if gpu else 64, "max_path_tokens": 64 if gpu else 6,
                           "max_summary_tokens": 32 if gpu else 6},
            "optimizer": {"lr": 1.0e-5},
        }],
    }  # fmt: skip


def fsdp_env(profile: str) -> dict:
    """What ``accelerate launch`` exports for an FSDP2 config (``train.fsdp.FSDPSettings.from_env``)."""
    env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_TRANSFORMER_CLS_TO_WRAP": "Qwen3DecoderLayer",
           "FSDP_RESHARD_AFTER_FORWARD": "true", "FSDP_OFFLOAD_PARAMS": "false",
           "FSDP_ACTIVATION_CHECKPOINTING": "false",
           "ACCELERATE_MIXED_PRECISION": "bf16" if profile == "gpu" else "no"}
    if profile == "cpu":
        env.update(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    return env


def step_grpo_fsdp(profile: str) -> dict:
    import yaml

    out = {}
    work = Path(tempfile.mkdtemp(prefix="gpu_check_grpo_"))
    for backend in ("hf", "vllm"):
        recipe = work / f"{backend}.yaml"
        recipe.write_text(yaml.safe_dump(grpo_recipe(backend, profile), sort_keys=False))
        run_dir = work / f"run-{backend}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               "-m", "parallel_r1.train", str(recipe), "--output", str(run_dir)]
        start = time.perf_counter()
        # half the step's time each, so a hung vLLM run cannot cost the hf result
        proc = run_group(cmd, (_step_limit() - 2) / 2, env={**os.environ, **fsdp_env(profile)})
        entry: dict = {"seconds": time.perf_counter() - start, "returncode": proc.returncode}
        metrics = run_dir / "metrics.jsonl"
        rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
        entry["steps"] = [{k: r[k] for k in r if isinstance(r[k], int | float) and not isinstance(r[k], bool)}
                          for r in rows]
        # a random model never answers right, so the reward is the format one (parallel_only): some groups
        # then differ and the update is not a no-op; this says whether any step moved the weights
        entry["updated"] = any(r.get("grad_norm", 0) > 0 for r in rows)
        # evidence that the sharded path ran (the runner logs the FSDP weight hand-over)
        entry["fsdp_lines"] = [line for line in (proc.stdout + proc.stderr).splitlines() if "FSDP" in line][:3]
        if proc.returncode != 0 or len(rows) != 3:
            entry["error"] = _tail(_without_launcher_trace(proc.stderr + proc.stdout))
        out[backend] = entry
        _log(f"grpo_fsdp {backend}: rc {proc.returncode}, {len(rows)} steps, {entry['seconds']:.1f} s")
    return out


def _without_launcher_trace(text: str) -> str:
    """The worker's output without torchrun's own traceback and failure banner that follow it."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if any(s in line for s in ("torch/distributed/run.py", "torch/distributed/elastic", "torch.distributed.elastic")):
            j = i
            while j > 0 and not lines[j].startswith("Traceback"):
                j -= 1
            return "\n".join(lines[:j] if j > 0 else lines[:i])
    return text


def unseen_rows(tag_ids: dict, total: int, prompt_len: int = 256) -> tuple[list[int], list[int]]:
    """One prompt and a response of ``total - prompt_len`` tokens: two blocks of three paths each."""
    fill, main, summary = 7, min(64, total // 32), min(32, total // 32)
    blocks = 2
    path_len = (total - prompt_len - blocks * (main + 4 + summary + 3 * 2)) // (blocks * 3)
    assert path_len > 0, f"{total} tokens are too few for two blocks of three paths"
    response: list[int] = []
    for _ in range(blocks):
        response += [fill] * main + [tag_ids["<Parallel>"]]
        for _ in range(3):
            response += [tag_ids["<Path>"]] + [fill + 1] * path_len + [tag_ids["</Path>"]]
        response += [tag_ids["</Parallel>"], tag_ids["<Summary>"]] + [fill + 2] * summary + [tag_ids["</Summary>"]]
    response += [fill] * (total - prompt_len - len(response))
    return [fill + 3] * prompt_len, response


def step_flex_vs_dense(profile: str) -> dict:
    """GPU: the model's training forward + backward, flex vs dense. CPU: flex_attention has no backward
    there and transformers compiles it under no_grad (minutes in inductor), so the CPU profile checks
    the attention op alone, eager, forward only, on the same structured rows."""
    import torch

    from parallel_r1.engine.testing import char_tokenizer, random_qwen3
    from parallel_r1.structure import build_batch
    from parallel_r1.structure import tag_ids as tag_ids_of

    gpu = profile == "gpu"
    if not gpu:
        torch.set_num_threads(1)
    tokenizer = char_tokenizer(151936 if gpu else 128)
    tags = tag_ids_of(tokenizer)
    models = None
    if gpu:
        dense_model = random_qwen3(len(tokenizer), "0.5b", dtype=torch.bfloat16, device="cuda").train()
        flex_model = random_qwen3(len(tokenizer), "0.5b", dtype=torch.bfloat16, device="cuda",
                                  attn_implementation="flex_attention")
        flex_model.load_state_dict(dense_model.state_dict())
        models = (dense_model, flex_model.train())
    out: dict = {"level": "model forward + backward, bf16" if gpu else "attention op, forward, fp32"}
    for total in (4096, 8192) if gpu else (256, 512):
        prompt, response = unseen_rows(tags, total, prompt_len=256 if gpu else 32)
        dtype = torch.bfloat16 if gpu else torch.float32
        dense = build_batch([prompt], [response], tags, pad_id=0, dtype=dtype).to("cuda" if gpu else "cpu")
        sparse = build_batch([prompt], [response], tags, pad_id=0, dense_mask=False).to(dense.input_ids.device)
        entry = _compare_models(models, dense, sparse) if gpu else _compare_attention_op(dense, sparse)
        out[f"tokens_{total}"] = entry
        _log(f"flex_vs_dense {total}: {json.dumps(entry)}")
    return out


def _compare_models(models, dense, sparse) -> dict:
    entry: dict = {}
    lp = {}
    for name, model, batch in (("dense", models[0], dense), ("flex", models[1], sparse)):
        try:
            entry[name], lp[name] = _timed_train_forward(model, batch, name == "flex", "cuda")
        except Exception as exc:  # flex may lack a kernel for a shape: record it, keep the other
            entry[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    if len(lp) == 2:
        entry["logprob_max_abs_diff"] = (lp["dense"] - lp["flex"]).abs().max().item()
    return entry


def _compare_attention_op(dense, sparse, heads: int = 4, head_dim: int = 16) -> dict:
    import warnings

    import torch
    from torch.nn.attention.flex_attention import flex_attention

    from parallel_r1.structure.flex import flex_block_mask

    t = dense.input_ids.shape[1]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, t, head_dim, generator=gen) for _ in range(3))
    start = time.perf_counter()
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense.attention_mask)
    entry = {"dense": {"seconds": time.perf_counter() - start}}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "called without torch.compile()": eager on purpose
        got = flex_attention(q, k, v, block_mask=flex_block_mask(sparse, block_size=64))
    entry["flex"] = {"seconds": time.perf_counter() - start}
    entry["output_max_abs_diff"] = (got - want).abs().max().item()
    return entry


def _timed_train_forward(model, batch, flex: bool, device: str):
    """One warm-up (flex compiles its kernels there), then a timed forward + backward of the response
    log-probs' sum; returns ``({seconds, peak_mb}, detached log-probs)``."""
    import torch

    from parallel_r1.structure.flex import flex_block_mask

    cuda = device.startswith("cuda")
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        mask = flex_block_mask(batch) if flex else None
        logits = model(**batch.model_inputs(mask)).logits
        logprobs = batch.response_logprobs(logits)  # (1, R) fp32
        logprobs.sum().backward()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        del logits
    figures = {"seconds": seconds}
    if cuda:
        figures["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return figures, logprobs.detach().float()


def step_bench_rollout(profile: str) -> dict:
    import torch

    from parallel_r1.bench.rollout import QUICK, RolloutBenchConfig, run_rollout_bench

    if profile == "gpu":
        cfg = RolloutBenchConfig(backends=("hf", "vllm"), random_size="0.5b", vocab_size=151936, device="cuda",
                                 dtype="bfloat16", prompts=32, samples=8, max_new_tokens=1024, max_path_tokens=256,
                                 prompt_len=128, max_batch_size=256)
    else:
        torch.set_num_threads(1)
        cfg = RolloutBenchConfig(backends=("hf", "vllm"), **QUICK)
    return run_rollout_bench(cfg, log=_log)


STEPS = {"gpu_tests": step_gpu_tests, "bench_engine": step_bench_engine, "grpo_fsdp": step_grpo_fsdp,
         "flex_vs_dense": step_flex_vs_dense, "bench_rollout": step_bench_rollout}


# --- driver ------------------------------------------------------------------------------------------


def _step_limit() -> float:
    return float(os.environ.get(LIMIT_ENV, "600"))


def run_group(cmd: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """``cmd`` in its own session; on timeout the whole group is killed (torchrun leaves its workers
    running when only it is killed) and the result has returncode -9 and a note on stderr."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        stderr += f"\ntimed out after {timeout:.0f} s"
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])[-4000:]


def device_info() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "host": platform.node(),
            "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    device_count=torch.cuda.device_count())
    else:
        info["name"] = "cpu"
    return info


def run_step(name: str, profile: str, timeout: float) -> dict:
    """``name`` in a child process (its own session, so a timeout kills its children too)."""
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        result_file = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--child", name, "--profile", profile, "--result", str(result_file)]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, env={**os.environ, LIMIT_ENV: str(timeout)})
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            result = {"error": f"timed out after {timeout:.0f} s", "output_tail": _tail(output or "")}
        else:
            if result_file.is_file():
                result = json.loads(result_file.read_text())
            else:
                result = {"error": f"exit code {proc.returncode} without a result", "output_tail": _tail(output)}
        result["seconds"] = round(time.perf_counter() - start, 2)
        result["ok"] = "error" not in result and not _nested_error(result)
        return result


def _nested_error(value) -> bool:
    """True when any entry below the top level carries an error (a backend, a sequence length)."""
    if isinstance(value, dict):
        return any(k == "error" or _nested_error(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_nested_error(v) for v in value)
    return False


def child(name: str, profile: str, result_file: Path) -> None:
    try:
        result = STEPS[name](profile)
    except Exception as exc:  # the step failed: its message is the result
        import traceback

        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"[:4000]}
    result_file.write_text(json.dumps(result, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", help="where the JSON object goes")
    parser.add_argument("--profile", choices=("auto", "gpu", "cpu"), default="auto")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of " + ", ".join(STEPS))
    parser.add_argument("--step-timeout", type=float, help="seconds for every step (default: per step)")
    parser.add_argument("--require", default="", help="comma-separated steps or sub-entries (grpo_fsdp.hf, "
                        "bench_rollout.backends.hf) that must hold no error, else exit 1 (CI)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.profile, args.result)
        return 0
    if not args.out:
        parser.error("OUT.json is required")
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {', '.join(STEPS)}")
    report = drive(Path(args.out), args.profile, steps, args.step_timeout)
    failed = [r for r in args.require.split(",") if r.strip() and not required_ok(report, r.strip())]
    if failed:
        _log(f"required entries failed or missing: {', '.join(failed)}")
        return 1
    return 0


def required_ok(report: dict, dotted: str) -> bool:
    """True when the entry at ``dotted`` (``step`` or ``step.key.key``) exists and holds no error."""
    node = report
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return isinstance(node, dict) and "error" not in node and not _nested_error(node)


def drive(out: Path, profile: str, steps: list[str], step_timeout: float | None) -> dict:
    started = time.perf_counter()
    device = device_info()
    if profile == "auto":
        profile = "gpu" if device["cuda"] else "cpu"
    report: dict = {"device": device, "profile": profile}
    for name in steps:
        left = TOTAL_LIMIT[profile] - (time.perf_counter() - started)
        limit = step_timeout or min(TIMEOUTS[name][0 if profile == "gpu" else 1], max(left, 1))
        _log(f"== {name} ({profile}, limit {limit:.0f} s)")
        report[name] = run_step(name, profile, limit)
        _log(f"== {name}: {'ok' if report[name]['ok'] else 'FAILED'} in {report[name]['seconds']} s")
    report["total_seconds"] = round(time.perf_counter() - started, 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    _log(f"wrote {out}: {sum(report[s]['ok'] for s in steps)}/{len(steps)} steps ok")
    return report


if __name__ == "__main__":
    sys.exit(main())
