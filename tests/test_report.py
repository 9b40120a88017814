"""The markdown summary of a run: dataset line, leak probe, one comparison table, MLflow link."""

from __future__ import annotations

from pathlib import Path

from elmrec.config import settings_for
from elmrec.report import Row, comparison_table, floor_sentences, leak_probe_line, rows_of, summary_markdown


def m(hr5: float, hr10: float, ndcg5: float | None = None, ndcg10: float | None = None) -> dict[str, float]:
    """A metrics.json leaf by hand; a metric left None is not recorded."""
    values = {"hr@5": hr5, "hr@10": hr10, "ndcg@5": ndcg5, "ndcg@10": ndcg10, "n_users": 1000}
    return {k: v for k, v in values.items() if v is not None}


BASELINES = {"popularity": {"direct": {"score": m(0.189, 0.265, 0.1283, 0.1527)}},
             "id_order": {"direct": {"score": m(0.2, 0.3, 0.15, 0.17)}}}
VARIANTS = {"elmrec": {"direct": {"score": m(0.25, 0.28, 0.2, 0.21), "beam": m(0.001, 0.002, 0.001, 0.001)},
                       "sequential": {"constrained": m(0.03, 0.05, 0.02)}}}  # ndcg@10 not recorded
SHUFFLED = [Row("id_order", {"direct": {"score": m(0.05, 0.1, 0.03, 0.04)}}, "shuffled", baseline=True),
            Row("shuffled_ids", {"direct": {"score": m(0.06, 0.12, 0.04, 0.05)}}, "shuffled")]
ROWS = rows_of(BASELINES, baseline=True) + rows_of(VARIANTS) + SHUFFLED
STATS = {"": {"data": {"n_users": 2000, "n_items": 9000, "n_interactions": 20000, "n_train_interactions": 16000,
                       "test_is_max_history_plus_one": 0.044},
              "graph": {"n_edges": 16000, "leak_probe_test_hr_at_5": 0.0534}},
         "shuffled": {"data": {"test_is_max_history_plus_one": 0.0}}}  # no graph stats: the probe reads "—"
HEADER = ("| row | sequential constrained hr@5 | sequential constrained hr@10 | sequential constrained ndcg@5 | "
          "sequential constrained ndcg@10 | direct score hr@5 | direct score hr@10 | direct score ndcg@5 | "
          "direct score ndcg@10 | direct beam hr@5 | direct beam hr@10 | direct beam ndcg@5 | direct beam ndcg@10 | "
          "leak probe HR@5 | test = max+1 |")


def test_comparison_table_rows_columns_missing_values_and_floor_sentences() -> None:
    lines = comparison_table(ROWS, STATS).splitlines()
    assert lines[:8] == [
        HEADER,
        "|---|" + "---:|" * 14,
        "| popularity | — | — | — | — | 0.1890 | 0.2650 | 0.1283 | 0.1527 | — | — | — | — | 0.0534 | 0.0440 |",
        "| id_order | — | — | — | — | 0.2000 | 0.3000 | 0.1500 | 0.1700 | — | — | — | — | 0.0534 | 0.0440 |",
        "| elmrec | 0.0300 | 0.0500 | 0.0200 | — | 0.2500 | 0.2800 | 0.2000 | 0.2100 | 0.0010 | 0.0020 | 0.0010 | "
        "0.0010 | 0.0534 | 0.0440 |",
        "| id_order (shuffled) | — | — | — | — | 0.0500 | 0.1000 | 0.0300 | 0.0400 | — | — | — | — | — | 0.0000 |",
        "| shuffled_ids (shuffled) | — | — | — | — | 0.0600 | 0.1200 | 0.0400 | 0.0500 | — | — | — | — | — | 0.0000 |",
        "",
    ]
    # elmrec/score beats popularity (0.28 > 0.265) but not id_order (0.30); beam beats neither; sequential has
    # no floor row; shuffled_ids beats its own data's id_order (0.12 > 0.10), not the P5 one it is not compared to
    assert lines[8:] == [
        "elmrec does not beat id_order (0.3000) on direct with the score decoder: HR@10 0.2800.",
        "elmrec does not beat id_order (0.3000) or popularity (0.2650) on direct with the beam decoder: HR@10 0.0020.",
    ]
    assert floor_sentences(ROWS) == lines[8:]


