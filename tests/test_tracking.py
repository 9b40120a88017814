import json
import multiprocessing as mp
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow

from elmrec import tracking
from elmrec.config import settings_for
from elmrec.metrics import tracked_metrics


def test_runs_are_found_again_by_tags_and_log_without_global_state(tmp_path: Path) -> None:
    settings = settings_for("demo", {"workdir": str(tmp_path)})
    parent = tracking.find_or_create_run(settings, "flow-run-name", {"preset": "demo"},
                                         match={"prefect.flow_run_id": "f1"})
    assert tracking.find_or_create_run(settings, "other", {}, match={"prefect.flow_run_id": "f1"}) == parent  # retried
    child = tracking.find_or_create_run(settings, "elmrec", {}, match={"prefect.flow_run_id": "f1", "role": "variant"},
                                        parent_run_id=parent)
    log = tracking.RunLog(child)
    log.metrics(tracked_metrics({"direct": {"score": {"hr@10": 0.25, "mode": "score"}}, "flag": True}, "test"), step=3)
    log.metrics({"train": {"loss": 2.5, "best": True}})
    log.params({"train": {"lr": 0.001}})
    log.params({"train": {"lr": 0.5}})  # params are write-once: a retried run keeps the first value
    tracking.finish(settings, child)
    (recorded,) = [r for r in tracking.find_runs(settings) if r["run_id"] == child]
    assert recorded["metrics"] == {"test/direct/score/hr_at_10": 0.25, "train.loss": 2.5}
    assert recorded["params"] == {"train.lr": "0.001"}
    assert recorded["tags"]["mlflow.parentRunId"] == parent and recorded["status"] == "FINISHED"
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(child, "test/direct/score/hr_at_10")] == [3]
    assert (tmp_path / "mlflow.db").is_file()
    assert set(tracking.environment_tags()) >= {"git.commit", "version.torch", "version.prefect"}


def _create_store_at_once(workdir: str, barrier: Any, errors: str) -> None:
    """One of two processes that open the same fresh store at the same moment; logs of level ERROR go to `errors`."""
    import logging

    handler = logging.FileHandler(errors)
    handler.setLevel(logging.ERROR)
    logging.getLogger().addHandler(handler)
    settings = settings_for("demo", {"workdir": workdir})
    barrier.wait(timeout=120)
    try:
        tracking.configure(settings)
        tracking.find_or_create_run(settings, "run", {}, match={"prefect.flow_run_id": str(os.getpid())})
    except Exception:
        logging.getLogger("test").exception("store creation failed")
        raise


def test_two_processes_creating_a_fresh_store_at_once_log_no_error(tmp_path: Path) -> None:
    context = mp.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=_create_store_at_once, args=(str(tmp_path), barrier, str(tmp_path / f"{n}.log")))
               for n in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=180)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert [(tmp_path / f"{n}.log").read_text() for n in range(2)] == ["", ""]
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert db.execute("select name from sqlite_master where name like '%alembic_tmp%'").fetchall() == []
    settings = settings_for("demo", {"workdir": str(tmp_path)})
    assert len(tracking.find_runs(settings)) == 2


def test_runs_of_dead_processes_are_marked_failed_at_the_next_start(tmp_path: Path) -> None:
    settings = settings_for("demo", {"workdir": str(tmp_path)})
    crashed = (  # a flow run killed while its MLflow run was open
        "import os, signal, sys\nfrom elmrec import tracking\nfrom elmrec.config import settings_for\n"
        "settings = settings_for('demo', {'workdir': sys.argv[1]})\n"
        "run = tracking.find_or_create_run(settings, 'killed', {}, match={'prefect.flow_run_id': 'dead'})\n"
        "print(run, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    child = subprocess.run([sys.executable, "-c", crashed, str(tmp_path)], capture_output=True, text=True,
                           cwd=Path(__file__).parents[1], timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    dead_run = child.stdout.strip()
    alive_run = tracking.find_or_create_run(settings, "alive", {}, match={"prefect.flow_run_id": "alive"})
    assert {r["run_id"]: r["status"] for r in tracking.find_runs(settings)} == {dead_run: "RUNNING",
                                                                               alive_run: "RUNNING"}
    tags = {r["run_id"]: r["tags"] for r in tracking.find_runs(settings)}
    assert tags[alive_run]["elmrec.pid"] == str(os.getpid())
    assert tags[dead_run]["elmrec.host"] == tags[alive_run]["elmrec.host"] == socket.gethostname()
    assert tracking.fail_orphaned_runs(settings) == [dead_run]
    assert {r["run_id"]: r["status"] for r in tracking.find_runs(settings)} == {dead_run: "FAILED",
                                                                               alive_run: "RUNNING"}
    assert tracking.fail_orphaned_runs(settings) == []


def test_experiment_opens_on_the_runs_table_even_in_a_store_made_before(tmp_path: Path) -> None:
    settings = settings_for("demo", {"workdir": str(tmp_path)})
    experiment_id = tracking.configure(settings)
    client = mlflow.MlflowClient()
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "genai_development")  # an older store
    tracking.configure(settings)
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    run_id = client.create_run(experiment_id).info.run_id
    assert tracking.run_url(settings, run_id, "http://127.0.0.1:5001") == \
        f"http://127.0.0.1:5001/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def test_runs_carry_the_real_times_a_description_and_the_parquet_splits(tmp_path: Path) -> None:
    import polars as pl

    settings = settings_for("demo", {"workdir": str(tmp_path)})
    train = {"started": "2025-01-02T03:04:05+00:00", "finished": "2025-01-02T03:14:05+00:00"}
    evaluate = {"started": "2025-01-02T03:20:00+00:00", "finished": "2025-01-02T03:21:30+00:00"}
    start, end = tracking.span([train, evaluate, None])
    assert (start, end) == (1735787045000, 1735788090000) == (tracking.iso_ms(train["started"]),
                                                               tracking.iso_ms(evaluate["finished"]))
    assert tracking.span([None]) == (None, None)
    run = tracking.find_or_create_run(settings, "elmrec · tiny", {}, match={"prefect.flow_run_id": "t"}, start_ms=start)
    tracking.finish(settings, run, end_ms=end)
    (found,) = tracking.find_runs(settings)
    assert (found["start_time"], found["end_time"]) == (start, end) and tracking.started_ms(settings, run) == start

    log = tracking.RunLog(run)
    log.describe("| row | hr@10 |")
    parquet = tmp_path / "interactions.parquet"
    pl.DataFrame({"user": [1, 1, 1, 2, 2, 2, 2], "split": ["train", "valid", "test", "train", "train", "valid",
                                                           "test"]}).write_parquet(parquet)
    log.splits(parquet, "tiny", {"train": "training", "valid": "validation", "test": "evaluation"})
    recorded = mlflow.MlflowClient().get_run(run)
    assert recorded.data.tags["mlflow.note.content"] == "| row | hr@10 |"
    inputs = {i.dataset.name: (json.loads(i.dataset.profile)["num_rows"], json.loads(i.dataset.source),
                               {t.key: t.value for t in i.tags}["mlflow.data.context"])
              for i in recorded.inputs.dataset_inputs}
    assert inputs == {"tiny · train": (3, {"uri": str(parquet)}, "training"),
                      "tiny · valid": (2, {"uri": str(parquet)}, "validation"),
                      "tiny · test": (2, {"uri": str(parquet)}, "evaluation")}
