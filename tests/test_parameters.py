"""A flow run's settings from its parameters: preset < rerun_of's run < the typed form < overrides."""

from typing import Any

import pytest

from tasks.parameters import RunSettings, resolve

DEMO = {"preset": "demo", "variants": None}  # the demo deployment's defaults (and the flow's)
FIRST = "11111111-1111-1111-1111-111111111111"


def earlier_runs(runs: dict[str, dict[str, Any]]) -> Any:
    def read(flow_run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if flow_run_id not in runs:
            raise ValueError(f"rerun_of: no flow run {flow_run_id} on this Prefect server")
        return runs[flow_run_id], DEMO
    return read


def test_without_rerun_of_the_form_is_merged_under_the_overrides() -> None:
    parameters = {"preset": "mini", "settings": {"max_users": 200, "seed": 3}, "overrides": {"seed": 7}}
    assert resolve(parameters, DEMO, earlier_runs({})) == RunSettings(
        "mini", {"data": {"max_users": 200}, "seed": 7}, None)


def test_rerun_of_takes_the_earlier_runs_settings_and_this_runs_own_win() -> None:
    first = {"preset": "mini", "settings": {"dataset": "sports"}, "overrides": {"data": {"max_users": 200},
                                                                                "eval": {"max_users": 4}},
             "variants": ["elmrec", "pod"], "stages": None}
    read = earlier_runs({FIRST: first, "second": {"preset": "demo", "rerun_of": FIRST,
                                                  "overrides": {"eval": {"max_users": 8}}}})
    # `--param rerun_of=<id> --param stages='["evaluate"]'`: everything as the first run
    assert resolve({"preset": "demo", "rerun_of": FIRST, "stages": ["evaluate"]}, DEMO, read) == RunSettings(
        "mini", {"data": {"dataset": "sports", "max_users": 200}, "eval": {"max_users": 4}}, ["elmrec", "pod"])
    # this run's own preset, variants, form and overrides win; the rest stays the earlier run's
    mine = {"preset": "paper", "variants": ["sasrec"], "settings": {"max_users": 300}, "overrides": {"seed": 1},
            "rerun_of": FIRST}
    assert resolve(mine, DEMO, read) == RunSettings(
        "paper", {"data": {"dataset": "sports", "max_users": 300}, "eval": {"max_users": 4}, "seed": 1}, ["sasrec"])
    # a rerun of a rerun: the chain is followed
    assert resolve({"preset": "demo", "rerun_of": "second"}, DEMO, read) == RunSettings(
        "mini", {"data": {"dataset": "sports", "max_users": 200}, "eval": {"max_users": 8}}, ["elmrec", "pod"])
    with pytest.raises(ValueError, match="rerun_of: no flow run nope"):
        resolve({"rerun_of": "nope"}, DEMO, read)


def test_a_deployments_own_defaults_do_not_count_as_set_by_the_run() -> None:
    ablation = {"preset": "mini", "variants": ["elmrec", "pod"]}  # what a deployment passes to every run
    read = earlier_runs({FIRST: {"preset": "demo", "variants": ["sasrec"], "overrides": {"seed": 5}}})
    assert resolve({**ablation, "rerun_of": FIRST}, ablation, read) == RunSettings("demo", {"seed": 5}, ["sasrec"])
