"""The `elmrec` flow: the pipeline, stage by stage.

    per distinct data setting:  download → preprocess → graph → baselines
    per variant:                train → evaluate
    then:                       MLflow (one parent, a child per variant and baseline) + the comparison table

Parameters (validated before any work starts):
- preset     named settings (elmrec.config.PRESETS): demo | mini | paper
- overrides  any field, nested: {"data": {"dataset": "sports"}, "seed": 7}
- variants   models to train and evaluate (elmrec.config.VARIANTS), each a child run in MLflow; a variant that
             changes data settings (shuffled_ids, leaky_graph) gets its own data stages and baselines
- stages     run only these stages, on the outputs already in the work dir
- force      rerun these stages even when their inputs, settings and code are unchanged
- fresh      a train stage that runs starts afresh instead of continuing an interrupted attempt
- allow_unfinished  evaluate a training that has not finished (its best model so far) instead of refusing
Each stage records the fingerprint of its settings, input files and code beside its output; a stage whose
record matches today's is `Cached`, any other runs again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import Task, flow
from prefect.logging import get_run_logger

from elmrec.config import Preset, Settings, Stage, Variant, settings_for, variant_settings
from elmrec.pretrained import check_weights
from elmrec.report import Row, rows_of
from elmrec.shapes import data_label, data_settings
from elmrec.stages import outputs, up_to_date
from tasks.data import download_task, graph_task, preprocess_task
from tasks.evaluate import baselines_task, evaluate_task
from tasks.tracking import (
    flow_run_name,
    mark_parent_failed,
    open_parent_task,
    prepare_workdir_task,
    record_baselines_task,
    record_data_task,
    record_variant_task,
    summarize_task,
)
from tasks.train import train_task


@flow(name="elmrec", flow_run_name=flow_run_name, validate_parameters=True, on_failure=[mark_parent_failed],
      on_crashed=[mark_parent_failed])
def elmrec(
    preset: Preset = "demo",
    overrides: dict[str, Any] | None = None,
    variants: list[Variant] | None = None,
    stages: list[Stage] | None = None,
    force: list[Stage] | None = None,
    fresh: bool = False,
    allow_unfinished: bool = False,
) -> dict[str, Any]:
    settings = settings_for(preset, overrides)
    variants = variants or ["elmrec"]
    runs = {name: variant_settings(settings, name) for name in variants}  # every variant validated up front
    wanted, forced = set(stages or Stage), set(force or [])
    if Stage.TRAIN in wanted:  # a full-size T5 without weights is refused now, not after the data stages
        for variant in runs.values():
            if variant.recommender == "elmrec":
                check_weights(variant.model)
    get_run_logger().info("stages %s (forced: %s), variants %s, settings %s", sorted(s.value for s in wanted),
                          sorted(s.value for s in forced) or "none", variants, settings.model_dump_json())

    refreshed: set[tuple[Path, ...]] = set()

    def stage(task: Task, name: Stage, settings: Settings) -> Task | None:
        """The task to run for stage `name`, or None when not wanted. Its cache is refreshed when the stored
        output is not up to date, or the stage is forced (once per output: variants may share one)."""
        if name not in wanted:
            return None
        written = tuple(outputs(settings, task.name))
        refresh = (name in forced and written not in refreshed) or not up_to_date(settings, task.name)
        refreshed.add(written)
        return task.with_options(refresh_cache=refresh)

    prepare_workdir_task(settings)
    parent = open_parent_task(settings, preset, list(variants))
    stats: dict[str, dict[str, Any]] = {}
    rows: list[Row] = []
    for label, each in data_settings(settings, runs.values()).items():
        if run := stage(download_task, Stage.DOWNLOAD, each):
            run(each)
        if run := stage(preprocess_task, Stage.PREPROCESS, each):
            run(each)
        if run := stage(graph_task, Stage.GRAPH, each):
            run(each)
        stats[label] = record_data_task(each, parent, label)
        if run := stage(baselines_task, Stage.EVALUATE, each):
            run(each)
            rows += rows_of(record_baselines_task(each, parent, label), setting=label, baseline=True)

    for name, variant in runs.items():
        if run := stage(train_task, Stage.TRAIN, variant):
            run(variant, resume=not fresh)
        if run := stage(evaluate_task, Stage.EVALUATE, variant):
            run(variant, allow_unfinished=allow_unfinished)
        label = data_label(settings, variant)
        rows += rows_of({name: record_variant_task(variant, parent, name, label)}, setting=label)

    summarize_task(settings, parent, stats, rows)
    return {"mlflow_run_id": parent, "results": {row.label: dict(row.metrics) for row in rows}}
