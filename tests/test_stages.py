"""A stage is up to date only while the fingerprint recorded beside its output matches today's."""

import json
from pathlib import Path

import pytest

from elmrec.config import Settings, settings_for
from elmrec.data.download import download
from elmrec.data.preprocess import preprocess
from elmrec.paths import WorkPaths
from elmrec.stages import RECORD, fingerprint, missing_upstream, read_record, recording, up_to_date
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
