"""HTTP layer of ``parallel-r1 serve``: an OpenAI-compatible API on the standard library's server.

Why ``http.server.ThreadingHTTPServer`` and not starlette/uvicorn: the work is one engine loop fed
by a queue, so an event loop buys nothing, and the standard library keeps the project's
dependencies at zero for serving. One thread per connection blocks on its job's queue.

1. Routes: ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``, ``POST /v1/completions``,
   ``POST /v1/chat/completions``. HTTP/1.1 with keep-alive; streamed answers use chunked transfer
   encoding with server-sent events (``data: {json}`` ... ``data: [DONE]``).
2. Every failure is answered with an OpenAI-style body ``{"error": {message, type, param, code}}``:
   400 bad JSON or parameters, 404 unknown route or model, 405 wrong method, 411/413 missing or too
   large body, 500 a failure inside generation, 503 no generation loop. No request can take the
   server down: unexpected exceptions are logged and answered with 500.
3. A client that disconnects mid-stream is noticed at the next write; its job is cancelled (the
   batcher ends its rows early) and the connection thread ends. An error after the stream started
   is sent as an ``error`` event before ``[DONE]``.
4. It binds 127.0.0.1 unless told otherwise. With an API key, every ``/v1`` route wants
   ``Authorization: Bearer <key>`` (compared in constant time) and answers 401 otherwise;
   ``/health`` stays open for probes.
5. Slow or vanished clients cannot pile up threads: a request (line, headers and body) must arrive
   within ``read_timeout_s`` of the server starting to wait for it (an idle keep-alive connection
   is closed after that long; a body cut short by the deadline is answered 408), a write that the
   client does not take within ``read_timeout_s`` ends the connection, and at most
   ``max_connections`` connections are served at once: one more is answered 503 at once, from the
   accepting thread. A client that disconnects is logged in one line (with request logging on),
   never with a traceback.
"""

from __future__ import annotations

import hmac
import io
import json
import socket
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from parallel_r1.serve.app import ServeApp, ServeOptions
from parallel_r1.serve.protocol import APIError

MAX_BODY_BYTES = 8 << 20
# TimeoutError: a write the client did not take within the timeout (point 5)
CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)
READ_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 128


