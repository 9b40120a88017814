"""Data stages: download, preprocess, graph. Each is cached on its fingerprint (tasks.caching) and records it
beside its output (elmrec.stages.recording)."""

from __future__ import annotations

from pathlib import Path

from prefect import Task, task
from prefect.client.schemas.objects import TaskRun
from prefect.logging import get_run_logger
from prefect.states import State

from elmrec.config import Settings
from elmrec.data.download import download, is_retryable
from elmrec.data.preprocess import preprocess
from elmrec.graph import build_graph
from elmrec.paths import WorkPaths
from elmrec.stages import recording
from tasks.caching import stage_cache


def worth_retrying(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry only what may pass later (network trouble, HTTP 5xx, truncation); never a 404 or a bad checksum."""
    return is_retryable(state.result(raise_on_failure=False))


@task(name="download", retries=2, retry_delay_seconds=5, retry_condition_fn=worth_retrying,
      cache_policy=stage_cache("download"), persist_result=True)
def download_task(settings: Settings) -> list[Path]:
    """Source files -> <dataset>/raw-<source>-<key>/ (retried: network I/O)."""
    paths = WorkPaths.from_settings(settings)
    with recording(settings, "download"):
        files = download(settings.data, paths.raw, settings.resolved_mirror())
    get_run_logger().info("raw files: %s", ", ".join(str(f) for f in files))
    return files


@task(name="preprocess", cache_policy=stage_cache("preprocess"), persist_result=True)
def preprocess_task(settings: Settings) -> Path:
    """raw/ -> data/*.parquet + stats.json; returns the stats path."""
    paths = WorkPaths.from_settings(settings)
    with recording(settings, "preprocess"):
        stats = preprocess(settings.data, settings.seed, paths.raw, paths.data)
    get_run_logger().info("%s: %d users, %d items, %d interactions (%d train)", settings.data.dataset,
                          stats["n_users"], stats["n_items"], stats["n_interactions"], stats["n_train_interactions"])
    return paths.data.stats


@task(name="graph", cache_policy=stage_cache("graph"), persist_result=True)
def graph_task(settings: Settings) -> Path:
    """data/interactions.parquet -> graph-<edges>/adjacency.npz + stats.json; returns the stats path."""
    paths = WorkPaths.from_settings(settings)
    with recording(settings, "graph"):
        stats = build_graph(paths.data, paths.graph, settings.data.graph_edges)
    get_run_logger().info("graph: %d nodes, %d edges (%s)", stats["n_nodes"], stats["n_edges"], stats["edges"])
    return paths.graph.stats
