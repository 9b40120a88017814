"""Training on a tiny synthetic dataset with a tiny T5 (d_model 32, one layer): exact reproducibility, exact
resume, no leakage of held-out items into training prompts, early stopping, learning, and the MLflow task."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from elmrec import memory
from elmrec import train as training
from elmrec.checkpoint import TrainState, UnfinishedTraining, checkpoint_to_evaluate, is_finished
from elmrec.config import Settings, Task, settings_for
from elmrec.data.preprocess import preprocess
from elmrec.graph import build_graph
from elmrec.model import T5_DIR, TABLES_FILE
from elmrec.paths import WorkPaths
from elmrec.train import EpochRecord, TrainData, train
from tests.conftest import T5_SMALL, TINY_T5, write_p5

pytestmark = [pytest.mark.skipif(not T5_SMALL.is_dir(), reason=f"needs the t5-small tokenizer at {T5_SMALL}"),
              pytest.mark.usefixtures("one_thread")]  # tests/conftest.py: tiny models run on one intra-op thread

TINY = TINY_T5
N_USERS, N_ITEMS = 12, 30
TIMING = ("seconds", "samples_per_s")  # the only fields of an EpochRecord that may differ between runs


def synthetic_histories() -> dict[int, list[int]]:
    """12 users, 30 items, 6-10 distinct items each (so a held-out item never reappears in the train part)."""
    rng = np.random.default_rng(0)
    return {u: (rng.permutation(N_ITEMS)[: 6 + u % 5] + 1).tolist() for u in range(1, N_USERS + 1)}


def tiny_settings(workdir: Path, **train: object) -> Settings:
    values = {"batch_size": 4, "max_epochs": 3, "patience": 5, "valid_users": None, "device": "cpu",
              "precision": "fp32",  # exact arithmetic: the tests compare trainings to the last digit
              "passes_per_epoch": 1, "early_stopping": "consecutive", **train}
    return settings_for("paper", {
        "workdir": str(workdir), "seed": 7,
        "data": {"dataset": "tiny", "source": "local", "path": str(workdir / "tiny" / "raw"), "n_negatives": 9},
        "model": {"model_name": str(T5_SMALL), "reduced": TINY, "alpha": 1.0, "sigma": 0.5, "n_layers": 2},
        "train": values,
    })


def prepare(settings: Settings, histories: dict[int, list[int]]) -> None:
    """The data stages on `histories`: raw P5 files, Parquet tables, graph."""
    paths = WorkPaths.from_settings(settings)
    write_p5(paths.raw, histories, n_items=N_ITEMS)
    preprocess(settings.data, settings.seed, paths.raw, paths.data)
    build_graph(paths.data, paths.graph)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work dir holding the tiny dataset's raw files, Parquet tables and graph (built once per module)."""
    workdir = tmp_path_factory.mktemp("prepared") / "work"
    prepare(tiny_settings(workdir), synthetic_histories())
    return workdir


@pytest.fixture
def workdir(prepared: Path, tmp_path: Path) -> Path:
    """A fresh copy of the prepared work dir: runs of one test never see those of another."""
    return copy_work(prepared, tmp_path / "work")


def copy_work(source: Path, target: Path) -> Path:
    """A copy of a prepared work dir at `target`. Folder names hash the local source's path, which lies in the
    work dir: the copied raw and data folders are renamed to the keys of the copy's settings."""
    shutil.copytree(source, target)
    before, after = WorkPaths.from_settings(tiny_settings(source)), WorkPaths.from_settings(tiny_settings(target))
    for old, new in ((before.raw, after.raw), (before.derived, after.derived)):
        (target / old.relative_to(source)).rename(new)
    return target


def run(settings: Settings, **kwargs) -> training.TrainResult:
    return train(settings, WorkPaths.from_settings(settings), **kwargs)


def curve(result: training.TrainResult) -> list[dict]:
    """Every field of every epoch record except wall-clock timings."""
    return [{k: v for k, v in vars(r).items() if k not in TIMING} for r in result.history]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return {**load_file(str(checkpoint / T5_DIR / "model.safetensors")), **load_file(str(checkpoint / TABLES_FILE))}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_two_runs_with_one_seed_give_the_same_loss_curve(workdir: Path, tmp_path: Path) -> None:
    again = copy_work(workdir, tmp_path / "again")
    first, second = run(tiny_settings(workdir)), run(tiny_settings(again))
    assert len(first.history) == 3 and curve(first) == curve(second)  # exact float equality
    assert_same_weights(weights(first.run.checkpoint), weights(second.run.checkpoint))
    assert first.history[0].samples == 2 * N_USERS  # one prompt per user and task
    assert not first.pretrained and first.device == "cpu (fp32)"