class _DeadlineReader(io.RawIOBase):
    """Socket reads under one deadline per request, not per ``recv``: a client that sends a byte now
    and then must still finish its request in time (module docstring, point 5)."""

    def __init__(self, sock: socket.socket, timeout_s: float):
        self.sock, self.timeout_s = sock, timeout_s
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def arm(self) -> None:
        self.deadline = time.monotonic() + self.timeout_s

    def disarm(self) -> None:
        """The request is in: later socket operations (the writes) get the plain timeout."""
        self.deadline = None
        self.sock.settimeout(self.timeout_s)

    def readinto(self, buffer) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the request did not arrive within {self.timeout_s:g} s")
            self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "parallel-r1"
    server: _Server

    # ---- plumbing -------------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.reader = _DeadlineReader(self.connection, self.server.read_timeout_s)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        self.reader.arm()  # the next request line, headers and body (point 5)
        super().handle_one_request()

    def send_response(self, code: int, message: str | None = None) -> None:
        self.reader.disarm()  # nothing more is read for this request; writes get the plain timeout
        super().send_response(code, message)

    def log_message(self, format: str, *args) -> None:
        if self.server.log_requests:
            sys.stderr.write(f"[serve] {self.address_string()} {format % args}\n")

    def _send_json(self, status: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, err: APIError) -> None:
        self._send_json(err.status, err.body(), {"WWW-Authenticate": "Bearer"} if err.status == 401 else None)

    def _authorize(self) -> None:
        """401 unless the request carries the server's API key (point 4)."""
        key = self.server.api_key
        if key is None:
            return
        scheme, _, token = self.headers.get("Authorization", "").strip().partition(" ")
        # compare_digest: the time taken does not tell how much of a guessed key was right
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            self.close_connection = True  # a body, if any, is left unread
            raise APIError(401, "missing or invalid API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    def _read_json(self) -> object:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise APIError(411, "chunked request bodies are not supported; send Content-Length")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise APIError(411, "a Content-Length header is required")
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            raise APIError(413, f"request body of {length} bytes exceeds {MAX_BODY_BYTES}")
        try:
            raw = self.rfile.read(int(length))
        except TimeoutError as exc:
            self.close_connection = True
            raise APIError(408, f"request body not received in time: {exc}") from exc
        if len(raw) < int(length):  # the client closed its side; the answer will likely not reach it
            self.close_connection = True
            raise APIError(400, f"request body ended after {len(raw)} of {length} bytes")
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise APIError(400, f"request body is not valid JSON: {exc}") from exc

    def _guard(self, fn) -> None:
        """Run a route; answer any failure with an OpenAI-style error, never let it escape."""
        try:
            try:
                fn()
            except APIError as err:
                self._send_error(err)
            except CLIENT_GONE:
                raise
            except Exception as exc:  # a bug must cost one request, not the server
                traceback.print_exc(file=sys.stderr)
                self.close_connection = True
                self._send_error(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type_="server_error"))
        except CLIENT_GONE:
            self.close_connection = True

    # ---- routes ---------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._guard(self._get)

    def do_POST(self) -> None:
        self._guard(self._post)

    def _not_allowed(self) -> None:
        self.close_connection = True
        self._send_error(APIError(405, f"method {self.command} is not allowed on {self.path}"))

    do_PUT = do_DELETE = do_PATCH = _not_allowed

    def _get(self) -> None:
        app, path = self.server.app, self.path.split("?", 1)[0].rstrip("/")
        if path != "/health":
            self._authorize()
        if path == "/v1/models":
            return self._send_json(200, app.models())
        if path.startswith("/v1/models/"):
            name = path[len("/v1/models/") :]
            if name != app.options.model_name:
                raise APIError(404, f"The model '{name}' does not exist", "model", "model_not_found")
            return self._send_json(200, app.model_card())
        if path == "/health":
            return self._send_json(200 if app.batcher.alive else 503, {"status": "ok" if app.batcher.alive else "down"})
        if path in ("/v1/completions", "/v1/chat/completions"):
            raise APIError(405, f"use POST for {path}")
        raise APIError(404, f"Invalid URL (GET {self.path})")

    def _post(self) -> None:
        self._authorize()
        path = self.path.split("?", 1)[0].rstrip("/")
        if path not in ("/v1/completions", "/v1/chat/completions"):
            self.close_connection = True  # the body is left unread
            raise APIError(404, f"Invalid URL (POST {self.path})")
        body = self._read_json()
        req, job = self.server.app.prepare(body, chat=path.endswith("chat/completions"))
        if not req.stream:
            return self._send_json(200, self.server.app.respond(req, job))
        self._stream(req, job)

    def _stream(self, req, job) -> None:
        chunks = self.server.app.stream(req, job)
        try:
            first = next(chunks)  # errors before any byte is sent are answered as plain JSON errors
        except BaseException:
            job.cancelled.set()
            raise
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self._write_event(first)
            for chunk in chunks:
                self._write_event(chunk)
        except CLIENT_GONE:
            job.cancelled.set()
            self.close_connection = True
            return
        except APIError as err:  # headers are out: the error becomes an event of the stream
            self._write_event(err.body())
        except Exception as exc:
            job.cancelled.set()
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            self._write_event(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type_="server_error").body())
        self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")

    def _write_event(self, obj: dict) -> None:
        self._write_chunk(b"data: " + json.dumps(obj).encode("utf-8") + b"\n\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    """One thread per connection, at most ``max_connections`` of them (module docstring, point 5)."""

    daemon_threads = True
    # the listen backlog (socketserver's default is 5): connections that arrive in a burst wait in
    # the kernel's queue for the accept loop, instead of being retried by the client a second later
    request_queue_size = 256
    app: ServeApp
    log_requests: bool
    api_key: str | None
    read_timeout_s: float

    def bound(self, max_connections: int) -> None:
        self.slots = threading.BoundedSemaphore(max_connections)
        self.max_connections, self.refused = max_connections, 0

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            return self._refuse(request, client_address)
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: give the slot back
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def _refuse(self, request: socket.socket, client_address) -> None:
        """Answer 503 from the accepting thread, without reading the request: a thread per refused
        connection is what the bound exists to prevent."""
        body = json.dumps(APIError(503, f"the server is at its limit of {self.max_connections} connections; "
                                        "retry shortly", type_="server_error").body()).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
                "\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
        try:
            request.settimeout(0.5)  # a few hundred bytes into a fresh socket's buffer: no real wait
            request.sendall(head + body)
        except OSError:
            pass
        if self.log_requests:
            sys.stderr.write(f"[serve] {client_address[0]} refused: {self.max_connections} connections open\n")
        self.shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        """A client that went away (reset, broken pipe, timed out) gets a log line, not a traceback."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError | TimeoutError):
            return super().handle_error(request, client_address)
        if self.log_requests:
            sys.stderr.write(f"[serve] {client_address[0]} connection lost: {type(exc).__name__}: {exc}\n")


class OpenAIServer:
    """The HTTP server around a ``ServeApp``; ``port=0`` picks a free port (see ``.port``)."""

    def __init__(self, engine, tokenizer, options: ServeOptions, host: str = "127.0.0.1", port: int = 8000,
                 logits_processors=(), log_requests: bool = True, api_key: str | None = None,
                 read_timeout_s: float = READ_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS):
        if api_key is not None and not api_key.strip():
            raise ValueError("the API key is empty")
        if not read_timeout_s > 0:
            raise ValueError(f"read_timeout_s must be > 0, got {read_timeout_s}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.app = ServeApp(engine, tokenizer, options, logits_processors)
        self.httpd = _Server((host, port), Handler)
        self.httpd.app, self.httpd.log_requests, self.httpd.api_key = self.app, log_requests, api_key
        self.httpd.read_timeout_s = read_timeout_s
        self.httpd.bound(max_connections)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return self.httpd.server_address[0]

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def serve_forever(self) -> None:
        """Serve in this thread until ``shutdown`` (or Ctrl-C in the caller)."""
        if not self.app.batcher.alive:
            self.app.batcher.start()
        self.httpd.serve_forever()

    def start(self) -> OpenAIServer:
        """Serve from a background thread; returns self."""
        self.app.batcher.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="parallel-r1-http", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
        self.httpd.server_close()
        self.app.batcher.stop()

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()
