"""``parallel-r1 serve MODEL``: the OpenAI-compatible HTTP API over the branching engine.

The mode, the chat setting and the prompt template of chat requests default to what the model
directory records about its training (``parallel_r1.json``, ``eval.loading.choose_settings``); a flag
wins. The start line says which were used and where they came from.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from parallel_r1.eval.loading import Backend, Compat, DType, Mode, backend_problem


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM (``kill``, ``docker stop``, systemd) both end the server cleanly.

    Installed explicitly: a process started in the background by a non-interactive shell inherits
    SIGINT as ignored, and Python then never raises KeyboardInterrupt for it.
    """

    def stop(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def serve(
    model: Annotated[str, typer.Argument(help="HF hub name or local path of a causal LM whose tokenizer has the tags.")],
    host: Annotated[str, typer.Option(help="Address to bind; beyond loopback, set --api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = 8000,
    served_model_name: Annotated[str | None, typer.Option(help="Model id in the API (default: MODEL's last path part).")] = None,
    mode: Annotated[Mode | None, typer.Option(metavar="MODE", help="unseen, seen or sequential (default: the "
                                                                   "model's record, else unseen).")] = None,
    prompt: Annotated[str | None, typer.Option(help="Template ({problem}) for the last user message of chat "
                                                    "requests: parallel, sequential or a file (default: the "
                                                    "model's record, else none).")] = None,
    chat: Annotated[bool | None, typer.Option("--chat/--no-chat", help="Chat template for chat requests (default: "
                                                                   "the model's record, else when the tokenizer "
                                                                   "has one).")] = None,
    compat: Annotated[Compat, typer.Option(metavar="COMPAT", help="ours, or reference: sample as the reference "
                                                                  "engine does, for its checkpoints (README).")] = "ours",
    num_paths: Annotated[int, typer.Option(min=1, help="Paths forked at each <Parallel> (a request may set num_paths).")] = 2,
    max_blocks: Annotated[int, typer.Option(min=0)] = 4,
    max_path_tokens: Annotated[int | None, typer.Option(min=1, help="Cap on one path's tokens (default: max_tokens).")] = None,
    max_tokens_limit: Annotated[int, typer.Option(min=1, help="Largest max_tokens a request may ask for.")] = 4096,
    default_max_tokens: Annotated[int, typer.Option(min=1, help="max_tokens when a request gives none.")] = 512,
    max_n: Annotated[int, typer.Option(min=1, help="Largest n a request may ask for.")] = 16,
    batch_window_ms: Annotated[float, typer.Option(min=0.0, help="How long to gather requests into one engine call.")] = 10.0,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Rows the engine decodes at once (hf backend).")] = 64,
    backend: Annotated[Backend, typer.Option(metavar="BACKEND", help="Rollout backend: hf (the branching "
                                             "engine) or vllm (make install-vllm).")] = "hf",
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda when available).")] = None,
    dtype: Annotated[DType, typer.Option(metavar="DTYPE", help="auto, float32, bfloat16 or float16; auto: "
                                                               "bfloat16 on a GPU, else float32.")] = "auto",
    quiet: Annotated[bool, typer.Option(help="Do not log each request to stderr.")] = False,
    api_key: Annotated[str | None, typer.Option(envvar="PARALLEL_R1_API_KEY", help="Require 'Authorization: Bearer "
                                                "KEY' on /v1 routes (401 otherwise); the variable keeps it out of ps.")] = None,
    read_timeout: Annotated[float, typer.Option(min=0.001, help="Seconds a client has to send a whole request (and "
                                                "to take each write) before its connection is closed.")] = 30.0,
    max_connections: Annotated[int, typer.Option(min=1, help="Connections served at once; more are answered 503.")] = 128,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads (default: torch's); 1 suits tiny "
                                                      "models on a busy machine.")] = None,
) -> None:
    """Serve MODEL over an OpenAI-compatible API (/v1/models, /v1/completions, /v1/chat/completions)."""
    import torch

    from parallel_r1.engine.backend import HFOptions, RolloutConfig, make_backend
    from parallel_r1.eval.loading import choose_settings, load_model
    from parallel_r1.serve.app import ServeOptions
    from parallel_r1.serve.http import OpenAIServer
    from parallel_r1.serve.protocol import Limits

    if (problem := backend_problem(backend)) is not None:  # before anything loads
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    if default_max_tokens > max_tokens_limit:
        raise typer.BadParameter(f"--default-max-tokens {default_max_tokens} exceeds --max-tokens-limit {max_tokens_limit}")
    if api_key is not None and not api_key.strip():
        raise typer.BadParameter("--api-key (or PARALLEL_R1_API_KEY) is empty")
    if not _is_loopback(host) and api_key is None:
        typer.echo(f"warning: binding {host} without --api-key: anyone who can reach it can use the API", err=True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        settings = choose_settings(model, prompt, chat, mode, default_prompt=None)
        mode = settings.mode
        loaded = load_model(model, device, dtype)
        rollout = RolloutConfig(backend=backend, hf=HFOptions(max_batch_size=max_batch_size))
        engine = make_backend(rollout, loaded.model, loaded.tokenizer, loaded.tag_ids)
        limits = Limits(max_n=max_n, max_tokens=max_tokens_limit, default_max_tokens=default_max_tokens)
        options = ServeOptions(
            model_name=served_model_name or Path(model.rstrip("/")).name, limits=limits, mode=mode, compat=compat,
            num_paths=num_paths, max_blocks=max_blocks, max_path_tokens=max_path_tokens,
            batch_window_s=batch_window_ms / 1000, max_batch_rows=4 * max_batch_size,
            chat_template=settings.chat, prompt_template=settings.template,
        )
        server = OpenAIServer(engine, loaded.tokenizer, options, host, port, log_requests=not quiet, api_key=api_key,
                              read_timeout_s=read_timeout, max_connections=max_connections)
    except (ValueError, OSError) as exc:  # bad model, setting or address
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    _stop_on_signals()
    n = torch.get_num_threads()
    info = engine.info
    where = f"{n} CPU thread{'s' * (n != 1)}" if info.device == "cpu" else info.device
    typer.echo(f"serving {options.model_name} ({mode}, compat {compat}, {num_paths} paths, {where}, "
               f"backend {info.name}, forward: {info.forward_path}) "
               f"at {server.url}/v1", err=True)
    typer.echo(settings.describe(), err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("shutting down", err=True)
    finally:
        server.httpd.server_close()
        server.app.batcher.stop()
        engine.close()
    _exit_now()


def _exit_now() -> None:
    """Exit 0 without interpreter finalisation, once the server and batcher are closed.

    In one fresh-clone test run the process aborted after "shutting down" with "terminate called
    without an active exception" (exit -6): a C++ thread pool torn down during finalisation while
    daemon threads still existed. Nothing is left to clean up at this point, so skip that phase.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
