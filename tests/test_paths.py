import multiprocessing as mp
from pathlib import Path

import pytest

from elmrec.config import DataSettings
from elmrec.data.preprocess import preprocess
from elmrec.paths import DataPaths, atomic_dir, current_umask
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
