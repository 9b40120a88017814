"""MLflow as the place to compare: the layout a tiny flow run leaves in the store, and `elmrec compare` on it.

Two flow runs serve every assertion: `elmrec` + `shuffled_ids` (a second data setting with its own baselines),
then `elmrec` again with evaluation forced (its checkpoint reused from the first).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import mlflow
import pytest

from elmrec import tracking
from elmrec.app.cli import main
from elmrec.compare import comparison
from elmrec.config import Stage, settings_for, variant_settings
from elmrec.paths import WorkPaths
from elmrec.stages import read_record
from tests.conftest import tiny_pipeline, write_p5
from tests.test_flow import prefect_harness  # noqa: F401  (a module fixture: one temporary Prefect server)

SHUFFLED = "id_scheme=shuffled"
SCORE_KEYS = {f"test/direct/score/{m}" for m in ("hr_at_1", "hr_at_5", "hr_at_10", "ndcg_at_5", "ndcg_at_10",
                                                 "invalid_rate", "coverage_at_10", "n_users", "n_invalid")}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, prefect_harness) -> dict[str, Any]:  # noqa: F811
    from prefect.client.orchestration import get_client

    from flows.elmrec import elmrec

    tmp = tmp_path_factory.mktemp("compare")
    histories = {1: [1, 2, 3, 4, 5], 2: [2, 6, 7, 1], 3: [8, 3, 2, 6, 4, 1], 4: [5, 7, 8]}
    overrides = tiny_pipeline(write_p5(tmp / "mine", histories, n_items=150), tmp / "work")
    first = elmrec(preset="demo", overrides=overrides, variants=["elmrec", "shuffled_ids"], return_state=True)
    settings = settings_for("demo", overrides)
    records = {stage: read_record(settings, stage) for stage in ("train", "evaluate", "baselines")}
    shuffled = variant_settings(settings, "shuffled_ids")
    records["shuffled baselines"] = read_record(shuffled, "baselines")
    second = elmrec(preset="demo", overrides=overrides, variants=["elmrec"], force=[Stage.EVALUATE], return_state=True)
    with get_client(sync_client=True) as client:
        names = [client.read_flow_run(s.state_details.flow_run_id).name for s in (first, second)]
    return {"settings": settings, "shuffled": shuffled, "records": records, "names": names,
            "results": [first.result(), second.result()], "workdir": tmp / "work", "tmp": tmp,
            "evaluate_again": read_record(settings, "evaluate")}


def children_of(settings: Any, parent: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in tracking.find_runs(settings, f"tags.`mlflow.parentRunId` = '{parent}'")}


@pytest.mark.slow
def test_one_child_per_model_and_baseline_with_the_same_metric_names_params_tags_and_times(store) -> None:
    settings, records, result = store["settings"], store["records"], store["results"][0]
    parent_id = result["mlflow_run_id"]
    (parent,) = [r for r in tracking.find_runs(settings) if r["run_id"] == parent_id]
    assert parent["name"] == store["names"][0] == "demo · tiny · elmrec+shuffled_ids"
    children = children_of(settings, parent_id)
    assert sorted(children) == sorted([
        "elmrec · tiny", f"shuffled_ids · tiny ({SHUFFLED})", "popularity · tiny", "random · tiny",
        "id_order · tiny", f"popularity · tiny ({SHUFFLED})", f"random · tiny ({SHUFFLED})",
        f"id_order · tiny ({SHUFFLED})"])
    for name, child in children.items():  # every child: the same names for the same (task, decoder), params
        assert {k for k in child["metrics"] if k.startswith("test/direct/score/")} == SCORE_KEYS, name
        assert child["params"]["eval.split"] == "test" and child["params"]["data.dataset"] == "tiny", name
        assert child["params"]["data.id_scheme"] == ("shuffled" if SHUFFLED in name else "p5"), name
        assert child["tags"]["elmrec.data_setting"] == (SHUFFLED if SHUFFLED in name else "own"), name
        assert child["tags"]["elmrec.model"] == name.split(" · ")[0] and child["status"] == "FINISHED", name
    popularity, model = children["popularity · tiny"], children["elmrec · tiny"]
    assert popularity["tags"]["elmrec.role"] == "baseline" and popularity["params"]["recommender"] == "popularity"
    assert "model.alpha" not in popularity["params"] and model["params"]["model.alpha"] == "6.0"
    assert popularity["metrics"]["test/direct/score/hr_at_10"] == result["results"]["popularity"]["direct"]["score"][
        "hr@10"]
    assert model["metrics"]["test/direct/score/hr_at_10"] == result["results"]["elmrec"]["direct"]["score"]["hr@10"]
    assert {"valid_loss", "train_loss"} <= set(model["metrics"])
    assert (model["tags"]["elmrec.role"], model["tags"]["elmrec.recommender"]) == ("variant", "elmrec")
    checkpoint = WorkPaths.from_settings(settings).run(settings).checkpoint
    assert (model["tags"]["elmrec.checkpoint_reused"], model["tags"]["elmrec.checkpoint"]) == ("false", str(checkpoint))
    # times: the stage records' (train start to evaluate end; the baselines stage), not when MLflow was written
    assert (model["start_time"], model["end_time"]) == (tracking.iso_ms(records["train"]["started"]),
                                                        tracking.iso_ms(records["evaluate"]["finished"]))
    assert (popularity["start_time"], popularity["end_time"]) == tuple(
        tracking.iso_ms(records["baselines"][k]) for k in ("started", "finished"))
    other = children[f"id_order · tiny ({SHUFFLED})"]
    assert other["start_time"] == tracking.iso_ms(records["shuffled baselines"]["started"])


@pytest.mark.slow
def test_the_parent_holds_headlines_the_table_statistics_and_the_splits(store) -> None:
    settings, result = store["settings"], store["results"][0]
    (parent,) = [r for r in tracking.find_runs(settings) if r["run_id"] == result["mlflow_run_id"]]
    expected = {f"{row}/test/{task}/{decoder}/{metric}": values[metric.replace("_at_", "@")]
                for label, by_task in result["results"].items()
                for row in [label.replace(" (id_scheme=shuffled)", "_id_scheme_shuffled")]
                for task, by_decoder in by_task.items() for decoder, values in by_decoder.items()
                for metric in ("hr_at_10", "ndcg_at_10")}
    assert parent["metrics"] == expected  # headlines only: no dataset statistics among the metrics
    assert "elmrec/test/direct/score/hr_at_10" in expected and "id_order_id_scheme_shuffled/test/direct/score/" \
        "hr_at_10" in expected
    assert parent["params"]["stats.data.n_interactions"] == "18" and "stats.graph.leak_probe_test_hr_at_5" in \
        parent["params"]
    assert parent["tags"]["elmrec.preset"] == "demo" and parent["tags"]["elmrec.variants"] == "elmrec,shuffled_ids"
    assert parent["tags"]["mlflow.note.content"] == comparison(settings, parent["run_id"]).markdown()
    assert parent["tags"]["mlflow.note.content"].splitlines()[0].startswith("| row | sequential score hr@5 |")
    client = mlflow.MlflowClient()
    stats = json.loads(Path(client.download_artifacts(parent["run_id"], "stats.json", str(store["tmp"]))).read_text())
    assert stats[""]["data"]["n_interactions"] == 18 and set(stats) == {"", SHUFFLED}
    inputs = {i.dataset.name: {t.key: t.value for t in i.tags}["mlflow.data.context"]
              for i in client.get_run(parent["run_id"]).inputs.dataset_inputs}
    assert inputs == {"tiny · train": "training", "tiny · valid": "validation", "tiny · test": "evaluation",
                      f"tiny ({SHUFFLED}) · train": "training", f"tiny ({SHUFFLED}) · valid": "validation",
                      f"tiny ({SHUFFLED}) · test": "evaluation"}
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.slow
def test_a_reused_checkpoint_is_tagged_and_the_child_spans_the_evaluation(store) -> None:
    settings, result = store["settings"], store["results"][1]
    model = children_of(settings, result["mlflow_run_id"])["elmrec · tiny"]
    assert model["tags"]["elmrec.checkpoint_reused"] == "true"
    assert model["tags"]["elmrec.checkpoint"] == str(WorkPaths.from_settings(settings).run(settings).checkpoint)
    again = store["evaluate_again"]
    assert again["started"] >= store["records"]["evaluate"]["finished"]  # evaluation ran again, training did not
    assert (model["start_time"], model["end_time"]) == (tracking.iso_ms(again["started"]),
                                                        tracking.iso_ms(again["finished"]))


@pytest.mark.slow
def test_elmrec_compare_prints_the_latest_or_a_named_run_and_writes_csv(store, capsys) -> None:
    settings, workdir = store["settings"], str(store["workdir"])
    first, latest = (comparison(settings, r["mlflow_run_id"]) for r in store["results"])
    assert main(["compare", "--workdir", workdir]) == 0
    assert capsys.readouterr().out == (f"demo · tiny · elmrec (MLflow run {latest.parent['run_id']}, test)\n\n"
                                       f"{latest.markdown()}\n")
    assert [row.label for row in latest.rows] == ["id_order", "popularity", "random", "elmrec"]

    out = store["tmp"] / "table.csv"
    assert main(["compare", "--workdir", workdir, "--run", store["names"][0], "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"demo · tiny · elmrec+shuffled_ids (MLflow run {first.parent['run_id']}, test)\n")
    assert printed.endswith(f"\n\nwrote {out}\n") and first.markdown() in printed
    lines = list(csv.reader(out.open()))
    assert lines[0][:4] == ["row", "setting", "kind", "sequential score hr@5"]
    assert [line[:3] for line in lines[1:]] == [
        ["id_order", "", "baseline"], ["popularity", "", "baseline"], ["random", "", "baseline"],
        ["id_order", SHUFFLED, "baseline"], ["popularity", SHUFFLED, "baseline"], ["random", SHUFFLED, "baseline"],
        ["elmrec", "", "model"], ["shuffled_ids", SHUFFLED, "model"]]
    column = lines[0].index("direct score hr@10")
    assert float(lines[7][column]) == store["results"][0]["results"]["elmrec"]["direct"]["score"]["hr@10"]
    assert main(["compare", "--workdir", workdir, "--run", "no such run"]) == 1
    assert "no flow run matches 'no such run'" in capsys.readouterr().err
    assert main(["compare", "--workdir", str(store["tmp"] / "empty")]) == 1
    assert "no MLflow store at" in capsys.readouterr().err
