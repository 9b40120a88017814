"""The `elmrec` flow: the pipeline, stage by stage.

    download → preprocess → graph → (train → evaluate, as they land) → MLflow

`preset` picks a named settings preset (elmrec.config.PRESETS) and `overrides` changes any field of it, as a
nested dict: {"data": {"dataset": "sports"}, "seed": 7}. Settings are validated before any work starts.
`stages` runs only some stages, on the outputs already in the work dir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from elmrec.config import Stage, settings_for
from tasks.data import download_task, graph_task, preprocess_task
from tasks.tracking import track_task


@flow(name="elmrec", validate_parameters=True)
def elmrec(preset: str = "demo", overrides: dict[str, Any] | None = None, stages: list[Stage] | None = None) -> str:
    settings = settings_for(preset, overrides)
    wanted = set(stages or Stage)
    logger = get_run_logger()
    logger.info("settings: %s", settings.model_dump_json())

    stats: dict[str, Path] = {}
    if Stage.DOWNLOAD in wanted:
        download_task(settings)
    if Stage.PREPROCESS in wanted:
        stats["data"] = preprocess_task(settings)
    if Stage.GRAPH in wanted:
        stats["graph"] = graph_task(settings)

    tags = {"prefect.flow_run_id": str(flow_run.get_id() or ""), "preset": preset,
            "stages": ",".join(s.value for s in Stage if s in wanted)}
    return track_task(settings, flow_run.get_name() or "elmrec", tags, stats)
