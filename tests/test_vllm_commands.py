"""Every command with ``--backend vllm`` (issue 15): ``serve``, ``eval`` and ``train`` as real processes.

1. ``serve --backend vllm`` on 127.0.0.1 answers completions and chat, streaming and not, and honours
   a stop string; vLLM takes no logits processor, so a stream's text arrives in its last chunk
   (``serve.batcher``, point 3).
2. ``eval --backend vllm`` writes a result of the hf run's structure with ``config.backend``; a
   result stored before the backend was recorded resumes as hf and is refused for vllm.
3. The smoke recipe with ``rollout: {backend: vllm}`` trains, checkpoints and, after a SIGKILL in the
   GRPO stage, resumes to the same ``metrics.jsonl`` as an uninterrupted run (timing keys aside).

The tiny model is ``toy_model``'s "small" size (head_dim 32): vLLM's CPU attention refuses the
"tiny" size's head_dim 16, so the smoke recipe runs with ``--set model.config.head_dim=32``. The
vLLM tests run where vLLM is installed (``make install-vllm``) and are skipped elsewhere.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from parallel_r1.data.toy_model import build_tiny_model
from parallel_r1.data.toy_tokenizer import build_toy_tokenizer
from parallel_r1.eval.resume import ResumeError, ResumeState
from parallel_r1.eval.run import EvalConfig
from processes import stop
from test_train_runner import _signal_after, read_metrics

REPO = Path(__file__).resolve().parents[1]
needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
CLI = [sys.executable, "-c", "from parallel_r1.cli import main; main()"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": str(REPO / "src")}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("small-model")
    tokenizer = build_toy_tokenizer()
    tokenizer.save_pretrained(path)
    build_tiny_model(tokenizer, seed=0, size="small").save_pretrained(path)
    return path


# --- 1. serve ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(model_dir):
    """``parallel-r1 serve --backend vllm`` in its own process; yields (port, start line)."""
    cmd = [*CLI, "serve", str(model_dir), "--port", "0", "--quiet", "--threads", "1", "--backend", "vllm",
           "--mode", "seen"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    try:
        seen = []
        line = proc.stderr.readline()
        while line and "serving" not in line:
            seen.append(line)
            line = proc.stderr.readline()
        assert "serving" in line, "serve did not start:\n" + "".join(seen[-30:])
        yield int(line.rsplit(":", 1)[1].split("/")[0]), line
    finally:
        code, rest = stop(proc, signal.SIGINT, timeout=60)
    assert code == 0 and "shutting down" in rest, f"serve --backend vllm did not stop cleanly (exit {code}): {rest[-2000:]}"


def post(port: int, path: str, body: dict) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    return resp.status, json.loads(text) if resp.getheader("Content-Type", "") == "application/json" else text


def streamed(text: str) -> list[dict]:
    events = [e for e in text.split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]", events[-3:]
    return [json.loads(e.removeprefix("data: ")) for e in events[:-1]]


def delta_text(chunk: dict, chat: bool) -> str:
    choice = chunk["choices"][0]
    return choice["delta"].get("content") or "" if chat else choice["text"]


@needs_vllm
@pytest.mark.vllm
@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_serve_vllm_answers_streams_and_honours_a_stop_string(server, chat):
    port, start_line = server
    assert "backend vllm, forward: vllm " in start_line, start_line
    path = "/v1/chat/completions" if chat else "/v1/completions"
    ask = {"messages": [{"role": "user", "content": "3 + 4 ="}]} if chat else {"prompt": "3 + 4 ="}
    body = {**ask, "max_tokens": 40, "temperature": 0}  # greedy: the same text on every call

    status, full = post(port, path, body)
    assert status == 200, full
    choice = full["choices"][0]
    text = choice["message"]["content"] if chat else choice["text"]
    assert choice["finish_reason"] in ("stop", "length") and full["usage"]["completion_tokens"] > 0
    assert len(text) >= 4, f"too short a greedy answer to cut: {text!r}"

    status, raw = post(port, path, {**body, "stream": True})
    assert status == 200, raw
    chunks = streamed(raw)
    assert "".join(delta_text(c, chat) for c in chunks) == text, "the stream must add up to the blocking answer"
    assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]

    stop = text[len(text) // 2 : len(text) // 2 + 2]  # a string the answer holds, first at text.index(stop)
    for stream in (False, True):
        status, got = post(port, path, {**body, "stop": [stop], "stream": stream})
        assert status == 200, got
        if stream:
            chunks = streamed(got)
            cut, last = "".join(delta_text(c, chat) for c in chunks), chunks[-1]["choices"][0]
        else:
            last = got["choices"][0]
            cut = last["message"]["content"] if chat else last["text"]
        assert cut == text[: text.index(stop)], (stream, stop, cut, text)
        assert last["finish_reason"] == "stop" and last["stop_reason"] == stop


def test_serve_over_a_backend_without_logits_processors(model_dir):
    """The batcher's plain path (no per-step hook) without vLLM: ``CopyBackend`` (train.fsdp) over the
    branching engine takes no logits processors either. A stream then carries the whole text in its
    last chunk, and a stop string is cut from the returned text with ``finish_reason`` "stop"."""
    from parallel_r1.engine.engine import Engine
    from parallel_r1.eval.loading import load_model
    from parallel_r1.serve import OpenAIServer, ServeOptions
    from parallel_r1.serve.batcher import Batcher
    from parallel_r1.train.fsdp import CopyBackend
    from test_serve import call, sse_events

    loaded = load_model(str(model_dir), "cpu")
    backend = CopyBackend(loaded.model, Engine(loaded.model, loaded.tokenizer, loaded.tag_ids))
    with pytest.raises(ValueError, match="takes no logits processors"):
        Batcher(backend, logits_processors=[lambda logits, contexts: logits])
    with OpenAIServer(backend, loaded.tokenizer, ServeOptions("tiny", mode="seen"), port=0, log_requests=False) as srv:
        body = {"prompt": "3 + 4 =", "max_tokens": 40, "temperature": 0}
        status, full = call(srv, "POST", "/v1/completions", body)
        assert status == 200, full
        text = full["choices"][0]["text"]
        assert len(text) >= 4, f"too short a greedy answer to cut: {text!r}"
        status, raw = call(srv, "POST", "/v1/completions", {**body, "stream": True})
        chunks = sse_events(raw)
        assert [c["choices"][0]["text"] for c in chunks] == [text], "one chunk: the text when the call returns"
        stop = text[len(text) // 2 : len(text) // 2 + 2]
        for stream in (False, True):
            status, got = call(srv, "POST", "/v1/completions", {**body, "stop": [stop], "stream": stream})
            choice = sse_events(got)[-1]["choices"][0] if stream else got["choices"][0]
            assert choice["text"] == text[: text.index(stop)] and choice["finish_reason"] == "stop", (stream, choice)


# --- 2. eval -------------------------------------------------------------------------------------------


def run_eval(model_dir: Path, out: Path, backend: str, data: Path) -> subprocess.CompletedProcess:
    cmd = [*CLI, "eval", str(model_dir), "--benchmarks", str(data), "--samples", "2", "--limit", "2",
           "--max-tokens", "48", "--output", str(out), "--backend", backend, "--threads", "1", "--no-progress",
           "--prompt", "sequential"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)


def shape(obj):
    """The structure of a JSON value: keys and types, not values."""
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shape(v) for v in obj[:1]]
    return "number" if isinstance(obj, int | float) and not isinstance(obj, bool) else type(obj).__name__


@needs_vllm
@pytest.mark.vllm
def test_eval_vllm_result_has_the_hf_structure_and_records_the_backend(model_dir, tmp_path):
    data = tmp_path / "bench.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "question": f"{i} + 2 =", "answer": str(i + 2)}) + "\n"
                            for i in range(3)))  # fmt: skip
    results = {}
    for backend in ("hf", "vllm"):
        proc = run_eval(model_dir, tmp_path / f"{backend}.json", backend, data)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[backend] = json.loads((tmp_path / f"{backend}.json").read_text())
        lines = (tmp_path / f"{backend}.responses.jsonl").read_text().splitlines()
        assert len(lines) == 2 * 2, f"{backend}: 2 problems x 2 samples"
    hf, vllm = results["hf"], results["vllm"]
    assert hf["config"]["backend"] == "hf" and vllm["config"]["backend"] == "vllm"
    assert shape(vllm) == shape(hf)
    assert {k: v for k, v in vllm["config"].items() if k != "backend"} == {k: v for k, v in hf["config"].items() if k != "backend"}
    assert vllm["benchmarks"]["bench"]["samples"] == 2 and vllm["benchmarks"]["bench"]["num_problems"] == 2

    # the vllm result resumes as itself (only the table is printed) and is refused for hf
    again = run_eval(model_dir, tmp_path / "vllm.json", "vllm", data)
    assert again.returncode == 0 and json.loads((tmp_path / "vllm.json").read_text()) == vllm
    refused = run_eval(model_dir, tmp_path / "vllm.json", "hf", data)
    assert refused.returncode == 1 and "backend: 'vllm' -> 'hf'" in refused.stderr, refused.stderr[-2000:]


def test_eval_results_stored_without_a_backend_resume_as_hf(tmp_path):
    """Results written before ``config.backend`` existed were sampled by the branching engine: they
    resume under hf (``LEGACY_DEFAULTS``) and are refused for vllm, whose samples would differ."""
    out = tmp_path / "old.json"
    old = EvalConfig(model="m", benchmarks=["toy-easy"], samples=2)
    stored = {k: v for k, v in old.fingerprint("t").items() if k != "backend"}
    out.write_text(json.dumps({"config": stored, "benchmarks": {"toy-easy": {"samples": 2, "data_digest": "d"}}}))
    assert ResumeState(out, old.fingerprint("t")).finished("toy-easy", 2, "d") is not None
    with pytest.raises(ResumeError, match="backend: 'hf' -> 'vllm'"):
        ResumeState(out, EvalConfig(model="m", benchmarks=["toy-easy"], samples=2, backend="vllm").fingerprint("t"))
    with pytest.raises(ValueError, match="backend must be one of"):
        EvalConfig(model="m", benchmarks=["toy-easy"], backend="tgi")


# --- 3. the smoke recipe on vLLM: train, checkpoint, SIGKILL, resume -------------------------------------

SFT_STEPS, GRPO_STEPS = 40, 4
SMOKE_SETS = [
    "model.config.head_dim=32",  # vLLM's CPU attention takes no head_dim 16 (module docstring)
    "rollout={backend: vllm, vllm: {kv_cache_gb: 0.25}}",
    f"stages[1].steps={GRPO_STEPS}",
    f"checkpoint.every={SFT_STEPS + 2}",  # checkpoints at 40 (SFT end), 42, 44 (GRPO end)
    "logging.progress=false",
]


def start_smoke(out: Path, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "parallel_r1.train", str(REPO / "configs" / "smoke.yaml"), "--output", str(out)]
    cmd += [arg for s in SMOKE_SETS for arg in ("--set", s)] + (["--resume"] if resume else [])
    return subprocess.Popen(cmd, env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@needs_vllm
@pytest.mark.vllm
@pytest.mark.slow
def test_smoke_recipe_on_vllm_resumes_after_sigkill_to_the_same_metrics(tmp_path):
    """Regression: the smoke model ties its head to the embeddings, and the weights pushed after each
    optimiser step named the tied tensor once; vLLM's reload does not re-tie, so its head stayed at
    the SFT weights and the resumed run (engine started from the checkpoint) sampled differently
    from step 43 on. ``VLLMBackend.update_weights`` now sends tied tensors under every name."""
    proc = start_smoke(tmp_path / "ref", resume=False)
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, log[-4000:]
    assert "rollout backend: vllm" in log, "the GRPO stage must sample with vLLM"
    reference = read_metrics(tmp_path / "ref")
    assert [r["type"] for r in reference] == ["sft"] * SFT_STEPS + ["grpo"] * GRPO_STEPS
    grpo = reference[SFT_STEPS:]
    assert sum(r["grad_norm"] > 0 for r in grpo) >= 2, "GRPO barely updated: a weak resume test"
    saved = sorted(p.name for p in (tmp_path / "ref" / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert {f"step-{SFT_STEPS + 2:06d}", f"step-{SFT_STEPS + GRPO_STEPS:06d}"} <= set(saved)

    out = tmp_path / "run"
    proc = start_smoke(out, resume=False)
    _signal_after(proc, out, lines=SFT_STEPS + 3, sig=signal.SIGKILL)  # after the checkpoint at 42
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert SFT_STEPS + 3 <= len(read_metrics(out)) < len(reference)

    proc = start_smoke(out, resume=True)
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, log[-4000:]
    assert "rollout backend: vllm" in log
    assert read_metrics(out) == reference
