"""The `sweep` flow: train and evaluate a grid of hyper-parameters on a Dask cluster, and name the best point.

    per distinct data setting:  download → preprocess → graph → baselines          (here, once)
    per distinct checkpoint:    train                                             (on the Dask cluster, in parallel)
    per point:                  evaluate on valid and on test                     (on the Dask cluster)
    then:                       MLflow (one parent, a child per point) + the best point per task + the comparison table

Parameters (validated before any work starts):
- preset, overrides   the base settings, as the `elmrec` flow's
- grid                dotted setting names and the values to try (elmrec.grid): {"model.alpha": [1, 6], ...};
                      points that differ only in decoding (eval.rerank_n: the paper's N) share one training
- metric              what chooses the best point of each task, on the validation split (its test metrics report)
- address             an existing Dask scheduler (tcp://host:8786); default $ELMREC_DASK_ADDRESS, else a local cluster
- cluster_class       the cluster to start when no address is given (default distributed.LocalCluster;
                      dask_cuda.LocalCUDACluster: one worker per GPU of this machine)
- workers             workers of the started cluster (LocalCluster default: one per training, at most one per core)

The local cluster runs worker *processes*, one thread each: training seeds torch's global generator (initial
weights, dropout), so points trained in threads of one process would draw from one generator in an order set by
the scheduler, and a point's result would depend on its neighbours.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from prefect import Task, flow
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger
from prefect_dask import DaskTaskRunner

from elmrec.config import Preset, Settings, deep_merge, settings_for
from elmrec.grid import REPORT_SPLIT, SELECT_SPLIT, Grid, Point, best_markdown, best_points, expand, trainings
from elmrec.pretrained import check_weights
from elmrec.report import Row, rows_of
from elmrec.shapes import data_label, data_settings
from elmrec.stages import up_to_date
from tasks.data import download_task, graph_task, preprocess_task
from tasks.evaluate import baselines_task, evaluate_task
from tasks.tracking import (
    mark_parent_failed,
    open_parent_task,
    prepare_workdir_task,
    record_baselines_task,
    record_data_task,
    record_variant_task,
    run_parameters,
    summarize_task,
)
from tasks.train import train_task

DEFAULT_GRID: Grid = {"model.alpha": [1, 6], "model.n_layers": [2, 4]}  # Table 9's Sports and Beauty sequential
#                                                                         alpha; L as the paper's 4 and half of it
ADDRESS_ENV = "ELMREC_DASK_ADDRESS"  # an existing Dask scheduler, when the `address` parameter is not given
BEST_ARTIFACT = "elmrec-sweep-best"
CHECKOUT = str(Path(__file__).resolve().parents[1])  # holds flows/ and tasks/, which the Dask workers import
Metric = Literal["hr@5", "hr@10", "ndcg@5", "ndcg@10"]  # elmrec.report.TABLE_METRICS, as a type Prefect validates


def sweep_run_name() -> str:
    """`sweep · mini · beauty · alpha×n_layers`: the flow run's name, and its parent MLflow run's."""
    preset, dataset, parameters = run_parameters("mini")
    grid = parameters.get("grid") or DEFAULT_GRID
    return f"sweep · {preset} · {dataset} · " + "×".join(str(key).rsplit(".", 1)[-1] for key in grid)


@flow(name="sweep", flow_run_name=sweep_run_name, validate_parameters=True, on_failure=[mark_parent_failed],
      on_crashed=[mark_parent_failed])
def sweep(
    preset: Preset = "mini",
    overrides: dict[str, Any] | None = None,
    grid: dict[str, list[Any]] | None = None,
    metric: Metric = "ndcg@10",
    address: str | None = None,
    cluster_class: str | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    settings = on_split(settings_for(preset, overrides), REPORT_SPLIT)  # the table reports test; valid chooses
    points = expand(settings, grid or DEFAULT_GRID)  # every point validated up front
    for point in points:  # a full-size T5 without weights is refused now, not after the data stages
        if point.settings.recommender == "elmrec":
            check_weights(point.settings.model)
    get_run_logger().info("%d points (%d trainings): %s; chosen by %s on %s", len(points), len(trainings(points)),
                          [p.name for p in points], metric, SELECT_SPLIT)

    prepare_workdir_task(settings)
    parent = open_parent_task(settings, preset, [point.name for point in points])
    stats: dict[str, dict[str, Any]] = {}
    rows: list[Row] = []
    for label, each in data_settings(settings, [point.settings for point in points]).items():
        for stage in (download_task, preprocess_task, graph_task):
            current(stage, each)(each)
        stats[label] = record_data_task(each, parent, label)
        current(baselines_task, each)(each)
        rows += rows_of(record_baselines_task(each, parent, label), setting=label, baseline=True)

    runner = dask_runner(address, cluster_class, workers, len(trainings(points)))
    evaluated = sweep_points.with_options(task_runner=runner)(points)

    failed = [point.name for point in points if None in evaluated[point.name].values()]
    if len(failed) == len(points):
        raise RuntimeError(f"no point of the sweep was trained and evaluated: {failed}; see the sweep-points run")
    if failed:  # a diverging point does not end the sweep; the artifact and the result name it
        get_run_logger().warning("failed points, not candidates for the best: %s", failed)
    done = [point for point in points if point.name not in failed]
    select: dict[str, dict[str, Any]] = {}
    report: dict[str, dict[str, Any]] = {}
    for point in done:  # one child run per point: test metrics, then valid metrics into the same run
        label = data_label(settings, point.settings)
        report[point.name] = record_variant_task(point.on_split(REPORT_SPLIT), parent, point.name, label)
        select[point.name] = record_variant_task(point.on_split(SELECT_SPLIT), parent, point.name, label,
                                                 training=False)
    best = best_points(select, report, metric)
    create_markdown_artifact(best_markdown(best, select, metric, failed), key=BEST_ARTIFACT,
                             description="elmrec sweep: the best point per task (chosen on valid, reported on test)")

    flags: dict[str, list[str]] = {}
    for found in best:
        flags.setdefault(found.point, []).append(f"{found.task} {found.decoder}")
    for point in done:
        name = f"{point.name} (best: {', '.join(flags[point.name])})" if point.name in flags else point.name
        rows += rows_of({name: report[point.name]}, setting=data_label(settings, point.settings))
    summarize_task(settings, parent, stats, rows)
    return {"mlflow_run_id": parent, "best": [asdict(found) for found in best], "failed": failed,
            "results": {point.name: {SELECT_SPLIT: select[point.name], REPORT_SPLIT: report[point.name]}
                        for point in done}}


@flow(name="sweep-points", validate_parameters=False)
def sweep_points(points: list[Point]) -> dict[str, dict[str, Path | None]]:
    """Each distinct checkpoint trained once, each point evaluated on valid and test, all submitted to the flow's
    task runner; {point: {split: metrics.json path, None when it failed}}."""
    evaluations = {}
    for group in trainings(points).values():
        first = group[0].settings
        trained = current(train_task, first).submit(first, resume=True)
        for point in group:
            for split in (SELECT_SPLIT, REPORT_SPLIT):
                settings = point.on_split(split)
                evaluations[point.name, split] = current(evaluate_task, settings).submit(settings, wait_for=[trained])
    results: dict[str, dict[str, Path | None]] = {}
    for (name, split), future in evaluations.items():
        future.wait()
        results.setdefault(name, {})[split] = future.result() if future.state.is_completed() else None
    return results


def current(task: Task, settings: Settings) -> Task:
    """The stage task, its cache refreshed when the stored output is not today's (as in the `elmrec` flow)."""
    return task.with_options(refresh_cache=not up_to_date(settings, task.name))


