"""The markdown summary of a pipeline run: dataset, settings, metrics table, link to MLflow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from elmrec.config import Settings
from elmrec.graph import PROBE_K

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


def leak_probe_line(graph: Mapping[str, Any]) -> str:
    """The graph stage's leak probe in words: chance (k/100) means the graph holds no held-out edge."""
    probes = {k.removeprefix("leak_probe_").removesuffix(f"_hr_at_{PROBE_K}"): v for k, v in graph.items()
              if k.startswith("leak_probe_")}
    if not probes:
        return "Leak probe: not recorded."
    values = ", ".join(f"{split} {value:.3f}" for split, value in probes.items())
    return (f"Leak probe (HR@{PROBE_K} of untrained graph features on the stored candidates; chance "
            f"{PROBE_K / 100:.2f}, a graph with the held-out edges about 0.44 on Beauty): {values}")


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
        leak_probe_line(graph),
        f"## Metrics ({settings.eval.split})",
        metrics_table(results) if results else "No evaluation in this run.",
        f"MLflow: [{mlflow_url}]({mlflow_url}) (store `{settings.resolved_tracking_uri()}`)",
    ]
    return "\n\n".join(parts) + "\n"
