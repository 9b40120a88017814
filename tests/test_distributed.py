"""Training in two processes (DDP over gloo, under torchrun) follows the one-process training with the same global
batch and seed, writes the same files once, fails with the failing rank's last lines, and resumes across process
counts.

The tiny T5 of tests/test_train.py without dropout (its masks are drawn per process, so they differ from one
process's), batches of 11 prompts in micro-batches of 3: a process holds 6 or 5 prompts of a full batch (two
micro-batches, the first under no_sync) and the last batch of each task (1 prompt) leaves rank 1 a stand-in step.
Each torchrun start costs ~15-25 s of imports on a loaded CPU, so the module starts two: a two-process training
that fails once epoch 1 is saved (rank 0 cannot report it), then its resumption in two processes; one process
resumes the same failed training too.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from elmrec import distributed
from elmrec.config import Settings
from elmrec.distributed import LaunchFailed, launch
from elmrec.paths import WorkPaths
from elmrec.recommenders import train_recommender
from elmrec.train import EpochRecord, TrainResult, train
from tests.conftest import T5_SMALL
from tests.test_train import copy_work, prepare, synthetic_histories, tiny_settings

pytestmark = [pytest.mark.skipif(not T5_SMALL.is_dir(), reason=f"needs the t5-small tokenizer at {T5_SMALL}"),
              pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

RELATIVE = 1e-4  # losses of one and two processes agree to this (they differ by float rounding only)


@pytest.fixture(scope="module")
def t5_without_dropout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("t5") / "t5-small"
    shutil.copytree(T5_SMALL, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "dropout_rate": 0.0}))
    return folder


def settings_of(workdir: Path, t5: Path, nproc: int) -> Settings:
    settings = tiny_settings(workdir, max_epochs=2, batch_size=11, micro_batch_size=3, nproc=nproc)
    return settings.model_copy(update={"model": settings.model.model_copy(update={"model_name": str(t5)})})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("prepared") / "work"
    prepare(tiny_settings(workdir), synthetic_histories())
    return workdir


@pytest.fixture(scope="module")
def reference(prepared: Path, t5_without_dropout: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """Two epochs in one process, uninterrupted."""
    settings = settings_of(copy_work(prepared, tmp_path_factory.mktemp("one") / "work"), t5_without_dropout, 1)
    return train(settings, WorkPaths.from_settings(settings))


@pytest.fixture(scope="module")
def crashed(prepared: Path, t5_without_dropout: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[Path, Path, str]:
    """(work dir, a copy of it, the error): a two-process training whose rank 0 fails once epoch 1 is saved
    (the progress file it reports epochs to lies in a missing folder)."""
    root = tmp_path_factory.mktemp("crashed")
    workdir = copy_work(prepared, root / "work")
    settings = settings_of(workdir, t5_without_dropout, 2)
    command = distributed.torchrun_command

    def progress_nowhere(nproc: int, settings_file: Path, progress: Path, *rest: object) -> list[str]:
        return command(nproc, settings_file, root / "missing" / progress.name, *rest)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(distributed, "torchrun_command", progress_nowhere)
        with pytest.raises(LaunchFailed) as failed:
            launch(settings, WorkPaths.from_settings(settings), resume=False)
    shutil.copytree(workdir, root / "pristine")
    return workdir, root / "pristine", str(failed.value)


@pytest.fixture
def after_crash(crashed: tuple[Path, Path, str]) -> Path:
    """The failed training's work dir as the failure left it (same path: the path is part of the fingerprint)."""
    workdir, pristine, _ = crashed
    shutil.rmtree(workdir)
    shutil.copytree(pristine, workdir)
    return workdir


def assert_same_epochs(records: list[EpochRecord], reference: list[EpochRecord]) -> None:
    assert [(r.epoch, r.samples, r.best) for r in records] == [(r.epoch, r.samples, r.best) for r in reference]
    for got, want in zip(records, reference):
        for name in ("train_loss", "valid_loss", "train_losses", "valid_losses"):
            assert getattr(got, name) == pytest.approx(getattr(want, name), rel=RELATIVE), (got.epoch, name)


def assert_same_curve(result: TrainResult, reference: TrainResult) -> None:
    assert_same_epochs(result.history, reference.history)
    assert result.best_epoch == reference.best_epoch


def test_a_failed_process_ends_the_launch_with_its_last_lines(crashed: tuple[Path, Path, str],
                                                              t5_without_dropout: Path,
                                                              reference: TrainResult) -> None:
    workdir, _, error = crashed
    assert re.search(r"exit status 1\); rank 0's last lines:\n(.*\n)*.*FileNotFoundError", error), error
    settings = settings_of(workdir, t5_without_dropout, 2)
    run = WorkPaths.from_settings(settings).run(settings)
    attempt = json.loads(run.attempt.history.read_text())
    assert not attempt["finished"] and len(attempt["epochs"]) == 1 and not run.history.exists()
    assert attempt["device"] == "cpu (fp32) x 2 processes"
    assert_same_epochs([EpochRecord(**attempt["epochs"][0])], reference.history[:1])  # from scratch, 2 processes


def test_two_processes_follow_the_one_process_curve(after_crash: Path, t5_without_dropout: Path,
                                                    reference: TrainResult) -> None:
    settings = settings_of(after_crash, t5_without_dropout, 2)
    seen: list[int] = []
    result = train_recommender(settings, WorkPaths.from_settings(settings), resume=True,
                               on_epoch=lambda record: seen.append(record.epoch))  # dispatched to launch

    assert seen == [2] and result.device == "cpu (fp32) x 2 processes"  # every process resumed after epoch 1
    assert_same_curve(result, reference)  # epoch 1 from scratch, epoch 2 resumed, both in two processes
    # Rank 0 alone wrote: the run holds what one process leaves, nothing more.
    assert sorted(p.name for p in result.run.root.iterdir()) == sorted(p.name for p in reference.run.root.iterdir())
    assert json.loads(result.run.history.read_text())["finished"]
    ours, theirs = (load_file(str(r.run.last / "model.safetensors")) for r in (result, reference))
    assert ours.keys() == theirs.keys()  # the plain module's weights, not DDP's `module.`-prefixed ones
    for name, weight in ours.items():
        torch.testing.assert_close(weight, theirs[name], rtol=1e-4, atol=1e-5, msg=name)
    # AdamW is blind to the gradient's scale, its moments are not: exp_avg holds the global batch's gradients
    # (not their average over the processes: grad_scale); equal step counts: a resting table got no update.
    ours, theirs = (load_file(str(r.run.last / "optimizer.safetensors")) for r in (result, reference))
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        torch.testing.assert_close(value, theirs[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_distributed_training_resumes_in_one_process(after_crash: Path, t5_without_dropout: Path,
                                                       reference: TrainResult) -> None:
    settings = settings_of(after_crash, t5_without_dropout, 1)
    seen: list[int] = []
    resumed = train(settings, WorkPaths.from_settings(settings), resume=True,
                    on_epoch=lambda record: seen.append(record.epoch))
    assert seen == [2]  # nproc does not change the fingerprint: last/ of the two processes is resumed
    assert_same_curve(resumed, reference)
