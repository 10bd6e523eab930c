"""``parallel-r1 serve``: a real server on 127.0.0.1 (port 0) and real HTTP clients.

Exact texts come from ``ScriptedPolicy`` (a logits processor the real engine runs, forcing one valid
parallel response); batching, seeds and disconnects use the tiny random model as it is.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from parallel_r1.engine.engine import Engine
from parallel_r1.eval.loading import load_model
from parallel_r1.serve import Limits, OpenAIServer, ServeOptions
from processes import stop
from test_eval_fixtures import ScriptedPolicy, save_tiny_model

SCRIPTED = "a<Parallel><Path>aa</Path><Path>aaa</Path></Parallel><Summary>a</Summary>\nFinal Answer: 42"
PARALLEL = {"num_blocks": 1, "blocks": [{"paths": ["aa", "aaa"], "summary": "a", "closed": True}],
            "format_valid": True, "critical_path_tokens": 19, "completion_tokens": 23, "dropped_paths": []}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    save_tiny_model(path)
    return path


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_model(str(model_dir))


@pytest.fixture(scope="module")
def engine(loaded):
    return Engine(loaded.model, loaded.tokenizer, loaded.tag_ids)


def make_server(loaded, engine, processors=(), **options):
    opts = ServeOptions("tiny", **options)
    return OpenAIServer(engine, loaded.tokenizer, opts, port=0, logits_processors=processors, log_requests=False)


@pytest.fixture
def scripted(loaded, engine):
    with make_server(loaded, engine, [ScriptedPolicy(loaded.tokenizer, lambda i, s: "42")]) as server:
        yield server


def call(server, method, path, body=None, raw: bytes | None = None, headers=None):
    """One request on a fresh connection; returns (status, parsed JSON or raw text)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    kind = resp.getheader("Content-Type", "")
    return resp.status, json.loads(text) if kind == "application/json" else text


def sse_events(text: str) -> list:
    events = [e for e in text.split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events), events
    assert events[-1] == "data: [DONE]"
    return [json.loads(e[len("data: ") :]) for e in events[:-1]]


def test_models_and_health(scripted):
    status, body = call(scripted, "GET", "/v1/models")
    assert status == 200 and body["object"] == "list" and [m["id"] for m in body["data"]] == ["tiny"]
    assert call(scripted, "GET", "/v1/models/tiny") == (200, body["data"][0])
    status, body = call(scripted, "GET", "/v1/models/other")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert call(scripted, "GET", "/health") == (200, {"status": "ok"})
    assert scripted.host == "127.0.0.1"


def test_completion_with_n_and_parallel_structure(scripted, loaded):
    status, body = call(scripted, "POST", "/v1/completions",
                        {"model": "tiny", "prompt": ["one", "two three"], "n": 2, "max_tokens": 40})
    assert status == 200, body
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    for choice in body["choices"]:
        assert choice["text"] == SCRIPTED and choice["finish_reason"] == "stop"
        assert choice["parallel"] == PARALLEL
    prompt_tokens = sum(len(loaded.tokenizer(p)["input_ids"]) for p in ["one", "two three"])
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 4 * 23,
                             "total_tokens": prompt_tokens + 4 * 23}


def test_chat_stop_string_is_cut_and_length_reported(scripted):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    status, body = call(scripted, "POST", "/v1/chat/completions", {"messages": msgs, "stop": ["Answer", "zzz"]})
    assert status == 200, body
    choice = body["choices"][0]
    assert body["object"] == "chat.completion"
    assert choice["message"] == {"role": "assistant", "content": SCRIPTED[: SCRIPTED.index("Answer")]}
    assert choice["finish_reason"] == "stop"
    status, body = call(scripted, "POST", "/v1/chat/completions", {"messages": msgs, "max_tokens": 5})
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] <= 5


@pytest.mark.parametrize("stop", [None, "Answer"])
def test_streaming_chat_matches_the_blocking_answer(scripted, stop):
    req = {"messages": [{"role": "user", "content": "hi"}], "stop": stop, "stream": True,
           "stream_options": {"include_usage": True}}
    status, text = call(scripted, "POST", "/v1/chat/completions", req)
    assert status == 200
    events = sse_events(text)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    deltas = [e["choices"][0]["delta"].get("content", "") for e in events[:-1]]
    assert len([d for d in deltas if d]) > 3, "the text arrived in one piece, not streamed"
    expected = SCRIPTED if stop is None else SCRIPTED[: SCRIPTED.index(stop)]
    assert "".join(deltas) == expected
    last = events[-2]["choices"][0]
    assert last["finish_reason"] == "stop" and last["parallel"]["blocks"] == PARALLEL["blocks"]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0


