"""Preprocess stage: source files -> Parquet tables with fixed schemas (elmrec.data.schemas) + stats.json.

Steps: parse the source into a Corpus, optionally keep a subset of users, optionally shuffle item IDs,
split leave-one-out, draw the evaluation negatives once (seeded), write everything atomically.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from elmrec.config import DataSettings
from elmrec.data import schemas
from elmrec.data.amazon import load_amazon
from elmrec.data.download import source_files
from elmrec.data.negatives import NEGATIVES_FILE, read_authors_negatives, remap_negatives, sample_negatives
from elmrec.data.p5 import Corpus, DataError, load_p5
from elmrec.paths import DataPaths, atomic_dir

log = logging.getLogger(__name__)

# Independent random streams derived from the one seed, so changing one use never shifts another.
STREAM_SHUFFLE, STREAM_VALID, STREAM_TEST = 0, 1, 2


def load_corpus(data: DataSettings, raw_dir: Path) -> Corpus:
    if data.source == "amazon2014":
        return load_amazon(raw_dir / source_files(data)[0].name, k=data.kcore)
    return load_p5(raw_dir, shown_dir=Path(data.path) if data.source == "local" and data.path else None)


def check_negatives(corpus: Corpus, n_negatives: int) -> None:
    """Every user needs `n_negatives` items it never interacted with; checked before any other work."""
    most = int(corpus.histories["items"].list.n_unique().max() or 0)
    if corpus.n_items - most < n_negatives:
        raise DataError(f"data.n_negatives={n_negatives} is too large: the catalogue has {corpus.n_items} items and "
                        f"a user interacted with {most} of them, leaving at most {corpus.n_items - most} negatives")


def remap_items(corpus: Corpus, new_id: np.ndarray) -> Corpus:
    """Renumber items: old item i becomes new_id[i] (new_id[0] unused); drops items mapped to 0."""
    new_id = new_id.astype(np.int32)
    exploded = corpus.histories.explode("items", empty_as_null=False)
    exploded = exploded.with_columns(pl.Series("items", new_id[exploded["items"].to_numpy()]))
    histories = exploded.group_by("user", maintain_order=True).agg("items")
    item_map = corpus.item_map.with_columns(pl.Series("item", new_id[corpus.item_map["item"].to_numpy()]))
    item_map = item_map.filter(pl.col("item") > 0).sort("item")
    return Corpus(schemas.conform(histories, schemas.HISTORIES), corpus.user_map, item_map)


def subset_users(corpus: Corpus, max_users: int) -> Corpus:
    """Keep users 1..max_users and the items they touch, renumbered densely in their original order."""
    histories = corpus.histories.filter(pl.col("user") <= max_users)
    kept = np.unique(histories["items"].explode(empty_as_null=False).to_numpy())
    new_id = np.zeros(corpus.n_items + 1, dtype=np.int64)
    new_id[kept] = np.arange(1, kept.size + 1)
    users = corpus.user_map.filter(pl.col("user") <= max_users)
    return remap_items(Corpus(histories, users, corpus.item_map), new_id)


def shuffle_item_ids(corpus: Corpus, seed: int) -> Corpus:
    """Renumber items by a seeded permutation: consecutive IDs no longer encode interaction order."""
    rng = np.random.default_rng([seed, STREAM_SHUFFLE])
    new_id = np.concatenate([[0], rng.permutation(corpus.n_items) + 1])
    return remap_items(corpus, new_id)


def split_interactions(histories: pl.DataFrame) -> pl.DataFrame:
    """One row per interaction with its position and split: last = test, second last = valid, rest = train."""
    exploded = histories.explode("items", empty_as_null=False).rename({"items": "item"})
    exploded = exploded.with_columns(pl.int_range(pl.len()).over("user").alias("position"),
                                     pl.len().over("user").alias("length"))
    split = (
        pl.when(pl.col("position") == pl.col("length") - 1).then(pl.lit("test"))
        .when(pl.col("position") == pl.col("length") - 2).then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
    )
    return schemas.conform(exploded.with_columns(split.alias("split")), schemas.INTERACTIONS)


def draw_candidates(histories: pl.DataFrame, n_items: int, n_negatives: int, seed: int,
                    test_negatives: np.ndarray | None = None) -> pl.DataFrame:
    """Validation and test candidates: the held-out item inserted at a seeded slot among fresh negatives (or,
    for the test split, among `test_negatives`, rows in the order of `histories`: the authors' lists)."""
    frames = []
    for split, stream, offset in (("valid", STREAM_VALID, 2), ("test", STREAM_TEST, 1)):
        rng = np.random.default_rng([seed, stream])
        if split == "test" and test_negatives is not None:
            negatives = test_negatives.astype(np.int32)
        else:
            negatives = sample_negatives(histories, n_items, rng, n_negatives).astype(np.int32)
        targets = histories["items"].list.get(-offset).to_numpy().astype(np.int32)
        slots = rng.integers(0, n_negatives + 1, size=len(targets))
        columns = np.arange(n_negatives + 1)[None, :]
        source = np.where(columns < slots[:, None], columns, columns - 1)  # index into negatives
        candidates = np.take_along_axis(negatives, np.clip(source, 0, n_negatives - 1), axis=1)
        candidates = np.where(columns == slots[:, None], targets[:, None], candidates)
        frames.append(pl.DataFrame({"user": histories["user"], "split": split, "target": targets,
                                    "candidates": pl.Series(candidates, dtype=pl.Array(pl.Int32, n_negatives + 1))
                                    .cast(pl.List(pl.Int32))}))
    return schemas.conform(pl.concat(frames), schemas.CANDIDATES)


def compute_stats(corpus: Corpus, interactions: pl.DataFrame, data: DataSettings, seed: int) -> dict[str, Any]:
    lengths = corpus.histories["items"].list.len()
    return {
        "dataset": data.dataset, "source": data.source, "id_scheme": data.id_scheme, "seed": seed,
        "n_users": corpus.n_users, "n_items": corpus.n_items, "n_interactions": interactions.height,
        "n_train_interactions": int((interactions["split"] == "train").sum()),
        "density": interactions.height / (corpus.n_users * corpus.n_items),
        "history_length_mean": float(lengths.mean()), "history_length_max": int(lengths.max()),
        # Share of users whose test item is max(history)+1: the order leak of P5's consecutive item IDs.
        "test_is_max_history_plus_one": float(
            corpus.histories.select(
                pl.col("items").list.get(-1) == pl.col("items").list.head(pl.col("items").list.len() - 1).list.max() + 1
            ).to_series().mean()
        ),
    }  # fmt: skip


def preprocess(data: DataSettings, seed: int, raw_dir: Path, out: DataPaths) -> dict[str, Any]:
    """Run the whole stage; returns the stats it wrote to `out.stats`."""
    corpus = load_corpus(data, raw_dir)
    authors = None  # data.negatives=authors: the test negatives of negative.txt (validation stays seeded)
    if data.negatives == "authors":
        authors = read_authors_negatives(raw_dir / NEGATIVES_FILE, corpus.histories, corpus.n_items, data.n_negatives)
        source_items = corpus.item_map
    if data.max_users is not None and data.max_users < corpus.n_users:
        corpus = subset_users(corpus, data.max_users)
    check_negatives(corpus, data.n_negatives)
    if data.id_scheme == "shuffled":
        corpus = shuffle_item_ids(corpus, seed)
    interactions = split_interactions(corpus.histories)
    if authors is not None:
        authors = remap_negatives(authors, source_items, corpus.item_map)  # into the shuffled IDs, if any
    candidates = draw_candidates(corpus.histories, corpus.n_items, data.n_negatives, seed, authors)
    stats = compute_stats(corpus, interactions, data, seed)
    with atomic_dir(out.root) as tmp:
        staged = DataPaths(tmp)
        for frame, path in ((interactions, staged.interactions), (corpus.histories, staged.histories),
                            (candidates, staged.candidates), (corpus.user_map, staged.user_map),
                            (corpus.item_map, staged.item_map)):
            frame.write_parquet(path, statistics=True)
        staged.stats.write_text(json.dumps(stats, indent=2) + "\n")
    log.info("preprocessed %s: %d users, %d items, %d interactions", data.dataset,
             stats["n_users"], stats["n_items"], stats["n_interactions"])
    return stats
