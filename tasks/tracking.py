"""Record a flow run in MLflow and Prefect: one parent run per flow run, one child run per variant and per
baseline, all with the same metric names (metrics.tracked_name), so MLflow's compare view lines them up.

These tasks are never cached: they read the files the stages wrote (stats, history, metrics, stage records) and
log them, so every flow run is complete in MLflow even when its stages were served from cache. A retried flow
run finds the runs its first attempt opened (matched by tags) instead of opening new ones.

Runs are named for people (`demo · beauty · elmrec+pod`, `popularity · beauty`, `shuffled_ids · beauty
(id_scheme=shuffled)`) and tagged for filters: `elmrec.role` (parent | variant | baseline), `elmrec.model`
(the table row's name), `elmrec.dataset`, `elmrec.data_setting` (`own`, or what sets the row's data apart),
`elmrec.checkpoint_reused` and `elmrec.checkpoint` (variants). A child spans the stage records of the work
behind its metrics: train start (or evaluate start, when the checkpoint was trained before this flow run) to
evaluate end; a baseline child spans the baselines stage.

A variant's finished model is logged into its child run as an MLflow model that recommends (elmrec.registry:
`runs:/<child>/model`) and registered as `elmrec-<dataset>`, its version tagged with the variant, recommender,
child run and data setting; a checkpoint registered before keeps its version (`register_models=false`: none).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.runtime import deployment, flow_run

from elmrec import plots, registry, tracking
from elmrec.app.serve import mlflow_ui_url
from elmrec.checkpoint import is_finished
from elmrec.config import Settings, settings_for
from elmrec.metrics import SCORE_DECODER, task_metrics, tracked_metrics
from elmrec.paths import METRICS_FILE, WorkPaths, ensure_writable, remove_stale_temporaries
from elmrec.report import TABLE_METRICS, Row, comparison_table, headline_metrics, summary_markdown, table_columns
from elmrec.stages import read_record
from elmrec.tracking import DATA_TAG, FLOW_RUN_TAG, MODEL_TAG, OWN_DATA, ROLE_TAG, STATS_ARTIFACT
from tasks.parameters import run_settings

SPLIT_CONTEXTS = {"train": "training", "valid": "validation", "test": "evaluation"}  # MLflow dataset contexts
NOT_BASELINE_SETTINGS = {"model", "train", "sasrec", "lightgcn"}  # settings that do not shape a baseline


def _flow_run_id() -> str:
    return str(flow_run.id or "local")


def flow_run_name() -> str:
    """The flow run's name (the flow's `flow_run_name`): preset · dataset · variants, e.g. `demo · beauty ·
    elmrec+pod`; it names the parent MLflow run too."""
    preset, dataset, parameters = run_parameters("demo")
    return f"{preset} · {dataset} · {'+'.join(parameters.get('variants') or ['elmrec'])}"


def run_parameters(default_preset: str) -> tuple[str, str, dict[str, Any]]:
    """(preset, dataset, parameters) of the flow run being named ("?" for a dataset bad settings hide); the
    parameters' overrides and variants are the run's own (tasks.parameters: the typed form, rerun_of)."""
    parameters = dict(flow_run.parameters or {})
    try:
        chosen = run_settings(parameters, deployment.id if parameters.get("rerun_of") else None, default_preset)
        parameters.update(overrides=chosen.overrides, variants=chosen.variants)
        return chosen.preset, settings_for(chosen.preset, chosen.overrides).data.dataset, parameters
    except ValueError:  # bad settings or rerun_of: the flow itself reports them
        return str(parameters.get("preset") or default_preset), "?", parameters


def child_name(name: str, settings: Settings, data_setting: str = "") -> str:
    """`popularity · beauty`; a data setting other than the run's own in brackets: `… (id_scheme=shuffled)`."""
    return f"{name} · {settings.data.dataset}" + (f" ({data_setting})" if data_setting else "")


