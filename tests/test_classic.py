"""The classic baselines' harness (elmrec.classic): reproducible runs, exact resume, a finished run kept safe
while another trains, the evaluation layout shared with ELMRec, and the training inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from safetensors.torch import load_file

from elmrec import classic
from elmrec.classic import EpochRecord, evaluate_classic, section, train_classic
from elmrec.classic_batches import EdgeBatches, SequenceBatches, draw_non_items, interaction_keys
from elmrec.config import Settings, Task, settings_for
from elmrec.data import schemas
from elmrec.data.download import download
from elmrec.data.preprocess import preprocess
from elmrec.evaluate import PREDICTIONS
from elmrec.graph import build_graph, load_adjacency
from elmrec.paths import WorkPaths
from elmrec.users import validation_users
from tests.conftest import write_p5

pytestmark = pytest.mark.usefixtures("one_thread")

# 12 users over 20 items, histories of 5 to 9 items drawn with a fixed seed.
_RNG = np.random.default_rng(7)
HISTORIES = {u: (_RNG.permutation(20)[: 5 + u % 5] + 1).tolist() for u in range(1, 13)}
TINY_SASREC = {"dim": 16, "n_blocks": 1, "dropout": 0.2, "max_len": 6, "batch_size": 4, "lr": 1e-2}
TINY_LIGHTGCN = {"dim": 8, "n_layers": 2, "batch_size": 16, "lr": 1e-2}


def classic_settings(workdir: Path, raw: Path, recommender: str, n_negatives: int = 10, **section) -> Settings:
    """Settings of a tiny classic run on a local P5 folder: CPU, 10 negatives, top 5."""
    return settings_for("paper", {"workdir": str(workdir), "recommender": recommender,
                                  "data": {"dataset": "tiny", "source": "local", "path": str(raw),
                                           "n_negatives": n_negatives},
                                  "train": {"device": "cpu"}, "eval": {"top_n": 5}, recommender: section})


def prepare(settings: Settings, histories: dict[int, list[int]]) -> WorkPaths:
    """Write the P5 files and run download, preprocess and graph: what training reads."""
    write_p5(Path(settings.data.path), histories)
    paths = WorkPaths.from_settings(settings)
    download(settings.data, paths.raw, None)
    preprocess(settings.data, settings.seed, paths.raw, paths.data)
    build_graph(paths.data, paths.graph)
    return paths


def curve(history: list[EpochRecord]) -> list[tuple[float, float, float]]:
    return [(r.train_loss, r.valid_loss, r.valid_ndcg) for r in history]


@pytest.fixture(params=["sasrec", "lightgcn"])
def tiny(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Settings, WorkPaths]:
    section = TINY_SASREC if request.param == "sasrec" else TINY_LIGHTGCN
    settings = classic_settings(tmp_path / "work", tmp_path / "raw", request.param, max_epochs=4, patience=4,
                                **section)
    return settings, prepare(settings, HISTORIES)


def test_same_seed_gives_the_same_curve_and_metrics(tiny: tuple[Settings, WorkPaths], tmp_path: Path) -> None:
    settings, paths = tiny
    first = train_classic(settings, paths, resume=False)
    first_metrics = evaluate_classic(settings, paths)
    first_json = (paths.run(settings).evaluation(settings) / "metrics.json").read_bytes()
    second = train_classic(settings, paths, resume=False)  # afresh, same folder
    assert curve(second.history) == curve(first.history)
    assert evaluate_classic(settings, paths) == first_metrics
    assert (paths.run(settings).evaluation(settings) / "metrics.json").read_bytes() == first_json
    assert len(first.history) == 4 and all(np.isfinite(curve(first.history)).ravel())


def test_validation_covers_the_seeded_sample_of_users_elmrec_validates_on(
        tiny: tuple[Settings, WorkPaths], monkeypatch: pytest.MonkeyPatch) -> None:
    settings, paths = tiny
    settings = settings.model_copy(update={settings.recommender: section(settings).model_copy(
        update={"valid_users": 5, "max_epochs": 1})})
    validated: list[list[int]] = []
    real = classic.validate

    def spy(model, valid, n_items, device):  # type: ignore[no-untyped-def]
        validated.append(sorted(int(u) for u in valid[Task.DIRECT].inputs["user"]))
        return real(model, valid, n_items, device)

    monkeypatch.setattr(classic, "validate", spy)
    train_classic(settings, paths, resume=False)
    elmrec_sample = validation_users(np.arange(1, 13), 5, settings.seed).tolist()
    assert validated == [elmrec_sample] and elmrec_sample != [1, 2, 3, 4, 5]


def test_resume_equals_uninterrupted(tiny: tuple[Settings, WorkPaths], tmp_path: Path) -> None:
    settings, paths = tiny
    uninterrupted = train_classic(settings, paths, resume=False)
    reference = load_file(str(uninterrupted.run.checkpoint / "model.safetensors"))
    reference_last = load_file(str(uninterrupted.run.last / "model.safetensors"))
    other = settings.model_copy(update={"workdir": tmp_path / "other"})
    other_paths = prepare(other, HISTORIES)

    def crash_after_epoch_2(record: EpochRecord) -> None:
        if record.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classic(other, other_paths, on_epoch=crash_after_epoch_2)
    assert not other_paths.run(other).checkpoint.exists()  # nothing finished yet: no checkpoint to evaluate
    seen: list[int] = []
    resumed = train_classic(other, other_paths, on_epoch=lambda record: seen.append(record.epoch))
    assert seen == [3, 4]
    assert curve(resumed.history) == curve(uninterrupted.history)
    assert resumed.best_epoch == uninterrupted.best_epoch
    for name, tensor in load_file(str(resumed.run.checkpoint / "model.safetensors")).items():
        assert tensor.equal(reference[name]), name
    for name, tensor in load_file(str(resumed.run.last / "model.safetensors")).items():
        assert tensor.equal(reference_last[name]), name
    history = json.loads(resumed.run.history.read_text())
    assert history["finished"] and [e["epoch"] for e in history["epochs"]] == [1, 2, 3, 4]
    assert not resumed.run.attempt.root.exists()


def test_finished_run_survives_an_interrupted_new_one(tiny: tuple[Settings, WorkPaths]) -> None:
    settings, paths = tiny
    finished = train_classic(settings, paths)
    run = finished.run
    before = {p.relative_to(run.root): p.read_bytes() for p in run.root.rglob("*") if p.is_file()}
    def crash(record: EpochRecord) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_classic(settings, paths, resume=False, on_epoch=crash)
    after = {p.relative_to(run.root): p.read_bytes() for p in run.root.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if k.parts[0] != "attempt"} == before  # the finished outputs, untouched
    assert run.attempt.last.is_dir()
    assert evaluate_classic(settings, paths)["direct"]["score"]["n_users"] == 12  # the finished model, still in use


def test_history_and_evaluation_layout(tiny: tuple[Settings, WorkPaths]) -> None:
    settings, paths = tiny
    result = train_classic(settings, paths)
    history = json.loads(result.run.history.read_text())
    assert {"epochs", "best_epoch", "best_valid_loss", "finished", "stopped_early", "device", "max_epochs",
            "patience", "samples_per_s", "pretrained"} <= set(history)
    assert history["device"] == "cpu (fp32)" and history["finished"] and history["recommender"] == settings.recommender
    epoch = history["epochs"][0]
    assert set(epoch["valid_metrics"]) == {"sequential", "direct"} and epoch["train_loss"] > 0
    assert history["best_valid_ndcg@10"] == max(e["valid_ndcg"] for e in history["epochs"])

    metrics = evaluate_classic(settings, paths)
    folder = paths.run(settings).evaluation(settings)
    assert json.loads((folder / "metrics.json").read_text()) == metrics
    assert sorted(metrics) == ["direct", "sequential"] and all(list(m) == ["score"] for m in metrics.values())
    for task in metrics.values():
        assert task["score"]["n_users"] == 12 and task["score"]["invalid_rate"] == 0.0
    histories = dict(zip(*schemas.read(paths.data.histories, schemas.HISTORIES).to_dict(as_series=False).values()))
    candidates = schemas.read(paths.data.candidates, schemas.CANDIDATES).filter(pl.col("split") == "test")
    direct = pl.read_parquet(folder / "predictions_direct_score.parquet")
    sequential = pl.read_parquet(folder / "predictions_sequential_score.parquet")
    assert direct.schema == sequential.schema == PREDICTIONS
    for user, _, target, cands in candidates.iter_rows():  # direct: a permutation of the stored candidates
        ranked = direct.filter(pl.col("user") == user).sort("rank")
        assert sorted(ranked["item"]) == sorted(cands) and target in cands
        assert ranked["score"].is_sorted(descending=True)
    for user, items in histories.items():  # sequential: 5 items, none seen before the test item
        ranked = sequential.filter(pl.col("user") == user)["item"].to_list()
        assert len(ranked) == 5 and not set(ranked) & set(items[:-1])


def test_sequence_batches_hold_training_items_only() -> None:
    histories = pl.DataFrame({"user": [1, 2, 3], "items": [[1, 2, 3, 4, 5], [6, 7, 8], [9, 8, 7, 6, 5, 4]]},
                             schema=schemas.HISTORIES)
    batches = SequenceBatches(histories, 9, max_len=3, batch_size=8, negatives=True)
    # user 1: train 1 2 3 -> inputs (1, 2), targets (2, 3); user 2: one train item, no pair; user 3: 9 8 7 6,
    # the last 3 inputs (9, 8, 7) -> targets (8, 7, 6)
    assert batches.users.tolist() == [1, 3] and batches.n_samples == 5
    assert batches.sequence.tolist() == [[0, 1, 2], [9, 8, 7]]
    assert batches.target.tolist() == [[0, 2, 3], [8, 7, 6]]
    (batch,) = batches.epoch(np.random.default_rng(0))
    order = batch["sequence"][:, -1].argsort()  # row of user 1 first
    assert batch["target"][order].tolist() == [[0, 2, 3], [8, 7, 6]]
    for row, user in zip(batch["negative"][order], (1, 3)):
        assert not set(row.tolist()) & set(histories["items"][user - 1].to_list()[:-2])


def test_edge_batches_cover_every_training_edge_once(tmp_path: Path) -> None:
    settings = classic_settings(tmp_path / "work", tmp_path / "raw", "lightgcn")
    paths = prepare(settings, HISTORIES)
    assert json.loads(paths.data.stats.read_text())["n_items"] == 20
    batches = EdgeBatches(load_adjacency(paths.graph), 12, 20, batch_size=7)
    epoch = batches.epoch(np.random.default_rng(3))
    edges = sorted((int(u), int(i)) for b in epoch for u, i in zip(b["user"], b["positive"]))
    assert edges == sorted((u, i) for u, items in HISTORIES.items() for i in items[:-2])
    for b in epoch:
        assert all(n not in HISTORIES[u][:-2] for u, n in zip(b["user"].tolist(), b["negative"].tolist()))


def test_draw_non_items_is_uniform_over_the_complement() -> None:
    seen = interaction_keys(np.array([1, 1, 1, 2]), np.array([1, 2, 3, 4]), n_items=4)
    draws = draw_non_items(np.random.default_rng(0), np.array([1] * 4000 + [2] * 3000), seen, n_items=4)
    assert set(draws[:4000].tolist()) == {4}
    assert set(draws[4000:].tolist()) == {1, 2, 3}
    assert np.bincount(draws[4000:], minlength=5)[1:4] == pytest.approx([1000, 1000, 1000], abs=100)
    with pytest.raises(ValueError, match="no negative"):
        draw_non_items(np.random.default_rng(0), np.array([1]), interaction_keys(np.ones(4, int),
                                                                                  np.arange(1, 5), 4), 4)


@pytest.mark.slow
def test_benchmark_reports_time_memory_and_metrics(tmp_path: Path, real_mirror: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "classic_baselines.py"
    done = subprocess.run([sys.executable, str(script), "--mirror", str(real_mirror), "--workdir", str(tmp_path),
                           "--model", "lightgcn", "--threads", "1", "--set", "data.max_users=100",
                           "--set", "lightgcn.max_epochs=2", "--json", str(tmp_path / "figures.json")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads((tmp_path / "figures.json").read_text())
    measured = figures["models"]["lightgcn"]
    assert list(figures["models"]) == ["lightgcn"] and measured["epochs"] == 2 and measured["peak_rss_mib"] > 100
    assert 0 < measured["train_s"] < measured["wall_s"] and measured["device"] == "cpu (fp32)"
    assert set(measured["metrics"]) == set(figures["popularity"]) == {"direct", "sequential"}
    assert "popularity" in done.stdout and "lightgcn" in done.stdout
