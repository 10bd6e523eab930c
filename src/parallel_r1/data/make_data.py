"""``parallel-r1 make-data``: cold-start SFT data from an OpenAI-compatible teacher (docs/paper.md section 2).

For every (problem, sample) pair the teacher is prompted once (``prompts.py`` template); its answer is
kept only if the project's own checks pass, in this order (the first failure is the reason):
1. the request succeeded after retries (else ``request_failed``: no answer, so nothing was judged);
2. the format is valid by ``parallel_r1.format`` (else ``format_error``);
3. it holds at least one valid ``<Parallel>`` block (else ``no_block``);
4. its final answer matches the gold one by ``parallel_r1.rewards.judge`` (else ``wrong_answer``).
Kept responses are stored canonicalised (``format.canonicalize``: nothing between the tags of a
block), which is the form the structured attention of Unseen training is defined on.

Resumable: pairs already in ``accepted.jsonl`` or ``rejected.jsonl`` are skipped, so running the same
command again after a crash (even SIGKILL) finishes the set with every pair recorded exactly once
(``cold_start_store.py``). Pairs whose request failed are the exception: a run with any of them exits
1 with their count, and the next run asks them again, unless ``--give-up-failed`` records that they
are not to be asked again (``--retry-failed`` later re-asks those given up too). Before any pair is
asked, the server's model list is fetched (``GET /models``): a server that never answers stops the
run there with one line, instead of failing every pair in turn.

The API key is read from an environment variable (``PARALLEL_R1_API_KEY``, then ``OPENAI_API_KEY``,
or the one named by ``--api-key-env``), never from the command line, and never written anywhere.

Departures from the paper: the reference generation script was never released; its filter is
described as format validity only (Table 1: 83.7% valid on GSM8K). We also require a correct answer,
and report both rates (``valid_parallel_format_rate``: valid format with >= 1 valid block, and
``success_rate``, in ``summary.json``). A reasoning model's ``<think>...</think>`` preamble is cut off
before checking (``--keep-think`` keeps it).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from parallel_r1.data.cold_start_store import (
    REJECTED,
    RecordStore,
    StoreError,
    check_run_record,
    drop_request_failures,
    export_parquet,
    find_summaries,
    give_up_request_failures,
    is_open_failure,
    read_records,
    report_table,
    summarize,
)
from parallel_r1.data.problem import Problem
from parallel_r1.data.problems import ProblemSourceError, load_problems
from parallel_r1.data.prompts import TemplateError, load_template, render, template_name
from parallel_r1.data.teacher_client import (
    APIS,
    ClientConfig,
    EndpointError,
    RequestFailed,
    TeacherClient,
    TeacherFatalError,
    api_base,
    redact_url,
    scrub,
)
from parallel_r1.format import canonicalize
from parallel_r1.rewards import judge

API_KEY_ENVS = ("PARALLEL_R1_API_KEY", "OPENAI_API_KEY")
THINK_RE = re.compile(r"^.*</think>", re.DOTALL)
RESUME_KEYS = ("problems", "model", "template_sha256", "api")


@dataclass(frozen=True)
class MakeDataConfig:
    """One make-data run over one problem set; ``output`` is its folder."""

    endpoint: str
    problems: str
    output: Path
    samples: int = 1
    model: str | None = None  # None: the first model the server lists
    data_dir: Path | None = None
    limit: int | None = None
    problem_seed: int = 0  # generation seed of the toy sets
    prompt: str = "parallel"
    api: str = "chat"
    concurrency: int = 16
    max_retries: int = 6
    timeout: float = 300.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    temperature: float | None = 0.6
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None  # when set, request seed = seed + sample (reproducible on vLLM)
    strip_think: bool = True
    retry_failed: bool = False  # re-ask pairs given up on earlier (failed pairs are always re-asked)
    give_up_failed: bool = False  # record earlier failed pairs as given up instead of asking again
    parquet: bool = True
    api_key_env: str | None = None
    show_progress: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        assert self.samples >= 1, f"samples must be >= 1, got {self.samples}"
        assert self.concurrency >= 1, f"concurrency must be >= 1, got {self.concurrency}"
        assert not (self.retry_failed and self.give_up_failed), "retry_failed and give_up_failed exclude each other"

    def sampling(self, sample: int) -> dict:
        """Request parameters for one sample (unset ones are left to the server)."""
        params = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}
        if self.seed is not None:
            params["seed"] = self.seed + sample
        return {k: v for k, v in params.items() if v is not None}


class ApiKeyError(ValueError):
    """The environment variable named for the API key is not set."""


class TeacherUnreachable(RuntimeError):
    """The endpoint gave no usable answer to ``GET /models`` after the retries: stop before asking pairs."""


def resolve_api_key(env_name: str | None = None) -> str | None:
    """The API key from ``env_name``, else the first of ``API_KEY_ENVS`` that is set; None: no auth."""
    names = (env_name,) if env_name else API_KEY_ENVS
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    if env_name:
        raise ApiKeyError(f"environment variable {env_name} (--api-key-env) is not set")
    return None


# ---------------------------------------------------------------- filtering


def strip_thinking(text: str) -> str:
    """Cut everything up to the last ``</think>`` (R1-style models reason there before answering)."""
    return THINK_RE.sub("", text, count=1)


def classify(problem: Problem, sample: int, prompt: str, text: str, strip_think: bool) -> tuple[bool, dict]:
    """(accepted?, record) for one teacher response (module docstring, checks 2-4).

    Runs in worker threads; its imports (format, rewards) are made at module level, in the main
    thread, so that no two threads import-compile at once (CPython 3.11 < 3.11.8 can corrupt its AST
    state then: gh-106905)."""
    if strip_think:
        text = strip_thinking(text)
    text = canonicalize(text.strip())
    verdict = judge(text, problem.answer)
    base = {"problem_id": problem.id, "sample": sample}
    if not verdict.format_valid:
        first = next((e for e in verdict.errors if e.startswith("format:")), "format: invalid")
        return False, base | {"reason": "format_error", "detail": first.removeprefix("format: "), "response": text}
    if verdict.num_valid_blocks == 0:
        return False, base | {"reason": "no_block", "detail": "no valid <Parallel> block", "response": text}
    if not verdict.correct:
        detail = f"extracted {verdict.extracted!r}, gold {problem.answer!r}"
        return False, base | {"reason": "wrong_answer", "detail": detail, "response": text}
    return True, base | {"prompt": prompt, "response": text, "answer": problem.answer, "question": problem.question}


# ---------------------------------------------------------------- generation


def pending_pairs(problems: list[Problem], samples: int, done: set) -> list[tuple[Problem, int]]:
    return [(p, s) for p in problems for s in range(samples) if (p.id, s) not in done]


async def _worker(queue: asyncio.Queue, client: TeacherClient, cfg: MakeDataConfig, model: str,
                  template: str, store: RecordStore, on_done) -> None:
    while True:
        try:
            problem, sample = queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        prompt = render(template, problem)
        try:
            completion = await client.complete(prompt, model, cfg.sampling(sample))
        except RequestFailed as exc:
            record = {"problem_id": problem.id, "sample": sample, "reason": "request_failed", "detail": str(exc)}
            accepted = False
        else:
            # judging may call math-verify (a worker-process round trip): keep the event loop free
            accepted, record = await asyncio.to_thread(
                classify, problem, sample, prompt, completion.text, cfg.strip_think)
        store.append(accepted, record)
        on_done()


async def _run_workers(pairs, client, cfg, model, template, store, on_done) -> None:
    """``cfg.concurrency`` workers drain one queue; the first fatal error cancels the rest."""
    queue: asyncio.Queue = asyncio.Queue()
    for pair in pairs:
        queue.put_nowait(pair)
    tasks = [asyncio.create_task(_worker(queue, client, cfg, model, template, store, on_done))
             for _ in range(min(cfg.concurrency, max(len(pairs), 1)))]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for task in pending:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)  # collects every failure once
    failures = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
    if failures:
        raise failures[0]


async def _resolve_model(client: TeacherClient, model: str | None) -> str:
    """``model``, else the server's first. The listing is fetched even with ``model`` set: it is the
    one request that tells a dead endpoint from failing pairs."""
    base = redact_url(client.base)
    try:
        models = await client.models()
    except RequestFailed as exc:
        if model and exc.responded:
            return model  # it speaks HTTP; the completion requests themselves will tell
        raise TeacherUnreachable(_unreachable_message(base, exc, model)) from exc
    except TeacherFatalError:
        if model:
            return model  # e.g. no /models route; a real refusal comes back on the first request
        raise
    if model:
        return model
    if not models:
        raise TeacherFatalError(f"{base}/models lists no model; pass --model")
    return models[0]


def _unreachable_message(base: str, exc: RequestFailed, model: str | None) -> str:
    if not exc.responded:
        return (f"no teacher answers at {base}: GET {base}/models {exc}; is a server listening there? "
                f"(--max-retries and --backoff-max set how long to keep trying)")
    hint = "" if model else "; pass --model if it serves completions without listing models"
    return f"the teacher at {base} is not an OpenAI-compatible server: GET {base}/models {exc}{hint}"


def _settle_failures(cfg: MakeDataConfig, log) -> None:
    """Pairs whose request failed before: give up on them, or drop their rows so that they are asked again."""
    if cfg.give_up_failed:
        if n := give_up_request_failures(cfg.output):
            log(f"make-data: gave up on {n} pairs whose request failed (not asked again; --retry-failed asks them)")
        return
    if n := drop_request_failures(cfg.output, include_given_up=cfg.retry_failed):
        log(f"make-data: asking again {n} pairs whose request failed before")


def _run_record(cfg: MakeDataConfig, model: str, template: str) -> dict:
    return {
        "problems": cfg.problems,
        "model": model,
        "endpoint": redact_url(cfg.endpoint),
        "api": cfg.api,
        "template": template_name(cfg.prompt),
        "template_sha256": hashlib.sha256(template.encode()).hexdigest(),
        "sampling": cfg.sampling(0) | ({"seed": f"{cfg.seed} + sample"} if cfg.seed is not None else {}),
        "strip_think": cfg.strip_think,
    }


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("make-data"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=Console(stderr=True), transient=True, disable=not enabled)


async def run_async(cfg: MakeDataConfig, api_key: str | None, log=print) -> dict:
    """Generate, filter and record every missing pair of one problem set; returns the summary, whose
    ``request_failed`` counts the pairs that got no answer (the next run asks them again)."""
    problems = load_problems(cfg.problems, cfg.data_dir, cfg.limit, cfg.problem_seed)
    template = load_template(cfg.prompt)
    client_cfg = ClientConfig(cfg.endpoint, api_key, cfg.api, cfg.timeout, cfg.max_retries, cfg.backoff_base,
                              cfg.backoff_max, max_connections=cfg.concurrency)
    async with TeacherClient(client_cfg, random.Random()) as client:
        model = await _resolve_model(client, cfg.model)
        record = _run_record(cfg, model, template)
        cfg.output.mkdir(parents=True, exist_ok=True)
        check_run_record(cfg.output, record, RESUME_KEYS)
        _settle_failures(cfg, log)
        with RecordStore(cfg.output, secret=api_key) as store:
            pairs = pending_pairs(problems, cfg.samples, store.done)
            total = len(problems) * cfg.samples
            log(f"make-data: {cfg.problems} -> {cfg.output}: {len(pairs)} of {total} pairs to ask "
                f"{record['endpoint']} (model {model})")
            with _progress(cfg.show_progress) as progress:
                task = progress.add_task("make-data", total=total, completed=total - len(pairs))
                await _run_workers(pairs, client, cfg, model, template, store,
                                   lambda: progress.advance(task))
    parquet = export_parquet(cfg.output, {p.id: i for i, p in enumerate(problems)}, cfg.problems) if cfg.parquet else None
    if cfg.parquet and parquet is None:
        log("make-data: pyarrow is not installed, so no sft.parquet was written (pip install pyarrow)")
    meta = {k: record[k] for k in ("problems", "model", "template", "endpoint")}
    meta.update(num_problems=len(problems), samples=cfg.samples, parquet=parquet.name if parquet else None)
    return summarize(cfg.output, meta)


def run(cfg: MakeDataConfig, log=print) -> dict:
    """Synchronous entry point; the API key comes from the environment (``resolve_api_key``)."""
    return asyncio.run(run_async(cfg, resolve_api_key(cfg.api_key_env), log))


# ---------------------------------------------------------------- CLI


def _slug(spec: str) -> str:
    name = Path(spec).stem if ("/" in spec or "." in spec) else spec
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "problems"


def _echo_err(message: str) -> None:
    typer.echo(message, err=True)


def _summary_line(s: dict) -> str:
    r = s["rejected"]
    given_up = f", given up {s['given_up']}" if s["given_up"] else ""
    return (f"make-data: {s['problems']}: {s['accepted']}/{s['pairs']} accepted (success {100 * s['success_rate']:.1f}%); "
            f"answered {s['answered']} (valid parallel format {100 * s['valid_parallel_format_rate']:.1f}%), "
            f"rejected: format_error {r['format_error']}, no_block {r['no_block']}, wrong_answer {r['wrong_answer']}; "
            f"request failed {s['request_failed']}{given_up}")


def _failures_line(failed: int, pairs: int, example: str) -> str:
    return (f"error: {failed} of {pairs} pairs got no answer after their retries ({example}; all in "
            f"rejected.jsonl); they are not done: the same command asks them again, --give-up-failed stops asking")


def _failure_example(directory: Path) -> str:
    """One open failure's pair and detail, cut short: enough to tell a dead server from a bad prompt."""
    record = next(r for r in read_records(directory / REJECTED) if is_open_failure(r))
    detail = record.get("detail", "")
    detail = detail if len(detail) <= 160 else detail[:160] + "..."
    return f"e.g. {record['problem_id']} sample {record['sample']}: {detail}"


