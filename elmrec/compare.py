"""`elmrec compare`: the comparison table of one flow run, rebuilt from its MLflow runs.

The parent run of a flow run (the latest, or the one named by `--run`: an MLflow run id, a Prefect flow-run
id or a flow-run name) and its children are read from the store; each child is one row (tag `elmrec.model`,
its data setting from `elmrec.data_setting`), its metrics mapped back to metrics.json's shape by
metrics.untracked_metrics. So the table is the one the flow published (report.comparison_table), for any
flow run in the store, and `--csv` writes the same rows as one line per row.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elmrec import tracking
from elmrec.config import Settings
from elmrec.metrics import untracked_metrics
from elmrec.report import TABLE_METRICS, Row, comparison_table, table_columns
from elmrec.tracking import DATA_TAG, FLOW_RUN_TAG, MODEL_TAG, OWN_DATA, ROLE_TAG, STATS_ARTIFACT


@dataclass(frozen=True)
class Comparison:
    """One flow run's table: its parent run, rows (baselines first, then models) and data statistics."""

    parent: dict[str, Any]
    rows: list[Row]
    stats: dict[str, Any]
    split: str

    def markdown(self) -> str:
        return comparison_table(self.rows, self.stats, self.split)

    def write_csv(self, path: Path) -> Path:
        """One line per row: row, setting, kind, then `<task> <decoder> <metric>` columns (empty: not recorded)."""
        columns = [(t, d, m) for t, d in table_columns(self.rows) for m in TABLE_METRICS]
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["row", "setting", "kind", *(" ".join(c) for c in columns)])
            for row in self.rows:
                values = [row.value(*column) for column in columns]
                writer.writerow([row.name, row.setting, "baseline" if row.baseline else "model",
                                 *("" if v is None else repr(v) for v in values)])
        return path


class NoRunError(LookupError):
    """No flow run in the store matches."""


def find_parent(settings: Settings, run: str | None = None) -> dict[str, Any]:
    """The parent MLflow run of a flow run: the latest one, or the latest matching `run` (MLflow run id, Prefect
    flow-run id, or flow-run name)."""
    uri = settings.resolved_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise NoRunError(f"no MLflow store at {uri.removeprefix('sqlite:///')}")
    parents = f"tags.`{ROLE_TAG}` = 'parent'"
    if run is None:
        queries = [parents]
    else:
        quoted = run.replace("'", "\\'")
        queries = [f"{parents} and attributes.run_id = '{quoted}'",
                   f"{parents} and tags.`{FLOW_RUN_TAG}` = '{quoted}'",
                   f"{parents} and attributes.run_name = '{quoted}'"]
    for query in queries:
        if found := tracking.find_runs(settings, query):
            return found[0]
    raise NoRunError(f"no flow run {'matches ' + repr(run) if run else 'recorded'} in {uri}")


def comparison(settings: Settings, run: str | None = None) -> Comparison:
    """The comparison of a flow run (see `find_parent`), rebuilt from its child runs' metrics."""
    parent = find_parent(settings, run)
    split = parent["params"].get("eval.split", "test")
    children = tracking.find_runs(settings, f"tags.`mlflow.parentRunId` = '{parent['run_id']}'")
    rows = [Row(child["tags"][MODEL_TAG], untracked_metrics(child["metrics"], split),
                "" if child["tags"].get(DATA_TAG, OWN_DATA) == OWN_DATA else child["tags"][DATA_TAG],
                baseline=child["tags"].get(ROLE_TAG) == "baseline")
            for child in children if MODEL_TAG in child["tags"]]
    text = tracking.read_artifact_text(settings, parent["run_id"], STATS_ARTIFACT)
    stats = json.loads(text) if text else {}
    variants = parent["tags"].get("elmrec.variants", "").split(",")
    return Comparison(parent, sorted(rows, key=lambda row: _order(row, variants)), stats, split)


def _order(row: Row, variants: Sequence[str]) -> tuple[Any, ...]:
    """The flow's order: baselines (the run's own data first, by name), then models in the flow run's order."""
    if row.baseline:
        return (0, row.setting != "", row.setting, row.name)
    return (1, variants.index(row.name) if row.name in variants else len(variants), row.name)
