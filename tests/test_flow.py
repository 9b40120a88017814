"""The `elmrec` flow end to end on a tiny local dataset and a tiny T5, with a throwaway Prefect server."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from elmrec import tracking
from elmrec.config import Stage, settings_for
from elmrec.paths import WorkPaths
from tests.conftest import tiny_pipeline, write_p5


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def task_states(flow_run_id: Any) -> dict[str, list[str]]:
    """{task name: [state names]} of one flow run, read back from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    states: dict[str, list[str]] = {}
    for run in runs:
        states.setdefault(run.name.rsplit("-", 1)[0], []).append(run.state.name)
    return states


@pytest.fixture
def overrides(tmp_path: Path, tiny_histories) -> dict[str, Any]:
    return tiny_pipeline(write_p5(tmp_path / "mine", tiny_histories, n_items=150), tmp_path / "work")


@pytest.mark.slow
def test_flow_runs_every_stage_caches_reruns_and_records_mlflow(overrides: dict[str, Any], prefect_harness) -> None:
    from flows.elmrec import elmrec

    state = elmrec(preset="demo", overrides=overrides, variants=["elmrec", "pod"], return_state=True)
    result = state.result()
    settings = settings_for("demo", overrides)
    paths = WorkPaths.from_settings(settings)
    assert json.loads(paths.data.stats.read_text())["n_users"] == 4
    assert set(result["results"]) == {"popularity", "random", "id_order", "elmrec", "pod"}
    assert set(result["results"]["elmrec"]) == {"sequential", "direct"}

    runs = tracking.find_runs(settings)
    parent = next(r for r in runs if r["run_id"] == result["mlflow_run_id"])
    children = [r for r in runs if r["tags"].get("mlflow.parentRunId") == parent["run_id"]]
    assert parent["tags"]["prefect.flow_run_id"] == str(state.state_details.flow_run_id)
    assert parent["params"]["stats.data.n_interactions"] == "18" and parent["status"] == "FINISHED"
    assert {"stats.graph.leak_probe_valid_hr_at_5", "stats.graph.leak_probe_test_hr_at_5"} <= set(parent["params"])
    assert sorted(r["name"] for r in children) == [f"{name} · tiny" for name in
                                                   ("elmrec", "id_order", "pod", "popularity", "random")]
    elmrec_child = next(r for r in children if r["name"] == "elmrec · tiny")
    assert "test/direct/score/hr_at_10" in elmrec_child["metrics"] and "valid_loss" in elmrec_child["metrics"]
    assert elmrec_child["params"]["pretrained"] == "False"
    first = task_states(state.state_details.flow_run_id)
    assert set(first["train"]) == {"Completed"} and len(first["train"]) == 2

    # Second run: unchanged stages come from cache, the forced one runs again.
    again = elmrec(preset="demo", overrides=overrides, variants=["elmrec", "pod"], force=[Stage.EVALUATE],
                   return_state=True)
    second = task_states(again.state_details.flow_run_id)
    for name in ("download", "preprocess", "graph", "train"):
        assert set(second[name]) == {"Cached"}, (name, second[name])
    assert set(second["evaluate"]) == {"Completed"} and set(second["baselines"]) == {"Completed"}
    assert again.result()["results"]["elmrec"] == result["results"]["elmrec"]  # same model, same metrics

    # Each trained model is registered once (elmrec.registry), tagged with its variant and first child run.
    import mlflow

    versions = mlflow.MlflowClient().search_model_versions("name = 'elmrec-tiny'")
    assert sorted((v.tags["elmrec.variant"], str(v.version)) for v in versions) == [("elmrec", "1"), ("pod", "2")]
    assert next(v for v in versions if str(v.version) == "1").run_id == elmrec_child["run_id"]
    latest = [r for r in tracking.find_runs(settings) if r["tags"].get("mlflow.parentRunId") == again.result()[
        "mlflow_run_id"] and r["tags"].get("elmrec.model") == "elmrec"]
    assert [r["tags"]["elmrec.registered_model"] for r in latest] == ["models:/elmrec-tiny/1"]


