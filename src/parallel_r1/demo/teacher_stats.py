"""The scripted teacher's success rate per split, on the very problems the demo trains on (Table 1 shape).

The recipe's ``sft`` stage builds its data with ``demo.data:cold_start_rows`` (teacher traces on easy
problems, filtered); its ``rl`` stage draws hard problems (with some easy ones mixed in) with
``demo.data:rl_problems``. Here the same teacher is asked about the SFT problems and the RL stage's
hard problems with the same seeds, every trace goes through
``teacher.check_trace`` (the validation real teacher output gets), and the counts form the table:
valid parallel format, correct answer, kept (both). All traces are written with their checks to
``traces.jsonl`` so any row of the table can be inspected.
"""

from __future__ import annotations

import json
from pathlib import Path

from parallel_r1.data.teacher import check_trace, format_teacher_report, teacher_traces
from parallel_r1.demo.data import cold_start_traces, rl_easy_count, training_problems

SFT_FACTORY = "parallel_r1.demo.data:cold_start_rows"
RL_FACTORY = "parallel_r1.demo.data:rl_problems"


def _stage(raw: dict, name: str, factory: str) -> dict:
    stage = next(s for s in raw["stages"] if s["name"] == name)
    data = stage["data"]
    if data.get("factory") != factory:
        raise ValueError(f"demo recipe: stage {name!r} must build its data with {factory}, got {data.get('factory')!r}")
    return data.get("kwargs", {})


def split_stats(traces: list[dict], checks: list[dict]) -> dict:
    n = len(traces)
    modes: dict[str, int] = {}
    for t in traces:
        modes[t["teacher"]["mode"]] = modes.get(t["teacher"]["mode"], 0) + 1
    return {
        "samples": n,
        "valid_format": sum(c["valid_format"] for c in checks) / max(n, 1),
        "correct": sum(c["correct"] for c in checks) / max(n, 1),
        "kept": sum(c["kept"] for c in checks) / max(n, 1),
        "modes": dict(sorted(modes.items())),
    }


def teacher_table(raw: dict, out_dir: Path) -> dict:
    """Stats per split (``toy-easy``: the SFT problems; ``toy-hard``: the RL problems) and the
    markdown table; writes ``out_dir/traces.jsonl``."""
    sft, rl = _stage(raw, "sft", SFT_FACTORY), _stage(raw, "rl", RL_FACTORY)
    assert rl.get("split") == "hard", f"demo recipe: the rl stage should draw hard problems, got {rl.get('split')!r}"
    easy = cold_start_traces(sft["n"], sft["seed"], sft["teacher_seed"])
    n_hard = rl["n"] - rl_easy_count(rl["n"], rl.get("easy_share", 0.0))  # the hard problems RL draws
    hard = teacher_traces(training_problems("hard", n_hard, rl["seed"]), sft["teacher_seed"])
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = {}
    with (out_dir / "traces.jsonl").open("w", encoding="utf-8") as f:
        for split, traces in (("toy-easy", easy), ("toy-hard", hard)):
            checks = [check_trace(t) for t in traces]
            for t, c in zip(traces, checks, strict=True):
                f.write(json.dumps({"set": split, **t, "check": c}) + "\n")
            stats[split] = split_stats(traces, checks)
    return {"splits": stats, "teacher_seed": sft["teacher_seed"], "markdown": format_teacher_report(stats)}
