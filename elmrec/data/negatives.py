"""Negatives: items a user never interacted with.

Uniform sampling is used twice: by the preprocess stage (evaluation candidates, drawn once and stored) and by
the direct training sampler (fresh negatives every epoch). With `data.negatives=authors` the preprocess stage
takes the test negatives from the P5 source's `negative.txt` instead (read_authors_negatives, validated).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from elmrec.data.p5 import DataError, read_text


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


NEGATIVES_FILE = "negative.txt"  # the P5 source's fixed test negatives: one line per user, `user n1 ... n99`


def read_authors_negatives(path: Path, histories: pl.DataFrame, n_items: int, n_negatives: int = 99) -> np.ndarray:
    """(U, n_negatives) test negatives of the authors' `negative.txt`, rows in the order of `histories`' users.

    Validated line by line (a DataError names the file and line): `user n1 ... n99` integers, a known user listed
    once, n_negatives distinct items in 1..n_items, none in the user's history; every user present.
    """
    if not path.is_file():
        raise DataError(f"{path} is missing: data.negatives=authors needs the P5 source's {NEGATIVES_FILE} "
                        f"(the download stage fetches it where the source has one); or set data.negatives=seeded")
    items_of = dict(zip(histories["user"].to_list(), histories["items"].to_list()))
    found: dict[int, tuple[int, list[int]]] = {}  # user -> (line, negatives)
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        user, negatives = _parse_line(path, number, line)
        _check_line(path, number, user, negatives, items_of, found, n_items, n_negatives)
        found[user] = (number, negatives)
    missing = [u for u in items_of if u not in found]
    if missing:
        raise DataError(f"{path}: {len(missing)} users have no line (first: {missing[:5]})")
    return np.array([found[u][1] for u in histories["user"].to_list()], dtype=np.int64)


def _parse_line(path: Path, number: int, line: str) -> tuple[int, list[int]]:
    tokens = line.split()
    try:
        ids = [int(token) for token in tokens]
    except ValueError as error:
        raise DataError(f"{path}:{number}: not a line of integer IDs ({error})") from error
    return ids[0], ids[1:]


def _check_line(path: Path, number: int, user: int, negatives: list[int], items_of: dict[int, list[int]],
                found: dict[int, tuple[int, list[int]]], n_items: int, n_negatives: int) -> None:
    where = f"{path}:{number}: user {user}"
    if user not in items_of:
        raise DataError(f"{where} is not a user of the dataset")
    if user in found:
        raise DataError(f"{where} is listed again (first on line {found[user][0]})")
    if len(negatives) != n_negatives:
        raise DataError(f"{where} has {len(negatives)} negatives, not {n_negatives}")
    unknown = [i for i in negatives if not 1 <= i <= n_items]
    if unknown:
        raise DataError(f"{where}: item {unknown[0]} is not an item of the dataset (1..{n_items})")
    if len(set(negatives)) != len(negatives):
        repeated = next(i for i in negatives if negatives.count(i) > 1)
        raise DataError(f"{where}: item {repeated} is listed twice")
    interacted = sorted(set(negatives) & set(items_of[user]))
    if interacted:
        raise DataError(f"{where}: item {interacted[0]} is in the user's history")


def remap_negatives(negatives: np.ndarray, old_map: pl.DataFrame, new_map: pl.DataFrame) -> np.ndarray:
    """Negatives in the IDs of `old_map` (item, asin) renamed to those of `new_map` (item, asin), by ASIN."""
    joined = old_map.join(new_map, on="asin", how="left", suffix="_new")
    lookup = np.zeros(int(old_map["item"].max()) + 1, dtype=np.int64)
    lookup[joined["item"].to_numpy()] = joined["item_new"].fill_null(0).to_numpy()
    renamed = lookup[negatives]
    if (renamed == 0).any():
        raise DataError(f"{int(negatives[renamed == 0][0])} of the authors' negatives is not in the processed data")
    return renamed
