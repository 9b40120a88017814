"""The `elmrec` flow: the pipeline, stage by stage.

    download → preprocess → graph → baselines → (train → evaluate) per variant → MLflow + summary

Parameters (validated before any work starts):
- preset     named settings (elmrec.config.PRESETS): demo | mini | paper
- overrides  any field, nested: {"data": {"dataset": "sports"}, "seed": 7}
- variants   models to train and evaluate (elmrec.config.VARIANTS), each a child run in MLflow
- stages     run only these stages, on the outputs already in the work dir
- force      rerun these stages even when their inputs, settings and code are unchanged
Each stage is cached on its settings, the SHA-256 of its input files and its code, so a rerun skips what
did not change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import Task, flow
from prefect.logging import get_run_logger

from elmrec.config import Preset, Settings, Stage, Variant, settings_for, variant_settings
from elmrec.stages import outputs, outputs_exist
from tasks.data import download_task, graph_task, preprocess_task
from tasks.evaluate import baselines_task, evaluate_task
from tasks.tracking import (
    mark_parent_failed,
    open_parent_task,
    record_baselines_task,
    record_data_task,
    record_variant_task,
    summarize_task,
)
from tasks.train import train_task


@flow(name="elmrec", validate_parameters=True, on_failure=[mark_parent_failed], on_crashed=[mark_parent_failed])
def elmrec(
    preset: Preset = "demo",
    overrides: dict[str, Any] | None = None,
    variants: list[Variant] | None = None,
    stages: list[Stage] | None = None,
    force: list[Stage] | None = None,
) -> dict[str, Any]:
    settings = settings_for(preset, overrides)
    variants = variants or ["elmrec"]
    runs = {name: variant_settings(settings, name) for name in variants}  # every variant validated up front
    wanted, forced = set(stages or Stage), set(force or [])
    get_run_logger().info("stages %s (forced: %s), variants %s, settings %s", sorted(s.value for s in wanted),
                          sorted(s.value for s in forced) or "none", variants, settings.model_dump_json())

    refreshed: set[tuple[Path, ...]] = set()

    def stage(task: Task, name: Stage, settings: Settings) -> Task | None:
        """The task to run for stage `name`, or None when not wanted; its cache is refreshed when its outputs
        have gone or the stage is forced (once per set of outputs: variants that share a checkpoint share it)."""
        if name not in wanted:
            return None
        written = tuple(outputs(settings, task.name))
        refresh = (name in forced and written not in refreshed) or not outputs_exist(settings, task.name)
        refreshed.add(written)
        return task.with_options(refresh_cache=refresh)

    parent = open_parent_task(settings, preset, list(variants))
    if run := stage(download_task, Stage.DOWNLOAD, settings):
        run(settings)
    if run := stage(preprocess_task, Stage.PREPROCESS, settings):
        run(settings)
    if run := stage(graph_task, Stage.GRAPH, settings):
        run(settings)
    data = record_data_task(settings, parent)

    results: dict[str, Any] = {}
    if run := stage(baselines_task, Stage.EVALUATE, settings):
        run(settings)
        results.update(record_baselines_task(settings, parent))
    for name, variant in runs.items():
        if run := stage(train_task, Stage.TRAIN, variant):
            run(variant, resume=Stage.TRAIN not in forced)  # forced: from scratch; else resume an interrupted run
        if run := stage(evaluate_task, Stage.EVALUATE, variant):
            run(variant)
        results[name] = record_variant_task(variant, parent, name)

    summarize_task(settings, parent, data, results)
    return {"mlflow_run_id": parent, "results": results}
