"""LightGCN (He et al., SIGIR 2020) trained with BPR over the graph stage's normalised adjacency Â.

Nodes as in elmrec.propagation: 0 = padding, users 1..U, items U+1..U+I.

    E_0       a trainable table (N, d), N = U + I + 1, init N(0, 0.1^2) (the authors' code)
    E         = mean(E_0, Â E_0, ..., Â^L E_0)          elmrec.propagation.propagate: the same maths as ELMRec's
    s(u, i)   = E[u] . E[U + i]
    loss      = mean_b softplus(s(u, n) - s(u, p))  +  reg * (|E_0[u]|^2 + |E_0[U+p]|^2 + |E_0[U+n]|^2) / 2 / B

BPR triples (user, positive, negative): every training edge once per epoch, one negative drawn uniformly from the
items the user has no edge to (elmrec.classic_batches). Â holds training edges only (the graph stage's default).

The uniform interface of the classic recommenders (elmrec.classic): `batch_loss(batch)`, `score_all(inputs)`,
`score_candidates(inputs, candidates)`; LightGCN reads `inputs["user"]`.
"""

from __future__ import annotations

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from elmrec.config import LightGCNSettings
from elmrec.propagation import propagate, to_torch_sparse

INIT_STD = 0.1  # the authors' code: normal(std=0.1)


class LightGCN(nn.Module):
    def __init__(self, n_users: int, n_items: int, adjacency: sp.spmatrix, cfg: LightGCNSettings) -> None:
        super().__init__()
        n_nodes = n_users + n_items + 1
        if adjacency.shape != (n_nodes, n_nodes):
            raise ValueError(f"Â is {adjacency.shape}, expected {(n_nodes, n_nodes)} for {n_users} users and "
                             f"{n_items} items")
        self.n_users, self.n_items, self.n_layers, self.reg = n_users, n_items, cfg.n_layers, cfg.reg
        self.nodes = nn.Embedding(n_nodes, cfg.dim)  # (N, d): E_0
        nn.init.normal_(self.nodes.weight, std=INIT_STD)
        self.register_buffer("adjacency", to_torch_sparse(adjacency), persistent=False)  # (N, N) sparse Â

    def propagated(self) -> torch.Tensor:
        """(N, d) the layer mean of E_0..E_L."""
        return propagate(self.adjacency, self.nodes.weight, self.n_layers)

    # ------------------------------------------------------------------ the uniform interface

    def batch_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """BPR + L2 on the batch's layer-0 rows. batch: user, positive, negative, each (B,)."""
        nodes = self.propagated()  # (N, d)
        user, positive = batch["user"], self.n_users + batch["positive"]  # (B,), (B,) node indices
        negative = self.n_users + batch["negative"]  # (B,)
        u = nodes[user]  # (B, d)
        margin = (u * nodes[positive]).sum(-1) - (u * nodes[negative]).sum(-1)  # (B,)
        ego = self.nodes.weight  # (N, d)
        l2 = (ego[user].square().sum() + ego[positive].square().sum() + ego[negative].square().sum()) / 2
        return F.softplus(-margin).mean() + self.reg * l2 / len(user)

    def score_all(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, I + 1) scores of every item for users (B,); column 0 (padding) is -inf."""
        nodes = self.propagated()  # (N, d)
        scores = nodes[inputs["user"]] @ nodes[self.n_users:].T  # (B, I + 1): column j = node U + j = item j
        scores[:, 0] = -torch.inf  # column 0 is node U, a user
        return scores

    def score_candidates(self, inputs: dict[str, torch.Tensor], candidates: torch.Tensor) -> torch.Tensor:
        """(B, C) scores of each user's candidates (B, C)."""
        nodes = self.propagated()  # (N, d)
        return torch.einsum("bd,bcd->bc", nodes[inputs["user"]], nodes[self.n_users + candidates])
