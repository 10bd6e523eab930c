"""``parallel-r1 demo``: the Parallel-R1 curriculum on the embedded toy world, offline on a CPU.

- ``data``: named data factories the demo recipe calls (stage-0 text, cold-start set, RL problems,
  the held-out evaluation sets).
- ``recipes``: ``configs/demo/demo.yaml`` with the demo's seed / ``--quick`` overrides, and the
  ablation's RL-only recipes derived from it.
- ``teacher_stats``: the scripted teacher's success rate per split (docs/paper.md Table 1 shape).
- ``evaluate``: a checkpoint on a fixed held-out set, with standard errors.
- ``ablation``: RL arms (sequential, accuracy, alternating) over seeds (docs/paper.md Table 4 shape).
- ``report``: report.json, report.md, plots.
- ``resources``: wall, CPU time and peak RSS per phase.
- ``pipeline``: ``run_demo`` wires the above; ``command``: the Typer command.

Stage 0 ("pretraining") is an ordinary SFT stage of the recipe on plain step-by-step solutions:
the runner expresses it, so the demo has no training loop of its own.
"""
