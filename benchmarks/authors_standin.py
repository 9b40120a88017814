"""A stand-in for the authors' training step, timed beside ours by benchmarks/train_throughput.py (`--authors`).

The authors' code (github.com/WangXFng/ELMRec) does not run here: it imports generation internals that
transformers 5 removed, and its code stays out of this repository. So this module does, written anew, the
model-side work that its `Solomon.forward` and training loop do per step (read from `model/module.py` and
`pretrain.py`):

    encoder input = [ prompts(task) (P, d) | shared(input_ids) + alpha * W[ww_ids] (L, d) ]
    W = sequential: an nn.Embedding of n_positions rows, N(0, 1)
        direct:     LightGCN over a sparse COO Â, recomputed in every forward: E_{l+1} = torch.sparse.mm(Â, E_l),
                    torch.stack(E_0..E_L).mean(0), from an N(0, sigma) node table
    stock T5ForConditionalGeneration on inputs_embeds; fp32 (no autocast); torch.optim.AdamW with its defaults
    besides lr (weight decay 0.01; not fused); zero_grad, backward, step, loss.item() every step.

Its time is a lower bound on the authors' step: it leaves out their per-batch sampling and tokenization (Python,
inside their training loop) and runs on our length-bucketed batches, where theirs pad random users' prompts to
the batch's longest.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from transformers import T5ForConditionalGeneration

from elmrec.config import Task

TASK_INDEX = {Task.SEQUENTIAL: 1, Task.DIRECT: 2}  # their task ids (0 = explanation); soft prompt rows per task


def coo_tensor(adjacency: sp.spmatrix | sp.sparray) -> torch.Tensor:
    """Â as a torch sparse COO tensor (float32), as their `convert_sparse_mat_to_tensor` makes it."""
    coo = sp.coo_matrix(adjacency, dtype="float32")
    indices = torch.from_numpy(np.stack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(indices, torch.from_numpy(coo.data), coo.shape, check_invariants=True)


class AuthorsStandIn(nn.Module):
    """Stock T5 plus the authors' whole-word tables and soft prompts, propagating as their forward does."""

    def __init__(self, t5: T5ForConditionalGeneration, adjacency: sp.spmatrix | sp.sparray, alpha: float,
                 sigma: float, n_layers: int, prompt_num: int, n_tasks: int = 3) -> None:
        super().__init__()
        d_model, n_nodes = t5.config.d_model, adjacency.shape[0]
        self.t5, self.alpha, self.n_layers, self.prompt_num = t5, alpha, n_layers, prompt_num
        self.node_table = nn.Embedding(n_nodes, d_model, padding_idx=0)
        nn.init.normal_(self.node_table.weight, mean=0.0, std=sigma)
        self.incremental_table = nn.Embedding(t5.config.n_positions, d_model)
        self.prompts = nn.Embedding(n_tasks * prompt_num, d_model)
        self.register_buffer("adjacency", coo_tensor(adjacency), persistent=False)

    def graph_table(self) -> torch.Tensor:
        """LightGCN's layer mean, all layers stacked as theirs.  # (N, d)"""
        layers = [self.node_table.weight]
        for _ in range(self.n_layers):
            layers.append(torch.sparse.mm(self.adjacency, layers[-1]))
        return torch.stack(layers, dim=1).mean(dim=1)

    def forward(self, input_ids: torch.Tensor, ww_ids: torch.Tensor, attention_mask: torch.Tensor, task: Task,
                labels: torch.Tensor) -> torch.Tensor:
        """The step's mean token loss."""
        table = self.incremental_table.weight if task is Task.SEQUENTIAL else self.graph_table()  # (rows, d)
        embeds = self.t5.shared(input_ids) + table[ww_ids] * self.alpha  # (B, L, d)
        batch = input_ids.shape[0]
        rows = TASK_INDEX[task] * self.prompt_num + torch.arange(self.prompt_num, device=input_ids.device)
        prompts = self.prompts(rows.repeat(batch, 1))  # (B, P, d)
        mask = torch.cat([attention_mask.new_ones(batch, self.prompt_num), attention_mask], dim=1)  # (B, P+L)
        return self.t5(inputs_embeds=torch.cat([prompts, embeds], dim=1), attention_mask=mask, labels=labels).loss


def authors_step(model: AuthorsStandIn, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
                 task: Task) -> torch.Tensor:
    """One step of their loop: zero_grad, forward, backward, step, and the loss read back (`loss.item()`)."""
    optimizer.zero_grad()
    loss = model(batch["input_ids"], batch["ww_ids"], batch["attention_mask"], task, batch["labels"])
    loss.backward()
    optimizer.step()
    loss.item()
    return loss.detach()


def authors_optimizer(model: AuthorsStandIn, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr)
