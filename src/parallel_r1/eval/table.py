"""Markdown table of an eval result in the shape of the paper's Table 2 (docs/paper.md 6).

Columns: method, par.% (parallel ratio averaged over benchmarks), one column per benchmark
(``mean/pass`` at k when a benchmark has several samples, else the mean alone, as the paper's MATH
column), avg (unweighted mean of the mean@k figures). Figures are percentages with one decimal.
A run judged by a scorer other than the default, or by both (``eval.scoring``), gets one row per
scorer, labelled ``METHOD (NAME scorer)``; par.% is the same in each (the first scorer's parse).
"""

from __future__ import annotations

from parallel_r1.eval.scoring import scorer_names, scorer_view

DISPLAY = {"aime24": "AIME24", "aime25": "AIME25", "amc23": "AMC23", "math500": "MATH500", "gsm8k": "GSM8K"}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _header(name: str, metrics: dict) -> str:
    label = DISPLAY.get(name, name)
    return f"{label} m/p@{metrics['samples']}" if metrics["samples"] > 1 else label


def _cell(metrics: dict) -> str:
    if metrics["samples"] > 1:
        return f"{_pct(metrics['mean_at_k'])}/{_pct(metrics['pass_at_k'])}"
    return _pct(metrics["mean_at_k"])


def _row(result: dict, label: str, name: str, first: str) -> str:
    average = scorer_view(result["average"], name, first)
    cells = [label.replace("|", "\\|"), _pct(average["parallel_ratio"])]
    cells += [_cell(scorer_view(m, name, first)) for m in result["benchmarks"].values()]
    return "| " + " | ".join(cells + [_pct(average["mean_at_k"])]) + " |"


def markdown_table(result: dict, method: str) -> str:
    """Table 2-shaped Markdown for ``result`` = ``{"benchmarks": {...}, "average": {...}}`` (and
    ``config.scorer``, default ``default``): one row per scorer the result was judged by."""
    names = scorer_names(result.get("config", {}).get("scorer", "default"))
    header = ["method", "par.%"] + [_header(n, m) for n, m in result["benchmarks"].items()] + ["avg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        label = method if names == ("default",) else f"{method} ({name} scorer)"
        lines.append(_row(result, label, name, names[0]))
    return "\n".join(lines)


def disagreement_lines(result: dict) -> list[str]:
    """One line per benchmark judged by two scorers: how many responses they disagree on, and an
    example (the JSON result holds up to three)."""
    lines = []
    for bench, m in result["benchmarks"].items():
        dis = m.get("disagreements")
        if dis is None:
            continue
        line = f"{bench}: the scorers disagree on {dis['count']} of {dis['responses']} responses"
        if dis["examples"]:
            ex = dis["examples"][0]
            said = ", ".join(f"{s} {'correct' if ok else 'wrong'} on {ex['extracted'][s]!r}"
                             for s, ok in ex["correct"].items())
            line += f" (e.g. {ex['problem_id']} sample {ex['sample_index']}, gold {ex['gold']!r}: {said})"
        lines.append(line)
    return lines


def details_table(result: dict) -> str:
    """Per-benchmark structure figures the paper's table leaves out (format validity, token counts)."""
    header = ["benchmark", "problems", "k", "format-valid %", "valid-par.%", "blocks", "tokens",
              "critical-path tokens", "rel. pos."]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in result["benchmarks"].items():
        pos = m["mean_relative_position"]
        cells = [
            DISPLAY.get(name, name), str(m["num_problems"]), str(m["samples"]),
            _pct(m["format_valid_ratio"]), _pct(m["valid_parallel_ratio"]), f"{m['mean_blocks']:.2f}",
            f"{m['mean_response_tokens']:.1f}", f"{m['mean_critical_path_tokens']:.1f}",
            "-" if pos is None else f"{pos:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
