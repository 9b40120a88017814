"""What each stage reads and writes, and when its stored output is still what a rerun would produce.

A stage's fingerprint hashes (1) the settings that shape its output (elmrec.shapes), (2) the SHA-256 of every
input file, (3) the source of the library modules that do its work — the stage's own modules and every library
module they import, directly or not, read from the code (`sources`), so that no list can miss a helper module —
and (4) where it writes. A stage that completes records its fingerprint in its output folder (`.stage.json`,
via `recording`); the stage is up to date only while that record matches the fingerprint computed now. So
replacing a user's input files, fixing a bad one, or changing the code reruns that stage and, through their
changed inputs, every stage downstream.

The download stage's inputs are the source files when they sit in a local folder (`--source local`, or a
folder mirror): their contents are checked like any other input. Remote files of the `p5` source are pinned
by the SHA-256 sums in elmrec.data.sources, whose source is part of the fingerprint.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

from elmrec.config import Settings, Stage
from elmrec.data.download import base_location, is_url, join, source_files
from elmrec.paths import METRICS_FILE, WorkPaths, atomic_path
from elmrec.shapes import digest, own_settings

RECORD = ".stage.json"  # the fingerprint an output was built from, in the output's folder

# The library modules that do each stage's work (train and evaluate: per recommender); `sources` adds what they import.
SOURCES: dict[str, tuple[str, ...]] = {
    "download": ("elmrec.data.download",),
    "preprocess": ("elmrec.data.preprocess",),
    "graph": ("elmrec.graph",),
    "baselines": ("elmrec.evaluate", "elmrec.baselines"),
}
MODEL_SOURCES: dict[str, dict[str, tuple[str, ...]]] = {
    "elmrec": {"train": ("elmrec.train",), "evaluate": ("elmrec.evaluate",)},
    "sasrec": {"train": ("elmrec.classic", "elmrec.sasrec"), "evaluate": ("elmrec.classic", "elmrec.sasrec")},
    "lightgcn": {"train": ("elmrec.classic", "elmrec.lightgcn"), "evaluate": ("elmrec.classic", "elmrec.lightgcn")},
}


# Library modules that shape no stage's output, and whose imports are not followed: settings are fingerprinted as
# values, and these only name, lay out or show things.
NOT_SHAPING = frozenset({"elmrec.config", "elmrec.shapes", "elmrec.paths", "elmrec.stages", "elmrec.progress"})


def sources(settings: Settings, stage: str) -> tuple[str, ...]:
    """The modules whose code shapes `stage`'s output under these settings: its own modules and all they import."""
    own = MODEL_SOURCES[settings.recommender][stage] if stage in ("train", "evaluate") else SOURCES[stage]
    return import_closure(own)


@cache
def import_closure(modules: tuple[str, ...], package: str = "elmrec",
                   not_shaping: frozenset[str] = NOT_SHAPING) -> tuple[str, ...]:
    """`modules` and every module of `package` they import, directly or through each other (read from their
    source, never imported), sorted; `not_shaping` modules are left out and not followed."""
    seen: set[str] = set()
    todo = [m for m in modules if m not in not_shaping]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += [m for m in imported_modules(module, package) if m not in not_shaping]
    return tuple(sorted(seen))


def imported_modules(module: str, package: str) -> set[str]:
    """The modules of `package` that `module`'s source imports (`from a import b` names a.b where b is a module)."""
    path = module_file(module)
    if path is None:
        return set()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
        for name in names:
            if name != package and not name.startswith(package + "."):
                continue
            submodules = [f"{name}.{alias.name}" for alias in node.names if isinstance(node, ast.ImportFrom)
                          and module_file(f"{name}.{alias.name}") is not None]
            found.update(submodules or [name])
    return found


