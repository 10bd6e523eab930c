"""Markdown table of an eval result in the shape of the paper's Table 2 (docs/paper.md 6).

Columns: method, par.% (parallel ratio averaged over benchmarks), one column per benchmark
(``mean/pass`` at k when a benchmark has several samples, else the mean alone, as the paper's MATH
column), avg (unweighted mean of the mean@k figures). Figures are percentages with one decimal.
"""

from __future__ import annotations

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


def markdown_table(result: dict, method: str) -> str:
    """Table 2-shaped Markdown for ``result`` = ``{"benchmarks": {...}, "average": {...}}``."""
    benchmarks: dict[str, dict] = result["benchmarks"]
    average: dict = result["average"]
    header = ["method", "par.%"] + [_header(n, m) for n, m in benchmarks.items()] + ["avg"]
    row = [method.replace("|", "\\|"), _pct(average["parallel_ratio"])]
    row += [_cell(m) for m in benchmarks.values()] + [_pct(average["mean_at_k"])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), "| " + " | ".join(row) + " |"]
    return "\n".join(lines)


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
