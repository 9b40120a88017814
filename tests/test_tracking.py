from pathlib import Path

import mlflow

from elmrec import tracking
from elmrec.config import settings_for


def test_runs_are_found_again_by_tags_and_log_without_global_state(tmp_path: Path) -> None:
    settings = settings_for("demo", {"workdir": str(tmp_path)})
    parent = tracking.find_or_create_run(settings, "flow-run-name", {"preset": "demo"},
                                         match={"prefect.flow_run_id": "f1"})
    assert tracking.find_or_create_run(settings, "other", {}, match={"prefect.flow_run_id": "f1"}) == parent  # retried
    child = tracking.find_or_create_run(settings, "elmrec", {}, match={"prefect.flow_run_id": "f1", "role": "variant"},
                                        parent_run_id=parent)
    log = tracking.RunLog(child)
    log.metrics({"direct": {"hr@10": 0.25, "mode": "score"}, "flag": True}, prefix="test.", step=3)
    log.params({"train": {"lr": 0.001}})
    log.params({"train": {"lr": 0.5}})  # params are write-once: a retried run keeps the first value
    tracking.finish(settings, child)
    (recorded,) = [r for r in tracking.find_runs(settings) if r["run_id"] == child]
    assert recorded["metrics"] == {"test.direct.hr_at_10": 0.25}
    assert recorded["params"] == {"train.lr": "0.001"}
    assert recorded["tags"]["mlflow.parentRunId"] == parent and recorded["status"] == "FINISHED"
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(child, "test.direct.hr_at_10")] == [3]
    assert (tmp_path / "mlflow.db").is_file()
    assert set(tracking.environment_tags()) >= {"git.commit", "version.torch", "version.prefect"}
