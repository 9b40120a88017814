"""Training: multitask fine-tuning of ELMRec, validation loss every epoch, early stopping, exact resume.

Every epoch, for each task of `settings.train.tasks`:
    prompts = sequential_epoch / direct_epoch    rng = default_rng([seed, epoch, task, STREAM_PROMPTS]),
              `passes_per_epoch` times in a row  (fresh prompts for every user on each pass)
    encoded = model.encode(prompts)             one batched tokenizer call per task and epoch
    batches = bucketed_batches(encoded.lengths)  rng = default_rng([seed, epoch, task, STREAM_BATCHES])
then batches alternate between tasks (seq, direct, seq, direct, ..., then the rest of the longer list).
Dropout draws from torch.manual_seed(f(seed, epoch)). So an epoch depends only on the weights and optimizer
state it starts from, and a run resumed from `last/` repeats an uninterrupted one exactly. The next epoch's
prompts are tokenized in a background thread while this epoch trains.

Validation: the bare valid-split prompts of `valid_users` users drawn at random (seeded; not the first IDs,
whose P5 item IDs correlate most with order), encoded once. A task's loss is the mean over prompts of the mean
loss of the prompt's target tokens; the criterion is the mean over tasks. The best epoch's model is saved to
`checkpoint/` (ELMRec.save); training stops after `max_epochs`, or once `patience` epochs did not lower the
validation loss: since the best one (`early_stopping=consecutive`) or in total (`cumulative`, the authors').

A finished model is never destroyed: a training writes checkpoint/, last/ and history.json into the run's
`attempt/` folder and moves them over the run's own only when it finishes (checkpoint.promote). So
checkpoint/ + history.json always describe a finished training; a killed retrain leaves them as they were, and
resume=True continues the attempt (with none to continue, it trains a new one: whether a stored model is still
current is the stage's question, elmrec.stages.up_to_date, not training's).

Several processes (DDP, `train.nproc`; elmrec.distributed starts them under torchrun and calls `train` in each):
every process builds the same epochs (the streams above are seeded, not per process) and takes its share of
each batch, rows[rank::nproc], so `batch_size` is the global batch; elmrec.step weights the shares so that the
update is the one-process update. A process whose share is empty (a batch shorter than nproc) steps on one row
with weight 0, to stay in step. The batch losses and the validation sums are summed over the processes, so every
process keeps the same state and stops at the same epoch. Rank 0 alone writes attempt/, promotes it and calls
`on_epoch`; with resume, the others load the last/ it resumes from.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedTokenizerBase

from elmrec.checkpoint import (
    TrainState,
    UnfinishedTraining,
    attempt_state,
    fingerprint,
    is_finished,
    load_last,
    promote,
    read_history,
    save_last,
)
from elmrec.config import Settings, Task
from elmrec.data import schemas
from elmrec.device import Device
from elmrec.graph import load_adjacency
from elmrec.memory import releases_for, releasing
from elmrec.model import ELMRec
from elmrec.paths import RunPaths, WorkPaths, atomic_path
from elmrec.pretrained import load_t5, load_tokenizer
from elmrec.progress import progress_bar
from elmrec.prompts import direct_epoch, direct_eval, sequential_epoch, sequential_eval
from elmrec.step import make_optimizer, train_step, validation_losses
from elmrec.users import validation_users
from elmrec.wholeword import Encoded, Prompt, bucketed_batches, collate
from elmrec.world import ONE_PROCESS, World

log = logging.getLogger(__name__)

TASK_STREAM = {Task.SEQUENTIAL: 0, Task.DIRECT: 1}  # fixed per task: reordering settings.train.tasks changes nothing
STREAM_PROMPTS, STREAM_BATCHES, STREAM_TORCH = 0, 1, 2  # independent random streams of one (seed, epoch, task)


@dataclass(frozen=True)
class TrainData:
    """What training reads from the preprocess and graph stages."""

    histories: pl.DataFrame  # user, items (full chronological history; train = items[:-2])
    candidates: pl.DataFrame  # user, split, target, candidates
    n_users: int
    n_items: int
    adjacency: sp.csr_matrix  # Â, (U+I+1, U+I+1)

    @classmethod
    def load(cls, paths: WorkPaths) -> TrainData:
        stats = json.loads(paths.data.stats.read_text())
        return cls(schemas.read(paths.data.histories, schemas.HISTORIES),
                   schemas.read(paths.data.candidates, schemas.CANDIDATES),
                   int(stats["n_users"]), int(stats["n_items"]), load_adjacency(paths.graph))


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float  # mean over tasks of the mean batch loss
    valid_loss: float  # mean over tasks of the mean prompt loss: the early-stopping criterion
    train_losses: dict[str, float]  # per task
    valid_losses: dict[str, float]  # per task
    samples: int  # training prompts seen
    seconds: float  # training wall time (batches only; excludes validation and saving)
    samples_per_s: float
    best: bool  # the best validation loss so far: this epoch's model is checkpoint/


@dataclass(frozen=True)
class TrainResult:
    history: list[EpochRecord]
    best_epoch: int
    best_valid_loss: float
    pretrained: bool
    device: str
    stopped_early: bool
    run: RunPaths


@dataclass(frozen=True)
class TaskEpoch:
    """One task's encoded prompts of one epoch and its batches (index arrays into `encoded`)."""

    task: Task
    encoded: Encoded
    batches: list[np.ndarray]


