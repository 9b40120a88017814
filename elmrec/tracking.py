"""MLflow tracking: with elmrec.registry (the logged model that recommends), the only modules that import mlflow.

The store defaults to SQLite under the work dir (`sqlite:///<workdir>/mlflow.db`) with artifacts in
`<workdir>/mlartifacts`, both absolute, so runs started from any folder land in the same place. A fresh SQLite
store is created under a lock (two runs starting at once would race MLflow's schema migrations), and every run
records the process that owns it, so `fail_orphaned_runs` can close the runs of processes that died.

The experiment is marked as classic model development (`mlflow.experimentKind`), and every link this project
prints asks for the classic view (`?workflowType=machine_learning`): MLflow 3.17's UI otherwise opens a fresh
browser on the GenAI overview, whatever the tag says. Runs may be created with the real start time of the work they
record (`start_ms`) and closed with its end (`end_ms`); `span` turns stage records into those times.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import socket
import subprocess
import time
import warnings
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
import polars as pl
import yaml
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param

from elmrec.config import Settings
from elmrec.paths import ensure_writable, locked, pid_alive, process_start

log = logging.getLogger(__name__)

EXPERIMENT = "elmrec"
OWNER_TAGS = ("elmrec.host", "elmrec.pid", "elmrec.pid_start")  # the process that runs an MLflow run
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # classic model development
CLASSIC_VIEW = "workflowType=machine_learning"  # in a link: MLflow 3.17's UI shows runs, not the GenAI overview
DESCRIPTION_TAG = "mlflow.note.content"  # a run's description (markdown) in the MLflow UI
DATASET_CONTEXT_TAG = "mlflow.data.context"  # what a run's input dataset was used for
# Tags and artifacts the pipeline writes (tasks.tracking) and reports read (elmrec.compare)
FLOW_RUN_TAG = "prefect.flow_run_id"
ROLE_TAG, MODEL_TAG, DATA_TAG = "elmrec.role", "elmrec.model", "elmrec.data_setting"  # parent|variant|baseline
OWN_DATA = "own"  # DATA_TAG of rows on the run's own data setting
STATS_ARTIFACT = "stats.json"  # the parent's {data setting: {"data": ..., "graph": ...}} ("" = the run's own)


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
    ensure_writable(settings.workdir)
    uri = settings.resolved_tracking_uri()
    mlflow.set_tracking_uri(uri)
    with _store_lock(uri):  # the first call of a process creates (migrates) the store; one process at a time
        experiment = mlflow.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            artifacts = (settings.workdir / "mlartifacts").as_uri()
            return mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts, tags=EXPERIMENT_KIND)
    for key, value in EXPERIMENT_KIND.items():  # a store made before the experiment kind was set
        if experiment.tags.get(key) != value:
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def _store_lock(uri: str) -> AbstractContextManager[None]:
    """A lock on a local SQLite store's file; other stores serialise their own schema changes."""
    if uri.startswith("sqlite:///") and ":memory:" not in uri:
        return locked(Path(uri.removeprefix("sqlite:///").split("?")[0]))
    return nullcontext()


@dataclass(frozen=True)
class RunLog:
    """Logs into one existing run by id, without MLflow's global active-run state (safe across threads)."""

    run_id: str

    @property
    def client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient()

    def settings(self, settings: Settings, exclude: set[str] | None = None, **replace: Any) -> None:
        """The settings as params (dotted names) and config.yaml; `exclude` leaves out top-level sections that do
        not apply to the run, `replace` sets top-level fields (a baseline's `recommender`)."""
        dumped = {**settings.model_dump(mode="json", exclude=exclude), **replace}
        self.params(dumped)
        self.client.log_text(self.run_id, yaml.safe_dump(dumped, sort_keys=False), "config.yaml")

    def params(self, values: Mapping[str, Any], prefix: str = "") -> None:
        existing = self.client.get_run(self.run_id).data.params
        fresh = {k: str(v) for k, v in flatten(values, prefix).items() if k not in existing}  # params are write-once
        if fresh:
            self.client.log_batch(self.run_id, params=[Param(k, v[:6000]) for k, v in fresh.items()])

    def metrics(self, values: Mapping[str, Any], prefix: str = "", step: int = 0) -> None:
        now = int(time.time() * 1000)
        numeric = [Metric(f"{prefix}{k}", float(v), now, step) for k, v in flatten(values).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for start in range(0, len(numeric), 1000):
            self.client.log_batch(self.run_id, metrics=numeric[start:start + 1000])

    def artifact(self, path: Path, artifact_dir: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path=artifact_dir)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_dir)

    def artifact_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def describe(self, markdown: str) -> None:
        """The run's description in the MLflow UI."""
        self.client.set_tag(self.run_id, DESCRIPTION_TAG, markdown)

    def splits(self, parquet: Path, name: str, contexts: Mapping[str, str], column: str = "split") -> None:
        """One MLflow input dataset per split of a Parquet file (rows whose `column` is a key of `contexts`),
        named `<name> · <split>`, with the file as its source and `contexts[split]` as its context (training,
        validation, evaluation). Digest and profile come from the rows: milliseconds for Beauty's 200k."""
        frame = pl.read_parquet(parquet)
        inputs = []
        for split, context in contexts.items():
            with warnings.catch_warnings():  # a local path matches two equivalent registered sources
                warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
                dataset = mlflow.data.from_polars(frame.filter(pl.col(column) == split), source=str(parquet),
                                                  name=f"{name} · {split}")
            inputs.append(DatasetInput(Dataset(**dataset.to_dict()), tags=[InputTag(DATASET_CONTEXT_TAG, context)]))
        self.client.log_inputs(self.run_id, datasets=inputs)


