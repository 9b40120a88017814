from pathlib import Path

import pytest
from pydantic import ValidationError

from elmrec.config import PRESETS, VARIANTS, Preset, Task, Variant, paper_overrides, settings_for, variant_settings
from elmrec.paths import WorkPaths


def test_presets_validate_and_overrides_merge(tmp_path: Path) -> None:
    for name in PRESETS:
        settings_for(name, {"workdir": str(tmp_path)})
    settings = settings_for("demo", {"workdir": str(tmp_path), "data": {"dataset": "Sports"}, "seed": 3})
    assert settings.data.dataset == "sports" and settings.data.max_users == 2000 and settings.seed == 3
    assert settings.workdir == tmp_path.resolve()
    assert settings.resolved_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_bad_values_name_the_setting() -> None:
    with pytest.raises(ValidationError, match=r"data.id_scheme\n  Input should be 'p5' or 'shuffled'"):
        settings_for("demo", {"data": {"id_scheme": "random"}})
    with pytest.raises(ValidationError, match=r"train.bogus\n  Extra inputs are not permitted"):
        settings_for("demo", {"train": {"bogus": 1}})
    with pytest.raises(ValueError, match=r"unknown preset 'huge'; known: \['demo', 'mini', 'paper'\]"):
        settings_for("huge")


def test_workdir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ELMREC_WORKDIR", str(tmp_path / "w"))
    assert settings_for("paper").workdir == (tmp_path / "w").resolve()


def test_paper_hyperparameters() -> None:
    assert paper_overrides("beauty", Task.DIRECT) == {"model": {"alpha": 9, "sigma": 6, "n_layers": 4},
                                                      "eval": {"rerank_n": 15}}
    assert paper_overrides("sports", Task.SEQUENTIAL)["model"]["alpha"] == 1
    with pytest.raises(ValueError, match="no paper hyper-parameters for dataset 'movies'"):
        paper_overrides("movies", Task.DIRECT)


def test_paths_separate_settings_that_shape_data(tmp_path: Path) -> None:
    a = WorkPaths.from_settings(settings_for("paper", {"workdir": str(tmp_path)}))
    b = WorkPaths.from_settings(settings_for("paper", {"workdir": str(tmp_path), "data": {"id_scheme": "shuffled"}}))
    c = WorkPaths.from_settings(settings_for("demo", {"workdir": str(tmp_path)}))
    assert a.raw == b.raw == c.raw
    assert len({a.data.root, b.data.root, c.data.root}) == 3
    assert a.data.root == tmp_path.resolve() / "beauty" / "p5-seed2024" / "data"
    assert a.graph.root.name == "graph-train"


def test_literal_types_list_every_preset_and_variant() -> None:
    assert set(Preset.__args__) == set(PRESETS)
    assert set(Variant.__args__) == set(VARIANTS)


def test_variants_are_one_setting_away() -> None:
    base = settings_for("demo", {"data": {"dataset": "sports"}})
    assert variant_settings(base, "pod").model.variant == "pod"
    assert variant_settings(base, "paper_decoding").eval.direct_mode == "beam"
    tuned = variant_settings(base, "sequential_tuned")
    assert (tuned.model.alpha, tuned.model.sigma, tuned.eval.rerank_n) == (1, 5, 10)
    assert variant_settings(base, "elmrec") == base
    with pytest.raises(ValueError, match="unknown variant 'big'"):
        variant_settings(base, "big")