def test_streaming_completion_with_n(scripted):
    status, text = call(scripted, "POST", "/v1/completions", {"prompt": "x", "n": 2, "stream": True})
    assert status == 200
    texts = {0: "", 1: ""}
    for event in sse_events(text):
        (choice,) = event["choices"]
        texts[choice["index"]] += choice["text"]
    assert texts == {0: SCRIPTED, 1: SCRIPTED}


BAD_REQUESTS = [
    ("POST", "/v1/completions", b"{not json", 400, None),
    ("POST", "/v1/completions", b"[1, 2]", 400, None),
    ("POST", "/v1/completions", b'{"prompt": "hi", "n": 1000000}', 400, "n"),
    ("POST", "/v1/completions", b'{"prompt": "hi", "max_tokens": -1}', 400, "max_tokens"),
    ("POST", "/v1/completions", b'{"prompt": "hi", "max_tokens": 100000000}', 400, "max_tokens"),
    ("POST", "/v1/completions", b'{"prompt": "hi", "temperature": -0.5}', 400, "temperature"),
    ("POST", "/v1/completions", b'{"prompt": "hi", "top_p": 0}', 400, "top_p"),
    ("POST", "/v1/completions", b'{"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}', 400, "stop"),
    ("POST", "/v1/completions", b'{"prompt": "hi", "logprobs": 3}', 400, "logprobs"),
    ("POST", "/v1/completions", b'{"prompt": "hi", "stream": "yes"}', 400, "stream"),
    ("POST", "/v1/completions", b'{"prompt": 5}', 400, "prompt"),
    ("POST", "/v1/completions", b'{"prompt": ""}', 400, "prompt"),
    ("POST", "/v1/completions", b'{"prompt": "hi", "max_tokens": 1024}', 400, "max_tokens"),
    ("POST", "/v1/completions", b'{"prompt": "hi", "model": "gpt-4"}', 404, "model"),
    ("POST", "/v1/chat/completions", b'{"messages": []}', 400, "messages"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "x"}]}', 400, "messages[0]"),
    ("POST", "/v1/nothing", b"{}", 404, None),
    ("GET", "/v1/completions", None, 405, None),
    ("PUT", "/v1/models", b"{}", 405, None),
]


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(scripted):
    for method, path, raw, status, param in BAD_REQUESTS:
        got, body = call(scripted, method, path, raw=raw)
        assert got == status, (raw, body)
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], body
        assert error["param"] == param, (raw, body)
    _, body = call(scripted, "POST", "/v1/completions", raw=b'{"prompt": "hi", "max_tokens": 1024}')
    assert body["error"]["code"] == "context_length_exceeded"
    status, body = call(scripted, "POST", "/v1/completions", {"prompt": "still there?"})
    assert status == 200 and body["choices"][0]["text"] == SCRIPTED


def read_until_closed(conn: socket.socket) -> str:
    """The whole reply of a server that closes the connection after it (as it must here)."""
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    conn.close()
    return data.decode()


def test_body_too_large_and_missing_length(scripted):
    conn = socket.create_connection((scripted.host, scripted.port), timeout=30)
    conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
    reply = read_until_closed(conn)
    assert reply.startswith("HTTP/1.1 413") and '"invalid_request_error"' in reply
    conn = socket.create_connection((scripted.host, scripted.port), timeout=30)
    conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_until_closed(conn).startswith("HTTP/1.1 411")


