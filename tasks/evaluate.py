"""Evaluate stages: the trained model, and the popularity / random baselines; each cached on its fingerprint
and published as a Prefect table artifact (MLflow logging: tasks.tracking)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.logging import get_run_logger

from elmrec.config import Settings
from elmrec.evaluate import evaluate_baselines, evaluate_model
from elmrec.paths import METRICS_FILE, WorkPaths
from tasks.caching import stage_cache


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


def metric_rows(metrics: dict[str, dict[str, Any]], first_column: str) -> list[dict[str, Any]]:
    """{name: {metric: value}} -> one table row per name, floats rounded for display."""
    return [{first_column: name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}}
            for name, values in metrics.items()]


@task(name="evaluate", cache_policy=stage_cache("evaluate"), persist_result=True)
def evaluate_task(settings: Settings) -> Path:
    """checkpoint/ -> eval-<hash>/<split>/metrics.json + predictions_<task>.parquet; returns the metrics path."""
    paths, split = WorkPaths.from_settings(settings), settings.eval.split
    progress = create_progress_artifact(0.0, description=f"evaluate {settings.model.variant}: tasks done")
    metrics = evaluate_model(settings, paths, on_task=lambda task, values, share: update_progress_artifact(
        progress, 100.0 * share))
    create_table_artifact(metric_rows(metrics, "task"), key=artifact_key("evaluate", settings.data.dataset, split),
                          description=f"{settings.data.dataset} {split} metrics ({settings.model.variant})")
    get_run_logger().info("%s metrics: %s", split, {t: round(m["hr@10"], 4) for t, m in metrics.items()})
    return paths.run(settings).evaluation(settings.eval, split) / METRICS_FILE


@task(name="baselines", cache_policy=stage_cache("baselines"), persist_result=True)
def baselines_task(settings: Settings) -> Path:
    """data/ -> baselines/<split>/metrics.json (popularity, random); returns the metrics path."""
    paths, split = WorkPaths.from_settings(settings), settings.eval.split
    metrics = evaluate_baselines(settings, paths)
    rows = [{"baseline": name, **row} for name, by_task in metrics.items() for row in metric_rows(by_task, "task")]
    create_table_artifact(rows, key=artifact_key("baselines", settings.data.dataset, split),
                          description=f"{settings.data.dataset} {split} baseline metrics")
    get_run_logger().info("%s baselines hr@10: %s", split,
                          {f"{n}/{t}": round(m["hr@10"], 4) for n, bt in metrics.items() for t, m in bt.items()})
    return paths.baselines(settings) / METRICS_FILE
