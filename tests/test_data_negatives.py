from pathlib import Path

import numpy as np
import polars as pl
import pytest

from elmrec.config import DataSettings
from elmrec.data import schemas
from elmrec.data.negatives import read_authors_negatives, sample_negatives
from elmrec.data.p5 import DataError
from elmrec.data.preprocess import preprocess
from elmrec.data.schemas import HISTORIES
from elmrec.paths import DataPaths
from tests.conftest import write_p5


def frame(histories: dict[int, list[int]]) -> pl.DataFrame:
    return pl.DataFrame({"user": list(histories), "items": list(histories.values())}, schema=HISTORIES)


def test_negatives_never_hit_user_items_and_are_distinct(tiny_histories) -> None:
    histories = frame(tiny_histories)
    n_items = 30
    negatives = sample_negatives(histories, n_items, np.random.default_rng(0), 20)
    assert negatives.shape == (4, 20)
    for row, items in zip(negatives.tolist(), tiny_histories.values()):
        assert len(set(row)) == 20 and not set(row) & set(items) and min(row) >= 1 and max(row) <= n_items
    # a catalogue just big enough forces the exact fallback path: every unseen item is drawn
    exact = sample_negatives(histories.head(1), 25, np.random.default_rng(0), 20)
    assert sorted(exact[0].tolist()) == list(range(6, 26))


def test_too_few_items_for_negatives(tiny_histories) -> None:
    histories = frame({1: tiny_histories[1]})
    with pytest.raises(DataError, match="user 1 has 45 non-interacted items, fewer than 99 negatives"):
        sample_negatives(histories, 50, np.random.default_rng(0), 99)


def test_negatives_are_uniform_and_distinct() -> None:
    histories = frame({u: list(range(1, 11)) for u in range(1, 2001)})
    negatives = sample_negatives(histories, n_items=200, rng=np.random.default_rng(0), n_negatives=20)
    assert negatives.shape == (2000, 20)
    assert all(len(set(row)) == 20 for row in negatives.tolist())
    counts = np.bincount(negatives.ravel(), minlength=201)
    assert counts[:11].sum() == 0
    mean = 2000 * 20 / 190  # 210.5 per free item
    assert np.abs(counts[11:] - mean).max() < 5 * np.sqrt(mean)


def test_negatives_with_few_free_items_and_too_few() -> None:
    histories = frame({1: [1, 2, 3, 4, 5], 2: [100, 101]})
    negatives = sample_negatives(histories, n_items=104, rng=np.random.default_rng(0), n_negatives=99)
    assert sorted(negatives[0].tolist()) == list(range(6, 105))  # exactly the 99 free items
    assert len(set(negatives[1].tolist())) == 99 and not {100, 101} & set(negatives[1].tolist())
    with pytest.raises(DataError, match="user 1 has 98 non-interacted items"):
        sample_negatives(histories, n_items=103, rng=np.random.default_rng(0), n_negatives=99)




# ---- the authors' negative.txt ---------------------------------------------------------------------------------

N_CATALOGUE = 110


def authors_lines(tiny_histories) -> list[list[int]]:
    """A valid negative.txt for the 4 tiny users: the 99 largest item IDs each user never interacted with."""
    return [[user, *[i for i in range(1, N_CATALOGUE + 1) if i not in items][-99:]]
            for user, items in tiny_histories.items()]


def write_lines(path: Path, lines: list[list[int]]) -> Path:
    path.write_text("".join(" ".join(str(x) for x in line) + "\n" for line in lines))
    return path


def test_authors_negatives_are_read_in_user_order(tmp_path: Path, tiny_histories) -> None:
    lines = authors_lines(tiny_histories)
    path = write_lines(tmp_path / "negative.txt", [lines[2], lines[0], lines[3], lines[1]])  # any line order
    negatives = read_authors_negatives(path, frame(tiny_histories), N_CATALOGUE)
    assert negatives.shape == (4, 99)
    assert negatives.tolist() == [line[1:] for line in lines]  # rows follow the histories' users 1, 2, 3, 4
    assert negatives[:, :2].tolist() == [[12, 13]] * 4 and negatives[:, -1].tolist() == [110] * 4  # by hand


