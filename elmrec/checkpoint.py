"""Resume state of a training run: the `last/` folder, written whole after every epoch.

    last/
      model.safetensors        every weight of the ELMRec module (tied T5 weights stored once)
      optimizer.safetensors    the optimizer's per-parameter tensors, keyed `<param index>.<name>` (exp_avg, step, ...)
      optimizer.json           the optimizer's param groups and any non-tensor per-parameter values
      state.json               epochs done, history, best epoch and loss, epochs without improvement

No pickles: tensors go to safetensors, everything else to JSON. Every weight, moment and step count is stored
exactly, and the random streams of an epoch are derived from (seed, epoch), so a resumed run repeats an
uninterrupted one bit for bit.

A finished model is never destroyed. `RunPaths.checkpoint` + `history.json` (+ `last/`) always describe a
finished training; a training in progress writes the same three into `RunPaths.attempt` (`attempt/`), and
`promote` moves them over the finished ones only once the attempt has finished. Evaluation asks
`checkpoint_to_evaluate`, which refuses a run whose training has not finished unless told `allow_unfinished`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from elmrec.config import Settings
from elmrec.paths import RunPaths, atomic_dir
from elmrec.shapes import key

MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
STATE_FILE = "state.json"

log = logging.getLogger(__name__)


def fingerprint(settings: Settings) -> str:
    """A hash of everything that shapes the training trajectory; last/ of other values is not resumed from."""
    return key(settings, "train", length=16)


@dataclass
class TrainState:
    """Where a run stands after its last completed epoch."""

    fingerprint: str
    pretrained: bool  # whether T5 started from pretrained weights
    epoch: int = 0  # epochs completed
    best_epoch: int = 0  # 0: none yet
    best_valid_loss: float = math.inf
    stale: int = 0  # non-improving epochs, as the early-stopping rule counts them
    history: list[dict[str, Any]] = field(default_factory=list)  # one EpochRecord (as a dict) per epoch

    def done(self, max_epochs: int, patience: int) -> bool:
        return self.epoch >= max_epochs or self.stale >= patience

    def update(self, epoch: int, valid_loss: float,
               rule: Literal["consecutive", "cumulative"] = "consecutive") -> bool:
        """Count one more epoch; True if its validation loss is the best so far (strictly lower).

        consecutive: `stale` = epochs since the best one (an improvement resets it).
        cumulative: `stale` = non-improving epochs in total, never reset (the authors' `endure_count`).
        """
        self.epoch = epoch
        improved = valid_loss < self.best_valid_loss  # NaN never improves
        if improved:
            self.best_epoch, self.best_valid_loss = epoch, valid_loss
            if rule == "consecutive":
                self.stale = 0
        else:
            self.stale += 1
        return improved


def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """optimizer.safetensors (per-parameter tensors) + optimizer.json (param groups, other values)."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, Any] = {}
    for index, param_state in state_dict["state"].items():
        for name, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                values[f"{index}.{name}"] = value
    save_file(tensors, str(folder / OPTIMIZER_TENSORS))
    meta = {"type": type(optimizer).__name__, "param_groups": state_dict["param_groups"], "values": values}
    (folder / OPTIMIZER_JSON).write_text(json.dumps(meta, indent=1) + "\n")


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Restore what `save_optimizer` wrote into an optimizer over the same parameters, in the same order."""
    meta = json.loads((folder / OPTIMIZER_JSON).read_text())
    if meta["type"] != type(optimizer).__name__:
        raise ValueError(f"{folder}: saved optimizer {meta['type']} != {type(optimizer).__name__}")
    state: dict[int, dict[str, Any]] = {}
    for entry, value in [*load_file(str(folder / OPTIMIZER_TENSORS)).items(), *meta["values"].items()]:
        index, name = entry.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_last(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
    """Write last/ whole (atomically): a crash leaves the previous epoch's folder intact."""
    with atomic_dir(folder) as tmp:
        save_model(model, str(tmp / MODEL_FILE))
        save_optimizer(optimizer, tmp)
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=1) + "\n")


def read_state(folder: Path) -> TrainState:
    return TrainState(**json.loads((folder / STATE_FILE).read_text()))