# ---------------------------------------------------------------- prompts and batches


def epoch_prompts(task: Task, data: TrainData, settings: Settings, epoch: int) -> list[Prompt]:
    """The training prompts of one task in one epoch (a pure function of seed, epoch and task)."""
    rng = np.random.default_rng([settings.seed, epoch, TASK_STREAM[task], STREAM_PROMPTS])
    prompts: list[Prompt] = []
    for _ in range(settings.train.passes_per_epoch):  # one rng continues: every pass draws fresh prompts
        if task is Task.SEQUENTIAL:
            prompts += sequential_epoch(data.histories, rng, settings.train.max_history)
        else:
            prompts += direct_epoch(data.histories, data.n_items, rng, settings.data.n_negatives)
    return prompts


def valid_users(data: TrainData, settings: Settings) -> np.ndarray:
    """The validation users, ascending: all, or a seeded random sample of `valid_users` of them (elmrec.users)."""
    return validation_users(data.histories["user"].to_numpy(), settings.train.valid_users, settings.seed)


def valid_prompts(task: Task, data: TrainData, settings: Settings) -> list[Prompt]:
    """Fixed bare valid-split prompts of the validation users (`valid_users`)."""
    users = pl.Series(valid_users(data, settings)).implode()
    if task is Task.SEQUENTIAL:
        return sequential_eval(data.histories.filter(pl.col("user").is_in(users)), "valid", settings.train.max_history)
    return direct_eval(data.candidates.filter(pl.col("user").is_in(users)), "valid")


def build_epoch(model: ELMRec, tokenizer: PreTrainedTokenizerBase, data: TrainData, settings: Settings,
                epoch: int) -> list[TaskEpoch]:
    parts = []
    for task in model.tasks:
        encoded = model.encode(tokenizer, epoch_prompts(task, data, settings, epoch), task)
        rng = np.random.default_rng([settings.seed, epoch, TASK_STREAM[task], STREAM_BATCHES])
        parts.append(TaskEpoch(task, encoded, bucketed_batches(encoded.lengths, settings.train.batch_size, rng)))
    return parts


def interleave(parts: list[TaskEpoch]) -> list[tuple[TaskEpoch, np.ndarray]]:
    """Batches alternating between tasks in order, then the rest of the longer lists."""
    longest = max((len(p.batches) for p in parts), default=0)
    return [(p, p.batches[i]) for i in range(longest) for p in parts if i < len(p.batches)]


# ---------------------------------------------------------------- steps


def build_model(settings: Settings, data: TrainData, device: Device) -> tuple[ELMRec, bool]:
    """(model in train mode on the device, pretrained); initialisation seeded by settings.seed."""
    torch.manual_seed(settings.seed)
    t5, pretrained = load_t5(settings.model)
    t5.set_attn_implementation(settings.train.attention)
    model = ELMRec(t5, settings.model, data.n_users, data.n_items, data.adjacency, settings.train.tasks)
    if settings.train.compile:
        model.t5.compile(dynamic=True)  # in place: the state dict keeps its keys (checkpoints unchanged)
    return model.to(device.device).train(), pretrained


