"""The model passes decoding is built from: encode a batch of prompts once, beam-search from those encoder
states, and score token sequences by their teacher-forced log-likelihood, all of a user's rows packed into one
prefix-tree decoder pass.

`DecodingModel` is what decoding needs of a model (`ELMRec` satisfies it): a T5 and the encoder inputs of
tokenized prompts. Every pass here takes the encoder states `(hidden (B, S, d), mask (B, S))` of one batch, so
the decoders of one evaluation share one encoder pass per batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from transformers import T5ForConditionalGeneration
from transformers.generation import LogitsProcessor, LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutput

from elmrec.config import Task
from elmrec.trie import PrefixTree
from elmrec.wholeword import IGNORE_INDEX

CHUNK_TOKENS = 2048  # prefix-tree nodes per teacher-forced pass: bounds the (B, nodes, vocab) logits
States = tuple[torch.Tensor, torch.Tensor]  # encoder hidden states (B, S, d) and their attention mask (B, S)


@runtime_checkable
class DecodingModel(Protocol):
    """What decoding needs of a model: a T5, the encoder inputs of tokenized prompts, nn.Module's mode switch."""

    t5: T5ForConditionalGeneration
    training: bool

    def encoder_inputs(self, input_ids: torch.Tensor, ww_ids: torch.Tensor, attention_mask: torch.Tensor,
                       task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs_embeds (B, S, d), attention_mask (B, S)) for the T5 encoder, soft prompts included."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def train(self, mode: bool = True) -> Any: ...


def encode(model: DecodingModel, input_ids: torch.Tensor, ww_ids: torch.Tensor, attention_mask: torch.Tensor,
           task: Task) -> States:
    """Encoder states (B, S, d) and mask (B, S) of one batch of prompts (soft prompts included)."""
    embeds, mask = model.encoder_inputs(input_ids, ww_ids, attention_mask, task)
    hidden = model.t5.get_encoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    return hidden, mask


def generate(model: DecodingModel, states: States, num_beams: int, num_return: int, max_new_tokens: int,
             length_penalty: float, processor: LogitsProcessor | None = None) -> torch.Tensor:
    """(B * num_return, T) beam-search outputs from the given encoder states, decoder start token first, best
    first within each user. The encoder does not run again."""
    hidden, mask = states
    kwargs: dict[str, Any] = {"num_beams": num_beams, "num_return_sequences": num_return, "do_sample": False,
                              "max_new_tokens": max_new_tokens, "length_penalty": length_penalty}
    if processor is not None:
        kwargs["logits_processor"] = LogitsProcessorList([processor])
    # a fresh BaseModelOutput per call: generate expands (replaces) its tensors per beam in place
    out = model.t5.generate(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=mask, **kwargs)
    return out.sequences if hasattr(out, "sequences") else out