def child_tags(role: str, name: str, settings: Settings, data_setting: str) -> dict[str, str]:
    """The tags a retried flow run finds a child by (role, row name, data setting) and filters use."""
    return {FLOW_RUN_TAG: _flow_run_id(), ROLE_TAG: role, MODEL_TAG: name, DATA_TAG: data_setting or OWN_DATA,
            "elmrec.dataset": settings.data.dataset}


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run's logger inside a flow or task run, else this module's (a task's `.fn` called directly)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


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
            "prefect.ui": flow_run.ui_url or "", "elmrec.preset": preset, "elmrec.variants": ",".join(variants),
            "elmrec.dataset": settings.data.dataset, **tracking.environment_tags()}
    run_id = tracking.find_or_create_run(settings, flow_run.name or "elmrec", tags,
                                         match={FLOW_RUN_TAG: _flow_run_id(), ROLE_TAG: "parent"})
    tracking.RunLog(run_id).settings(settings)
    run_logger().info("MLflow parent run %s in %s", run_id, settings.resolved_tracking_uri())
    return run_id


@task(name="record-data", cache_policy=NO_CACHE)
def record_data_task(settings: Settings, parent_run_id: str, setting: str = "") -> dict[str, Any]:
    """Into the parent run: the Parquet splits as MLflow input datasets, and the dataset and graph statistics
    (params `stats.data.*`, `stats.graph.*` of the run's own data; all settings' go into the summary's
    stats.json). `setting` labels a data setting other than the run's own."""
    paths = WorkPaths.from_settings(settings)
    log = tracking.RunLog(parent_run_id)
    stats = {name: json.loads(path.read_text()) for name, path in (("data", paths.data.stats),
                                                                  ("graph", paths.graph.stats)) if path.is_file()}
    if not setting:
        log.params(stats, prefix="stats.")
    if paths.data.interactions.is_file():
        name = settings.data.dataset + (f" ({setting})" if setting else "")
        log.splits(paths.data.interactions, name, SPLIT_CONTEXTS)
    return stats


@task(name="record-variant", cache_policy=NO_CACHE)
def record_variant_task(settings: Settings, parent_run_id: str, variant: str, data_setting: str = "",
                        training: bool = True) -> dict[str, Any]:
    """One child run per variant: settings, training curves, evaluation metrics, predictions, plots; returns
    its metrics.json ({} before evaluation). `data_setting` labels data other than the run's own.
    training=False records the evaluation only (a second split's metrics into the same child: the sweep)."""
    run = WorkPaths.from_settings(settings).run(settings)
    train, evaluate = read_record(settings, "train"), read_record(settings, "evaluate")
    since = tracking.started_ms(settings, parent_run_id) // 1000 * 1000  # stage records keep whole seconds
    reused = train is not None and tracking.iso_ms(train["finished"]) < since
    start, end = tracking.span([evaluate] if reused else [train, evaluate])
    tags = {**child_tags("variant", variant, settings, data_setting), "elmrec.recommender": settings.recommender,
            "elmrec.checkpoint_reused": str(reused).lower(), "elmrec.checkpoint": str(run.checkpoint)}
    child = tracking.find_or_create_run(settings, child_name(variant, settings, data_setting), tags,
                                        match={k: tags[k] for k in (FLOW_RUN_TAG, ROLE_TAG, MODEL_TAG)},
                                        parent_run_id=parent_run_id, start_ms=start)
    log = tracking.RunLog(child)
    log.settings(settings)
    metrics: dict[str, Any] = {}
    if training and run.history.is_file():
        history = json.loads(run.history.read_text())
        log.params({"pretrained": history.get("pretrained"), "device": history.get("device"),
                    "best_epoch": history.get("best_epoch")})
        for record in history.get("epochs", []):  # losses; the classic models' validation metrics by their names
            log.metrics({k: v for k, v in record.items() if k not in ("epoch", "valid_metrics")},
                        step=int(record["epoch"]))
            valid = {task: {SCORE_DECODER: values} for task, values in (record.get("valid_metrics") or {}).items()}
            log.metrics(tracked_metrics(valid, "valid"), step=int(record["epoch"]))
        log.artifact(run.history, artifact_dir="train")
        with tempfile.TemporaryDirectory() as tmp:
            log.artifact(plots.loss_curves(history.get("epochs", []), Path(tmp) / "loss_curves.png",
                                           best_epoch=history.get("best_epoch")), artifact_dir="train")
    evaluation = run.evaluation(settings)
    if (evaluation / METRICS_FILE).is_file():
        metrics = json.loads((evaluation / METRICS_FILE).read_text())
        log.metrics(tracked_metrics(metrics, settings.eval.split))  # test/<task>/<decoder>/<metric>
        log.metrics(task_metrics(metrics, settings.eval.split))  # test/<task>/<metric>: its first decoder
        log.artifact(evaluation, artifact_dir=f"eval/{settings.eval.split}")
    if training and settings.register_models and is_finished(run) and run.checkpoint.is_dir():
        version = registry.log_model(settings, child, {"elmrec.variant": variant, "elmrec.recommender":
                                                       settings.recommender, "elmrec.child_run": child,
                                                       DATA_TAG: data_setting or OWN_DATA})
        run_logger().info("%s: the trained model is models:/%s/%s", variant, version.name, version.version)
    tracking.finish(settings, child, end_ms=end)
    return metrics