@pytest.mark.slow
def test_bad_parameters_fail_before_any_work(tmp_path: Path, prefect_harness) -> None:
    from prefect.exceptions import ParameterTypeError
    from pydantic import ValidationError

    from flows.elmrec import elmrec

    with pytest.raises(ParameterTypeError, match="preset"):
        elmrec(preset="huge", overrides={"workdir": str(tmp_path)})
    with pytest.raises(ValidationError, match=r"data.id_scheme"):
        elmrec(preset="demo", overrides={"workdir": str(tmp_path), "data": {"id_scheme": "bad"}})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ablation_deployment_variants_share_one_parent_and_train_shared_checkpoints_once(
        overrides: dict[str, Any], prefect_harness) -> None:
    import yaml

    from flows.elmrec import elmrec

    deployments = yaml.safe_load((Path(__file__).parents[1] / "prefect.yaml").read_text())["deployments"]
    variants = next(d for d in deployments if d["name"] == "ablation")["parameters"]["variants"]
    assert variants == ["elmrec", "pod", "no_graph", "no_incremental", "paper_decoding", "shuffled_ids", "leaky_graph",
                        "sasrec", "lightgcn"]
    state = elmrec(preset="demo", overrides=overrides, variants=variants, return_state=True)
    result = state.result()
    settings = settings_for("demo", overrides)
    runs = tracking.find_runs(settings)
    children = [r for r in runs if r["tags"].get("mlflow.parentRunId") == result["mlflow_run_id"]]
    own, shuffled, leaky = "", " (id_scheme=shuffled)", " (graph_edges=all)"
    expected = [f"{name} · tiny{data}" for name, data in
                [(v, shuffled if v == "shuffled_ids" else leaky if v == "leaky_graph" else own) for v in variants]
                + [(b, data) for b in ("popularity", "random", "id_order") for data in (own, shuffled, leaky)]]
    assert sorted(r["name"] for r in children) == sorted(expected)
    for child in children:  # every model and baseline carries the same metric names, decoder-free ones too
        metrics = child["metrics"]
        sequential = "constrained" if "test/sequential/constrained/hr_at_10" in metrics else "score"
        assert "test/direct/score/hr_at_10" in metrics and f"test/sequential/{sequential}/hr_at_10" in metrics
        assert metrics["test/direct/hr_at_10"] == metrics["test/direct/score/hr_at_10"], child["name"]
        assert metrics["test/sequential/hr_at_10"] == metrics[f"test/sequential/{sequential}/hr_at_10"], child["name"]
    params = {r["tags"]["elmrec.model"]: r["params"] for r in children if r["tags"]["elmrec.role"] == "variant"}
    assert params["paper_decoding"]["eval.direct_decoders"] == '["score", "beam"]'
    assert params["elmrec"]["eval.direct_decoders"] == '["score"]'
    assert params["shuffled_ids"]["data.id_scheme"] == "shuffled" and params["sasrec"]["recommender"] == "sasrec"
    # paper_decoding differs from elmrec in decoding only: it evaluates elmrec's checkpoint, trained once
    first = task_states(state.state_details.flow_run_id)
    assert sorted(first["train"]) == ["Cached"] + ["Completed"] * 8 and len(first["evaluate"]) == 9
    assert first["graph"] == ["Completed"] * 3  # own, shuffled IDs, all edges
    table = result["results"]
    assert {"id_order (id_scheme=shuffled)", "shuffled_ids (id_scheme=shuffled)", "leaky_graph (graph_edges=all)",
            "sasrec", "lightgcn"} <= set(table)

    # Forcing training retrains each distinct checkpoint once, not once per variant that uses it.
    again = elmrec(preset="demo", overrides=overrides, variants=variants, stages=[Stage.TRAIN], force=[Stage.TRAIN],
                   return_state=True)
    assert sorted(task_states(again.state_details.flow_run_id)["train"]) == ["Cached"] + ["Completed"] * 8


def run_states(flow_state: Any) -> dict[str, list[str]]:
    return task_states(flow_state.state_details.flow_run_id)


@pytest.mark.slow
def test_each_stage_alone_on_a_fresh_work_dir_then_cached_until_the_user_replaces_the_data(
        tmp_path: Path, tiny_histories, prefect_harness) -> None:
    from flows.elmrec import elmrec

    raw = write_p5(tmp_path / "mine", tiny_histories, n_items=150)
    overrides = tiny_pipeline(raw, tmp_path / "work")
    data_stages = [Stage.DOWNLOAD, Stage.PREPROCESS, Stage.GRAPH]
    for stage in data_stages:  # as `elmrec task <stage>` runs them, one by one on a fresh work dir
        state = elmrec(preset="demo", overrides=overrides, stages=[stage], force=[stage], return_state=True)
        assert state.is_completed() and run_states(state)[stage.value] == ["Completed"]
    settings = settings_for("demo", overrides)
    parents = [r for r in tracking.find_runs(settings) if r["tags"].get("elmrec.role") == "parent"]
    assert [r["status"] for r in parents] == ["FINISHED"] * 3

    again = run_states(elmrec(preset="demo", overrides=overrides, stages=data_stages, return_state=True))
    assert [again[s.value] for s in data_stages] == [["Cached"]] * 3

    write_p5(raw, {**tiny_histories, 5: [1, 3, 5, 7]}, n_items=150)  # the user replaces the files: no --force
    replaced = run_states(elmrec(preset="demo", overrides=overrides, stages=data_stages, return_state=True))
    assert [replaced[s.value] for s in data_stages] == [["Completed"]] * 3
    assert json.loads(WorkPaths.from_settings(settings).data.stats.read_text())["n_users"] == 5


@pytest.mark.slow
def test_a_fixed_bad_input_file_is_read_again(tmp_path: Path, tiny_histories, prefect_harness) -> None:
    from flows.elmrec import elmrec

    raw = write_p5(tmp_path / "mine", tiny_histories, n_items=150)
    good = (raw / "sequential.txt").read_text()
    (raw / "sequential.txt").write_text(good + "5 7 x\n")
    overrides = tiny_pipeline(raw, tmp_path / "work")
    stages = [Stage.DOWNLOAD, Stage.PREPROCESS]
    failed = elmrec(preset="demo", overrides=overrides, stages=stages, return_state=True)
    assert failed.is_failed()
    (raw / "sequential.txt").write_text(good)
    fixed = elmrec(preset="demo", overrides=overrides, stages=stages, return_state=True)
    assert fixed.is_completed()
    paths = WorkPaths.from_settings(settings_for("demo", overrides))
    assert json.loads(paths.data.stats.read_text())["n_users"] == 4
