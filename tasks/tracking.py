"""Record a flow run in MLflow: settings, and the stats each stage wrote."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.logging import get_run_logger

from elmrec import tracking
from elmrec.config import Settings


@task(name="track", retries=1, retry_delay_seconds=2)
def track_task(settings: Settings, run_name: str, tags: dict[str, str], stats_files: dict[str, Path]) -> str:
    """One MLflow run with the settings as params and each stage's stats as metrics + artifacts."""
    with tracking.run(settings, run_name, tags) as run_id:
        tracking.log_settings(settings)
        for stage, path in stats_files.items():
            tracking.log_metrics(json.loads(Path(path).read_text()), prefix=f"{stage}.")
            tracking.log_artifact(Path(path), artifact_dir=stage)
    get_run_logger().info("MLflow run %s in %s", run_id, settings.resolved_tracking_uri())
    return run_id