def test_tiny_model_overfits_tiny_dataset(tmp_path: Path) -> None:
    # 8 users with 4 items each: every epoch's sequential prompt of a user is its first item -> its second (only the
    # template varies). At init the loss is ~ln(32128) = 10.4 nats per target token; after 30 epochs of 8 steps
    # (lr 1e-2) the tiny model's mean over the last 5 epochs must be below 1.5 (it is ~1.25 here; on one fixed
    # batch, without the template changing, it goes to ~0).
    rng = np.random.default_rng(1)
    settings = tiny_settings(tmp_path / "work", tasks=[Task.SEQUENTIAL], lr=1e-2, batch_size=1, max_epochs=30,
                             patience=30)
    prepare(settings, {u: (rng.permutation(N_ITEMS)[:4] + 1).tolist() for u in range(1, 9)})
    losses = [r.train_loss for r in run(settings).history]
    assert losses[0] > 8.0
    assert np.mean(losses[-5:]) < 1.5, losses


def test_resume_equals_uninterrupted(workdir: Path, tmp_path: Path) -> None:
    other = tiny_settings(copy_work(workdir, tmp_path / "interrupted"), max_epochs=4)
    uninterrupted = run(tiny_settings(workdir, max_epochs=4))

    def crash_after_epoch_2(record: EpochRecord) -> None:
        if record.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(other, on_epoch=crash_after_epoch_2)
    seen: list[int] = []
    resumed = run(other, resume=True, on_epoch=lambda record: seen.append(record.epoch))

    assert seen == [3, 4]  # only the missing epochs were trained
    assert curve(resumed) == curve(uninterrupted)
    assert resumed.best_epoch == uninterrupted.best_epoch
    assert_same_weights(weights(resumed.run.checkpoint), weights(uninterrupted.run.checkpoint))
    assert_same_weights(load_file(str(resumed.run.last / "model.safetensors")),
                        load_file(str(uninterrupted.run.last / "model.safetensors")))
    history = json.loads(resumed.run.history.read_text())
    assert history["finished"] and [e["epoch"] for e in history["epochs"]] == [1, 2, 3, 4]


def test_resume_with_other_settings_trains_afresh(workdir: Path, caplog) -> None:
    settings = tiny_settings(workdir, max_epochs=2)
    first = run(settings)
    state = WorkPaths.from_settings(settings).run(settings).last / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "fingerprint": "0" * 16}))
    seen: list[int] = []
    again = run(settings, resume=True, on_epoch=lambda record: seen.append(record.epoch))
    assert seen == [1, 2] and curve(again) == curve(first)
    assert "other settings" in caplog.text


def test_training_prompts_never_hold_validation_or_test_items(workdir: Path, monkeypatch) -> None:
    histories = synthetic_histories()
    built: list[tuple[int, list]] = []
    original = training.epoch_prompts

    def recording(task, data, settings, epoch):
        prompts = original(task, data, settings, epoch)
        built.append((epoch, prompts))
        return prompts

    monkeypatch.setattr(training, "epoch_prompts", recording)
    result = run(tiny_settings(workdir, max_epochs=3))
    assert sorted(epoch for epoch, _ in built) == [1, 1, 2, 2, 3, 3]
    assert [r.samples for r in result.history] == [sum(len(p) for e, p in built if e == epoch) for epoch in (1, 2, 3)]
    for _, prompts in built:
        for prompt in prompts:
            items = histories[prompt.user]
            train_items, held_out = set(items[:-2]), set(items[-2:])
            mentioned = {int(i) for i in re.findall(r"item_(\d+)", prompt.text)}
            assert int(prompt.target) in train_items and not mentioned & held_out, prompt
            if prompt.task is Task.SEQUENTIAL:
                assert mentioned <= train_items and int(prompt.target) not in mentioned
            else:  # the positive plus 9 items the user never interacted with
                never = set(range(1, N_ITEMS + 1)) - set(items)
                assert len(mentioned) == 10 and mentioned - {int(prompt.target)} <= never


