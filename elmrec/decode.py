"""Turn a trained model into ranked item lists: candidate scoring, beam search, trie-constrained beam search.

Direct recommendation (rank the user's 100 stored candidates):
- `score` (default): exact ranking by sequence log-likelihood sum_t log p(y_t | y_<t, prompt) of each candidate's
  target tokens (EOS included). The encoder runs once per user; all of a user's candidates go through one
  teacher-forced decoder sequence holding their prefix tree (each node attends to its ancestors), so the prompt's
  cross-attention keys/values are computed once per user and shared prefixes once. No invalid outputs by
  construction. Ties keep the stored candidate order.
- `beam` (the paper): beam search; an output that does not parse to one of the user's candidates is invalid,
  counted, and left as a miss (-1) in its slot. It is never replaced by a random item. A repeated item keeps its
  first slot; its later copies become -1 without counting as invalid.
Sequential recommendation (rank the whole catalogue):
- `constrained` (default): beam search restricted by an `ItemTrie` to valid items not in the user's history.
- `rerank` (the paper): beam search for top_n + rerank_n outputs; invalid ones (counted) and history items are
  dropped, the first top_n remain.

Beam counts below the number of sequences to return (e.g. the demo preset) are widened with a warning. Beam
search uses length_penalty 1.0 (the transformers default) in the paper modes and 0.0 in `constrained`.
Inputs arrive tokenized (`DecodeInputs`); the only tokenization here is the one-off build of the item trie.
Scores of generated outputs are their teacher-forced summed log-likelihoods too, so every mode reports the same
quantity. The model follows the `ELMRec` interface: `.t5`, `.encoder_inputs(...)`, `.generate(...)`.
The item trie and its logits processor live in `elmrec.trie` (re-exported here).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from transformers.generation import LogitsProcessor, LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutput

from elmrec.config import EvalSettings, Task
from elmrec.metrics import INVALID, DecodeResult, score_order
from elmrec.progress import progress_bar
from elmrec.trie import (
    IGNORE,
    ItemTrie,
    ItemTrieLogitsProcessor,
    PrefixTree,
    parse_item_text,
)

__all__ = ["DecodeInputs", "ItemTrie", "ItemTrieLogitsProcessor", "parse_item_text", "rank_direct", "rank_sequential"]

logger = logging.getLogger(__name__)

CHUNK_TOKENS = 2048  # prefix-tree nodes per teacher-forced pass: bounds the (B, nodes, vocab) logits
CONSTRAINED_LENGTH_PENALTY = 0.0  # rank constrained beams by summed log-likelihood, like `score` mode
PAPER_LENGTH_PENALTY = 1.0  # the transformers default the paper's beam search ran with
Step = tuple[list[list[int]], list[list[float]], int, int]  # one batch: per-user items, scores, n_invalid, n_outputs


@dataclass
class DecodeInputs:
    """Tokenized evaluation prompts of U users (right-padded) and what each user's outputs are checked against."""

    input_ids: torch.Tensor  # (U, L)
    attention_mask: torch.Tensor  # (U, L)
    ww_ids: torch.Tensor  # (U, L)
    users: Sequence[int]
    candidates: Sequence[Sequence[int]] | None = None  # direct: each user's stored 100 candidates
    histories: Sequence[Sequence[int]] | None = None  # sequential: items never to recommend again

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[DecodeInputs]:
        """Consecutive slices of `batch_size` users (first `limit` users only), trailing pad columns trimmed."""
        n = len(self) if limit is None else min(limit, len(self))
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            used = self.attention_mask[sl].sum(0).nonzero()
            width = int(used.max()) + 1 if used.numel() else 1
            yield DecodeInputs(
                input_ids=self.input_ids[sl, :width],
                attention_mask=self.attention_mask[sl, :width],
                ww_ids=self.ww_ids[sl, :width],
                users=list(self.users[sl]),
                candidates=None if self.candidates is None else list(self.candidates[sl]),
                histories=None if self.histories is None else list(self.histories[sl]),
            )


# ---- model passes -------------------------------------------------------------------------------------------


