"""Hyper-parameter sweeps: a grid of settings expanded into points, and the best point chosen honestly.

A grid names settings by dotted key, as `--set` does, each with the values to try:

    {"model.alpha": [1, 6], "model.n_layers": [2, 4]}   ->   4 points, named `alpha=1,n_layers=2`, ...

Each point is the base settings deep-merged with its overrides, validated before any work starts. Points in
grid order: the first key varies slowest. The paper's Table 9 tunes alpha (model.alpha), sigma (model.sigma),
N (eval.rerank_n: decoding only, so points differing in N share one trained checkpoint) and L (model.n_layers).

The best point of each (task, decoder) is chosen on the validation split and reported with its test metrics:
choosing on test and reporting test would report the luck of the choice as skill.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from elmrec.config import Settings, deep_merge
from elmrec.paths import WorkPaths
from elmrec.report import TABLE_METRICS, Row, table_columns

Grid = dict[str, list[Any]]  # {"model.alpha": [1, 6], ...}: dotted setting name -> values to try
Metrics = Mapping[str, Any]  # a metrics.json: {task: {decoder: {metric: value}}}

SELECT_SPLIT, REPORT_SPLIT = "valid", "test"  # the split that chooses, and the one that reports
UNSWEPT = ("workdir", "tracking_uri", "eval.split")  # one work dir, one MLflow store; the sweep sets the splits


@dataclass(frozen=True)
class Point:
    """One point of a grid: its name, its overrides (nested) and the validated settings they give."""

    name: str
    overrides: dict[str, Any]
    settings: Settings

    def on_split(self, split: str) -> Settings:
        """The point's settings evaluated on `split` (same checkpoint, same decoding)."""
        return Settings.model_validate(deep_merge(self.settings.model_dump(mode="json"), {"eval": {"split": split}}))


def nested(dotted: str, value: Any) -> dict[str, Any]:
    """`model.alpha`, 6 -> {"model": {"alpha": 6}}."""
    result: Any = value
    for part in reversed(dotted.split(".")):
        result = {part: result}
    return result


def check_grid(grid: Mapping[str, Sequence[Any]]) -> None:
    """Every key a dotted setting name the sweep may vary, every value list non-empty and without repeats."""
    if not grid:
        raise ValueError("grid: name at least one setting, e.g. {\"model.alpha\": [1, 6]}")
    for key, values in grid.items():
        if not key or any(not part for part in key.split(".")):
            raise ValueError(f"grid: {key!r} is not a dotted setting name (e.g. model.alpha)")
        if key in UNSWEPT or key.split(".")[0] in UNSWEPT:
            raise ValueError(f"grid: {key} cannot be swept (one work dir and MLflow store per sweep; the sweep "
                             f"evaluates every point on {SELECT_SPLIT} and {REPORT_SPLIT} itself)")
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"grid: {key} needs a non-empty list of values, got {values!r}")
        shown = [json.dumps(v, sort_keys=True, default=str) for v in values]
        if len(set(shown)) != len(shown):
            raise ValueError(f"grid: {key} repeats a value: {list(values)}")


def point_name(choice: Mapping[str, Any]) -> str:
    """`alpha=1,n_layers=2`: the last part of each key (the whole key where two keys share it), then the value."""
    last = [key.rsplit(".", 1)[-1] for key in choice]
    labels = [key if last.count(short) > 1 else short for key, short in zip(choice, last)]
    return ",".join(f"{label}={value if isinstance(value, str) else json.dumps(value, default=str)}"
                    for label, value in zip(labels, choice.values()))


def expand(base: Settings, grid: Mapping[str, Sequence[Any]]) -> list[Point]:
    """The grid's points in order (first key slowest), each validated; the error names the point and the field."""
    check_grid(grid)
    points: list[Point] = []
    seen: dict[str, str] = {}
    for values in itertools.product(*grid.values()):
        choice = dict(zip(grid, values))
        name = point_name(choice)
        overrides: dict[str, Any] = {}
        for key, value in choice.items():
            overrides = deep_merge(overrides, nested(key, value))
        try:
            settings = Settings.model_validate(deep_merge(base.model_dump(mode="json"), overrides))
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise ValueError(f"sweep point {name}: {problems}") from None
        same = seen.setdefault(settings.model_dump_json(), name)
        if same != name:
            raise ValueError(f"sweep points {same} and {name} have the same settings")
        points.append(Point(name, overrides, settings))
    return points