def test_a_model_equal_to_a_floor_does_not_beat_it() -> None:
    rows = [Row("popularity", {"direct": {"score": m(0.1, 0.2)}}, baseline=True),
            Row("pod", {"direct": {"score": m(0.3, 0.2)}})]
    assert floor_sentences(rows) == ["pod does not beat popularity (0.2000) on direct with the score decoder: "
                                     "HR@10 0.2000."]
    assert floor_sentences(rows[:1]) == [] and floor_sentences([rows[1]]) == []  # a floor needs both rows
    assert comparison_table(rows, {}).splitlines()[2].endswith("| 0.1000 | 0.2000 | — | — | — | — |")


def test_leak_probe_line() -> None:
    graph = {"n_edges": 10, "leak_probe_valid_hr_at_5": 0.0529, "leak_probe_test_hr_at_5": 0.0534}
    assert leak_probe_line(graph).endswith("about 0.44 on Beauty): valid 0.053, test 0.053")
    assert leak_probe_line({"n_edges": 10}) == "Leak probe: not recorded."


def test_summary_names_the_dataset_graph_probe_table_and_mlflow(tmp_path: Path) -> None:
    settings = settings_for("demo", {"workdir": str(tmp_path)})
    text = summary_markdown(settings, STATS, ROWS, "http://mlflow/run")
    parts = text.split("\n\n")
    assert parts[0] == "# elmrec: beauty (p5, ids p5, seed 2024)"
    assert parts[1] == ("Users 2,000 · items 9,000 · interactions 20,000 (train 16,000) · graph 16,000 edges "
                        "(train)")
    assert parts[2].startswith("Leak probe (HR@5") and parts[2].endswith(": test 0.053")
    assert parts[3] == "## Comparison (test)"
    assert "\n\n".join(parts[4:6]) == comparison_table(ROWS, STATS)  # the one table, then its sentences
    assert parts[6] == f"MLflow: [http://mlflow/run](http://mlflow/run) (store `sqlite:///{tmp_path}/mlflow.db`)\n"
    empty = summary_markdown(settings, {}, [], "u").split("\n\n")
    assert empty[1] == "No dataset statistics." and empty[4] == "No evaluation in this run."


def test_summary_after_preprocess_alone_shows_missing_graph_statistics(tmp_path: Path) -> None:
    """`elmrec task preprocess` on a fresh work dir: data stats exist, the graph's do not."""
    settings = settings_for("demo", {"workdir": str(tmp_path)})
    data = {"": {"data": {"n_users": 2000, "n_items": 9000, "n_interactions": 20000}}}
    parts = summary_markdown(settings, data, [], "u").split("\n\n")
    assert parts[1] == "Users 2,000 · items 9,000 · interactions 20,000 (train —) · graph — edges (train)"
    assert parts[2] == "Leak probe: not recorded."


def test_summarize_task_publishes_the_table_to_prefect_and_mlflow(tmp_path: Path, monkeypatch) -> None:
    """The task body (no Prefect server: the markdown artifact call is captured), on a real MLflow store."""
    import mlflow

    from elmrec import tracking
    from tasks import tracking as tasks_tracking

    published: list[tuple[str, str]] = []
    monkeypatch.setattr(tasks_tracking, "create_markdown_artifact",
                        lambda markdown, key, description: published.append((key, markdown)))
    settings = settings_for("demo", {"workdir": str(tmp_path)})
    parent = tracking.find_or_create_run(settings, "flow", {}, match={"prefect.flow_run_id": "f1"})
    markdown = tasks_tracking.summarize_task.fn(settings, parent, STATS, ROWS)
    assert published == [("elmrec-summary", markdown)] and comparison_table(ROWS, STATS) in markdown
    client = mlflow.MlflowClient()
    assert sorted(a.path for a in client.list_artifacts(parent)) == ["comparison.md", "plots", "stats.json"]
    assert sorted(a.path for a in client.list_artifacts(parent, "plots")) == [
        "plots/metrics_direct.png", "plots/metrics_sequential.png"]
    assert Path(client.download_artifacts(parent, "comparison.md", str(tmp_path))).read_text() == markdown


def test_headline_metrics_name_each_row_for_the_parent_run() -> None:
    from elmrec.report import headline_metrics

    assert headline_metrics(SHUFFLED + rows_of({"pod": {"direct": {"beam": {"hr@10": 0.5}}}})) == {
        "id_order_shuffled/test/direct/score/hr_at_10": 0.1, "id_order_shuffled/test/direct/score/ndcg_at_10": 0.04,
        "shuffled_ids_shuffled/test/direct/score/hr_at_10": 0.12,
        "shuffled_ids_shuffled/test/direct/score/ndcg_at_10": 0.05,
        "pod/test/direct/beam/hr_at_10": 0.5}  # a metric not recorded is left out
