from pathlib import Path

import pytest

from elmrec.cli import build_parser, main, overrides_from


def test_options_become_nested_overrides() -> None:
    args = build_parser().parse_args(["run", "--dataset", "sports", "--seed", "3", "--id-scheme", "shuffled",
                                      "--set", "train.lr=0.0005", "--set", "model.variant=pod"])
    assert overrides_from(args) == {"seed": 3, "data": {"dataset": "sports", "id_scheme": "shuffled"},
                                    "train": {"lr": 0.0005}, "model": {"variant": "pod"}}


def test_bad_setting_fails_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--workdir", str(tmp_path), "--set", "train.batch_size=0"]) == 2
    assert "train.batch_size\n  Input should be greater than or equal to 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_task_on_missing_upstream_names_the_stage_to_run_first(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["task", "graph", "--workdir", str(tmp_path)]) == 2
    assert "interactions.parquet is missing; run `elmrec task preprocess` first" in capsys.readouterr().err
    assert main(["task", "preprocess", "--workdir", str(tmp_path)]) == 2
    assert "raw is missing; run `elmrec task download` first" in capsys.readouterr().err


def test_help_explains_both_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "run the whole pipeline locally" in out and "run one stage alone" in out
