"""The output folder of ``make-data``: append-only record files, the summary, the parquet export, the report.

Layout of ``DIR``:
- ``accepted.jsonl``: one SFT row per kept (problem, sample): ``problem_id``, ``sample``, ``prompt``,
  ``response`` (canonical), ``answer``, ``question``.
- ``rejected.jsonl``: ``problem_id``, ``sample``, ``reason`` (one of ``REASONS``), ``detail``, and the
  ``response`` when there was one. A ``request_failed`` row (no answer after the retries) carries
  ``given_up: true`` once the user gave up on its pair (``give_up_request_failures``).
- ``run.json``: what the run was made with (problem set, model, prompt template hash, sampling).
- ``summary.json``: counts per reason, ``success_rate`` and ``valid_parallel_format_rate`` (see
  ``summarize``).
- ``sft.parquet``: the accepted rows in the layout verl's SFT trainer reads (see ``export_parquet``).

Crash safety: every record is one line written with a single ``write`` and flushed at once, so a
SIGKILL loses at most the requests in flight and can tear at most the last line. ``read_records``
truncates a torn last line away (and only the last: damage anywhere else is an error); a pair is
"done" once it is in either file, so a restarted run generates exactly the missing pairs. A request
failure is not "done" (the teacher never judged the pair): the next run asks it again, unless the user
gave up on it, which is then recorded in its row.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from parallel_r1.files import read_json

ACCEPTED = "accepted.jsonl"
REJECTED = "rejected.jsonl"
SUMMARY = "summary.json"
RUN = "run.json"
PARQUET = "sft.parquet"
ANSWERED_REASONS = ("format_error", "no_block", "wrong_answer")  # the teacher answered, the checks said no
REASONS = (*ANSWERED_REASONS, "request_failed")

Key = tuple[str, int]  # (problem_id, sample)


class StoreError(RuntimeError):
    """The output folder is damaged or belongs to a different run; the message says which file."""


def read_records(path: Path, repair: bool = False) -> list[dict]:
    """All records of a JSONL file. A last line without its newline (a write cut by a kill) is
    dropped, and with ``repair`` cut off the file; any other bad line is a ``StoreError``."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # 0 when there is no complete line at all
    if end < len(data) and repair:
        with open(path, "r+b") as f:
            f.truncate(end)
    records = []
    for line_no, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
        try:
            record = json.loads(line)
            assert isinstance(record, dict) and isinstance(record.get("problem_id"), str)
            assert isinstance(record.get("sample"), int)
        except (ValueError, AssertionError) as exc:
            raise StoreError(f"{path}, line {line_no}: not a record of make-data ({exc or 'bad fields'})") from exc
        records.append(record)
    return records


def record_key(record: dict) -> Key:
    return record["problem_id"], record["sample"]


def is_open_failure(record: dict) -> bool:
    """A request that failed and that nobody gave up on: its pair is still to be asked."""
    return record.get("reason") == "request_failed" and not record.get("given_up")


class RecordStore:
    """Appends records to ``accepted.jsonl`` / ``rejected.jsonl``. ``done`` holds the pairs that need no
    more asking; ``failed`` the pairs whose request failed (recorded, but asked again next run)."""

    def __init__(self, directory: Path, secret: str | None = None):
        self.dir = directory
        self.secret = secret  # replaced by *** in every line written, whatever its source
        self.dir.mkdir(parents=True, exist_ok=True)
        self.done: set[Key] = set()
        self.failed: set[Key] = set()
        for name in (ACCEPTED, REJECTED):
            for record in read_records(self.dir / name, repair=True):
                key = record_key(record)
                if key in self.done or key in self.failed:
                    raise StoreError(f"{self.dir}: pair {key} is recorded twice; the folder was edited by hand?")
                (self.failed if is_open_failure(record) else self.done).add(key)
        # held open for the store's lifetime (closed in close()); one write + flush per record
        self._files = {name: open(self.dir / name, "a", encoding="utf-8")  # noqa: SIM115
                       for name in (ACCEPTED, REJECTED)}

    def append(self, accepted: bool, record: dict) -> None:
        key = record_key(record)
        assert key not in self.done and key not in self.failed, f"pair {key} already recorded"
        f = self._files[ACCEPTED if accepted else REJECTED]
        line = json.dumps(record, ensure_ascii=False)
        if self.secret:
            line = line.replace(self.secret, "***")
        f.write(line + "\n")
        f.flush()
        (self.failed if is_open_failure(record) else self.done).add(key)

    def close(self) -> None:
        for f in self._files.values():
            f.close()

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def drop_request_failures(directory: Path, include_given_up: bool = False) -> int:
    """Remove the open ``request_failed`` rows (with ``include_given_up``, the given-up ones too) so that
    their pairs are generated again; returns how many."""
    def drop(r: dict) -> bool:
        return is_open_failure(r) or (include_given_up and r.get("reason") == "request_failed")

    return _rewrite_rejected(directory, lambda r: None if drop(r) else r)


def give_up_request_failures(directory: Path) -> int:
    """Mark the open ``request_failed`` rows ``given_up`` so that no run asks their pairs again (until
    ``drop_request_failures(include_given_up=True)``); returns how many."""
    return _rewrite_rejected(directory, lambda r: r | {"given_up": True} if is_open_failure(r) else r)


def _rewrite_rejected(directory: Path, change) -> int:
    """Rewrite ``rejected.jsonl`` with ``change(row)`` (None drops the row); returns how many rows changed.
    Written to a temporary name and renamed over the old file (atomic on POSIX), so a kill leaves one
    of the two versions, either of which a rerun completes."""
    path = directory / REJECTED
    records = read_records(path, repair=True)
    new = [change(r) for r in records]
    changed = sum(n != r for n, r in zip(new, records, strict=True))
    if changed:
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in new if r is not None)
        os.replace(tmp, path)
    return changed