def test_early_stopping_after_patience_keeps_the_best_checkpoint(workdir: Path, tmp_path: Path, monkeypatch) -> None:
    reference_dir = copy_work(workdir, tmp_path / "reference")
    # best at epoch 2; epochs 3 and 4 do not improve (4.0 ties), so patience 2 stops after epoch 4
    monkeypatch.setattr(training, "validation_losses", scripted(5.0, 4.0, 4.5, 4.0, 6.0, 1.0))
    result = run(tiny_settings(workdir, max_epochs=10, patience=2))
    assert [r.epoch for r in result.history] == [1, 2, 3, 4] and result.stopped_early
    assert result.best_epoch == 2 and result.best_valid_loss == 4.0
    assert [r.best for r in result.history] == [True, True, False, False]
    history = json.loads(result.run.history.read_text())
    assert history["best_epoch"] == 2 and history["stopped_early"]

    # The checkpoint is the epoch-2 model: the same weights as a run whose best (and last) epoch is 2.
    monkeypatch.setattr(training, "validation_losses", scripted(5.0, 4.0))
    reference = run(tiny_settings(reference_dir, max_epochs=2, patience=2))
    assert reference.best_epoch == 2
    assert_same_weights(weights(result.run.checkpoint), weights(reference.run.checkpoint))
    last = load_file(str(result.run.last / "model.safetensors"))  # epoch 4: trained on
    assert not torch.equal(weights(result.run.checkpoint)["node_table.weight"], last["node_table.weight"])


def test_epochs_alternate_between_tasks() -> None:
    parts = [training.TaskEpoch(Task.SEQUENTIAL, None, [np.array([k]) for k in range(3)]),  # type: ignore[arg-type]
             training.TaskEpoch(Task.DIRECT, None, [np.array([10 + k]) for k in range(1)])]  # type: ignore[arg-type]
    order = [(part.task, int(rows[0])) for part, rows in training.interleave(parts)]
    assert order == [(Task.SEQUENTIAL, 0), (Task.DIRECT, 10), (Task.SEQUENTIAL, 1), (Task.SEQUENTIAL, 2)]


def test_validation_uses_a_seeded_random_sample_of_users(workdir: Path) -> None:
    settings = tiny_settings(workdir, valid_users=5)
    data = TrainData.load(WorkPaths.from_settings(settings))
    sample = [5, 6, 9, 10, 11]  # default_rng([7, STREAM_VALID_USERS]).choice(users 1..12, 5), sorted: not 1..5
    for task in (Task.SEQUENTIAL, Task.DIRECT):
        prompts = training.valid_prompts(task, data, settings)
        assert [p.user for p in prompts] == sample
        assert [int(p.target) for p in prompts] == [synthetic_histories()[u][-2] for u in sample]
    other_seed = settings.model_copy(update={"seed": 8})
    assert training.valid_users(data, other_seed).tolist() != sample
    everyone = tiny_settings(workdir, valid_users=12)
    assert training.valid_users(data, everyone).tolist() == list(range(1, 13))


def test_recorded_variant_run_holds_the_training_curve(workdir: Path) -> None:
    """tasks.tracking logs history.json into the variant's child run under the flow's parent run."""
    from elmrec import tracking
    from tasks.tracking import record_variant_task

    settings = tiny_settings(workdir, max_epochs=2)
    result = train(settings, WorkPaths.from_settings(settings))
    parent_id = tracking.find_or_create_run(settings, "parent", {}, match={"elmrec.role": "parent"})
    record_variant_task.fn(settings, parent_id, "elmrec")
    history = json.loads(result.run.history.read_text())
    (recorded,) = [r for r in tracking.find_runs(settings) if r["tags"].get("elmrec.model") == "elmrec"]
    assert recorded["name"] == f"elmrec · {settings.data.dataset}"
    assert recorded["tags"]["mlflow.parentRunId"] == parent_id
    assert recorded["params"]["pretrained"] == "False" and recorded["params"]["train.max_epochs"] == "2"
    assert recorded["params"]["best_epoch"] == str(history["best_epoch"])
    last = history["epochs"][-1]
    for name in ("train_loss", "valid_loss", "samples_per_s"):
        assert recorded["metrics"][name] == pytest.approx(last[name])
    client = __import__("mlflow").MlflowClient()
    steps = [m.step for m in client.get_metric_history(recorded["run_id"], "valid_loss")]
    assert steps == [record["epoch"] for record in history["epochs"]]
    artifacts = {a.path for a in client.list_artifacts(recorded["run_id"], "train")}
    assert artifacts == {"train/history.json", "train/loss_curves.png"}


