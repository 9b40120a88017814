"""The `elmrec` flow: the pipeline, stage by stage.

    per distinct data setting:  download → preprocess → graph → baselines
    per variant:                train → evaluate
    then:                       MLflow (one parent, a child per variant and baseline) + the comparison table

Its parameters (the flow's docstring below; the Prefect UI shows them as a form) are validated, and the inputs
of the stages asked for checked, before any work starts. Each stage records the fingerprint of its settings,
input files and code beside its output; a stage whose record matches today's is `Cached`, any other runs again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import Task, flow
from prefect.logging import get_run_logger
from prefect.runtime import deployment

from elmrec.config import Preset, Settings, Stage, Variant, settings_for, variant_settings
from elmrec.form import NO_CHANGES, CommonSettings
from elmrec.pretrained import check_weights
from elmrec.report import Row, rows_of
from elmrec.shapes import data_label, data_settings
from elmrec.stages import MissingUpstream, check_stages, outputs, up_to_date
from tasks.data import download_task, graph_task, preprocess_task
from tasks.evaluate import baselines_task, evaluate_task
from tasks.parameters import DEFAULT_PRESET, run_settings
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
    preset: Preset = DEFAULT_PRESET,
    settings: CommonSettings = NO_CHANGES,
    overrides: dict[str, Any] | None = None,
    variants: list[Variant] | None = None,
    stages: list[Stage] | None = None,
    force: list[Stage] | None = None,
    fresh: bool = False,
    allow_unfinished: bool = False,
    rerun_of: UUID | None = None,
) -> dict[str, Any]:
    """The ELMRec pipeline: data stages, baselines, each variant trained and evaluated, one MLflow parent run.

    Precedence of settings: preset < the run named by rerun_of < settings < overrides (tasks.parameters).

    Args:
        preset: named settings (elmrec.config.PRESETS): demo (minutes on a CPU), mini, paper
        settings: the settings changed most often; an empty field keeps the preset's value
        overrides: any setting, nested, e.g. {"data": {"source": "local", "path": "/data/mine"}, "train": {"lr":
            0.0005}}; wins over `settings`
        variants: models to train and evaluate (elmrec.config.VARIANTS), each an MLflow child run; one that changes
            data settings (shuffled_ids, leaky_graph) gets its own data stages and baselines (default: elmrec)
        stages: run only these stages, on the outputs already in the work dir (checked before any work)
        force: rerun these stages even when their inputs, settings and code are unchanged
        fresh: a training that runs starts afresh instead of continuing an interrupted attempt
        allow_unfinished: evaluate a training that has not finished (its best model so far) instead of refusing
        rerun_of: a flow-run id: take that run's preset, settings, overrides and variants (this run's own, when
            set, win: settings and overrides merged over them)
    """
    chosen = run_settings({"preset": preset, "settings": settings, "overrides": overrides, "variants": variants,
                           "rerun_of": rerun_of}, deployment.id if rerun_of else None)
    base = settings_for(chosen.preset, chosen.overrides)  # the run's settings; each variant adds its own
    variants = chosen.variants or ["elmrec"]
    runs = {name: variant_settings(base, name) for name in variants}  # every variant validated up front
    wanted, forced = set(stages or Stage), set(force or [])
    if Stage.TRAIN in wanted:  # a full-size T5 without weights is refused now, not after the data stages
        for variant in runs.values():
            if variant.recommender == "elmrec":
                check_weights(variant.model)
    try:  # a stage asked for alone needs the outputs of the stages before it, made with these very settings
        check_stages(data_settings(base, runs.values()).values(), runs.values(), wanted, allow_unfinished)
    except MissingUpstream as error:
        if not deployment.id:
            raise
        raise MissingUpstream(f"{error} (a deployment run: add that stage to `stages`, or pass the flow-run id "
                              "of the run that made it as `rerun_of` to take its settings)") from None
    get_run_logger().info("stages %s (forced: %s), variants %s, settings %s", sorted(s.value for s in wanted),
                          sorted(s.value for s in forced) or "none", variants, base.model_dump_json())

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

    prepare_workdir_task(base)
    parent = open_parent_task(base, chosen.preset, list(variants))
    stats: dict[str, dict[str, Any]] = {}
    rows: list[Row] = []
    for label, each in data_settings(base, runs.values()).items():
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
        label = data_label(base, variant)
        rows += rows_of({name: record_variant_task(variant, parent, name, label)}, setting=label)

    summarize_task(base, parent, stats, rows)
    return {"mlflow_run_id": parent, "results": {row.label: dict(row.metrics) for row in rows}}