# ---------------------------------------------------------------- run record


def check_run_record(directory: Path, record: dict, keys: tuple[str, ...]) -> None:
    """Write ``run.json`` on the first run; on a resume, refuse if any of ``keys`` changed (mixing
    two prompts or two teachers in one SFT set would make its success rate meaningless)."""
    path = directory / RUN
    if path.exists():
        old = read_json(path, "make-data run record", StoreError)
        if not isinstance(old, dict):
            raise StoreError(f"{path}: not a make-data run record (expected a JSON object); use a new --output")
        changed = [k for k in keys if old.get(k) != record.get(k)]
        if changed:
            diffs = "; ".join(f"{k}: was {old.get(k)!r}, now {record.get(k)!r}" for k in changed)
            raise StoreError(f"{directory} holds a run made differently ({diffs}); use a new --output")
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- summary


def summarize(directory: Path, meta: dict) -> dict:
    """Counts over every record in the folder, written to ``summary.json``.

    ``answered`` pairs got a response: ``accepted`` or ``rejected`` (per reason, ``ANSWERED_REASONS``).
    The others got none after the retries: ``request_failed`` (asked again by the next run) and
    ``given_up``. ``success_rate`` = accepted / recorded pairs. ``valid_parallel_format_rate`` =
    answered responses with a valid format *and* >= 1 valid block (accepted + wrong_answer) / answered:
    the quantity of docs/paper.md Table 1."""
    accepted = read_records(directory / ACCEPTED)
    rejected = read_records(directory / REJECTED)
    reasons = Counter(r["reason"] for r in rejected)
    unknown = set(reasons) - set(REASONS)
    assert not unknown, f"{directory / REJECTED}: unknown reasons {sorted(unknown)}"
    failed = sum(map(is_open_failure, rejected))
    given_up = reasons["request_failed"] - failed
    pairs = len(accepted) + len(rejected)
    answered = pairs - reasons["request_failed"]
    summary = dict(meta)
    summary.update(
        pairs=pairs,
        answered=answered,
        accepted=len(accepted),
        rejected={reason: reasons[reason] for reason in ANSWERED_REASONS},
        request_failed=failed,
        given_up=given_up,
        success_rate=len(accepted) / pairs if pairs else 0.0,
        valid_parallel_format_rate=(len(accepted) + reasons["wrong_answer"]) / answered if answered else 0.0,
        problems_with_accepted=len({r["problem_id"] for r in accepted}),
    )
    (directory / SUMMARY).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


# ---------------------------------------------------------------- parquet export


def export_parquet(directory: Path, order: dict[str, int], data_source: str) -> Path | None:
    """Write ``sft.parquet`` from ``accepted.jsonl``; None when pyarrow is not installed.

    Columns: ``prompt`` and ``response`` (strings: verl's SFT dataset reads these two by default,
    ``data.prompt_key=prompt data.response_key=response``, and wraps the prompt as one user turn with
    the chat template), ``problem_id``, ``sample``, ``answer``, ``data_source``, and ``extra_info``
    (a struct with ``question``, ``answer``, ``problem_id``, ``sample``: for
    ``data.prompt_key=extra_info data.prompt_dict_keys=['question']`` style configs). Rows are sorted
    by the problem's position in its set, then sample, so the file does not depend on completion order.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    rows = read_records(directory / ACCEPTED)
    rows.sort(key=lambda r: (order.get(r["problem_id"], len(order)), r["problem_id"], r["sample"]))
    table = pa.table({
        "prompt": [r["prompt"] for r in rows],
        "response": [r["response"] for r in rows],
        "problem_id": [r["problem_id"] for r in rows],
        "sample": pa.array([r["sample"] for r in rows], type=pa.int32()),
        "answer": [r["answer"] for r in rows],
        "data_source": [data_source] * len(rows),
        "extra_info": [
            {"question": r.get("question", ""), "answer": r["answer"], "problem_id": r["problem_id"],
             "sample": r["sample"]}
            for r in rows
        ],
    })
    path = directory / PARQUET
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- report (Table 1)


def find_summaries(directories: list[Path]) -> list[Path]:
    """``summary.json`` of each folder, or of its sub-folders when it has none itself."""
    found = []
    for d in directories:
        if (d / SUMMARY).is_file():
            found.append(d / SUMMARY)
        else:
            found.extend(sorted(d.glob(f"*/{SUMMARY}")))
    return found


def report_table(summary_paths: list[Path]) -> str:
    """A Markdown table in the shape of docs/paper.md Table 1, one row per run."""
    lines = [
        "| problem set | problems | samples | responses | valid parallel format | accepted (valid + correct) | request failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in summary_paths:
        s = read_json(path, "make-data summary", StoreError)
        try:
            failed, valid = _failed_and_valid_rate(s)
            lines.append(
                f"| {s.get('problems', path.parent.name)} | {s.get('num_problems', '?')} | {s['pairs']:,} | "
                f"{s['pairs'] - failed:,} | {100 * valid:.1f}% | {100 * s['success_rate']:.1f}% | {failed:,} |"
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a damaged or foreign summary.json
            raise StoreError(f"{path}: not a make-data summary ({type(exc).__name__}: {exc})") from None
    return "\n".join(lines)


def _failed_and_valid_rate(s: dict) -> tuple[int, float]:
    """(pairs without an answer, valid parallel format rate) of a summary, also of one written before
    the failures were split from the rejections (``rejected.request_failed``, ``valid_format_rate``)."""
    if "answered" in s:
        return s["pairs"] - s["answered"], s["valid_parallel_format_rate"]
    return s["rejected"]["request_failed"], s["valid_format_rate"]
