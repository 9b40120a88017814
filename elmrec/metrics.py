"""Ranking metrics for leave-one-out evaluation: one held-out item per user, RecBole-style pure functions.

Every recommender (model decoders and baselines alike) returns a `DecodeResult`: per user a ranked list of item
IDs, best first. A slot holding -1 is an invalid output (unparseable generation, an item outside the candidates,
or no output at all); it occupies its rank position and never matches a target, so it counts as a miss.

Conventions
- `rank` is 1-based; 0 means the target is not in the list (a miss at every cut-off).
- With one relevant item the ideal DCG is 1, so NDCG@k = 1/log2(rank+1) for 1 <= rank <= k, else 0.
- Ties when ranking by scores: a stable sort keeps candidates with equal scores in their given order
  ("index order"). The stored candidate lists are in a seeded shuffled order, so this is a seeded, deterministic
  tie-break that does not depend on where the target sits. `pessimistic_rank` gives the worst-case rank instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from elmrec.config import DECODER_ORDER

INVALID = -1  # the item slot of an invalid output
CUTOFFS_HR = (1, 5, 10)
CUTOFFS_NDCG = (5, 10)
SCORE_DECODER = "score"  # the decoder of every ranking by scores (direct `score`, baselines, classic models)
TRACKED_AT = "_at_"  # `@` of hr@10 in tracked (MLflow) metric names, which may not hold `@`


@dataclass
class DecodeResult:
    """Ranked recommendations of one recommender for a list of users (the structure every decoder returns).

    users:     (U,) user IDs, in evaluation order.
    items:     (U, K) item IDs, best first; -1 marks an invalid output or an empty slot.
    scores:    (U, K) the score behind each slot (model: summed log-likelihood; NaN where there is none).
    n_invalid: outputs that were not a valid answer (unparseable, not a candidate, not an item).
    n_outputs: outputs produced in total (the denominator of the invalid rate).
    """

    users: np.ndarray
    items: np.ndarray
    scores: np.ndarray
    n_invalid: int = 0
    n_outputs: int = 0

    @classmethod
    def from_lists(cls, users: Sequence[int], items: Sequence[Sequence[int]], scores: Sequence[Sequence[float]],
                   n_invalid: int = 0, n_outputs: int | None = None) -> DecodeResult:
        """Pad ragged per-user lists (-1 items, NaN scores); `n_outputs` defaults to the number of listed items."""
        if not len(users) == len(items) == len(scores):
            raise ValueError(f"{len(users)} users, {len(items)} item lists, {len(scores)} score lists")
        width = max((len(r) for r in items), default=0)
        item_arr = np.full((len(items), width), INVALID, dtype=np.int64)
        score_arr = np.full((len(items), width), np.nan, dtype=np.float64)
        for u, (r, s) in enumerate(zip(items, scores)):
            item_arr[u, : len(r)] = r
            score_arr[u, : len(s)] = s
        n_outputs = int(sum(len(r) for r in items)) if n_outputs is None else n_outputs
        return cls(np.asarray(users, dtype=np.int64), item_arr, score_arr, n_invalid, n_outputs)

    def ranks(self, targets: Sequence[int] | np.ndarray) -> np.ndarray:
        """(U,) 1-based rank of each user's target in its list, 0 when absent."""
        if len(targets) != len(self.items):
            raise ValueError(f"{len(targets)} targets for {len(self.items)} users")
        return np.array([rank_of(row, int(t)) for row, t in zip(self.items, targets)], dtype=np.int64)

    def metrics(self, targets: Sequence[int] | np.ndarray, n_items: int, k: int = 10) -> dict[str, float]:
        """HR@1/5/10, NDCG@5/10, invalid rate and coverage@k of this result against `targets`."""
        out = ranking_metrics(self.ranks(targets))
        out["invalid_rate"] = invalid_rate(self.n_invalid, self.n_outputs)
        out[f"coverage@{k}"] = coverage(self.items, n_items, k=k)
        return out


def rank_of(ranked: Sequence[int] | np.ndarray, target: int) -> int:
    """1-based position of `target` in `ranked` (best first), 0 if absent. Invalid slots (-1) never match."""
    if target == INVALID:
        return 0
    hits = np.flatnonzero(np.asarray(ranked) == target)
    return int(hits[0]) + 1 if hits.size else 0


def hit_rate(ranks: Sequence[int] | np.ndarray, k: int) -> float:
    """HR@k = mean_u 1[1 <= rank_u <= k]."""
    r = _as_ranks(ranks)
    return float(np.mean((r >= 1) & (r <= k)))


def ndcg(ranks: Sequence[int] | np.ndarray, k: int) -> float:
    """NDCG@k = mean_u (1/log2(rank_u + 1) if 1 <= rank_u <= k else 0); one relevant item, so IDCG = 1."""
    r = _as_ranks(ranks)
    gain = np.zeros(len(r), dtype=np.float64)
    hit = (r >= 1) & (r <= k)
    gain[hit] = 1.0 / np.log2(r[hit] + 1.0)
    return float(gain.mean())


def ranking_metrics(ranks: Sequence[int] | np.ndarray) -> dict[str, float]:
    """The paper's metrics from per-user ranks: hr@1, hr@5, hr@10, ndcg@5, ndcg@10."""
    out = {f"hr@{k}": hit_rate(ranks, k) for k in CUTOFFS_HR}
    out.update({f"ndcg@{k}": ndcg(ranks, k) for k in CUTOFFS_NDCG})
    return out


