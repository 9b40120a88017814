"""Prompts: template families, leak-free training samplers, fixed evaluation prompts."""

from __future__ import annotations

import functools
import re
from collections import Counter

import numpy as np
import polars as pl
import pytest

from elmrec.config import Task
from elmrec.data.schemas import CANDIDATES, HISTORIES
from elmrec.prompts import (
    DIRECT_TEMPLATES,
    SEQUENTIAL_TEMPLATES,
    direct_epoch,
    direct_eval,
    sequential_epoch,
    sequential_eval,
)
from elmrec.wholeword import Prompt

ITEM = re.compile(r"\bitem_(\d+)")


def frame(histories: dict[int, list[int]]) -> pl.DataFrame:
    return pl.DataFrame({"user": list(histories), "items": list(histories.values())}, schema=HISTORIES)


def items_of(prompt: Prompt) -> list[int]:
    return [int(x) for x in ITEM.findall(prompt.text)]


@functools.cache
def _template_patterns(templates: tuple[str, ...]) -> list[re.Pattern[str]]:
    user, items = r"user_\d+", r"item_\d+(?: item_\d+)*"
    return [re.compile(re.escape(t).replace(r"\{user\}", user).replace(r"\{items\}", items)) for t in templates]


def template_of(prompt: Prompt, templates: tuple[str, ...]) -> int:
    """Index of the one template the prompt's text was rendered from."""
    (index,) = [i for i, pattern in enumerate(_template_patterns(templates)) if pattern.fullmatch(prompt.text)]
    return index


@pytest.fixture
def distinct_histories() -> dict[int, list[int]]:
    """300 users, lengths 1..45, distinct items per user from 1..600 (so positions identify items)."""
    rng = np.random.default_rng(0)
    return {u: rng.choice(np.arange(1, 601), size=int(rng.integers(1, 46)), replace=False).tolist()
            for u in range(1, 301)}


def test_template_families() -> None:
    assert len(SEQUENTIAL_TEMPLATES) == 8 and len(DIRECT_TEMPLATES) == 5
    assert SEQUENTIAL_TEMPLATES[-1] == DIRECT_TEMPLATES[-1] == "{user} {items}"  # the bare form
    for template in SEQUENTIAL_TEMPLATES + DIRECT_TEMPLATES:
        assert template.count("{user}") == 1 and template.count("{items}") == 1
    every = SEQUENTIAL_TEMPLATES[:-1] + DIRECT_TEMPLATES[:-1]
    assert any(t.startswith("{user}") for t in every)  # user ID at the very start
    assert any(t.endswith("{user}?") for t in every)  # an ID right before '?'
    assert any("{items}." in t for t in every) and any("{user}," in t for t in every)


def test_sequential_epoch_segments_never_touch_valid_or_test(distinct_histories: dict[int, list[int]]) -> None:
    histories = frame(distinct_histories)
    for seed in range(5):
        prompts = sequential_epoch(histories, np.random.default_rng(seed), max_history=20)
        assert sorted(p.user for p in prompts) == [u for u, h in distinct_histories.items() if len(h) >= 4]
        for p in prompts:
            h = distinct_histories[p.user]
            assert p.task is Task.SEQUENTIAL
            end = h.index(int(p.target))  # target position
            assert 1 <= end <= len(h) - 3  # never the validation (n-2) or test (n-1) item
            history = items_of(p)
            assert 1 <= len(history) <= 20 and history == h[end - len(history) : end]  # contiguous, just before
            assert h[-1] not in history and h[-2] not in history
            template_of(p, SEQUENTIAL_TEMPLATES)  # exactly one template renders it


def test_sequential_epoch_draws_start_and_end_as_specified() -> None:
    """n = 6: start ~ U{0, 1, 2}, end ~ U{start+1 .. 3}, so P(start, end) = 1/3 * 1/(3 - start)."""
    n_users = 6000
    histories = frame({u: [1, 2, 3, 4, 5, 6] for u in range(1, n_users + 1)})
    rng = np.random.default_rng(1)
    pairs: Counter[tuple[int, int]] = Counter()
    for p in sequential_epoch(histories, rng, max_history=20):
        history = items_of(p)
        pairs[(history[0] - 1, int(p.target) - 1)] += 1
    expected = {(s, e): 1 / 3 / (3 - s) for s in range(3) for e in range(s + 1, 4)}
    assert set(pairs) == set(expected)
    for pair, probability in expected.items():
        assert abs(pairs[pair] / n_users - probability) < 0.025
    templates = Counter(template_of(p, SEQUENTIAL_TEMPLATES) for p in sequential_epoch(histories, rng, 20))
    assert len(templates) == 8 and min(templates.values()) > n_users / 8 * 0.8  # every template, about evenly


