"""Text prompts for the sequential and direct tasks: templates, training samplers and fixed evaluation prompts.

Users and items appear in a prompt as `user_<id>` and `item_<id>`; lists of items are separated by spaces.
The target of every prompt is the bare item ID (`"8668"`), which the decoder generates token by token.

Training samplers build one whole epoch at once (one sample per eligible user) from `histories.parquet`
(`user`, `items` = the full chronological history, the last two items being validation and test):

- sequential: a random contiguous segment `h[start:end]` (start in [0, n-4], end in [start+1, n-3]), its last
  `max_history` items, target `h[end]`; so the validation and test positions are never touched.
- direct: one positive from the training part `h[:n-2]` plus `n_negatives` distinct items the user never
  interacted with (whole history), shuffled together; the target is the positive.

Evaluation prompts always use the bare template, so they do not depend on a random choice.
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from elmrec.config import Task
from elmrec.data.negatives import flat_histories, sample_negatives
from elmrec.wholeword import Prompt

log = logging.getLogger(__name__)

# `{user}` becomes `user_<id>`, `{items}` becomes `item_<a> item_<b> ...`. The last template of each family is
# the bare form used for evaluation. Some put the user ID first, some put an ID right before punctuation, so
# the whole-word mapping sees IDs merged with ',', '.', ':', '?' by the tokenizer.
SEQUENTIAL_TEMPLATES: tuple[str, ...] = (
    "{user} has bought {items}. Predict the next item the user will buy.",
    "Here is the purchase history of {user}: {items}. What comes next?",
    "Given the items {items} bought by {user}, which item will the user buy next?",
    "What will {user} purchase after {items}?",
    "{user} interacted with {items} in this order. Recommend the next item.",
    "Purchase history of {user} in chronological order: {items}. Guess the next item to buy.",
    "Predict the next purchase of {user}, whose history is {items}",
    "{user} {items}",
)
DIRECT_TEMPLATES: tuple[str, ...] = (
    "Pick the item {user} is most likely to buy from these candidates: {items}.",
    "{user} is choosing among {items}. Which one should we recommend?",
    "Which of {items} should be recommended to {user}?",
    "Choose the best item for {user} from the following list: {items}",
    "{user} {items}",
)
BARE_SEQUENTIAL = len(SEQUENTIAL_TEMPLATES) - 1  # index of the bare template
BARE_DIRECT = len(DIRECT_TEMPLATES) - 1


def render(template: str, user: int, items: list[int]) -> str:
    """Fill a template with `user_<user>` and the space-separated `item_<id>` list."""
    return template.format(user=f"user_{user}", items=" ".join([f"item_{i}" for i in items]))


def _make_prompts(
    task: Task, templates: list[str], users: np.ndarray, item_lists: list[list[int]], targets: np.ndarray
) -> list[Prompt]:
    """Render many prompts at once; item names come from one lookup table (faster than formatting each ID)."""
    n_names = 1 + max((max(items) for items in item_lists if items), default=0)
    names = [f"item_{i}" for i in range(n_names)]
    return [
        Prompt(user=u, task=task, text=template.format(user=f"user_{u}", items=" ".join([names[i] for i in items])),
               target=str(t))
        for template, u, items, t in zip(templates, users.tolist(), item_lists, targets.tolist())
    ]


def _segments(flat: np.ndarray, begin: np.ndarray, end: np.ndarray) -> list[list[int]]:
    """The item lists flat[begin[k]:end[k]] for every k."""
    items = flat.tolist()
    return [items[b:e] for b, e in zip(begin.tolist(), end.tolist())]


# ----------------------------------------------------------------------------------------------------------
# Training samplers


def sequential_epoch(histories: pl.DataFrame, rng: np.random.Generator, max_history: int = 20) -> list[Prompt]:
    """One sequential prompt per user with at least 4 items, in a random one of the 8 templates.

    start ~ U[0, n-4], end ~ U[start+1, n-3]; history = h[start:end][-max_history:], target = h[end].
    """
    users, lengths, starts, flat = flat_histories(histories)
    keep = lengths >= 4
    users, lengths, starts = users[keep], lengths[keep], starts[keep]
    seg_start = rng.integers(0, lengths - 3)  # in [0, n-4]
    seg_end = rng.integers(seg_start + 1, lengths - 2)  # in [start+1, n-3]
    seg_start = np.maximum(seg_start, seg_end - max_history)  # keep the last max_history items
    templates = [SEQUENTIAL_TEMPLATES[t] for t in rng.integers(0, len(SEQUENTIAL_TEMPLATES), size=len(users))]
    history = _segments(flat, starts + seg_start, starts + seg_end)
    prompts = _make_prompts(Task.SEQUENTIAL, templates, users, history, flat[starts + seg_end])
    log.debug("sequential epoch: %d prompts from %d users", len(prompts), len(keep))
    return prompts


def direct_epoch(
    histories: pl.DataFrame, n_items: int, rng: np.random.Generator, n_negatives: int = 99
) -> list[Prompt]:
    """One direct prompt per user with at least one training item, in a random one of the 5 templates.

    Candidates = one positive from h[:n-2] plus n_negatives never-interacted items, shuffled; target = positive.
    """
    users, lengths, starts, flat = flat_histories(histories)
    keep = lengths >= 3
    histories = histories.filter(pl.Series(keep))
    users, lengths, starts = users[keep], lengths[keep], starts[keep]
    positives = flat[starts + rng.integers(0, lengths - 2)]
    negatives = sample_negatives(histories, n_items, rng, n_negatives)
    candidates = rng.permuted(np.column_stack([positives, negatives]), axis=1)  # (U, 1 + n_negatives)
    templates = [DIRECT_TEMPLATES[t] for t in rng.integers(0, len(DIRECT_TEMPLATES), size=len(users))]
    prompts = _make_prompts(Task.DIRECT, templates, users, candidates.tolist(), positives)
    log.debug("direct epoch: %d prompts from %d users", len(prompts), len(keep))
    return prompts


# ----------------------------------------------------------------------------------------------------------
# Fixed evaluation prompts (bare template)


def sequential_eval(histories: pl.DataFrame, split: str, max_history: int = 20) -> list[Prompt]:
    """Bare sequential prompts: valid: h[:n-2][-max_history:] -> h[n-2]; test: h[:n-1][-max_history:] -> h[n-1].

    Users with fewer than 3 items (no training item) are skipped.
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', not {split!r}")
    users, lengths, starts, flat = flat_histories(histories)
    keep = lengths >= 3
    end = starts[keep] + lengths[keep] - (2 if split == "valid" else 1)  # flat index of the target
    begin = np.maximum(starts[keep], end - max_history)
    templates = [SEQUENTIAL_TEMPLATES[BARE_SEQUENTIAL]] * len(end)
    return _make_prompts(Task.SEQUENTIAL, templates, users[keep], _segments(flat, begin, end), flat[end])


def direct_eval(candidates: pl.DataFrame, split: str) -> list[Prompt]:
    """Bare direct prompts over the stored candidate lists of one split, in stored order; target = stored target."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', not {split!r}")
    rows = candidates.filter(pl.col("split") == split)
    templates = [DIRECT_TEMPLATES[BARE_DIRECT]] * len(rows)
    users = rows["user"].to_numpy().astype(np.int64)
    targets = rows["target"].to_numpy().astype(np.int64)
    return _make_prompts(Task.DIRECT, templates, users, rows["candidates"].to_list(), targets)
