"""Shared fixtures: tiny synthetic datasets written in P5 layout, and the real data mirror (../shared)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from elmrec.config import Settings

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA_MIRROR = SHARED / "data"
T5_SMALL = SHARED / "t5-small"


def write_p5(folder: Path, histories: dict[int, list[int]], n_items: int | None = None) -> Path:
    """Write sequential.txt + datamaps.json for {user: items}; reviewer IDs U<n>, ASINs A<n>."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [" ".join(str(x) for x in [user, *items]) for user, items in histories.items()]
    (folder / "sequential.txt").write_text("\n".join(lines) + "\n")
    n_items = n_items or max(max(items) for items in histories.values())
    maps = {"id2user": {str(u): f"U{u}" for u in sorted(histories)},
            "id2item": {str(i): f"A{i}" for i in range(1, n_items + 1)}}
    (folder / "datamaps.json").write_text(json.dumps(maps))
    return folder


TINY_T5 = {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 4, "num_layers": 1, "num_decoder_layers": 1}


def tiny_pipeline(raw: Path, workdir: Path | None = None) -> dict:
    """Overrides that run every stage in seconds: a local P5 folder, a one-layer T5, one epoch, 4 users."""
    overrides = {"data": {"dataset": "tiny", "source": "local", "path": str(raw)},
                 "model": {"model_mirror": str(T5_SMALL.parent), "reduced": TINY_T5},
                 "train": {"max_epochs": 1, "batch_size": 4, "valid_users": 4},
                 "eval": {"max_users": 4, "sequential_beams": 4, "direct_beams": 4, "top_n": 4, "rerank_n": 2}}
    return {**overrides, "workdir": str(workdir)} if workdir else overrides


@pytest.fixture
def tiny_histories() -> dict[int, list[int]]:
    """4 users over 8 items; user 4 has the shortest usable history (3 items)."""
    return {1: [1, 2, 3, 4, 5], 2: [2, 6, 7, 1], 3: [8, 3, 2, 6, 4, 1], 4: [5, 7, 8]}


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads; on a loaded CPU the threads stall waiting for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def real_mirror() -> Path:
    if not (DATA_MIRROR / "beauty" / "sequential.txt").is_file():
        pytest.skip(f"real data mirror not found at {DATA_MIRROR}")
    return DATA_MIRROR


RUN_HISTORIES = {1: [1, 2, 3, 4, 5], 2: [2, 6, 7, 1], 3: [8, 3, 2, 6, 4, 1], 4: [5, 7, 8]}  # over items 1..10


def trained_run(root: Path, recommender: str = "elmrec") -> Settings:
    """Settings of a finished training (one epoch, the real train stage) of `recommender` on RUN_HISTORIES over
    10 items, after the real data stages, under `root`: few enough items that a history item would often top a
    ranking if it were not excluded."""
    from elmrec.config import deep_merge, settings_for
    from elmrec.data.download import download
    from elmrec.data.preprocess import preprocess
    from elmrec.graph import build_graph
    from elmrec.paths import WorkPaths
    from elmrec.recommenders import train_recommender

    raw = write_p5(root / "raw", RUN_HISTORIES, n_items=10)
    overrides = deep_merge(tiny_pipeline(raw, root / "work"), {
        "recommender": recommender, "data": {"n_negatives": 3}, "train": {"device": "cpu"},
        "sasrec": {"max_epochs": 1, "dim": 8, "max_len": 4}, "lightgcn": {"max_epochs": 1, "dim": 8}})
    settings = settings_for("demo", overrides)
    paths = WorkPaths.from_settings(settings)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if not paths.graph.adjacency.is_file():
            download(settings.data, paths.raw, None)
            preprocess(settings.data, settings.seed, paths.raw, paths.data)
            build_graph(paths.data, paths.graph)
        train_recommender(settings, paths)
    finally:
        torch.set_num_threads(before)
    return settings


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A finished ELMRec training on 4 users x 10 items (trained_run), shared by the tests that use a model."""
    if not (T5_SMALL / "spiece.model").is_file():
        pytest.skip(f"needs the t5-small tokenizer at {T5_SMALL}")
    return trained_run(tmp_path_factory.mktemp("tiny-run"))
