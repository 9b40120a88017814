"""Metrics against hand-computed rankings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from elmrec.metrics import (
    DecodeResult,
    coverage,
    hit_rate,
    invalid_rate,
    ndcg,
    pessimistic_rank,
    rank_by_scores,
    rank_of,
    ranking_metrics,
    task_metrics,
    tracked_metrics,
    tracked_name,
    untracked_metrics,
)


def test_rank_of_positions_absent_and_invalid_slots() -> None:
    assert rank_of([7, 3, 9], 7) == 1
    assert rank_of([7, 3, 9], 9) == 3
    assert rank_of([7, 3, 9], 4) == 0  # absent
    assert rank_of([-1, -1, 5], 5) == 3  # invalid slots keep their positions
    assert rank_of([-1, 2], -1) == 0  # an invalid slot never matches
    assert rank_of(np.array([], dtype=np.int64), 1) == 0


def test_hit_rate_and_ndcg_by_hand() -> None:
    ranks = [1, 3, 0, 6, 11]
    assert hit_rate(ranks, 1) == pytest.approx(1 / 5)
    assert hit_rate(ranks, 5) == pytest.approx(2 / 5)
    assert hit_rate(ranks, 10) == pytest.approx(3 / 5)
    assert ndcg(ranks, 5) == pytest.approx((1.0 + 1 / math.log2(4)) / 5)  # 1/log2(2) + 1/log2(4)
    assert ndcg(ranks, 10) == pytest.approx((1.0 + 0.5 + 1 / math.log2(7)) / 5)
    # k larger than any list: only real ranks count
    assert hit_rate([2, 0], 1000) == 0.5
    assert ndcg([2, 0], 1000) == pytest.approx(1 / math.log2(3) / 2)


def test_ranking_metrics_keys_and_values() -> None:
    out = ranking_metrics([1, 2])
    assert set(out) == {"hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10"}
    assert out["hr@1"] == 0.5 and out["hr@5"] == 1.0 and out["hr@10"] == 1.0
    assert out["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    with pytest.raises(ValueError):
        ranking_metrics([])


def test_invalid_rate_and_coverage() -> None:
    assert invalid_rate(3, 12) == 0.25
    assert invalid_rate(0, 0) == 0.0
    with pytest.raises(ValueError):
        invalid_rate(5, 4)
    lists = [[1, 2, 3, 9], [2, -1, 4], [99, 5]]  # 99 is outside the catalogue, -1 invalid
    assert coverage(lists, n_items=10) == pytest.approx(6 / 10)  # {1,2,3,4,5,9}
    assert coverage(lists, n_items=10, k=2) == pytest.approx(3 / 10)  # top-2 lists: {1,2}, {2}, {5}
    assert coverage(np.array([[1, 1], [1, -1]]), n_items=4) == 0.25


def test_rank_by_scores_ties_keep_candidate_order_and_nan_last() -> None:
    candidates = [10, 20, 30, 40, 50]
    scores = [0.5, 0.9, 0.5, float("nan"), 0.9]
    assert rank_by_scores(scores, candidates).tolist() == [20, 50, 10, 30, 40]
    # the same scores with the candidates in another order: ties follow the new order
    assert rank_by_scores([0.5, 0.5, 0.9, 0.9], [30, 10, 50, 20]).tolist() == [50, 20, 30, 10]
    with pytest.raises(ValueError):
        rank_by_scores([1.0], [1, 2])


def test_pessimistic_rank_counts_every_tie_against_the_target() -> None:
    candidates = [10, 20, 30, 40]
    scores = [0.5, 0.9, 0.5, 0.5]
    assert pessimistic_rank(scores, candidates, 10) == 4  # 20 above, 30 and 40 tie
    assert pessimistic_rank(scores, candidates, 20) == 1
    assert pessimistic_rank(scores, candidates, 99) == 0
    assert rank_of(rank_by_scores(scores, candidates), 10) == 2  # index order is optimistic here


def test_decode_result_metrics() -> None:
    result = DecodeResult(
        users=np.array([1, 2, 3]),
        items=np.array([[4, 5, -1], [-1, 6, 7], [8, 9, 1]]),
        scores=np.zeros((3, 3)),
        n_invalid=2,
        n_outputs=9,
    )
    assert result.ranks([5, 7, 2]).tolist() == [2, 3, 0]
    out = result.metrics([5, 7, 2], n_items=10)
    assert out["hr@1"] == 0.0
    assert out["hr@5"] == pytest.approx(2 / 3)
    assert out["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 3)
    assert out["invalid_rate"] == pytest.approx(2 / 9)
    assert out["coverage@10"] == pytest.approx(7 / 10)  # {1,4,5,6,7,8,9}
    with pytest.raises(ValueError):
        result.ranks([1, 2])


def test_tracked_metric_names_carry_task_and_decoder() -> None:
    assert tracked_name("test", "direct", "beam", "hr@10") == "test/direct/beam/hr_at_10"
    assert tracked_name("test", "direct", "score", "ndcg@5", owner="id_order (id_scheme=shuffled)") == \
        "id_order_id_scheme_shuffled/test/direct/score/ndcg_at_5"
    model = {"direct": {"score": {"hr@10": 0.25, "n_users": 4}, "beam": {"hr@10": 0.5, "flag": True}},
             "sequential": {"constrained": {"ndcg@5": 0.125, "note": "text"}}}
    tracked = tracked_metrics(model, "test")
    assert tracked == {
        "test/direct/score/hr_at_10": 0.25, "test/direct/score/n_users": 4.0, "test/direct/beam/hr_at_10": 0.5,
        "test/sequential/constrained/ndcg_at_5": 0.125}  # booleans and text are not metrics
    back = {"direct": {"score": {"hr@10": 0.25, "n_users": 4.0}, "beam": {"hr@10": 0.5}},
            "sequential": {"constrained": {"ndcg@5": 0.125}}}
    assert untracked_metrics({**tracked, "valid_loss": 3.0, "valid/direct/score/hr_at_10": 0.1}, "test") == back
    # without the decoder: each task's first one (score before beam), for one row per task in MLflow's compare view
    assert task_metrics(model, "test") == {"test/direct/hr_at_10": 0.25, "test/direct/n_users": 4.0,
                                           "test/sequential/ndcg_at_5": 0.125}
    assert untracked_metrics(task_metrics(model, "test"), "test") == {}
    sorted_keys = {"direct": {"beam": {"hr@10": 0.0}, "score": {"hr@10": 0.25}},  # metrics.json sorts its keys
                   "sequential": {"constrained": {"hr@10": 0.5}, "rerank": {"hr@10": 0.75}}}
    assert task_metrics(sorted_keys, "test") == {"test/direct/hr_at_10": 0.25, "test/sequential/hr_at_10": 0.5}