def test_sequential_epoch_exact_with_fixed_seed() -> None:
    histories = frame({1: [11, 12, 13, 14, 15, 16], 2: [21, 22, 23, 24], 3: [31, 32, 33]})
    prompts = sequential_epoch(histories, np.random.default_rng(7), max_history=20)
    assert prompts == [
        Prompt(1, Task.SEQUENTIAL, "Purchase history of user_1 in chronological order: item_13. "
               "Guess the next item to buy.", "14"),
        Prompt(2, Task.SEQUENTIAL, "Purchase history of user_2 in chronological order: item_21. "
               "Guess the next item to buy.", "22"),
    ]


def test_sequential_epoch_keeps_the_last_max_history_items() -> None:
    histories = frame({u: list(range(1, 61)) for u in range(1, 201)})
    prompts = sequential_epoch(histories, np.random.default_rng(0), max_history=5)
    for p in prompts:
        history, target = items_of(p), int(p.target)
        assert 1 <= len(history) <= 5 and history == list(range(target - len(history), target))
    assert sum(len(items_of(p)) == 5 for p in prompts) > 100  # long segments are cut to their last 5 items


def test_direct_epoch_candidates(distinct_histories: dict[int, list[int]]) -> None:
    histories = frame(distinct_histories)
    prompts = direct_epoch(histories, n_items=600, rng=np.random.default_rng(3))
    assert sorted(p.user for p in prompts) == [u for u, h in distinct_histories.items() if len(h) >= 3]
    for p in prompts:
        h = distinct_histories[p.user]
        candidates, target = items_of(p), int(p.target)
        assert p.task is Task.DIRECT
        assert len(candidates) == 100 and len(set(candidates)) == 100
        assert target in h[:-2] and candidates.count(target) == 1
        assert not set(candidates) - {target} & set(h)  # negatives never hit the user's items
        assert h[-1] not in candidates and h[-2] not in candidates
        assert all(1 <= c <= 600 for c in candidates)
    templates = Counter(template_of(p, DIRECT_TEMPLATES) for p in prompts)
    assert len(templates) == 5
    positions = Counter(items_of(p).index(int(p.target)) for p in prompts)
    assert len(positions) > 50  # the positive is shuffled in, not always first


def test_direct_epoch_exact_with_fixed_seed() -> None:
    histories = frame({1: [11, 12, 13, 14, 15, 16], 2: [21, 22, 23, 24], 3: [31, 32, 33]})
    prompts = direct_epoch(histories, n_items=40, rng=np.random.default_rng(7), n_negatives=3)
    assert prompts == [
        Prompt(1, Task.DIRECT, "Which of item_28 item_24 item_36 item_14 should be recommended to user_1?", "14"),
        Prompt(2, Task.DIRECT, "user_2 item_14 item_25 item_40 item_22", "22"),
        Prompt(3, Task.DIRECT, "user_3 is choosing among item_31 item_29 item_20 item_15. "
               "Which one should we recommend?", "31"),
    ]


def test_samplers_are_deterministic(distinct_histories: dict[int, list[int]]) -> None:
    histories = frame(distinct_histories)
    for sample in (lambda rng: sequential_epoch(histories, rng, 20), lambda rng: direct_epoch(histories, 600, rng)):
        assert sample(np.random.default_rng(5)) == sample(np.random.default_rng(5))
        assert sample(np.random.default_rng(5)) != sample(np.random.default_rng(6))


def test_sequential_eval_exact() -> None:
    histories = frame({1: list(range(1, 26)), 2: [7, 3, 9], 3: [1, 2]})
    valid = sequential_eval(histories, "valid")
    test = sequential_eval(histories, "test")
    assert valid == [
        Prompt(1, Task.SEQUENTIAL, "user_1 " + " ".join(f"item_{i}" for i in range(4, 24)), "24"),
        Prompt(2, Task.SEQUENTIAL, "user_2 item_7", "3"),
    ]
    assert test == [
        Prompt(1, Task.SEQUENTIAL, "user_1 " + " ".join(f"item_{i}" for i in range(5, 25)), "25"),
        Prompt(2, Task.SEQUENTIAL, "user_2 item_7 item_3", "9"),
    ]
    with pytest.raises(ValueError, match="split"):
        sequential_eval(histories, "train")


def test_direct_eval_keeps_stored_order() -> None:
    candidates = pl.DataFrame(
        {"user": [1, 1, 2], "split": ["valid", "test", "test"], "target": [4, 5, 9],
         "candidates": [[8, 4, 2], [5, 3, 1], [6, 7, 9]]},
        schema=CANDIDATES,
    )
    assert direct_eval(candidates, "test") == [
        Prompt(1, Task.DIRECT, "user_1 item_5 item_3 item_1", "5"),
        Prompt(2, Task.DIRECT, "user_2 item_6 item_7 item_9", "9"),
    ]
    assert direct_eval(candidates, "valid") == [Prompt(1, Task.DIRECT, "user_1 item_8 item_4 item_2", "4")]
