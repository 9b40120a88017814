import numpy as np
import polars as pl
import pytest

from elmrec.data.negatives import sample_negatives
from elmrec.data.p5 import DataError
from elmrec.data.schemas import HISTORIES


def frame(histories: dict[int, list[int]]) -> pl.DataFrame:
    return pl.DataFrame({"user": list(histories), "items": list(histories.values())}, schema=HISTORIES)


def test_negatives_never_hit_user_items_and_are_distinct(tiny_histories) -> None:
    histories = frame(tiny_histories)
    n_items = 30
    negatives = sample_negatives(histories, n_items, np.random.default_rng(0), 20)
    assert negatives.shape == (4, 20)
    for row, items in zip(negatives.tolist(), tiny_histories.values()):
        assert len(set(row)) == 20 and not set(row) & set(items) and min(row) >= 1 and max(row) <= n_items
    # a catalogue just big enough forces the exact fallback path: every unseen item is drawn
    exact = sample_negatives(histories.head(1), 25, np.random.default_rng(0), 20)
    assert sorted(exact[0].tolist()) == list(range(6, 26))


def test_too_few_items_for_negatives(tiny_histories) -> None:
    histories = frame({1: tiny_histories[1]})
    with pytest.raises(DataError, match="user 1 has 45 non-interacted items, fewer than 99 negatives"):
        sample_negatives(histories, 50, np.random.default_rng(0), 99)


def test_negatives_are_uniform_and_distinct() -> None:
    histories = frame({u: list(range(1, 11)) for u in range(1, 2001)})
    negatives = sample_negatives(histories, n_items=200, rng=np.random.default_rng(0), n_negatives=20)
    assert negatives.shape == (2000, 20)
    assert all(len(set(row)) == 20 for row in negatives.tolist())
    counts = np.bincount(negatives.ravel(), minlength=201)
    assert counts[:11].sum() == 0
    mean = 2000 * 20 / 190  # 210.5 per free item
    assert np.abs(counts[11:] - mean).max() < 5 * np.sqrt(mean)


def test_negatives_with_few_free_items_and_too_few() -> None:
    histories = frame({1: [1, 2, 3, 4, 5], 2: [100, 101]})
    negatives = sample_negatives(histories, n_items=104, rng=np.random.default_rng(0), n_negatives=99)
    assert sorted(negatives[0].tolist()) == list(range(6, 105))  # exactly the 99 free items
    assert len(set(negatives[1].tolist())) == 99 and not {100, 101} & set(negatives[1].tolist())
    with pytest.raises(DataError, match="user 1 has 98 non-interacted items"):
        sample_negatives(histories, n_items=103, rng=np.random.default_rng(0), n_negatives=99)


