"""Ranking with the classic recommenders (SASRec, LightGCN): the same users, candidates, exclusions, metric code
and output layout as ELMRec's evaluation (elmrec.evaluate), through the uniform interface
`score_all(inputs)` / `score_candidates(inputs, candidates)`.

- Direct: every stored candidate is scored exactly and all of them are ranked (decoder `score`).
- Sequential: every item is scored; items before the target (EvalData.exclusions) and padding are never
  recommended; the top `eval.top_n` remain (decoder `score`).
- Validation (during training): the same on the valid split, plus the full-catalogue cross-entropy of the
  held-out item (`valid_loss`, for a loss curve comparable across models that score every item).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from elmrec.classic_batches import Batch, eval_inputs
from elmrec.config import Task
from elmrec.device import Device
from elmrec.evaluate import EvalData, score, targets_of
from elmrec.metrics import SCORE_DECODER, DecodeResult

log = logging.getLogger(__name__)

EVAL_BATCH = 1024  # users scored at once: (1024, I + 1) float32 = 50 MB on Beauty, 75 MB on Sports
RANKED = (Task.SEQUENTIAL, Task.DIRECT)


class Recommender(Protocol):
    """The uniform interface every classic recommender implements (train a batch, score candidates, rank all)."""

    def batch_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def score_all(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor: ...  # (B, I + 1), column 0 = -inf

    def score_candidates(self, inputs: dict[str, torch.Tensor], candidates: torch.Tensor) -> torch.Tensor: ...

    training: bool  # and, as every torch module: train(mode), eval()

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...


@dataclass(frozen=True)
class TaskInputs:
    """One task's evaluation users: model inputs, targets, and candidates (direct) or exclusions (sequential)."""

    task: Task
    inputs: Batch  # user (U,), sequence (U, width): the items before the target
    targets: np.ndarray  # (U,)
    candidates: np.ndarray | None  # (U, C) direct
    exclusions: list[list[int]]  # items before the target (sequential: never recommended)

    @classmethod
    def build(cls, data: EvalData, task: Task, width: int, max_history: int) -> TaskInputs:
        if task is Task.DIRECT:
            users = data.candidates["user"].to_list()
            targets = data.candidates["target"].to_numpy().astype(np.int64)
            candidates = np.array(data.candidate_lists(), dtype=np.int64).reshape(len(users), -1)
        else:
            prompts = data.prompts(Task.SEQUENTIAL, max_history)  # the users ELMRec and the baselines rank
            users, targets, candidates = [p.user for p in prompts], targets_of(prompts), None
        exclusions = data.exclusions(users)
        return cls(task, eval_inputs(users, exclusions, width), targets, candidates, exclusions)


def to_device(batch: Batch, device: Device) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.ascontiguousarray(array)).to(device.device) for name, array in batch.items()}


@torch.no_grad()
def rank_direct(model: Recommender, task: TaskInputs, device: Device) -> DecodeResult:
    """Every user's candidates by score, highest first (ties keep the stored order)."""
    if task.candidates is None:
        raise ValueError(f"the {task.task.value} task has no candidates to score")
    scores = np.zeros(task.candidates.shape, dtype=np.float32)  # (U, C)
    for rows in _parts(task.inputs):
        candidates = torch.from_numpy(task.candidates[rows]).to(device.device)  # (B, C)
        scores[rows] = model.score_candidates(_rows(task.inputs, rows, device), candidates).float().cpu().numpy()
    order = np.argsort(-scores, axis=1, kind="stable")  # (U, C)
    items = np.take_along_axis(task.candidates, order, axis=1)
    return DecodeResult(task.inputs["user"], items, np.take_along_axis(scores, order, axis=1).astype(np.float64),
                        0, items.size)


@torch.no_grad()
def rank_all(model: Recommender, task: TaskInputs, top_n: int, device: Device) -> tuple[DecodeResult, float]:
    """(top_n items per user, never one before the target; mean cross-entropy of the target over all items)."""
    n_users = len(task.targets)
    ranked, kept, nll = np.full((n_users, top_n), -1, dtype=np.int64), np.zeros((n_users, top_n)), 0.0
    for rows in _parts(task.inputs):
        scores = model.score_all(_rows(task.inputs, rows, device)).float()  # (B, I + 1)
        target = torch.from_numpy(task.targets[rows]).to(device.device)  # (B,)
        nll += float(F.cross_entropy(scores[:, 1:], target - 1, reduction="sum"))
        excluded = [np.asarray(task.exclusions[u], dtype=np.int64) for u in rows]
        at = np.repeat(np.arange(len(excluded)), [len(e) for e in excluded])  # (X,) row in the batch
        items = np.concatenate([*excluded, np.zeros(0, dtype=np.int64)])  # (X,)
        scores[torch.from_numpy(at).to(device.device), torch.from_numpy(items).to(device.device)] = -torch.inf
        top = torch.topk(scores, min(top_n, scores.shape[1]), dim=1)  # (B, top_n)
        ranked[rows, : top.indices.shape[1]] = top.indices.cpu().numpy()
        kept[rows, : top.values.shape[1]] = top.values.cpu().numpy()
    empty = np.isneginf(kept) | (ranked < 0)  # fewer recommendable items than top_n: empty, not invalid, slots
    ranked[empty], kept[empty] = -1, np.nan
    return DecodeResult(task.inputs["user"], ranked, kept, 0, int((~empty).sum())), nll / max(n_users, 1)


def rank_task(model: Recommender, task: TaskInputs, top_n: int, device: Device) -> tuple[DecodeResult, float]:
    """(ranking, target cross-entropy over all items; NaN for direct) of one task."""
    if task.task is Task.DIRECT:
        return rank_direct(model, task, device), float("nan")
    return rank_all(model, task, top_n, device)


def evaluate_tasks(model: Recommender, tasks: dict[Task, TaskInputs], n_items: int, top_n: int,
                   device: Device) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, DecodeResult], float]:
    """({task: {"score": metrics}}, {"<task>_score": ranking}, sequential target cross-entropy)."""
    was_training = model.training
    model.eval()
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    predictions: dict[str, DecodeResult] = {}
    loss = float("nan")
    for task, inputs in tasks.items():
        result, task_loss = rank_task(model, inputs, top_n, device)
        metrics[task.value] = {SCORE_DECODER: score(result, inputs.targets, n_items)}
        predictions[f"{task.value}_{SCORE_DECODER}"] = result
        loss = task_loss if task is Task.SEQUENTIAL else loss
    model.train(was_training)
    return metrics, predictions, loss


def _parts(inputs: Batch) -> list[np.ndarray]:
    """Users in batches of similar history lengths (little padding for SASRec), each an index array."""
    order = np.argsort((inputs["sequence"] > 0).sum(1), kind="stable")
    return [order[begin: begin + EVAL_BATCH] for begin in range(0, len(order), EVAL_BATCH)]


def _rows(inputs: Batch, rows: np.ndarray, device: Device) -> dict[str, torch.Tensor]:
    """The inputs of some users on the device, sequences trimmed to their longest (at least one column)."""
    sequence = inputs["sequence"][rows]  # (B, width)
    width = max(int((sequence > 0).sum(1).max(initial=0)), 1)
    return to_device({**{name: array[rows] for name, array in inputs.items()}, "sequence": sequence[:, -width:]},
                     device)
