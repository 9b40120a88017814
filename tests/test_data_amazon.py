import codecs
import gzip
import json
import zlib
from pathlib import Path

import pytest

from elmrec.config import DataSettings
from elmrec.data.amazon import k_core, load_amazon, read_reviews
from elmrec.data.p5 import DataError
from elmrec.data.sources import amazon_category


def write_reviews(path: Path, reviews: list[tuple[str, str, int]]) -> Path:
    lines = [json.dumps({"reviewerID": u, "asin": a, "unixReviewTime": t, "overall": 5.0}) for u, a, t in reviews]
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return path


def test_k_core_is_iterated_until_stable(tmp_path: Path) -> None:
    # u1, u2 each review a, b; u3 reviews a, c. With k=2: c has 1 review -> dropped; then u3 has 1 -> dropped.
    reviews = [("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 1), ("u2", "b", 2), ("u3", "a", 1), ("u3", "c", 2)]
    frame = read_reviews(write_reviews(tmp_path / "r.json.gz", reviews))
    kept = k_core(frame, 2)
    assert sorted(zip(kept["reviewerID"], kept["asin"])) == [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b")]


def test_load_amazon_orders_by_time_and_assigns_ids_from_one(tmp_path: Path) -> None:
    # File order: u2 appears first -> user 1. Ties in time keep file order (y before x for u2).
    reviews = [("u2", "y", 5), ("u2", "x", 5), ("u2", "z", 3), ("u1", "z", 9), ("u1", "x", 1), ("u1", "y", 4)]
    corpus = load_amazon(write_reviews(tmp_path / "reviews_Beauty_5.json.gz", reviews), k=2)
    assert corpus.user_map.rows() == [(1, "u2"), (2, "u1")]
    # user 1 (u2) chronological: z(3), y(5), x(5, after y in the file) -> items z=1, y=2, x=3
    assert corpus.item_map.rows() == [(1, "z"), (2, "y"), (3, "x")]
    assert corpus.histories["items"].to_list() == [[1, 2, 3], [3, 2, 1]]


def test_malformed_json_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "reviews_Beauty_5.json.gz"
    good = json.dumps({"reviewerID": "u", "asin": "a", "unixReviewTime": 1})
    path.write_bytes(gzip.compress(f"{good}\n{good}\n{{\"reviewerID\": \"u\", \"asin\n".encode()))
    with pytest.raises(DataError, match=r"reviews_Beauty_5.json.gz:3: malformed JSON line"):
        load_amazon(path)


def test_review_without_field_is_named(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text('{"reviewerID": "u", "asin": "a", "unixReviewTime": 1}\n{"reviewerID": "u", "asin": "b"}\n')
    with pytest.raises(DataError, match=r"r.json:2: review has no 'unixReviewTime'"):
        read_reviews(path)


def test_empty_review_file(tmp_path: Path) -> None:
    path = tmp_path / "r.json.gz"
    path.write_bytes(gzip.compress(b""))
    with pytest.raises(DataError, match="file is empty"):
        read_reviews(path)


def test_category_names() -> None:
    assert amazon_category("sports") == "Sports_and_Outdoors"
    assert amazon_category("beauty") == "Beauty"
    assert amazon_category("x", "video_games") == "Video_Games"
    with pytest.raises(ValueError, match=r"unknown Amazon 2014 category 'Shoes'; known: Amazon_Instant_Video, "):
        amazon_category("x", "Shoes")
    with pytest.raises(ValueError, match=r"data.dataset: unknown Amazon 2014 category 'Shoes'"):
        DataSettings(dataset="x", source="amazon2014", category="Shoes")


LINES = [json.dumps({"reviewerID": f"u{n}", "asin": "a", "unixReviewTime": n}).encode() + b"\n" for n in range(6)]


def _gzip_in_two_parts() -> tuple[bytes, int]:
    """A gzip file of LINES, flushed after line 3: (bytes, offset where the compressed lines 4.. begin)."""
    packer = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    head = packer.compress(b"".join(LINES[:3])) + packer.flush(zlib.Z_FULL_FLUSH)
    return head + packer.compress(b"".join(LINES[3:])) + packer.flush(), len(head)


def test_truncated_gzip_names_the_file_and_line(tmp_path: Path) -> None:
    data, flushed = _gzip_in_two_parts()
    assert gzip.decompress(data) == b"".join(LINES)
    path = tmp_path / "reviews_Beauty_5.json.gz"
    path.write_bytes(data[: flushed + 3])
    with pytest.raises(DataError, match=rf"^{path}:4: truncated gzip file \(the data ends inside this line"):
        read_reviews(path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [(lambda data, flushed: b"plain text, not gzip\n", r": not a gzip file \(no gzip header at byte 0\)$"),
     (lambda data, flushed: data[:-8] + bytes(8), r":1: corrupt gzip data at or after this line \(.*check"),
     (lambda data, flushed: data + b"junk", r": not a gzip file \(no gzip header at byte \d+\)$")],
)
def test_broken_gzip_is_a_data_error_naming_the_file(tmp_path: Path, damage, message: str) -> None:
    path = tmp_path / "reviews_Beauty_5.json.gz"
    path.write_bytes(damage(*_gzip_in_two_parts()))
    with pytest.raises(DataError, match=rf"^{path}{message}"):
        read_reviews(path)


def test_gzip_members_and_a_byte_order_mark_are_read(tmp_path: Path) -> None:
    path = tmp_path / "r.json.gz"
    path.write_bytes(gzip.compress(codecs.BOM_UTF8 + b"".join(LINES[:2])) + gzip.compress(b"".join(LINES[2:])))
    assert read_reviews(path)["reviewerID"].to_list() == [f"u{n}" for n in range(6)]
    plain = tmp_path / "r.json"
    plain.write_bytes(codecs.BOM_UTF8 + b"".join(LINES))
    assert read_reviews(plain)["unixReviewTime"].to_list() == list(range(6))
