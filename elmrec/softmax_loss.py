"""Cross-entropy over a whole catalogue without materialising large (positions x items) logits.

    loss = mean_p [ logsumexp_j (h_p . W_j) - h_p . W_{t_p} ]

`F.cross_entropy(h @ W.T, t)` writes the full logits, its log-softmax and their gradient: on Sports (18,357
items, ~700 positions in a SASRec batch of 128 users) three 50 MB matrices per step, and on a 2-core CPU that
memory traffic, not the arithmetic, was 78% of an epoch. Above `PLAIN_MAX_LOGITS` the items are taken in chunks
small enough to stay in cache: the forward pass keeps only a running logsumexp per position, and the backward
pass recomputes each chunk's logits (one extra matrix product) to form its softmax gradient. Below it the plain
loss is as fast or faster, and is used. Same value and gradients either way, up to float rounding
(tests/test_softmax_loss.py). `python benchmarks/softmax_loss.py` times both on one shape; on this 2-core CPU
(2026-11-28, quiet, chunks of 256) 683 x 18,357 took 115 ms plain and 69 ms chunked, 300 x 18,357 took 24-29 ms
plain and 36 ms chunked.

Always computed in fp32, also under autocast; the gradients come back in the inputs' dtypes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

PLAIN_MAX_LOGITS = 2**23  # up to 32 MB of fp32 logits the plain loss is as fast (benchmarks/softmax_loss.py)
CHUNK_ITEMS = 256  # items per chunk: 700 positions x 256 items of fp32 logits are 0.7 MB


def full_softmax_loss(states: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, chunk: int = CHUNK_ITEMS,
                      plain_max: int = PLAIN_MAX_LOGITS) -> torch.Tensor:
    """Mean cross-entropy of `states` (P, d) scored against every row of `weight` (I, d); `target` (P,) holds
    row indices 0..I-1. Equal to F.cross_entropy(states @ weight.T, target); chunked above `plain_max` logits."""
    if states.shape[0] == 0:
        raise ValueError("full_softmax_loss needs at least one position")
    if states.shape[0] * weight.shape[0] <= plain_max:
        with torch.autocast(states.device.type, enabled=False):
            return F.cross_entropy(states.float() @ weight.float().T, target)
    return _ChunkedSoftmaxLoss.apply(states, weight, target, chunk)


class _ChunkedSoftmaxLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, states: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                chunk: int) -> torch.Tensor:
        dtypes = (states.dtype, weight.dtype)
        with torch.autocast(states.device.type, enabled=False):
            states, weight = states.float(), weight.float()
            lse = torch.full((states.shape[0],), -torch.inf, device=states.device)  # (P,)
            for start in range(0, weight.shape[0], chunk):
                lse = torch.logaddexp(lse, torch.logsumexp(states @ weight[start : start + chunk].T, dim=1))
            picked = (states * weight[target]).sum(1)  # (P,) the target's logit
        ctx.save_for_backward(states, weight, target, lse)
        ctx.chunk, ctx.dtypes = chunk, dtypes
        return (lse - picked).mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        states, weight, target, lse = ctx.saved_tensors
        scale = grad / states.shape[0]
        with torch.autocast(states.device.type, enabled=False):
            grad_states, grad_weight = torch.zeros_like(states), torch.zeros_like(weight)
            for start in range(0, weight.shape[0], ctx.chunk):
                rows = slice(start, start + ctx.chunk)
                softmax = torch.exp(states @ weight[rows].T - lse[:, None]) * scale  # (P, chunk)
                grad_states.addmm_(softmax, weight[rows])
                grad_weight[rows] = softmax.T @ states
            grad_states -= weight[target] * scale  # minus the one-hot part of softmax - onehot
            grad_weight.index_add_(0, target, -states * scale)
        return grad_states.to(ctx.dtypes[0]), grad_weight.to(ctx.dtypes[1]), None, None
