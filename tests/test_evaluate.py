"""The evaluate stage end to end on tiny synthetic data: a tiny random ELMRec checkpoint, the real t5-small
tokenizer (through the model mirror), hand-computed popularity baselines."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from pydantic import ValidationError

from elmrec.config import EvalSettings, Settings, settings_for
from elmrec.data import schemas
from elmrec.data.download import download
from elmrec.data.preprocess import preprocess
from elmrec.evaluate import PREDICTIONS, evaluate_baselines, evaluate_model
from elmrec.graph import build_graph, load_adjacency
from elmrec.model import ELMRec
from elmrec.paths import WorkPaths
from elmrec.pretrained import load_t5
from tasks import evaluate as tasks_evaluate
from tests.conftest import SHARED, T5_SMALL, write_p5

pytestmark = [
    pytest.mark.skipif(not (T5_SMALL / "spiece.model").is_file(), reason="needs ../shared/t5-small"),
    pytest.mark.usefixtures("one_thread"),
]

HISTORIES = {1: [1, 2, 3, 4, 5], 2: [2, 6, 7, 1], 3: [8, 3, 2, 6, 4, 1], 4: [5, 7, 8]}
TINY = {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 2, "num_layers": 1, "num_decoder_layers": 1}


EXACT = {"direct_decoders": ["score"], "sequential_decoders": ["constrained"]}  # the paper preset adds beam, rerank


def make_settings(workdir: Path, raw: Path, n_negatives: int = 99, **eval_overrides) -> Settings:
    return settings_for("paper", {
        "workdir": str(workdir),
        "data": {"dataset": "tiny", "source": "local", "path": str(raw), "n_negatives": n_negatives},
        "model": {"model_name": "t5-small", "model_mirror": str(SHARED), "reduced": TINY, "alpha": 2.0,
                  "sigma": 0.5, "n_layers": 2, "prompt_num": 2},
        "train": {"device": "cpu"},
        "eval": {"direct_beams": 10, "sequential_beams": 10, "rerank_n": 2, "batch_size": 3, **EXACT,
                 **eval_overrides},
    })  # fmt: skip


def prepare_data(settings: Settings) -> WorkPaths:
    paths = WorkPaths.from_settings(settings)
    download(settings.data, paths.raw, None)
    preprocess(settings.data, settings.seed, paths.raw, paths.data)
    build_graph(paths.data, paths.graph)
    return paths


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, WorkPaths]:
    """Data stages on 4 users x 150 items, and a tiny random ELMRec saved where the train stage would put it."""
    root = tmp_path_factory.mktemp("evaluate")
    settings = make_settings(root / "work", write_p5(root / "raw", HISTORIES, n_items=150))
    paths = prepare_data(settings)
    torch.manual_seed(0)
    t5, _ = load_t5(settings.model)
    model = ELMRec(t5, settings.model, 4, 150, load_adjacency(paths.graph), settings.train.tasks)
    model.save(paths.run(settings).checkpoint)
    paths.run(settings).history.write_text(json.dumps({"finished": True, "epochs": []}))  # as a finished training
    return settings, paths


def with_eval(settings: Settings, **values) -> Settings:
    return settings.model_copy(update={"eval": settings.eval.model_copy(update=values)})


def before_target(split: str) -> dict[int, set[int]]:
    drop = 2 if split == "valid" else 1
    return {u: set(items[: len(items) - drop]) for u, items in HISTORIES.items()}


def read_predictions(folder: Path, name: str) -> pl.DataFrame:
    frame = pl.read_parquet(folder / f"predictions_{name}.parquet")
    assert frame.schema == PREDICTIONS
    return frame


def stored_candidates(paths: WorkPaths, split: str) -> dict[int, list[int]]:
    frame = pl.read_parquet(paths.data.candidates).filter(pl.col("split") == split)
    return dict(zip(frame["user"].to_list(), frame["candidates"].to_list()))


def test_model_metrics_and_predictions_on_test_split(trained) -> None:
    settings, paths = trained
    metrics = evaluate_model(settings, paths, progress=False)
    folder = paths.run(settings).evaluation(settings)
    assert json.loads((folder / "metrics.json").read_text()) == metrics
    assert {task: set(by_decoder) for task, by_decoder in metrics.items()} == {"sequential": {"constrained"},
                                                                              "direct": {"score"}}
    for task, decoder in (("direct", "score"), ("sequential", "constrained")):
        values = metrics[task][decoder]
        assert set(values) == {"hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "invalid_rate", "coverage@10",
                               "n_users", "n_invalid"}
        assert values["n_users"] == 4 and values["invalid_rate"] == 0.0 and values["n_invalid"] == 0
        assert 0.0 < values["coverage@10"] <= 40 / 150

    direct = read_predictions(folder, "direct_score")
    candidates = stored_candidates(paths, "test")
    for (user,), rows in direct.group_by("user"):
        assert sorted(rows["item"].to_list()) == sorted(candidates[user])  # score mode: exactly the candidates
        assert rows["rank"].to_list() == list(range(1, 101)) and rows["score"].is_sorted(descending=True)

    sequential = read_predictions(folder, "sequential_constrained")
    history = before_target("test")
    assert sequential.height == 4 * settings.eval.top_n
    for (user,), rows in sequential.group_by("user"):
        items = set(rows["item"].to_list())
        assert len(items) == settings.eval.top_n and items <= set(range(1, 151)) and not items & history[user]

    # metrics agree with the predictions against the last items
    ranks = [rows.filter(pl.col("item") == HISTORIES[user][-1])["rank"].to_list() or [0]
             for (user,), rows in direct.group_by("user", maintain_order=True)]
    assert metrics["direct"]["score"]["hr@10"] == np.mean([1 <= r[0] <= 10 for r in ranks])


def test_rerun_gives_byte_identical_metrics(trained) -> None:
    settings, paths = trained
    file = paths.run(settings).evaluation(settings) / "metrics.json"
    evaluate_model(settings, paths, progress=False)
    first = file.read_bytes()
    evaluate_model(settings, paths, progress=False)
    assert file.read_bytes() == first


def test_validation_split_uses_second_last_item_and_valid_candidates(trained) -> None:
    settings, paths = trained
    valid = with_eval(settings, split="valid", max_users=3)
    metrics = evaluate_model(valid, paths, progress=False)
    folder = paths.run(valid).evaluation(valid)
    assert folder.name == "valid" and (folder / "metrics.json").is_file()
    assert metrics["direct"]["score"]["n_users"] == metrics["sequential"]["constrained"]["n_users"] == 3

    direct = read_predictions(folder, "direct_score")
    candidates = stored_candidates(paths, "valid")
    ranks = []
    for (user,), rows in direct.group_by("user", maintain_order=True):
        assert sorted(rows["item"].to_list()) == sorted(candidates[user])
        ranks.append(rows.filter(pl.col("item") == HISTORIES[user][-2])["rank"].item())  # the second-last item
    assert sorted(direct["user"].unique().to_list()) == [1, 2, 3]
    gains = [1 / math.log2(r + 1) if r <= 10 else 0 for r in ranks]
    assert metrics["direct"]["score"]["ndcg@10"] == pytest.approx(np.mean(gains))

    history = before_target("valid")
    for (user,), rows in read_predictions(folder, "sequential_constrained").group_by("user"):
        assert not set(rows["item"].to_list()) & history[user]


def test_decoder_settings_are_validated_and_ordered() -> None:
    assert EvalSettings(direct_decoders=["beam", "score"]).direct_decoders == ["score", "beam"]  # one folder per set
    assert settings_for("paper").eval.sequential_decoders == ["constrained", "rerank"]  # the paper preset: both
    assert (settings_for("mini").eval.direct_decoders, settings_for("mini").eval.sequential_decoders) == (
        ["score"], ["constrained"])  # reduced presets: the exact ones
    for bad, message in (([], "at least one"), (["score", "score"], "duplicate"), (["rerank"], "literal_error")):
        with pytest.raises(ValidationError, match=message) as error:
            EvalSettings(direct_decoders=bad)
        assert "direct_decoders" in str(error.value)


def test_paper_and_exact_decoders_in_one_evaluation(trained) -> None:
    """The paper preset's decoders: one metrics.json holding both decoders per task, a predictions file each;
    the exact decoders' results are those of an evaluation that runs them alone."""
    settings, paths = trained
    exact = with_eval(settings, max_users=2)
    alone = evaluate_model(exact, paths, progress=False)
    alone_folder = paths.run(exact).evaluation(exact)
    paper = with_eval(exact, direct_decoders=["score", "beam"], sequential_decoders=["constrained", "rerank"])
    metrics = evaluate_model(paper, paths, progress=False)
    folder = paths.run(paper).evaluation(paper)
    assert folder != alone_folder and json.loads((folder / "metrics.json").read_text()) == metrics
    assert {task: list(by_decoder) for task, by_decoder in metrics.items()} == {
        "sequential": ["constrained", "rerank"], "direct": ["score", "beam"]}
    assert sorted(p.name for p in folder.glob("predictions_*.parquet")) == [
        "predictions_direct_beam.parquet", "predictions_direct_score.parquet",
        "predictions_sequential_constrained.parquet", "predictions_sequential_rerank.parquet"]
    for task, decoder in (("direct", "score"), ("sequential", "constrained")):
        assert metrics[task][decoder] == alone[task][decoder]
        name = f"{task}_{decoder}"
        assert read_predictions(folder, name).equals(read_predictions(alone_folder, name))

    beam = read_predictions(folder, "direct_beam")
    candidates = stored_candidates(paths, "test")
    assert beam.height == 2 * paper.eval.top_n and metrics["direct"]["beam"]["n_users"] == 2
    for (user,), rows in beam.group_by("user"):
        assert set(rows["item"].to_list()) <= set(candidates[user]) | {-1}  # non-candidates are misses
    assert metrics["direct"]["beam"]["invalid_rate"] == metrics["direct"]["beam"]["n_invalid"] / (2 * 10)
    assert metrics["direct"]["beam"]["invalid_rate"] <= (beam["item"] == -1).mean()  # -1 also marks repeats
    history = before_target("test")
    for (user,), rows in read_predictions(folder, "sequential_rerank").group_by("user"):
        assert not set(rows["item"].to_list()) & history[user]