@cache
def module_file(module: str) -> Path | None:
    """A module's source file, found from its dotted name under its top package's folder (nothing is imported
    but that package); None when there is none (a name imported from a module, a module not written yet)."""
    top, _, rest = module.partition(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(next(iter(spec.submodule_search_locations)), *rest.split(".") if rest else ())
    return next((path for path in (base.with_suffix(".py"), base / "__init__.py") if path.is_file()), None)


def inputs(settings: Settings, stage: str) -> list[tuple[Path, str]]:
    """(input path, the stage that writes it) for `stage`, in a fixed order (download: the user's files)."""
    paths = WorkPaths.from_settings(settings)
    data = [(p, "preprocess") for p in paths.data.all()]
    graph = [(p, "graph") for p in paths.graph.all()]
    checkpoint = [(paths.run(settings).checkpoint, "train")]
    return {
        "download": [(path, "download") for path in local_sources(settings)],
        "preprocess": [(paths.raw, "download")],
        "graph": data,
        "train": data + graph,
        "evaluate": data + graph + checkpoint,
        "baselines": data,
    }[stage]


def local_sources(settings: Settings) -> list[Path]:
    """The source files of a dataset that sit in a local folder (their contents are the download's input)."""
    try:
        base = base_location(settings.data, settings.resolved_mirror())
    except ValueError:
        return []  # no --path: the download stage itself says so
    if is_url(base):
        return []
    return [path for path in (Path(join(base, f.relative)) for f in source_files(settings.data)) if path.is_file()]


def output_folder(settings: Settings, stage: str) -> Path:
    """The folder a stage writes (and records its fingerprint in)."""
    paths = WorkPaths.from_settings(settings)
    return {
        "download": lambda: paths.raw,
        "preprocess": lambda: paths.data.root,
        "graph": lambda: paths.graph.root,
        "train": lambda: paths.run(settings).root,
        "evaluate": lambda: paths.run(settings).evaluation(settings),
        "baselines": lambda: paths.baselines(settings),
    }[stage]()


def outputs(settings: Settings, stage: str) -> list[Path]:
    """The files (or folders) a completed stage leaves."""
    paths = WorkPaths.from_settings(settings)
    run = paths.run(settings)
    return {
        "download": [paths.raw],
        "preprocess": paths.data.all(),
        "graph": paths.graph.all(),
        "train": [run.checkpoint, run.history],
        "evaluate": [output_folder(settings, "evaluate") / METRICS_FILE],
        "baselines": [paths.baselines(settings) / METRICS_FILE],
    }[stage]


class MissingUpstream(RuntimeError):
    """A stage asked to run without the output of a stage before it (which is not asked to run)."""


def missing_upstream(settings: Settings, stage: str | Stage, running: Iterable[str] = (),
                     allow_unfinished: bool = False) -> tuple[Path, str] | None:
    """The first input `stage` needs that is absent, with the stage that writes it; None if all exist. Inputs of
    the stages in `running` (they run first) do not count, nor a finished model when `allow_unfinished` and an
    unfinished training is there (its best model so far will do)."""
    name = stage.value if isinstance(stage, Stage) else stage
    for path, producer in inputs(settings, name):
        if producer == name or producer in running or path.exists():
            continue
        if producer == "train" and allow_unfinished and WorkPaths.from_settings(settings).run(
                settings).attempt.checkpoint.is_dir():
            continue
        return path, producer
    return None


def check_upstream(settings: Settings, stage: str | Stage, running: Iterable[str] = (),
                   allow_unfinished: bool = False) -> None:
    """MissingUpstream naming the missing input and the stage to run first, as `elmrec task` words it."""
    if missing := missing_upstream(settings, stage, set(running), allow_unfinished):
        path, producer = missing
        raise MissingUpstream(f"{path} is missing; run `elmrec task {producer}` first (same options)")


def check_stages(data: Iterable[Settings], variants: Iterable[Settings], stages: Iterable[Stage],
                 allow_unfinished: bool = False) -> None:
    """Before a flow runs `stages`: MissingUpstream for the first input one of them needs that is neither there
    nor written by another of them. `data`: one settings per distinct data output (the data stages and the
    baselines run on each); `variants`: the models' settings (train, evaluate)."""
    running = {stage.value for stage in stages}
    per_data = [s for s in ("download", "preprocess", "graph", "baselines")
                if s in running or (s == "baselines" and "evaluate" in running)]  # baselines: the evaluate stage's
    per_variant = [s for s in ("train", "evaluate") if s in running]
    for settings, names in [(each, per_data) for each in data] + [(each, per_variant) for each in variants]:
        for name in names:
            check_upstream(settings, name, running, allow_unfinished)


def outputs_exist(settings: Settings, stage: str) -> bool:
    return all(path.exists() for path in outputs(settings, stage))


def fingerprint(settings: Settings, stage: str) -> str:
    """A key that changes whenever the stage's output would (whether the outputs still exist is not in it)."""
    parts = {
        "stage": stage,
        "settings": own_settings(settings, stage),
        "inputs": [file_digest(path) for path, _ in inputs(settings, stage)],
        "sources": [source_digest(module) for module in sources(settings, stage)],
        "outputs": [str(path) for path in outputs(settings, stage)],
    }
    return digest(parts, length=32)


def recorded(settings: Settings, stage: str) -> str | None:
    """The fingerprint the stage's stored output was built from; None when there is no complete output (a
    damaged record counts as none: the stage runs again)."""
    record = read_record(settings, stage) if outputs_exist(settings, stage) else None
    return str(record["fingerprint"]) if record and "fingerprint" in record else None


def up_to_date(settings: Settings, stage: str) -> bool:
    """True when the stored output exists and was built from exactly today's settings, inputs and code."""
    stored = recorded(settings, stage)
    return stored is not None and stored == fingerprint(settings, stage)


@contextmanager
def recording(settings: Settings, stage: str) -> Iterator[str]:
    """Run a stage inside this block; on success its fingerprint (taken before it ran) is recorded, with when the
    stage started and finished (UTC, ISO 8601)."""
    key, started = fingerprint(settings, stage), now()
    yield key
    folder = output_folder(settings, stage)
    with atomic_path(folder / RECORD) as tmp:
        tmp.write_text(json.dumps({"stage": stage, "fingerprint": key, "started": started, "finished": now()}) + "\n")


def read_record(settings: Settings, stage: str) -> dict[str, str] | None:
    """The stored output's record ({stage, fingerprint, started, finished}); None when there is none."""
    record = output_folder(settings, stage) / RECORD
    try:
        return dict(json.loads(record.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def file_digest(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (names and contents, sorted); dot-files (records, locks,
    temporaries) are not part of an output. A missing path digests as ''."""
    if not path.exists():
        return ""
    files: Iterable[Path] = sorted(
        p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                p.relative_to(path).parts)
    ) if path.is_dir() else [path]
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
    path = module_file(module)
    return "" if path is None else hashlib.sha256(path.read_bytes()).hexdigest()
