"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over a user's last `max_len` items.

    x_t   = E[i_t] * sqrt(d) + P[t]                      item embedding E (row 0 = padding), learned positions P
    h     = LayerNorm(blocks(x))                         pre-LN blocks: causal attention, then a position-wise FFN
    s_t,j = h_t . E[j]                                   the output layer shares E (score of item j after step t)

Sequences are left-padded with 0, so the last item always sits at position `max_len - 1`; a shorter batch
(trimmed to its longest sequence) keeps the same positions. Padding keys are masked; a padding query attends
only to itself, so no attention row is empty, and its output is never read.

Losses (settings.sasrec.loss): `ce` = cross-entropy over the whole catalogue at every non-padding position (the
variant Klenitskiy & Vasilev, RecSys 2023, found stronger); `bce` = the paper's binary cross-entropy of the
positive against one sampled negative per position.

The uniform interface of the classic recommenders (elmrec.classic): `batch_loss(batch)`, `score_all(inputs)`,
`score_candidates(inputs, candidates)`; SASRec reads `inputs["sequence"]`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from elmrec.config import SASRecSettings
from elmrec.softmax_loss import full_softmax_loss


class Block(nn.Module):
    """x + Attention(LN(x)), then x + FFN(LN(x)); dropout on both branches."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape  # (B, L, d)
        q, k, v = self.qkv(self.norm1(x)).split(dim, dim=-1)  # 3 x (B, L, d)
        q, k, v = (t.view(batch, length, self.n_heads, dim // self.n_heads).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,  # (B, H, L, d/H)
                                                  dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.out(attended.transpose(1, 2).reshape(batch, length, dim)))
        return x + self.drop(self.ffn(self.norm2(x)))


class SASRec(nn.Module):
    def __init__(self, n_items: int, cfg: SASRecSettings) -> None:
        super().__init__()
        self.n_items, self.max_len, self.dim, self.loss_kind = n_items, cfg.max_len, cfg.dim, cfg.loss
        self.items = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0)  # (I + 1, d), shared with the output
        self.positions = nn.Embedding(cfg.max_len, cfg.dim)  # (max_len, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_blocks))
        self.norm = nn.LayerNorm(cfg.dim)
        nn.init.normal_(self.items.weight, std=cfg.dim**-0.5)
        nn.init.normal_(self.positions.weight, std=cfg.dim**-0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def hidden(self, sequence: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded item IDs, L <= max_len -> (B, L, d) states; state t has seen items 0..t."""
        length = sequence.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequences of {length} items exceed max_len {self.max_len}")
        position = torch.arange(self.max_len - length, self.max_len, device=sequence.device)  # (L,)
        real = sequence > 0  # (B, L)
        x = self.items(sequence) * math.sqrt(self.dim) + self.positions(position)  # (B, L, d)
        x = self.drop(x) * real.unsqueeze(-1)
        causal = torch.ones(length, length, dtype=torch.bool, device=sequence.device).tril()  # (L, L)
        diagonal = torch.eye(length, dtype=torch.bool, device=sequence.device)
        allowed = (causal & real[:, None, :]) | diagonal  # (B, L, L): real keys up to t, or itself
        allowed = allowed.unsqueeze(1)  # (B, 1, L, L), broadcast over heads
        for block in self.blocks:
            x = block(x, allowed) * real.unsqueeze(-1)
        return self.norm(x)

    # ------------------------------------------------------------------ the uniform interface

    def batch_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss over non-padding positions. batch: sequence (B, L), target (B, L) (0 = none), and for
        `bce` negative (B, L)."""
        states = self.hidden(batch["sequence"])  # (B, L, d)
        keep = batch["target"] > 0  # (B, L)
        states, target = states[keep], batch["target"][keep]  # (P, d), (P,)
        if self.loss_kind == "ce":  # = F.cross_entropy(states @ E[1:].T, target - 1), without the (P, I) logits
            return full_softmax_loss(states, self.items.weight[1:], target - 1)
        negative = batch["negative"][keep]  # (P,)
        positive_logit = (states * self.items(target)).sum(-1)  # (P,)
        negative_logit = (states * self.items(negative)).sum(-1)  # (P,)
        return (F.softplus(-positive_logit) + F.softplus(negative_logit)).mean()

    def user_states(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, d): the state after each user's last item (the rightmost column)."""
        return self.hidden(inputs["sequence"][:, -self.max_len:])[:, -1]

    def score_all(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, I + 1) scores of every item; column 0 (padding) is -inf."""
        scores = self.user_states(inputs) @ self.items.weight.T  # (B, I + 1)
        scores[:, 0] = -torch.inf
        return scores

    def score_candidates(self, inputs: dict[str, torch.Tensor], candidates: torch.Tensor) -> torch.Tensor:
        """(B, C) scores of each user's candidates (B, C)."""
        states = self.user_states(inputs)  # (B, d)
        return torch.einsum("bd,bcd->bc", states, self.items(candidates))