def test_early_stopping_rules_on_a_scripted_loss_sequence() -> None:
    """patience 2 on 5, 4, 4.5, 3, 3.5, 3.6, ...: consecutive resets at the new best of epoch 4 and stops after
    epoch 6; cumulative (the authors') keeps epoch 3's count and stops after epoch 5."""
    losses = [5.0, 4.0, 4.5, 3.0, 3.5, 3.6, 3.7, 3.8]
    stops = {}
    for rule, stale in (("consecutive", [0, 0, 1, 0, 1, 2]), ("cumulative", [0, 0, 1, 1, 2])):
        state = TrainState("f", pretrained=False)
        seen = []
        for epoch, loss in enumerate(losses, start=1):
            state.update(epoch, loss, rule)
            seen.append(state.stale)
            if state.done(max_epochs=100, patience=2):
                break
        assert seen == stale, rule
        stops[rule] = (state.epoch, state.best_epoch, state.best_valid_loss)
    assert stops == {"consecutive": (6, 4, 3.0), "cumulative": (5, 4, 3.0)}


def scripted(*losses: float):
    """A stand-in for validation_losses giving every task the next scripted loss, one per epoch."""
    remaining = iter(losses)

    def validation(model, valid, batch_size, device, *world) -> dict[str, float]:
        loss = next(remaining)
        return {task.value: loss for task in valid}
    return validation


def test_cumulative_rule_stops_training(workdir: Path, monkeypatch) -> None:
    monkeypatch.setattr(training, "validation_losses", scripted(5.0, 4.0, 4.5, 3.0, 3.5, 3.6))
    result = run(tiny_settings(workdir, max_epochs=10, patience=2, early_stopping="cumulative"))
    assert [r.epoch for r in result.history] == [1, 2, 3, 4, 5] and result.stopped_early
    assert [r.best for r in result.history] == [True, True, False, True, False] and result.best_epoch == 4
    history = json.loads(result.run.history.read_text())
    assert history["early_stopping"] == "cumulative" and history["finished"]


def test_passes_per_epoch_multiply_the_steps(workdir: Path, monkeypatch) -> None:
    """12 users, batch 4: one pass is 3 batches per task; three passes are 9, each user 3 times per task."""
    steps: list[Task] = []
    original = training.train_step

    def counting(model, optimizer, batch, task, device, micro_batch_size=None, *share, **scale):
        steps.append(task)
        return original(model, optimizer, batch, task, device, micro_batch_size, *share, **scale)

    monkeypatch.setattr(training, "train_step", counting)
    settings = tiny_settings(workdir, max_epochs=1, passes_per_epoch=3)
    result = run(settings)
    assert len(steps) == 18 and steps.count(Task.SEQUENTIAL) == steps.count(Task.DIRECT) == 9
    assert result.history[0].samples == 3 * 2 * N_USERS
    data = TrainData.load(WorkPaths.from_settings(settings))
    for task in (Task.SEQUENTIAL, Task.DIRECT):
        prompts = training.epoch_prompts(task, data, settings, epoch=1)
        assert sorted(p.user for p in prompts) == sorted(list(range(1, N_USERS + 1)) * 3)
        one_pass = training.epoch_prompts(task, data, tiny_settings(workdir, passes_per_epoch=1), epoch=1)
        assert prompts[:N_USERS] == one_pass and prompts[N_USERS:2 * N_USERS] != one_pass  # fresh draws per pass
    steps.clear()
    run(tiny_settings(workdir, max_epochs=1))
    assert len(steps) == 6


def test_a_killed_retrain_never_touches_the_finished_model(workdir: Path, tmp_path: Path) -> None:
    """A finished run, retrained (resume=False) and killed after epoch 1: checkpoint/ and history.json stay
    byte-identical and finished, evaluation still gets the finished model; resume finishes the attempt, equal to
    an uninterrupted run."""
    settings = tiny_settings(workdir, max_epochs=2)
    first = run(settings)
    folder = first.run
    before = {p.relative_to(folder.root): p.read_bytes()
              for p in [*folder.checkpoint.rglob("*"), folder.history] if p.is_file()}

    def killed_after_epoch_1(record: EpochRecord) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(settings, on_epoch=killed_after_epoch_1)
    after = {p.relative_to(folder.root): p.read_bytes()
             for p in [*folder.checkpoint.rglob("*"), folder.history] if p.is_file()}
    assert after == before and json.loads(folder.history.read_text())["finished"]
    assert (folder.attempt.checkpoint).is_dir() and not is_finished(folder.attempt)
    assert checkpoint_to_evaluate(folder) == folder.checkpoint

    seen: list[int] = []
    resumed = run(settings, resume=True, on_epoch=lambda record: seen.append(record.epoch))
    assert seen == [2] and not folder.attempt.root.exists()
    assert curve(resumed) == curve(first)  # the same settings and seed: the same training
    assert_same_weights(weights(folder.checkpoint), weights(first.run.checkpoint))
    again: list[int] = []
    assert curve(run(settings, resume=True, on_epoch=lambda record: again.append(record.epoch))) == curve(first)
    assert again == [1, 2]  # nothing left to continue: a new attempt, the same training again


