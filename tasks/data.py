"""Data stages: download, preprocess, graph. Each is cached on its fingerprint (tasks.caching)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.logging import get_run_logger

from elmrec.config import Settings
from elmrec.data.download import download
from elmrec.data.preprocess import preprocess
from elmrec.graph import build_graph
from elmrec.paths import WorkPaths
from tasks.caching import stage_cache


@task(name="download", retries=2, retry_delay_seconds=5, cache_policy=stage_cache("download"), persist_result=True)
def download_task(settings: Settings) -> list[Path]:
    """Source files -> <dataset>/raw/ (retried: network I/O)."""
    paths = WorkPaths.from_settings(settings)
    files = download(settings.data, paths.raw, settings.resolved_mirror())
    get_run_logger().info("raw files: %s", ", ".join(str(f) for f in files))
    return files


@task(name="preprocess", cache_policy=stage_cache("preprocess"), persist_result=True)
def preprocess_task(settings: Settings) -> Path:
    """raw/ -> data/*.parquet + stats.json; returns the stats path."""
    paths = WorkPaths.from_settings(settings)
    stats = preprocess(settings.data, settings.seed, paths.raw, paths.data)
    get_run_logger().info("%s: %d users, %d items, %d interactions (%d train)", settings.data.dataset,
                          stats["n_users"], stats["n_items"], stats["n_interactions"], stats["n_train_interactions"])
    return paths.data.stats


@task(name="graph", cache_policy=stage_cache("graph"), persist_result=True)
def graph_task(settings: Settings) -> Path:
    """data/interactions.parquet -> graph-<edges>/adjacency.npz + stats.json; returns the stats path."""
    paths = WorkPaths.from_settings(settings)
    stats = build_graph(paths.data, paths.graph, settings.data.graph_edges)
    get_run_logger().info("graph: %d nodes, %d edges (%s)", stats["n_nodes"], stats["n_edges"], stats["edges"])
    return paths.graph.stats