# ---- baselines -----------------------------------------------------------------------------------------------

# 12 items; training items: u1 [1, 2, 3], u2 [2, 6], u3 [8, 3, 2, 6], u4 [5]
# popularity: 2:3, 3:2, 6:2, 1:1, 5:1, 8:1, others 0 -> global order 2, 3, 6, 1, 5, 8, 4, 7, 9, 10, 11, 12
HAND_CANDIDATES = {  # (user, split) -> (target, candidates): never-interacted negatives, written by hand
    (1, "valid"): (4, [9, 4, 6, 7]), (2, "valid"): (7, [3, 10, 7, 11]),
    (3, "valid"): (4, [5, 4, 7, 9]), (4, "valid"): (7, [1, 7, 2, 12]),
    (1, "test"): (5, [9, 5, 6, 7]), (2, "test"): (1, [1, 3, 10, 11]),
    (3, "test"): (1, [5, 1, 7, 9]), (4, "test"): (8, [8, 12, 11, 10]),
}


@pytest.fixture
def hand_data(tmp_path: Path) -> tuple[Settings, WorkPaths]:
    settings = make_settings(tmp_path / "work", write_p5(tmp_path / "raw", HISTORIES, n_items=12), n_negatives=3)
    paths = prepare_data(settings)
    rows = [{"user": u, "split": s, "target": t, "candidates": c} for (u, s), (t, c) in HAND_CANDIDATES.items()]
    frame = schemas.conform(pl.DataFrame(rows, schema_overrides={"candidates": pl.List(pl.Int32)}), schemas.CANDIDATES)
    frame.write_parquet(paths.data.candidates)
    return settings, paths


