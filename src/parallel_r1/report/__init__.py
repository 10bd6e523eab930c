"""Training-dynamics report: plots and a Markdown summary from a run's metrics.jsonl."""

from parallel_r1.report.command import report, write_report
from parallel_r1.report.load import MetricsError, RunMetrics, load_metrics

__all__ = ["report", "write_report", "MetricsError", "RunMetrics", "load_metrics"]
