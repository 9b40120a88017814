"""Progress bars that suit both a terminal and a log file (a Prefect worker's output is not a TTY)."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm

LOG_INTERVAL_S = 30.0  # in a log file: one progress line every 30 s, not one per update


def progress_bar(*args: Any, **kwargs: Any) -> tqdm:
    """`tqdm(...)`, redrawn live on a terminal and printed every LOG_INTERVAL_S seconds elsewhere."""
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("ascii", True)
    return tqdm(*args, **kwargs)