def invalid_rate(n_invalid_outputs: int, n_outputs: int) -> float:
    """Share of outputs that were invalid: n_invalid / n_outputs (0.0 when nothing was produced)."""
    if n_invalid_outputs < 0 or n_invalid_outputs > max(n_outputs, 0):
        raise ValueError(f"n_invalid={n_invalid_outputs} is not within [0, n_outputs={n_outputs}]")
    return n_invalid_outputs / n_outputs if n_outputs else 0.0


def coverage(predicted_item_lists: Iterable[Sequence[int]] | np.ndarray, n_items: int, k: int | None = None) -> float:
    """Catalogue coverage = |{i in 1..n_items : i in some user's top-k list}| / n_items.

    `k=None` uses whole lists. Invalid slots (-1) and IDs outside 1..n_items are ignored.
    """
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    seen = np.zeros(n_items + 1, dtype=bool)
    for row in predicted_item_lists:
        ids = np.asarray(row, dtype=np.int64)[:k]
        seen[ids[(ids >= 1) & (ids <= n_items)]] = True
    return float(seen[1:].sum() / n_items)


def rank_by_scores(scores: Sequence[float] | np.ndarray, candidates: Sequence[int] | np.ndarray) -> np.ndarray:
    """Candidates ordered by score, highest first; ties keep their given order (stable sort).

    NaN scores sort last (treated as -inf).
    """
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(candidates, dtype=np.int64)
    if s.shape != c.shape:
        raise ValueError(f"scores {s.shape} and candidates {c.shape} differ in shape")
    return c[score_order(s)]


def score_order(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Indices that sort `scores` descending; stable (ties keep index order), NaN last."""
    s = np.asarray(scores, dtype=np.float64)
    return np.argsort(np.where(np.isnan(s), np.inf, -s), kind="stable")


def pessimistic_rank(scores: Sequence[float] | np.ndarray, candidates: Sequence[int] | np.ndarray, target: int) -> int:
    """Worst-case rank under ties: 1 + |{j != target : s_j >= s_target}|; 0 if target is not a candidate."""
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(candidates, dtype=np.int64)
    where = np.flatnonzero(c == target)
    if where.size == 0:
        return 0
    t = where[0]
    others = np.delete(s, t)
    return 1 + int(np.sum(others >= s[t]))


def tracked_name(split: str, task: str, decoder: str, metric: str, owner: str = "") -> str:
    """The one name of a tracked evaluation metric, the same for every model and baseline:
    `test/direct/score/hr_at_10`. MLflow 3 accepts `/` (its charts group by the first part) but not `@`, so `@k`
    is written `_at_k`. `owner` prefixes a row of the comparison table (the parent run's headline metrics):
    `popularity/test/direct/score/hr_at_10`, any character MLflow refuses turned into `_`."""
    name = "/".join((split, task, decoder, metric.replace("@", TRACKED_AT)))
    return "/".join((re.sub(r"[^\w.-]+", "_", owner).strip("_"), name)) if owner else name


def tracked_metrics(metrics: Mapping[str, Any], split: str) -> dict[str, float]:
    """A metrics.json {task: {decoder: {metric: value}}} (a model's, or one baseline's part of the baselines'
    one) flattened to {tracked_name: value}; numeric leaves only (booleans and strings are not metrics)."""
    return {tracked_name(split, task, decoder, metric): float(value)
            for task, by_decoder in metrics.items() if isinstance(by_decoder, Mapping)
            for decoder, values in by_decoder.items() if isinstance(values, Mapping)
            for metric, value in values.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}


def task_metrics(metrics: Mapping[str, Any], split: str) -> dict[str, float]:
    """Each task's metrics under a name without the decoder, `test/sequential/hr_at_10`, from the task's first
    decoder in the canonical order (elmrec.config.DECODER_ORDER: score, beam, constrained, rerank): one row in
    MLflow's compare view for models and baselines alike, whose decoders differ (a baseline ranks every item by
    its score; ELMRec's sequential task decodes over the item trie)."""
    out = {}
    for task, by_decoder in metrics.items():
        if not isinstance(by_decoder, Mapping):
            continue
        decoders = sorted((d for d in by_decoder if isinstance(by_decoder[d], Mapping)),
                          key=lambda d: DECODER_ORDER.index(d) if d in DECODER_ORDER else len(DECODER_ORDER))
        first = by_decoder[decoders[0]] if decoders else {}
        for metric, value in first.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out["/".join((split, task, metric.replace("@", TRACKED_AT)))] = float(value)
    return out


def untracked_metrics(tracked: Mapping[str, float], split: str) -> dict[str, dict[str, dict[str, float]]]:
    """The inverse of `tracked_metrics`: a run's MLflow metrics back to {task: {decoder: {metric: value}}};
    names of another split or shape (losses, headline metrics) are left out."""
    nested: dict[str, dict[str, dict[str, float]]] = {}
    for name, value in tracked.items():
        parts = name.split("/")
        if len(parts) == 4 and parts[0] == split:
            _, task, decoder, metric = parts
            nested.setdefault(task, {}).setdefault(decoder, {})[metric.replace(TRACKED_AT, "@")] = value
    return nested


def _as_ranks(ranks: Sequence[int] | np.ndarray) -> np.ndarray:
    r = np.asarray(ranks, dtype=np.int64)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-d sequence, got shape {r.shape}")
    return r
