"""The trained model as an MLflow model (elmrec.registry): logged into a run of a temporary SQLite store,
registered as elmrec-<dataset>, loaded back by its models:/ URI, it recommends what the library recommends;
`mlflow models serve` answers the same over HTTP (slow)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.entities.model_registry import ModelVersion

from elmrec import registry, tracking
from elmrec.app.cli import main
from elmrec.config import Settings
from elmrec.recommend import format_table, from_run

pytestmark = pytest.mark.usefixtures("one_thread")

URI = "models:/elmrec-tiny/1"


@pytest.fixture(scope="module")
def store(tiny_run: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The tiny run's settings on a store of this module's own, MLflow pointed at it."""
    folder = tmp_path_factory.mktemp("mlflow")
    settings = tiny_run.model_copy(update={"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"})
    tracking.configure(settings)
    return settings


@pytest.fixture(scope="module")
def logged(store: Settings) -> tuple[str, ModelVersion]:
    run_id = tracking.find_or_create_run(store, "elmrec · tiny", {}, match={"test": "registry"})
    return run_id, registry.log_model(store, run_id, {"elmrec.variant": "elmrec", "elmrec.child_run": run_id})


def test_the_registered_model_predicts_what_the_library_recommends(store: Settings, logged) -> None:
    run_id, version = logged
    assert (version.name, str(version.version), version.run_id) == ("elmrec-tiny", "1", run_id)
    assert version.tags["elmrec.variant"] == "elmrec" and version.tags["elmrec.child_run"] == run_id
    model = mlflow.pyfunc.load_model(URI)
    expected = from_run(store).recommend(["U1", "U3"], k=3).to_pandas()
    pd.testing.assert_frame_equal(model.predict(pd.DataFrame({"user": ["U1", "U3"]}), params={"k": 3}), expected)
    default_k = model.predict(["U2", 4])  # a list; reviewer ID or user number; k = 10
    assert list(default_k["user"].unique()) == ["U2", "U4"] and len(default_k) == (10 - 4) + (10 - 3)


def test_elmrec_searches_in_the_precision_asked_for_and_a_bad_one_is_named(store: Settings, logged) -> None:
    model = mlflow.pyfunc.load_model(URI)
    lm_head = model.unwrap_python_model().recommender.ranker.model.t5.lm_head
    seen: list[torch.dtype] = []
    lm_head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    users = pd.DataFrame({"user": ["U1", "U2"]})
    fp32 = model.predict(users, params={"k": 3})
    assert set(seen) == {torch.float32}
    seen.clear()
    bf16 = model.predict(users, params={"k": 3, "precision": "bf16"})
    assert set(seen) == {torch.bfloat16}  # every pass of the search under bf16 autocast
    assert list(bf16["user"]) == list(fp32["user"]) and len(bf16) == 6  # the same users, k items each
    np.testing.assert_allclose(bf16["score"], fp32["score"], rtol=0.05, atol=0.1)  # rank by rank, bf16's rounding
    bf16_store = store.model_copy(update={"eval": store.eval.model_copy(update={"precision": "bf16"})})
    by_settings = registry.recommend_from(bf16_store, URI, ["U1", "U2"], k=3).to_pandas()
    pd.testing.assert_frame_equal(by_settings, bf16, check_dtype=False)  # `elmrec recommend --model`'s path
    with pytest.raises(ValueError, match=r"^precision must be one of fp32, bf16, got 'fp16'$"):
        model.predict(users, params={"precision": "fp16"})


def test_its_history_items_are_never_recommended_and_an_unknown_user_is_named(logged) -> None:
    model = mlflow.pyfunc.load_model(URI)
    table = model.predict(pd.DataFrame({"user": ["U3"]}), params={"k": 10})
    assert set(table["item"]) == {"A5", "A7", "A9", "A10"}  # U3 bought 8, 3, 2, 6, 4, 1
    with pytest.raises(ValueError, match=r"^unknown user 'U9': the model knows 4 users"):
        model.predict(pd.DataFrame({"user": ["U9"]}))


def test_a_checkpoint_is_registered_once_and_its_run_names_the_version(store: Settings, logged) -> None:
    run_id, version = logged
    again = registry.log_model(store, run_id, {"elmrec.variant": "paper_decoding"})
    assert again.version == version.version
    assert [str(v.version) for v in mlflow.MlflowClient().search_model_versions("name = 'elmrec-tiny'")] == ["1"]
    assert mlflow.MlflowClient().get_run(run_id).data.tags["elmrec.registered_model"] == URI


def test_the_run_uri_and_the_model_uri_recommend_alike(store: Settings, logged) -> None:
    run_id, _ = logged
    by_run = registry.recommend_from(store, f"runs:/{run_id}/model", ["U1", "U2"], k=2)
    assert by_run.equals(registry.recommend_from(store, URI, ["U1", "U2"], k=2))
    with pytest.raises(ValueError, match=r"^no elmrec model at models:/elmrec-tiny/7: "):
        registry.recommend_from(store, "models:/elmrec-tiny/7", ["U1"])


def test_the_command_prints_a_logged_models_table(store: Settings, logged, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run_id, _ = logged
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(store.model_dump(mode="json")))
    expected = format_table(registry.recommend_from(store, URI, ["U4"], k=2)) + "\n"
    for source in (["--model", URI], ["--run", run_id]):
        assert main(["recommend", "--config", str(config), *source, "--user", "U4", "--k", "2"]) == 0
        assert capsys.readouterr().out == expected
    assert main(["recommend", "--config", str(config), "--model", "models:/elmrec-tiny/9", "--user", "U4"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "error: no elmrec model at models:/elmrec-tiny/9: ")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_mlflow_models_serve_answers_an_http_request(store: Settings, logged, tmp_path: Path) -> None:
    port, venv = free_port(), Path(sys.executable).parent  # the venv's `mlflow` runs its `uvicorn`, as activated
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.resolved_tracking_uri(), "ELMREC_MODEL_MIRROR": "",
           "PATH": f"{venv}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = ["mlflow", "models", "serve", "-m", URI, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        server = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # its own group: the workers end with it
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"mlflow models serve exited:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, f"no answer in 120 s:\n{log.read_text()[-3000:]}"
                time.sleep(0.5)
        answer = post(f"http://127.0.0.1:{port}/invocations",
                      {"dataframe_records": [{"user": "U1"}, {"user": "U3"}], "params": {"k": 3}})
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    expected = mlflow.pyfunc.load_model(URI).predict(pd.DataFrame({"user": ["U1", "U3"]}), params={"k": 3})
    assert [{**row, "score": pytest.approx(row["score"], rel=1e-6)} for row in answer["predictions"]] == \
        expected.to_dict("records")