def make_data(
    output: Annotated[Path, typer.Option("--output", "-o", help="output folder (one sub-folder per set when several)")],
    endpoint: Annotated[str | None, typer.Option(help="teacher base URL, e.g. http://127.0.0.1:8000/v1")] = None,
    problems: Annotated[list[str] | None, typer.Option(
        "--problems", "-p", help="named set (gsm8k, gsm8k-train, math500, math300, aime24, aime25, amc23, dapo, "
                                 "toy-easy, toy-hard) or a JSONL/JSON/parquet file; repeat for several")] = None,
    model: Annotated[str | None, typer.Option(help="model name; default: the server's first model")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="folder with the named sets' JSONL files "
                                                       "(default: $PARALLEL_R1_DATA_DIR)")] = None,
    limit: Annotated[int | None, typer.Option(min=0, help="first N problems of each set")] = None,
    samples: Annotated[int, typer.Option(min=1, help="teacher samples per problem")] = 1,
    prompt: Annotated[str, typer.Option(help="prompt template: parallel, sequential, or a file with {problem}")] = "parallel",
    api: Annotated[str, typer.Option(help="chat (/chat/completions) or completions (/completions)")] = "chat",
    concurrency: Annotated[int, typer.Option(min=1, help="requests in flight")] = 16,
    max_retries: Annotated[int, typer.Option(min=0, help="retries per request (429, 5xx, timeouts, drops)")] = 6,
    timeout: Annotated[float, typer.Option(min=0.001, help="seconds per request")] = 300.0,
    backoff_base: Annotated[float, typer.Option(min=0.0, help="first retry waits about this many seconds")] = 1.0,
    backoff_max: Annotated[float, typer.Option(min=0.0, help="longest wait between retries, seconds")] = 60.0,
    temperature: Annotated[float | None, typer.Option(help="sampling temperature")] = 0.6,
    top_p: Annotated[float | None, typer.Option(help="nucleus sampling; default: the server's")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="response length cap; default: the server's")] = None,
    seed: Annotated[int | None, typer.Option(help="request seed = SEED + sample index")] = None,
    problem_seed: Annotated[int, typer.Option(help="generation seed of the toy sets")] = 0,
    keep_think: Annotated[bool, typer.Option("--keep-think", help="keep a <think>...</think> preamble")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="also re-ask pairs given up with "
                                                                      "--give-up-failed (other failed pairs "
                                                                      "are always re-asked)")] = False,
    give_up_failed: Annotated[bool, typer.Option("--give-up-failed", help="record the pairs whose request failed "
                                                                          "in earlier runs as given up: not "
                                                                          "asked again, no error exit")] = False,
    parquet: Annotated[bool, typer.Option(help="also write sft.parquet (needs pyarrow)")] = True,
    api_key_env: Annotated[str | None, typer.Option(help="env var holding the API key (default: "
                                                         "PARALLEL_R1_API_KEY, then OPENAI_API_KEY)")] = None,
    report: Annotated[bool, typer.Option("--report", help="print a Table-1 style Markdown table of the "
                                                          "run(s); without --endpoint, only report on --output")] = False,
) -> None:
    """Ask a teacher for parallel-thinking traces, keep the valid and correct ones, write an SFT set."""
    if endpoint is None:
        if not report:
            raise typer.BadParameter("required unless --report is given", param_hint="--endpoint")
        _print_report([output])
        return
    if not problems:
        raise typer.BadParameter("name at least one problem set or file", param_hint="--problems")
    if api not in APIS:
        raise typer.BadParameter(f"expected one of {', '.join(APIS)}, got {api!r}", param_hint="--api")
    if retry_failed and give_up_failed:
        raise typer.BadParameter("cannot be combined with --retry-failed", param_hint="--give-up-failed")
    if backoff_base > backoff_max:
        raise typer.BadParameter(f"{backoff_base} is above --backoff-max {backoff_max}", param_hint="--backoff-base")
    try:
        api_base(endpoint)
    except EndpointError as exc:
        raise typer.BadParameter(str(exc), param_hint="--endpoint") from exc
    try:
        api_key = resolve_api_key(api_key_env)
    except ApiKeyError as exc:
        raise typer.BadParameter(str(exc), param_hint="--api-key-env") from exc
    outputs = [output] if len(problems) == 1 else [output / _slug(p) for p in problems]
    failed, pairs, example = 0, 0, ""
    for spec, out in zip(problems, outputs, strict=True):
        cfg = MakeDataConfig(
            endpoint=endpoint, problems=spec, output=out, samples=samples, model=model, data_dir=data_dir,
            limit=limit, problem_seed=problem_seed, prompt=prompt, api=api, concurrency=concurrency,
            max_retries=max_retries, timeout=timeout, backoff_base=backoff_base, backoff_max=backoff_max,
            temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed, strip_think=not keep_think,
            retry_failed=retry_failed, give_up_failed=give_up_failed, parquet=parquet, api_key_env=api_key_env, show_progress=sys.stderr.isatty(),
        )
        try:
            summary = asyncio.run(run_async(cfg, api_key, log=_echo_err))
        except (ProblemSourceError, TemplateError, StoreError, EndpointError) as exc:
            _echo_err(f"error: {scrub(str(exc), api_key)}")
            raise typer.Exit(2) from exc
        except TeacherFatalError as exc:
            _echo_err(f"error: the teacher refused the request: {scrub(str(exc), api_key)}")
            raise typer.Exit(1) from exc
        except TeacherUnreachable as exc:
            _echo_err(f"error: {scrub(str(exc), api_key)}")
            raise typer.Exit(1) from exc
        _echo_err(_summary_line(summary))
        if summary["request_failed"]:
            example = example or _failure_example(out)
        failed, pairs = failed + summary["request_failed"], pairs + summary["pairs"]
    if report:
        _print_report(outputs)
    if failed:
        _echo_err(scrub(_failures_line(failed, pairs, example), api_key))
        raise typer.Exit(1)


def _print_report(directories: list[Path]) -> None:
    paths = find_summaries(directories)
    if not paths:
        _echo_err(f"error: no summary.json in {', '.join(map(str, directories))} or their sub-folders")
        raise typer.Exit(2)
    try:
        table = report_table(paths)
    except StoreError as exc:
        _echo_err(f"error: {exc}")
        raise typer.Exit(2) from exc
    typer.echo(table)


__all__ = ["MakeDataConfig", "classify", "make_data", "run", "run_async", "strip_thinking"]
