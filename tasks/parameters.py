"""The settings of an `elmrec` flow run from its parameters: one precedence for the flow body, its run name and
its failure hook.

    preset  <  rerun_of (the earlier flow run's settings)  <  settings (the typed form)  <  overrides

`rerun_of=<flow-run id>` reads that flow run's parameters from the Prefect API (following its own `rerun_of`,
if any) and takes its preset, typed settings, overrides and variants, unless this run sets its own:
- `settings` and `overrides` of this run are merged key by key over the earlier run's;
- `variants` of this run replace the earlier run's when they differ from this run's default;
- `preset` of this run wins when it differs from this run's default.
A default is the deployment's parameter (`prefect.yaml`), or without a deployment the flow's signature's, so
`prefect deployment run elmrec/demo --param rerun_of=<id> --param stages='["evaluate"]'` reruns evaluation
with exactly the settings of run <id>.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any
from uuid import UUID

from elmrec.config import deep_merge
from elmrec.form import CommonSettings

DEFAULT_PRESET = "demo"  # the `elmrec` flow's default preset
FLOW = "elmrec"  # the flow whose runs `rerun_of` may name


@dataclass(frozen=True)
class RunSettings:
    """What a flow run's settings are made of: settings_for(preset, overrides), then each variant's own."""

    preset: str
    overrides: dict[str, Any]  # the typed form's and the overrides dict's, merged over an earlier run's
    variants: list[str] | None  # None: the flow's default (elmrec)


EarlierRun = Callable[[str], tuple[dict[str, Any], dict[str, Any]]]  # flow-run id -> (parameters, defaults)


def resolve(parameters: Mapping[str, Any], defaults: Mapping[str, Any], earlier: EarlierRun) -> RunSettings:
    """The settings of a run with these `parameters`, whose unset parameters have these `defaults` ({preset,
    variants}); `earlier` reads a flow run named by `rerun_of` (default: from the Prefect API)."""
    form = parameters.get("settings")
    own = deep_merge(CommonSettings.model_validate(form).overrides() if form else {}, parameters.get("overrides") or {})
    preset = str(parameters.get("preset") or defaults.get("preset") or DEFAULT_PRESET)
    variants = list(parameters["variants"]) if parameters.get("variants") else None
    if not parameters.get("rerun_of"):
        return RunSettings(preset, own, variants)
    before = resolve(*earlier(str(parameters["rerun_of"])), earlier)
    default_variants = list(defaults["variants"]) if defaults.get("variants") else None
    return RunSettings(preset if preset != defaults.get("preset", DEFAULT_PRESET) else before.preset,
                       deep_merge(before.overrides, own),
                       variants if variants != default_variants else before.variants)


def run_settings(parameters: Mapping[str, Any], deployment_id: UUID | str | None,
                 default_preset: str = DEFAULT_PRESET, earlier: EarlierRun | None = None) -> RunSettings:
    """resolve() for a flow run of a deployment (its parameters are the defaults) or of no deployment."""
    defaults: dict[str, Any] = {"preset": default_preset, "variants": None}
    if parameters.get("rerun_of") and deployment_id:  # defaults matter only against an earlier run
        defaults.update(deployment_parameters(str(deployment_id)))
    return resolve(parameters, defaults, earlier or read_flow_run)


@cache
def read_flow_run(flow_run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(parameters, defaults) of an earlier run of the `elmrec` flow, from the Prefect API; a ValueError naming
    `rerun_of` when there is no such run."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        run_id = UUID(flow_run_id)
    except ValueError:
        raise ValueError(f"rerun_of: not a flow-run id: {flow_run_id!r}") from None
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(run_id)
        except ObjectNotFound:
            raise ValueError(f"rerun_of: no flow run {flow_run_id} on this Prefect server") from None
        flow = client.read_flow(run.flow_id)
    if flow.name != FLOW:
        raise ValueError(f"rerun_of: flow run {flow_run_id} is a run of `{flow.name}`, not of `{FLOW}`")
    defaults = {"preset": DEFAULT_PRESET, "variants": None}
    if run.deployment_id:
        defaults.update(deployment_parameters(str(run.deployment_id)))
    return dict(run.parameters or {}), defaults


@cache
def deployment_parameters(deployment_id: str) -> dict[str, Any]:
    """A deployment's default parameters ({} once the deployment is gone)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return dict(client.read_deployment(UUID(deployment_id)).parameters or {})
        except ObjectNotFound:
            return {}
