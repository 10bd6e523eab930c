"""The demo's report: ``report.json`` (numbers), ``report.md`` (tables) and ``plots/*.png``.

1. ``stages``: per stage-end checkpoint (stage0, sft, ..., rl) the held-out figures; ``hard_accuracy`` and
   ``parallel_ratio`` are on the hard set (the keys the issue fixes), ``easy_*`` on the easy set.
2. ``rl_vs_sft`` / ``rl_vs_start``: the paired difference in hard accuracy, final policy minus the
   SFT checkpoint / minus the checkpoint the final RL stage started from, on the same problems.
3. ``rl_dynamics``: training-time means over the first and the last steps of RL (accuracy, parallel
   ratio, relative block position), read from ``metrics.jsonl``.
4. Plots: ``parallel_r1.report.plots.draw_all`` over ``metrics.jsonl`` (reward / accuracy, parallel
   ratio, relative block position over steps; only RL rows have rollout metrics), and with
   ``--ablation`` the per-arm curves averaged over seeds (``ablation_*.png``).
5. ``targets``: each target of the issue with the measured value and whether it was met; a ``--quick``
   run says that it is not a result.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from parallel_r1.demo.evaluate import paired_difference
from parallel_r1.demo.recipes import COLD_START, FINAL

WALL_TARGET_S = 600.0
RSS_TARGET_MB = 4096.0
DYNAMICS_WINDOW = 10  # RL steps averaged at the start and at the end of training


def _stage_row(ev: dict) -> dict:
    hard, easy = ev["hard"], ev.get("easy")
    row = {
        "hard_accuracy": hard["accuracy"], "hard_accuracy_se": hard["accuracy_se"],
        "parallel_ratio": hard["parallel_ratio"], "parallel_ratio_se": hard["parallel_ratio_se"],
        "valid_parallel_ratio": hard["valid_parallel_ratio"], "format_valid_ratio": hard["format_valid_ratio"],
        "relative_position": hard["mean_relative_position"], "response_tokens": hard["mean_response_tokens"],
        "critical_path_tokens": hard["mean_critical_path_tokens"], "truncated_ratio": hard["truncated_ratio"],
        "pass_at_k": hard["pass_at_k"], "model": ev["model"],
    }  # fmt: skip
    if easy is not None:
        row.update(easy_accuracy=easy["accuracy"], easy_accuracy_se=easy["accuracy_se"],
                   easy_parallel_ratio=easy["parallel_ratio"])  # fmt: skip
    return row


def rl_dynamics(metrics_path: Path, stage: str = FINAL, window: int = DYNAMICS_WINDOW) -> dict:
    rows = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rl = [r for r in rows if r["stage"] == stage]
    assert rl, f"{metrics_path}: no rows of stage {stage!r}"
    w = max(1, min(window, len(rl) // 2))

    def mean(part: list[dict], key: str) -> float | None:
        values = [r[key] for r in part if isinstance(r.get(key), int | float)]
        return sum(values) / len(values) if values else None

    keys = ("accuracy", "parallel_ratio", "relative_position_mean", "reward_mean", "response_length_mean")
    return {"steps": len(rl), "window": w,
            "first": {k: mean(rl[:w], k) for k in keys}, "last": {k: mean(rl[-w:], k) for k in keys}}  # fmt: skip


def draw_plots(out: Path, ablation: dict | None) -> tuple[list[str], list[str]]:
    """(written plots relative to ``out``, plots skipped for lack of data, e.g. no block in any rollout)."""
    from parallel_r1.report.load import load_metrics
    from parallel_r1.report.plots import draw_all

    written, skipped = draw_all(load_metrics(out / "metrics.jsonl"), out / "plots")
    if ablation is not None:
        written += draw_ablation(out, ablation)
    return [str(Path(p).relative_to(out)) for p in written], skipped


def draw_ablation(out: Path, ablation: dict) -> list[Path]:
    """Per arm, the seed-mean of a training metric over RL steps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = []
    for metric, label in (("parallel_ratio", "parallel ratio"), ("accuracy", "training accuracy")):
        fig = Figure(figsize=(7, 3.5), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for arm in ablation["arms"]:
            curves = [_series(out / r["run"] / "metrics.jsonl", metric) for r in ablation["runs"] if r["arm"] == arm]
            n = min(len(c) for c in curves)
            ax.plot(range(1, n + 1), [sum(c[i] for c in curves) / len(curves) for i in range(n)], label=arm)
        ax.set_xlabel("RL step")
        ax.set_ylabel(f"{label} (mean over seeds)")
        ax.grid(True, alpha=0.3)
        ax.legend(title="arm", fontsize="small")
        path = out / "plots" / f"ablation_{metric}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def _series(path: Path, key: str) -> list[float]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [float(r[key]) if isinstance(r.get(key), int | float) else float("nan") for r in rows]


def build_report(demo) -> dict:
    out, results = demo.cfg.output, demo.results
    ev = results["eval"]
    ablation = results.get("ablation")
    plots, skipped = draw_plots(out, ablation)
    return {
        "config": demo.config_record(),
        "recipe": demo.raw,
        "teacher": {"splits": results["teacher"]["splits"], "teacher_seed": results["teacher"]["teacher_seed"]},
        "eval": demo.eval_record(),
        "stages": {name: {**_stage_row(ev[name]), "steps": demo.recipe.stages[i].steps}
                   for i, name in enumerate(demo.names)},  # fmt: skip
        "rl_vs_sft": _paired(ev, COLD_START),
        "rl_vs_start": _paired(ev, demo.names[-2]) | {"start": demo.names[-2]},
        "stage0_own_prompt": _stage_row(results["stage0_own_prompt"]) | {"template": results["stage0_own_prompt"]["settings"]["template"]},
        "rl_dynamics": rl_dynamics(out / "metrics.jsonl"),
        "checkpoints": results["checkpoints"],
        "ablation": ablation,
        "outputs": {"model": "model", "metrics": "metrics.jsonl", "plots": plots, "plots_skipped": skipped,
                    "report_md": "report.md", "eval": "eval/", "teacher_traces": "data/traces.jsonl"},  # fmt: skip
    }


def _paired(ev: dict, before: str) -> dict:
    """Hard accuracy of the final policy minus that of checkpoint ``before``, paired by problem."""
    return paired_difference(ev[before]["hard"]["per_problem_accuracy"], ev[FINAL]["hard"]["per_problem_accuracy"])


def targets(report: dict) -> list[dict]:
    """Each target of the issue: what was measured and whether it was met."""
    res, stages, diff = report["resources"], report["stages"], report["rl_vs_sft"]
    # the 10-minute target is for the demo without --ablation: leave the ablation phase out
    extra = res["phases"].get("ablation", {"wall_s": 0.0, "cpu_s": 0.0})
    wall, cpu = res["wall_s"] - extra["wall_s"], res["cpu_s"] - extra["cpu_s"]
    out = [
        {"target": "wall time <= 600 s (2 cores), without the ablation",
         "measured": f"{wall:.0f} s (CPU {cpu:.0f} s)", "met": wall <= WALL_TARGET_S},
        {"target": "peak RSS <= 4 GB", "measured": f"{res['peak_rss_mb']['self']:.0f} MB",
         "met": res["peak_rss_mb"]["self"] <= RSS_TARGET_MB},
        {"target": "RL hard accuracy above SFT by more than noise (paired z > 2)",
         "measured": f"{100 * diff['difference']:+.1f} pts ± {100 * diff['se']:.1f} (z = {_fmt(diff['z'])})",
         "met": diff["z"] is not None and diff["z"] > 2},
        {"target": "parallel ratio after RL > 0", "measured": f"{100 * stages['rl']['parallel_ratio']:.1f}%",
         "met": stages[FINAL]["parallel_ratio"] > 0},
    ]  # fmt: skip
    arms = (report.get("ablation") or {}).get("arms", {})
    if "alternating" in arms:
        out.append(_arm_vs_sft(arms["alternating"], stages["sft"]))
    if "alternating" in arms and "accuracy" in arms:
        alt, acc = arms["alternating"], arms["accuracy"]
        out.append({"target": "ablation: alternating keeps a higher parallel ratio than accuracy-only",
                    "measured": f"{100 * alt['parallel_ratio']:.1f}% vs {100 * acc['parallel_ratio']:.1f}%",
                    "met": alt["parallel_ratio"] > acc["parallel_ratio"]})  # fmt: skip
    return out


def _arm_vs_sft(arm: dict, sft: dict) -> dict:
    """An arm's mean over seeds against the SFT checkpoint's single evaluation. The noise counts both
    sides: the seed spread of the mean (sd / sqrt(seeds)) and the SFT figure's own standard error."""
    gain = arm["hard_accuracy"] - sft["hard_accuracy"]
    noise = math.sqrt(arm["hard_accuracy_sd"] ** 2 / len(arm["seeds"]) + sft["hard_accuracy_se"] ** 2)
    return {"target": "alternating-arm RL beats SFT by more than noise (mean - SFT > 2 x sqrt(sd^2 / seeds + SFT se^2))",
            "measured": f"{100 * gain:+.1f} pts; seed sd {100 * arm['hard_accuracy_sd']:.1f} over {len(arm['seeds'])} "
                        f"seeds, SFT se {100 * sft['hard_accuracy_se']:.1f}: noise {100 * noise:.1f}",
            "met": gain > 2 * noise}  # fmt: skip


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _diff(d: dict) -> str:
    return f"{100 * d['difference']:+.1f} points ± {100 * d['se']:.1f} (z = {_fmt(d['z'])})"


def _settings(generation: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in generation.items()) or "engine defaults"


def _pct(value, se=None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")


# --- markdown ---------------------------------------------------------------------------------------------


def results_table(report: dict) -> str:
    rows = ["| checkpoint | hard acc. % (± se) | hard parallel % | rel. block pos. | hard tokens | easy acc. % (± se) | easy parallel % |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, s in report["stages"].items():
        pos = "-" if s["relative_position"] is None else f"{s['relative_position']:.2f}"
        rows.append(f"| {name} | {_pct(s['hard_accuracy'], s['hard_accuracy_se'])} | {_pct(s['parallel_ratio'])} | {pos} "
                    f"| {s['response_tokens']:.0f} | {_pct(s.get('easy_accuracy'), s.get('easy_accuracy_se'))} "
                    f"| {_pct(s.get('easy_parallel_ratio'))} |")  # fmt: skip
    return "\n".join(rows)


def ablation_table(ablation: dict) -> str:
    rows = ["| arm | starts from | reward | hard acc. % (mean ± sd over seeds) | parallel % (mean ± sd) | per seed: acc. / parallel % |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for arm, a in ablation["arms"].items():
        per = ", ".join(f"s{s}: {100 * x:.1f} / {100 * p:.1f}"
                        for s, x, p in zip(a["seeds"], a["per_seed_accuracy"], a["per_seed_parallel_ratio"], strict=True))  # fmt: skip
        rows.append(f"| {arm} | {a['start']} | {a['reward']} | {_pct(a['hard_accuracy'], a['hard_accuracy_sd'])} "
                    f"| {_pct(a['parallel_ratio'], a['parallel_ratio_sd'])} | {per} |")  # fmt: skip
    return "\n".join(rows)


def markdown(report: dict, teacher_md: str) -> str:
    cfg, ev, dyn, own = report["config"], report["eval"], report["rl_dynamics"], report["stage0_own_prompt"]
    s = ev["settings"]
    hard = ev["sets"]["hard"]
    lines = [
        "# parallel-r1 demo",
        "",
        f"Seed {cfg['seed']}; recipe `{cfg['recipe']}`" + ("; **--quick: a shrunken smoke run, not a result**" if cfg["quick"] else ""),
        "",
        "## Scripted teacher (shape of docs/paper.md Table 1)",
        "",
        "Every trace goes through the validation real teacher output gets (grammar + answer check); "
        "`kept` traces form the cold-start SFT set. toy-easy = the SFT problems, toy-hard = the RL stage's hard problems.",
        "",
        teacher_md,
        "",
        f"## Held-out evaluation ({hard['problems']} toy-hard and {ev['sets']['easy']['problems']} toy-easy problems, seed {hard['seed']})",
        "",
        f"{s['samples']} samples per problem, prompt {s['template']!r}, sampled as in RL ({s['mode']} decoding, "
        f"{_settings(s['generation'])}); the same settings and sampling seed ({s['seed']}) for every checkpoint. "
        "± is the standard error over problems.",
        "",
        results_table(report),
        "",
        f"For context, not a comparison under the same settings: the stage-0 model with the prompt it was trained "
        f"with ({own['template']!r}) reaches {_pct(own['hard_accuracy'], own['hard_accuracy_se'])}% "
        f"on toy-hard and {_pct(own['easy_accuracy'], own['easy_accuracy_se'])}% on toy-easy.",
        "",
        f"Final policy minus SFT on toy-hard (paired, same problems): {_diff(report['rl_vs_sft'])}"
        + ("." if report["rl_vs_start"]["start"] == "sft" else
           f"; minus the checkpoint the final RL started from ({report['rl_vs_start']['start']}): "
           f"{_diff(report['rl_vs_start'])}."),
        "",
        f"## Final RL stage: training dynamics (first vs last {dyn['window']} of {dyn['steps']} steps, training rollouts)",
        "",
        "| metric | first | last |",
        "|---|---|---|",
        *[f"| {k} | {_fmt(dyn['first'][k])} | {_fmt(dyn['last'][k])} |" for k in dyn["first"]],
        "",
        *[f"![{p}]({p})" for p in report["outputs"]["plots"]],
        "",
    ]  # fmt: skip
    if report.get("ablation"):
        heading = "## Reward ablation (shape of docs/paper.md Table 4)"
        lines += [heading, "", ablation_table(report["ablation"]), ""]
    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |" for t in report.get("targets", [])]
    lines += ["", *resources_md(report.get("resources"))]
    return "\n".join(lines) + "\n"


def resources_md(res: dict | None) -> list[str]:
    if res is None:
        return []
    phases = ", ".join(f"{k} {v['wall_s']:.0f} s wall / {v['cpu_s']:.0f} s CPU" for k, v in res["phases"].items())
    return [
        "## Resources",
        "",
        f"Wall {res['wall_s']:.0f} s, CPU {res['cpu_s']:.0f} s, peak RSS {res['peak_rss_mb']['self']:.0f} MB "
        f"(largest child {res['peak_rss_mb']['largest_child']:.0f} MB), {res['torch_threads']} torch threads on "
        f"{res['cpu_count']} CPUs; load average {res['load_average_start'][0]} at the start, "
        f"{res['load_average_end'][0]} at the end (a load above the CPU count means other work shared the "
        "machine and wall time is pessimistic); "
        + (f"{res['steal_s']:.0f} s of CPU time stolen by the hypervisor (other guests of the host)."
           if res.get("steal_s") is not None else "steal time not reported here."),
        "",
        f"Phases: {phases}.",
        *_processes_md(res.get("processes", 1), res.get("data_parallel", "ddp")),
    ]


def _processes_md(processes: int, data_parallel: str) -> list[str]:
    if processes == 1:
        return []
    how = ("every stage, data_parallel ordered: the one-process parameters bit for bit" if data_parallel == "ordered"
           else "the SFT stages, data_parallel ddp: the one-process update up to the order of float sums")  # fmt: skip
    return ["", f"{processes} processes: {how}; the SFT stages' checkpoints were evaluated in a background "
            "process while the RL stage trained (inside the train phase's wall time; the CPU times include the "
            "children's)."]


def write_markdown(demo, report: dict) -> Path:
    path = demo.cfg.output / "report.md"
    path.write_text(markdown(report, demo.results["teacher"]["markdown"]), encoding="utf-8")
    return path
