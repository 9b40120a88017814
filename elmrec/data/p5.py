"""Parse a dataset in P5 layout (`sequential.txt` + `datamaps.json`) into a validated `Corpus`.

`sequential.txt` has one line per user, `user item item ...`, chronological, integer IDs from 1.
`datamaps.json` maps them back: `{"id2user": {"1": reviewerID, ...}, "id2item": {"1": asin, ...}}`.
Every problem is reported with the file and line it was found on: the user's own file (`shown`) where the
stage reads a copy of it. A UTF-8 byte order mark is accepted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from elmrec.data import schemas

MIN_HISTORY = 3  # leave-one-out needs at least one training item besides validation and test
MAX_ID = 2**31 - 1  # IDs are stored as Int32


class DataError(ValueError):
    """Input data that cannot be used; the message names the file (and line) at fault."""


@dataclass(frozen=True)
class Corpus:
    """Chronological histories with dense IDs from 1, and the maps back to the original IDs."""

    histories: pl.DataFrame  # schemas.HISTORIES, sorted by user
    user_map: pl.DataFrame  # schemas.USER_MAP
    item_map: pl.DataFrame  # schemas.ITEM_MAP

    @property
    def n_users(self) -> int:
        return self.user_map.height

    @property
    def n_items(self) -> int:
        return self.item_map.height


def read_text(path: Path, shown: Path | None = None) -> str:
    """The UTF-8 text of `path` (a leading BOM dropped); an empty or undecodable file is a DataError naming
    `shown` (default: `path`) and the line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(f"{shown or path}:{line}: not UTF-8 text ({error.reason} at byte {error.start})") from error
    if not text.strip():
        raise DataError(f"{shown or path}: file is empty")
    return text


def parse_sequential(path: Path, shown: Path | None = None) -> pl.DataFrame:
    """`sequential.txt` -> frame (line, user, items) with integer IDs; validated line by line."""
    text = read_text(path, shown)
    path = shown or path  # the name in messages
    lines = pl.DataFrame({"text": text.splitlines()}).with_row_index("line", offset=1)
    lines = lines.filter(pl.col("text").str.strip_chars() != "")
    tokens = lines.with_columns(pl.col("text").str.extract_all(r"\S+").alias("token"))
    tokens = tokens.explode("token", empty_as_null=True)  # lines are non-empty: no empty lists
    tokens = tokens.with_columns(pl.col("token").cast(pl.Int64, strict=False).alias("id"))
    bad = tokens.filter(pl.col("id").is_null() | (pl.col("id") < 1) | (pl.col("id") > MAX_ID)).head(1)
    if bad.height:
        row = bad.row(0, named=True)
        if row["token"].isascii() and row["token"].isdigit() and int(row["token"]) > MAX_ID:
            raise DataError(f"{path}:{row['line']}: ID {row['token']} is too large (IDs go up to {MAX_ID})")
        raise DataError(f"{path}:{row['line']}: {row['token']!r} is not a positive integer ID")
    per_line = tokens.group_by("line", maintain_order=True).agg(pl.col("id").first().alias("user"),
                                                               pl.col("id").slice(1).alias("items"))
    short = per_line.filter(pl.col("items").list.len() < MIN_HISTORY).head(1)
    if short.height:
        row = short.row(0, named=True)
        raise DataError(
            f"{path}:{row['line']}: user {row['user']} has {len(row['items'])} items; "
            f"leave-one-out needs at least {MIN_HISTORY}"
        )
    repeated = per_line.filter(pl.col("user").is_duplicated()).sort("line").head(2)
    if repeated.height:
        first, second = repeated.rows(named=True)
        raise DataError(f"{path}:{second['line']}: user {second['user']} is listed again "
                        f"(first on line {first['line']})")
    return per_line


def parse_datamaps(path: Path, shown: Path | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`datamaps.json` -> (user_map, item_map) with dense IDs 1..n checked."""
    text = read_text(path, shown)
    path = shown or path  # the name in messages
    try:
        maps = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: malformed JSON ({error.msg})") from error
    frames = []
    for key, id_col, name_col, schema in (("id2user", "user", "reviewer_id", schemas.USER_MAP),
                                          ("id2item", "item", "asin", schemas.ITEM_MAP)):
        if not isinstance(maps, dict) or not isinstance(maps.get(key), dict):
            raise DataError(f"{path}: has no {key!r} object")
        entries = maps[key]
        try:
            ids = [int(k) for k in entries]
        except ValueError as error:
            raise DataError(f"{path}: {key} has a non-integer key ({error})") from error
        frame = pl.DataFrame({id_col: ids, name_col: [str(v) for v in entries.values()]}).sort(id_col)
        if frame[id_col].to_list() != list(range(1, frame.height + 1)):
            raise DataError(f"{path}: {key} keys must be the dense IDs 1..{frame.height}")
        frames.append(schemas.conform(frame, schema))
    return frames[0], frames[1]


def load_p5(raw_dir: Path, shown_dir: Path | None = None) -> Corpus:
    """Parse and cross-check `sequential.txt` and `datamaps.json` in `raw_dir`; messages name the files in
    `shown_dir` (the user's folder that `raw_dir` copies) when given."""
    for path in (raw_dir / "sequential.txt", raw_dir / "datamaps.json"):
        if not path.is_file():
            raise DataError(f"{path} is missing; run the download stage first (elmrec task download)")
    seq_path, maps_path = (shown_dir or raw_dir) / "sequential.txt", (shown_dir or raw_dir) / "datamaps.json"
    per_line = parse_sequential(raw_dir / "sequential.txt", seq_path)
    user_map, item_map = parse_datamaps(raw_dir / "datamaps.json", maps_path)
    unknown_user = per_line.filter(pl.col("user") > user_map.height).head(1)
    if unknown_user.height:
        row = unknown_user.row(0, named=True)
        raise DataError(f"{seq_path}:{row['line']}: user {row['user']} is not in {maps_path.name} id2user")
    items = per_line.select("line", "items").explode("items", empty_as_null=True)
    unknown_item = items.filter(pl.col("items") > item_map.height).head(1)
    if unknown_item.height:
        row = unknown_item.row(0, named=True)
        raise DataError(f"{seq_path}:{row['line']}: item {row['items']} is not in {maps_path.name} id2item")
    if per_line.height != user_map.height:
        missing = sorted(set(range(1, user_map.height + 1)) - set(per_line["user"].to_list()))[:5]
        raise DataError(f"{seq_path}: users {missing} of {maps_path.name} have no line")
    histories = schemas.conform(per_line.sort("user"), schemas.HISTORIES)
    return Corpus(histories, user_map, item_map)
