"""``parallel-r1 serve`` hardening (issue 18, defects 4-7), against real servers on 127.0.0.1.

4. A stop string is cut wherever it appears (inside a path, a summary, a tag), streaming or not,
   and the row stops generating soon after.
5. A length cut inside a block counts every generated token and returns the dropped paths.
6. Options the server cannot honour are 400s naming the parameter.
7. Slow clients: a per-request read deadline, a bound on connections, no traceback for a client
   that vanishes; an optional API key.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
import time

import pytest
import torch
from typer.testing import CliRunner

from parallel_r1.cli import app as cli_app
from parallel_r1.engine.engine import Engine
from parallel_r1.eval.loading import load_model
from parallel_r1.format.tags import PARALLEL_OPEN
from test_eval_fixtures import ScriptedPolicy, one_token, save_tiny_model
from test_serve import SCRIPTED, call, make_server, sse_events


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    save_tiny_model(path)
    return load_model(str(path))


@pytest.fixture(scope="module")
def engine(loaded):
    return Engine(loaded.model, loaded.tokenizer, loaded.tag_ids)


@pytest.fixture
def scripted(loaded, engine):
    with make_server(loaded, engine, [ScriptedPolicy(loaded.tokenizer, lambda i, s: "42")]) as server:
        yield server


class EndlessPaths:
    """"a", then <Parallel>, then paths of "a" that never close and never end (EOS banned): a row runs
    to its budget unless something else ends it."""

    def __init__(self, tokenizer):
        self.a, self.par_open = one_token(tokenizer, "a"), tokenizer.convert_tokens_to_ids(PARALLEL_OPEN)

    def __call__(self, logits: torch.Tensor, contexts) -> torch.Tensor:
        forced = torch.full_like(logits, float("-inf"))  # (n, V)
        for i, ctx in enumerate(contexts):
            opening = ctx.phase == "main" and len(ctx.tokens) == 1
            forced[i, self.par_open if opening else self.a] = 0.0
        return forced


def stream_text(server, path: str, body: dict) -> tuple[str, dict, dict | None]:
    """(concatenated text, last choice chunk, usage or None) of a streamed request."""
    status, raw = call(server, "POST", path, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200, raw
    events = sse_events(raw)
    chat = path.endswith("chat/completions")
    pieces = [(e["choices"][0]["delta"].get("content") or "") if chat else e["choices"][0]["text"]
              for e in events if e["choices"]]
    last = [e["choices"][0] for e in events if e["choices"]][-1]
    return "".join(pieces), last, events[-1].get("usage")


# ---- 4: stop strings -----------------------------------------------------------------------------
@pytest.mark.parametrize("stop", ["</Path>", "<Parallel>", "<Summary>", "aaa", "</Summary>", "Final Answer"])
def test_stop_string_anywhere_cuts_the_text_blocking_and_streaming(scripted, stop):
    """Defect 4: a stop string inside a block (a path, a tag, the summary) came back in the text."""
    expected = SCRIPTED[: SCRIPTED.index(stop)]
    status, body = call(scripted, "POST", "/v1/completions", {"prompt": "hi", "stop": [stop, "zzz"]})
    assert status == 200, body
    choice = body["choices"][0]
    assert (choice["text"], choice["finish_reason"], choice["stop_reason"]) == (expected, "stop", stop)
    text, last, _ = stream_text(scripted, "/v1/completions", {"prompt": "hi", "stop": [stop, "zzz"]})
    assert (text, last["finish_reason"], last["stop_reason"]) == (expected, "stop", stop)
    msgs = [{"role": "user", "content": "hi"}]
    text, last, _ = stream_text(scripted, "/v1/chat/completions", {"messages": msgs, "stop": stop})
    assert text == expected and last["finish_reason"] == "stop"


def test_a_block_cut_by_a_stop_string_is_returned_open(scripted):
    status, body = call(scripted, "POST", "/v1/completions", {"prompt": "hi", "stop": "</Path>"})
    parallel = body["choices"][0]["parallel"]
    assert body["choices"][0]["text"] == "a<Parallel><Path>aa"
    assert parallel["blocks"] == [{"paths": ["aa"], "summary": None, "closed": False}]
    assert parallel["format_valid"] is False
    _, body = call(scripted, "POST", "/v1/completions", {"prompt": "hi", "stop": "aaa"})
    assert body["choices"][0]["parallel"]["blocks"] == [{"paths": ["aa", ""], "summary": None, "closed": False}]


def test_stop_string_inside_a_path_ends_the_row_early(loaded, engine):
    """Without the observer the row ran to max_tokens (400) although its text was cut at token ~4."""
    with make_server(loaded, engine, [EndlessPaths(loaded.tokenizer)]) as server:
        for streaming in (False, True):
            req = {"prompt": "hi", "max_tokens": 400, "stop": "aaaa"}
            if streaming:
                text, last, usage = stream_text(server, "/v1/completions", req)
            else:
                _, body = call(server, "POST", "/v1/completions", req)
                (last,), usage = body["choices"], body["usage"]
                text = last["text"]
            assert text == "a<Parallel><Path>" and last["finish_reason"] == "stop"
            assert usage["completion_tokens"] < 40, usage


# ---- 5: truncation inside a block ----------------------------------------------------------------
@pytest.mark.parametrize("streaming", [False, True])
def test_length_cut_inside_a_block_counts_and_returns_every_path(loaded, engine, streaming):
    """Defect 5: max_tokens=40 gave usage 21 and path 1 only; the other path vanished."""
    with make_server(loaded, engine, [EndlessPaths(loaded.tokenizer)], num_paths=3) as server:
        req = {"prompt": "hi", "max_tokens": 40}
        if streaming:
            text, last, usage = stream_text(server, "/v1/completions", req)
        else:
            _, body = call(server, "POST", "/v1/completions", req)
            (last,), usage = body["choices"], body["usage"]
            text = last["text"]
    parallel = last["parallel"]
    assert last["finish_reason"] == "length"
    assert usage["completion_tokens"] == 40 == parallel["completion_tokens"]
    # 2 main tokens, then 3 paths of <Path> + a...: path 1 in the text, paths 2 and 3 dropped
    assert text.startswith("a<Parallel><Path>a") and text.count("<Path>") == 1
    assert len(parallel["dropped_paths"]) == 2
    assert all(p.startswith("<Path>a") and set(p[len("<Path>") :]) == {"a"} for p in parallel["dropped_paths"])
    in_text = len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
    dropped = sum(len(loaded.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in parallel["dropped_paths"])
    assert in_text + dropped == 40


# ---- 6: options that cannot be honoured ----------------------------------------------------------
@pytest.mark.parametrize("path, extra, param", [
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
    ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
    ("/v1/chat/completions", {"tool_choice": "auto"}, "tool_choice"),
    ("/v1/chat/completions", {"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ("/v1/completions", {"response_format": {"type": "json_object"}}, "response_format"),
    ("/v1/completions", {"repetition_penalty": 1.2}, "repetition_penalty"),
    ("/v1/chat/completions", {"prompt": "hi"}, "prompt"),
])
def test_options_it_cannot_honour_are_rejected(scripted, path, extra, param):
    base = {"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {"prompt": "hi"}
    status, body = call(scripted, "POST", path, {**base, **extra})
    assert status == 400 and body["error"]["param"] == param, body
    assert body["error"]["type"] == "invalid_request_error"


def test_no_op_values_of_those_options_are_accepted(scripted):
    req = {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "text"},
           "tool_choice": "none", "user": "u1", "metadata": {"k": "v"}, "store": False}
    status, body = call(scripted, "POST", "/v1/chat/completions", req)
    assert status == 200 and body["choices"][0]["message"]["content"] == SCRIPTED


# ---- 7: slow clients, connection bound, disconnects, API key -------------------------------------
def partial_post(server, body_bytes: int = 10) -> socket.socket:
    """A client that announces 100 body bytes and sends ``body_bytes`` of them."""
    sock = socket.create_connection((server.host, server.port), timeout=30)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n" + b"{" * body_bytes)
    return sock


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_slow_clients_time_out_and_normal_requests_go_through(scripted_factory):
    """Defect 7: 300 clients holding a partial body kept 306 threads alive, for good."""
    server = scripted_factory(read_timeout_s=1.0)
    baseline = threading.active_count()
    slow = [partial_post(server) for _ in range(50)]
    start = time.monotonic()
    status, body = call(server, "POST", "/v1/completions", {"prompt": "meanwhile"})
    assert status == 200 and body["choices"][0]["text"] == SCRIPTED
    assert time.monotonic() - start < 5, "a normal request waited behind the slow clients"
    assert threading.active_count() <= baseline + 50 + 2
    # after the 1 s deadline every slow client is answered 408 and its thread is gone
    assert wait_for(lambda: threading.active_count() <= baseline + 1, 10), threading.active_count()
    for sock in slow:
        sock.settimeout(5)
        reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
        sock.close()


def test_a_client_dripping_bytes_is_cut_at_the_deadline(scripted_factory):
    """One byte every 0.2 s keeps a per-recv timeout happy for ever; the deadline is per request."""
    server = scripted_factory(read_timeout_s=1.0)
    sock = socket.create_connection((server.host, server.port), timeout=30)
    start, closed = time.monotonic(), False
    for byte in b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * 100:
        try:
            sock.sendall(bytes([byte]))
        except OSError:  # reset by the server
            closed = True
            break
        sock.settimeout(0.2)
        try:
            if sock.recv(1) == b"":
                closed = True
                break
        except TimeoutError:
            pass
    assert closed and time.monotonic() - start < 3, "the dripping client was not cut at the 1 s deadline"
    sock.close()


def test_connections_beyond_the_bound_get_503_and_threads_stay_bounded(scripted_factory):
    server = scripted_factory(read_timeout_s=1.5, max_connections=8)
    baseline = threading.active_count()
    held = [partial_post(server) for _ in range(8)]
    assert wait_for(lambda: threading.active_count() == baseline + 8, 5)
    extra = [socket.create_connection((server.host, server.port), timeout=5) for _ in range(20)]
    for sock in extra:
        reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in reply, reply[:80]
        sock.close()
    assert threading.active_count() <= baseline + 8
    assert server.httpd.refused == 20
    # once the held connections time out, the server serves again
    assert wait_for(lambda: threading.active_count() <= baseline, 10)
    status, _ = call(server, "POST", "/v1/completions", {"prompt": "after"})
    assert status == 200
    for sock in held:
        sock.close()


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed client or a proxy does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_clients_that_vanish_leave_no_traceback(scripted_factory, capsys):
    server = scripted_factory(read_timeout_s=1.0, log_requests=True)
    for payload in (b"", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n", None):
        sock = partial_post(server) if payload is None else socket.create_connection((server.host, server.port))
        if payload:
            sock.sendall(payload)
        time.sleep(0.2)  # the server is now reading from it
        reset(sock)
    sock = partial_post(server, body_bytes=5)
    sock.close()  # an orderly close halfway through the body
    time.sleep(0.5)
    assert call(server, "POST", "/v1/completions", {"prompt": "still here"})[0] == 200
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err
    assert "connection lost" in err


def test_api_key(scripted_factory):
    server = scripted_factory(api_key="s3cret")
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    conn.request("GET", "/v1/models")
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 401 and resp.getheader("WWW-Authenticate") == "Bearer"
    assert body["error"]["code"] == "invalid_api_key"
    conn.close()
    assert call(server, "POST", "/v1/completions", {"prompt": "hi"}, headers={"Authorization": "Bearer wrong"})[0] == 401
    assert call(server, "POST", "/v1/completions", {"prompt": "hi"}, headers={"Authorization": "s3cret"})[0] == 401
    status, body = call(server, "POST", "/v1/completions", {"prompt": "hi"}, headers={"Authorization": "Bearer s3cret"})
    assert status == 200 and body["choices"][0]["text"] == SCRIPTED
    assert call(server, "GET", "/health") == (200, {"status": "ok"})  # probes need no key


@pytest.mark.parametrize("args, warned", [(["--host", "0.0.0.0"], True),
                                          (["--host", "0.0.0.0", "--api-key", "k"], False),
                                          (["--host", "127.0.0.1"], False)])
def test_cli_warns_when_binding_beyond_loopback_without_a_key(tmp_path, args, warned):
    # the model path does not exist: the command stops before it binds anything
    result = CliRunner().invoke(cli_app, ["serve", str(tmp_path / "no-model"), *args])
    assert result.exit_code != 0
    assert ("without --api-key" in result.output) == warned, result.output


def test_cli_rejects_an_empty_api_key(tmp_path):
    result = CliRunner().invoke(cli_app, ["serve", str(tmp_path), "--api-key", " "])
    assert result.exit_code == 2, result.output


@pytest.fixture
def scripted_factory(loaded, engine):
    servers = []

    def start(**http_options):
        from parallel_r1.serve import OpenAIServer, ServeOptions

        processors = [ScriptedPolicy(loaded.tokenizer, lambda i, s: "42")]
        http_options.setdefault("log_requests", False)
        server = OpenAIServer(engine, loaded.tokenizer, ServeOptions("tiny"), port=0, logits_processors=processors,
                              **http_options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
