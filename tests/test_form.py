"""The typed form of a run's common settings, and the `elmrec` flow's parameter schema the Prefect UI renders."""

from typing import Any, get_args

import pytest
from pydantic import ValidationError

from elmrec.config import Settings, settings_for
from elmrec.data.sources import P5_SHA256
from elmrec.form import TARGETS, CommonSettings, P5Dataset


def setting_schema(dotted: str) -> dict[str, Any]:
    """The JSON schema of one setting, its null branch dropped: {"type": "integer", "minimum": 3}, ..."""
    model: Any = Settings
    *parents, name = dotted.split(".")
    for part in parents:
        model = model.model_fields[part].annotation
    schema = model.model_json_schema()["properties"][name]
    kinds = [branch for branch in schema.get("anyOf", [schema]) if branch.get("type") != "null"]
    assert len(kinds) == 1, (dotted, schema)
    return {k: v for k, v in kinds[0].items() if k not in ("title", "description", "default")}


def form_schema() -> dict[str, Any]:
    return {name: {k: v for k, v in field.items() if k not in ("title", "description")}
            for name, field in CommonSettings.model_json_schema()["properties"].items()}


def test_every_field_sets_a_setting_and_takes_what_it_takes() -> None:
    assert set(TARGETS) == set(CommonSettings.model_fields)
    for name, field in form_schema().items():
        target = setting_schema(TARGETS[name])
        if name == "dataset":  # any name for a local source; the form offers the P5 datasets
            assert target == {"type": "string"} and field == {"type": "string", "enum": sorted(P5_SHA256)}
        else:
            assert field == target, (name, field, target)
    assert set(get_args(P5Dataset)) == set(P5_SHA256)


def test_set_fields_become_nested_overrides_and_empty_ones_keep_the_preset() -> None:
    form = CommonSettings(dataset="sports", max_users=200, epochs=2, device="cpu", eval_users=50)
    assert form.overrides() == {"data": {"dataset": "sports", "max_users": 200}, "train": {"max_epochs": 2,
                                "device": "cpu"}, "eval": {"max_users": 50}}
    settings = settings_for("demo", form.overrides())
    assert (settings.data.max_users, settings.train.batch_size) == (200, 32)  # the demo preset's batch stays
    assert CommonSettings().overrides() == {} and form.model_dump() == {"dataset": "sports", "max_users": 200,
                                                                         "epochs": 2, "device": "cpu", "eval_users": 50}
    with pytest.raises(ValidationError, match="max_users"):
        CommonSettings(max_users=2)
    with pytest.raises(ValidationError, match="id_scheme"):
        CommonSettings.model_validate({"id_scheme": "sorted"})


def test_the_flow_parameters_are_typed_for_the_ui_form() -> None:
    from prefect.utilities.callables import parameter_schema

    from flows.elmrec import elmrec

    schema = parameter_schema(elmrec.fn).model_dump()
    form = schema["definitions"]["CommonSettings"]["properties"]
    # an object of typed fields (not `{"type": "object"}`, nor a choice between it and null): the UI shows the
    # fields at once, drop-downs for the enums, number fields for the counts, each empty by default
    assert schema["properties"]["settings"]["$ref"] == "#/definitions/CommonSettings"
    assert schema["properties"]["settings"]["default"] == {}
    assert {k: form["dataset"][k] for k in ("type", "enum")} == {"type": "string", "enum": ["beauty", "sports", "toys"]}
    assert {k: form["id_scheme"][k] for k in ("type", "enum")} == {"type": "string", "enum": ["p5", "shuffled"]}
    assert {k: form["max_users"][k] for k in ("type", "minimum")} == {"type": "integer", "minimum": 3}
    assert not any("default" in field or "anyOf" in field for field in form.values())
    assert schema["properties"]["preset"]["enum"] == ["paper", "mini", "demo"]
    assert {"format": "uuid", "type": "string"} in schema["properties"]["rerun_of"]["anyOf"]
    assert all(p.get("description") for p in schema["properties"].values())  # from the flow's docstring
    assert schema["properties"]["overrides"]["anyOf"][0]["type"] == "object"  # arbitrary settings still reachable
