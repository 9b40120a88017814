from pathlib import Path

import pytest

from elmrec.app.cli import build_parser, main, overrides_from


def test_options_become_nested_overrides() -> None:
    args = build_parser().parse_args(["run", "--dataset", "sports", "--seed", "3", "--id-scheme", "shuffled",
                                      "--set", "train.lr=0.0005", "--set", "model.variant=no_graph"])
    assert overrides_from(args) == {"seed": 3, "data": {"dataset": "sports", "id_scheme": "shuffled"},
                                    "train": {"lr": 0.0005}, "model": {"variant": "no_graph"}}


def test_bad_setting_fails_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--workdir", str(tmp_path), "--set", "train.batch_size=0"]) == 2
    assert "train.batch_size\n  Input should be greater than or equal to 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_task_on_missing_upstream_names_the_stage_to_run_first(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["task", "graph", "--workdir", str(tmp_path)]) == 2
    assert "interactions.parquet is missing; run `elmrec task preprocess` first" in capsys.readouterr().err
    assert main(["task", "preprocess", "--workdir", str(tmp_path)]) == 2
    assert "is missing; run `elmrec task download` first" in capsys.readouterr().err


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
    assert f"work dir {blocker / 'work'} is not writable" in capsys.readouterr().err


def test_task_train_continues_an_interrupted_training_unless_fresh(tmp_path: Path, monkeypatch) -> None:
    from elmrec.app import cli

    calls = []
    monkeypatch.setattr(cli, "load_flow", lambda: lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(cli, "missing_upstream", lambda settings, stage: None)
    assert main(["task", "train", "--workdir", str(tmp_path)]) == 0
    assert main(["task", "train", "--fresh", "--workdir", str(tmp_path), "--variants", "pod", "sasrec"]) == 0
    assert [(c["stages"], c["force"], c["fresh"], c["variants"]) for c in calls] == [
        (["train"], ["train"], False, None), (["train"], ["train"], True, ["pod", "sasrec"])]
    assert [c["allow_unfinished"] for c in calls] == [False, False]
