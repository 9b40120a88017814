"""Whole-word IDs from the real t5-small tokenizer's character offsets; padding; length buckets."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from elmrec.config import Task
from elmrec.prompts import DIRECT_TEMPLATES, SEQUENTIAL_TEMPLATES, render
from elmrec.wholeword import MENTION, Prompt, bucketed_batches, collate, encode, find_mentions

from .conftest import T5_SMALL

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from elmrec.wholeword import Encoded

pytestmark = pytest.mark.skipif(
    not (T5_SMALL / "spiece.model").is_file(), reason=f"no t5-small tokenizer at {T5_SMALL}"
)

N_USERS = 20000


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(T5_SMALL))


def tokens_of(tokenizer: PreTrainedTokenizerBase, encoded: Encoded, k: int) -> list[str]:
    return tokenizer.convert_ids_to_tokens(encoded.input_ids[encoded.offsets[k] : encoded.offsets[k + 1]].tolist())


def ww_of(encoded: Encoded, k: int) -> list[int]:
    return encoded.ww_ids[encoded.offsets[k] : encoded.offsets[k + 1]].tolist()


def test_ids_merged_with_punctuation(tokenizer: PreTrainedTokenizerBase) -> None:
    """'8,' and '1.' merge an ID's last digit with punctuation: they still belong to the ID."""
    texts = ["user_12252 bought item_8668, item_1."]
    node, order = encode(tokenizer, texts, "node", n_users=N_USERS), encode(tokenizer, texts, "order")
    assert tokens_of(tokenizer, node, 0) == [
        "▁user", "_", "122", "52", "▁bought", "▁item", "_", "866", "8,", "▁item", "_", "1.", "</s>"
    ]
    assert ww_of(node, 0) == [12252] * 4 + [0] + [28668] * 4 + [20001] * 3 + [0]
    assert ww_of(order, 0) == [1] * 4 + [0] + [2] * 4 + [3] * 3 + [0]


def test_ids_at_start_end_and_before_question_and_colon(tokenizer: PreTrainedTokenizerBase) -> None:
    texts = [
        "Which of item_3 item_7 should be recommended to user_5?",
        "Here is the purchase history of user_3: item_1.",
        "user_4 item_10 item_2",
        "no ids here",
    ]
    node, order = encode(tokenizer, texts, "node", n_users=N_USERS), encode(tokenizer, texts, "order")
    assert tokens_of(tokenizer, node, 0)[12:] == ["▁user", "_", "5", "?", "</s>"]
    assert ww_of(node, 0) == [0, 0, 20003, 20003, 20003, 20007, 20007, 20007, 0, 0, 0, 0, 5, 5, 5, 0, 0]
    assert ww_of(order, 0) == [0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 0, 0, 3, 3, 3, 0, 0]
    assert tokens_of(tokenizer, node, 1)[6:] == ["▁user", "_", "3", ":", "▁item", "_", "1.", "</s>"]
    assert ww_of(node, 1) == [0] * 6 + [3, 3, 3, 0, 20001, 20001, 20001, 0]
    assert ww_of(order, 1) == [0] * 6 + [1, 1, 1, 0, 2, 2, 2, 0]
    assert ww_of(node, 2) == [4, 4, 4, 20010, 20010, 20010, 20002, 20002, 20002, 0]
    assert ww_of(order, 2) == [1, 1, 1, 2, 2, 2, 3, 3, 3, 0]
    assert ww_of(node, 3) == ww_of(order, 3) == [0] * 7


@pytest.mark.parametrize("template", SEQUENTIAL_TEMPLATES + DIRECT_TEMPLATES)
def test_every_template_maps_each_mention_to_its_tokens(tokenizer: PreTrainedTokenizerBase, template: str) -> None:
    """The characters of the tokens carrying one ww id spell exactly that mention (plus merged punctuation)."""
    text = render(template, 7, [12, 345, 6789])
    encoded = encode(tokenizer, [text], "order")
    spans = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    ww = ww_of(encoded, 0)
    mentions = [m.group(0) for m in MENTION.finditer(text)]
    assert sorted(set(ww) - {0}) == [1, 2, 3, 4] and ww[-1] == 0  # 4 mentions; </s> gets 0
    for order, mention in enumerate(mentions, start=1):
        covered = [k for k, w in enumerate(ww) if w == order]
        assert covered == list(range(covered[0], covered[-1] + 1))  # contiguous tokens
        spelled = text[spans[covered[0]][0] : spans[covered[-1]][1]]
        assert spelled.startswith(mention) and len(spelled) - len(mention) <= 1  # at most one merged symbol


