"""Uniform sampling of negatives: items a user never interacted with.

Used twice: by the preprocess stage (evaluation candidates, drawn once and stored) and by the direct
training sampler (fresh negatives every epoch).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from elmrec.data.p5 import DataError


def flat_histories(histories: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """users (U,), lengths (U,), starts (U,) and all items concatenated (sum n,), as int64 arrays."""
    users = histories["user"].to_numpy().astype(np.int64)
    lengths = histories["items"].list.len().to_numpy().astype(np.int64)
    flat = histories["items"].explode(empty_as_null=False).to_numpy().astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return users, lengths, starts, flat


def sample_negatives(
    histories: pl.DataFrame, n_items: int, rng: np.random.Generator, n_negatives: int = 99
) -> np.ndarray:
    """(U, n_negatives) distinct items from 1..n_items that each user never interacted with.

    Vectorised: draw an oversampled (U, K) matrix, reject items of the user's history and repeats within a
    row (keeping draw order, so the first valid draws are a uniform sample without replacement), keep the
    first n_negatives. The few rows left short are drawn exactly from their complement.
    """
    users, lengths, starts, flat = flat_histories(histories)
    n_users = len(users)
    stride = n_items + 1  # key of (row, item) = row * stride + item
    seen = np.unique(np.repeat(np.arange(n_users), lengths) * stride + flat)  # sorted keys of interactions
    n_free = n_items - np.diff(np.searchsorted(seen, np.arange(n_users + 1) * stride))
    if n_users and n_free.min() < n_negatives:
        bad = int(users[np.argmin(n_free)])
        raise DataError(f"user {bad} has {n_free.min()} non-interacted items, fewer than {n_negatives} negatives")

    k = n_negatives + max(32, n_negatives // 4)  # oversampling: a few repeats and history hits per row
    draws = rng.integers(1, n_items + 1, size=(n_users, k))  # (U, K)
    keys = np.arange(n_users)[:, None] * stride + draws
    in_history = np.zeros(draws.shape, dtype=bool)
    if len(seen):
        in_history = seen[np.minimum(np.searchsorted(seen, keys), len(seen) - 1)] == keys
    order = np.argsort(draws, axis=1, kind="stable")
    sorted_draws = np.take_along_axis(draws, order, axis=1)
    repeat_sorted = np.zeros(draws.shape, dtype=bool)
    repeat_sorted[:, 1:] = sorted_draws[:, 1:] == sorted_draws[:, :-1]  # later draws of the same item
    repeat = np.zeros(draws.shape, dtype=bool)
    np.put_along_axis(repeat, order, repeat_sorted, axis=1)
    valid = ~in_history & ~repeat
    take = valid & (np.cumsum(valid, axis=1) <= n_negatives)

    negatives = np.zeros((n_users, n_negatives), dtype=np.int64)
    full = take.sum(axis=1) == n_negatives
    negatives[full] = draws[full][take[full]].reshape(-1, n_negatives)
    for row in np.flatnonzero(~full):  # rare on real data; common only for tiny item sets
        free = np.setdiff1d(np.arange(1, n_items + 1), flat[starts[row] : starts[row] + lengths[row]])
        negatives[row] = rng.choice(free, size=n_negatives, replace=False)
    return negatives
