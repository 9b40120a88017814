"""Promotion of a finished training attempt, and which checkpoint evaluation may load."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from elmrec import checkpoint
from elmrec.checkpoint import UnfinishedTraining, checkpoint_to_evaluate, promote
from elmrec.paths import RunPaths


def write_training(run: RunPaths, tag: str, finished: bool) -> None:
    """checkpoint/ and last/ holding one file that says `tag`, and a history.json."""
    for folder in (run.checkpoint, run.last):
        folder.mkdir(parents=True)
        (folder / "weights").write_text(tag)
    run.history.write_text(json.dumps({"finished": finished, "best_epoch": 1, "epochs": [{}], "max_epochs": 3}))


def test_an_interrupted_promotion_is_refused_then_completed(tmp_path: Path, monkeypatch) -> None:
    run = RunPaths(tmp_path / "run")
    write_training(run, "old", finished=True)
    write_training(run.attempt, "new", finished=True)
    real_replace = os.replace

    def crash_on_history(source, target) -> None:
        if Path(source).name == "history.json":
            raise OSError("killed")
        real_replace(source, target)

    monkeypatch.setattr(checkpoint.os, "replace", crash_on_history)
    with pytest.raises(OSError, match="killed"):
        promote(run)
    # The new model is in place but the run claims no finished training: evaluation refuses it.
    assert (run.checkpoint / "weights").read_text() == "new" and not run.history.exists()
    with pytest.raises(UnfinishedTraining):
        checkpoint_to_evaluate(run)
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    promote(run)  # the attempt's history was kept: promoting again completes the move
    assert (run.checkpoint / "weights").read_text() == (run.last / "weights").read_text() == "new"
    assert json.loads(run.history.read_text())["finished"] and not run.attempt.root.exists()
    assert checkpoint_to_evaluate(run) == run.checkpoint


def test_an_unfinished_attempt_is_never_promoted(tmp_path: Path) -> None:
    run = RunPaths(tmp_path / "run")
    write_training(run, "old", finished=True)
    write_training(run.attempt, "new", finished=False)
    with pytest.raises(UnfinishedTraining, match="no finished training to promote"):
        promote(run)
    assert (run.checkpoint / "weights").read_text() == "old"
    assert checkpoint_to_evaluate(run, allow_unfinished=True) == run.checkpoint  # a finished one comes first
