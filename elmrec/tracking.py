"""MLflow tracking: the one module that imports mlflow.

The store defaults to SQLite under the work dir (`sqlite:///<workdir>/mlflow.db`) with artifacts in
`<workdir>/mlartifacts`, both absolute, so runs started from any folder land in the same place.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import yaml

from elmrec.config import Settings

log = logging.getLogger(__name__)

EXPERIMENT = "elmrec"


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'data': {'seed': 1}} -> {'data.seed': 1}; lists and None become strings."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value, default=str)
    return flat


def configure(settings: Settings) -> str:
    """Point MLflow at the settings' store and make sure the experiment exists; returns its id."""
    settings.workdir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.resolved_tracking_uri())
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        artifacts = (settings.workdir / "mlartifacts").as_uri()
        return mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts)
    return experiment.experiment_id


@contextmanager
def run(settings: Settings, name: str, tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None, run_id: str | None = None) -> Iterator[str]:
    """Start (or resume, with `run_id`) an MLflow run; yields its id. Nested under `parent_run_id` if given."""
    experiment_id = configure(settings)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else name, experiment_id=experiment_id,
                          tags=all_tags, nested=mlflow.active_run() is not None) as active:
        yield active.info.run_id


def log_settings(settings: Settings) -> None:
    """Settings as flat params plus the whole config as config.yaml."""
    dumped = settings.model_dump(mode="json")
    mlflow.log_params(flatten(dumped))
    mlflow.log_text(yaml.safe_dump(dumped, sort_keys=False), "config.yaml")


def log_metrics(metrics: Mapping[str, float], prefix: str = "", step: int | None = None) -> None:
    clean = {f"{prefix}{key}": float(value) for key, value in flatten(metrics).items()
             if isinstance(value, (int, float)) and not isinstance(value, bool)}
    mlflow.log_metrics(clean, step=step)


def log_params(params: Mapping[str, Any], prefix: str = "") -> None:
    mlflow.log_params(flatten(params, prefix))


def log_artifact(path: Path, artifact_dir: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path=artifact_dir)


def log_dict(values: Mapping[str, Any], name: str) -> None:
    mlflow.log_dict(dict(values), name)


def set_tags(tags: Mapping[str, str]) -> None:
    mlflow.set_tags(dict(tags))


def find_runs(settings: Settings, filter_string: str = "") -> list[dict[str, Any]]:
    """Runs of the experiment as plain dicts (id, name, params, metrics, tags): for tests and reports."""
    configure(settings)
    found = mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string=filter_string, output_format="list")
    return [{"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
             "params": dict(r.data.params), "metrics": dict(r.data.metrics), "tags": dict(r.data.tags)}
            for r in found]