def test_concurrent_requests_share_engine_calls_and_seeds_are_reproducible(loaded, engine):
    """Six clients at once: all answered, in fewer engine calls than requests; a seeded request
    gets the same text alone and among unseeded neighbours (it runs in a call of its own)."""
    seeded = {"prompt": "The number", "max_tokens": 8, "seed": 1234, "n": 2}
    with make_server(loaded, engine, batch_window_s=0.5) as server:
        _, alone = call(server, "POST", "/v1/completions", seeded)
        calls_before = server.app.batcher.stats.calls
        barrier = threading.Barrier(6)
        results: dict[int, tuple] = {}

        def client(i):
            body = seeded if i == 0 else {"prompt": f"prompt {i}", "max_tokens": 8, "n": 1 + i % 2}
            barrier.wait()
            results[i] = call(server, "POST", "/v1/completions", body)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        stats = server.app.batcher.stats
    assert sorted(results) == list(range(6))
    assert all(status == 200 for status, _ in results.values()), results
    for i in range(1, 6):
        assert len(results[i][1]["choices"]) == 1 + i % 2
    assert [c["text"] for c in results[0][1]["choices"]] == [c["text"] for c in alone["choices"]]
    # 5 unseeded requests with equal settings share calls; the seeded one runs alone
    assert stats.calls - calls_before < 6 and stats.max_jobs_per_call >= 2


class NoEOS:
    """Bans EOS so an uncancelled row runs to its budget."""

    def __init__(self, eos_id: int):
        self.eos_id = eos_id

    def __call__(self, logits: torch.Tensor, contexts) -> torch.Tensor:
        logits[:, self.eos_id] = float("-inf")
        return logits


def test_client_disconnect_mid_stream_cancels_and_server_keeps_serving(loaded, engine):
    with make_server(loaded, engine, [NoEOS(loaded.tokenizer.eos_token_id)], max_blocks=0) as server:
        body = json.dumps({"prompt": "hi", "max_tokens": 900, "stream": True}).encode()
        sock = socket.create_connection((server.host, server.port), timeout=60)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        received = b""
        while b"data: " not in received:
            received += sock.recv(4096)
        sock.close()  # mid-stream: the budget of 900 tokens is far from spent
        deadline = time.monotonic() + 60
        while server.app.batcher.stats.cancelled_jobs < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.app.batcher.stats.cancelled_jobs == 1
        status, reply = call(server, "POST", "/v1/completions", {"prompt": "next", "max_tokens": 4})
        assert status == 200 and reply["choices"][0]["finish_reason"] == "length"


def test_httpx_client_with_keep_alive_and_streaming(scripted):
    httpx = pytest.importorskip("httpx")
    with httpx.Client(base_url=scripted.url, timeout=60) as client:
        assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
        text = ""
        with client.stream("POST", "/v1/completions", json={"prompt": "hi", "stream": True}) as resp:
            assert resp.status_code == 200 and resp.headers["content-type"] == "text/event-stream"
            for line in resp.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    text += json.loads(line[6:])["choices"][0]["text"]
        assert text == SCRIPTED
        bad = client.post("/v1/completions", content=b"{oops")
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        assert client.post("/v1/completions", json={"prompt": "again"}).json()["choices"][0]["text"] == SCRIPTED


def test_limits_are_configurable(loaded, engine):
    with make_server(loaded, engine, limits=Limits(max_n=2, default_max_tokens=3)) as server:
        status, body = call(server, "POST", "/v1/completions", {"prompt": "hi", "n": 3})
        assert status == 400 and body["error"]["param"] == "n"
        status, body = call(server, "POST", "/v1/completions", {"prompt": "hi"})
        assert status == 200 and body["usage"]["completion_tokens"] <= 3


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# SIGINT with SIGINT inherited as ignored: what a shell's background job gets (`make test &`)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_serve_binds_loopback_and_answers(model_dir, sig):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", "from parallel_r1.cli import main; main()", "serve", str(model_dir), "--port", "0", "--quiet",
           "--threads", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).parent,
                            preexec_fn=_ignore_sigint)  # fmt: skip
    try:
        line = proc.stderr.readline()
        while line and "serving" not in line:
            line = proc.stderr.readline()
        assert "at http://127.0.0.1:" in line and "1 CPU thread, backend hf, forward: lean)" in line, line
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/v1/models")
        assert json.loads(conn.getresponse().read())["data"][0]["id"] == model_dir.name
        conn.close()
    finally:
        code, rest = stop(proc, sig, timeout=30)
    assert code == 0 and "shutting down" in rest, f"serve did not stop cleanly on {sig!r} (exit {code}): {rest[-2000:]}"
