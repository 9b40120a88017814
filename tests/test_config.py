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
    assert a.data.root.parent.parent == tmp_path.resolve() / "beauty" and a.data.root.name == "data"
    assert a.data.root.parent.name.startswith("p5-seed2024-")
    assert a.graph.root.name == "graph-train"


def test_literal_types_list_every_preset_and_variant() -> None:
    assert set(Preset.__args__) == set(PRESETS)
    assert set(Variant.__args__) == set(VARIANTS)


def test_variants_are_one_setting_away() -> None:
    base = settings_for("demo", {"data": {"dataset": "sports"}})
    assert variant_settings(base, "pod").model.alpha == 0.0
    assert variant_settings(base, "paper_decoding").eval.direct_decoders == ["score", "beam"]
    tuned = variant_settings(base, "sequential_tuned")
    assert (tuned.model.alpha, tuned.model.sigma, tuned.eval.rerank_n) == (1, 5, 10)
    assert variant_settings(base, "elmrec") == base
    with pytest.raises(ValueError, match="unknown variant 'big'"):
        variant_settings(base, "big")


@pytest.mark.parametrize(
    ("overrides", "field", "problem"),
    [
        ({"train": {"lr": 0}}, "train.lr", "greater than 0"),
        ({"train": {"lr": 2.0}}, "train.lr", "less than or equal to 1"),
        ({"eval": {"top_n": 0}}, "eval.top_n", "greater than or equal to 1"),
        ({"eval": {"direct_beams": 0}}, "eval.direct_beams", "greater than or equal to 1"),
        ({"eval": {"sequential_beams": -1}}, "eval.sequential_beams", "greater than or equal to 1"),
        ({"eval": {"rerank_n": -1}}, "eval.rerank_n", "greater than or equal to 0"),
        ({"eval": {"batch_size": 0}}, "eval.batch_size", "greater than or equal to 1"),
        ({"eval": {"max_users": 0}}, "eval.max_users", "greater than or equal to 1"),
        ({"model": {"alpha": -1}}, "model.alpha", "greater than or equal to 0"),
        ({"model": {"sigma": 0}}, "model.sigma", "greater than 0"),
        ({"model": {"incremental_size": 1}}, "model.incremental_size", "greater than or equal to 2"),
        ({"model": {"reduced": {"num_heads": 0}}}, "model.reduced.num_heads", "greater than or equal to 1"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"model": {"alpha": float("nan")}}, "model.alpha", "a finite number"),
        ({"model": {"sigma": float("inf")}}, "model.sigma", "a finite number"),
        ({"train": {"lr": "nan"}}, "train.lr", "a finite number"),
        ({"train": {"nproc": 0}}, "train.nproc", "greater than or equal to 1"),
    ],
)
def test_every_number_is_bounded_and_named(overrides: dict, field: str, problem: str) -> None:
    message = rf"1 validation error for Settings\n{field}\n  Input should be {problem}"
    with pytest.raises(ValidationError, match=message):
        settings_for("demo", overrides)


def test_dataset_must_be_known_to_its_source() -> None:
    message = r"data\n  Value error, data.dataset: unknown p5 dataset 'nope'; known: \['beauty', 'sports', 'toys'\]"
    with pytest.raises(ValidationError, match=message):
        settings_for("demo", {"data": {"dataset": "nope"}})
    with pytest.raises(ValidationError, match=r"data.dataset: unknown Amazon 2014 category 'nope'"):
        settings_for("demo", {"data": {"dataset": "nope", "source": "amazon2014"}})
    assert settings_for("demo", {"data": {"dataset": "nope", "source": "local"}}).data.dataset == "nope"
    assert settings_for("demo", {"data": {"dataset": "toys"}}).data.dataset == "toys"


def test_training_processes_need_their_devices_and_a_prompt_each() -> None:
    assert settings_for("demo", {"train": {"nproc": 2, "devices": [3, 1]}}).train.devices == [3, 1]
    for train, problem in [({"nproc": 2, "devices": [0]}, r"train.devices: \[0\] must be train.nproc \(2\) distinct"),
                           ({"nproc": 2, "devices": [1, 1]}, r"train.devices: \[1, 1\] must be"),
                           ({"devices": [0], "device": "cpu"}, r"train.devices: CUDA device indices need"),
                           ({"nproc": 4, "batch_size": 3}, r"train.nproc: 4 processes share each batch")]:
        with pytest.raises(ValidationError, match=problem):
            settings_for("demo", {"train": train})
