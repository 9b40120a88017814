"""Random, popularity and ID-order baselines against hand computations."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from elmrec.baselines import (
    id_order_direct,
    id_order_sequential,
    popularity_direct,
    popularity_sequential,
    random_direct,
    random_sequential,
    training_items,
)
from elmrec.data.schemas import HISTORIES

N_ITEMS = 6
COUNTS = np.array([0, 1, 3, 3, 0, 1, 0])  # training interactions of items 0 (none), 1..6


def test_popularity_direct_orders_candidates_ties_in_stored_order() -> None:
    counts = COUNTS
    result = popularity_direct([[4, 1, 3, 5, 2], [6, 4]], counts, users=[10, 11])
    # user 10: 3 and 2 tie at 3 (3 stored first), 1 and 5 tie at 1 (1 first), then 4
    assert result.items.tolist() == [[3, 2, 1, 5, 4], [6, 4, -1, -1, -1]]
    assert result.scores[0].tolist() == [3, 3, 1, 1, 0]
    assert np.isnan(result.scores[1, 2:]).all()
    assert result.users.tolist() == [10, 11]
    assert (result.n_invalid, result.n_outputs) == (0, 7)
    assert result.ranks([5, 4]).tolist() == [4, 2]


def test_popularity_sequential_excludes_history_ties_by_item_id() -> None:
    counts = COUNTS
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


def test_id_order_sequential_walks_up_from_the_largest_visible_id_then_down() -> None:
    result = id_order_sequential(
        visible=[[2, 5], [9], [10, 3], [1]],
        exclusions=[[7, 2, 5], [9, 4], [10, 3, 9], list(range(1, 10))],
        n_items=10, top_n=3, users=[4, 5, 6, 7])
    # user 4: m=5 -> 6, (7 seen though not visible), 8, 9.  user 5: m=9 -> 10, catalogue ends, 8, 7.
    # user 6: m=10 (the last item) -> (9 seen), 8, 7, 6.  user 7: m=1, all of 1..9 seen -> only 10.
    assert result.items.tolist() == [[6, 8, 9], [10, 8, 7], [8, 7, 6], [10, -1, -1]]
    assert result.scores[:3].tolist() == [[-1, -3, -4], [-1, -2, -3], [-2, -3, -4]]  # minus the steps from m
    assert result.scores[3, 0] == -9 and np.isnan(result.scores[3, 1:]).all()
    assert result.ranks([8, 7, 9, 10]).tolist() == [2, 3, 0, 1]


def test_id_order_direct_ranks_by_distance_to_the_nearest_training_item() -> None:
    # training items 3 and 10: distances 7:3, 1:2, 12:2, 6:3, 4:1, 9:1 (ties keep the stored order)
    result = id_order_direct([[7, 1, 12, 6, 4, 9], [5, 2, 8]], [[10, 3], [5]], users=[1, 2])
    assert result.items.tolist() == [[4, 9, 1, 12, 7, 6], [5, 2, 8, -1, -1, -1]]
    assert result.scores[0].tolist() == [-1, -1, -2, -2, -3, -3]
    assert result.scores[1, :3].tolist() == [0, -3, -3]
    with pytest.raises(ValueError, match="at least one training item"):
        id_order_direct([[1, 2]], [[]])


def test_training_items_drop_validation_and_test() -> None:
    histories = pl.DataFrame({"user": [1, 2], "items": [[1, 2, 3, 4], [5, 6, 7]]}, schema=HISTORIES)
    assert training_items(histories, [2, 1]) == [[5], [1, 2]]
