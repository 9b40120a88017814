"""Every artifact path, derived from one work dir and the settings that shape the artifact (elmrec.shapes).

Layout (one folder per dataset; each output keyed by everything that shapes it, so runs with other
settings never overwrite each other):

    <workdir>/
      mlflow.db                                     MLflow store (default)
      <dataset>/
        raw-<source>-<key>/                         download: sequential.txt + datamaps.json, or reviews_*.json.gz
        <id_scheme>-seed<seed>[-u<max_users>]-<key>/
          data/                                     preprocess: Parquet tables + stats.json
          graph-<edges>/                            graph: adjacency.npz + stats.json
          runs-<edges>/<recommender>-<key>/         train: checkpoint/, last/, history.json
            eval-<key>/<split>/                     evaluate: metrics.json, predictions_<task>_<decoder>.parquet
          baselines-<key>/<split>/                  evaluate: popularity, random and id_order baselines

Every stage output also holds `.stage.json`, the fingerprint it was built from (elmrec.stages).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from elmrec.config import Settings
from elmrec.shapes import key

log = logging.getLogger(__name__)


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

    @property
    def attempt(self) -> RunPaths:
        """A training in progress: its own checkpoint/, last/, history.json, moved over the three above only when
        it finishes (elmrec.checkpoint.promote), so checkpoint/ + history.json always describe a finished one."""
        return RunPaths(self.root / "attempt")

    def evaluation(self, settings: Settings) -> Path:
        """metrics.json + predictions of the evaluation split under one set of decoding settings."""
        return self.root / f"eval-{key(settings, 'evaluate')}" / settings.eval.split


@dataclass(frozen=True)
class WorkPaths:
    """The folders of one dataset's raw files and derived data, keyed by the settings that shape them."""

    raw: Path  # download's output
    derived: Path  # preprocess's folder: data/ and everything computed from it
    graph_edges: str

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkPaths:
        data = settings.data
        dataset_dir = settings.workdir / data.dataset
        subset = f"-u{data.max_users}" if data.max_users else ""
        return cls(dataset_dir / f"raw-{data.source}-{key(settings, 'download')}",
                   dataset_dir / f"{data.id_scheme}-seed{settings.seed}{subset}-{key(settings, 'preprocess')}",
                   data.graph_edges)

    @property
    def data(self) -> DataPaths:
        return DataPaths(self.derived / "data")

    @property
    def graph(self) -> GraphPaths:
        return GraphPaths(self.derived / f"graph-{self.graph_edges}")

    def run(self, settings: Settings) -> RunPaths:
        """The training run of one recommender under these settings (one folder per distinct configuration)."""
        return RunPaths(self.derived / f"runs-{self.graph_edges}" / f"{settings.recommender}-{key(settings, 'train')}")

    def baselines(self, settings: Settings) -> Path:
        """Popularity, random and id_order baselines of the evaluation split."""
        return self.derived / f"baselines-{key(settings, 'baselines')}" / settings.eval.split


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.

    Readers never see a half-written file, and a failure leaves no partial output behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=target.parent)
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
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=target.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; outputs get the usual permissions
    try:
        yield tmp
        with locked(target):
            old = target.with_name(f"{_temp_prefix(target)}old{TEMP_SUFFIX}")  # one swap at a time: the lock
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


# ---------------------------------------------------------------- temporaries of dead processes, writability

TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"^\..+\.(?P<pid>[0-9]+)\.[A-Za-z0-9_]+\.tmp$")  # .<name>.<pid>.<random>.tmp


def _temp_prefix(target: Path) -> str:
    """`.<name>.<pid>.`: a temporary carries its owner's pid, so a later start can tell whether it is stale."""
    return f".{target.name}.{os.getpid()}."


def pid_alive(pid: int, started: str | None = None) -> bool:
    """Whether process `pid` exists on this machine (signal 0 checks without sending anything); with `started`
    (its `process_start`), also that the pid was not reused by a newer process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    return started is None or process_start(pid) in (None, started)


def process_start(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (Linux /proc); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5); fields 1-2 end with the name's ')'


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete the temporary files and folders below `root` whose owning process is gone (e.g. `kill -9`).

    Only names written by `atomic_path`/`atomic_dir` (`.<name>.<pid>.<random>.tmp`) of pids that no longer
    exist are touched; temporaries of live processes stay. Returns what was removed. Call once at start.
    """
    removed = []
    for folder, subfolders, files in os.walk(root):
        for name in [*subfolders, *files]:
            match = _TEMP_NAME.match(name)
            if match is None or pid_alive(int(match["pid"])):
                continue
            path = Path(folder) / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        subfolders[:] = [d for d in subfolders if not _TEMP_NAME.match(d)]  # never walk into temporaries
    for path in removed:
        log.info("removed %s, left behind by a process that no longer runs", path)
    return removed


class NotWritableError(OSError):
    """The work dir cannot be created or written; the message names the path."""


def ensure_writable(workdir: Path) -> None:
    """Create `workdir` if needed and prove it takes a file, failing at once with the path named.

    Without this a read-only work dir surfaces minutes later, as MLflow's retries of its SQLite store.
    """
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as error:
        raise NotWritableError(f"work dir {workdir} is not writable ({error.strerror or error}); "
                               "choose another with --workdir or ELMREC_WORKDIR") from error
