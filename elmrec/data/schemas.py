"""The fixed schemas of the preprocess stage's Parquet files: the contract every later stage reads.

IDs are dense integers from 1: users 1..U, items 1..I (0 is never an ID; graph node 0 is padding).

- interactions.parquet  one row per (user, position): the item at that position of the user's chronological
                        history and the leave-one-out split it belongs to (last = test, second last = valid).
- histories.parquet     one row per user: the whole chronological item list (train items are items[:-2]).
- candidates.parquet    one row per (user, split in valid/test): the held-out target and the 100 evaluation
                        candidates (target + n_negatives items the user never interacted with, in a seeded
                        order), drawn once and stored.
- user_map.parquet      user -> original reviewer ID.
- item_map.parquet      item -> original ASIN.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

INTERACTIONS = pl.Schema({"user": pl.Int32, "item": pl.Int32, "position": pl.Int32, "split": pl.String})
HISTORIES = pl.Schema({"user": pl.Int32, "items": pl.List(pl.Int32)})
CANDIDATES = pl.Schema(
    {"user": pl.Int32, "split": pl.String, "target": pl.Int32, "candidates": pl.List(pl.Int32)}
)
USER_MAP = pl.Schema({"user": pl.Int32, "reviewer_id": pl.String})
ITEM_MAP = pl.Schema({"item": pl.Int32, "asin": pl.String})


def conform(frame: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """Select and cast `frame` to exactly `schema` (column order and dtypes), failing on a missing column."""
    missing = [name for name in schema.names() if name not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing}; has {frame.columns}")
    return frame.select([pl.col(name).cast(dtype, strict=True) for name, dtype in schema.items()])


def read(path: Path, schema: pl.Schema) -> pl.DataFrame:
    """Read a Parquet file written by the preprocess stage and check it has `schema`."""
    frame = pl.read_parquet(path)
    if frame.schema != schema:
        raise ValueError(f"{path}: schema {dict(frame.schema)} does not match the expected {dict(schema)}")
    return frame
