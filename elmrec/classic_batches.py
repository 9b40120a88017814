"""Inputs of the classic recommenders: training batches (one epoch at a time, a pure function of the rng) and
evaluation inputs. NumPy only; elmrec.classic moves them to the device.

- SASRec (`SequenceBatches`): each user's training items t = items[:-2] (validation and test never enter);
  input t[:-1], target t[1:], the last `max_len` of each, left-padded with 0; batches of users of similar
  lengths in a seeded order (wholeword.bucketed_batches, as ELMRec's), each trimmed to its longest sequence.
  With `negatives`, one negative per position (the BCE loss).
- LightGCN (`EdgeBatches`): every user–item edge of Â once per epoch, in a seeded order, one negative each.
- Negatives are drawn uniformly from the items the user has no training interaction with (`draw_non_items`).
- Evaluation (`eval_inputs`): user IDs and each user's items before the target, the last `width`, left-padded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import scipy.sparse as sp

from elmrec.data.negatives import flat_histories
from elmrec.wholeword import bucketed_batches

Batch = dict[str, np.ndarray]


def interaction_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted unique keys user * (n_items + 1) + item: membership of (user, item) by binary search."""
    return np.unique(users.astype(np.int64) * (n_items + 1) + items)


def draw_non_items(rng: np.random.Generator, users: np.ndarray, seen: np.ndarray, n_items: int) -> np.ndarray:
    """One item per entry of `users` (any shape), uniform over the items that user has no key in `seen` for."""
    users = users.astype(np.int64)
    draws = rng.integers(1, n_items + 1, size=users.shape)
    if not len(seen):
        return draws
    redraw = np.ones(users.shape, dtype=bool)
    for _ in range(1000):  # each round keeps the draws that miss the user's items; a few rounds suffice
        keys = users * (n_items + 1) + draws
        redraw &= seen[np.minimum(np.searchsorted(seen, keys), len(seen) - 1)] == keys
        if not redraw.any():
            return draws
        draws[redraw] = rng.integers(1, n_items + 1, size=int(redraw.sum()))
    raise ValueError(f"some users interacted with (almost) all {n_items} items: no negative to draw")


def left_padded(rows: Sequence[np.ndarray], width: int) -> np.ndarray:
    """(R, width) int64: the last `width` values of each row, right-aligned, 0 before them."""
    out = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        tail = np.asarray(row, dtype=np.int64)[len(row) - min(len(row), width):]
        out[r, width - len(tail):] = tail
    return out


class SequenceBatches:
    """SASRec's training batches: next-item targets at every position of each user's training sequence."""

    def __init__(self, histories: pl.DataFrame, n_items: int, max_len: int, batch_size: int, negatives: bool) -> None:
        users, lengths, starts, flat = flat_histories(histories)
        train = [flat[s: s + n - 2] for s, n in zip(starts, lengths)]  # items[:-2]
        keep = np.array([len(t) >= 2 for t in train], dtype=bool)  # at least one (input, target) pair
        self.users = users[keep]
        window = left_padded([t for t, k in zip(train, keep) if k], max_len + 1)  # (U, max_len + 1)
        self.sequence = window[:, :-1]  # (U, max_len)
        self.target = np.where(self.sequence > 0, window[:, 1:], 0)  # (U, max_len): no target without an input
        self.n_items, self.batch_size, self.negatives = n_items, batch_size, negatives
        owners = np.repeat(users, np.maximum(lengths - 2, 0))
        self.seen = interaction_keys(owners, np.concatenate(train) if train else owners, n_items)
        self.n_samples = int((self.target > 0).sum())  # positions trained per epoch

    def epoch(self, rng: np.random.Generator) -> list[Batch]:
        """Batches of users of similar lengths (little padding), in a seeded order."""
        batches = []
        for rows in bucketed_batches((self.sequence > 0).sum(1), self.batch_size, rng):
            sequence = self.sequence[rows]  # (B, max_len)
            width = int((sequence > 0).sum(1).max())  # trim the all-padding columns on the left
            batch = {"sequence": sequence[:, -width:], "target": self.target[rows, -width:]}
            if self.negatives:
                owners = np.broadcast_to(self.users[rows, None], batch["target"].shape)
                batch["negative"] = draw_non_items(rng, owners, self.seen, self.n_items)  # (B, width)
            batches.append(batch)
        return batches


class EdgeBatches:
    """LightGCN's BPR triples: every user–item edge of Â once, with one negative each."""

    def __init__(self, adjacency: sp.spmatrix, n_users: int, n_items: int, batch_size: int) -> None:
        block = sp.coo_matrix(sp.csr_matrix(adjacency)[1: n_users + 1, n_users + 1:])  # users x items, CSR order
        self.user = block.row.astype(np.int64) + 1  # (E,)
        self.item = block.col.astype(np.int64) + 1  # (E,)
        self.seen = interaction_keys(self.user, self.item, n_items)
        self.n_items, self.batch_size = n_items, batch_size
        self.n_samples = len(self.user)

    def epoch(self, rng: np.random.Generator) -> list[Batch]:
        order = rng.permutation(self.n_samples)
        negative = draw_non_items(rng, self.user[order], self.seen, self.n_items)  # (E,)
        return [{"user": self.user[order[b: b + self.batch_size]], "positive": self.item[order[b: b + self.batch_size]],
                 "negative": negative[b: b + self.batch_size]} for b in range(0, self.n_samples, self.batch_size)]


def eval_inputs(users: Sequence[int], before_target: Sequence[Sequence[int]], width: int) -> Batch:
    """user (U,) and sequence (U, width): each user's items before the target, the last `width`, left-padded."""
    return {"user": np.asarray(users, dtype=np.int64), "sequence": left_padded([np.asarray(h) for h in before_target],
                                                                              width)}