def load_last(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> TrainState:
    """Load last/ into a freshly built model (same settings) and its optimizer; returns the run's state."""
    state = read_state(folder)
    device = next(model.parameters()).device
    missing, unexpected = load_model(model, str(folder / MODEL_FILE), strict=True, device=str(device))
    if missing or unexpected:
        raise ValueError(f"{folder}: weights do not match the model (missing {missing}, unexpected {unexpected})")
    load_optimizer(optimizer, folder)
    return state


# ---------------------------------------------------------------- finished trainings and attempts


class UnfinishedTraining(RuntimeError):
    """The run holds no finished training (only an attempt in progress, or an interrupted legacy run)."""


def read_history(path: Path) -> dict[str, Any] | None:
    """history.json as a dict, or None when the file is missing."""
    return json.loads(path.read_text()) if path.is_file() else None


def is_finished(run: RunPaths) -> bool:
    """Whether `run` (a run folder or its attempt) holds a finished training: history.json says so."""
    history = read_history(run.history)
    return bool(history and history.get("finished"))


def promote(run: RunPaths) -> None:
    """Move the finished attempt's checkpoint/, last/ and history.json over the run's, then drop the attempt.

    history.json goes first and comes back last: in between the run claims no finished training, so a crash
    mid-way leaves a run that evaluation refuses, never a history paired with another training's model. The
    attempt's history stays until the end, so calling promote again completes an interrupted promotion.
    """
    attempt = run.attempt
    if not is_finished(attempt):
        raise UnfinishedTraining(f"{attempt.root} holds no finished training to promote")
    best_epoch = read_history(attempt.history)["best_epoch"]
    run.history.unlink(missing_ok=True)
    for source, target in ((attempt.checkpoint, run.checkpoint), (attempt.last, run.last)):
        if source.is_dir():
            with atomic_dir(target) as tmp:
                tmp.rmdir()
                source.rename(tmp)
    if best_epoch == 0 and run.checkpoint.is_dir():  # no epoch had a finite validation loss: no best model
        shutil.rmtree(run.checkpoint)
    os.replace(attempt.history, run.history)
    shutil.rmtree(attempt.root)
    log.info("%s: the finished attempt replaced the run's checkpoint/ and history.json", run.root)


def attempt_state(run: RunPaths, model: torch.nn.Module, optimizer: torch.optim.Optimizer, fresh: TrainState,
                  resume: bool) -> TrainState:
    """With resume, the state of the run's unfinished attempt (loaded into model and optimizer) when it has
    these settings; otherwise `fresh`, after discarding any earlier attempt."""
    attempt = run.attempt
    saved = {folder: read_state(folder) for folder in (attempt.last, run.last)
             if resume and (folder / STATE_FILE).is_file()}
    if attempt.last in saved and saved[attempt.last].fingerprint == fresh.fingerprint:
        state = load_last(attempt.last, model, optimizer)
        log.info("resuming %s after epoch %d (best epoch %d)", attempt.root, state.epoch, state.best_epoch)
        return state
    for folder, state in saved.items():
        if state.fingerprint != fresh.fingerprint:
            log.warning("%s was written with other settings (fingerprint %s, now %s): training afresh", folder,
                        state.fingerprint, fresh.fingerprint)
    if attempt.root.exists():
        log.info("%s: discarding an unfinished attempt (resume=%s)", attempt.root, resume)
        shutil.rmtree(attempt.root)
    return fresh


def checkpoint_to_evaluate(run: RunPaths, allow_unfinished: bool = False) -> Path:
    """The checkpoint folder evaluation should load: the finished training's.

    Without a finished training: with `allow_unfinished`, the best model so far of the attempt in progress (or
    of an interrupted run of the older layout); otherwise UnfinishedTraining. No model at all: FileNotFoundError.
    """
    if is_finished(run) and run.checkpoint.is_dir():
        return run.checkpoint
    in_progress = [c for c in (run.attempt.checkpoint, run.checkpoint) if c.is_dir()]
    if allow_unfinished and in_progress:
        log.warning("%s: evaluating an UNFINISHED training (allow_unfinished)", in_progress[0])
        return in_progress[0]
    if not in_progress:
        raise FileNotFoundError(f"{run.root} holds no trained model; run the train stage first (elmrec task train)")
    history = read_history(run.attempt.history) or read_history(run.history) or {}
    raise UnfinishedTraining(
        f"{run.root}: training has not finished (epoch {len(history.get('epochs', []))} of "
        f"{history.get('max_epochs', '?')} done); resume it (train with resume), or evaluate the best model so far "
        f"with allow_unfinished")
