"""A stage is up to date only while the fingerprint recorded beside its output matches today's."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from elmrec import stages
from elmrec.config import Settings, Stage, settings_for
from elmrec.data.download import download
from elmrec.data.preprocess import preprocess
from elmrec.paths import WorkPaths
from elmrec.stages import (
    NOT_SHAPING,
    RECORD,
    MissingUpstream,
    check_stages,
    fingerprint,
    import_closure,
    missing_upstream,
    read_record,
    recording,
    sources,
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


def test_the_import_closure_follows_every_import_form_and_stops_at_modules_that_shape_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "pkgz"
    package.mkdir()
    files = {"__init__": "", "a": "import os\nfrom pkgz import b\nfrom pkgz.c import thing\n",
             "b": "import pkgz.d\nfrom pkgz.config import X\nfrom . import e\n", "c": "thing = 1\n", "d": "",
             "config": "from pkgz import f\n", "e": "", "f": ""}
    for name, text in files.items():
        (package / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    # a -> b, c (a module's name imported from it); b -> d (plain import); config: left out, f not reached;
    # relative imports are not followed (the library uses none)
    assert import_closure(("pkgz.a",), "pkgz", frozenset({"pkgz.config"})) == ("pkgz.a", "pkgz.b", "pkgz.c", "pkgz.d")
    sys.modules.pop("pkgz", None)


def test_a_stage_fingerprints_the_helpers_its_modules_reach(local: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    sasrec, ours = local.model_copy(update={"recommender": "sasrec"}), local
    assert {"elmrec.sasrec", "elmrec.softmax_loss", "elmrec.users", "elmrec.classic_eval"} <= set(
        sources(sasrec, "train"))  # softmax_loss: imported by sasrec alone
    assert {"elmrec.train", "elmrec.step", "elmrec.model", "elmrec.device", "elmrec.users"} <= set(
        sources(ours, "train"))
    assert "elmrec.data.sources" in sources(ours, "download")  # the pinned SHA-256 sums
    for recommender in ("elmrec", "sasrec", "lightgcn"):
        each = local.model_copy(update={"recommender": recommender})
        for stage in [s.value for s in Stage] + ["baselines"]:
            found = set(sources(each, stage))
            assert found and not found & NOT_SHAPING
            assert not {m for m in found if m.startswith("elmrec.app") or m in ("elmrec.tracking", "elmrec.registry")}
    before = {stage: fingerprint(ours, stage) for stage in ("graph", "train")}
    real = stages.source_digest
    monkeypatch.setattr(stages, "source_digest", lambda m: "edited" if m == "elmrec.step" else real(m))
    assert fingerprint(ours, "train") != before["train"]  # an edit of the step alone reruns training
    assert fingerprint(ours, "graph") == before["graph"]  # and nothing that does not use it


def test_reading_a_stages_sources_imports_none_of_them() -> None:
    """The closure is read from the source files: a flow process that only checks its caches loads no torch."""
    code = ("import sys; from elmrec.config import settings_for; from elmrec.stages import sources; "
            "sources(settings_for('demo', {'recommender': 'sasrec'}), 'train'); "
            "print(sorted(m for m in ('torch', 'transformers', 'elmrec.model', 'elmrec.sasrec') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
