import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elmrec.config import DataSettings
from elmrec.data.preprocess import preprocess
from elmrec.paths import (
    DataPaths,
    NotWritableError,
    atomic_dir,
    atomic_path,
    current_umask,
    ensure_writable,
    remove_stale_temporaries,
)
from tests.conftest import write_p5


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_dir(target) as staged:
        (staged / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target) as staged:
        (staged / "b").write_text("2")
        raise RuntimeError("stage failed half way")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    with atomic_dir(target) as staged:
        (staged / "c").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c"]
    assert target.stat().st_mode & 0o777 == 0o777 & ~current_umask()  # not mkdtemp's 0700
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]


def _preprocess(raw: str, out: str) -> None:
    for _ in range(3):
        preprocess(DataSettings(dataset="tiny", source="local"), 5, Path(raw), DataPaths(Path(out)))


def test_concurrent_runs_on_one_workdir_do_not_corrupt_outputs(tmp_path: Path, tiny_histories) -> None:
    raw = write_p5(tmp_path / "raw", tiny_histories, n_items=300)
    reference = DataPaths(tmp_path / "reference")
    preprocess(DataSettings(dataset="tiny", source="local"), 5, raw, reference)
    shared = tmp_path / "shared"
    context = mp.get_context("spawn")
    workers = [context.Process(target=_preprocess, args=(str(raw), str(shared))) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    contents = {p.name: p.read_bytes() for p in DataPaths(shared).all()}
    assert contents == {p.name: p.read_bytes() for p in reference.all()}
    expected = [".reference.lock", ".shared.lock", "raw", "reference", "shared"]
    assert sorted(p.name for p in tmp_path.iterdir()) == expected


def test_temporaries_of_killed_processes_are_removed_at_the_next_start(tmp_path: Path) -> None:
    killed = (  # dies by SIGKILL inside both blocks: nothing of its own cleans up
        "import os, signal, sys\nfrom pathlib import Path\nfrom elmrec.paths import atomic_dir, atomic_path\n"
        "root = Path(sys.argv[1])\n"
        "with atomic_dir(root / 'data') as d, atomic_path(root / 'sub' / 'x.json') as f:\n"
        "    (d / 'part.parquet').write_text('half'); f.write_text('{')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", killed, str(tmp_path)], cwd=Path(__file__).parents[1])
    assert child.wait(timeout=60) == -signal.SIGKILL
    leftovers = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.tmp"))
    assert [re.sub(r"\.[A-Za-z0-9_]{8}\.tmp$", ".<random>.tmp", p) for p in leftovers] == [
        f".data.{child.pid}.<random>.tmp", f"sub/.x.json.{child.pid}.<random>.tmp"]
    with atomic_path(tmp_path / "sub" / "mine.json") as mine:  # a live process's temporary stays
        mine.write_text("{}")
        started = time.monotonic()
        removed = remove_stale_temporaries(tmp_path)
        assert time.monotonic() - started < 2
        assert sorted(p.relative_to(tmp_path).as_posix() for p in removed) == leftovers
        assert mine.exists()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["sub", "sub/mine.json"]
    assert remove_stale_temporaries(tmp_path) == []


def test_temporary_names_carry_the_pid_and_keep_permissions(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "a.json") as file, atomic_dir(tmp_path / "out") as folder:
        assert re.fullmatch(rf"\.a\.json\.{os.getpid()}\.[A-Za-z0-9_]{{8}}\.tmp", file.name)
        assert re.fullmatch(rf"\.out\.{os.getpid()}\.[A-Za-z0-9_]{{8}}\.tmp", folder.name)
        file.write_text("1")
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~current_umask()
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~current_umask()


@pytest.mark.parametrize("below_a_file", [True, False])
def test_unwritable_workdir_fails_at_once_naming_the_path(tmp_path: Path, below_a_file: bool) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    workdir = blocker / "work" if below_a_file else blocker  # fails even as root, unlike chmod
    started = time.monotonic()
    with pytest.raises(NotWritableError, match=rf"^work dir {re.escape(str(workdir))} is not writable \(") as error:
        ensure_writable(workdir)
    assert time.monotonic() - started < 2
    assert isinstance(error.value, OSError)
    ensure_writable(tmp_path / "new" / "work")  # creates it
    assert (tmp_path / "new" / "work").is_dir() and list((tmp_path / "new" / "work").iterdir()) == []