def run_epoch(model: ELMRec | DistributedDataParallel, optimizer: torch.optim.Optimizer, parts: list[TaskEpoch],
              settings: Settings, epoch: int, device: Device, world: World = ONE_PROCESS, release_every: int = 0
              ) -> tuple[dict[str, float], int, float]:
    """Train one epoch: (mean batch loss per task, samples, seconds). Under DDP every process holds the same
    batches and steps on its share of each (World.share), the losses of the shares added up at the end. On the
    reused heap (elmrec.memory) its free pages go back before the first step, every `release_every` steps and after
    the last (memory.releasing)."""
    torch.manual_seed(int(np.random.default_rng([settings.seed, epoch, STREAM_TORCH]).integers(2**62)))
    order = interleave(parts)
    losses: dict[Task, list[torch.Tensor]] = {p.task: [] for p in parts}
    samples, start = 0, time.perf_counter()
    with progress_bar(order, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not world.main) as bar:
        for step, (part, rows) in enumerate(releasing(bar, release_every)):
            share = world.share(rows)
            tokens = int(np.diff(part.encoded.label_offsets)[rows].sum())  # the global batch's target tokens
            stand_in = len(share) == 0  # fewer rows than processes: step on a row with no weight, in step with DDP
            loss = train_step(model, optimizer, device.put(collate(part.encoded, rows[:1] if stand_in else share)),
                              part.task, device, settings.train.micro_batch_size, tokens,
                              grad_scale=0.0 if stand_in else world.size)
            losses[part.task].append(torch.zeros_like(loss) if stand_in else loss)
            samples += len(rows)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item() * world.size:.3f}", task=part.task.value)  # DDP: an estimate
    means = {t.value: float(world.sum(torch.stack(v)).float().mean()) if v else math.nan for t, v in losses.items()}
    if not all(math.isfinite(v) for v in means.values()):
        raise FloatingPointError(f"epoch {epoch}: training loss is not finite ({means}); lower train.lr")
    return means, samples, time.perf_counter() - start


# ---------------------------------------------------------------- the loop


def write_history(run: RunPaths, state: TrainState, device: Device, settings: Settings, finished: bool,
                  world: World = ONE_PROCESS) -> None:
    seconds = sum(r["seconds"] for r in state.history)
    summary = {"epochs": state.history, "best_epoch": state.best_epoch, "best_valid_loss": state.best_valid_loss,
               "pretrained": state.pretrained, "device": _where(device, world), "finished": finished,
               "stopped_early": finished and state.epoch < settings.train.max_epochs,
               "samples_per_s": sum(r["samples"] for r in state.history) / seconds if seconds else 0.0,
               "max_epochs": settings.train.max_epochs, "patience": settings.train.patience,
               "early_stopping": settings.train.early_stopping, "passes_per_epoch": settings.train.passes_per_epoch}
    with atomic_path(run.history) as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")


def train(settings: Settings, paths: WorkPaths, resume: bool = False,
          on_epoch: Callable[[EpochRecord], None] | None = None) -> TrainResult:
    """Train until early stopping or max_epochs, in the run's attempt/ folder, then promote it over the run's
    checkpoint/, last/ and history.json. resume=True continues an unfinished attempt with the same settings (else
    starts a new one); resume=False always starts a new attempt (a retrain).

    `on_epoch` is called after each newly trained epoch, once its outputs are on disk (in attempt/).

    Inside a process group (elmrec.distributed.main, under torchrun) this is one process of a DDP training: every
    process runs it; rank 0 alone touches the files (and calls `on_epoch`), the others load what it resumes.
    """
    check_tasks(settings)
    world = World.current()
    run, cfg = paths.run(settings), settings.train
    if world.main and is_finished(run.attempt):  # a promotion was interrupted: complete it before anything else
        promote(run)
    device = Device.resolve(cfg.device, cfg.precision)
    release_every = releases_for(cfg.malloc, device.device.type)
    data = TrainData.load(paths)
    model, pretrained = build_model(settings, data, device)
    optimizer = make_optimizer(model, settings)
    fresh = TrainState(fingerprint(settings), pretrained)
    state = attempt_state(run, model, optimizer, fresh, resume) if world.main else fresh
    if world.from_main(state is not fresh) and not world.main:  # rank 0 resumes attempt/: every process does
        state = load_last(run.attempt.last, model, optimizer)
    log.info("training %s on %s: %d users, %d items, tasks %s, pretrained T5: %s", run.root.name,
             _where(device, world), data.n_users, data.n_items, [t.value for t in model.tasks], state.pretrained)
    if not state.done(cfg.max_epochs, cfg.patience):
        fit(model, optimizer, load_tokenizer(settings.model), data, settings, state, run.attempt, device, on_epoch,
            world, release_every)
    if world.main:
        write_history(run.attempt, state, device, settings, finished=True, world=world)
        promote(run)
    world.barrier()  # no process returns before the training is promoted
    if state.epoch < cfg.max_epochs:
        log.info("early stop after epoch %d: %d non-improving epochs (%s)", state.epoch, state.stale,
                 cfg.early_stopping)
    log.info("best epoch %d (valid loss %.4f) -> %s", state.best_epoch, state.best_valid_loss, run.checkpoint)
    return _result(state, _where(device, world), run, settings)