@task(name="record-baselines", cache_policy=NO_CACHE)
def record_baselines_task(settings: Settings, parent_run_id: str, data_setting: str = "") -> dict[str, Any]:
    """One child run per baseline (popularity, random, id_order), with the metric names and the settings params
    of the models' children (those that shape a baseline; `recommender` = the baseline), spanning the baselines
    stage. Returns the baselines' metrics.json, {baseline: {task: {decoder: metrics}}}."""
    folder = WorkPaths.from_settings(settings).baselines(settings)
    if not (folder / METRICS_FILE).is_file():
        return {}
    metrics = json.loads((folder / METRICS_FILE).read_text())
    start, end = tracking.span([read_record(settings, "baselines")])
    for baseline, values in metrics.items():
        tags = child_tags("baseline", baseline, settings, data_setting)
        child = tracking.find_or_create_run(settings, child_name(baseline, settings, data_setting), tags,
                                            match={k: tags[k] for k in (FLOW_RUN_TAG, ROLE_TAG, MODEL_TAG, DATA_TAG)},
                                            parent_run_id=parent_run_id, start_ms=start)
        log = tracking.RunLog(child)
        log.settings(settings, exclude=NOT_BASELINE_SETTINGS, recommender=baseline)
        log.metrics(tracked_metrics(values, settings.eval.split))  # test/<task>/<decoder>/<metric>
        log.metrics(task_metrics(values, settings.eval.split))  # test/<task>/<metric>, as the models' children
        log.artifact_text(json.dumps(values, indent=2, sort_keys=True) + "\n", METRICS_FILE)
        tracking.finish(settings, child, end_ms=end)
    return metrics


@task(name="summarize", cache_policy=NO_CACHE)
def summarize_task(settings: Settings, parent_run_id: str, stats: dict[str, dict[str, Any]], rows: list[Row]) -> str:
    """The run summary with the one comparison table (Prefect markdown artifact `elmrec-summary`; in the parent
    run: `comparison.md`, the table as its description, each row's headline metrics, `stats.json` of every data
    setting), metrics plots per task; closes the parent run.

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
    ui = mlflow_ui_url(settings.workdir) or tracking.DEFAULT_UI  # the port `elmrec serve --ui` took, if it runs
    markdown = summary_markdown(settings, stats, rows, tracking.run_url(settings, parent_run_id, ui))
    log.artifact_text(markdown, "comparison.md")
    log.artifact_text(json.dumps(stats, indent=1, sort_keys=True) + "\n", STATS_ARTIFACT)
    log.metrics(headline_metrics(rows, settings.eval.split))  # <row>/test/<task>/<decoder>/hr_at_10, ndcg_at_10
    log.describe(comparison_table(rows, stats, settings.eval.split) if rows else "No evaluation in this run.")
    create_markdown_artifact(markdown, key="elmrec-summary", description="elmrec run: the comparison table")
    tracking.finish(settings, parent_run_id)
    return markdown


def mark_parent_failed(flow: Any, run: Any, state: Any) -> None:
    """Flow on_failure hook: the parent MLflow run of a failed flow run is marked FAILED, not left RUNNING."""
    try:
        chosen = run_settings(dict(run.parameters or {}), run.deployment_id)
        settings = settings_for(chosen.preset, chosen.overrides)
    except ValueError:  # settings that never validated: no parent run was opened
        return
    if settings.tracking_uri is None and not (settings.workdir / "mlflow.db").is_file():
        return  # failed before the MLflow store was made (a missing upstream output): no parent run to mark
    for found in tracking.find_runs(settings, f"tags.`{FLOW_RUN_TAG}` = '{run.id}' and tags.`{ROLE_TAG}` = 'parent'"):
        tracking.finish(settings, found["run_id"], status="FAILED")
