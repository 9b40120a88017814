"""A stage is up to date only while the fingerprint recorded beside its output matches today's."""

import json
import re
from pathlib import Path

import pytest

from elmrec.config import Settings, Stage, settings_for
from elmrec.data.download import download
from elmrec.data.preprocess import preprocess
from elmrec.paths import WorkPaths
from elmrec.stages import (
    RECORD,
    MissingUpstream,
    check_stages,
    fingerprint,
    missing_upstream,
    read_record,
    recording,
    up_to_date,
)
from tests.conftest import write_p5


@pytest.fixture
def local(tmp_path: Path, tiny_histories) -> Settings:
    raw = write_p5(tmp_path / "mine", tiny_histories, n_items=150)
    return settings_for("demo", {"workdir": str(tmp_path / "work"),
                                 "data": {"dataset": "tiny", "source": "local", "path": str(raw)}})


def run_download(settings: Settings) -> None:
    with recording(settings, "download"):
        download(settings.data, WorkPaths.from_settings(settings).raw, None)


def test_a_recorded_stage_is_up_to_date_until_the_users_file_changes(local: Settings) -> None:
    assert not up_to_date(local, "download")  # nothing stored yet
    run_download(local)
    record = read_record(local, "download")
    assert record is not None and record["stage"] == "download"
    assert record["fingerprint"] == fingerprint(local, "download") and record["started"] <= record["finished"]
    assert up_to_date(local, "download")
    source = Path(local.data.path) / "sequential.txt"
    source.write_text(source.read_text() + "5 1 2 3\n")
    assert not up_to_date(local, "download")
    run_download(local)
    assert up_to_date(local, "download")


def test_downstream_sees_the_new_upstream_output_through_its_input_digest(local: Settings) -> None:
    paths = WorkPaths.from_settings(local)
    run_download(local)
    with recording(local, "preprocess"):
        preprocess(local.data, local.seed, paths.raw, paths.data)
    assert up_to_date(local, "preprocess")
    (paths.raw / "sequential.txt").write_text((paths.raw / "sequential.txt").read_text() + "5 1 2 3\n")
    assert not up_to_date(local, "preprocess")


def test_a_damaged_or_missing_record_means_not_up_to_date(local: Settings) -> None:
    run_download(local)
    record = WorkPaths.from_settings(local).raw / RECORD
    record.write_text("{not json")
    assert not up_to_date(local, "download") and read_record(local, "download") is None
    record.write_text(json.dumps({"stage": "download"}))
    assert not up_to_date(local, "download")
    record.unlink()
    assert not up_to_date(local, "download")


def test_a_failed_stage_records_nothing(local: Settings) -> None:
    with pytest.raises(RuntimeError), recording(local, "download"):
        raise RuntimeError("the stage failed")
    assert read_record(local, "download") is None


def test_missing_upstream_names_the_stage_to_run_first(local: Settings) -> None:
    paths = WorkPaths.from_settings(local)
    assert missing_upstream(local, "download") is None  # its inputs are the user's own files
    assert missing_upstream(local, "preprocess") == (paths.raw, "download")
    assert missing_upstream(local, "evaluate") == (paths.data.interactions, "preprocess")


def test_a_flow_checks_the_inputs_of_the_stages_it_runs_before_any_of_them(local: Settings) -> None:
    paths = WorkPaths.from_settings(local)
    check_stages([local], [local], list(Stage))  # every stage: each one's inputs come from the one before
    check_stages([local], [local], [Stage.DOWNLOAD, Stage.PREPROCESS])
    raw = re.escape(str(paths.raw))  # the message as `elmrec task` words it
    with pytest.raises(MissingUpstream, match=rf"^{raw} is missing; run `elmrec task download` first \(same options\)"):
        check_stages([local], [local], [Stage.PREPROCESS, Stage.GRAPH])
    with pytest.raises(MissingUpstream, match=r"interactions\.parquet is missing; run `elmrec task preprocess`"):
        check_stages([local], [local], [Stage.EVALUATE])  # the baselines' data first
    run_download(local)
    check_stages([local], [local], [Stage.PREPROCESS, Stage.GRAPH, Stage.TRAIN, Stage.EVALUATE])
    preprocess(local.data, local.seed, paths.raw, paths.data)
    with pytest.raises(MissingUpstream, match=r"adjacency\.npz is missing; run `elmrec task graph`"):
        check_stages([local], [local], [Stage.TRAIN])
    attempt = paths.run(local).attempt.checkpoint
    with pytest.raises(MissingUpstream, match="checkpoint is missing; run `elmrec task train`"):
        check_stages([local], [local], [Stage.GRAPH, Stage.EVALUATE])
    attempt.mkdir(parents=True)  # an unfinished training: enough when asked to evaluate it anyway
    check_stages([local], [local], [Stage.GRAPH, Stage.EVALUATE], allow_unfinished=True)
