"""Decoding: item trie (elmrec.trie), exact candidate scoring, paper beam modes, trie-constrained beam search,
several decoders side by side on one encoder pass.

A tiny random T5 (d_model 32, one layer, the real t5-small tokenizer and vocabulary) behind a stand-in with the
`DecodingModel` interface (`t5`, `encoder_inputs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

from elmrec import likelihood
from elmrec.config import EvalSettings, ModelSettings, Task
from elmrec.decode import DecodeInputs, DecodingModel, rank_direct, rank_sequential
from elmrec.model import ELMRec
from elmrec.trie import ItemTrie, ItemTrieLogitsProcessor, PrefixTree, parse_item_text

T5_DIR = Path(__file__).resolve().parents[2] / "shared" / "t5-small"
pytestmark = [
    pytest.mark.skipif(not (T5_DIR / "spiece.model").exists(), reason="shared t5-small tokenizer missing"),
    pytest.mark.usefixtures("one_thread"),
]


class StandIn(nn.Module):
    """The ELMRec interface around a tiny random T5: [prompts | token + ww embeddings] into the encoder."""

    def __init__(self, seed: int = 0, prompt_num: int = 2) -> None:
        super().__init__()
        torch.manual_seed(seed)
        config = T5Config.from_pretrained(T5_DIR, d_model=32, d_ff=64, d_kv=8, num_heads=2, num_layers=1,
                                          num_decoder_layers=1, dropout_rate=0.0)
        self.t5 = T5ForConditionalGeneration(config)
        self.prompts = nn.Parameter(torch.randn(prompt_num, 32))
        self.ww = nn.Embedding(64, 32)
        self.encoded: list[int] = []  # batch size of every encoder_inputs call

    def encoder_inputs(self, input_ids: torch.Tensor, ww_ids: torch.Tensor, attention_mask: torch.Tensor,
                       task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        self.encoded.append(len(input_ids))
        embeds = self.t5.get_input_embeddings()(input_ids) + self.ww(ww_ids)  # (B, L, d)
        batch = input_ids.shape[0]
        embeds = torch.cat([self.prompts.unsqueeze(0).expand(batch, -1, -1), embeds], dim=1)  # (B, P+L, d)
        mask = torch.cat([attention_mask.new_ones(batch, len(self.prompts)), attention_mask], dim=1)
        return embeds, mask


class FixedOutputs(StandIn):
    """A stand-in whose T5 generate returns fixed decoder token sequences (B * num_return, T)."""

    def __init__(self, sequences: torch.Tensor) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

        def generate(**kwargs: Any) -> torch.Tensor:
            self.calls.append(kwargs)
            return sequences

        self.t5.generate = generate


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(T5_DIR)


def make_inputs(tokenizer: Any, prompts: list[str], **lists: Any) -> DecodeInputs:
    enc = tokenizer(prompts, padding=True, return_tensors="pt")
    ww = (torch.arange(enc.input_ids.shape[1]) % 5 + 1).expand_as(enc.input_ids) * enc.attention_mask
    return DecodeInputs(enc.input_ids, enc.attention_mask, ww, users=list(range(1, len(prompts) + 1)), **lists)


def fixed_sequences(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    ids = tokenizer(texts, padding=True, return_tensors="pt").input_ids
    return torch.cat([torch.zeros(len(texts), 1, dtype=torch.long), ids], dim=1)  # decoder start token first


PROMPTS = ["user_1 item_5 item_77 item_3", "user_2 item_9", "user_3 item_12 item_4 item_100 item_8 item_2"]


# ---- trie ---------------------------------------------------------------------------------------------------

HAND = [[5, 7, 1], [5, 8, 1], [6, 1], [5, 7, 9, 1]]  # items 1..4


def test_trie_allowed_tokens_by_hand() -> None:
    trie = ItemTrie(HAND)
    assert sorted(trie.allowed_tokens([])) == [5, 6]
    assert sorted(trie.allowed_tokens([5])) == [7, 8]
    assert sorted(trie.allowed_tokens([5, 7])) == [1, 9]
    assert trie.allowed_tokens([5, 7, 1]) == [0]  # finished: pad only
    assert trie.allowed_tokens([4]) == [0]  # off the trie
    assert trie.allowed_tokens([], trie.blocked_nodes({1, 2, 4})) == [6]  # the whole [5] subtree is history
    assert sorted(trie.allowed_tokens([], trie.blocked_nodes({1, 4}))) == [5, 6]
    assert trie.allowed_tokens([5], trie.blocked_nodes({1, 4})) == [8]
    assert trie.allowed_tokens([5, 7], trie.blocked_nodes({1})) == [9]
    assert trie.item_of([5, 7, 9, 1, 0, 0]) == 4 and trie.item_of([6, 1]) == 3 and trie.item_of([5, 7]) is None
    assert trie.max_len == 4 and trie.n_items == 4
    assert trie.labels(torch.tensor([3, 1])).tolist() == [[6, 1, -100, -100], [5, 7, 1, -100]]
    with pytest.raises(ValueError):
        ItemTrie([[5, 1], [5, 1]])  # two items with one token sequence
    with pytest.raises(ValueError):
        ItemTrie([[5, 7]])  # no EOS


def test_trie_logits_processor_masks_per_user_and_beam() -> None:
    trie = ItemTrie(HAND)
    proc = ItemTrieLogitsProcessor(trie, [{3}, {1, 2, 4}], num_beams=2)
    allowed = proc(torch.zeros(4, 1, dtype=torch.long), torch.zeros(4, 10)).isfinite()
    assert [torch.nonzero(r).flatten().tolist() for r in allowed] == [[5], [5], [6], [6]]
    step2 = torch.tensor([[0, 5], [0, 5], [0, 6], [0, 6]])
    allowed = proc(step2, torch.zeros(4, 10)).isfinite()
    assert [torch.nonzero(r).flatten().tolist() for r in allowed] == [[7, 8], [7, 8], [1], [1]]
    with pytest.raises(ValueError):
        ItemTrieLogitsProcessor(trie, [{1, 2, 3, 4}], num_beams=1)


def test_trie_from_tokenizer_matches_brute_force(tokenizer: Any) -> None:
    n_items = 120
    trie = ItemTrie.from_tokenizer(tokenizer, n_items)
    seqs = tokenizer([str(i) for i in range(1, n_items + 1)]).input_ids
    labels = trie.labels(torch.tensor([7, 88]))  # (2, max_len), -100 after each item's EOS
    assert [[t for t in row if t != -100] for row in labels.tolist()] == [seqs[6], seqs[87]]
    rng = np.random.default_rng(0)
    excluded = set(rng.choice(np.arange(1, n_items + 1), 60, replace=False).tolist()) | {1, 10, 11, 100}
    blocked = trie.blocked_nodes(excluded)
    kept = [s for i, s in enumerate(seqs, start=1) if i not in excluded]
    for seq in seqs:
        for cut in range(len(seq)):
            prefix = seq[:cut]
            expected = {s[cut] for s in kept if s[:cut] == prefix}
            got = set(trie.allowed_tokens(prefix, blocked))
            assert got == (expected or {0}), prefix
    assert [trie.item_of(s) for s in seqs] == list(range(1, n_items + 1))
    assert trie.parse(fixed_sequences(tokenizer, ["17", "abc", "0017", "121", " 5 "])) == [17, None, None, None, 5]
    assert parse_item_text("8668", 10000) == 8668 and parse_item_text("8668", 100) is None


# ---- direct -------------------------------------------------------------------------------------------------


def brute_force_loglik(model: StandIn, inputs: DecodeInputs, u: int, item: int, tokenizer: Any) -> float:
    """Sum of log p(target tokens) from an unbatched, unpadded forward pass of one (user, candidate)."""
    n = int(inputs.attention_mask[u].sum())
    embeds, mask = model.encoder_inputs(inputs.input_ids[u : u + 1, :n], inputs.ww_ids[u : u + 1, :n],
                                        inputs.attention_mask[u : u + 1, :n], Task.DIRECT)
    labels = torch.tensor([tokenizer(str(item)).input_ids])
    logits = model.t5(inputs_embeds=embeds, attention_mask=mask, labels=labels).logits
    return float(logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).sum())


@pytest.mark.parametrize("chunk_tokens", [7, 10**6])  # one user per decoder pass; all users of a batch in one
def test_score_mode_equals_brute_force_likelihoods(tokenizer: Any, monkeypatch: pytest.MonkeyPatch,
                                                   chunk_tokens: int) -> None:
    monkeypatch.setattr(likelihood, "CHUNK_TOKENS", chunk_tokens)
    model = StandIn(seed=1)
    trie = ItemTrie.from_tokenizer(tokenizer, 300)
    rng = np.random.default_rng(5)
    candidates = [rng.choice(np.arange(1, 301), 12, replace=False).tolist() for _ in PROMPTS]
    inputs = make_inputs(tokenizer, PROMPTS, candidates=candidates)
    result = rank_direct(model, inputs, trie, EvalSettings(batch_size=2), progress=False)["score"]
    assert (result.n_invalid, result.n_outputs) == (0, 36)
    assert result.users.tolist() == [1, 2, 3]
    with torch.no_grad():
        for u, cands in enumerate(candidates):
            expected = np.array([brute_force_loglik(model, inputs, u, c, tokenizer) for c in cands])
            order = np.argsort(-expected, kind="stable")
            assert result.items[u].tolist() == [cands[i] for i in order]
            np.testing.assert_allclose(result.scores[u], expected[order], rtol=1e-5, atol=1e-4)
    again = rank_direct(model, inputs, trie, EvalSettings(batch_size=3, max_users=2), progress=False)["score"]
    assert np.array_equal(again.items, result.items[:2]) and again.users.tolist() == [1, 2]


def test_prefix_tree_packing_equals_one_row_at_a_time(tokenizer: Any) -> None:
    """Rows sharing prefixes of depth 1 to 3, two users of different tree sizes in one pass and one at a time."""
    model = StandIn(seed=2)
    rows = {0: [[5, 7, 1], [5, 7, 9, 1], [5, 8, 1], [6, 1], [5, 7, 9, 4, 1], [5, 7, 1]], 1: [[5, 7, 1], [3, 1]]}
    flat = [(u, r) for u, user_rows in rows.items() for r in user_rows]
    labels = torch.full((len(flat), 5), -100)
    for n, (_, r) in enumerate(flat):
        labels[n, : len(r)] = torch.tensor(r)
    row_user = torch.tensor([u for u, _ in flat])
    with torch.no_grad():
        inputs = make_inputs(tokenizer, PROMPTS[:2])
        hidden, mask = likelihood.encode(model, inputs.input_ids, inputs.ww_ids, inputs.attention_mask, Task.DIRECT)
        expected = []
        for u, r in flat:
            lab = torch.tensor([r])
            logits = model.t5(encoder_outputs=(hidden[u : u + 1],), attention_mask=mask[u : u + 1], labels=lab).logits
            expected.append(float(logits.log_softmax(-1).gather(-1, lab.unsqueeze(-1)).sum()))
        for chunk_tokens in (1, 10**6):
            got = likelihood.log_likelihood(model, (hidden, mask), row_user, labels, chunk_tokens=chunk_tokens)
            np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
    tree = PrefixTree.of([[5, 7, 1], [5, 8, 1]], start_id=0)
    assert tree == ([0, 5, 7, 8], [0, 1, 2, 2], [-1, 0, 1, 1], [0, 1, 2, 0, 1, 3], [5, 7, 1, 5, 8, 1])
    assert tree.n_nodes == 4


def test_beam_mode_counts_bad_outputs_as_misses(tokenizer: Any) -> None:
    texts = ["17", "abc", "99", "9", "9", "8"]  # user 1: candidate, unparseable, non-candidate; user 2: dup
    model = FixedOutputs(fixed_sequences(tokenizer, texts))
    inputs = make_inputs(tokenizer, PROMPTS[:2], candidates=[[5, 17, 42], [8, 9]])
    settings = EvalSettings(direct_decoders=["beam"], top_n=3, direct_beams=20)
    result = rank_direct(model, inputs, ItemTrie.from_tokenizer(tokenizer, 200), settings, progress=False)["beam"]
    assert result.items.tolist() == [[17, -1, -1], [9, -1, 8]]
    assert (result.n_invalid, result.n_outputs) == (2, 6)
    assert np.isfinite(result.scores[[0, 1, 1], [0, 0, 2]]).all() and np.isnan(result.scores[0, 1:]).all()
    assert result.ranks([42, 8]).tolist() == [0, 3]
    assert model.calls[0]["num_beams"] == 20 and model.calls[0]["num_return_sequences"] == 3


# ---- sequential ---------------------------------------------------------------------------------------------


def test_rerank_drops_invalid_and_history_keeps_top_n(tokenizer: Any) -> None:
    texts = ["17", "abc", "3", "4", "5", "5", "0123", "6"]
    model = FixedOutputs(fixed_sequences(tokenizer, texts))
    inputs = make_inputs(tokenizer, PROMPTS[:2], histories=[[17], []])
    settings = EvalSettings(sequential_decoders=["rerank"], top_n=2, rerank_n=2, sequential_beams=3)
    result = rank_sequential(model, inputs, ItemTrie.from_tokenizer(tokenizer, 200), settings,
                             progress=False)["rerank"]
    assert result.items.tolist() == [[3, 4], [5, 6]]
    assert (result.n_invalid, result.n_outputs) == (2, 8)
    assert model.calls[0]["num_beams"] == 4 and model.calls[0]["num_return_sequences"] == 4  # widened to 4


def test_constrained_returns_only_unseen_catalogue_items(tokenizer: Any) -> None:
    n_items, top_n = 150, 10
    model = StandIn(seed=3)
    calls, t5_generate = [], model.t5.generate
    model.t5.generate = lambda **kwargs: calls.append(kwargs) or t5_generate(**kwargs)
    trie = ItemTrie.from_tokenizer(tokenizer, n_items)
    settings = EvalSettings(top_n=top_n, sequential_beams=30, batch_size=2)
    free = rank_sequential(model, make_inputs(tokenizer, PROMPTS, histories=[[], [], []]), trie, settings,
                           progress=False)["constrained"]
    # history = the items the unconstrained-by-history search preferred, plus random ones
    rng = np.random.default_rng(0)
    histories = [row[:6].tolist() + rng.choice(np.arange(1, n_items + 1), 20).tolist() for row in free.items]
    inputs = make_inputs(tokenizer, PROMPTS, histories=histories)
    result = rank_sequential(model, inputs, trie, settings, progress=False)["constrained"]
    assert (result.n_invalid, result.n_outputs) == (0, 3 * top_n)
    for row, scores, history in zip(result.items.tolist(), result.scores, histories):
        assert len(set(row)) == top_n and all(1 <= i <= n_items for i in row) and not set(row) & set(history)
        assert np.all(np.diff(scores) <= 1e-4)  # length_penalty 0: beams come out by summed log-likelihood
    rerun = rank_sequential(model, inputs, trie, settings, progress=False)["constrained"]
    assert np.array_equal(rerun.items, result.items) and np.array_equal(rerun.scores, result.scores)
    assert calls[-1]["length_penalty"] == 0.0 and calls[-1]["num_return_sequences"] == top_n


# ---- decoders side by side ----------------------------------------------------------------------------------


def test_models_satisfy_the_decoding_protocol() -> None:
    stand_in = StandIn()
    elmrec = ELMRec(stand_in.t5, ModelSettings(variant="no_graph", prompt_num=1), 3, 5, None, [Task.DIRECT])
    assert isinstance(stand_in, DecodingModel) and isinstance(elmrec, DecodingModel)
    assert not isinstance(stand_in.t5, DecodingModel)  # a bare T5 has no encoder_inputs


def test_generate_from_shared_encoder_states_equals_generate_from_embeddings(tokenizer: Any) -> None:
    model = StandIn(seed=5).eval()
    inputs = make_inputs(tokenizer, PROMPTS)
    kwargs = {"num_beams": 4, "num_return_sequences": 3, "do_sample": False, "max_new_tokens": 5,
              "length_penalty": 1.0}
    with torch.no_grad():
        states = likelihood.encode(model, inputs.input_ids, inputs.ww_ids, inputs.attention_mask, Task.DIRECT)
        shared = likelihood.generate(model, states, 4, 3, 5, 1.0)
        embeds, mask = model.encoder_inputs(inputs.input_ids, inputs.ww_ids, inputs.attention_mask, Task.DIRECT)
        own = model.t5.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        again = likelihood.generate(model, states, 4, 3, 5, 1.0)  # the states are not consumed by a first call
    assert torch.equal(shared, own) and torch.equal(again, own) and shared.shape[0] == 9


BOTH_DECODERS = {"direct": ["score", "beam"], "sequential": ["constrained", "rerank"]}


def task_inputs(tokenizer: Any, task: str, seed: int) -> tuple[Any, DecodeInputs]:
    """(rank function, inputs) of the three PROMPTS for one task: 10 random candidates of items 1..150 each
    (direct), or short histories (sequential)."""
    if task == "direct":
        rng = np.random.default_rng(seed)
        return rank_direct, make_inputs(tokenizer, PROMPTS, candidates=[
            rng.choice(np.arange(1, 151), 10, replace=False).tolist() for _ in PROMPTS])
    return rank_sequential, make_inputs(tokenizer, PROMPTS, histories=[[1, 2], [], [7]])


@pytest.mark.parametrize("task, decoders", list(BOTH_DECODERS.items()))
def test_decoders_side_by_side_share_one_encoder_pass(tokenizer: Any, task: str, decoders: list[str]) -> None:
    """Both decoders of a task in one call: one encoder pass per batch (beam rescoring included), and each
    decoder's result equals the one it gives alone."""
    model = StandIn(seed=4)
    trie = ItemTrie.from_tokenizer(tokenizer, 150)
    rank, inputs = task_inputs(tokenizer, task, seed=1)
    settings = EvalSettings(**{f"{task}_decoders": decoders, f"{task}_beams": 6}, top_n=4, rerank_n=2, batch_size=2)
    both = rank(model, inputs, trie, settings, progress=False)
    assert list(both) == decoders
    assert model.encoded == [2, 1]  # 3 users in batches of 2: one encoder pass each, for both decoders
    for decoder in decoders:
        model.encoded.clear()
        alone = rank(model, inputs, trie, settings, decoders=[decoder], progress=False)[decoder]
        assert model.encoded == [2, 1]
        assert np.array_equal(alone.items, both[decoder].items) and alone.users.tolist() == [1, 2, 3]
        np.testing.assert_array_equal(alone.scores, both[decoder].scores)
        assert (alone.n_invalid, alone.n_outputs) == (both[decoder].n_invalid, both[decoder].n_outputs)
    with pytest.raises(ValueError, match="decoders must be among"):
        rank(model, inputs, trie, settings, decoders=["rerank" if task == "direct" else "beam"], progress=False)


