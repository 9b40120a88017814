"""One training step and the validation loss: the arithmetic of ELMRec's training, apart from its loop
(elmrec.train).

    optimizer_step   zero_grad; forward + backward per slice of `micro_batch_size` prompts, each slice's mean
                     token loss weighted by its share of the batch's target tokens; one optimizer step
    train_step       optimizer_step for ELMRec: one graph propagation per step (ELMRec.propagation_once), or
                     under DDP no_sync for all but the last slice
    validation_losses  per task, the mean over prompts of each prompt's mean target-token loss

Under DDP (`train.nproc` > 1) each process steps on its share of a global batch. Its loss is weighted by its
share's target tokens over the global batch's (counted from the encodings every process holds: no
communication) times nproc, since DDP averages the processes' gradients: the sum is the one-process gradient of
the whole batch, up to float rounding. Micro-batches slice the share, all but the last under DDP's no_sync; the
graph propagates in each forward (ELMRec.propagation_once would send the node table's gradient after DDP's
reduction). Dropout draws the same seeds in every process but over other rows: with dropout the update equals
one process's in distribution only. Validation: each process scores every nproc-th prompt and the sums are
added up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from elmrec.config import Settings, Task
from elmrec.device import Device
from elmrec.model import ELMRec
from elmrec.wholeword import IGNORE_INDEX, Encoded, collate
from elmrec.world import ONE_PROCESS, World


def make_optimizer(model: ELMRec, settings: Settings) -> torch.optim.AdamW:
    """AdamW (torch defaults besides lr: weight decay 0.01); the fused kernel (CPU and CUDA) is the fastest."""
    return torch.optim.AdamW(model.parameters(), lr=settings.train.lr, fused=True)


def train_step(model: ELMRec | DistributedDataParallel, optimizer: torch.optim.Optimizer,
               batch: dict[str, torch.Tensor], task: Task, device: Device, micro_batch_size: int | None = None,
               tokens: int | None = None, grad_scale: float = 1.0) -> torch.Tensor:
    """One optimizer step on one batch; returns the (detached) mean token loss over the batch.

    With `micro_batch_size`, forward and backward run on slices of that many prompts, each slice's mean loss
    weighted by its share of the batch's target tokens: the gradient of the whole batch's mean loss (up to
    dropout draws and rounding), in the activation memory of one slice. Without it the weight is exactly 1.
    Under DDP `batch` is this process's share of a global batch of `tokens` target tokens (see optimizer_step).
    """
    ddp = isinstance(model, DistributedDataParallel)
    return optimizer_step(optimizer, batch, device, micro_batch_size, lambda part: model(
        part["input_ids"], part["ww_ids"], part["attention_mask"], task, labels=part["labels"]).loss,
        # DDP reduces gradients during the backward: the node table's must flow in it, not after it
        shared=nullcontext if ddp else model.propagation_once, accumulate=model.no_sync if ddp else nullcontext,
        tokens=tokens, grad_scale=grad_scale)


def optimizer_step(optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor], device: Device,
                   micro_batch_size: int | None, loss_of: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                   shared: Callable[[], AbstractContextManager[Any]] = nullcontext,
                   accumulate: Callable[[], AbstractContextManager[Any]] = nullcontext,
                   tokens: int | None = None, grad_scale: float = 1.0) -> torch.Tensor:
    """`train_step` for any model: `loss_of(slice)` is the slice's mean token loss (also timed against stock T5 by
    benchmarks/train_throughput.py, on the same slices and weights). The slices' forwards and backwards run
    inside `shared()` (ELMRec: one graph propagation per step, `ELMRec.propagation_once`), all but the last one
    also inside `accumulate()` (DDP's no_sync: gradients are reduced once, in the last backward). No host-device
    synchronisation: the token counts and the returned loss stay on the device.

    A slice's weight is its target tokens / `tokens` (default: the batch's). Under DDP `batch` is one process's
    share of a global batch of `tokens` target tokens, so the returned loss is its part of the global mean, and
    `grad_scale` = the number of processes turns DDP's average of their gradients into the global batch's
    (grad_scale 0: a stand-in slice that only keeps a process without rows in step with the others).
    """
    optimizer.zero_grad(set_to_none=True)
    size = len(batch["input_ids"])
    slice_size = micro_batch_size or size
    if tokens is None:
        tokens = (batch["labels"] != IGNORE_INDEX).sum()
    total = torch.zeros((), device=device.device)
    with shared():
        for begin in range(0, size, slice_size):
            part = {name: tensor[begin:begin + slice_size] for name, tensor in batch.items()}
            with accumulate() if begin + slice_size < size else nullcontext():
                with device.autocast():
                    loss = loss_of(part)
                weight = (part["labels"] != IGNORE_INDEX).sum() / tokens
                (loss * weight * grad_scale).backward()
            total += loss.detach() * weight
    optimizer.step()  # no clipping, no schedule: as the authors' code
    return total


@torch.no_grad()
def validation_losses(model: ELMRec, valid: dict[Task, Encoded], batch_size: int, device: Device,
                      world: World = ONE_PROCESS) -> dict[str, float]:
    """Per task: mean over prompts of the prompt's mean target-token cross-entropy (independent of batching).
    Under DDP each process scores its share of the prompts and the sums are added up (the same on each)."""
    model.eval()
    losses = {}
    for task, encoded in valid.items():
        order = world.share(np.argsort(encoded.lengths, kind="stable"))  # similar lengths together: less padding
        per_prompt = [torch.zeros(0, device=device.device)]
        for begin in range(0, len(order), batch_size):
            batch = device.put(collate(encoded, order[begin:begin + batch_size]))
            labels = batch["labels"]  # (B, T)
            with device.autocast():
                logits = model(batch["input_ids"], batch["ww_ids"], batch["attention_mask"], task, labels=labels).logits
            tokens = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX,
                                     reduction="none")  # (B, T)
            per_prompt.append(tokens.sum(1) / (labels != IGNORE_INDEX).sum(1))
        scored = torch.cat(per_prompt).double()  # (prompts of this process,)
        total, count = world.sum(torch.stack([scored.sum(), scored.new_tensor(len(scored))])).tolist()
        losses[task.value] = total / count if count else math.nan
    model.train()
    return losses
