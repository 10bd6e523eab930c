"""Run benchmarks through the branching engine and score them: the library behind ``parallel-r1 eval``.

1. A benchmark spec is ``NAME`` or ``NAME:K`` (K samples for that one, e.g. ``math500:1`` as the
   paper's MATH column beside ``aime24`` at the default 16). NAME is anything
   ``parallel_r1.data.problems.load_problems`` reads: a named set, ``toy-easy``/``toy-hard``, a file.
2. Problems are rendered with the prompt template, encoded (``loading.encode_prompt``) and sampled
   ``K`` times each, a chunk of prompts per ``Engine.generate`` call; each response is judged by
   the scorer(s) ``--scorer`` names (``eval.scoring``) and reduced to a ``SampleRecord`` for the metrics.
3. Seeds: chunk ``c`` of benchmark ``B`` samples with ``crc32("{seed}/{B}/{c}")``, so a benchmark's
   samples do not depend on which other benchmarks ran before it (or were skipped on resume).
4. Block positions are token-level (``<Parallel>`` index / response length, docs/paper.md 7) from the
   engine's spans; format validity and the answer come from the judge's parse of the text.
5. Everything that can fail before sampling (benchmark names, data files, template, a resume
   conflict) is checked before the model is loaded.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from parallel_r1.data.problem import Problem
from parallel_r1.eval.loading import Backend, encode_prompt
from parallel_r1.eval.metrics import SampleRecord, average_metrics, benchmark_metrics
from parallel_r1.eval.resume import RUN_ONLY_KEYS, ResumeState
from parallel_r1.eval.scoring import average_by_scorer, judge_with, line_fields, scorer_metrics, scorer_names

if TYPE_CHECKING:
    from parallel_r1.engine.backend import RolloutBackend

CHUNK_ROWS_FACTOR = 4  # rows per generate call = factor x engine batch rows: finished rows get refilled


@dataclass
class EvalConfig:
    """Everything that decides the samples of an eval run (the resume fingerprint is built from it)."""

    model: str
    benchmarks: list[str]
    samples: int = 16
    prompt: str = "parallel"
    mode: str = "unseen"
    compat: str = "ours"  # "reference": sample as the reference engine does (engine.rows, point 8)
    scorer: str = "default"  # "reference" or "both" (eval.scoring); in the fingerprint: it decides verdicts
    num_paths: int = 2
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 3000
    max_path_tokens: int | None = None  # None: only the total budget caps a path
    max_summary_tokens: int | None = None
    max_blocks: int = 4
    seed: int = 0
    limit: int | None = None
    batch_size: int = 64  # rows the engine decodes at once
    chat: bool | None = None  # None: use the chat template when the tokenizer has one
    data_dir: str | None = None
    backend: str = "hf"  # the rollout backend (engine.backend); in the fingerprint: it decides the samples

    def __post_init__(self) -> None:
        checks = [(bool(self.benchmarks), "no benchmarks given"),
                  (self.backend in get_args(Backend), f"backend must be one of {get_args(Backend)}, got {self.backend!r}"),
                  (self.samples >= 1, f"samples must be >= 1, got {self.samples}"),
                  (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
                  (self.limit is None or self.limit >= 1, f"limit must be >= 1, got {self.limit}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"EvalConfig: {message}")
        self.sampling(0)  # validates the sampling settings now, with a message naming the bad one
        scorer_names(self.scorer)

    def sampling(self, seed: int):
        from parallel_r1.engine.sampling import SamplingConfig

        return SamplingConfig(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, max_new_tokens=self.max_tokens,
            max_path_tokens=self.max_path_tokens if self.max_path_tokens is not None else self.max_tokens,
            max_summary_tokens=self.max_summary_tokens, num_paths=self.num_paths, max_blocks=self.max_blocks,
            seed=seed, mode=self.mode, compat=self.compat,
        )

    def fingerprint(self, template: str) -> dict:
        """Settings a stored result must share to be reused; the template by content digest. The
        benchmark list, default sample count and data folder are left out: each stored benchmark
        carries its own sample count and data digest (``resume``)."""
        fp = {k: v for k, v in asdict(self).items() if k not in RUN_ONLY_KEYS}
        if fp["compat"] == "ours":  # results stored before the setting existed were sampled so: still resumable
            del fp["compat"]
        fp["prompt_digest"] = digest_text(template)
        return fp

    def record(self, template: str) -> dict:
        """The ``config`` written into the result: the fingerprint plus the run-only settings."""
        return {**self.fingerprint(template), **{k: v for k, v in asdict(self).items() if k in RUN_ONLY_KEYS}}


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    source: str
    samples: int


def digest_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def parse_benchmarks(specs: Sequence[str], default_samples: int) -> list[BenchmarkSpec]:
    """``NAME[:K]`` specs (module docstring, point 1); a file's name is its stem. Names must be unique."""
    out: list[BenchmarkSpec] = []
    for spec in specs:
        source, samples = spec.strip(), default_samples
        head, sep, tail = source.rpartition(":")
        if sep and tail.isdigit() and head:
            source, samples = head, int(tail)
        if not source or samples < 1:
            raise ValueError(f"bad benchmark spec {spec!r}: expected NAME or NAME:K with K >= 1")
        name = Path(source).stem if any(c in source for c in "/\\.") else source
        if any(b.name == name for b in out):
            raise ValueError(f"benchmark {name!r} is listed twice")
        out.append(BenchmarkSpec(name, source, samples))
    return out


def problems_digest(problems: Sequence[Problem]) -> str:
    return digest_text(json.dumps([[p.id, p.question, p.answer] for p in problems]))


def chunk_seed(seed: int, name: str, chunk: int) -> int:
    return zlib.crc32(f"{seed}/{name}/{chunk}".encode())


