import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from elmrec.app import cli, prefect_env
from elmrec.app.cli import build_parser, main, overrides_from
from elmrec.app.processes import Proc
from elmrec.app.serve import ServePaths, ServeState
from elmrec.config import settings_for
from tests.conftest import tiny_pipeline, write_p5

PREFECT_VARIABLES = ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH")


@pytest.fixture(autouse=True)
def restored_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() sets PREFECT_* variables for the process: each test gets them back as they were, and unset."""
    for name in PREFECT_VARIABLES:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def recorded_flow_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A flow that records its parameters instead of running, with every stage's inputs present."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(cli, "load_flow", lambda: lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(cli, "check_upstream", lambda *args, **kwargs: None)
    return calls


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_options_become_nested_overrides() -> None:
    args = build_parser().parse_args(["run", "--dataset", "sports", "--seed", "3", "--id-scheme", "shuffled",
                                      "--set", "train.lr=0.0005", "--set", "model.variant=no_graph"])
    assert overrides_from(args) == {"seed": 3, "data": {"dataset": "sports", "id_scheme": "shuffled"},
                                    "train": {"lr": 0.0005}, "model": {"variant": "no_graph"}}


def test_bad_setting_fails_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--workdir", str(tmp_path), "--set", "train.batch_size=0"]) == 2
    assert capsys.readouterr().err == (
        "error: invalid settings: train.batch_size: Input should be greater than or equal to 1 (got 0)\n")
    assert list(tmp_path.iterdir()) == []


def test_task_on_missing_upstream_names_the_stage_to_run_first(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["task", "graph", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "interactions.parquet is missing; run `elmrec task preprocess` first (same options)\n" in err
    assert main(["task", "preprocess", "--workdir", str(tmp_path)]) == 2
    assert "is missing; run `elmrec task download` first (same options)\n" in capsys.readouterr().err


def test_help_explains_both_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "run the whole pipeline locally" in out and "run one stage alone" in out


def test_a_work_dir_that_cannot_be_written_fails_at_once_naming_it(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import time

    blocker = tmp_path / "file"
    blocker.write_text("a file where the work dir's parent should be")
    start = time.perf_counter()
    assert main(["task", "train", "--workdir", str(blocker / "work")]) == 2
    assert time.perf_counter() - start < 2.0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert f"work dir {blocker / 'work'} is not writable" in err


def test_task_train_continues_an_interrupted_training_unless_fresh(tmp_path: Path, monkeypatch) -> None:
    calls = recorded_flow_calls(monkeypatch)
    assert main(["task", "train", "--workdir", str(tmp_path)]) == 0
    assert main(["task", "train", "--fresh", "--workdir", str(tmp_path), "--variants", "pod", "sasrec"]) == 0
    assert [(c["stages"], c["force"], c["fresh"], c["variants"]) for c in calls] == [
        (["train"], ["train"], False, None), (["train"], ["train"], True, ["pod", "sasrec"])]
    assert [c["allow_unfinished"] for c in calls] == [False, False]


def test_ctrl_c_exits_130_with_the_resume_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(**kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_flow", lambda: interrupted)
    monkeypatch.setattr(cli, "check_upstream", lambda *args, **kwargs: None)
    assert main(["task", "train", "--workdir", str(tmp_path)]) == 130
    assert last_line(capsys.readouterr().err) == (
        "error: interrupted; rerun the same command to resume (training continues from its last saved epoch)")


def test_an_unexpected_error_keeps_its_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(**kwargs: Any) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "load_flow", lambda: broken)
    monkeypatch.setattr(cli, "check_upstream", lambda *args, **kwargs: None)
    with pytest.raises(KeyError, match="a bug"):
        main(["task", "train", "--workdir", str(tmp_path)])


def logged_config(overrides: dict[str, Any], path: Path, preset: str = "demo") -> Path:
    """The config.yaml a run logs to MLflow (elmrec.tracking.RunLog.settings) for these settings."""
    path.write_text(yaml.safe_dump(settings_for(preset, overrides).model_dump(mode="json"), sort_keys=False))
    return path


def test_a_logged_config_replays_as_the_same_options_on_the_command_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = recorded_flow_calls(monkeypatch)
    options = ["--workdir", str(tmp_path / "work"), "--dataset", "sports", "--seed", "3", "--id-scheme", "shuffled",
               "--set", "train.lr=0.0005", "--set", "eval.direct_decoders=[\"score\", \"beam\"]"]
    assert main(["run", "--preset", "mini", *options]) == 0
    by_options = settings_for(calls[0]["preset"], calls[0]["overrides"])
    config = logged_config(overrides_from(build_parser().parse_args(["run", *options])), tmp_path / "config.yaml",
                           preset="mini")
    assert main(["run", "--config", str(config)]) == 0
    replayed = settings_for(calls[1]["preset"], calls[1]["overrides"])
    assert replayed == by_options
    assert (replayed.seed, replayed.data.max_users, replayed.train.lr) == (3, 3000, 0.0005)


def test_options_override_the_config_file_which_overrides_the_preset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = recorded_flow_calls(monkeypatch)
    config = tmp_path / "partial.yaml"
    config.write_text("preset: mini\nseed: 5\ntrain: {max_epochs: 2}\n")
    workdir = ["--workdir", str(tmp_path / "work")]
    assert main(["run", "--config", str(config), *workdir]) == 0
    assert main(["run", "--config", str(config), *workdir, "--seed", "7", "--set", "train.max_epochs=9"]) == 0
    assert main(["run", "--config", str(config), *workdir, "--preset", "demo"]) == 0
    built = [settings_for(call["preset"], call["overrides"]) for call in calls]
    assert [(call["preset"], s.seed, s.train.max_epochs, s.data.max_users) for call, s in zip(calls, built)] == [
        ("mini", 5, 2, 3000), ("mini", 7, 9, 3000), ("demo", 5, 2, 2000)]


def test_a_bad_config_file_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("seed: 1\ntrain: [1,\n")
    assert main(["run", "--config", str(config), "--workdir", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {config}:") and err.count("\n") == 1
    config.write_text("train: {lr: -1}\n")
    assert main(["run", "--config", str(config), "--workdir", str(tmp_path / "work")]) == 2
    assert capsys.readouterr().err == ("error: invalid settings: train.lr: Input should be greater than 0 "
                                       "(got -1)\n")


def fake_serve(workdir: Path, api_url: str = "http://127.0.0.1:4321/api") -> ServePaths:
    paths = ServePaths.under(workdir)
    paths.home.mkdir(parents=True)
    ServeState(4321, api_url, "/checkout", Proc(1, None), Proc(2, None)).save(paths.state)
    return paths


def test_the_prefect_server_of_a_running_serve_is_used(tmp_path: Path) -> None:
    paths = fake_serve(tmp_path)
    storage = str(paths.home / "storage")
    up = {"PREFECT_API_URL": "http://127.0.0.1:4321/api", "PREFECT_HOME": str(paths.home),
          "PREFECT_LOCAL_STORAGE_PATH": storage}
    asked = []
    assert prefect_env.prefect_env(tmp_path, {}, lambda url, home: asked.append((url, home)) or True) == up
    assert asked == [("http://127.0.0.1:4321/api", paths.home)]
    assert prefect_env.prefect_env(tmp_path, {}, lambda url, home: False) == {"PREFECT_LOCAL_STORAGE_PATH": storage}
    mine = {"PREFECT_API_URL": "http://elsewhere/api", "PREFECT_LOCAL_STORAGE_PATH": "/mine"}
    assert prefect_env.prefect_env(tmp_path, mine, lambda url, home: True) == {}  # the user's choice stands
    assert prefect_env.prefect_env(tmp_path / "other", {}, lambda url, home: True) == {
        "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path.resolve() / "other" / "prefect" / "storage")}  # no serve.json


def test_task_runs_on_the_server_of_a_running_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    paths = fake_serve(tmp_path)
    monkeypatch.setattr(prefect_env, "healthy", lambda url, home: home == paths.home)
    seen = []
    monkeypatch.setattr(cli, "load_flow", lambda: lambda **kwargs: seen.append(
        {name: os.environ.get(name) for name in PREFECT_VARIABLES}))
    monkeypatch.setattr(cli, "check_upstream", lambda *args, **kwargs: None)
    assert main(["task", "preprocess", "--workdir", str(tmp_path)]) == 0
    assert seen == [{"PREFECT_API_URL": "http://127.0.0.1:4321/api", "PREFECT_HOME": str(paths.home),
                     "PREFECT_LOCAL_STORAGE_PATH": str(paths.home / "storage")}]
    assert "running on the Prefect server of `elmrec serve`: http://127.0.0.1:4321/api" in capsys.readouterr().err


def test_the_summary_links_the_ui_of_a_lasting_prefect_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from elmrec import compare, tracking
    from elmrec.report import Row

    parent = {"name": "demo · tiny · elmrec", "run_id": "abc", "tags": {"prefect.flow_run_id": "f-1"}}
    evaluated = compare.Comparison(parent, [Row("popularity", {"direct": {"score": {"hr@5": 0.5}}}, baseline=True)],
                                   {}, "test")
    found = [evaluated, compare.Comparison(parent, [Row("elmrec", {})], {}, "test")]
    monkeypatch.setattr(compare, "comparison", lambda settings, run: found.pop(0))
    monkeypatch.setattr(tracking, "run_url", lambda settings, run_id, ui: f"{ui}/#/runs/{run_id}")
    settings = settings_for("demo", {"workdir": str(tmp_path)})
    cli.print_summary(settings, {"mlflow_run_id": "abc"}, "http://127.0.0.1:4200")
    assert capsys.readouterr().out == (f"\ndemo · tiny · elmrec (test)\n\n{evaluated.markdown()}\n\n"
                                       "MLflow:  http://127.0.0.1:5000/#/runs/abc  (open with: elmrec ui)\n"
                                       "Prefect: http://127.0.0.1:4200/runs/flow-run/f-1\n")
    cli.print_summary(settings, {"mlflow_run_id": "abc"}, None)  # `elmrec task preprocess`, temporary server
    assert capsys.readouterr().out == ("\ndemo · tiny · elmrec (test)\n\nNo evaluation in this run.\n\n"
                                       "MLflow:  http://127.0.0.1:5000/#/runs/abc  (open with: elmrec ui)\n"
                                       "Prefect: a temporary server, gone (`elmrec serve` keeps flow runs in a UI)\n")


def test_the_summary_links_the_mlflow_ui_of_serve_on_the_port_it_took(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from elmrec import compare, tracking
    from elmrec.report import Row

    paths = ServePaths.under(tmp_path)
    paths.home.mkdir(parents=True)
    me = Proc.of(os.getpid())  # a live process stands for the UI
    ServeState(4321, "http://127.0.0.1:4321/api", "/checkout", me, me, me, 5003).save(paths.state)
    parent = {"name": "demo · tiny · elmrec", "run_id": "abc", "tags": {"prefect.flow_run_id": "f-1"}}
    monkeypatch.setattr(compare, "comparison", lambda settings, run: compare.Comparison(
        parent, [Row("elmrec", {})], {}, "test"))
    monkeypatch.setattr(tracking, "run_url", lambda settings, run_id, ui: f"{ui}/#/runs/{run_id}")
    cli.print_summary(settings_for("demo", {"workdir": str(tmp_path)}), {"mlflow_run_id": "abc"},
                      "http://127.0.0.1:4321")
    assert "MLflow:  http://127.0.0.1:5003/#/runs/abc\nPrefect: http://127.0.0.1:4321/runs/flow-run/f-1\n" in \
        capsys.readouterr().out


@pytest.fixture(scope="module")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def tiny_config(tmp_path: Path, histories: dict[int, list[int]], extra_line: str = "") -> Path:
    raw = write_p5(tmp_path / "mine", histories, n_items=150)
    if extra_line:
        (raw / "sequential.txt").write_text((raw / "sequential.txt").read_text() + extra_line)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_pipeline(raw, tmp_path / "work")))
    return config


@pytest.mark.slow
def test_run_of_a_stage_without_its_inputs_is_the_line_task_gives(tmp_path: Path, tiny_histories, prefect_harness,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config(tmp_path, tiny_histories)  # the flow checks before any task runs, as `elmrec task` does
    assert main(["run", "--config", str(config), "--stages", "graph", "evaluate"]) == 2
    line = last_line(capsys.readouterr().err)
    assert line.startswith("error: ") and "rerun_of" not in line and (
        "interactions.parquet is missing; run `elmrec task preprocess` first (same options) (traceback in") in line
    assert not (tmp_path / "work" / "mlflow.db").exists()  # nothing was opened in MLflow


@pytest.mark.slow
def test_a_bad_data_file_is_one_line_naming_file_and_line(tmp_path: Path, tiny_histories, prefect_harness,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config(tmp_path, tiny_histories, extra_line="5 7 x\n")
    assert main(["run", "--config", str(config), "--stages", "download", "preprocess"]) == 2
    line = last_line(capsys.readouterr().err)
    logs = list((tmp_path / "work" / "logs").iterdir())
    assert line == (f"error: {tmp_path / 'mine' / 'sequential.txt'}:5: 'x' is not a positive integer ID "
                    f"(traceback in {logs[0]})")
    logged = logs[0].read_text()
    assert "Traceback (most recent call last)" in logged and "Finished in state Failed" in logged


@pytest.mark.slow
def test_a_run_ends_with_the_comparison_table_and_links(tmp_path: Path, tiny_histories, prefect_harness,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from elmrec import tracking
    from elmrec.compare import comparison

    config = tiny_config(tmp_path, tiny_histories)
    assert main(["run", "--config", str(config)]) == 0
    settings = settings_for("demo", yaml.safe_load(config.read_text()))
    found = comparison(settings)
    assert [row.label for row in found.rows] == ["id_order", "popularity", "random", "elmrec"]
    expected = (f"{found.parent['name']} (test)\n\n{found.markdown()}\n\n"
                f"MLflow:  {tracking.run_url(settings, found.parent['run_id'])}  (open with: elmrec ui)\n"
                "Prefect: a temporary server, gone (`elmrec serve` keeps flow runs in a UI)\n")
    out = capsys.readouterr().out
    assert out.endswith(expected)
    assert found.markdown().startswith("| row | sequential score hr@5 | sequential score hr@10 |")
