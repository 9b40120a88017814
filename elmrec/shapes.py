"""Which settings shape which output: the one table behind folder names, stage fingerprints and resume.

Each stage writes one output (a folder); what it holds depends on the stage's own settings (this table) and
on the outputs upstream of it. So:

- an output folder is keyed by `key(settings, stage)`: the stage's own settings plus the keys of the stages
  upstream, hashed. Two runs whose settings differ in anything that shapes an output never share its folder
  (`n_negatives=49` and the default keep 50 and 100 candidates side by side; a `local` source and `p5` under
  one dataset name keep separate raw and data folders);
- a stage's fingerprint (elmrec.stages) hashes the same own settings plus the contents of its input files and
  its code, and is recorded beside its output, so a stage is up to date only when the record matches;
- training resumes from `last/` only when `key(settings, "train")` is the one it was written under.

Settings outside this table (how training runs: RUNTIME_ONLY; batch sizes of evaluation, mirrors of verified files,
the work dir, the tracking URI) never change what a stage writes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from elmrec.config import Settings

# Training settings that say how a training runs, not what it computes (up to float rounding): a training may
# resume on another device, with another attention kernel, compiled or not, in another number of processes (each
# takes a share of every batch: the same update), with another heap policy.
RUNTIME_ONLY = {"device", "attention", "compile", "malloc", "nproc", "devices"}

# Each stage, and the stages whose outputs it reads.
UPSTREAM: dict[str, tuple[str, ...]] = {
    "download": (),
    "preprocess": ("download",),
    "graph": ("preprocess",),
    "train": ("graph",),
    "evaluate": ("train",),
    "baselines": ("preprocess",),
}


def digest(values: object, length: int = 8) -> str:
    """A short stable hash of JSON-able values (settings), for folder names and cache keys."""
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def source_identity(settings: Settings) -> dict[str, Any]:
    """What names a dataset's raw files: the source, the dataset, and where the files come from."""
    data = settings.data
    identity: dict[str, Any] = {"source": data.source, "dataset": data.dataset}
    if data.source == "local":
        identity["path"] = str(Path(data.path).expanduser().resolve()) if data.path else None
    else:
        identity["mirror"] = settings.resolved_mirror()  # another base location may serve other files
    if data.source == "amazon2014":
        identity["category"] = data.category
    return identity


def own_settings(settings: Settings, stage: str) -> dict[str, Any]:
    """The settings of `stage` itself that shape its output (upstream ones reach it through its inputs)."""
    data = settings.data
    if stage == "download":
        return source_identity(settings)
    if stage == "preprocess":
        return {"seed": settings.seed,
                **data.model_dump(mode="json", include={"kcore", "id_scheme", "n_negatives", "negatives",
                                                        "max_users"})}
    if stage == "graph":
        return {"graph_edges": data.graph_edges}
    if stage == "train":
        section = {"elmrec": "model", "sasrec": "sasrec", "lightgcn": "lightgcn"}[settings.recommender]
        shaping = {"recommender": settings.recommender, "seed": settings.seed,
                   section: getattr(settings, section).model_dump(mode="json", exclude={"model_mirror"})}
        if settings.recommender == "elmrec":
            shaping["train"] = settings.train.model_dump(mode="json", exclude=RUNTIME_ONLY)  # resumable elsewhere
        return shaping
    if stage == "evaluate":
        return {"seed": settings.seed, "eval": settings.eval.model_dump(mode="json", exclude={"split", "batch_size"})}
    if stage == "baselines":
        return {"seed": settings.seed, "top_n": settings.eval.top_n, "max_users": settings.eval.max_users,
                "max_history": settings.train.max_history}
    raise ValueError(f"unknown stage {stage!r}; known: {list(UPSTREAM)}")


def key(settings: Settings, stage: str, length: int = 8) -> str:
    """A short hash of everything in settings that shapes `stage`'s output, its upstream stages' included."""
    return digest({"stage": stage, "own": own_settings(settings, stage),
                   "upstream": [key(settings, up, length=16) for up in UPSTREAM[stage]]}, length)


def data_label(base: Settings, other: Settings) -> str:
    """What sets `other`'s data apart from `base`'s ("" when nothing does), e.g. `id_scheme=shuffled`."""
    own, theirs = base.data.model_dump(mode="json"), other.data.model_dump(mode="json")
    return ", ".join(f"{name}={theirs[name]}" for name in theirs if theirs[name] != own[name])


def data_settings(base: Settings, others: Iterable[Settings]) -> dict[str, Settings]:
    """One settings per distinct data + graph output among `base` and `others` (the first to need it), labelled
    by `data_label` ("" = base's own): what a flow runs the data stages and baselines for."""
    found = {key(base, "graph"): ("", base)}
    for settings in others:
        found.setdefault(key(settings, "graph"), (data_label(base, settings), settings))
    return dict(found.values())
