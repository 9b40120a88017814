"""What each stage reads, writes and depends on: the contracts behind reruns and caching.

A stage's fingerprint hashes (1) the settings that shape its output, (2) the SHA-256 of every input file,
(3) the source of the library modules that do its work, and (4) where it writes. Equal fingerprints mean
the stored outputs are what a rerun would produce, so an orchestrator may skip the stage. A stage whose
outputs are missing has no fingerprint: it must run.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from elmrec.config import Settings, Stage
from elmrec.paths import METRICS_FILE, WorkPaths, digest

# The library modules whose code determines each stage's output.
SOURCES: dict[str, tuple[str, ...]] = {
    "download": ("elmrec.data.download",),
    "preprocess": ("elmrec.data.preprocess", "elmrec.data.p5", "elmrec.data.amazon", "elmrec.data.negatives",
                   "elmrec.data.schemas"),
    "graph": ("elmrec.graph",),
    "train": ("elmrec.train", "elmrec.model", "elmrec.prompts", "elmrec.wholeword", "elmrec.graph"),
    "evaluate": ("elmrec.evaluate", "elmrec.decode", "elmrec.trie", "elmrec.metrics", "elmrec.model",
                 "elmrec.prompts", "elmrec.wholeword"),
    "baselines": ("elmrec.evaluate", "elmrec.baselines", "elmrec.metrics"),
}


def inputs(settings: Settings, stage: str) -> list[tuple[Path, str]]:
    """(input path, the stage that writes it) for `stage`, in a fixed order."""
    paths = WorkPaths.from_settings(settings)
    data = [(p, "preprocess") for p in paths.data.all()]
    graph = [(p, "graph") for p in paths.graph.all()]
    run = paths.run(settings)
    checkpoint = [(run.checkpoint, "train")]
    return {
        "download": [],
        "preprocess": [(paths.raw, "download")],
        "graph": data,
        "train": data + graph,
        "evaluate": data + graph + checkpoint,
        "baselines": data,
    }[stage]


def outputs(settings: Settings, stage: str) -> list[Path]:
    paths = WorkPaths.from_settings(settings)
    run = paths.run(settings)
    return {
        "download": [paths.raw],
        "preprocess": paths.data.all(),
        "graph": paths.graph.all(),
        "train": [run.checkpoint, run.history],
        "evaluate": [run.evaluation(settings.eval, settings.eval.split) / METRICS_FILE],
        "baselines": [paths.baselines(settings) / METRICS_FILE],
    }[stage]


def shaping_settings(settings: Settings, stage: str) -> dict[str, Any]:
    """The settings a stage's output depends on (upstream settings reach it through its input files)."""
    data = settings.data.model_dump(mode="json", exclude={"mirror", "graph_edges"})
    return {
        "download": {"data": data},
        "preprocess": {"data": data, "seed": settings.seed},
        "graph": {"graph_edges": settings.data.graph_edges},
        "train": {"model": settings.model.model_dump(mode="json", exclude={"model_mirror"}),
                  "train": settings.train.model_dump(mode="json"), "seed": settings.seed},
        "evaluate": {"eval": settings.eval.model_dump(mode="json", exclude={"batch_size"}), "seed": settings.seed},
        "baselines": {"split": settings.eval.split, "max_users": settings.eval.max_users, "top_n": settings.eval.top_n,
                      "max_history": settings.train.max_history, "seed": settings.seed},
    }[stage]


def missing_upstream(settings: Settings, stage: str | Stage) -> tuple[Path, str] | None:
    """The first input `stage` needs that is absent, with the stage that writes it; None if all exist."""
    for path, producer in inputs(settings, Stage(stage).value if isinstance(stage, Stage) else stage):
        if not path.exists():
            return path, producer
    return None


def outputs_exist(settings: Settings, stage: str) -> bool:
    return all(path.exists() for path in outputs(settings, stage))


def fingerprint(settings: Settings, stage: str) -> str:
    """A key that changes whenever the stage's output would (whether the outputs still exist is not in it)."""
    parts = {
        "stage": stage,
        "settings": shaping_settings(settings, stage),
        "inputs": [file_digest(path) for path, _ in inputs(settings, stage)],
        "sources": [source_digest(module) for module in SOURCES[stage]],
        "outputs": [str(path) for path in outputs(settings, stage)],
    }
    return digest(parts, length=32)


def file_digest(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (names and contents, in sorted order)."""
    files: Iterable[Path] = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    hasher = hashlib.sha256()
    for file in files:
        hasher.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                hasher.update(chunk)
    return hasher.hexdigest()


@cache
def source_digest(module: str) -> str:
    """SHA-256 of a module's source file, found without importing it ('' for a module not written yet)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return ""
    return hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()
