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
from elmrec.evaluate import evaluate_baselines
from elmrec.paths import METRICS_FILE, WorkPaths
from elmrec.recommenders import evaluate_recommender
from elmrec.stages import recording
from tasks.caching import stage_cache


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


def metric_rows(metrics: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """{task: {decoder: {metric: value}}} -> one table row per (task, decoder), floats rounded for display."""
    return [{"task": task, "decoder": decoder,
             **{k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}}
            for task, by_decoder in metrics.items() for decoder, values in by_decoder.items()]


@task(name="evaluate", cache_policy=stage_cache("evaluate"), persist_result=True)
def evaluate_task(settings: Settings, allow_unfinished: bool = False) -> Path:
    """checkpoint/ -> eval-<hash>/<split>/metrics.json + predictions_<task>_<decoder>.parquet; returns the
    metrics path. An unfinished training is refused unless `allow_unfinished` (its best model so far)."""
    paths, split = WorkPaths.from_settings(settings), settings.eval.split
    progress = create_progress_artifact(0.0, description=f"evaluate {settings.recommender}: tasks done")
    with recording(settings, "evaluate"):
        metrics = evaluate_recommender(settings, paths, allow_unfinished=allow_unfinished,
                                 on_task=lambda task, values, share: update_progress_artifact(progress, 100.0 * share))
    create_table_artifact(metric_rows(metrics), key=artifact_key("evaluate", settings.data.dataset, split),
                          description=f"{settings.data.dataset} {split} metrics ({settings.recommender})")
    get_run_logger().info("%s hr@10: %s", split,
                          {f"{t}/{d}": round(m["hr@10"], 4) for t, bd in metrics.items() for d, m in bd.items()})
    return paths.run(settings).evaluation(settings) / METRICS_FILE


@task(name="baselines", cache_policy=stage_cache("baselines"), persist_result=True)
def baselines_task(settings: Settings) -> Path:
    """data/ -> baselines/<split>/metrics.json (popularity, random, id_order; decoder `score`); returns its path."""
    paths, split = WorkPaths.from_settings(settings), settings.eval.split
    with recording(settings, "baselines"):
        metrics = evaluate_baselines(settings, paths)
    rows = [{"baseline": name, **row} for name, by_task in metrics.items() for row in metric_rows(by_task)]
    create_table_artifact(rows, key=artifact_key("baselines", settings.data.dataset, split),
                          description=f"{settings.data.dataset} {split} baseline metrics")
    get_run_logger().info("%s baselines hr@10: %s", split,
                          {f"{n}/{t}/{d}": round(m["hr@10"], 4) for n, bt in metrics.items() for t, bd in bt.items()
                           for d, m in bd.items()})
    return paths.baselines(settings) / METRICS_FILE