def sequence_log_likelihood(model: DecodingModel, states: States, sequences: torch.Tensor, eos: int) -> torch.Tensor:
    """(B * R,) summed log-likelihood of R generated sequences per user (tokens after the first EOS ignored)."""
    labels = sequences[:, 1:].clone()  # (B*R, T-1)
    is_eos = (labels == eos).long()
    labels[(is_eos.cumsum(1) - is_eos) > 0] = IGNORE_INDEX
    n_users = len(states[0])
    row_user = torch.arange(n_users, device=labels.device).repeat_interleave(len(labels) // n_users)
    return log_likelihood(model, states, row_user, labels)


def log_likelihood(model: DecodingModel, states: States, row_user: torch.Tensor, labels: torch.Tensor,
                   chunk_tokens: int | None = None) -> torch.Tensor:
    """(N,) sum_t log p(labels_t | labels_<t, prompt of user row_user[n]) over the non-padding labels.

    labels: (N, T), real tokens first, -100 after; row_user: (N,) non-decreasing. All rows of one user are
    teacher-forced in ONE decoder sequence: the nodes of their prefix tree (a shared prefix such as the start
    token or `▁` is computed once), each attending to its ancestors only. So the prompt's cross-attention
    keys/values are projected once per user instead of once per row, and Beauty's 100 candidates need ~165
    decoder positions instead of ~330. T5's self-attention bias is a function of the distance between positions;
    the mask adds bias(depth distance) - bias(packed distance), so each row gets exactly its unpacked
    log-likelihood. Users go through the decoder in chunks of about `chunk_tokens` tree nodes.
    """
    hidden, mask = states
    if len(row_user) > 1 and bool((row_user[1:] < row_user[:-1]).any()):
        raise ValueError("rows must be grouped by user (row_user non-decreasing)")
    budget = chunk_tokens or CHUNK_TOKENS
    start_id = model.t5.config.decoder_start_token_id
    rows_of: list[list[list[int]]] = [[] for _ in range(len(hidden))]  # user -> its label rows, real tokens only
    for user, row in zip(row_user.tolist(), labels.tolist()):
        rows_of[user].append([t for t in row if t != IGNORE_INDEX])
    trees = [PrefixTree.of(rows, start_id) for rows in rows_of]
    out, first = [], 0
    while first < len(trees):
        stop = first + 1  # users [first, stop): at least one, then as many as the budget allows
        while stop < len(trees) and (stop + 1 - first) * max(t.n_nodes for t in trees[first : stop + 1]) <= budget:
            stop += 1
        out.append(_tree_pass(model, hidden[first:stop], mask[first:stop], trees[first:stop]))
        first = stop
    logp = torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float)  # (M,) per real label token
    token_row = torch.arange(len(labels), device=labels.device).repeat_interleave((labels != IGNORE_INDEX).sum(1))
    return torch.zeros(len(labels), dtype=torch.float, device=labels.device).index_add_(0, token_row, logp)


def _tree_pass(model: DecodingModel, hidden: torch.Tensor, mask: torch.Tensor,
               trees: list[PrefixTree]) -> torch.Tensor:
    """One decoder pass over the prefix trees of B users: log p of every label token, users and rows in order."""
    device, n_users = hidden.device, len(trees)
    width = max(1, *(t.n_nodes for t in trees))

    def padded(nodes: list[list[int]], fill: int) -> torch.Tensor:  # (B, P) one node field, padded
        return torch.tensor([row + [fill] * (width - len(row)) for row in nodes], device=device)

    node_input = padded([t.node_input for t in trees], 0)  # (B, P)
    depth = padded([t.node_depth for t in trees], 0)  # (B, P)
    parent = padded([t.node_parent for t in trees], -1)  # (B, P), -1: the root and padding
    allowed = torch.eye(width, dtype=torch.bool, device=device).repeat(n_users, 1, 1)  # (B, P, P) self
    for level in range(1, int(depth.max()) + 1):  # parents come first: their ancestor sets are complete
        b, i = torch.nonzero((depth == level) & (parent >= 0), as_tuple=True)
        allowed[b, i] |= allowed[b, parent[b, i]]
    bias = model.t5.get_decoder().block[0].layer[0].SelfAttention.compute_bias(width, width, device=device)[0]
    wanted = bias[:, depth[:, :, None], depth[:, None, :]].transpose(0, 1)  # (B, H, P, P) bias(depth_j - depth_i)
    additive = torch.where(allowed[:, None], wanted - bias, torch.finfo(hidden.dtype).min).to(hidden.dtype)
    logits = model.t5(
        encoder_outputs=BaseModelOutput(last_hidden_state=hidden),  # (B, S, d): keys/values once per user
        attention_mask=mask,
        decoder_input_ids=node_input,
        decoder_attention_mask=additive,  # (B, H, P, P): a prepared 4-d mask is added to the scores as given
        use_cache=False,
    ).logits.float()  # (B, P, V)
    user = torch.tensor([u for u, t in enumerate(trees) for _ in t.token_node], dtype=torch.long, device=device)
    node = torch.tensor([n for t in trees for n in t.token_node], dtype=torch.long, device=device)
    target = torch.tensor([y for t in trees for y in t.target], dtype=torch.long, device=device)
    return logits[user, node, target] - logits.logsumexp(-1)[user, node]  # (M,)
