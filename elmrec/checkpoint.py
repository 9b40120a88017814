"""Resume state of a training run: the `last/` folder, written whole after every epoch.

    last/
      model.safetensors        every weight of the ELMRec module (tied T5 weights stored once)
      optimizer.safetensors    the optimizer's per-parameter tensors, keyed `<param index>.<name>` (exp_avg, step, ...)
      optimizer.json           the optimizer's param groups and any non-tensor per-parameter values
      state.json               epochs done, history, best epoch and loss, epochs without improvement

No pickles: tensors go to safetensors, everything else to JSON. Every weight, moment and step count is stored
exactly, and the random streams of an epoch are derived from (seed, epoch), so a resumed run repeats an
uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from elmrec.config import Settings
from elmrec.paths import atomic_dir, digest

MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
STATE_FILE = "state.json"


def fingerprint(settings: Settings) -> str:
    """A hash of everything that shapes the training trajectory; last/ of other values is not resumed from."""
    shaping = {"seed": settings.seed, "n_negatives": settings.data.n_negatives,
               "model": settings.model.model_dump(mode="json", exclude={"model_mirror"}),
               "train": settings.train.model_dump(mode="json")}
    return digest(shaping, length=16)


@dataclass
class TrainState:
    """Where a run stands after its last completed epoch."""

    fingerprint: str
    pretrained: bool  # whether T5 started from pretrained weights
    epoch: int = 0  # epochs completed
    best_epoch: int = 0  # 0: none yet
    best_valid_loss: float = math.inf
    stale: int = 0  # epochs since the best one
    history: list[dict[str, Any]] = field(default_factory=list)  # one EpochRecord (as a dict) per epoch

    def done(self, max_epochs: int, patience: int) -> bool:
        return self.epoch >= max_epochs or self.stale >= patience

    def update(self, epoch: int, valid_loss: float) -> bool:
        """Count one more epoch; True if its validation loss is the best so far (strictly lower)."""
        self.epoch = epoch
        improved = valid_loss < self.best_valid_loss  # NaN never improves
        if improved:
            self.best_epoch, self.best_valid_loss, self.stale = epoch, valid_loss, 0
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
    for key, value in [*load_file(str(folder / OPTIMIZER_TENSORS)).items(), *meta["values"].items()]:
        index, name = key.split(".", 1)
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