def trainings(points: Sequence[Point]) -> dict[str, list[Point]]:
    """Points grouped by the checkpoint they evaluate (its folder), in grid order: one training per group."""
    groups: dict[str, list[Point]] = {}
    for point in points:
        groups.setdefault(str(WorkPaths.from_settings(point.settings).run(point.settings).root), []).append(point)
    return groups


@dataclass(frozen=True)
class Best:
    """The best point of one (task, decoder): chosen by `metric` on the select split, reported on the report split."""

    task: str
    decoder: str
    point: str
    metric: str
    chosen_by: float  # the point's `metric` on SELECT_SPLIT
    reported: dict[str, float]  # the point's TABLE_METRICS on REPORT_SPLIT (those recorded)


def best_points(select: Mapping[str, Metrics], report: Mapping[str, Metrics], metric: str = "ndcg@10") -> list[Best]:
    """For each (task, decoder) any point was evaluated on: the point (in `select`'s order; the first of equals)
    with the highest `metric` on the select split, with its metrics on the report split. Points without the
    metric (failed) are not candidates. select/report: {point name: metrics.json}."""
    if metric not in TABLE_METRICS:
        raise ValueError(f"metric {metric!r}: choose one of {list(TABLE_METRICS)}")
    rows = [Row(name, metrics) for name, metrics in select.items()]
    found: list[Best] = []
    for task, decoder in table_columns(rows):
        scored = [(value, row.name) for row in rows if (value := row.value(task, decoder, metric)) is not None]
        if not scored:
            continue
        value, name = max(scored, key=lambda pair: pair[0])  # max keeps the first of equal values
        shown = Row(name, report.get(name, {}))
        reported = {m: v for m in TABLE_METRICS if (v := shown.value(task, decoder, m)) is not None}
        found.append(Best(task, decoder, name, metric, value, reported))
    return found


def best_markdown(best: Sequence[Best], select: Mapping[str, Metrics], metric: str, failed: Sequence[str] = ()) -> str:
    """The sweep's verdict: the best point per (task, decoder), which split chose it and which reports it, then
    every point's select-split value of the metric."""
    lines = [f"# elmrec sweep: the best point per task ({len(select)} points)", "",
             f"Chosen by **{metric}** on the **{SELECT_SPLIT}** split; reported on the **{REPORT_SPLIT}** split, "
             f"which played no part in the choice.", ""]
    if best:
        lines += [f"| task | decoder | best point | {SELECT_SPLIT} {metric} | "
                  + " | ".join(f"{REPORT_SPLIT} {m}" for m in TABLE_METRICS) + " |",
                  "|---|---|---|---:|" + "---:|" * len(TABLE_METRICS)]
        lines += [f"| {b.task} | {b.decoder} | {b.point} | {b.chosen_by:.4f} | "
                  + " | ".join(f"{b.reported[m]:.4f}" if m in b.reported else "—" for m in TABLE_METRICS) + " |"
                  for b in best]
    else:
        lines.append("No point was evaluated.")
    columns = table_columns([Row(name, metrics) for name, metrics in select.items()])
    if columns:
        lines += ["", f"Every point, {metric} on {SELECT_SPLIT}:", "",
                  "| point | " + " | ".join(f"{t} {d}" for t, d in columns) + " |", "|---|" + "---:|" * len(columns)]
        for name, metrics in select.items():
            row = Row(name, metrics)
            lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" if (v := row.value(t, d, metric)) is not None
                                                     else "—" for t, d in columns) + " |")
    if failed:
        lines += ["", f"Failed, not candidates: {', '.join(failed)}."]
    return "\n".join(lines) + "\n"
