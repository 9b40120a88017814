"""The markdown summary of a pipeline run: dataset, settings, metrics table, link to MLflow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from elmrec.config import Settings

METRICS = ("hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "invalid_rate")


def metrics_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per (variant, task): {variant: {task: {metric: value}}} -> a markdown table."""
    lines = ["| variant | task | mode | " + " | ".join(METRICS) + " |",
             "|---|---|---|" + "---:|" * len(METRICS)]
    for variant, per_task in results.items():
        for task_name, values in per_task.items():
            if not isinstance(values, Mapping):
                continue
            cells = [f"{values[m]:.4f}" if isinstance(values.get(m), (int, float)) else "" for m in METRICS]
            lines.append(f"| {variant} | {task_name} | {values.get('mode', '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_markdown(settings: Settings, data: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]],
                     mlflow_url: str) -> str:
    stats = data.get("data", {})
    graph = data.get("graph", {})
    parts = [
        f"# elmrec: {settings.data.dataset} ({settings.data.source}, ids {settings.data.id_scheme}, "
        f"seed {settings.seed})",
        f"Users {stats.get('n_users', '?'):,} · items {stats.get('n_items', '?'):,} · interactions "
        f"{stats.get('n_interactions', '?'):,} (train {stats.get('n_train_interactions', '?'):,}) · graph "
        f"{graph.get('n_edges', '?'):,} edges ({settings.data.graph_edges})" if stats else "No dataset statistics.",
        f"## Metrics ({settings.eval.split})",
        metrics_table(results) if results else "No evaluation in this run.",
        f"MLflow: [{mlflow_url}]({mlflow_url}) (store `{settings.resolved_tracking_uri()}`)",
    ]
    return "\n\n".join(parts) + "\n"
