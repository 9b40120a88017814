"""The markdown summary of a run: dataset line, leak probe, metrics table, MLflow link."""

from __future__ import annotations

from pathlib import Path

from elmrec.config import settings_for
from elmrec.report import leak_probe_line, metrics_table, summary_markdown

RESULTS = {"popularity": {"direct": {"hr@1": 0.05, "hr@5": 0.189, "hr@10": 0.265, "ndcg@5": 0.1283,
                                    "ndcg@10": 0.1527, "invalid_rate": 0.0}},
           "elmrec": {"direct": {"mode": "score", "hr@10": 0.221, "invalid_rate": 0.0}, "seconds": 12.5}}


def test_metrics_table_has_a_row_per_variant_and_task_and_blank_missing_cells() -> None:
    assert metrics_table(RESULTS).splitlines() == [
        "| variant | task | mode | hr@1 | hr@5 | hr@10 | ndcg@5 | ndcg@10 | invalid_rate |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
        "| popularity | direct |  | 0.0500 | 0.1890 | 0.2650 | 0.1283 | 0.1527 | 0.0000 |",
        "| elmrec | direct | score |  |  | 0.2210 |  |  | 0.0000 |",  # `seconds` is not a task: no row
    ]


def test_leak_probe_line() -> None:
    graph = {"n_edges": 10, "leak_probe_valid_hr_at_5": 0.0529, "leak_probe_test_hr_at_5": 0.0534}
    assert leak_probe_line(graph).endswith("about 0.44 on Beauty): valid 0.053, test 0.053")
    assert leak_probe_line({"n_edges": 10}) == "Leak probe: not recorded."


def test_summary_names_the_dataset_graph_probe_metrics_and_mlflow(tmp_path: Path) -> None:
    settings = settings_for("demo", {"workdir": str(tmp_path)})
    data = {"data": {"n_users": 2000, "n_items": 9000, "n_interactions": 20000, "n_train_interactions": 16000},
            "graph": {"n_edges": 16000, "leak_probe_test_hr_at_5": 0.05}}
    text = summary_markdown(settings, data, RESULTS, "http://mlflow/run")
    parts = text.split("\n\n")
    assert parts[0] == "# elmrec: beauty (p5, ids p5, seed 2024)"
    assert parts[1] == ("Users 2,000 · items 9,000 · interactions 20,000 (train 16,000) · graph 16,000 edges "
                        "(train)")
    assert parts[2].startswith("Leak probe (HR@5") and parts[2].endswith(": test 0.050")
    assert parts[3] == "## Metrics (test)" and parts[4] == metrics_table(RESULTS)
    assert parts[5] == f"MLflow: [http://mlflow/run](http://mlflow/run) (store `sqlite:///{tmp_path}/mlflow.db`)\n"
    empty = summary_markdown(settings, {}, {}, "u").split("\n\n")
    assert empty[1] == "No dataset statistics." and empty[4] == "No evaluation in this run."
