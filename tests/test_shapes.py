"""Output folders are keyed by everything that shapes them, and by nothing else."""

from pathlib import Path

import polars as pl

from elmrec.config import settings_for, variant_settings
from elmrec.data.download import download
from elmrec.data.preprocess import preprocess
from elmrec.paths import WorkPaths
from elmrec.shapes import UPSTREAM, data_label, data_settings, key, own_settings
from tests.conftest import write_p5


def paths_of(tmp_path: Path, **data) -> WorkPaths:
    return WorkPaths.from_settings(settings_for("demo", {"workdir": str(tmp_path), "data": data}))


def test_every_stage_is_in_the_table_and_its_upstream_too() -> None:
    settings = settings_for("demo")
    for stage, upstream in UPSTREAM.items():
        assert set(upstream) <= set(UPSTREAM)
        assert isinstance(own_settings(settings, stage), dict)


def test_settings_that_shape_data_give_separate_folders(tmp_path: Path) -> None:
    default = paths_of(tmp_path)
    fewer = paths_of(tmp_path, n_negatives=49)
    assert fewer.derived != default.derived and fewer.raw == default.raw  # same source, other candidates
    assert paths_of(tmp_path, kcore=3).derived != default.derived
    assert paths_of(tmp_path, id_scheme="shuffled").derived.name.startswith("shuffled-seed2024-u2000-")
    assert paths_of(tmp_path, graph_edges="all").derived == default.derived  # the graph folder differs instead
    assert paths_of(tmp_path, graph_edges="all").graph.root.name == "graph-all"


def test_a_local_source_never_shares_the_p5_folders_of_its_dataset_name(tmp_path: Path) -> None:
    p5 = paths_of(tmp_path, dataset="beauty")
    local = paths_of(tmp_path, dataset="beauty", source="local", path=str(tmp_path / "mine"))
    other = paths_of(tmp_path, dataset="beauty", source="local", path=str(tmp_path / "other"))
    assert len({p5.raw, local.raw, other.raw}) == 3 and len({p5.derived, local.derived, other.derived}) == 3
    assert p5.raw.parent == local.raw.parent == tmp_path / "beauty"
    assert p5.raw.name.startswith("raw-p5-") and local.raw.name.startswith("raw-local-")


def test_settings_that_shape_nothing_change_no_folder(tmp_path: Path) -> None:
    base = settings_for("demo", {"workdir": str(tmp_path)})
    other = settings_for("demo", {"workdir": str(tmp_path), "train": {"device": "cpu", "nproc": 4},
                                  "eval": {"batch_size": 7}, "tracking_uri": "sqlite:///x.db",
                                  "model": {"model_mirror": "/elsewhere"}})
    assert [key(base, stage) for stage in UPSTREAM] == [key(other, stage) for stage in UPSTREAM]
    assert WorkPaths.from_settings(base).run(base) == WorkPaths.from_settings(other).run(other)


def test_a_data_setting_changes_every_key_downstream_of_it() -> None:
    base = settings_for("demo")
    fewer = settings_for("demo", {"data": {"n_negatives": 49}})
    assert [stage for stage in UPSTREAM if key(base, stage) != key(fewer, stage)] == [
        "preprocess", "graph", "train", "evaluate", "baselines"]


def test_pod_is_alpha_zero_and_decoding_variants_share_a_checkpoint(tmp_path: Path) -> None:
    base = settings_for("demo", {"workdir": str(tmp_path)})
    paths = WorkPaths.from_settings(base)
    pod, decoding = variant_settings(base, "pod"), variant_settings(base, "paper_decoding")
    assert pod.model.alpha == 0.0 and paths.run(pod) != paths.run(base)
    assert paths.run(decoding) == paths.run(base)
    assert paths.run(decoding).evaluation(decoding) != paths.run(base).evaluation(base)
    sasrec = variant_settings(base, "sasrec")
    assert paths.run(sasrec).root.name.startswith("sasrec-")
    assert key(variant_settings(base, "shuffled_ids"), "download") == key(base, "download")


def test_fewer_negatives_and_the_default_keep_their_own_candidates(tmp_path: Path, tiny_histories) -> None:
    raw = write_p5(tmp_path / "mine", tiny_histories, n_items=150)
    lengths = {}
    for n_negatives in (49, 99, 49):  # the default run in between must not disturb the first
        settings = settings_for("demo", {"workdir": str(tmp_path / "work"), "data": {
            "dataset": "tiny", "source": "local", "path": str(raw), "n_negatives": n_negatives}})
        paths = WorkPaths.from_settings(settings)
        if not paths.data.candidates.is_file():
            download(settings.data, paths.raw, None)
            preprocess(settings.data, settings.seed, paths.raw, paths.data)
        lengths[n_negatives] = set(pl.read_parquet(paths.data.candidates)["candidates"].list.len())
    assert lengths == {49: {50}, 99: {100}}


def test_data_settings_keep_one_per_distinct_data_and_graph_output() -> None:
    base = settings_for("demo")
    variants = [variant_settings(base, name) for name in ("elmrec", "pod", "shuffled_ids", "leaky_graph", "sasrec")]
    found = data_settings(base, variants)
    assert list(found) == ["", "id_scheme=shuffled", "graph_edges=all"]
    assert found[""] is base and found["id_scheme=shuffled"].data.id_scheme == "shuffled"
    assert data_label(base, variants[1]) == "" and data_label(base, variants[3]) == "graph_edges=all"


def test_an_evaluation_in_bf16_keeps_its_own_folder_beside_fp32s_from_one_checkpoint(tmp_path: Path) -> None:
    base = settings_for("demo", {"workdir": str(tmp_path)})
    bf16 = settings_for("demo", {"workdir": str(tmp_path), "eval": {"precision": "bf16"}})
    paths = WorkPaths.from_settings(base)
    assert base.eval.precision == "fp32"
    assert [stage for stage in UPSTREAM if key(base, stage) != key(bf16, stage)] == ["evaluate"]
    assert paths.run(bf16) == paths.run(base)
    assert paths.run(bf16).evaluation(bf16) != paths.run(base).evaluation(base)
