"""Random and popularity baselines against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from elmrec.baselines import (
    popularity_counts,
    popularity_direct,
    popularity_sequential,
    random_direct,
    random_sequential,
)

N_ITEMS = 6
TRAIN = [[1, 2, 3], [2, 3], [3, 5], [2]]  # counts: 1:1, 2:3, 3:3, 4:0, 5:1, 6:0


def test_popularity_counts_by_hand() -> None:
    assert popularity_counts(TRAIN, N_ITEMS).tolist() == [0, 1, 3, 3, 0, 1, 0]
    with pytest.raises(ValueError):
        popularity_counts([[7]], N_ITEMS)


def test_popularity_direct_orders_candidates_ties_in_stored_order() -> None:
    counts = popularity_counts(TRAIN, N_ITEMS)
    result = popularity_direct([[4, 1, 3, 5, 2], [6, 4]], counts, users=[10, 11])
    # user 10: 3 and 2 tie at 3 (3 stored first), 1 and 5 tie at 1 (1 first), then 4
    assert result.items.tolist() == [[3, 2, 1, 5, 4], [6, 4, -1, -1, -1]]
    assert result.scores[0].tolist() == [3, 3, 1, 1, 0]
    assert np.isnan(result.scores[1, 2:]).all()
    assert result.users.tolist() == [10, 11]
    assert (result.n_invalid, result.n_outputs) == (0, 7)
    assert result.ranks([5, 4]).tolist() == [4, 2]


def test_popularity_sequential_excludes_history_ties_by_item_id() -> None:
    counts = popularity_counts(TRAIN, N_ITEMS)
    # global order: 2, 3 (tie -> smaller id), 1, 5, 4, 6
    result = popularity_sequential([[2], [3, 1, 3], []], counts, top_n=3)
    assert result.items.tolist() == [[3, 1, 5], [2, 5, 4], [2, 3, 1]]
    assert result.scores.tolist() == [[3, 1, 1], [3, 1, 0], [3, 3, 1]]
    assert result.users.tolist() == [0, 1, 2]  # positions when no user IDs are given


def test_random_direct_is_seeded_permutation() -> None:
    cands = [[1, 2, 3, 4, 5], [6, 5, 4]]
    a = random_direct(cands, seed=7)
    b = random_direct(cands, seed=7)
    assert np.array_equal(a.items, b.items) and np.array_equal(a.scores, b.scores, equal_nan=True)
    assert sorted(a.items[0].tolist()) == [1, 2, 3, 4, 5]
    assert sorted(a.items[1, :3].tolist()) == [4, 5, 6]
    assert (np.diff(a.scores[0]) <= 0).all()  # best first
    others = [random_direct(cands, seed=s).items[0].tolist() for s in range(8, 14)]
    assert any(o != a.items[0].tolist() for o in others)


def test_random_sequential_seeded_and_never_history() -> None:
    histories = [[1, 2, 3], [6], list(range(1, 5))]
    a = random_sequential(histories, N_ITEMS, top_n=2, seed=3)
    b = random_sequential(histories, N_ITEMS, top_n=2, seed=3)
    assert np.array_equal(a.items, b.items)
    for row, hist in zip(a.items.tolist(), histories):
        assert len(set(row)) == 2 and not set(row) & set(hist) and all(1 <= i <= N_ITEMS for i in row)
    assert sorted(a.items[2].tolist()) == [5, 6]  # the only two items left