def on_split(settings: Settings, split: str) -> Settings:
    return Settings.model_validate(deep_merge(settings.model_dump(mode="json"), {"eval": {"split": split}}))


def dask_runner(address: str | None, cluster_class: str | None, workers: int | None,
                trainings: int) -> DaskTaskRunner:
    """A runner on an existing scheduler (`address` or $ELMREC_DASK_ADDRESS), else on a cluster started for this
    flow run: LocalCluster of worker processes with one thread each, or `cluster_class` with its own defaults."""
    address = address or os.environ.get(ADDRESS_ENV) or None
    if address:
        return DaskTaskRunner(address=address)
    if CHECKOUT not in sys.path:  # a deployment imports this module with the checkout on sys.path only for the
        sys.path.append(CHECKOUT)  # import; local worker processes start with this process's sys.path
    if cluster_class:
        return DaskTaskRunner(cluster_class=cluster_class,
                              cluster_kwargs={"n_workers": workers} if workers else None)
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": workers or max(1, min(trainings, os.cpu_count() or 1)),
        "threads_per_worker": 1,  # one point per worker; torch's threads follow OMP_NUM_THREADS (Dask sets 1)
        "processes": True,  # torch's global generator is per process: see the module docstring
        "dashboard_address": None,  # the dashboard needs bokeh; pass a cluster of your own to watch one
    })
