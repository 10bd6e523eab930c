"""A small client for any OpenAI-compatible text-generation server, with retries.

The teacher of the cold-start pipeline can be vLLM, SGLang, a hosted API or our own ``serve``: all
speak ``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions``.

Why asyncio + ``httpx.AsyncClient`` rather than a thread pool: a teacher request spends seconds to
minutes waiting on the server, so the client is pure I/O; hundreds of requests in flight cost one
coroutine each instead of one thread each, cancelling them on Ctrl-C is clean, and a single event
loop thread means the caller can write its result files without locks.

Retries (``ClientConfig``): a request is retried on a timeout, a connection error (refused, reset,
dropped mid-body), HTTP 408 / 409 / 429 / 5xx, or a 200 whose body is not the JSON an OpenAI server
sends. The wait before retry ``k`` (1-based) is ``min(backoff_max, backoff_base * 2**(k-1))`` times a
uniform jitter in [0.5, 1) so that concurrent clients de-synchronise; a ``Retry-After`` header
(seconds) raises the wait up to ``backoff_max``. Other 4xx are not retried: 401 / 403 / 404 (bad key,
no access, wrong URL or model) raise ``TeacherFatalError`` since every later request would fail the
same way; the rest (e.g. 400 for an over-long prompt) raise ``RequestFailed`` for that request only.

The API key goes into the ``Authorization`` header and nowhere else; error messages built here pass
through ``scrub`` so that a server echoing the key back cannot leak it into logs or files.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import httpx

RETRY_STATUS = frozenset({408, 409, 429})
FATAL_STATUS = frozenset({401, 403, 404})
APIS = ("chat", "completions")
SNIPPET = 200  # characters of an error body kept in a message


class RequestFailed(RuntimeError):
    """One request failed for good (retries spent, or a non-retryable 4xx). ``responded``: whether any
    attempt got an HTTP reply at all (False: nothing answered, e.g. no server listens there)."""

    def __init__(self, message: str, attempts: int, responded: bool = True):
        super().__init__(message)
        self.attempts = attempts
        self.responded = responded


class TeacherFatalError(RuntimeError):
    """The server refuses every request (bad key, wrong URL, unknown model): stop the run."""


class EndpointError(ValueError):
    """An endpoint that is not an http(s) URL."""


class MalformedResponse(ValueError):
    """A 2xx body that is not what an OpenAI-compatible server returns."""


@dataclass(frozen=True)
class ClientConfig:
    endpoint: str
    api_key: str | None = None
    api: str = "chat"  # "chat" -> /chat/completions with one user message; "completions" -> raw prompt
    timeout: float = 300.0  # seconds, per request attempt (whole request, and each phase of it)
    max_retries: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    max_connections: int = 64

    def __post_init__(self) -> None:
        assert self.api in APIS, f"api must be one of {APIS}, got {self.api!r}"
        assert self.timeout > 0, f"timeout must be > 0, got {self.timeout}"
        assert self.max_retries >= 0, f"max_retries must be >= 0, got {self.max_retries}"
        assert 0 <= self.backoff_base <= self.backoff_max, "need 0 <= backoff_base <= backoff_max"


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    attempts: int
    usage: dict = field(default_factory=dict)


def api_base(endpoint: str) -> str:
    """``http://host:8000`` and ``http://host:8000/v1/`` both give ``http://host:8000/v1``; a URL with
    any other path (``https://host/api/v1``, ``https://host/openai``) is taken as the API root as is."""
    parts = urlsplit(endpoint.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise EndpointError(f"endpoint must be an http(s) URL such as http://127.0.0.1:8000/v1, got {redact_url(endpoint)!r}")
    path = parts.path.rstrip("/")
    if not path:
        path = "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def redact_url(url: str) -> str:
    """The URL without user:password and query string (both may carry credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


class TeacherClient:
    """Use as ``async with TeacherClient(cfg) as client: await client.complete(prompt, model)``."""

    def __init__(self, cfg: ClientConfig, rng: random.Random | None = None):
        self.cfg = cfg
        self.base = api_base(cfg.endpoint)
        self.rng = rng or random.Random()
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> TeacherClient:
        headers = {"Authorization": f"Bearer {self.cfg.api_key}"} if self.cfg.api_key else {}
        limits = httpx.Limits(max_connections=self.cfg.max_connections,
                              max_keepalive_connections=self.cfg.max_connections)
        self._http = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(self.cfg.timeout),
                                       limits=limits, follow_redirects=True)
        return self

    async def __aexit__(self, *exc_info) -> None:
        assert self._http is not None
        await self._http.aclose()
        self._http = None

    async def models(self) -> list[str]:
        """Model ids the server lists, in its order."""
        return await self._request("GET", "/models", None, _model_ids)

    async def complete(self, prompt: str, model: str, params: dict | None = None) -> Completion:
        """One generation for ``prompt`` (a user message in chat mode, raw text in completions mode)."""
        body: dict = {"model": model, **(params or {})}
        if self.cfg.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
            return await self._request("POST", "/chat/completions", body, _chat_completion)
        body["prompt"] = prompt
        return await self._request("POST", "/completions", body, _text_completion)

    async def _request(self, method: str, path: str, body: dict | None, extract):
        """Send with retries; ``extract(json) -> value`` raises MalformedResponse on a bad body."""
        assert self._http is not None, "use TeacherClient inside `async with`"
        url = self.base + path
        last, retry_after, responded, start = "no attempt made", None, False, time.monotonic()
        for attempt in range(1, self.cfg.max_retries + 2):
            if attempt > 1:
                await asyncio.sleep(self.backoff(attempt - 1, retry_after))
            retry_after = None
            try:
                # httpx bounds each phase (connect, every read); wait_for bounds the whole request,
                # so a server trickling bytes cannot hold a worker forever
                resp = await asyncio.wait_for(self._http.request(method, url, json=body), self.cfg.timeout)
            except (httpx.TimeoutException, asyncio.TimeoutError) as exc:
                last = f"timed out after {self.cfg.timeout:g}s ({type(exc).__name__})"
                continue
            except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
                raise TeacherFatalError(self._scrub(f"cannot send to {redact_url(url)}: {exc}")) from exc
            except httpx.TransportError as exc:
                last = f"connection error ({type(exc).__name__}: {exc})"
                continue
            code, responded = resp.status_code, True
            if code in RETRY_STATUS or code >= 500:
                last, retry_after = f"HTTP {code}: {_snippet(resp)}", _retry_after(resp)
                continue
            if code in FATAL_STATUS:
                raise TeacherFatalError(self._scrub(f"{method} {redact_url(url)} -> HTTP {code}: {_snippet(resp)}"))
            if code >= 400:
                raise RequestFailed(self._scrub(f"HTTP {code}: {_snippet(resp)}"), attempts=attempt)
            try:
                value = extract(resp.json())
            except (ValueError, MalformedResponse) as exc:  # JSONDecodeError is a ValueError
                last = f"malformed response body ({exc})"
                continue
            if isinstance(value, Completion):
                value.attempts = attempt
            return value
        attempts, elapsed = self.cfg.max_retries + 1, time.monotonic() - start
        raise RequestFailed(self._scrub(f"gave up after {attempts} attempts in {elapsed:.1f} s; last: {last}"),
                            attempts=attempts, responded=responded)

    def backoff(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        delay = min(self.cfg.backoff_max, self.cfg.backoff_base * 2 ** (retry - 1))
        delay *= 0.5 + 0.5 * self.rng.random()
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cfg.backoff_max))
        return delay

    def _scrub(self, text: str) -> str:
        return scrub(text, self.cfg.api_key)


def _snippet(resp: httpx.Response) -> str:
    """The server's error message if it sent an OpenAI-style error body, else the start of the body."""
    try:
        data = resp.json()
        message = data["error"]["message"] if isinstance(data.get("error"), dict) else data.get("error")
        if message:
            return str(message)[:SNIPPET]
    except (ValueError, AttributeError, KeyError, TypeError):
        pass
    return resp.text[:SNIPPET].replace("\n", " ")


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare for these servers; our own backoff applies


def _first_choice(data: object) -> dict:
    if not isinstance(data, dict):
        raise MalformedResponse(f"expected a JSON object, got {type(data).__name__}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedResponse("no choices in the response")
    return choices[0]


def _chat_completion(data: object) -> Completion:
    choice = _first_choice(data)
    message = choice.get("message")
    if not isinstance(message, dict):
        raise MalformedResponse("choice has no message")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise MalformedResponse(f"message content is {type(content).__name__}, not a string")
    return Completion(content or "", choice.get("finish_reason"), 1, _usage(data))


def _text_completion(data: object) -> Completion:
    choice = _first_choice(data)
    text = choice.get("text")
    if not isinstance(text, str):
        raise MalformedResponse("choice has no text")
    return Completion(text, choice.get("finish_reason"), 1, _usage(data))


def _usage(data: dict) -> dict:
    usage = data.get("usage")
    return usage if isinstance(usage, dict) else {}


def _model_ids(data: object) -> list[str]:
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise MalformedResponse("expected {'data': [...]} from /models")
    return [str(m["id"]) for m in items if isinstance(m, dict) and "id" in m]
