"""Turn a trained model into ranked item lists: candidate scoring, beam search, trie-constrained beam search.

Direct recommendation (rank the user's 100 stored candidates):
- `score` (default): exact ranking by sequence log-likelihood sum_t log p(y_t | y_<t, prompt) of each candidate's
  target tokens (EOS included). All of a user's candidates go through one teacher-forced decoder sequence
  holding their prefix tree (elmrec.likelihood). No invalid outputs by construction. Ties keep the stored
  candidate order.
- `beam` (the paper): beam search; an output that does not parse to one of the user's candidates is invalid,
  counted, and left as a miss (-1) in its slot. It is never replaced by a random item. A repeated item keeps its
  first slot; its later copies become -1 without counting as invalid.
Sequential recommendation (rank the whole catalogue):
- `constrained` (default): beam search restricted by an `ItemTrie` to valid items not in the user's history.
- `rerank` (the paper): beam search for top_n + rerank_n outputs; invalid ones (counted) and history items are
  dropped, the first top_n remain.

`rank_direct` / `rank_sequential` run several decoders side by side and return {decoder: DecodeResult}: each
batch of prompts goes through the encoder once, and every decoder (beam search and the rescoring of its outputs
included) starts from those encoder states. Beam counts below the number of sequences to return (e.g. the demo
preset) are widened with a warning. Beam search uses length_penalty 1.0 (the transformers default) in the paper
modes and 0.0 in `constrained`. Inputs arrive tokenized (`DecodeInputs`); the only tokenization here is the
one-off build of the item trie. Scores of generated outputs are their teacher-forced summed log-likelihoods too,
so every decoder reports the same quantity. The model is any `DecodingModel` (`ELMRec`). On the CPU's reused heap
(elmrec.memory) a caller passes `release_every`: its free pages go back before the first batch, every so many
batches and after the last.
The item trie and its logits processor live in `elmrec.trie` (re-exported here).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import get_args

import numpy as np
import torch

from elmrec.config import DirectDecoder, EvalSettings, SequentialDecoder, Task
from elmrec.device import Device
from elmrec.likelihood import DecodingModel, States, encode, generate, log_likelihood, sequence_log_likelihood
from elmrec.memory import releasing
from elmrec.metrics import INVALID, DecodeResult, score_order
from elmrec.progress import progress_bar
from elmrec.trie import ItemTrie, ItemTrieLogitsProcessor

logger = logging.getLogger(__name__)

CONSTRAINED_LENGTH_PENALTY = 0.0  # rank constrained beams by summed log-likelihood, like `score` mode
PAPER_LENGTH_PENALTY = 1.0  # the transformers default the paper's beam search ran with
Step = tuple[list[list[int]], list[list[float]], int, int]  # one batch: per-user items, scores, n_invalid, n_outputs
StepFn = Callable[["DecodeInputs", States], Step]  # one decoder on one batch and its encoder states


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


# ---- entry points -------------------------------------------------------------------------------------------


def rank_direct(model: DecodingModel, inputs: DecodeInputs, trie: ItemTrie, settings: EvalSettings,
                decoders: Sequence[DirectDecoder] | None = None, progress: bool = True,
                release_every: int = 0) -> dict[str, DecodeResult]:
    """Rank each user's stored candidates with each decoder (default: settings.direct_decoders); {decoder: result}.

    `score` ranks all candidates exactly; `beam` keeps the top_n generated ones.
    """
    if inputs.candidates is None:
        raise ValueError("direct ranking needs each user's candidates")
    steps = {"score": _score_batch, "beam": _beam_batch}
    chosen = _chosen(decoders or settings.direct_decoders, get_args(DirectDecoder), "direct")
    return _run(model, inputs, settings, Task.DIRECT, {d: _bind(steps[d], model, trie, settings) for d in chosen},
                progress, release_every)


def rank_sequential(model: DecodingModel, inputs: DecodeInputs, trie: ItemTrie, settings: EvalSettings,
                    decoders: Sequence[SequentialDecoder] | None = None,
                    progress: bool = True, release_every: int = 0) -> dict[str, DecodeResult]:
    """Top-n items of the whole catalogue per user, never a history item, with each decoder (default:
    settings.sequential_decoders: `constrained` and/or the paper's `rerank`); {decoder: result}."""
    if inputs.histories is None:
        raise ValueError("sequential ranking needs each user's history")
    steps = {"constrained": _constrained_batch, "rerank": _rerank_batch}
    chosen = _chosen(decoders or settings.sequential_decoders, get_args(SequentialDecoder), "sequential")
    return _run(model, inputs, settings, Task.SEQUENTIAL,
                {d: _bind(steps[d], model, trie, settings) for d in chosen}, progress, release_every)


def _chosen(decoders: Sequence[str], known: tuple[str, ...], task: str) -> list[str]:
    unknown = [d for d in decoders if d not in known]
    if unknown or not decoders:
        raise ValueError(f"{task} decoders must be among {list(known)}, got {list(decoders)}")
    return list(dict.fromkeys(decoders))


def _bind(step: Callable[..., Step], model: DecodingModel, trie: ItemTrie, settings: EvalSettings) -> StepFn:
    return lambda batch, states: step(model, batch, states, trie, settings)


def _run(model: DecodingModel, inputs: DecodeInputs, settings: EvalSettings, task: Task, steps: dict[str, StepFn],
         progress: bool = True, release_every: int = 0) -> dict[str, DecodeResult]:
    """Batch by batch (eval mode, no autograd, in `settings.precision`): one encoder pass, then every decoder's
    step on its states; each decoder's per-user lists stacked into its DecodeResult. `release_every`:
    memory.releasing."""
    device = next(model.parameters()).device
    amp = Device.resolve(device.type, settings.precision)  # its autocast: none in fp32
    was_training = model.training
    model.train(False)
    ranked: dict[str, list[list[int]]] = {d: [] for d in steps}
    scored: dict[str, list[list[float]]] = {d: [] for d in steps}
    counts = {d: [0, 0] for d in steps}  # n_invalid, n_outputs
    n = len(inputs) if settings.max_users is None else min(settings.max_users, len(inputs))
    name = f"{task.value}/{'+'.join(steps)}"
    try:
        with (torch.inference_mode(), amp.autocast(),
              progress_bar(total=n, desc=name, unit="user", disable=not progress) as bar):
            for batch in releasing(inputs.batches(settings.batch_size, settings.max_users), release_every):
                batch = replace(batch, input_ids=batch.input_ids.to(device),
                                attention_mask=batch.attention_mask.to(device), ww_ids=batch.ww_ids.to(device))
                states = encode(model, batch.input_ids, batch.ww_ids, batch.attention_mask, task)
                for decoder, step in steps.items():
                    items, scores, bad, total = step(batch, states)
                    ranked[decoder] += items
                    scored[decoder] += scores
                    counts[decoder][0] += bad
                    counts[decoder][1] += total
                bar.update(len(batch))
    finally:
        model.train(was_training)
    users = list(inputs.users)[:n]
    for decoder, (bad, total) in counts.items():
        logger.info("%s/%s: %d users, %d/%d invalid outputs", task.value, decoder, n, bad, total)
    return {d: DecodeResult.from_lists(users, ranked[d], scored[d], *counts[d]) for d in steps}


# ---- one batch, one decoder ---------------------------------------------------------------------------------


def _score_batch(model: DecodingModel, batch: DecodeInputs, states: States, trie: ItemTrie,
                 settings: EvalSettings) -> Step:
    """Exact candidate ranking: one teacher-forced decoder pass over all candidates of the batch's users."""
    cands = [np.asarray(c, dtype=np.int64) for c in batch.candidates]
    flat = torch.as_tensor(np.concatenate(cands))  # (sum C,)
    if flat.numel() and (int(flat.min()) < 1 or int(flat.max()) > trie.n_items):
        raise ValueError(f"candidate item IDs must lie in 1..{trie.n_items}")
    device = states[0].device
    row_user = torch.repeat_interleave(torch.arange(len(cands)), torch.as_tensor([len(c) for c in cands]))
    loglik = log_likelihood(model, states, row_user.to(device), trie.labels(flat).to(device))
    per_user = torch.split(loglik.double().cpu(), [len(c) for c in cands])
    items, scores = [], []
    for c, s in zip(cands, per_user):
        order = score_order(s.numpy())  # stable: equal scores keep the stored candidate order
        items.append(c[order].tolist())
        scores.append(s.numpy()[order].tolist())
    return items, scores, 0, int(flat.numel())


def _beam_batch(model: DecodingModel, batch: DecodeInputs, states: States, trie: ItemTrie,
                settings: EvalSettings) -> Step:
    """The paper's direct decoding: top_n beams; a non-candidate or unparseable output is invalid and a miss."""
    top_n = settings.top_n
    beams = _at_least(settings.direct_beams, top_n, "direct_beams")
    seqs = generate(model, states, beams, top_n, trie.max_len, PAPER_LENGTH_PENALTY)
    loglik = sequence_log_likelihood(model, states, seqs, trie.eos_token_id).double().cpu().view(len(batch), top_n)
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


def _rerank_batch(model: DecodingModel, batch: DecodeInputs, states: States, trie: ItemTrie,
                  settings: EvalSettings) -> Step:
    """The paper's sequential decoding: top_n + rerank_n beams, drop invalid and history items, keep top_n."""
    n_return = settings.top_n + settings.rerank_n
    beams = _at_least(settings.sequential_beams, n_return, "sequential_beams")
    seqs = generate(model, states, beams, n_return, trie.max_len, PAPER_LENGTH_PENALTY)
    return _filter_outputs(model, batch, states, trie, settings, seqs, n_return, trie.parse(seqs))


def _constrained_batch(model: DecodingModel, batch: DecodeInputs, states: States, trie: ItemTrie,
                       settings: EvalSettings) -> Step:
    """Trie-constrained beam search: every output is a catalogue item outside the user's history."""
    top_n = settings.top_n
    beams = _at_least(settings.sequential_beams, top_n, "sequential_beams")
    processor = ItemTrieLogitsProcessor(trie, batch.histories, beams)
    seqs = generate(model, states, beams, top_n, trie.max_len, CONSTRAINED_LENGTH_PENALTY, processor)
    parsed = [trie.item_of(row[1:]) for row in seqs.tolist()]  # exact token paths, no text round trip
    step = _filter_outputs(model, batch, states, trie, settings, seqs, top_n, parsed)
    if step[2]:
        logger.warning("constrained decoding produced %d invalid outputs (fewer reachable items than top_n?)", step[2])
    return step


def _filter_outputs(model: DecodingModel, batch: DecodeInputs, states: States, trie: ItemTrie,
                    settings: EvalSettings, seqs: torch.Tensor, n_return: int, parsed: list[int | None]) -> Step:
    """Per user: drop invalid outputs (counted), history items and repeats; keep the first top_n."""
    loglik = sequence_log_likelihood(model, states, seqs, trie.eos_token_id).double().cpu().view(len(batch), n_return)
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
    """Beam search cannot return more sequences than beams: widen (with a warning, once) when settings ask for that."""
    if beams < needed:
        _warn_widened(name, beams, needed)
    return max(beams, needed)


@cache
def _warn_widened(name: str, beams: int, needed: int) -> None:
    logger.warning("eval.%s=%d < %d sequences to return; using %d beams", name, beams, needed, needed)