def test_collate_pads_with_zero_and_ignore_index(tokenizer: PreTrainedTokenizerBase) -> None:
    prompts = [
        Prompt(5, Task.DIRECT, "user_5 item_3 item_7", "8668"),
        Prompt(6, Task.DIRECT, "user_6 item_1", "1"),
    ]
    batch = collate(encode(tokenizer, prompts, "node", n_users=10), [0, 1])
    assert batch["input_ids"].tolist() == [
        [1139, 834, 755, 2118, 834, 519, 2118, 834, 940, 1],
        [1139, 834, 948, 2118, 834, 536, 1, 0, 0, 0],
    ]
    assert batch["attention_mask"].tolist() == [[1] * 10, [1] * 7 + [0] * 3]
    assert batch["ww_ids"].tolist() == [[5, 5, 5, 13, 13, 13, 17, 17, 17, 0], [6, 6, 6, 11, 11, 11, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[3, 3840, 3651, 1], [209, 1, -100, -100]]  # '▁', '86', '68', '</s>'
    assert all(t.dtype == torch.long for t in batch.values())
    reversed_batch = collate(encode(tokenizer, prompts, "node", n_users=10), np.array([1, 0]))
    assert reversed_batch["ww_ids"].tolist()[0] == [6, 6, 6, 11, 11, 11, 0, 0, 0, 0]
    assert "labels" not in collate(encode(tokenizer, ["user_1 item_2"], "order"), [0])


def test_truncation_keeps_eos_and_ids(tokenizer: PreTrainedTokenizerBase) -> None:
    text = render("{user} {items}", 1, list(range(100, 300)))
    encoded = encode(tokenizer, [text], "order", max_length=10)
    assert tokens_of(tokenizer, encoded, 0) == ["▁user", "_", "1", "▁item", "_", "100", "▁item", "_", "101", "</s>"]
    assert ww_of(encoded, 0) == [1, 1, 1, 2, 2, 2, 3, 3, 3, 0]


def test_errors(tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(ValueError, match="n_users"):
        encode(tokenizer, ["user_1 item_2"], "node")
    with pytest.raises(ValueError, match="exceeds n_users"):
        encode(tokenizer, ["user_11 item_2"], "node", n_users=10)
    with pytest.raises(ValueError, match="does not fit a table of 3 rows"):
        encode(tokenizer, ["user_1 item_2 item_3"], "order", table_size=3)
    assert len(encode(tokenizer, ["user_1 item_2"], "order", table_size=3)) == 1
    with pytest.raises(ValueError):
        encode(tokenizer, ["user_1"], "words")
    assert len(encode(tokenizer, [], "order")) == 0


def test_find_mentions_matches_the_regex() -> None:
    random.seed(0)
    pieces = ["user_", "item_", "_", "1", "23", "0", " ", ",", ".", "?", "a", "é", "ü_", "٣", "\n", "(", "'", "x"]
    for _ in range(2000):
        text = "".join(random.choice(pieces) for _ in range(random.randint(0, 25)))
        expected = [(m.start(), m.end(), m.group(1) == "user", int(m.group(2))) for m in MENTION.finditer(text)]
        start, end, is_user, number = find_mentions(text)
        assert list(zip(start.tolist(), end.tolist(), is_user.tolist(), number.tolist())) == expected, text


def test_bucketed_batches_cover_every_index_once() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 400, size=1003)
    batches = bucketed_batches(lengths, batch_size=16, rng=np.random.default_rng(1), chunk_batches=4)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1003))
    assert sorted(len(b) for b in batches)[1:] == [16] * (len(batches) - 1)  # only the very last may be short
    def padded(batches: list[np.ndarray]) -> int:
        return sum(len(b) * int(lengths[b].max()) for b in batches)

    bucketed = bucketed_batches(lengths, batch_size=16, rng=np.random.default_rng(1))  # chunks of 50 batches
    random_order = np.array_split(rng.permutation(1003), 63)
    assert padded(bucketed) < 1.05 * lengths.sum() < 1.5 * lengths.sum() < padded(random_order)
    again = bucketed_batches(lengths, batch_size=16, rng=np.random.default_rng(1), chunk_batches=4)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    assert bucketed_batches(np.array([], dtype=np.int64), 4, rng) == []
