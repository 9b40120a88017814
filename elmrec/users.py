"""Which users a validation covers: every user, or a seeded random sample (both trainers: ELMRec's, the classic
baselines').

Not the first user IDs: P5 numbers items in the order users are listed, so the first users' test and validation
items sit next to their history's IDs far more often than the rest (32% of Beauty's first 2,000 users' test
items are max(history)+1, 4.4% of all), and a criterion measured on them rewards ID order.
"""

from __future__ import annotations

import numpy as np

STREAM_VALID_USERS = 3  # the sample's random stream: default_rng([seed, STREAM_VALID_USERS]), fixed for a run


def validation_users(users: np.ndarray, wanted: int | None, seed: int) -> np.ndarray:
    """`users` ascending when `wanted` is None or covers them all, else a seeded sample of `wanted` of them."""
    users = np.asarray(users)
    if wanted is None or wanted >= len(users):
        return np.sort(users)
    rng = np.random.default_rng([seed, STREAM_VALID_USERS])
    return np.sort(rng.choice(users, size=wanted, replace=False))