def expected(ranks: list[int]) -> dict[str, float]:
    gain = [1 / math.log2(r + 1) for r in ranks]
    return {"hr@1": np.mean([r <= 1 for r in ranks]), "hr@5": np.mean([r <= 5 for r in ranks]),
            "hr@10": np.mean([r <= 10 for r in ranks]),
            "ndcg@5": np.mean([g if r <= 5 else 0 for g, r in zip(gain, ranks)]),
            "ndcg@10": np.mean([g if r <= 10 else 0 for g, r in zip(gain, ranks)])}


@pytest.mark.parametrize("split, direct_ranks, sequential_ranks", [
    # direct, test: u1 [9,5,6,7] -> 6,5,9,7: 5 at 2; u2 -> 3,1: 1 at 2; u3 [5,1,7,9]: 5 and 1 tie, stored
    # order keeps 5 first: 1 at 2; u4 -> 8 first.
    # sequential, test (history before the last item excluded): u1 -> 6,5: 2; u2 -> 3,1: 2; u3 -> 1: 1;
    # u4 (5, 7 excluded) -> 2,3,6,1,8: 5.
    ("test", [2, 2, 2, 1], [2, 2, 1, 5]),
    # valid: direct u1 [9,4,6,7] -> 6,9,4: 3 (9, 4, 7 tie at 0: stored order); u2 [3,10,7,11] -> 3,10,7: 3;
    # u3 [5,4,7,9] -> 5,4: 2; u4 [1,7,2,12] -> 2,1,7: 3.
    # sequential (only training items excluded): u1 -> 6,5,8,4: 4; u2 -> 3,1,5,8,4,7: 6; u3 -> 1,5,4: 3;
    # u4 -> 2,3,6,1,8,4,7: 7.
    ("valid", [3, 3, 2, 3], [4, 6, 3, 7]),
])
def test_popularity_baseline_by_hand(hand_data, split, direct_ranks, sequential_ranks) -> None:
    settings, paths = hand_data
    settings = with_eval(settings, split=split)
    metrics = evaluate_baselines(settings, paths)
    assert json.loads((paths.baselines(settings) / "metrics.json").read_text()) == metrics
    for task, ranks in (("direct", direct_ranks), ("sequential", sequential_ranks)):
        assert list(metrics["popularity"][task]) == ["score"]  # every ranking by scores has decoder `score`
        got = metrics["popularity"][task]["score"]
        assert {k: got[k] for k in expected(ranks)} == pytest.approx(expected(ranks)), task
        assert got["n_users"] == 4 and got["invalid_rate"] == 0.0 and got["n_invalid"] == 0
    assert metrics["popularity"]["sequential"]["score"]["coverage@10"] == pytest.approx(1.0)  # covers all 12 items
    assert metrics["random"] == {t: {"score": metrics["random"][t]["score"]} for t in ("direct", "sequential")}
    random_seq = read_predictions(paths.baselines(settings), "random_sequential_score")
    history = before_target(split)
    for (user,), rows in random_seq.group_by("user"):
        assert not set(rows["item"].to_list()) & history[user]
    assert evaluate_baselines(settings, paths) == metrics  # seeded


