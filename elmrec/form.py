"""The settings a run changes most often, as typed fields: the `settings` parameter of the `elmrec` flow, which
the Prefect UI renders as a form (enums as drop-downs, numbers as number fields) instead of a bare dict.

A field left empty (None) keeps the preset's value. Everything else stays reachable through the flow's
`overrides` dict, which wins over these fields (as `--set` wins over `--dataset` on the command line).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    WithJsonSchema,
    model_serializer,
)

from elmrec.config import EvalPrecision, deep_merge

P5Dataset = Literal["beauty", "sports", "toys"]  # the p5 source's datasets (a test keeps them equal to its list)

# form field -> the dotted setting it sets (elmrec.config.Settings): the one table of what the form reaches
TARGETS: dict[str, str] = {
    "dataset": "data.dataset", "max_users": "data.max_users", "id_scheme": "data.id_scheme",
    "graph_edges": "data.graph_edges", "mirror": "data.mirror", "seed": "seed", "epochs": "train.max_epochs",
    "batch_size": "train.batch_size", "device": "train.device", "precision": "train.precision",
    "split": "eval.split", "eval_users": "eval.max_users", "eval_precision": "eval.precision",
}


def shown_as(kind: Any) -> WithJsonSchema:
    """The JSON schema of `kind` alone for a `kind | None` field: the form shows a plain drop-down or number field
    that may be left empty, not a choice between `kind` and null (None still validates: keep the preset's)."""
    return WithJsonSchema(TypeAdapter(kind).json_schema())


Users = Annotated[int, Field(ge=3)]  # as data.max_users
Count = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=0)]
IdScheme = Literal["p5", "shuffled"]
GraphEdges = Literal["train", "all"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]
Split = Literal["valid", "test"]


def _no_null_defaults(schema: dict[str, Any]) -> None:
    for field in schema.get("properties", {}).values():
        field.pop("default", None)  # an empty field, not a null one


class CommonSettings(BaseModel):
    """Common settings; an empty field keeps the preset's value, `overrides` reaches any other setting."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Common settings",
                              json_schema_extra=_no_null_defaults)

    dataset: Annotated[P5Dataset | None, shown_as(P5Dataset)] = Field(
        None, description="data.dataset (P5 source; other data: overrides)")
    max_users: Annotated[Users | None, shown_as(Users)] = Field(
        None, description="data.max_users: keep the first N users only")
    id_scheme: Annotated[IdScheme | None, shown_as(IdScheme)] = Field(
        None, description="data.id_scheme: shuffled removes the item-ID order leak")
    graph_edges: Annotated[GraphEdges | None, shown_as(GraphEdges)] = Field(
        None, description="data.graph_edges: all leaks held-out edges into the graph")
    mirror: Annotated[str | None, shown_as(str)] = Field(
        None, description="data.mirror: a folder or URL in place of the public copies")
    seed: Annotated[Seed | None, shown_as(Seed)] = Field(None, description="seed of every random choice")
    epochs: Annotated[Count | None, shown_as(Count)] = Field(None, description="train.max_epochs")
    batch_size: Annotated[Count | None, shown_as(Count)] = Field(None, description="train.batch_size")
    device: Annotated[Device | None, shown_as(Device)] = Field(None, description="train.device")
    precision: Annotated[Precision | None, shown_as(Precision)] = Field(None, description="train.precision")
    split: Annotated[Split | None, shown_as(Split)] = Field(None, description="eval.split: the split evaluated")
    eval_users: Annotated[Count | None, shown_as(Count)] = Field(
        None, description="eval.max_users: evaluate the first N users only")
    eval_precision: Annotated[EvalPrecision | None, shown_as(EvalPrecision)] = Field(
        None, description="eval.precision: bf16 ranks faster, near-tied candidates may swap places")

    @model_serializer(mode="wrap")
    def _set_fields_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Only the fields that are set: a flow run's parameters show what it changed."""
        return {name: value for name, value in handler(self).items() if value is not None}

    def overrides(self) -> dict[str, Any]:
        """The nested overrides of the fields that are set, e.g. {"data": {"max_users": 200}, "seed": 7}."""
        nested: dict[str, Any] = {}
        for name, value in self.model_dump(exclude_none=True).items():
            for part in reversed(TARGETS[name].split(".")):
                value = {part: value}
            nested = deep_merge(nested, value)
        return nested


NO_CHANGES = CommonSettings()  # every field empty: the preset's values (the flow's default)
