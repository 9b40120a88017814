"""Hyper-parameter sweeps: grid expansion and the honest choice of the best point (elmrec.grid), and a 2x2 sweep
of the `sweep` flow on a local Dask cluster with a tiny T5."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest

from elmrec import tracking
from elmrec.config import settings_for
from elmrec.grid import Best, best_markdown, best_points, expand, point_name, trainings
from elmrec.metrics import tracked_name
from elmrec.paths import METRICS_FILE, WorkPaths
from elmrec.report import TABLE_METRICS
from tests.conftest import tiny_pipeline, write_p5


def test_a_grid_expands_to_validated_points_in_order_first_key_slowest() -> None:
    base = settings_for("mini")
    points = expand(base, {"model.alpha": [1, 6.5], "eval.rerank_n": [10, 15]})
    assert [p.name for p in points] == ["alpha=1,rerank_n=10", "alpha=1,rerank_n=15", "alpha=6.5,rerank_n=10",
                                        "alpha=6.5,rerank_n=15"]
    assert [(p.settings.model.alpha, p.settings.eval.rerank_n) for p in points] == [(1, 10), (1, 15), (6.5, 10),
                                                                                  (6.5, 15)]
    assert points[3].overrides == {"model": {"alpha": 6.5}, "eval": {"rerank_n": 15}}
    assert points[0].settings.data.max_users == 3000 and points[0].settings.model.sigma == base.model.sigma
    assert [p.on_split("valid").eval.split for p in points[:1]] == ["valid"] and points[0].settings.eval.split == "test"
    # N is decoding only: points that differ in it alone share one checkpoint, so 2 trainings for 4 points
    assert [[p.name for p in group] for group in trainings(points).values()] == [
        ["alpha=1,rerank_n=10", "alpha=1,rerank_n=15"], ["alpha=6.5,rerank_n=10", "alpha=6.5,rerank_n=15"]]


def test_point_names_keep_the_whole_key_where_two_keys_end_alike() -> None:
    assert point_name({"model.n_layers": 2, "lightgcn.n_layers": 3, "data.id_scheme": "shuffled"}) == \
        "model.n_layers=2,lightgcn.n_layers=3,id_scheme=shuffled"


@pytest.mark.parametrize(("grid", "message"), [
    ({}, "name at least one setting"),
    ({"model.alpha": []}, "model.alpha needs a non-empty list"),
    ({"model.alpha": 3}, "model.alpha needs a non-empty list"),
    ({"model.alpha": [1, 1]}, "repeats a value"),
    ({"workdir": ["a", "b"]}, "workdir cannot be swept"),
    ({"eval.split": ["valid"]}, "eval.split cannot be swept"),
    ({"model..alpha": [1]}, "not a dotted setting name"),
    ({"model.alhpa": [1]}, "sweep point alhpa=1: model.alhpa: Extra inputs are not permitted"),
    ({"model.alpha": [1, -1]}, "sweep point alpha=-1: model.alpha: Input should be greater than or equal to 0$"),
    ({"model.alpha": [1, 1.0]}, "sweep points alpha=1 and alpha=1.0 have the same settings"),
])
def test_a_bad_grid_fails_before_any_work_naming_the_point_and_field(grid: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expand(settings_for("mini"), grid)


def metrics(seq: float, direct: float) -> dict[str, Any]:
    return {"sequential": {"constrained": {"hr@10": seq * 2, "ndcg@10": seq}},
            "direct": {"score": {"hr@10": direct * 2, "ndcg@10": direct}}}


def test_the_best_point_is_chosen_on_valid_and_reported_on_test_first_of_equals_wins() -> None:
    valid = {"a": metrics(0.1, 0.30), "b": metrics(0.3, 0.25), "c": metrics(0.3, 0.10), "d": {}}
    test = {"a": metrics(0.9, 0.11), "b": metrics(0.2, 0.99), "c": metrics(0.8, 0.50), "d": metrics(1.0, 1.0)}
    assert best_points(valid, test) == [
        Best("sequential", "constrained", "b", "ndcg@10", 0.3, {"hr@10": 0.4, "ndcg@10": 0.2}),  # b before c
        Best("direct", "score", "a", "ndcg@10", 0.30, {"hr@10": 0.22, "ndcg@10": 0.11}),  # not b, best on test
    ]
    assert [b.point for b in best_points(valid, test, "hr@10")] == ["b", "a"]
    with pytest.raises(ValueError, match="metric 'mrr'"):
        best_points(valid, test, "mrr")


def test_the_best_points_markdown_says_which_split_chose_and_which_reports() -> None:
    valid = {"alpha=1": metrics(0.1, 0.3), "alpha=6": metrics(0.2, 0.25)}
    test = {"alpha=1": metrics(0.15, 0.35), "alpha=6": metrics(0.05, 0.2)}
    assert best_markdown(best_points(valid, test), valid, "ndcg@10", failed=["alpha=9"]).splitlines() == [
        "# elmrec sweep: the best point per task (2 points)", "",
        "Chosen by **ndcg@10** on the **valid** split; reported on the **test** split, which played no part in "
        "the choice.", "",
        "| task | decoder | best point | valid ndcg@10 | test hr@5 | test hr@10 | test ndcg@5 | test ndcg@10 |",
        "|---|---|---|---:|---:|---:|---:|---:|",
        "| sequential | constrained | alpha=6 | 0.2000 | — | 0.1000 | — | 0.0500 |",
        "| direct | score | alpha=1 | 0.3000 | — | 0.7000 | — | 0.3500 |", "",
        "Every point, ndcg@10 on valid:", "",
        "| point | sequential constrained | direct score |", "|---|---:|---:|",
        "| alpha=1 | 0.1000 | 0.3000 |", "| alpha=6 | 0.2000 | 0.2500 |", "",
        "Failed, not candidates: alpha=9."]


def test_the_sweep_deployment_expands_its_grid_and_its_metric_choices_are_the_tables() -> None:
    import yaml

    from flows.sweep import DEFAULT_GRID, Metric

    deployment = next(d for d in yaml.safe_load((Path(__file__).parents[1] / "prefect.yaml").read_text())["deployments"]
                      if d["name"] == "sweep")
    assert deployment["entrypoint"] == "flows.sweep:sweep" and deployment["parameters"]["grid"] == DEFAULT_GRID
    points = expand(settings_for(deployment["parameters"]["preset"]), deployment["parameters"]["grid"])
    assert [p.name for p in points] == ["alpha=1,n_layers=2", "alpha=1,n_layers=4", "alpha=6,n_layers=2",
                                        "alpha=6,n_layers=4"] and len(trainings(points)) == 4
    assert get_args(Metric) == TABLE_METRICS


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def task_runs() -> dict[str, list[str]]:
    """{task name: [state names]} of every task run on the (module's own) test server."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs()
    states: dict[str, list[str]] = {}
    for run in runs:
        states.setdefault(run.name.rsplit("-", 1)[0], []).append(run.state.name)
    return states


@pytest.mark.slow
def test_a_2x2_sweep_on_a_local_dask_cluster_records_a_child_per_point_and_the_best_on_valid(
        tmp_path: Path, tiny_histories, prefect_harness) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.sweep import BEST_ARTIFACT, sweep

    overrides = tiny_pipeline(write_p5(tmp_path / "mine", tiny_histories, n_items=150), tmp_path / "work")
    grid = {"model.alpha": [1, 4], "model.n_layers": [1, 2]}
    result = sweep(preset="demo", overrides=overrides, grid=grid, workers=2)
    names = ["alpha=1,n_layers=1", "alpha=1,n_layers=2", "alpha=4,n_layers=1", "alpha=4,n_layers=2"]
    assert result["failed"] == [] and list(result["results"]) == names
    states = task_runs()
    assert states["train"] == ["Completed"] * 4 and states["evaluate"] == ["Completed"] * 8  # 4 points x 2 splits

    # what each point wrote, read back from its own folders
    on_disk: dict[str, dict[str, Any]] = {"valid": {}, "test": {}}
    point_settings = {point.name: point.settings for point in expand(settings_for("demo", overrides), grid)}
    for point in expand(settings_for("demo", overrides), grid):
        for split in on_disk:
            settings = point.on_split(split)
            folder = WorkPaths.from_settings(settings).run(settings).evaluation(settings)
            on_disk[split][point.name] = json.loads((folder / METRICS_FILE).read_text())
    assert {n: r["valid"] for n, r in result["results"].items()} == on_disk["valid"]
    assert {n: r["test"] for n, r in result["results"].items()} == on_disk["test"]

    # the best point of each task: the highest valid NDCG@10 (first of equals), reported with its test metrics
    expected = []
    for task, decoder in (("sequential", "constrained"), ("direct", "score")):
        chosen = max(names, key=lambda n: on_disk["valid"][n][task][decoder]["ndcg@10"])
        expected.append((task, decoder, chosen, on_disk["valid"][chosen][task][decoder]["ndcg@10"],
                         {m: on_disk["test"][chosen][task][decoder][m] for m in ("hr@5", "hr@10", "ndcg@5",
                                                                                  "ndcg@10")}))
    assert [(b["task"], b["decoder"], b["point"], b["chosen_by"], b["reported"]) for b in result["best"]] == expected

    # MLflow: one parent, one child per point (valid and test metrics, the point's settings) beside the baselines'
    runs = tracking.find_runs(settings_for("demo", overrides))
    children = [r for r in runs if r["tags"].get("mlflow.parentRunId") == result["mlflow_run_id"]]
    points = {r["tags"]["elmrec.model"]: r for r in children if r["tags"]["elmrec.role"] == "variant"}
    assert sorted(points) == names and len(children) == len(names) + 3  # + popularity, random, id_order
    for name, child in points.items():
        alpha, layers = (float(v.split("=")[1]) for v in name.split(","))
        assert (float(child["params"]["model.alpha"]), float(child["params"]["model.n_layers"])) == (alpha, layers)
        for split in ("valid", "test"):
            assert child["metrics"][tracked_name(split, "direct", "score", "ndcg@10")] == \
                on_disk[split][name]["direct"]["score"]["ndcg@10"]
        run = WorkPaths.from_settings(point_settings[name]).run(point_settings[name])
        history = json.loads(run.history.read_text())
        losses = __import__("mlflow").MlflowClient().get_metric_history(child["run_id"], "train_loss")
        assert [m.step for m in losses] == [e["epoch"] for e in history["epochs"]]  # recorded once, not per split
    parent = next(r for r in runs if r["run_id"] == result["mlflow_run_id"])
    assert parent["status"] == "FINISHED" and parent["tags"]["elmrec.variants"] == ",".join(names)

    # the Prefect artifact names each best point; the comparison table flags them
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[BEST_ARTIFACT])))
        summary = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["elmrec-summary"])))
    assert len(artifacts) == 1
    best_rows = [line for line in artifacts[0].data.splitlines() if line.startswith(("| sequential |", "| direct |"))]
    assert [row.split(" | ")[2] for row in best_rows] == [b[2] for b in expected]
    assert "on the **valid** split; reported on the **test** split" in artifacts[0].data
    for task, decoder, chosen, *_ in expected:
        assert f"{chosen} (best: " in summary[0].data and f"{task} {decoder}" in summary[0].data
