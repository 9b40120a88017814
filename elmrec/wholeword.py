"""Whole-word IDs: one extra embedding index per token, shared by every token of one `user_<id>`/`item_<id>` mention.

The T5 tokenizer splits `user_12252` into `▁user`, `_`, `122`, `52`, and may merge a final digit with the next
punctuation (`item_8668,` -> `▁item`, `_`, `866`, `8,`). So mentions are found in the *text* with a regex and
mapped to tokens through the tokenizer's character offsets: a token whose character span overlaps a
mention's span belongs to that mention. Tokens outside mentions, special tokens (`</s>`, offsets (0, 0)) and
padding get 0.

Two modes, as in ELMRec:
- NODE: the mention's graph node index (user u -> u, item i -> n_users + i), for the LightGCN table.
- ORDER: the mention's order of appearance in the prompt (1, 2, 3, ...; users and items counted alike), for
  the incremental table. An ID that does not fit the table (`table_size`) is an error, never clamped.

A whole split is tokenized in one batched call and kept ragged (`Encoded`: flat arrays plus offsets);
`collate` pads the rows of one batch into tensors, `bucketed_batches` groups prompts of similar length.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np
import torch

from elmrec.config import Task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Prompt:
    """One encoder input and its decoder target (elmrec.prompts writes them; here they become model inputs)."""

    user: int
    task: Task
    text: str  # e.g. "user_12 has bought item_3 item_7. Predict the next item the user will buy."
    target: str  # the bare item ID, e.g. "8668"

log = logging.getLogger(__name__)

MENTION = re.compile(r"\b(user|item)_([0-9]+)")  # the spec; find_mentions is its vectorised twin
IGNORE_INDEX = -100  # label value ignored by the cross-entropy loss (the one definition)
MAX_PROMPT_TOKENS = 512  # prompts are truncated to this many tokens (keeping </s>), as T5 was pre-trained


class WholeWordMode(str, Enum):
    """What a mention's whole-word ID is."""

    NODE = "node"  # graph node index: user u -> u, item i -> n_users + i
    ORDER = "order"  # order of appearance in the prompt: 1, 2, 3, ...


@dataclass(frozen=True)
class Encoded:
    """A tokenized split, ragged: prompt k's tokens are `input_ids[offsets[k]:offsets[k + 1]]`."""

    input_ids: np.ndarray  # (T,) int64, the tokens of all prompts concatenated (each ends with </s>)
    ww_ids: np.ndarray  # (T,) int64, the whole-word ID of each token (0 outside mentions)
    offsets: np.ndarray  # (N + 1,) int64
    labels: np.ndarray | None = None  # (T',) int64, target tokens concatenated; None for bare texts
    label_offsets: np.ndarray | None = None  # (N + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """(N,) number of input tokens of each prompt."""
        return np.diff(self.offsets)


