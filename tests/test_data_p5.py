import codecs
from pathlib import Path

import polars as pl
import pytest

from elmrec.config import DataSettings
from elmrec.data import preprocess as pre
from elmrec.data.download import download
from elmrec.data.p5 import DataError, load_p5
from elmrec.paths import DataPaths
from tests.conftest import write_p5


def test_load_p5_keeps_ids_and_order(tmp_path: Path, tiny_histories) -> None:
    corpus = load_p5(write_p5(tmp_path, tiny_histories))
    assert corpus.n_users == 4 and corpus.n_items == 8
    assert corpus.histories["items"].to_list() == [[1, 2, 3, 4, 5], [2, 6, 7, 1], [8, 3, 2, 6, 4, 1], [5, 7, 8]]
    assert corpus.user_map.row(2) == (3, "U3")
    assert corpus.item_map.row(7) == (8, "A8")
    assert corpus.histories.schema == pl.Schema({"user": pl.Int32, "items": pl.List(pl.Int32)})


def _write(tmp_path: Path, text: bytes, n_users: int = 2, n_items: int = 5) -> Path:
    write_p5(tmp_path, {u: [1, 2, 3] for u in range(1, n_users + 1)}, n_items=n_items)
    (tmp_path / "sequential.txt").write_bytes(text)
    return tmp_path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"1 1 2 3\n2 1 x 3\n", r"sequential.txt:2: 'x' is not a positive integer ID"),
        (b"1 1 2 3\n2 1 2.5 3\n", r"sequential.txt:2: '2.5' is not a positive integer ID"),
        (b"1 1 2 3\n1 2 3 4\n", r"sequential.txt:2: user 1 is listed again \(first on line 1\)"),
        (b"1 1 2 3\n2 1 2\n", r"sequential.txt:2: user 2 has 2 items; leave-one-out needs at least 3"),
        (b"1 1 2 3\n2 1 2 9\n", r"sequential.txt:2: item 9 is not in datamaps.json id2item"),
        (b"1 1 2 3\n3 1 2 4\n", r"sequential.txt:2: user 3 is not in datamaps.json id2user"),
        (b"", r"sequential.txt: file is empty"),
        (b"  \n\n", r"sequential.txt: file is empty"),
        (b"1 1 2 3\n2 1 \xff 3\n", r"sequential.txt:2: not UTF-8 text"),
        (b"1 1 2 3\n2 1 2147483648 3\n", r"sequential.txt:2: ID 2147483648 is too large \(IDs go up to 2147483647\)"),
        (b"1 1 2 3\n2 1 99999999999999999999 3\n", r"sequential.txt:2: ID 99999999999999999999 is too large"),
        (b"1 1 2 3\n2 1 0 3\n", r"sequential.txt:2: '0' is not a positive integer ID"),
        (b"1 1 2 3\n2 1 -4 3\n", r"sequential.txt:2: '-4' is not a positive integer ID"),
    ],
)
def test_bad_sequential_names_file_and_line(tmp_path: Path, text: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_p5(_write(tmp_path, text))


def test_bad_datamaps(tmp_path: Path, tiny_histories) -> None:
    write_p5(tmp_path, tiny_histories)
    (tmp_path / "datamaps.json").write_text('{"id2user": {"1": "a"},\n "id2item": ')
    with pytest.raises(DataError, match=r"datamaps.json:2: malformed JSON"):
        load_p5(tmp_path)


def test_missing_files_name_the_stage(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run the download stage first"):
        load_p5(tmp_path)


def test_byte_order_marks_are_accepted(tmp_path: Path, tiny_histories) -> None:
    write_p5(tmp_path, tiny_histories)
    for name in ("sequential.txt", "datamaps.json"):
        (tmp_path / name).write_bytes(codecs.BOM_UTF8 + (tmp_path / name).read_bytes())
    assert load_p5(tmp_path).histories["items"].to_list()[0] == [1, 2, 3, 4, 5]


def test_errors_of_a_local_source_name_the_users_file_not_the_raw_copy(tmp_path: Path) -> None:
    mine = _write(tmp_path / "mine", b"1 1 2 3\n2 1 x 3\n")
    data = DataSettings(dataset="mine", source="local", path=str(mine))
    raw = tmp_path / "work" / "raw"
    download(data, raw)
    with pytest.raises(DataError, match=rf"^{mine}/sequential.txt:2: 'x' is not a positive integer ID$"):
        pre.preprocess(data, 1, raw, DataPaths(tmp_path / "work" / "data"))
    (mine / "sequential.txt").write_text("1 1 2 3\n2 1 2 3\n")
    (mine / "datamaps.json").write_text('{"id2user": {"1": "a"}}')
    download(data, raw)
    with pytest.raises(DataError, match=rf"^{mine}/datamaps.json: has no 'id2item' object$"):
        pre.preprocess(data, 1, raw, DataPaths(tmp_path / "work" / "data"))


def test_too_many_negatives_fail_right_after_parsing_naming_the_catalogue(tmp_path: Path, tiny_histories,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    raw = write_p5(tmp_path / "raw", tiny_histories)  # 8 items; user 3 interacted with 6 of them

    def not_reached(*args: object) -> None:
        raise AssertionError("the check must come before any other work")

    monkeypatch.setattr(pre, "split_interactions", not_reached)
    message = (r"^data.n_negatives=3 is too large: the catalogue has 8 items and a user interacted with 6 of them, "
               r"leaving at most 2 negatives$")
    with pytest.raises(DataError, match=message):
        pre.preprocess(DataSettings(dataset="tiny", source="local", n_negatives=3), 1, raw, DataPaths(tmp_path / "d"))
    assert not (tmp_path / "d").exists()
