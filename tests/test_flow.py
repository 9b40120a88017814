"""The `elmrec` flow end to end on a tiny local dataset, with a throwaway Prefect server."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from elmrec import tracking
from elmrec.config import Stage, settings_for
from elmrec.paths import WorkPaths
from tests.conftest import write_p5


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
def test_flow_runs_data_stages_and_records_mlflow(tmp_path: Path, tiny_histories, prefect_harness) -> None:
    from flows.elmrec import elmrec

    raw = write_p5(tmp_path / "mine", tiny_histories, n_items=150)
    overrides = {"workdir": str(tmp_path / "work"), "data": {"dataset": "mine", "source": "local", "path": str(raw)}}
    run_id = elmrec(preset="paper", overrides=overrides, stages=[Stage.DOWNLOAD, Stage.PREPROCESS, Stage.GRAPH])

    settings = settings_for("paper", overrides)
    paths = WorkPaths.from_settings(settings)
    assert json.loads(paths.data.stats.read_text())["n_users"] == 4
    assert json.loads(paths.graph.stats.read_text())["n_edges"] == 10
    runs = {run["run_id"]: run for run in tracking.find_runs(settings)}
    recorded = runs[run_id]
    assert recorded["params"]["data.source"] == "local"
    assert recorded["metrics"]["data.n_interactions"] == 18 and recorded["metrics"]["graph.n_nodes"] == 155
    assert recorded["tags"]["stages"] == "download,preprocess,graph"

    # one stage alone, on the outputs already there
    elmrec(preset="paper", overrides={**overrides, "data": {**overrides["data"], "graph_edges": "all"}},
           stages=[Stage.GRAPH])
    assert json.loads((paths.derived / "graph-all" / "stats.json").read_text())["n_edges"] == 18
