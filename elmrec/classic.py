"""Training and evaluation of the classic baselines (SASRec, LightGCN) in ELMRec's harness.

Same inputs (the preprocess stage's Parquet tables; LightGCN: the graph stage's Â), same evaluation users,
candidates, exclusions and metric code (elmrec.classic_eval), same output layout as ELMRec:

    paths.run(settings)/
      checkpoint/      model.safetensors + shape.json (recommender, users, items, its settings section)
      last/            model.safetensors, optimizer.safetensors + .json, state.json: exact resume
      history.json     per epoch: train_loss, valid_loss, valid metrics; best_epoch, finished, device, ...
      attempt/         a run in progress (checkpoint/, last/, history.json); moved over the three above only when
                       it finishes (elmrec.checkpoint.promote, as ELMRec's), so an interrupted or restarted run never
                       clobbers a finished one
      eval-<key>/<split>/metrics.json, predictions_<task>_score.parquet

Every epoch draws its batches from default_rng([seed, epoch, 0]) and its dropout from a torch seed derived
from (seed, epoch), so a run resumed from last/ repeats an uninterrupted one exactly. Validation after every
`eval_every` epochs on a seeded sample of `valid_users` users (elmrec.users: the users ELMRec's training validates
on); the best epoch by validation NDCG@10 of `select_task` becomes checkpoint/; training stops after `patience`
evaluations without a better one, or `max_epochs`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model

from elmrec.checkpoint import checkpoint_to_evaluate, is_finished, promote
from elmrec.classic_batches import EdgeBatches, SequenceBatches
from elmrec.classic_checkpoint import (
    MODEL_FILE,
    SHAPE_FILE,
    ClassicState,
    load_last,
    read_state,
    save_checkpoint,
    save_last,
)
from elmrec.classic_eval import RANKED, TaskInputs, evaluate_tasks, to_device
from elmrec.config import LightGCNSettings, SASRecSettings, Settings, Task
from elmrec.data import schemas
from elmrec.device import Device
from elmrec.evaluate import EvalData, write_outputs
from elmrec.graph import load_adjacency
from elmrec.lightgcn import LightGCN
from elmrec.metrics import SCORE_DECODER
from elmrec.paths import RunPaths, WorkPaths, atomic_path
from elmrec.sasrec import SASRec
from elmrec.shapes import key
from elmrec.users import validation_users

log = logging.getLogger(__name__)

STREAM_BATCHES, STREAM_TORCH = 0, 1  # independent random streams of one (seed, epoch)
VALID_TOP_N = 10  # validation ranks 10 items: the criterion is NDCG@10, whatever eval.top_n says
Classic = SASRec | LightGCN


def section(settings: Settings) -> SASRecSettings | LightGCNSettings:
    """The settings section of the run's recommender."""
    if settings.recommender == "sasrec":
        return settings.sasrec
    if settings.recommender == "lightgcn":
        return settings.lightgcn
    raise ValueError(f"recommender {settings.recommender!r} is not a classic baseline (sasrec, lightgcn)")


def build(cfg: SASRecSettings | LightGCNSettings, n_users: int, n_items: int, paths: WorkPaths) -> Classic:
    """A freshly initialised model (seed torch first); LightGCN reads Â from the graph stage."""
    if isinstance(cfg, SASRecSettings):
        return SASRec(n_items, cfg)
    return LightGCN(n_users, n_items, load_adjacency(paths.graph), cfg)


def counts(paths: WorkPaths) -> tuple[int, int]:
    stats = json.loads(paths.data.stats.read_text())
    return int(stats["n_users"]), int(stats["n_items"])


# ---------------------------------------------------------------------------------------------- loading