def to_record(problem: Problem, rollout, verdict) -> SampleRecord:
    n = max(len(rollout.response_ids), 1)
    return SampleRecord(
        problem_id=problem.id, sample_index=rollout.sample_index, correct=bool(verdict.correct),
        format_valid=bool(verdict.format_valid), num_parallel=int(verdict.num_parallel),
        num_valid_blocks=int(verdict.num_valid_blocks), response_tokens=len(rollout.response_ids),
        critical_path_tokens=int(rollout.critical_path_tokens),
        relative_positions=[b.parallel / n for b in rollout.blocks],
    )


def response_row(bench: str, problem: Problem, rollout, verdict, record: SampleRecord) -> dict:
    return {
        "benchmark": bench, "problem_id": problem.id, "sample_index": rollout.sample_index,
        "response": rollout.text, "gold": problem.answer, "extracted": verdict.extracted,
        "finish_reason": rollout.finish_reason, **{k: v for k, v in record.to_dict().items()
                                                   if k not in ("problem_id", "sample_index")},
    }


@dataclass
class BenchmarkRun:
    """One benchmark's inputs: problems with their prompt ids."""

    spec: BenchmarkSpec
    problems: list[Problem]
    prompts: list[list[int]]


def sample_benchmark(engine, run: BenchmarkRun, cfg: EvalConfig, on_chunk: Callable[[int], None] | None = None,
                     logits_processors: Sequence = ()) -> tuple[list[SampleRecord], list[dict]]:
    """Sample and judge every problem of ``run``; returns the records and the response rows. The
    first scorer's verdicts make the records; a second one's go on each row under its name."""
    names = scorer_names(cfg.scorer)
    per_call = max(1, CHUNK_ROWS_FACTOR * cfg.batch_size // run.spec.samples)
    records, rows = [], []
    for c, start in enumerate(range(0, len(run.prompts), per_call)):
        problems = run.problems[start : start + per_call]
        sampling = cfg.sampling(chunk_seed(cfg.seed, run.spec.name, c))
        # processors (tests' scripted policies) are the branching engine's hook, not the backend protocol's
        extra = {"logits_processors": logits_processors} if logits_processors else {}
        rollouts = engine.generate(run.prompts[start : start + per_call], run.spec.samples, sampling, **extra)
        golds = [problems[r.prompt_index].answer for r in rollouts]
        verdicts = judge_with(names, [r.text for r in rollouts], golds)
        for i, rollout in enumerate(rollouts):
            problem, verdict = problems[rollout.prompt_index], verdicts[names[0]][i]
            record = to_record(problem, rollout, verdict)
            records.append(record)
            rows.append(response_row(run.spec.name, problem, rollout, verdict, record))
            rows[-1].update({name: line_fields(verdicts[name][i]) for name in names[1:]})
        if on_chunk is not None:
            on_chunk(len(problems))
    return records, rows


def prepare(cfg: EvalConfig, template: str, tokenizer, chat: bool) -> list[BenchmarkRun]:
    """Load and encode every benchmark (before any sampling, so bad input fails early)."""
    from parallel_r1.data.problems import load_problems
    from parallel_r1.data.prompts import render

    runs = []
    for spec in parse_benchmarks(cfg.benchmarks, cfg.samples):
        problems = load_problems(spec.source, data_dir=cfg.data_dir, limit=cfg.limit, seed=cfg.seed)
        if not problems:
            raise ValueError(f"benchmark {spec.name!r} has no problems")
        prompts = [encode_prompt(tokenizer, render(template, p), chat) for p in problems]
        runs.append(BenchmarkRun(spec, problems, prompts))
    return runs


class ResponsesFile:
    """JSONL of every judged response; on resume, lines of benchmarks that will be re-run are dropped."""

    def __init__(self, path: Path | None, keep: set[str]):
        self.path = path
        if path is None:
            return
        kept = []
        if keep and path.is_file():
            with path.open(encoding="utf-8") as f:
                kept = [ln for ln in f if ln.strip() and json.loads(ln).get("benchmark") in keep]
        path.write_text("".join(kept), encoding="utf-8")

    def append(self, rows: list[dict]) -> None:
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)


def evaluate(engine_factory: Callable[[], RolloutBackend], runs: list[BenchmarkRun], cfg: EvalConfig, state: ResumeState,
             responses: Path | None, progress=None, logits_processors: Sequence = ()) -> dict:
    """Run the benchmarks not finished in ``state``; write the final result; return it.

    ``engine_factory`` is called once, at the first benchmark that needs sampling (so a finished
    run only reprints its table without loading the model); the backend is closed at the end."""
    reuse = {r.spec.name: state.finished(r.spec.name, r.spec.samples, problems_digest(r.problems)) for r in runs}
    out = ResponsesFile(responses, {name for name, m in reuse.items() if m is not None})
    results, engine = {}, None
    try:
        for run in runs:
            name = run.spec.name
            if reuse[name] is not None:
                results[name] = reuse[name]
                continue
            engine = engine if engine is not None else engine_factory()
            on_chunk = progress.start(name, len(run.problems)) if progress is not None else None
            records, rows = sample_benchmark(engine, run, cfg, on_chunk, logits_processors)
            metrics = {"source": run.spec.source, "data_digest": problems_digest(run.problems)}
            metrics.update(benchmark_metrics(records))
            metrics.update(scorer_metrics(records, rows, scorer_names(cfg.scorer)))
            out.append(rows)
            state.record(name, metrics)
            results[name] = metrics
    finally:
        if engine is not None:
            engine.close()
    average = {**average_metrics(results), "by_scorer": average_by_scorer(results, scorer_names(cfg.scorer))}
    result = {"benchmarks": results, "average": average, "config": state.config}
    state.finish(result)
    return result