def test_evaluation_refuses_an_unfinished_training_unless_asked(workdir: Path) -> None:
    settings = tiny_settings(workdir, max_epochs=2)
    folder = WorkPaths.from_settings(settings).run(settings)
    with pytest.raises(FileNotFoundError, match="no trained model"):
        checkpoint_to_evaluate(folder)

    def killed(record: EpochRecord) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(settings, on_epoch=killed)
    assert not folder.checkpoint.exists() and not folder.history.exists()  # nothing finished yet
    with pytest.raises(UnfinishedTraining, match=r"epoch 1 of 2 done.*allow_unfinished"):
        checkpoint_to_evaluate(folder)
    assert checkpoint_to_evaluate(folder, allow_unfinished=True) == folder.attempt.checkpoint


def test_attention_kernel_and_compile_are_how_training_runs_not_what_it_computes(workdir: Path) -> None:
    """`train.attention` picks T5's kernel (eager and SDPA give the same loss up to rounding), `train.compile`
    compiles T5 in place; neither changes the run's folder, so a training may resume with either."""
    from elmrec.device import Device
    from elmrec.pretrained import load_tokenizer
    from elmrec.wholeword import collate

    settings = tiny_settings(workdir)
    data, device = TrainData.load(WorkPaths.from_settings(settings)), Device.resolve("cpu", "fp32")
    losses = {}
    for attention in ("sdpa", "eager"):
        other = tiny_settings(workdir, attention=attention)
        model, _ = training.build_model(other, data, device)
        assert model.t5.config._attn_implementation == attention
        model.eval()
        prompts = training.epoch_prompts(Task.SEQUENTIAL, data, settings, epoch=1)[:4]
        batch = collate(model.encode(load_tokenizer(settings.model), prompts, Task.SEQUENTIAL), np.arange(4))
        with torch.no_grad():
            losses[attention] = float(model(batch["input_ids"], batch["ww_ids"], batch["attention_mask"],
                                            Task.SEQUENTIAL, labels=batch["labels"]).loss)
        assert WorkPaths.from_settings(other).run(other).root == WorkPaths.from_settings(settings).run(settings).root
    assert losses["eager"] == pytest.approx(losses["sdpa"], rel=1e-5)
    compiled = tiny_settings(workdir, compile=True)
    model, _ = training.build_model(compiled, data, device)  # compiling happens at the first call, not here
    assert model.t5._compiled_call_impl is not None and "node_table.weight" in model.state_dict()
    assert WorkPaths.from_settings(compiled).run(compiled).root == WorkPaths.from_settings(settings).run(settings).root


def test_a_cpu_training_keeps_freed_memory_unless_malloc_is_system(workdir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`train.malloc=reuse` (the default) asks for the reused heap (elmrec.memory) before a CPU training and gives
    its free pages back before an epoch's first step, after every RELEASE_EVERY (here 3) and after its last;
    `system` leaves glibc's default and releases nothing. Like the device, it changes how a training runs, not its
    folder."""
    calls: list[str] = []
    monkeypatch.setattr(memory, "reuse_freed_memory", lambda: calls.append("reuse") or True)
    monkeypatch.setattr(memory, "release_freed_memory", lambda: calls.append("release") or True)
    monkeypatch.setattr(memory, "RELEASE_EVERY", 3)
    step = training.train_step
    monkeypatch.setattr(training, "train_step", lambda *args, **kw: calls.append("step") or step(*args, **kw))
    reused, system = tiny_settings(workdir, max_epochs=1), tiny_settings(workdir, max_epochs=1, malloc="system")
    assert reused.train.malloc == "reuse"
    assert WorkPaths.from_settings(system).run(system).root == WorkPaths.from_settings(reused).run(reused).root
    run(system)
    steps = calls.count("step")
    assert steps >= 3 and set(calls) == {"step"}
    calls.clear()
    run(reused, resume=False)
    assert calls[:2] == ["reuse", "release"] and calls[2:] == [  # after every 3rd step and after the epoch's last
        call for n in range(1, steps + 1) for call in ["step", *(["release"] if n % 3 == 0 or n == steps else [])]]
