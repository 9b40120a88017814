"""SASRec (elmrec.sasrec): causal and padding-invariant states, the two losses by hand, and a deterministic
cycle of items that it must learn exactly through the whole harness (train_classic + evaluate_classic)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from elmrec.classic import evaluate_classic, train_classic
from elmrec.config import SASRecSettings, settings_for
from elmrec.sasrec import SASRec
from tests.test_classic import classic_settings, prepare

pytestmark = pytest.mark.usefixtures("one_thread")

N_ITEMS = 12


def model(**values) -> SASRec:
    torch.manual_seed(0)
    return SASRec(N_ITEMS, SASRecSettings(dim=8, n_blocks=2, n_heads=2, max_len=6, **values)).eval()


def test_states_are_causal_and_ignore_left_padding() -> None:
    sasrec = model()
    states = sasrec.hidden(torch.tensor([[0, 3, 5, 7, 2, 9]]))  # (1, 6, d)
    changed = sasrec.hidden(torch.tensor([[0, 3, 5, 7, 11, 4]]))  # the last two items differ
    assert torch.equal(states[:, :4], changed[:, :4])  # a state never sees later items
    assert not torch.allclose(states[:, 4:], changed[:, 4:])
    trimmed = sasrec.hidden(torch.tensor([[3, 5, 7, 2, 9]]))  # the same sequence, one padding column less
    assert torch.allclose(trimmed, states[:, 1:], atol=1e-6)
    batch = sasrec.hidden(torch.tensor([[0, 3, 5, 7, 2, 9], [0, 0, 0, 0, 0, 1]]))  # padding rows do not leak
    assert torch.allclose(batch[:1], states, atol=1e-6)


def test_scores_share_the_item_embeddings() -> None:
    sasrec = model()
    inputs = {"sequence": torch.tensor([[0, 0, 1, 2], [4, 5, 6, 7]])}
    state = sasrec.hidden(inputs["sequence"])[:, -1]  # (2, d)
    expected = state @ sasrec.items.weight.T  # (2, I + 1)
    scores = sasrec.score_all(inputs)
    assert torch.equal(scores[:, 1:], expected[:, 1:]) and torch.isneginf(scores[:, 0]).all()
    candidates = torch.tensor([[3, 1, 12], [2, 2, 9]])
    assert torch.allclose(sasrec.score_candidates(inputs, candidates), expected.gather(1, candidates), atol=1e-6)


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_losses_by_hand(loss: str) -> None:
    sasrec = model(loss=loss, dropout=0.0)
    batch = {"sequence": torch.tensor([[0, 1, 2], [3, 4, 5]]), "target": torch.tensor([[0, 2, 3], [4, 5, 6]]),
             "negative": torch.tensor([[7, 8, 9], [10, 11, 12]])}
    states = sasrec.hidden(batch["sequence"])  # (2, 3, d)
    keep = batch["target"] > 0  # 5 positions
    logits = states[keep] @ sasrec.items.weight.T  # (5, I + 1)
    target, negative = batch["target"][keep], batch["negative"][keep]
    if loss == "ce":  # softmax over items 1..I only: padding is never a class
        expected = F.cross_entropy(logits[:, 1:], target - 1)
    else:
        positive = logits.gather(1, target[:, None]).squeeze(1)
        negative_logit = logits.gather(1, negative[:, None]).squeeze(1)
        expected = -(torch.log(torch.sigmoid(positive)) + torch.log(1 - torch.sigmoid(negative_logit))).mean()
    assert sasrec.batch_loss(batch).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_learns_a_deterministic_cycle_to_hr_at_1(tmp_path: Path, loss: str) -> None:
    # Items 1..30 in a fixed cycle; user u bought 8 consecutive items starting at item u. Every transition is in
    # some user's training part, and the next item is a function of the last one: HR@1 must be exactly 1.
    cycle = 30
    histories = {u: [(u - 1 + k) % cycle + 1 for k in range(8)] for u in range(1, cycle + 1)}
    settings = classic_settings(tmp_path / "work", tmp_path / "raw", "sasrec", loss=loss, dim=32, n_blocks=1,
                                dropout=0.0, max_len=8, lr=1e-2, batch_size=10, max_epochs=40, patience=40)
    paths = prepare(settings, histories)
    result = train_classic(settings, paths)
    metrics = evaluate_classic(settings, paths)
    assert metrics["sequential"]["score"]["hr@1"] == 1.0, [r.valid_ndcg for r in result.history]
    assert metrics["direct"]["score"]["hr@1"] == 1.0
    assert metrics["sequential"]["score"]["n_users"] == cycle


def test_heads_must_divide_the_hidden_size() -> None:
    with pytest.raises(ValidationError, match=r"sasrec.dim \(64\) must be a multiple of sasrec.n_heads \(3\)"):
        settings_for("paper", {"sasrec": {"n_heads": 3}})