def find_or_create_run(settings: Settings, name: str, tags: Mapping[str, str], match: Mapping[str, str],
                       parent_run_id: str | None = None, start_ms: int | None = None) -> str:
    """The run whose tags include all of `match` (a retried flow run finds its earlier one), else a new run
    starting at `start_ms` (ms since the epoch; default now).

    The run is left RUNNING; stages log into it with `RunLog(run_id)` and `finish` closes it.
    """
    experiment_id = configure(settings)
    client = mlflow.MlflowClient()
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in match.items())
    found = client.search_runs([experiment_id], filter_string=query, max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        for key, value in owner_tags().items():  # this process owns it now
            client.set_tag(run_id, key, value)
        log.info("MLflow: attaching to existing run %s (%s)", run_id, query)
        return run_id
    all_tags = {**tags, **match, **owner_tags()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    return client.create_run(experiment_id, run_name=name, tags=all_tags, start_time=start_ms).info.run_id


def owner_tags() -> dict[str, str]:
    """Tags naming this process (host, pid, start time), so a later start can tell whether it still runs."""
    pid = os.getpid()
    return dict(zip(OWNER_TAGS, (socket.gethostname(), str(pid), process_start(pid) or ""), strict=True))


def fail_orphaned_runs(settings: Settings) -> list[str]:
    """Mark FAILED the RUNNING runs whose owning process on this host is gone (killed flow runs); returns their ids.

    Runs owned by live processes, by other hosts, or created before owners were recorded stay as they are.
    """
    experiment_id = configure(settings)
    client = mlflow.MlflowClient()
    host_tag, pid_tag, start_tag = OWNER_TAGS
    query = f"attributes.status = 'RUNNING' and tags.`{host_tag}` = '{socket.gethostname()}'"
    failed = []
    for run in client.search_runs([experiment_id], filter_string=query, max_results=50000):
        tags = run.data.tags
        if pid_tag in tags and not pid_alive(int(tags[pid_tag]), tags.get(start_tag) or None):
            client.set_terminated(run.info.run_id, status="FAILED")
            log.warning("MLflow: run %s (%s) was left RUNNING by process %s, which is gone: marked FAILED",
                        run.info.run_id, run.info.run_name, tags[pid_tag])
            failed.append(run.info.run_id)
    return failed


def finish(settings: Settings, run_id: str, status: str = "FINISHED", end_ms: int | None = None) -> None:
    """Close a run, at `end_ms` (ms since the epoch; default now)."""
    configure(settings)
    mlflow.MlflowClient().set_terminated(run_id, status=status, end_time=end_ms)


def started_ms(settings: Settings, run_id: str) -> int:
    """When a run started (ms since the epoch)."""
    configure(settings)
    return int(mlflow.MlflowClient().get_run(run_id).info.start_time)


def iso_ms(timestamp: str) -> int:
    """An ISO 8601 time with its zone (a stage record's `started`/`finished`) in ms since the epoch."""
    return int(datetime.fromisoformat(timestamp).timestamp() * 1000)


def span(records: Sequence[Mapping[str, str] | None]) -> tuple[int | None, int | None]:
    """(start, end) in ms of the stages whose records are given: the first `started`, the last `finished`;
    None where no record holds one (the run then starts or ends when it is logged)."""
    starts = [iso_ms(r["started"]) for r in records if r and "started" in r]
    ends = [iso_ms(r["finished"]) for r in records if r and "finished" in r]
    return (min(starts) if starts else None), (max(ends) if ends else None)


def environment_tags() -> dict[str, str]:
    """Provenance of a run: the git commit of the code and the versions of the libraries that shape results."""
    tags = {}
    for package in ("elmrec", "torch", "transformers", "prefect", "mlflow", "polars", "scipy"):
        try:
            tags[f"version.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            tags[f"version.{package}"] = "absent"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
        tags["git.commit"] = commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        tags["git.commit"] = "unknown"
    return tags


DEFAULT_UI = "http://127.0.0.1:5000"  # where `elmrec ui` serves this store when the port is free


def run_url(settings: Settings, run_id: str, ui: str = DEFAULT_UI) -> str:
    """The run's address in the MLflow UI at `ui` (the app layer knows the port a running UI took)."""
    configure(settings)
    experiment_id = mlflow.get_run(run_id).info.experiment_id
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}?{CLASSIC_VIEW}"


def find_runs(settings: Settings, filter_string: str = "") -> list[dict[str, Any]]:
    """Runs of the experiment as plain dicts (id, name, status, start/end ms, params, metrics, tags), the latest
    first: for tests and reports."""
    configure(settings)
    found = mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string=filter_string, output_format="list",
                               order_by=["attributes.start_time DESC"])
    return [{"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
             "start_time": r.info.start_time, "end_time": r.info.end_time,
             "params": dict(r.data.params), "metrics": dict(r.data.metrics), "tags": dict(r.data.tags)}
            for r in found]


def read_artifact_text(settings: Settings, run_id: str, name: str) -> str | None:
    """The text of one artifact of a run; None when the run has no such artifact."""
    configure(settings)
    try:
        return mlflow.artifacts.load_text(f"runs:/{run_id}/{name}")
    except (mlflow.exceptions.MlflowException, OSError):
        return None

