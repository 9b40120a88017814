"""Non-learned floors: random and popularity recommenders for both evaluation tasks.

They return the same `DecodeResult` as the model decoders, so one harness computes every metric.

- Popularity = number of training interactions of an item (`popularity_counts`).
- Direct task: the user's stored candidates (target + negatives) are re-ordered.
  popularity: by count, descending; equal counts keep the stored (seeded, shuffled) candidate order.
  random: by a seeded uniform key per candidate, descending.
- Sequential task: `top_n` items from the whole catalogue, never one of the user's history items.
  popularity: the most popular items, equal counts broken by the smaller item ID.
  random: items drawn uniformly without replacement (seeded), scores NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np

from elmrec.metrics import DecodeResult, rank_by_scores

logger = logging.getLogger(__name__)


def popularity_counts(train_histories: Iterable[Sequence[int]], n_items: int) -> np.ndarray:
    """(n_items + 1,) int64 counts of training interactions per item; index 0 (no item) stays 0."""
    counts = np.zeros(n_items + 1, dtype=np.int64)
    for items in train_histories:
        ids = np.asarray(items, dtype=np.int64)
        if ids.size and (ids.min() < 1 or ids.max() > n_items):
            raise ValueError(f"item IDs must lie in 1..{n_items}, got {ids.min()}..{ids.max()}")
        np.add.at(counts, ids, 1)
    return counts


def popularity_direct(
    candidates: Sequence[Sequence[int]], counts: np.ndarray, users: Sequence[int] | None = None
) -> DecodeResult:
    """Each user's candidates ordered by training popularity (desc; ties keep the stored candidate order)."""
    rows = [np.asarray(c, dtype=np.int64) for c in candidates]
    ranked = [rank_by_scores(counts[c].astype(np.float64), c) for c in rows]
    scores = [counts[r].astype(np.float64) for r in ranked]
    return _result(users, ranked, scores)


def random_direct(
    candidates: Sequence[Sequence[int]], seed: int, users: Sequence[int] | None = None
) -> DecodeResult:
    """Each user's candidates in a seeded random order (scores: the uniform keys, descending)."""
    rng = np.random.default_rng(seed)
    ranked, scores = [], []
    for c in candidates:
        c = np.asarray(c, dtype=np.int64)
        key = rng.random(len(c))
        order = np.argsort(-key, kind="stable")
        ranked.append(c[order])
        scores.append(key[order])
    return _result(users, ranked, scores)


def popularity_sequential(
    histories: Sequence[Sequence[int]], counts: np.ndarray, top_n: int, users: Sequence[int] | None = None
) -> DecodeResult:
    """The `top_n` most popular training items not in the user's history (ties: smaller item ID first)."""
    order = np.argsort(-counts[1:], kind="stable") + 1  # (I,) item IDs, most popular first
    ranked, scores = [], []
    for history in histories:
        seen = np.unique(np.asarray(history, dtype=np.int64))
        head = order[: top_n + len(seen)]  # enough: at most len(seen) of them are dropped
        picked = head[~np.isin(head, seen)][:top_n]
        ranked.append(picked)
        scores.append(counts[picked].astype(np.float64))
    return _result(users, ranked, scores)


def random_sequential(
    histories: Sequence[Sequence[int]], n_items: int, top_n: int, seed: int, users: Sequence[int] | None = None
) -> DecodeResult:
    """`top_n` distinct items drawn uniformly (seeded) from the items not in the user's history."""
    rng = np.random.default_rng(seed)
    ranked, scores = [], []
    for history in histories:
        seen = np.unique(np.asarray(history, dtype=np.int64))
        size = min(n_items, top_n + len(seen))
        draw = rng.choice(n_items, size=size, replace=False) + 1
        picked = draw[~np.isin(draw, seen)][:top_n]
        ranked.append(picked)
        scores.append(np.full(len(picked), np.nan))
    return _result(users, ranked, scores)


def _result(users: Sequence[int] | None, ranked: list[np.ndarray], scores: list[np.ndarray]) -> DecodeResult:
    """Per-user lists as a DecodeResult (users default to positions 0..U-1); baselines are never invalid."""
    user_ids = range(len(ranked)) if users is None else users
    logger.debug("baseline ranked %d users", len(ranked))
    return DecodeResult.from_lists(list(user_ids), ranked, scores)