def test_baselines_respect_max_users(hand_data) -> None:
    settings, paths = hand_data
    metrics = evaluate_baselines(with_eval(settings, max_users=2), paths)
    popularity = metrics["popularity"]["direct"]["score"]
    assert popularity["n_users"] == metrics["random"]["sequential"]["score"]["n_users"] == 2
    assert popularity["hr@1"] == 0.0 and popularity["hr@5"] == 1.0


# ---- Prefect tasks ---------------------------------------------------------------------------------------------


def test_tasks_publish_prefect_tables(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    """The task bodies (no Prefect server: the artifact call and the run logger are captured)."""
    tables: list[dict] = []
    monkeypatch.setattr(tasks_evaluate, "create_table_artifact", lambda table, key, description: tables.append(
        {"table": table, "key": key}))
    monkeypatch.setattr(tasks_evaluate, "get_run_logger", lambda: logging.getLogger("test"))
    progress: list[float] = []
    monkeypatch.setattr(tasks_evaluate, "create_progress_artifact", lambda value, description: "progress-id")
    monkeypatch.setattr(tasks_evaluate, "update_progress_artifact", lambda artifact_id, value: progress.append(value))
    settings, paths = trained
    settings = with_eval(settings, max_users=2)
    metrics_path = tasks_evaluate.evaluate_task.fn(settings)
    baselines_path = tasks_evaluate.baselines_task.fn(settings)
    assert metrics_path == paths.run(settings).evaluation(settings) / "metrics.json"
    assert baselines_path == paths.baselines(settings) / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    assert [t["key"] for t in tables] == ["evaluate-tiny-test", "baselines-tiny-test"]
    assert progress == [50.0, 100.0]  # after each of the two tasks
    assert [(row["task"], row["decoder"]) for row in tables[0]["table"]] == [("sequential", "constrained"),
                                                                             ("direct", "score")]
    assert tables[0]["table"][1]["hr@10"] == round(metrics["direct"]["score"]["hr@10"], 4)
    baselines = json.loads(baselines_path.read_text())
    assert {"popularity", "random"} <= set(baselines)
    assert sorted((row["baseline"], row["task"], row["decoder"]) for row in tables[1]["table"]) == sorted(
        (b, t, "score") for b in baselines for t in ("sequential", "direct"))  # metrics.json sorts its keys


@pytest.mark.slow
def test_tasks_run_under_prefect(trained) -> None:
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    from tasks.evaluate import baselines_task, evaluate_task

    settings = with_eval(trained[0], max_users=1)

    @flow
    def evaluate_flow() -> tuple[Path, Path]:
        return evaluate_task(settings), baselines_task(settings)

    with prefect_test_harness(server_startup_timeout=120):
        metrics_path, baselines_path = evaluate_flow()
    assert json.loads(metrics_path.read_text())["direct"]["score"]["n_users"] == 1
    assert json.loads(baselines_path.read_text())["random"]["direct"]["score"]["n_users"] == 1


def test_id_order_baseline_by_hand(hand_data) -> None:
    """Test split, 12 items. Sequential: walk up from the largest visible ID, then down, skipping the history:
    u1 [1,2,3,4] -> 5: 1; u2 [2,6,7] -> 8,9,10,11,12,5,4,3,1: 9; u3 [8,3,2,6,4] -> 9,10,11,12,7,5,1: 7;
    u4 [5,7] -> 8: 1. Direct, by distance to the nearest training item: u1 {1,2,3} [9,5,6,7] -> 5 first;
    u2 {2,6} [1,3,10,11] -> 1 (ties 3, stored order first); u3 {2,3,6,8} [5,1,7,9] all at 1 -> stored order, 1
    second; u4 {5} [8,12,11,10] -> 8 first."""
    from elmrec.evaluate import SCORE_DECODER

    settings, paths = hand_data
    metrics = evaluate_baselines(settings, paths)["id_order"]
    for task, ranks in (("direct", [1, 1, 2, 1]), ("sequential", [1, 9, 7, 1])):
        got = metrics[task][SCORE_DECODER]
        assert {k: got[k] for k in expected(ranks)} == pytest.approx(expected(ranks)), task
        assert got["n_users"] == 4


def test_a_cpu_evaluation_reuses_the_heap_and_releases_it_unless_malloc_is_system(
        trained, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU `train.malloc=reuse` (the default) asks for the reused heap (elmrec.memory) before the model is
    loaded and gives its free pages back before a task's first decoding batch, after every RELEASE_EVERY (here 3)
    and after its last: 4 users in batches of 1, sequential then direct; `system` asks for nothing and releases
    nothing."""
    from elmrec import decode, memory
    from elmrec.device import Device

    settings, paths = trained
    if Device.resolve(settings.train.device).device.type != "cpu":
        pytest.skip("the heap is the CPU's")
    calls: list[str] = []
    monkeypatch.setattr(memory, "reuse_freed_memory", lambda: calls.append("reuse") or True)
    monkeypatch.setattr(memory, "release_freed_memory", lambda: calls.append("release") or True)
    monkeypatch.setattr(memory, "RELEASE_EVERY", 3)
    encoder = decode.encode
    monkeypatch.setattr(decode, "encode", lambda *args, **kw: calls.append("batch") or encoder(*args, **kw))
    one_by_one = with_eval(settings, batch_size=1)
    system = one_by_one.model_copy(update={"train": settings.train.model_copy(update={"malloc": "system"})})
    evaluate_model(system, paths, progress=False)
    assert calls == ["batch"] * 8
    calls.clear()
    reused = evaluate_model(one_by_one, paths, progress=False)
    task = ["release", "batch", "batch", "batch", "release", "batch", "release"]  # before, after the 3rd, the end
    assert one_by_one.train.malloc == "reuse" and calls == ["reuse", *task, *task]
    assert reused == evaluate_model(system, paths, progress=False)  # the heap changes no ranking