def load_classic(settings: Settings, paths: WorkPaths, checkpoint: Path | None = None) -> Classic:
    """The trained model of checkpoint/ (built from its shape.json), in eval mode on train.device."""
    folder = checkpoint or paths.run(settings).checkpoint
    if not (folder / SHAPE_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no finished {settings.recommender} model; run the train stage first")
    shape = json.loads((folder / SHAPE_FILE).read_text())
    if shape["recommender"] != settings.recommender:
        raise ValueError(f"{folder} holds a {shape['recommender']} model, not {settings.recommender}")
    cfg = type(section(settings)).model_validate(shape["settings"])
    n_users, n_items = counts(paths)
    if shape["n_items"] != n_items or shape["n_users"] not in (None, n_users):
        raise ValueError(f"{folder} was trained on {shape['n_users']} users / {shape['n_items']} items, the data "
                         f"has {n_users} / {n_items}")
    model = build(cfg, n_users, n_items, paths)
    device = Device.resolve(settings.train.device, "fp32")
    load_model(model, str(folder / MODEL_FILE), strict=True)
    return model.to(device.device).eval()


# ---------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float  # mean batch loss
    valid_loss: float  # cross-entropy of the held-out valid item over all items (NaN: not evaluated)
    valid_ndcg: float  # NDCG@10 of select_task on the valid split: the early-stopping criterion (NaN: not evaluated)
    valid_metrics: dict[str, dict[str, Any]]  # {task: metrics} on the valid split ({} when not evaluated)
    samples: int  # training positions (SASRec) or BPR triples (LightGCN)
    seconds: float  # training wall time (batches only)
    samples_per_s: float
    best: bool  # this epoch's model is checkpoint/


@dataclass(frozen=True)
class ClassicResult:
    history: list[EpochRecord]
    best_epoch: int
    best_valid_loss: float
    best_valid_ndcg: float
    device: str
    stopped_early: bool
    run: RunPaths
    pretrained: bool = False  # as ELMRec's TrainResult: these models always start from scratch


def epoch_batches(batches: SequenceBatches | EdgeBatches, seed: int, epoch: int) -> list[dict[str, np.ndarray]]:
    return batches.epoch(np.random.default_rng([seed, epoch, STREAM_BATCHES]))


def run_epoch(model: Classic, optimizer: torch.optim.Optimizer, batches: list[dict[str, np.ndarray]],
              device: Device, seed: int, epoch: int) -> float:
    """One pass over the epoch's batches; the mean batch loss."""
    torch.manual_seed(int(np.random.default_rng([seed, epoch, STREAM_TORCH]).integers(2**62)))
    model.train()
    losses = []
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = model.batch_loss(to_device(batch, device))
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    mean = float(torch.stack(losses).mean()) if losses else math.nan
    if not math.isfinite(mean):
        raise FloatingPointError(f"epoch {epoch}: training loss is not finite ({mean}); lower the learning rate")
    return mean


def write_history(run: RunPaths, state: ClassicState, settings: Settings, device: Device, finished: bool) -> None:
    cfg = section(settings)
    seconds = sum(r["seconds"] for r in state.history)
    summary = {"recommender": settings.recommender, "epochs": state.history, "best_epoch": state.best_epoch,
               "best_valid_loss": state.best_valid_loss if math.isfinite(state.best_valid_loss) else None,
               "best_valid_ndcg@10": state.best_ndcg if math.isfinite(state.best_ndcg) else None,
               "criterion": f"{cfg.select_task.value}/ndcg@10", "pretrained": False, "device": device.describe(),
               "finished": finished, "stopped_early": finished and state.epoch < cfg.max_epochs,
               "samples_per_s": sum(r["samples"] for r in state.history) / seconds if seconds else 0.0,
               "max_epochs": cfg.max_epochs, "patience": cfg.patience}
    with atomic_path(run.history) as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")


def train_classic(settings: Settings, paths: WorkPaths, resume: bool = True,
                  on_epoch: Callable[[EpochRecord], None] | None = None) -> ClassicResult:
    """Train settings.recommender until early stopping or max_epochs, in the run's attempt/ folder, then promote it
    over the run's own; resume=True continues an interrupted attempt (else starts a new one). `on_epoch` is called
    after each newly trained epoch, once on disk."""
    cfg, run = section(settings), paths.run(settings)
    attempt = run.attempt
    if is_finished(attempt):  # a promotion was interrupted: complete it before anything else
        promote(run)
    device = Device.resolve(settings.train.device, "fp32")
    fingerprint = key(settings, "train", length=16)
    n_users, n_items = counts(paths)
    torch.manual_seed(settings.seed)
    model = build(cfg, n_users, n_items, paths).to(device.device)
    weight_decay = cfg.weight_decay if isinstance(cfg, SASRecSettings) else 0.0  # LightGCN: `reg` in its loss
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=weight_decay)
    state = ClassicState(fingerprint)
    saved = read_state(attempt.last) if resume else None
    if saved is not None and saved.fingerprint == fingerprint:
        state = load_last(attempt.last, model, optimizer)
        log.info("resuming %s after epoch %d (best epoch %d)", attempt.root, state.epoch, state.best_epoch)
    elif attempt.root.exists():
        shutil.rmtree(attempt.root)
    log.info("training %s on %s: %d users, %d items", run.root.name, device.describe(), n_users, n_items)
    fit(model, optimizer, settings, paths, state, attempt, device, on_epoch)
    write_history(attempt, state, settings, device, finished=True)
    promote(run)
    log.info("best epoch %d (valid %s ndcg@10 %.4f) -> %s", state.best_epoch, cfg.select_task.value,
             state.best_ndcg, run.checkpoint)
    return _result(state, cfg, device, run)


def training_batches(cfg: SASRecSettings | LightGCNSettings, model: Classic,
                     paths: WorkPaths) -> SequenceBatches | EdgeBatches:
    if isinstance(cfg, SASRecSettings):
        histories = schemas.read(paths.data.histories, schemas.HISTORIES).sort("user")
        return SequenceBatches(histories, model.n_items, cfg.max_len, cfg.batch_size, negatives=cfg.loss == "bce")
    return EdgeBatches(load_adjacency(paths.graph), model.n_users, model.n_items, cfg.batch_size)


