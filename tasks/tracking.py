"""Record a flow run in MLflow and Prefect: one parent run per flow run, one child run per variant.

These tasks are never cached: they read the files the stages wrote (stats, history, metrics) and log them,
so every flow run is complete in MLflow even when its stages were served from cache. A retried flow run
finds the runs its first attempt opened (matched by tags) instead of opening new ones.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.runtime import deployment, flow_run

from elmrec import plots, tracking
from elmrec.config import Settings
from elmrec.metrics import tracked_metrics
from elmrec.paths import METRICS_FILE, WorkPaths, ensure_writable, remove_stale_temporaries
from elmrec.report import TABLE_METRICS, Row, summary_markdown, table_columns

FLOW_RUN_TAG = "prefect.flow_run_id"


def _flow_run_id() -> str:
    return str(flow_run.id or "local")


@task(name="prepare-workdir", cache_policy=NO_CACHE)
def prepare_workdir_task(settings: Settings) -> None:
    """Before any work: the work dir takes files (else one clear error, at once), temporaries left by killed
    runs are removed, and MLflow runs left RUNNING by killed flow runs are marked FAILED."""
    ensure_writable(settings.workdir)
    remove_stale_temporaries(settings.workdir)
    tracking.fail_orphaned_runs(settings)


@task(name="open-mlflow-run", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def open_parent_task(settings: Settings, preset: str, variants: list[str]) -> str:
    """The flow run's parent MLflow run (name = the flow run's name), with settings and provenance."""
    tags = {"prefect.flow_run_name": flow_run.name or "", "prefect.deployment": deployment.name or "",
            "prefect.ui": flow_run.ui_url or "", "preset": preset, "variants": ",".join(variants),
            **tracking.environment_tags()}
    run_id = tracking.find_or_create_run(settings, flow_run.name or "elmrec", tags,
                                         match={FLOW_RUN_TAG: _flow_run_id(), "elmrec.role": "parent"})
    tracking.RunLog(run_id).settings(settings)
    get_run_logger().info("MLflow parent run %s in %s", run_id, settings.resolved_tracking_uri())
    return run_id


@task(name="record-data", cache_policy=NO_CACHE)
def record_data_task(settings: Settings, parent_run_id: str, setting: str = "") -> dict[str, Any]:
    """Dataset and graph statistics into the parent run; `setting` labels a data setting other than the run's own
    (its statistics go in as artifacts only)."""
    paths = WorkPaths.from_settings(settings)
    log = tracking.RunLog(parent_run_id)
    stats: dict[str, Any] = {}
    for name, path in (("data", paths.data.stats), ("graph", paths.graph.stats)):
        if path.is_file():
            stats[name] = json.loads(path.read_text())
            if not setting:
                log.metrics(stats[name], prefix=f"{name}.")
            log.artifact(path, artifact_dir=f"{name} ({setting})" if setting else name)
    return stats


@task(name="record-variant", cache_policy=NO_CACHE)
def record_variant_task(settings: Settings, parent_run_id: str, variant: str) -> dict[str, Any]:
    """One child run per variant: settings, training curves, evaluation metrics, predictions, plots."""
    run = WorkPaths.from_settings(settings).run(settings)
    child = tracking.find_or_create_run(
        settings, variant, {"elmrec.variant": variant},
        match={FLOW_RUN_TAG: _flow_run_id(), "elmrec.role": "variant", "elmrec.variant": variant},
        parent_run_id=parent_run_id)
    log = tracking.RunLog(child)
    log.settings(settings)
    metrics: dict[str, Any] = {}
    if run.history.is_file():
        history = json.loads(run.history.read_text())
        log.params({"pretrained": history.get("pretrained"), "device": history.get("device"),
                    "best_epoch": history.get("best_epoch")})
        for record in history.get("epochs", []):
            log.metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))
        log.artifact(run.history, artifact_dir="train")
        with tempfile.TemporaryDirectory() as tmp:
            log.artifact(plots.loss_curves(history.get("epochs", []), Path(tmp) / "loss_curves.png",
                                           best_epoch=history.get("best_epoch")), artifact_dir="train")
    evaluation = run.evaluation(settings)
    if (evaluation / METRICS_FILE).is_file():
        metrics = json.loads((evaluation / METRICS_FILE).read_text())
        log.metrics(tracked_metrics(metrics, settings.eval.split))  # test.<task>.<decoder>.<metric>
        log.artifact(evaluation, artifact_dir=f"eval/{settings.eval.split}")
    tracking.finish(settings, child)
    return metrics


@task(name="record-baselines", cache_policy=NO_CACHE)
def record_baselines_task(settings: Settings, parent_run_id: str, data_label: str | None = None) -> dict[str, Any]:
    """Baseline metrics (popularity, random, id_order) as a child run, so tables always show the floor.

    `data_label` names a data setting other than the run's own (e.g. the `shuffled_ids` variant's): its
    baselines are rows of their own, `<baseline> (<label>)`."""
    folder = WorkPaths.from_settings(settings).baselines(settings)
    if not (folder / METRICS_FILE).is_file():
        return {}
    name = f"baselines ({data_label})" if data_label else "baselines"
    child = tracking.find_or_create_run(
        settings, name, {}, match={FLOW_RUN_TAG: _flow_run_id(), "elmrec.role": "baselines",
                                   "elmrec.data": data_label or "base"},
        parent_run_id=parent_run_id)
    metrics = json.loads((folder / METRICS_FILE).read_text())
    log = tracking.RunLog(child)
    log.settings(settings)
    log.metrics(tracked_metrics(metrics, settings.eval.split))  # test.<baseline>.<task>.<decoder>.<metric>
    log.artifact(folder / METRICS_FILE)
    tracking.finish(settings, child)
    return metrics


@task(name="summarize", cache_policy=NO_CACHE)
def summarize_task(settings: Settings, parent_run_id: str, stats: dict[str, dict[str, Any]], rows: list[Row]) -> str:
    """The run summary with the one comparison table (Prefect markdown artifact `elmrec-summary` and
    `comparison.md` in the parent run), metrics plots per task; closes the parent run.

    stats: {data setting: {"data": data stats.json, "graph": graph stats.json}}, "" = the run's own data;
    rows: a report.Row per variant and baseline (report.rows_of builds them from metrics.json contents).
    """
    log = tracking.RunLog(parent_run_id)
    with tempfile.TemporaryDirectory() as tmp:
        for task_name in sorted({t for t, _ in table_columns(rows)}):
            bars = {f"{row.label} {decoder}": {m: v for m in TABLE_METRICS
                                               if (v := row.value(task_name, decoder, m)) is not None}
                    for row in rows for t, decoder in table_columns([row]) if t == task_name}
            log.artifact(plots.metrics_by_variant(bars, Path(tmp) / f"metrics_{task_name}.png",
                                                  f"{task_name} ({settings.eval.split})"), artifact_dir="plots")
    markdown = summary_markdown(settings, stats, rows, tracking.run_url(settings, parent_run_id))
    log.artifact_text(markdown, "comparison.md")
    create_markdown_artifact(markdown, key="elmrec-summary", description="elmrec run: the comparison table")
    tracking.finish(settings, parent_run_id)
    return markdown


def mark_parent_failed(flow: Any, run: Any, state: Any) -> None:
    """Flow on_failure hook: the parent MLflow run of a failed flow run is marked FAILED, not left RUNNING."""
    from elmrec.config import settings_for

    params = dict(run.parameters or {})
    settings = settings_for(params.get("preset", "demo"), params.get("overrides"))
    for found in tracking.find_runs(settings, f"tags.`{FLOW_RUN_TAG}` = '{run.id}' and tags.`elmrec.role` = 'parent'"):
        tracking.finish(settings, found["run_id"], status="FAILED")
