"""Turn a trained model into ranked item lists: candidate scoring, beam search, trie-constrained beam search.

Direct recommendation (rank the user's 100 stored candidates):
- `score` (default): exact ranking by sequence log-likelihood sum_t log p(y_t | y_<t, prompt) of each candidate's
  target tokens (EOS included). The encoder runs once per user; all candidates go through one teacher-forced
  decoder pass. No invalid outputs by construction. Ties keep the stored candidate order.
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
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers.generation import LogitsProcessor, LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutput

from elmrec.config import EvalSettings, Task
from elmrec.metrics import INVALID, DecodeResult, score_order

logger = logging.getLogger(__name__)

IGNORE = -100  # label padding, as in transformers
CHUNK_ROWS = 512  # decoder rows per teacher-forced pass: bounds the (rows, T, vocab) logits in memory
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


def parse_item_text(text: str, n_items: int) -> int | None:
    """The item ID a generated string names ("8668" -> 8668), or None unless it is a canonical ID in 1..n_items."""
    s = text.strip()
    if not (s.isascii() and s.isdigit()) or s != str(int(s)) or not 1 <= int(s) <= n_items:
        return None
    return int(s)


class ItemTrie:
    """Prefix tree over the target token sequences (EOS included) of items 1..I; node 0 is the root.

    `blocked_nodes(history)` marks the nodes whose whole subtree is history items, so constrained decoding only
    follows prefixes that still lead to an item the user has not seen.
    """

    ROOT = 0

    def __init__(self, sequences: Sequence[Sequence[int]], tokenizer: Any = None, pad_token_id: int = 0,
                 eos_token_id: int = 1) -> None:
        """`sequences[i - 1]` are the target tokens of item i, each ending in EOS."""
        self.tokenizer, self.pad_token_id, self.eos_token_id = tokenizer, pad_token_id, eos_token_id
        self.n_items = len(sequences)
        self._children: list[dict[int, int]] = [{}]
        self._parent: list[int] = [-1]
        self._n_below: list[int] = [0]  # items in each node's subtree
        self._paths: list[list[int]] = [[]]  # item -> its nodes below the root (index 0 unused)
        self._item_at: dict[int, int] = {}  # leaf node -> item
        for item, seq in enumerate(sequences, start=1):
            seq = [int(t) for t in seq]
            if not seq or seq[-1] != eos_token_id or eos_token_id in seq[:-1]:
                raise ValueError(f"item {item}: target tokens {seq} must end with (only one) EOS {eos_token_id}")
            node, path = self.ROOT, []
            for tok in seq:
                child = self._children[node].get(tok)
                if child is None:
                    child = len(self._children)
                    self._children[node][tok] = child
                    self._children.append({})
                    self._parent.append(node)
                    self._n_below.append(0)
                node = child
                path.append(node)
            if node in self._item_at:
                raise ValueError(f"items {self._item_at[node]} and {item} share the target tokens {seq}")
            self._item_at[node] = item
            self._paths.append(path)
            for n in [self.ROOT, *path]:
                self._n_below[n] += 1
        self.max_len = max((len(s) for s in sequences), default=1)
        self._labels = torch.full((self.n_items + 1, self.max_len), IGNORE, dtype=torch.long)  # (I+1, T)
        for item, seq in enumerate(sequences, start=1):
            self._labels[item, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        logger.info("item trie: %d items, %d nodes, depth %d", self.n_items, len(self._children), self.max_len)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, n_items: int) -> ItemTrie:
        """Tokenize the target strings "1".."n_items" in one batch call (EOS appended by the tokenizer)."""
        sequences = tokenizer([str(i) for i in range(1, n_items + 1)]).input_ids
        return cls(sequences, tokenizer, tokenizer.pad_token_id, tokenizer.eos_token_id)

    def labels(self, items: torch.Tensor) -> torch.Tensor:
        """(N, T) target tokens of `items` (N,), padded with -100."""
        return self._labels[items]

    def node_of(self, prefix: Sequence[int]) -> int | None:
        """The node a token prefix (decoder start token excluded) leads to; None if it leaves the trie."""
        node: int | None = self.ROOT
        for tok in prefix:
            node = self._children[node].get(int(tok))
            if node is None:
                return None
        return node

    def item_of(self, tokens: Sequence[int]) -> int | None:
        """The item whose exact target tokens (up to the first EOS) open `tokens`, else None."""
        tokens = [int(t) for t in tokens]
        if self.eos_token_id not in tokens:
            return None
        node = self.node_of(tokens[: tokens.index(self.eos_token_id) + 1])
        return None if node is None else self._item_at.get(node)

    def blocked_nodes(self, excluded_items: Iterable[int]) -> frozenset[int]:
        """Nodes all of whose items are in `excluded_items` (found from the excluded items' paths only)."""
        hits: dict[int, int] = {}
        for item in {int(i) for i in excluded_items if 1 <= int(i) <= self.n_items}:
            for node in [self.ROOT, *self._paths[item]]:
                hits[node] = hits.get(node, 0) + 1
        return frozenset(n for n, c in hits.items() if c == self._n_below[n])

    def allowed_tokens(self, prefix: Sequence[int], blocked: frozenset[int] = frozenset()) -> list[int]:
        """Next tokens that keep `prefix` on the way to an unblocked item; [pad] once finished or off the trie."""
        node = self.node_of(prefix)
        if node is None or not self._children[node]:
            return [self.pad_token_id]
        allowed = [t for t, child in self._children[node].items() if child not in blocked]
        return allowed or [self.pad_token_id]

    def parse(self, sequences: torch.Tensor) -> list[int | None]:
        """Items named by generated sequences (B, T) (decoder start first): decoded text if a tokenizer is known."""
        if self.tokenizer is None:
            return [self.item_of(row[1:]) for row in sequences.tolist()]
        texts = self.tokenizer.batch_decode(sequences.tolist(), skip_special_tokens=True)
        return [parse_item_text(t, self.n_items) for t in texts]


class ItemTrieLogitsProcessor(LogitsProcessor):
    """Masks every token that does not lead to a valid item outside the user's exclusion list (rows = B * beams)."""

    def __init__(self, trie: ItemTrie, excluded: Sequence[Iterable[int]], num_beams: int) -> None:
        self.trie, self.num_beams = trie, num_beams
        self.blocked = [trie.blocked_nodes(e) for e in excluded]
        if any(ItemTrie.ROOT in b for b in self.blocked):
            raise ValueError("a user's exclusion list covers the whole catalogue; nothing can be recommended")
        self._touched = [{trie._parent[n] for n in b} for b in self.blocked]  # nodes with a blocked child
        self._shared: dict[int, torch.Tensor] = {}  # node -> allowed tokens when nothing below is blocked
        self._own: dict[tuple[int, int], torch.Tensor] = {}  # (user, node) -> allowed tokens otherwise

    def _allowed(self, user: int, prefix: list[int]) -> torch.Tensor:
        node = self.trie.node_of(prefix)
        if node is not None and node not in self._touched[user]:
            if node not in self._shared:
                self._shared[node] = torch.tensor(self.trie.allowed_tokens(prefix))
            return self._shared[node]
        key = (user, -1 if node is None else node)
        if key not in self._own:
            self._own[key] = torch.tensor(self.trie.allowed_tokens(prefix, self.blocked[user]))
        return self._own[key]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        groups: dict[int, tuple[torch.Tensor, list[int]]] = {}  # rows sharing one allowed-token tensor
        for r, prefix in enumerate(input_ids[:, 1:].tolist()):  # drop the decoder start token
            toks = self._allowed(r // self.num_beams, prefix)
            groups.setdefault(id(toks), (toks, []))[1].append(r)
        banned = torch.ones_like(scores, dtype=torch.bool)  # (B*beams, V)
        for toks, rows in groups.values():
            banned[torch.tensor(rows, device=scores.device)[:, None], toks.to(scores.device)[None, :]] = False
        return scores.masked_fill_(banned, -math.inf)


# ---- model passes -------------------------------------------------------------------------------------------


def _encode(model: Any, batch: DecodeInputs, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder states (B, S, d) and mask (B, S) of one batch of prompts (soft prompts included)."""
    embeds, mask = model.encoder_inputs(batch.input_ids, batch.ww_ids, batch.attention_mask, task)
    hidden = model.t5.get_encoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    return hidden, mask


def _log_likelihood(model: Any, hidden: torch.Tensor, mask: torch.Tensor, row_user: torch.Tensor,
                    labels: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """(N,) sum_t log p(labels_t | labels_<t, prompt of user row_user[n]) over non-padding (-100) labels."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    out = []
    for start in range(0, len(labels), chunk_rows):
        lab = labels[start : start + chunk_rows]  # (n, T)
        users = row_user[start : start + chunk_rows]
        logits = model.t5(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden[users]),  # (n, S, d): states repeated per row
            attention_mask=mask[users],
            decoder_input_ids=model.t5.prepare_decoder_input_ids_from_labels(labels=lab),
            use_cache=False,
        ).logits  # (n, T, V)
        logp = logits.float().log_softmax(-1).gather(-1, lab.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (n, T)
        out.append((logp * (lab != IGNORE)).sum(-1))
    return torch.cat(out) if out else labels.new_zeros(0, dtype=torch.float)


def _generate(model: Any, batch: DecodeInputs, task: Task, num_beams: int, num_return: int, max_new_tokens: int,
              length_penalty: float, processor: LogitsProcessor | None = None) -> torch.Tensor:
    """(B * num_return, T) beam-search outputs, decoder start token first, best first within each user."""
    kwargs: dict[str, Any] = dict(num_beams=num_beams, num_return_sequences=num_return, do_sample=False,
                                  max_new_tokens=max_new_tokens, length_penalty=length_penalty)
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
        with torch.inference_mode(), tqdm(total=n, desc=name, unit="user", disable=not progress) as bar:
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
