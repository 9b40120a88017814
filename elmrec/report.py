"""The markdown summary of a pipeline run: dataset, leak probe, ONE comparison table of every variant and
baseline, a sentence wherever a model does not beat a floor, and the link to MLflow.

The table's input is a list of `Row`s, one per variant or baseline, each holding its part of a metrics.json
({task: {decoder: {metric: value}}}) and the data setting it ran on ("" = the run's own data; another label,
e.g. "shuffled", is shown in brackets: `id_order (shuffled)`). Columns are the union over all rows of
task x decoder x HR@5/10, NDCG@5/10, so rows on different data settings line up; the leak probe and the share of
test items equal to max(history)+1 of each row's data setting stand beside them. A missing value reads "—".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from elmrec.config import Settings
from elmrec.graph import PROBE_K
from elmrec.metrics import tracked_name

MISSING = "—"  # a value that was not recorded
TABLE_METRICS = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")
BEAT_METRIC = "hr@10"  # "beats a floor" means a higher HR@10
HEADLINE_METRICS = ("hr@10", "ndcg@10")  # of each row, on the parent MLflow run
FLOORS = ("id_order", "popularity")  # baselines every model must beat on its own data setting
TASK_ORDER = ("sequential", "direct")
DECODER_ORDER = ("score", "beam", "constrained", "rerank")
MAX_PLUS_ONE = "test_is_max_history_plus_one"  # data stats.json: the consecutive-ID leak


@dataclass(frozen=True)
class Row:
    """One row of the comparison table: a variant's metrics.json or one baseline's part of the baselines' one."""

    name: str
    metrics: Mapping[str, Any]  # {task: {decoder: {metric: value}}}
    setting: str = ""  # the data setting the row ran on; "" = the run's own data
    baseline: bool = False

    @property
    def label(self) -> str:
        return f"{self.name} ({self.setting})" if self.setting else self.name

    def value(self, task: str, decoder: str, metric: str) -> float | None:
        found = self.metrics.get(task, {})
        found = found.get(decoder, {}) if isinstance(found, Mapping) else {}
        value = found.get(metric) if isinstance(found, Mapping) else None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def rows_of(results: Mapping[str, Mapping[str, Any]], setting: str = "", baseline: bool = False) -> list[Row]:
    """Rows from {name: metrics}: {variant: its metrics.json}, or a baselines metrics.json ({baseline: ...})."""
    return [Row(name, metrics, setting, baseline) for name, metrics in results.items()]


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else MISSING


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else MISSING


def _rank(order: Sequence[str], name: str) -> tuple[int, str]:
    return (order.index(name) if name in order else len(order), name)