def check_tasks(settings: Settings) -> None:
    """ValueError unless training supports every task of settings.train.tasks."""
    unsupported = [t.value for t in settings.train.tasks if t not in TASK_STREAM]
    if unsupported:
        raise ValueError(f"training supports the tasks {[t.value for t in TASK_STREAM]}, not {unsupported}")


def _where(device: Device, world: World) -> str:
    return device.describe() + (f" x {world.size} processes" if world.distributed else "")


def _result(state: TrainState, where: str, run: RunPaths, settings: Settings) -> TrainResult:
    return TrainResult([EpochRecord(**r) for r in state.history], state.best_epoch, state.best_valid_loss,
                       state.pretrained, where, state.epoch < settings.train.max_epochs, run)


def read_result(run: RunPaths) -> TrainResult:
    """What `train` returned, from the finished training's history.json in `run` (a training run elsewhere:
    elmrec.distributed)."""
    history = read_history(run.history)
    if not history or not history.get("finished"):
        raise UnfinishedTraining(f"{run.root} holds no finished training (history.json)")
    return TrainResult([EpochRecord(**r) for r in history["epochs"]], history["best_epoch"],
                       history["best_valid_loss"], history["pretrained"], history["device"], history["stopped_early"],
                       run)


def fit(model: ELMRec, optimizer: torch.optim.Optimizer, tokenizer: PreTrainedTokenizerBase, data: TrainData,
        settings: Settings, state: TrainState, run: RunPaths, device: Device,
        on_epoch: Callable[[EpochRecord], None] | None, world: World = ONE_PROCESS, release_every: int = 0) -> None:
    """The epoch loop from state.epoch + 1, writing into `run` (the attempt folder); the next epoch's prompts are
    encoded while this one trains. Under DDP every process trains and validates its shares and keeps the same
    state (the losses are summed over the processes); rank 0 writes the files."""
    cfg = settings.train
    net = world.wrap(model, find_unused=len(model.tasks) > 1)  # a step trains one task: the other's tables rest
    valid = {task: model.encode(tokenizer, valid_prompts(task, data, settings), task) for task in model.tasks}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="elmrec-encode") as encoder:
        # From here on only this worker thread uses the tokenizer (fast tokenizers are not re-entrant).
        pending: Future[list[TaskEpoch]] | None = None
        try:
            while not state.done(cfg.max_epochs, cfg.patience):
                epoch = state.epoch + 1
                parts = (pending or encoder.submit(build_epoch, model, tokenizer, data, settings, epoch)).result()
                pending = (encoder.submit(build_epoch, model, tokenizer, data, settings, epoch + 1)
                           if epoch < cfg.max_epochs else None)
                train_losses, samples, seconds = run_epoch(net, optimizer, parts, settings, epoch, device, world,
                                                           release_every)
                valid_losses = validation_losses(model, valid, cfg.batch_size, device, world)
                valid_loss = float(np.mean(list(valid_losses.values())))
                best = state.update(epoch, valid_loss, cfg.early_stopping)
                record = EpochRecord(epoch, float(np.mean(list(train_losses.values()))), valid_loss, train_losses,
                                     valid_losses, samples, seconds, samples / seconds if seconds else 0.0, best)
                state.history.append(asdict(record))
                if not world.main:
                    continue  # the next epoch's first gradient reduction waits for rank 0's writes
                if best:
                    model.save(run.checkpoint)
                save_last(run.last, model, optimizer, state)
                write_history(run, state, device, settings, state.done(cfg.max_epochs, cfg.patience), world)
                log.info("epoch %d: train %.4f %s, valid %.4f %s%s, %.1f samples/s", epoch, record.train_loss,
                         _fmt(train_losses), valid_loss, _fmt(valid_losses), " (best)" if best else "",
                         record.samples_per_s)
                if on_epoch is not None:
                    on_epoch(record)
        finally:
            if pending is not None:
                pending.cancel()


def _fmt(losses: dict[str, float]) -> str:
    return "(" + ", ".join(f"{task} {value:.4f}" for task, value in losses.items()) + ")"
