"""A scripted, fault-injecting OpenAI-compatible teacher: a real HTTP server on 127.0.0.1.

It stands in for a remote service (vLLM, a hosted API) in the make-data tests. It answers
``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions``. The teacher text for a
prompt is found by looking for a known problem's question inside the prompt, then
- toy problems (ids ``toy-...``): ``parallel_r1.data.teacher.teacher_trace(problem, seed)``, the
  project's scripted teacher, with ``seed`` taken from the request (0 when absent);
- any other problem: ``scripted_response``, one of four outcomes (valid + correct, valid + wrong,
  no block, format error) picked from a hash of (problem id, seed).
So a response depends only on (problem, request seed): a run with faults must end exactly like a run
without.

Faults (``Faults``), drawn per request before any answer: ``drop`` (close the socket without a
reply), ``truncate`` (promise a body, send part of it, close), ``500``, ``429`` (with
``Retry-After: 0``), ``malformed`` (a 200 whose body is cut-off JSON), ``slow`` (sleep ``slow_s``
first, past the client's timeout), ``echo400`` (a 400 whose message repeats the request's
Authorization header, to prove that the client scrubs the key). ``fail_first`` faults the first N
requests of every (prompt, seed) in round-robin order of ``kinds`` (deterministic coverage);
``rate`` faults a seeded-random share of the rest.

Run by hand: ``python tests/fake_teacher.py --toy easy`` prints its URL and serves until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from parallel_r1.data.problem import Problem

try:  # the project's scripted teacher; imported here, never lazily in a handler thread (gh-106905)
    from parallel_r1.data.teacher import teacher_trace
except ImportError:  # pragma: no cover - while data/teacher.py does not exist
    teacher_trace = None

FAULT_KINDS = ("drop", "truncate", "500", "429", "malformed", "slow")


@dataclass
class Faults:
    kinds: tuple[str, ...] = FAULT_KINDS
    fail_first: int = 0  # faults on the first N requests of each (prompt, seed)
    rate: float = 0.0  # share of the other requests that get a random fault
    slow_s: float = 1.0
    seed: int = 0


def scripted_response(problem: Problem, seed: int) -> str:
    """One of four outcomes for a non-toy problem, fixed by (problem id, seed)."""
    variant = int(hashlib.sha256(f"{problem.id}/{seed}".encode()).hexdigest(), 16) % 4
    block = ("<Parallel><Path>Count it directly.</Path><Path>Check it another way.</Path></Parallel>"
             "<Summary>Both ways agree.</Summary>")
    if variant == 0:
        return f"Let me think.\n{block}\nFinal Answer: {problem.answer}"
    if variant == 1:
        return f"Let me think.\n{block}\nFinal Answer: {problem.answer}0"
    if variant == 2:
        return f"Step by step, the result follows.\nFinal Answer: {problem.answer}"
    return f"<Parallel><Path>Only one path.</Path></Parallel>\nFinal Answer: {problem.answer}"


def teacher_text(problem: Problem, seed: int) -> str:
    if problem.id.startswith("toy-") and teacher_trace is not None:
        return teacher_trace(problem, seed)["response"]
    return scripted_response(problem, seed)


class FakeTeacher:
    """``with FakeTeacher(problems) as t: ... t.url ...``; counters in ``t.stats``."""

    def __init__(self, problems: list[Problem], faults: Faults | None = None,
                 models: tuple[str, ...] = ("fake-teacher",), api_key: str | None = None, delay_s: float = 0.0):
        self.problems = list(problems)
        self.faults = faults or Faults()
        self.models = models
        self.api_key = api_key
        self.delay_s = delay_s
        self.stats: Counter = Counter()
        self.requests: list[dict] = []  # bodies of the completion requests, in arrival order
        self.auth_headers: set[str] = set()
        self._lock = threading.Lock()
        self._rng = random.Random(self.faults.seed)
        self._attempts: Counter = Counter()
        self._server: ThreadingHTTPServer | None = None
        self.in_flight = 0  # completion requests being answered now, and the most seen at once
        self.max_in_flight = 0

    # -------------------------------------------------------------- lifecycle

    def start(self) -> str:
        handler = type("Handler", (_Handler,), {"teacher": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeTeacher:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    # -------------------------------------------------------------- behaviour

    def find(self, prompt: str) -> Problem | None:
        # longest question first, so that a question contained in another one is not matched wrongly
        for p in sorted(self.problems, key=lambda q: -len(q.question)):
            if p.question in prompt:
                return p
        return None

    def pick_fault(self, prompt: str, seed: int) -> str | None:
        with self._lock:
            key = (prompt, seed)
            self._attempts[key] += 1
            if self._attempts[key] <= self.faults.fail_first:
                n = sum(self.stats[f"fault:{k}"] for k in self.faults.kinds)
                return self.faults.kinds[n % len(self.faults.kinds)]
            if self.faults.rate > 0 and self._rng.random() < self.faults.rate:
                return self._rng.choice(self.faults.kinds)
            return None

    def count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers; every reply carries Content-Length
    teacher: FakeTeacher

    def log_message(self, *args) -> None:  # quiet: pytest output stays readable
        pass

    def handle(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            super().handle()  # a reset here: the client gave up (its timeout), nothing to answer

    # -------------------------------------------------------------- helpers

    def reply(self, code: int, payload: object, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def error(self, code: int, message: str, kind: str = "invalid_request_error", headers=None) -> None:
        self.reply(code, {"error": {"message": message, "type": kind, "code": code}}, headers)

    def authorised(self) -> bool:
        auth = self.headers.get("Authorization", "")
        if auth:
            self.teacher.auth_headers.add(auth)
        if self.teacher.api_key and auth != f"Bearer {self.teacher.api_key}":
            self.error(401, "invalid API key", "authentication_error")
            return False
        return True

    # -------------------------------------------------------------- routes

    def do_GET(self) -> None:
        if not self.authorised():
            return
        if self.path.rstrip("/") != "/v1/models":
            self.error(404, f"no route {self.path}", "not_found")
            return
        data = [{"id": m, "object": "model", "owned_by": "tests"} for m in self.teacher.models]
        self.reply(200, {"object": "list", "data": data})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        if not self.authorised():
            return
        route = self.path.rstrip("/")
        if route not in ("/v1/chat/completions", "/v1/completions"):
            self.error(404, f"no route {self.path}", "not_found")
            return
        t = self.teacher
        with t._lock:
            t.in_flight += 1
            t.max_in_flight = max(t.max_in_flight, t.in_flight)
        try:
            self.parse_and_answer(route, raw)
        finally:
            with t._lock:
                t.in_flight -= 1

    def parse_and_answer(self, route: str, raw: bytes) -> None:
        try:
            body = json.loads(raw)
            prompt = body["messages"][-1]["content"] if route.endswith("chat/completions") else body["prompt"]
        except (ValueError, KeyError, IndexError, TypeError):
            self.error(400, "bad request body")
            return
        self.answer(route, body, prompt)

    def answer(self, route: str, body: dict, prompt: str) -> None:
        t = self.teacher
        if body.get("model") not in t.models:
            self.error(404, f"model {body.get('model')!r} not found", "model_not_found")
            return
        seed = int(body.get("seed", 0))
        fault = t.pick_fault(prompt, seed)
        if fault is not None:
            t.count(f"fault:{fault}")
            if self.inject(fault):
                return
        problem = t.find(prompt)
        if problem is None:
            self.error(400, "no known problem in the prompt")
            return
        if t.delay_s:
            time.sleep(t.delay_s)
        with t._lock:
            t.requests.append(body)
        t.count("answered")
        text = teacher_text(problem, seed)
        if route.endswith("chat/completions"):
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            payload = {"object": "chat.completion", "model": body["model"], "choices": [choice]}
        else:
            payload = {"object": "text_completion", "model": body["model"],
                       "choices": [{"index": 0, "text": text, "finish_reason": "stop"}]}
        payload["usage"] = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
        self.reply(200, payload)

    def inject(self, fault: str) -> bool:
        """Carry out a fault; True when the request is finished with it (no normal answer)."""
        if fault == "drop":
            self.close_connection = True
            return True
        if fault == "truncate":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "4096")
            self.end_headers()
            self.wfile.write(b'{"choices": [{"index": 0, "mess')
            self.wfile.flush()
            self.close_connection = True
            return True
        if fault == "500":
            self.error(500, "internal error (injected)", "server_error")
            return True
        if fault == "429":
            self.error(429, "rate limited (injected)", "rate_limit_error", {"Retry-After": "0"})
            return True
        if fault == "malformed":
            body = b'{"object": "chat.completion", "choices": [{"index": 0, "message": {"content": "Fin'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return True
        if fault == "echo400":
            self.error(400, f"bad request from {self.headers.get('Authorization', '')}")
            return True
        if fault == "slow":
            time.sleep(self.teacher.faults.slow_s)
            return False  # then answer as usual, to a client that has probably gone
        raise AssertionError(f"unknown fault {fault!r}")


def main() -> None:  # pragma: no cover - manual use
    import argparse

    from parallel_r1.data.toy import toy_problems

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--toy", choices=("easy", "hard"), default="easy")
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fault-rate", type=float, default=0.0)
    args = ap.parse_args()
    with FakeTeacher(toy_problems(args.toy, args.n, args.seed), Faults(rate=args.fault_rate)) as t:
        print(t.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    main()