def _encode(model: Any, batch: DecodeInputs, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder states (B, S, d) and mask (B, S) of one batch of prompts (soft prompts included)."""
    embeds, mask = model.encoder_inputs(batch.input_ids, batch.ww_ids, batch.attention_mask, task)
    hidden = model.t5.get_encoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    return hidden, mask


def _log_likelihood(model: Any, hidden: torch.Tensor, mask: torch.Tensor, row_user: torch.Tensor,
                    labels: torch.Tensor, chunk_tokens: int | None = None) -> torch.Tensor:
    """(N,) sum_t log p(labels_t | labels_<t, prompt of user row_user[n]) over the non-padding labels.

    labels: (N, T), real tokens first, -100 after; row_user: (N,) non-decreasing. All rows of one user are
    teacher-forced in ONE decoder sequence: the nodes of their prefix tree (a shared prefix such as the start
    token or `▁` is computed once), each attending to its ancestors only. So the prompt's cross-attention
    keys/values are projected once per user instead of once per row, and Beauty's 100 candidates need ~165
    decoder positions instead of ~330. T5's self-attention bias is a function of the distance between positions;
    the mask adds bias(depth distance) - bias(packed distance), so each row gets exactly its unpacked
    log-likelihood. Users go through the decoder in chunks of about `chunk_tokens` tree nodes.
    """
    if len(row_user) > 1 and bool((row_user[1:] < row_user[:-1]).any()):
        raise ValueError("rows must be grouped by user (row_user non-decreasing)")
    budget = chunk_tokens or CHUNK_TOKENS
    start_id = model.t5.config.decoder_start_token_id
    rows_of: list[list[list[int]]] = [[] for _ in range(len(hidden))]  # user -> its label rows, real tokens only
    for user, row in zip(row_user.tolist(), labels.tolist()):
        rows_of[user].append([t for t in row if t != IGNORE])
    trees = [PrefixTree.of(rows, start_id) for rows in rows_of]
    out, first = [], 0
    while first < len(trees):
        stop = first + 1  # users [first, stop): at least one, then as many as the budget allows
        while stop < len(trees) and (stop + 1 - first) * max(t.n_nodes for t in trees[first : stop + 1]) <= budget:
            stop += 1
        out.append(_tree_pass(model, hidden[first:stop], mask[first:stop], trees[first:stop]))
        first = stop
    logp = torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float)  # (M,) per real label token
    token_row = torch.arange(len(labels), device=labels.device).repeat_interleave((labels != IGNORE).sum(1))
    return torch.zeros(len(labels), dtype=torch.float, device=labels.device).index_add_(0, token_row, logp)


def _tree_pass(model: Any, hidden: torch.Tensor, mask: torch.Tensor, trees: list[PrefixTree]) -> torch.Tensor:
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


def _generate(model: Any, batch: DecodeInputs, task: Task, num_beams: int, num_return: int, max_new_tokens: int,
              length_penalty: float, processor: LogitsProcessor | None = None) -> torch.Tensor:
    """(B * num_return, T) beam-search outputs, decoder start token first, best first within each user."""
    kwargs: dict[str, Any] = {"num_beams": num_beams, "num_return_sequences": num_return, "do_sample": False,
                              "max_new_tokens": max_new_tokens, "length_penalty": length_penalty}
    if processor is not None:
        kwargs["logits_processor"] = LogitsProcessorList([processor])
    out = model.generate(input_ids=batch.input_ids, ww_ids=batch.ww_ids, attention_mask=batch.attention_mask,
                         task=task, **kwargs)
    return out.sequences if hasattr(out, "sequences") else out


def _rescore(model: Any, batch: DecodeInputs, task: Task, sequences: torch.Tensor, eos: int) -> torch.Tensor:
    """(B * R,) summed log-likelihood of each generated sequence (tokens after its first EOS ignored)."""
    labels = sequences[:, 1:].clone()  # (B*R, T-1)
    is_eos = (labels == eos).long()
    labels[(is_eos.cumsum(1) - is_eos) > 0] = IGNORE
    hidden, mask = _encode(model, batch, task)
    row_user = torch.arange(len(batch), device=labels.device).repeat_interleave(len(labels) // len(batch))
    return _log_likelihood(model, hidden, mask, row_user, labels)


# ---- entry points -------------------------------------------------------------------------------------------


def rank_direct(model: Any, inputs: DecodeInputs, trie: ItemTrie, settings: EvalSettings,
                mode: Literal["score", "beam"] | None = None, progress: bool = True) -> DecodeResult:
    """Rank each user's stored candidates (`score`: all of them, exactly; `beam`: top_n generated ones)."""
    mode = mode or settings.direct_mode
    if inputs.candidates is None:
        raise ValueError("direct ranking needs each user's candidates")
    step = _score_batch if mode == "score" else _beam_batch
    return _run(model, inputs, settings, Task.DIRECT, lambda b: step(model, b, trie, settings), f"direct/{mode}",
                progress)


def rank_sequential(model: Any, inputs: DecodeInputs, trie: ItemTrie, settings: EvalSettings,
                    mode: Literal["constrained", "rerank"] | None = None, progress: bool = True) -> DecodeResult:
    """Top-n items of the whole catalogue per user, never a history item (`constrained` or the paper's `rerank`)."""
    mode = mode or settings.sequential_mode
    if inputs.histories is None:
        raise ValueError("sequential ranking needs each user's history")
    step = _constrained_batch if mode == "constrained" else _rerank_batch
    return _run(model, inputs, settings, Task.SEQUENTIAL, lambda b: step(model, b, trie, settings),
                f"sequential/{mode}", progress)


def _run(model: Any, inputs: DecodeInputs, settings: EvalSettings, task: Task, step: Any, name: str,
         progress: bool = True) -> DecodeResult:
    """Apply `step` batch by batch (eval mode, no autograd) and stack its per-user lists into a DecodeResult."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ranked: list[list[int]] = []
    scored: list[list[float]] = []
    n_invalid = n_outputs = 0
    n = len(inputs) if settings.max_users is None else min(settings.max_users, len(inputs))
    try:
        with torch.inference_mode(), progress_bar(total=n, desc=name, unit="user", disable=not progress) as bar:
            for batch in inputs.batches(settings.batch_size, settings.max_users):
                batch = replace(batch, input_ids=batch.input_ids.to(device),
                                attention_mask=batch.attention_mask.to(device), ww_ids=batch.ww_ids.to(device))
                items, scores, bad, total = step(batch)
                ranked += items
                scored += scores
                n_invalid, n_outputs = n_invalid + bad, n_outputs + total
                bar.update(len(batch))
    finally:
        model.train(was_training)
    logger.info("%s: %d users, %d/%d invalid outputs", name, len(ranked), n_invalid, n_outputs)
    return DecodeResult.from_lists(list(inputs.users)[:n], ranked, scored, n_invalid, n_outputs)


def _score_batch(model: Any, batch: DecodeInputs, trie: ItemTrie, settings: EvalSettings) -> Step:
    """Exact candidate ranking: one encoder pass, one teacher-forced decoder pass over all candidates."""
    cands = [np.asarray(c, dtype=np.int64) for c in batch.candidates]
    flat = torch.as_tensor(np.concatenate(cands))  # (sum C,)
    if flat.numel() and (int(flat.min()) < 1 or int(flat.max()) > trie.n_items):
        raise ValueError(f"candidate item IDs must lie in 1..{trie.n_items}")
    hidden, mask = _encode(model, batch, Task.DIRECT)
    row_user = torch.repeat_interleave(torch.arange(len(cands)), torch.as_tensor([len(c) for c in cands]))
    loglik = _log_likelihood(model, hidden, mask, row_user.to(hidden.device), trie.labels(flat).to(hidden.device))
    per_user = torch.split(loglik.double().cpu(), [len(c) for c in cands])
    items, scores = [], []
    for c, s in zip(cands, per_user):
        order = score_order(s.numpy())  # stable: equal scores keep the stored candidate order
        items.append(c[order].tolist())
        scores.append(s.numpy()[order].tolist())
    return items, scores, 0, int(flat.numel())


def _beam_batch(model: Any, batch: DecodeInputs, trie: ItemTrie, settings: EvalSettings) -> Step:
    """The paper's direct decoding: top_n beams; a non-candidate or unparseable output is invalid and a miss."""
    top_n = settings.top_n
    beams = _at_least(settings.direct_beams, top_n, "direct_beams")
    seqs = _generate(model, batch, Task.DIRECT, beams, top_n, trie.max_len, PAPER_LENGTH_PENALTY)
    loglik = _rescore(model, batch, Task.DIRECT, seqs, trie.eos_token_id).double().cpu().view(len(batch), top_n)
    parsed = trie.parse(seqs)
    items, scores, n_invalid = [], [], 0
    for u, cands in enumerate(batch.candidates):
        allowed = {int(c) for c in cands}
        row_items, row_scores, seen = [], [], set()
        for j, item in enumerate(parsed[u * top_n : (u + 1) * top_n]):
            valid = item is not None and item in allowed
            n_invalid += not valid
            keep = valid and item not in seen  # a repeated item keeps its first slot; later copies are empty
            seen.add(item)
            row_items.append(item if keep else INVALID)
            row_scores.append(float(loglik[u, j]) if keep else math.nan)
        items.append(row_items)
        scores.append(row_scores)
    return items, scores, n_invalid, len(batch) * top_n


def _rerank_batch(model: Any, batch: DecodeInputs, trie: ItemTrie, settings: EvalSettings) -> Step:
    """The paper's sequential decoding: top_n + rerank_n beams, drop invalid and history items, keep top_n."""
    n_return = settings.top_n + settings.rerank_n
    beams = _at_least(settings.sequential_beams, n_return, "sequential_beams")
    seqs = _generate(model, batch, Task.SEQUENTIAL, beams, n_return, trie.max_len, PAPER_LENGTH_PENALTY)
    return _filter_outputs(model, batch, trie, settings, seqs, n_return, trie.parse(seqs))


def _constrained_batch(model: Any, batch: DecodeInputs, trie: ItemTrie, settings: EvalSettings) -> Step:
    """Trie-constrained beam search: every output is a catalogue item outside the user's history."""
    top_n = settings.top_n
    beams = _at_least(settings.sequential_beams, top_n, "sequential_beams")
    processor = ItemTrieLogitsProcessor(trie, batch.histories, beams)
    seqs = _generate(model, batch, Task.SEQUENTIAL, beams, top_n, trie.max_len, CONSTRAINED_LENGTH_PENALTY,
                     processor)
    parsed = [trie.item_of(row[1:]) for row in seqs.tolist()]  # exact token paths, no text round trip
    step = _filter_outputs(model, batch, trie, settings, seqs, top_n, parsed)
    if step[2]:
        logger.warning("constrained decoding produced %d invalid outputs (fewer reachable items than top_n?)", step[2])
    return step


def _filter_outputs(model: Any, batch: DecodeInputs, trie: ItemTrie, settings: EvalSettings, seqs: torch.Tensor,
                    n_return: int, parsed: list[int | None]) -> Step:
    """Per user: drop invalid outputs (counted), history items and repeats; keep the first top_n."""
    loglik = _rescore(model, batch, Task.SEQUENTIAL, seqs, trie.eos_token_id).double().cpu().view(len(batch), n_return)
    items, scores, n_invalid = [], [], 0
    for u, history in enumerate(batch.histories):
        seen = {int(i) for i in history}
        row_items: list[int] = []
        row_scores: list[float] = []
        for j, item in enumerate(parsed[u * n_return : (u + 1) * n_return]):
            if item is None:
                n_invalid += 1
            elif item not in seen and len(row_items) < settings.top_n:
                row_items.append(item)
                row_scores.append(float(loglik[u, j]))
            if item is not None:
                seen.add(item)
        items.append(row_items)
        scores.append(row_scores)
    return items, scores, n_invalid, len(batch) * n_return


def _at_least(beams: int, needed: int, name: str) -> int:
    """Beam search cannot return more sequences than beams: widen (with a warning) when settings ask for that."""
    if beams < needed:
        logger.warning("%s=%d < %d sequences to return; using %d beams", name, beams, needed, needed)
    return max(beams, needed)
