import json
from pathlib import Path

import polars as pl
import pytest

from elmrec.config import DataSettings, settings_for
from elmrec.data import schemas
from elmrec.data.download import download
from elmrec.data.p5 import DataError, load_p5
from elmrec.data.preprocess import draw_candidates, preprocess, shuffle_item_ids, split_interactions, subset_users
from elmrec.paths import DataPaths, WorkPaths
from tests.conftest import write_p5


def test_leave_one_out_split(tmp_path: Path, tiny_histories) -> None:
    frame = split_interactions(load_p5(write_p5(tmp_path, tiny_histories)).histories)
    user4 = frame.filter(pl.col("user") == 4)
    assert user4.rows() == [(4, 5, 0, "train"), (4, 7, 1, "valid"), (4, 8, 2, "test")]
    assert frame.filter(pl.col("split") == "train").height == 3 + 2 + 4 + 1
    assert frame.filter(pl.col("split") == "test")["item"].to_list() == [5, 1, 1, 8]
    assert frame.schema == schemas.INTERACTIONS


def test_candidates_hold_target_once_and_are_seeded(tiny_histories) -> None:
    histories = pl.DataFrame({"user": list(tiny_histories), "items": list(tiny_histories.values())},
                             schema=schemas.HISTORIES)
    first = draw_candidates(histories, 40, 9, seed=3)
    assert first.equals(draw_candidates(histories, 40, 9, seed=3))
    assert not first.equals(draw_candidates(histories, 40, 9, seed=4))
    for user, split, target, candidates in first.iter_rows():
        held_out = tiny_histories[user][-2 if split == "valid" else -1]
        assert target == held_out and len(candidates) == 10 and candidates.count(target) == 1
        assert not set(candidates) - {target} & set(tiny_histories[user])
    assert first["split"].to_list() == ["valid"] * 4 + ["test"] * 4


def test_subset_and_shuffle_keep_maps_consistent(tmp_path: Path, tiny_histories) -> None:
    corpus = load_p5(write_p5(tmp_path, tiny_histories))
    subset = subset_users(corpus, 2)  # users 1, 2 touch items 1, 2, 3, 4, 5, 6, 7 -> dense 1..7
    assert subset.n_items == 7 and subset.histories["items"].to_list() == [[1, 2, 3, 4, 5], [2, 6, 7, 1]]
    shuffled = shuffle_item_ids(corpus, seed=1)
    asin = dict(corpus.item_map.rows())
    asin_after = dict(shuffled.item_map.rows())
    for before, after in zip(corpus.histories["items"].to_list(), shuffled.histories["items"].to_list()):
        assert [asin[i] for i in before] == [asin_after[i] for i in after]  # ID maps round-trip
    assert sorted(asin_after) == list(range(1, 9))
    assert shuffled.histories["items"].to_list() != corpus.histories["items"].to_list()


def test_preprocess_writes_schemas_stats_and_is_byte_identical(tmp_path: Path, tiny_histories) -> None:
    raw = write_p5(tmp_path / "raw", tiny_histories, n_items=120)
    data = DataSettings(dataset="tiny", source="local", path=str(raw), n_negatives=99)
    out = DataPaths(tmp_path / "data")
    stats = preprocess(data, 7, raw, out)
    assert {k: stats[k] for k in ("n_users", "n_items", "n_interactions", "n_train_interactions")} == {
        "n_users": 4, "n_items": 120, "n_interactions": 18, "n_train_interactions": 10}
    assert json.loads(out.stats.read_text()) == stats
    assert schemas.read(out.candidates, schemas.CANDIDATES).height == 8
    first = {p.name: p.read_bytes() for p in out.all()}
    preprocess(data, 7, raw, out)
    assert {p.name: p.read_bytes() for p in out.all()} == first


def test_failed_preprocess_leaves_previous_output_untouched(tmp_path: Path, tiny_histories) -> None:
    raw = write_p5(tmp_path / "raw", tiny_histories, n_items=120)
    out = DataPaths(tmp_path / "data")
    preprocess(DataSettings(dataset="tiny", source="local"), 7, raw, out)
    before = {p.name: p.read_bytes() for p in out.all()}
    (raw / "sequential.txt").write_text("1 1 2 3\n1 2 3 4\n")
    with pytest.raises(DataError, match="listed again"):
        preprocess(DataSettings(dataset="tiny", source="local"), 7, raw, out)
    assert {p.name: p.read_bytes() for p in out.all()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["data", "raw"]  # no leftovers


@pytest.mark.parametrize(("dataset", "expected"), [
    ("beauty", {"n_users": 22363, "n_items": 12101, "n_interactions": 198502, "n_train_interactions": 153776}),
    ("sports", {"n_users": 35598, "n_items": 18357, "n_interactions": 296337, "n_train_interactions": 225141}),
])
def test_real_datasets_through_the_mirror(tmp_path: Path, real_mirror: Path, dataset: str, expected: dict) -> None:
    data = {"dataset": dataset, "mirror": str(real_mirror)}
    settings = settings_for("paper", {"workdir": str(tmp_path), "data": data})
    paths = WorkPaths.from_settings(settings)
    download(settings.data, paths.raw, settings.resolved_mirror())
    stats = preprocess(settings.data, settings.seed, paths.raw, paths.data)
    assert {key: stats[key] for key in expected} == expected
    if dataset == "beauty":
        assert round(stats["test_is_max_history_plus_one"], 3) == 0.044  # the P5 order leak, as DESIGN.md says