def _flatten(token_lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ragged token lists: (flat (T,), offsets (N + 1,))."""
    lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
    flat = np.fromiter(itertools.chain.from_iterable(token_lists), dtype=np.int64, count=int(lengths.sum()))
    return flat, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _is_word_char(codes: np.ndarray) -> np.ndarray:
    """Whether each code point is a regex word character (`\\w`: alphanumeric or '_')."""
    ascii_word = (
        ((codes >= 48) & (codes <= 57)) | ((codes >= 65) & (codes <= 90)) | ((codes >= 97) & (codes <= 122))
    ) | (codes == 95)
    wide = np.unique(codes[codes > 127])
    wide_word = wide[[chr(int(code)).isalnum() for code in wide]] if len(wide) else wide
    return ascii_word | np.isin(codes, wide_word)


def find_mentions(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every match of MENTION in `text`, vectorised: (start, end, is_user, number) arrays of shape (M,).

    Same result as `MENTION.finditer` (ASCII digits), without a Python object per match; positions are
    character (code point) indices, as the tokenizer's offsets.
    """
    if text.isascii():  # one byte per character: the common case, 4x less memory
        codes = np.frombuffer(text.encode("ascii"), dtype=np.uint8)  # (C,)
    else:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (C,)
    digit = (codes >= 48) & (codes <= 57)
    start = np.flatnonzero(codes == 95) - 4  # a mention is 'user' or 'item', '_', digits
    start = start[(start >= 0) & (start + 5 < len(codes))]
    start = start[digit[start + 5]]
    word = codes[start[:, None] + np.arange(4)]  # (M, 4)
    is_user = (word == np.frombuffer(b"user", np.uint8)).all(axis=1)
    is_item = (word == np.frombuffer(b"item", np.uint8)).all(axis=1)
    boundary = np.ones(len(start), dtype=bool)  # `\\b`: no word character right before
    boundary[start > 0] = ~_is_word_char(codes[start[start > 0] - 1])
    keep = (is_user | is_item) & boundary
    start, is_user = start[keep], is_user[keep]

    run_end = np.flatnonzero(digit & ~np.append(digit[1:], False)) + 1  # one past the last digit of each run
    end = run_end[np.searchsorted(run_end, start + 5, side="right")]
    n_digits = end - start - 5
    if len(start) and n_digits.max() > 18:
        raise ValueError("an ID with more than 18 digits does not fit an int64")
    number = np.zeros(len(start), dtype=np.int64)
    for j in range(int(n_digits.max(initial=0))):  # read the digits left to right, at most 18 steps
        more = j < n_digits
        number[more] = number[more] * 10 + codes[start[more] + 5 + j].astype(np.int64) - 48
    return start.astype(np.int64), end.astype(np.int64), is_user, number


def whole_word_ids(
    texts: Sequence[str],
    token_spans: np.ndarray,
    offsets: np.ndarray,
    mode: WholeWordMode | str,
    n_users: int = 0,
) -> np.ndarray:
    """The whole-word ID of every token of every text, vectorised over the whole list.

    token_spans: (T, 2) character (start, end) of each token in its own text, as the tokenizer's offset mapping;
    offsets: (N + 1,) prompt k's tokens are rows offsets[k]:offsets[k + 1]. Returns (T,) int64.
    """
    mode = WholeWordMode(mode)
    if mode is WholeWordMode.NODE and n_users <= 0:
        raise ValueError("mode 'node' needs n_users (> 0) to place item nodes after user nodes")
    # Work in the coordinates of one joined string, so one regex pass and one search cover every text.
    text_lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    text_start = np.concatenate([[0], np.cumsum(text_lengths + 1)[:-1]]).astype(np.int64)  # +1: separator
    m_start, m_end, m_is_user, m_number = find_mentions("\n".join(texts))  # (M,) each
    if not len(m_start):
        return np.zeros(offsets[-1], dtype=np.int64)
    m_text = np.searchsorted(text_start, m_start, side="right") - 1  # which text each mention is in

    if mode is WholeWordMode.NODE:
        if m_is_user.any() and m_number[m_is_user].max() > n_users:
            raise ValueError(f"user ID {m_number[m_is_user].max()} exceeds n_users={n_users}")
        value = np.where(m_is_user, m_number, n_users + m_number)
    else:
        first_in_text = np.searchsorted(m_text, m_text, side="left")  # index of the text's first mention
        value = np.arange(len(m_start)) - first_in_text + 1

    token_text = np.repeat(np.arange(len(texts)), np.diff(offsets))  # (T,)
    start = text_start[token_text] + token_spans[:, 0]
    end = text_start[token_text] + token_spans[:, 1]
    k = np.searchsorted(m_start, end, side="left") - 1  # the last mention starting before the token ends
    k_safe = np.maximum(k, 0)
    inside = (end > start) & (k >= 0) & (m_end[k_safe] > start)  # a real token overlapping mention k
    return np.where(inside, value[k_safe], 0).astype(np.int64)


def encode(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt] | Sequence[str],
    mode: WholeWordMode | str,
    n_users: int = 0,
    max_length: int = MAX_PROMPT_TOKENS,
    table_size: int | None = None,
) -> Encoded:
    """Tokenize prompts (or bare texts) in one batched call and compute their whole-word IDs.

    Inputs longer than max_length are truncated (keeping </s>). With `table_size`, a whole-word ID >= table_size
    raises ValueError (the embedding table is too small). Targets of Prompts are tokenized in a second batched
    call into `labels`; bare texts give `labels=None`.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("whole-word IDs need a fast tokenizer (character offsets)")
    if not prompts:
        empty, start = np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
        return Encoded(empty, empty, start)
    has_targets = isinstance(prompts[0], Prompt)
    texts = [p.text for p in prompts] if has_targets else list(prompts)  # type: ignore[union-attr]
    tokens = tokenizer(
        texts, return_offsets_mapping=True, return_attention_mask=False, truncation=True, max_length=max_length
    )
    input_ids, offsets = _flatten(tokens["input_ids"])
    spans = np.fromiter(
        itertools.chain.from_iterable(itertools.chain.from_iterable(tokens["offset_mapping"])),
        dtype=np.int64,
        count=2 * len(input_ids),
    ).reshape(-1, 2)  # (T, 2)
    ww_ids = whole_word_ids(texts, spans, offsets, mode, n_users)
    if table_size is not None and len(ww_ids) and ww_ids.max() >= table_size:
        raise ValueError(f"whole-word ID {ww_ids.max()} does not fit a table of {table_size} rows (mode {mode})")

    labels = label_offsets = None
    if has_targets:
        targets = tokenizer([p.target for p in prompts], return_attention_mask=False)  # type: ignore[union-attr]
        labels, label_offsets = _flatten(targets["input_ids"])
    log.debug("encoded %d prompts, %d tokens, longest %d", len(texts), len(input_ids), np.diff(offsets).max(initial=0))
    return Encoded(input_ids, ww_ids, offsets, labels, label_offsets)


def _pad(flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray, fill: int) -> np.ndarray:
    """(B, L) array of the given ragged rows, right-padded with `fill` to the longest."""
    lengths = offsets[rows + 1] - offsets[rows]
    out = np.full((len(rows), int(lengths.max(initial=0))), fill, dtype=np.int64)
    row = np.repeat(np.arange(len(rows)), lengths)
    col = np.arange(len(row)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[row, col] = flat[np.repeat(offsets[rows], lengths) + col]
    return out


def collate(encoded: Encoded, indices: Sequence[int] | np.ndarray, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad the prompts `indices` of `encoded` into LongTensors.

    input_ids, attention_mask, ww_ids: (B, L), padded with pad_id / 0 / 0; labels: (B, T) padded with IGNORE_INDEX,
    present only when `encoded` has targets.
    """
    rows = np.asarray(indices, dtype=np.int64)
    input_ids = _pad(encoded.input_ids, encoded.offsets, rows, pad_id)  # (B, L)
    lengths = encoded.offsets[rows + 1] - encoded.offsets[rows]
    attention_mask = (np.arange(input_ids.shape[1]) < lengths[:, None]).astype(np.int64)  # (B, L)
    batch = {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "ww_ids": torch.from_numpy(_pad(encoded.ww_ids, encoded.offsets, rows, 0)),
    }
    if encoded.labels is not None and encoded.label_offsets is not None:
        batch["labels"] = torch.from_numpy(_pad(encoded.labels, encoded.label_offsets, rows, IGNORE_INDEX))
    return batch


def bucketed_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, chunk_batches: int = 50
) -> list[np.ndarray]:
    """Index batches of similar lengths: shuffle, sort by length within chunks of chunk_batches batches,
    cut into batches, then shuffle the batch order. Every index appears exactly once."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    lengths = np.asarray(lengths)
    order = rng.permutation(len(lengths))
    chunk = batch_size * chunk_batches
    batches: list[np.ndarray] = []
    for begin in range(0, len(order), chunk):
        part = order[begin : begin + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(np.split(part, np.arange(batch_size, len(part), batch_size)))
    return [batches[i] for i in rng.permutation(len(batches))]
