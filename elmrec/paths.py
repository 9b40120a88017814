"""Every artifact path, derived from one work dir and the settings that change the artifact.

Layout (one folder per dataset; derived data keyed by the settings that shape it, so runs with other
settings never overwrite each other):

    <workdir>/
      mlflow.db                               MLflow store (default)
      <dataset>/
        raw/                                  download: sequential.txt + datamaps.json, or reviews_*.json.gz
        <id_scheme>-seed<seed>[-u<max_users>]/
          data/                               preprocess: Parquet tables + stats.json
          graph-<edges>/                      graph: adjacency.npz + stats.json
          runs-<edges>/<variant>-<hash>/      train: checkpoint/, last/, history.json
            eval-<hash>/<split>/              evaluate: metrics.json, predictions_<task>.parquet
          baselines-<hash>/<split>/           evaluate: popularity and random baselines
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pydantic import BaseModel

from elmrec.config import Settings


@dataclass(frozen=True)
class DataPaths:
    """The preprocess stage's outputs (fixed schemas: see elmrec.data.schemas)."""

    root: Path

    @property
    def interactions(self) -> Path:
        return self.root / "interactions.parquet"

    @property
    def histories(self) -> Path:
        return self.root / "histories.parquet"

    @property
    def candidates(self) -> Path:
        return self.root / "candidates.parquet"

    @property
    def user_map(self) -> Path:
        return self.root / "user_map.parquet"

    @property
    def item_map(self) -> Path:
        return self.root / "item_map.parquet"

    @property
    def stats(self) -> Path:
        return self.root / "stats.json"

    def all(self) -> list[Path]:
        return [self.interactions, self.histories, self.candidates, self.user_map, self.item_map, self.stats]


@dataclass(frozen=True)
class GraphPaths:
    root: Path

    @property
    def adjacency(self) -> Path:
        return self.root / "adjacency.npz"

    @property
    def stats(self) -> Path:
        return self.root / "stats.json"

    def all(self) -> list[Path]:
        return [self.adjacency, self.stats]


def digest(values: object, length: int = 8) -> str:
    """A short stable hash of JSON-able values (settings), for folder names and cache keys."""
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def run_key(settings: Settings) -> str:
    """`<variant>-<hash of model and training settings>`: two configurations never share a folder."""
    shaping = {"model": settings.model.model_dump(mode="json", exclude={"model_mirror"}),
               "train": settings.train.model_dump(mode="json")}
    return f"{settings.model.variant}-{digest(shaping)}"


METRICS_FILE = "metrics.json"  # in every evaluation folder (model and baselines)


@dataclass(frozen=True)
class RunPaths:
    """The train stage's outputs, and the evaluate stage's below them."""

    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint"  # the best model by validation loss (save_pretrained + tables)

    @property
    def last(self) -> Path:
        return self.root / "last"  # the latest epoch's model, optimizer and RNG state, for --resume

    @property
    def history(self) -> Path:
        return self.root / "history.json"  # per-epoch train/valid loss and throughput

    def evaluation(self, eval_settings: BaseModel, split: str) -> Path:
        """metrics.json + predictions_<task>.parquet for one split under one set of decoding settings."""
        shaping = eval_settings.model_dump(mode="json", exclude={"split", "batch_size"})
        return self.root / f"eval-{digest(shaping)}" / split


@dataclass(frozen=True)
class WorkPaths:
    workdir: Path
    dataset: str
    variant_key: str  # id scheme, seed and subset: the settings that shape preprocessed data
    graph_edges: str

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkPaths:
        data = settings.data
        key = f"{data.id_scheme}-seed{settings.seed}" + (f"-u{data.max_users}" if data.max_users else "")
        return cls(settings.workdir, data.dataset, key, data.graph_edges)

    @property
    def dataset_dir(self) -> Path:
        return self.workdir / self.dataset

    @property
    def raw(self) -> Path:
        return self.dataset_dir / "raw"

    @property
    def derived(self) -> Path:
        return self.dataset_dir / self.variant_key

    @property
    def data(self) -> DataPaths:
        return DataPaths(self.derived / "data")

    @property
    def graph(self) -> GraphPaths:
        return GraphPaths(self.derived / f"graph-{self.graph_edges}")

    def run(self, settings: Settings) -> RunPaths:
        """The training run for these model + training settings (one folder per distinct configuration)."""
        return RunPaths(self.derived / f"runs-{self.graph_edges}" / run_key(settings))

    def baselines(self, settings: Settings) -> Path:
        """Popularity and random baselines of one split, keyed by the settings that shape their rankings."""
        shaping = {"top_n": settings.eval.top_n, "max_users": settings.eval.max_users,
                   "max_history": settings.train.max_history}
        return self.derived / f"baselines-{digest(shaping)}" / settings.eval.split


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.

    Readers never see a half-written file, and a failure leaves no partial output behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~current_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it replaces `target` whole.

    A stage writes all its files there, so a failure never leaves a mix of old and new outputs, and a
    lock on `target` serialises the swap when two runs finish the same stage at once.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; outputs get the usual permissions
    try:
        yield tmp
        with locked(target):
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            if target.exists():
                os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@cache
def current_umask() -> int:
    """The process umask (read once: reading it means setting it, briefly, which is not thread-safe)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def locked(target: Path) -> Iterator[None]:
    """An exclusive advisory lock on `target` (a `.<name>.lock` file beside it), across processes."""
    lock_path = target.with_name(f".{target.name}.lock")
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