def table_columns(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """(task, decoder) pairs any row holds, tasks then decoders in their usual order."""
    pairs = {(t, d) for row in rows for t, by_decoder in row.metrics.items() if isinstance(by_decoder, Mapping)
             for d, values in by_decoder.items() if isinstance(values, Mapping)}
    return sorted(pairs, key=lambda p: (_rank(TASK_ORDER, p[0]), _rank(DECODER_ORDER, p[1])))


def comparison_table(rows: Sequence[Row], stats: Mapping[str, Mapping[str, Any]], split: str = "test") -> str:
    """Markdown table (rows = variants and baselines; columns = task x decoder x HR@5/10, NDCG@5/10, then the
    leak probe and test = max(history)+1 of the row's data setting), followed by `floor_sentences`.

    stats: {setting: {"data": data stats.json, "graph": graph stats.json}}, keyed like `Row.setting`.
    """
    columns = table_columns(rows)
    probe_key = f"leak_probe_{split}_hr_at_{PROBE_K}"
    header = ["row", *(f"{t} {d} {m}" for t, d in columns for m in TABLE_METRICS), f"leak probe HR@{PROBE_K}",
              "test = max+1"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row in rows:
        setting = stats.get(row.setting, {})
        cells = [_number(row.value(t, d, m)) for t, d in columns for m in TABLE_METRICS]
        cells += [_number(setting.get("graph", {}).get(probe_key)), _number(setting.get("data", {}).get(MAX_PLUS_ONE))]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    sentences = floor_sentences(rows)
    return "\n".join(lines) + ("\n\n" + "\n".join(sentences) if sentences else "")


def floor_sentences(rows: Sequence[Row]) -> list[str]:
    """A plain sentence for every (model, task, decoder) whose HR@10 does not beat id_order or popularity of the
    same data setting."""
    floors = {(row.setting, row.name): row for row in rows if row.baseline and row.name in FLOORS}
    sentences = []
    for row in (r for r in rows if not r.baseline):
        for task, decoder in table_columns([row]):
            value = row.value(task, decoder, BEAT_METRIC)
            if value is None:
                continue
            beaten_by = [(name, best) for name in FLOORS if (floor := floors.get((row.setting, name))) is not None
                         and (best := _best(floor, task)) is not None and value <= best]
            if beaten_by:
                names = " or ".join(f"{name} ({best:.4f})" for name, best in beaten_by)
                sentences.append(f"{row.label} does not beat {names} on {task} with the {decoder} decoder: "
                                 f"HR@10 {value:.4f}.")
    return sentences


def _best(floor: Row, task: str) -> float | None:
    values = [v for d in floor.metrics.get(task, {}) if (v := floor.value(task, d, BEAT_METRIC)) is not None]
    return max(values) if values else None


def leak_probe_line(graph: Mapping[str, Any]) -> str:
    """The graph stage's leak probe in words: chance (k/100) means the graph holds no held-out edge."""
    probes = {k.removeprefix("leak_probe_").removesuffix(f"_hr_at_{PROBE_K}"): v for k, v in graph.items()
              if k.startswith("leak_probe_")}
    if not probes:
        return "Leak probe: not recorded."
    values = ", ".join(f"{split} {value:.3f}" for split, value in probes.items())
    return (f"Leak probe (HR@{PROBE_K} of untrained graph features on the stored candidates; chance "
            f"{PROBE_K / 100:.2f}, a graph with the held-out edges about 0.44 on Beauty): {values}")


def dataset_line(settings: Settings, stats: Mapping[str, Any], graph: Mapping[str, Any]) -> str:
    """Users, items, interactions and graph edges; a statistic not (yet) recorded reads "—"."""
    if not stats:
        return "No dataset statistics."
    return (f"Users {_count(stats.get('n_users'))} · items {_count(stats.get('n_items'))} · interactions "
            f"{_count(stats.get('n_interactions'))} (train {_count(stats.get('n_train_interactions'))}) · graph "
            f"{_count(graph.get('n_edges'))} edges ({settings.data.graph_edges})")


def summary_markdown(settings: Settings, stats: Mapping[str, Mapping[str, Any]], rows: Sequence[Row],
                     mlflow_url: str) -> str:
    """The run summary: stats = {setting: {"data": ..., "graph": ...}} ("" = the run's own data), rows of the
    comparison table (empty: no evaluation in this run)."""
    own = stats.get("", {})
    split = settings.eval.split
    parts = [
        f"# elmrec: {settings.data.dataset} ({settings.data.source}, ids {settings.data.id_scheme}, "
        f"seed {settings.seed})",
        dataset_line(settings, own.get("data", {}), own.get("graph", {})),
        leak_probe_line(own.get("graph", {})),
        f"## Comparison ({split})",
        comparison_table(rows, stats, split) if rows else "No evaluation in this run.",
        f"MLflow: [{mlflow_url}]({mlflow_url}) (store `{settings.resolved_tracking_uri()}`)",
    ]
    return "\n\n".join(parts) + "\n"


def headline_metrics(rows: Sequence[Row], split: str = "test") -> dict[str, float]:
    """HR@10 and NDCG@10 of every row and (task, decoder), named for the parent MLflow run:
    {`popularity/test/direct/score/hr_at_10`: value} (metrics.tracked_name with the row's label as owner)."""
    return {tracked_name(split, task, decoder, metric, owner=row.label): value
            for row in rows for task, decoder in table_columns([row]) for metric in HEADLINE_METRICS
            if (value := row.value(task, decoder, metric)) is not None}
