"""Parse a raw Amazon 2014 review file into a `Corpus`: k-core filtering, chronological order, IDs from 1.

The file has one JSON object a line (`reviewerID`, `asin`, `unixReviewTime`, ...), optionally gzipped (a
truncated or corrupt archive is a DataError naming the file and the line it breaks off in); a UTF-8 byte
order mark is accepted.
IDs are assigned as P5 did: users in order of first appearance in the file, items in order of first
appearance when walking the users' chronological histories in user order.
"""

from __future__ import annotations

import codecs
import json
import logging
import zlib
from pathlib import Path

import polars as pl

from elmrec.data import schemas
from elmrec.data.p5 import MIN_HISTORY, Corpus, DataError

log = logging.getLogger(__name__)

FIELDS = {"reviewerID": pl.String, "asin": pl.String, "unixReviewTime": pl.Int64}
NEWLINE = b"\n"
GZIP_MAGIC = b"\x1f\x8b"
GZIP_CHUNK = 1 << 16  # compressed bytes per step: a corrupt archive is located to within this much


def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it ends in `.gz` (every gzip member), without a leading BOM."""
    data = _gunzip(path) if path.suffix == ".gz" else path.read_bytes()
    return data.removeprefix(codecs.BOM_UTF8)


def _gunzip(path: Path) -> bytes:
    compressed, out = path.read_bytes(), bytearray()
    position = 0
    while position < len(compressed) and compressed[position:].strip(b"\0"):  # one gzip member per pass
        if compressed[position:position + 2] != GZIP_MAGIC:
            raise DataError(f"{path}: not a gzip file (no gzip header at byte {position})")
        member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        while not member.eof and position < len(compressed):
            chunk = compressed[position:position + GZIP_CHUNK]
            try:
                out += member.decompress(chunk)
            except zlib.error as error:
                raise DataError(f"{path}:{out.count(NEWLINE) + 1}: corrupt gzip data at or after this line "
                                f"({error})") from error
            position += len(chunk) - len(member.unused_data)
        if not member.eof:
            raise DataError(f"{path}:{out.count(NEWLINE) + 1}: truncated gzip file (the data ends inside this "
                            "line; download it again)")
    return bytes(out)


def read_reviews(path: Path) -> pl.DataFrame:
    """The (reviewerID, asin, unixReviewTime, row) columns of a JSON-lines review file, in file order."""
    data = read_bytes(path)
    if not data.strip():
        raise DataError(f"{path}: file is empty")
    try:
        frame = pl.read_ndjson(data, schema=FIELDS)
    except pl.exceptions.PolarsError as error:
        raise _locate_bad_line(path, data) from error
    missing = frame.select(pl.all().is_null().any()).row(0, named=True)
    for name, has_null in missing.items():
        if has_null:
            line = frame.with_row_index("row").filter(pl.col(name).is_null())["row"][0] + 1
            raise DataError(f"{path}:{line}: review has no {name!r}")
    return frame.with_row_index("row")


def _locate_bad_line(path: Path, data: bytes) -> DataError:
    """Find the first line that is not a JSON object (the slow path, only after the fast parse failed)."""
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return DataError(f"{path}:{number}: malformed JSON line ({error})")
        if not isinstance(record, dict):
            return DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
    return DataError(f"{path}: could not be parsed as JSON lines")


def k_core(reviews: pl.DataFrame, k: int) -> pl.DataFrame:
    """Repeatedly drop users and items with fewer than `k` interactions until none is left to drop."""
    while True:
        before = reviews.height
        reviews = reviews.filter(
            (pl.len().over("reviewerID") >= k) & (pl.len().over("asin") >= k)
        )
        if reviews.height == before:
            return reviews


def load_amazon(path: Path, k: int = 5) -> Corpus:
    """Raw reviews -> k-core, chronological (ties keep file order) histories with IDs from 1."""
    if not path.is_file():
        raise DataError(f"{path} is missing; run the download stage first (elmrec task download)")
    reviews = read_reviews(path)
    log.info("%s: %d reviews", path.name, reviews.height)
    reviews = k_core(reviews, k)
    if reviews.is_empty():
        raise DataError(f"{path}: nothing survives {k}-core filtering")
    users = reviews.group_by("reviewerID").agg(pl.col("row").min()).sort("row")
    users = users.with_row_index("user", offset=1).select("reviewerID", pl.col("user").cast(pl.Int32))
    ordered = reviews.join(users, on="reviewerID").sort(["user", "unixReviewTime", "row"])
    items = ordered.with_row_index("walk").group_by("asin").agg(pl.col("walk").min()).sort("walk")
    items = items.with_row_index("item", offset=1).select("asin", pl.col("item").cast(pl.Int32))
    ordered = ordered.join(items, on="asin", maintain_order="left")
    histories = ordered.group_by("user", maintain_order=True).agg(pl.col("item").alias("items"))
    short = histories.filter(pl.col("items").list.len() < MIN_HISTORY)
    if short.height:  # only possible for k < MIN_HISTORY
        raise DataError(f"{path}: {short.height} users have fewer than {MIN_HISTORY} reviews; use k >= {MIN_HISTORY}")
    return Corpus(
        histories=schemas.conform(histories.sort("user"), schemas.HISTORIES),
        user_map=schemas.conform(users.rename({"reviewerID": "reviewer_id"}).sort("user"), schemas.USER_MAP),
        item_map=schemas.conform(items.sort("item"), schemas.ITEM_MAP),
    )
