"""Non-learned floors: random, popularity and ID-order recommenders for both evaluation tasks.

They return the same `DecodeResult` as the model decoders, so one harness computes every metric.

- Popularity = number of training interactions of an item (the caller counts them: `EvalData.train_counts`).
- Direct task: the user's stored candidates (target + negatives) are re-ordered.
  popularity: by count, descending; equal counts keep the stored (seeded, shuffled) candidate order.
  random: by a seeded uniform key per candidate, descending.
  id_order: by ID distance to the user's nearest training item, |c - t|, ascending; equal distances keep the
  stored candidate order.
- Sequential task: `top_n` items from the whole catalogue, never one of the user's history items.
  popularity: the most popular items, equal counts broken by the smaller item ID.
  random: items drawn uniformly without replacement (seeded), scores NaN.
  id_order: m = the largest item ID of the visible history; the unseen items m+1, m+2, ..., and once the
  catalogue ends, m-1, m-2, ... (nearest below first). Score = minus the steps walked from m.

id_order measures what P5's consecutive item IDs alone give (an item's ID encodes when it was first bought);
under `data.id_scheme=shuffled` it falls to chance.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from itertools import islice

import numpy as np
import polars as pl

from elmrec.metrics import DecodeResult, rank_by_scores

logger = logging.getLogger(__name__)


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


def id_order_direct(
    candidates: Sequence[Sequence[int]], train_items: Sequence[Sequence[int]], users: Sequence[int] | None = None
) -> DecodeResult:
    """Each user's candidates by ID distance to the user's nearest training item, nearest first (ties: stored
    order); scores are minus the distances."""
    ranked, scores = [], []
    for c, train in zip(candidates, train_items, strict=True):
        c = np.asarray(c, dtype=np.int64)
        distance = nearest_distance(c, np.asarray(train, dtype=np.int64))
        order = np.argsort(distance, kind="stable")
        ranked.append(c[order])
        scores.append(-distance[order].astype(np.float64))
    return _result(users, ranked, scores)


def training_items(histories: pl.DataFrame, users: Sequence[int]) -> list[list[int]]:
    """Each user's training items (the whole history but its last two: validation and test), in `users` order."""
    by_user = dict(zip(histories["user"].to_list(), histories["items"].to_list()))
    return [by_user[u][:-2] for u in users]


def nearest_distance(items: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(len(items),) min over `reference` of |item - r|; reference must be non-empty."""
    if reference.size == 0:
        raise ValueError("id_order needs at least one training item per user")
    ref = np.unique(reference)  # sorted
    right = np.searchsorted(ref, items).clip(max=ref.size - 1)
    left = (right - 1).clip(min=0)
    return np.minimum(np.abs(items - ref[left]), np.abs(items - ref[right]))


def id_order_sequential(
    visible: Sequence[Sequence[int]], exclusions: Sequence[Sequence[int]], n_items: int, top_n: int,
    users: Sequence[int] | None = None,
) -> DecodeResult:
    """Per user, the `top_n` items not in `exclusions` walking up from max(visible) to the catalogue's end, then
    down from it; score = minus the steps walked (an empty visible history starts at 0: items 1, 2, ...)."""
    ranked, scores = [], []
    for shown, excluded in zip(visible, exclusions, strict=True):
        start = max(shown, default=0)
        seen = set(excluded) | {start}
        picked = list(islice(((item, steps) for item, steps in _walk(start, n_items) if item not in seen), top_n))
        ranked.append(np.array([item for item, _ in picked], dtype=np.int64))
        scores.append(-np.array([steps for _, steps in picked], dtype=np.float64))
    return _result(users, ranked, scores)


def _walk(start: int, n_items: int) -> Iterator[tuple[int, int]]:
    """(item, steps): start+1 .. n_items (steps 1, 2, ...), then start-1 .. 1 (steps continue)."""
    above = n_items - start
    for item in range(start + 1, n_items + 1):
        yield item, item - start
    for item in range(start - 1, 0, -1):
        yield item, above + start - item


def _result(users: Sequence[int] | None, ranked: list[np.ndarray], scores: list[np.ndarray]) -> DecodeResult:
    """Per-user lists as a DecodeResult (users default to positions 0..U-1); baselines are never invalid."""
    user_ids = range(len(ranked)) if users is None else users
    logger.debug("baseline ranked %d users", len(ranked))
    return DecodeResult.from_lists(list(user_ids), ranked, scores)