def bad_file(lines: list[list[int]], case: str) -> tuple[list, str]:
    """One broken copy of a valid file per case, and the error it must raise (line numbers from 1)."""
    broken = [list(line) for line in lines]
    if case == "unknown user":
        broken[1][0] = 9
        return broken, r"negative.txt:2: user 9 is not a user of the dataset"
    if case == "user twice":
        broken[3] = [1, *broken[0][1:]]
        return broken, r"negative.txt:4: user 1 is listed again \(first on line 1\)"
    if case == "98 negatives":
        broken[2] = broken[2][:-1]
        return broken, r"negative.txt:3: user 3 has 98 negatives, not 99"
    if case == "unknown item":
        broken[0][5] = 111
        return broken, r"negative.txt:1: user 1: item 111 is not an item of the dataset \(1..110\)"
    if case == "repeated item":
        broken[1][2] = broken[1][1]
        return broken, rf"negative.txt:2: user 2: item {broken[1][1]} is listed twice"
    if case == "history item":
        broken[3][7] = 7  # user 4 bought 5, 7, 8
        return broken, r"negative.txt:4: user 4: item 7 is in the user's history"
    if case == "missing user":
        return broken[:3], r"negative.txt: 1 users have no line \(first: \[4\]\)"
    raise ValueError(case)


@pytest.mark.parametrize("case", ["unknown user", "user twice", "98 negatives", "unknown item", "repeated item",
                                  "history item", "missing user"])
def test_bad_authors_negatives_name_file_and_line(tmp_path: Path, tiny_histories, case: str) -> None:
    lines, message = bad_file(authors_lines(tiny_histories), case)
    path = write_lines(tmp_path / "negative.txt", lines)
    with pytest.raises(DataError, match=message):
        read_authors_negatives(path, frame(tiny_histories), N_CATALOGUE)


def test_missing_or_unreadable_authors_negatives(tmp_path: Path, tiny_histories) -> None:
    with pytest.raises(DataError, match=r"negative.txt is missing: data.negatives=authors .*data.negatives=seeded"):
        read_authors_negatives(tmp_path / "negative.txt", frame(tiny_histories), N_CATALOGUE)
    (tmp_path / "negative.txt").write_text("1 2 three\n")
    with pytest.raises(DataError, match=r"negative.txt:1: not a line of integer IDs"):
        read_authors_negatives(tmp_path / "negative.txt", frame(tiny_histories), N_CATALOGUE)


@pytest.mark.parametrize("id_scheme", ["p5", "shuffled"])
def test_preprocess_uses_the_authors_test_negatives(tmp_path: Path, tiny_histories, id_scheme: str) -> None:
    """Test candidates = target + the file's 99 items (renamed with the items under `shuffled`); validation
    candidates are the seeded ones, as with data.negatives=seeded."""
    raw = write_p5(tmp_path / "raw", tiny_histories, n_items=N_CATALOGUE)
    lines = authors_lines(tiny_histories)
    write_lines(raw / "negative.txt", lines)
    runs = {}
    for negatives in ("seeded", "authors"):
        data = DataSettings(dataset="tiny", source="local", id_scheme=id_scheme, negatives=negatives)
        preprocess(data, 7, raw, DataPaths(tmp_path / negatives))
        runs[negatives] = schemas.read(DataPaths(tmp_path / negatives).candidates, schemas.CANDIDATES)
    assert runs["authors"].filter(pl.col("split") == "valid").equals(runs["seeded"].filter(pl.col("split") == "valid"))
    items = pl.read_parquet(DataPaths(tmp_path / "authors").item_map)  # item -> ASIN "A<original id>"
    original = {item: int(asin[1:]) for item, asin in items.rows()}
    for user, _, target, candidates in runs["authors"].filter(pl.col("split") == "test").iter_rows():
        assert original[target] == tiny_histories[user][-1] and candidates.count(target) == 1
        assert sorted(original[c] for c in candidates if c != target) == lines[user - 1][1:]
