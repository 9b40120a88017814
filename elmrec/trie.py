"""Item tries: the token paths of every item ID, for constrained decoding and for parsing generated text.

Each item's target is its bare ID (`"8668"`), tokenized with EOS (`▁86`, `68`, `</s>`). The `ItemTrie` holds these
token sequences as a prefix tree; `ItemTrieLogitsProcessor` plugs it into transformers' beam search so that every
beam stays on a path to an item the user has not interacted with. `parse_item_text` is the text-side twin: the
item a generated string names, or None. `PrefixTree` is the small per-user tree of a few label rows that exact
candidate scoring feeds to the decoder in one pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import torch
from transformers.generation import LogitsProcessor

from elmrec.wholeword import IGNORE_INDEX

logger = logging.getLogger(__name__)



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
        self._labels = torch.full((self.n_items + 1, self.max_len), IGNORE_INDEX, dtype=torch.long)  # (I+1, T)
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


class PrefixTree(NamedTuple):
    """The prefix tree of one user's label rows, as decoder inputs: node k's input token, depth and parent
    (-1 at the root; parents before children), and for every label token (rows in order) the node it is
    predicted at and its value. Node 0 is the root: the decoder start token, depth 0."""

    node_input: list[int]
    node_depth: list[int]
    node_parent: list[int]
    token_node: list[int]
    target: list[int]

    @property
    def n_nodes(self) -> int:
        return len(self.node_input)

    @classmethod
    def of(cls, rows: Sequence[Sequence[int]], start_id: int) -> PrefixTree:
        """Tree of `rows` (label tokens, padding removed); a prefix shared by several rows is one node."""
        tree = cls([], [], [], [], [])
        index: dict[tuple[int, ...], int] = {}
        for row in rows:
            parent = -1
            for depth, target in enumerate(row):
                node = index.get(tuple(row[:depth]))
                if node is None:
                    node = index[tuple(row[:depth])] = len(tree.node_input)
                    tree.node_input.append(row[depth - 1] if depth else start_id)
                    tree.node_depth.append(depth)
                    tree.node_parent.append(parent)
                tree.token_node.append(node)
                tree.target.append(target)
                parent = node
        return tree