def validate(model: Classic, valid: dict[Task, TaskInputs], n_items: int,
             device: Device) -> tuple[dict[str, dict[str, Any]], float]:
    """({task: metrics} on the valid split, cross-entropy of the valid item over all items)."""
    by_task, _, valid_loss = evaluate_tasks(model, valid, n_items, VALID_TOP_N, device)
    return {task: decoders[SCORE_DECODER] for task, decoders in by_task.items()}, valid_loss


def fit(model: Classic, optimizer: torch.optim.Optimizer, settings: Settings, paths: WorkPaths,
        state: ClassicState, attempt: RunPaths, device: Device,
        on_epoch: Callable[[EpochRecord], None] | None) -> None:
    """The epoch loop from state.epoch + 1, writing into the attempt folder."""
    cfg = section(settings)
    batches = training_batches(cfg, model, paths)
    users = validation_users(schemas.read(paths.data.histories, schemas.HISTORIES)["user"].to_numpy(),
                             cfg.valid_users, settings.seed)
    valid_data = EvalData.load(paths.data, "valid", users=users)
    width = cfg.max_len if isinstance(cfg, SASRecSettings) else 1
    valid = {task: TaskInputs.build(valid_data, task, width, settings.train.max_history) for task in RANKED}
    shape = {"recommender": settings.recommender, "n_users": getattr(model, "n_users", None),
             "n_items": model.n_items, "settings": cfg.model_dump(mode="json")}
    while not state.done(cfg):
        state.epoch = epoch = state.epoch + 1
        start = time.perf_counter()
        train_loss = run_epoch(model, optimizer, epoch_batches(batches, settings.seed, epoch), device,
                               settings.seed, epoch)
        seconds = time.perf_counter() - start
        metrics, valid_loss, ndcg, best = {}, math.nan, math.nan, False
        if epoch % cfg.eval_every == 0 or epoch == cfg.max_epochs:
            metrics, valid_loss = validate(model, valid, valid_data.n_items, device)
            ndcg = float(metrics[cfg.select_task.value]["ndcg@10"])
            best = ndcg > state.best_ndcg
            state.stale = 0 if best else state.stale + 1
            if best:
                state.best_epoch, state.best_ndcg, state.best_valid_loss = epoch, ndcg, valid_loss
                save_checkpoint(attempt.checkpoint, model, shape)
        record = EpochRecord(epoch, train_loss, valid_loss, ndcg, metrics, batches.n_samples, seconds,
                             batches.n_samples / seconds if seconds else 0.0, best)
        state.history.append(asdict(record))
        save_last(attempt.last, model, optimizer, state)
        write_history(attempt, state, settings, device, finished=False)
        log.info("epoch %d: train loss %.4f, valid loss %.4f, valid %s ndcg@10 %.4f%s, %.1f s", epoch, train_loss,
                 valid_loss, cfg.select_task.value, ndcg, " (best)" if best else "", seconds)
        if on_epoch is not None:
            on_epoch(record)


def _result(state: ClassicState, cfg: SASRecSettings | LightGCNSettings, device: Device,
            run: RunPaths) -> ClassicResult:
    return ClassicResult([EpochRecord(**r) for r in state.history], state.best_epoch, state.best_valid_loss,
                         state.best_ndcg, device.describe(), state.epoch < cfg.max_epochs, run)


# ---------------------------------------------------------------------------------------------- evaluation


def evaluate_classic(settings: Settings, paths: WorkPaths,
                     allow_unfinished: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
    """Rank both tasks for the evaluation users with the trained model (an unfinished training is refused unless
    `allow_unfinished`); writes metrics.json and predictions into paths.run(settings).evaluation(settings).
    Returns {task: {"score": metrics}}."""
    torch.manual_seed(settings.seed)  # scoring is deterministic; seeded anyway, as every entry point
    model = load_classic(settings, paths, checkpoint_to_evaluate(paths.run(settings), allow_unfinished))
    device = Device.resolve(settings.train.device, "fp32")
    data = EvalData.load(paths.data, settings.eval.split, settings.eval.max_users)
    width = model.max_len if isinstance(model, SASRec) else 1
    tasks = {task: TaskInputs.build(data, task, width, settings.train.max_history) for task in RANKED}
    start = time.perf_counter()
    metrics, predictions, _ = evaluate_tasks(model, tasks, data.n_items, settings.eval.top_n, device)
    write_outputs(paths.run(settings).evaluation(settings), metrics, predictions)
    log.info("%s on %s (%.1f s): %s", settings.recommender, settings.eval.split, time.perf_counter() - start,
             "; ".join(f"{t} hr@10 {m[SCORE_DECODER]['hr@10']:.4f} ndcg@10 {m[SCORE_DECODER]['ndcg@10']:.4f}"
                       for t, m in metrics.items()))
    return metrics
