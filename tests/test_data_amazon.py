import gzip
import json
from pathlib import Path

import pytest

from elmrec.config import DataSettings
from elmrec.data.amazon import k_core, load_amazon, read_reviews
from elmrec.data.download import amazon_category
from elmrec.data.p5 import DataError


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
    assert amazon_category(DataSettings(dataset="sports", source="amazon2014")) == "Sports_and_Outdoors"
    assert amazon_category(DataSettings(dataset="beauty", source="amazon2014")) == "Beauty"
    assert amazon_category(DataSettings(dataset="x", source="amazon2014", category="video_games")) == "Video_Games"
    with pytest.raises(ValueError, match=r"unknown Amazon 2014 category 'Shoes'; known: Amazon_Instant_Video, "):
        amazon_category(DataSettings(dataset="x", source="amazon2014", category="Shoes"))