@pytest.mark.parametrize("task", ["direct", "sequential"])
def test_eval_precision_bf16_decodes_under_autocast_and_fp32_without(tokenizer: Any, task: str) -> None:
    """eval.precision: every decoder pass (encoder, scoring, beam steps) runs its products in bf16 under bf16 and in
    fp32 by default; bf16's log-likelihoods stay within its rounding of fp32's."""
    model = StandIn(seed=6)
    trie = ItemTrie.from_tokenizer(tokenizer, 150)
    rank, inputs = task_inputs(tokenizer, task, seed=2)
    decoders = {f"{task}_decoders": BOTH_DECODERS[task], f"{task}_beams": 6}
    seen: list[torch.dtype] = []
    model.t5.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    results = {}
    for precision in ("fp32", "bf16"):
        seen.clear()
        settings = EvalSettings(top_n=4, rerank_n=2, batch_size=2, precision=precision, **decoders)
        results[precision] = rank(model, inputs, trie, settings, progress=False)
        assert set(seen) == {torch.float32 if precision == "fp32" else torch.bfloat16}
    assert EvalSettings().precision == "fp32"
    for decoder, fp32 in results["fp32"].items():
        bf16 = results["bf16"][decoder]
        assert bf16.users.tolist() == [1, 2, 3] and bf16.items.shape == fp32.items.shape
        if decoder == "score":  # the same candidates, each scored within bf16's rounding of its fp32 score
            for u in range(3):
                assert sorted(bf16.items[u].tolist()) == sorted(fp32.items[u].tolist())
                by_item = dict(zip(fp32.items[u].tolist(), fp32.scores[u]))
                np.testing.assert_allclose(bf16.scores[u], [by_item[i] for i in bf16.items[u].tolist()],
                                           rtol=0.02, atol=0.05)
