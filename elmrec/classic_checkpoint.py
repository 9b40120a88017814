"""Files of a classic baseline's run (elmrec.classic): the best model, the resume state, the attempt swap.

    checkpoint/   model.safetensors + shape.json        the best epoch's weights and what rebuilds the module
    last/         model.safetensors, optimizer.safetensors + optimizer.json, state.json    exact resume
    attempt/      checkpoint/, last/, history.json of a run in progress (RunPaths.attempt; elmrec.checkpoint.promote
                  moves them over the run's own when it finishes)

No pickles: tensors go to safetensors (elmrec.checkpoint writes the optimizer), everything else to JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from elmrec.checkpoint import load_optimizer, save_optimizer
from elmrec.config import LightGCNSettings, SASRecSettings
from elmrec.paths import atomic_dir

MODEL_FILE, SHAPE_FILE, STATE_FILE = "model.safetensors", "shape.json", "state.json"


def save_checkpoint(folder: Path, model: nn.Module, shape: dict[str, Any]) -> None:
    """model.safetensors + shape.json (what rebuilds the module: recommender, sizes, settings), atomically."""
    with atomic_dir(folder) as tmp:
        save_model(model, str(tmp / MODEL_FILE))
        (tmp / SHAPE_FILE).write_text(json.dumps(shape, indent=1) + "\n")


@dataclass
class ClassicState:
    """Where a run stands after its last completed epoch (last/state.json)."""

    fingerprint: str
    epoch: int = 0
    best_epoch: int = 0  # 0: none yet
    best_ndcg: float = -math.inf  # validation NDCG@10 of the selection task at best_epoch
    best_valid_loss: float = math.inf  # validation cross-entropy at best_epoch
    stale: int = 0  # evaluations since the best one
    history: list[dict[str, Any]] = field(default_factory=list)

    def done(self, cfg: SASRecSettings | LightGCNSettings) -> bool:
        return self.epoch >= cfg.max_epochs or self.stale >= cfg.patience


def save_last(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: ClassicState) -> None:
    with atomic_dir(folder) as tmp:
        save_model(model, str(tmp / MODEL_FILE))
        save_optimizer(optimizer, tmp)
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=1) + "\n")


def read_state(folder: Path) -> ClassicState | None:
    path = folder / STATE_FILE
    return ClassicState(**json.loads(path.read_text())) if path.is_file() else None


def load_last(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> ClassicState:
    load_model(model, str(folder / MODEL_FILE), strict=True, device=str(next(model.parameters()).device))
    load_optimizer(optimizer, folder)
    return ClassicState(**json.loads((folder / STATE_FILE).read_text()))
