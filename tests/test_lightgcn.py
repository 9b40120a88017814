"""LightGCN (elmrec.lightgcn): the propagation is elmrec.propagation's, BPR by hand, and two disjoint communities
that it must separate completely through the whole harness (train_classic + evaluate_classic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from elmrec.classic import evaluate_classic, load_classic, train_classic
from elmrec.config import LightGCNSettings
from elmrec.lightgcn import LightGCN
from elmrec.propagation import bipartite_adjacency, normalize, propagate
from tests.test_classic import classic_settings, prepare

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(reg: float = 0.0) -> tuple[LightGCN, sp.csr_matrix]:
    """3 users, 4 items: user 1 - items 1, 2; user 2 - items 2, 3; user 3 - item 4."""
    adjacency = normalize(bipartite_adjacency(np.array([1, 1, 2, 2, 3]), np.array([1, 2, 2, 3, 4]), 3, 4))
    torch.manual_seed(0)
    return LightGCN(3, 4, adjacency, LightGCNSettings(dim=4, n_layers=2, reg=reg)), adjacency


def test_scores_are_dot_products_of_the_propagated_table() -> None:
    model, adjacency = tiny_model()
    nodes = propagate(adjacency, model.nodes.weight.detach().numpy(), 2)  # (8, 4) with scipy: the graph stage's maths
    users = torch.tensor([1, 3])
    scores = model.score_all({"user": users}).detach().numpy()  # (2, 5)
    expected = nodes[[1, 3]] @ nodes[3 + np.arange(1, 5)].T  # items 1..4 are nodes 4..7
    assert np.allclose(scores[:, 1:], expected, atol=1e-6) and np.isneginf(scores[:, 0]).all()
    candidates = torch.tensor([[4, 1], [2, 2]])
    assert np.allclose(model.score_candidates({"user": users}, candidates).detach().numpy(),
                       np.take_along_axis(expected, candidates.numpy() - 1, axis=1), atol=1e-6)


def test_bpr_loss_by_hand() -> None:
    model, _ = tiny_model(reg=0.5)
    batch = {"user": torch.tensor([1, 2]), "positive": torch.tensor([2, 3]), "negative": torch.tensor([4, 1])}
    nodes = model.propagated()
    u, p, n = nodes[[1, 2]], nodes[[3 + 2, 3 + 3]], nodes[[3 + 4, 3 + 1]]
    bpr = -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
    ego = model.nodes.weight[[1, 2, 5, 6, 7, 4]]  # users 1, 2, positives 2, 3, negatives 4, 1 at layer 0
    expected = bpr + 0.5 * ego.square().sum() / 2 / 2
    assert model.batch_loss(batch).item() == pytest.approx(expected.item(), rel=1e-6)
    assert F.softplus(torch.tensor(0.0)).item() == pytest.approx(np.log(2))  # BPR's softplus(-x) = -log sigmoid(x)


def test_separates_two_disjoint_communities(tmp_path: Path) -> None:
    # Users 1-8 buy items 1-6, users 9-16 items 7-12, each all six in a seeded order (4 training edges each).
    # Every item of a user's community must outscore every item of the other.
    rng = np.random.default_rng(0)
    histories = {u: (rng.permutation(6) + 1 + (0 if u <= 8 else 6)).tolist() for u in range(1, 17)}
    settings = classic_settings(tmp_path / "work", tmp_path / "raw", "lightgcn", n_negatives=6, dim=8, n_layers=2,
                                lr=5e-2, batch_size=8, max_epochs=30, patience=30)
    paths = prepare(settings, histories)
    train_classic(settings, paths)
    model = load_classic(settings, paths)
    with torch.no_grad():
        scores = model.score_all({"user": torch.arange(1, 17)})[:, 1:]  # (16, 12)
    own = torch.zeros(16, 12, dtype=torch.bool)
    own[:8, :6] = own[8:, 6:] = True
    for user in range(16):
        assert scores[user][own[user]].min() > scores[user][~own[user]].max(), user + 1
    metrics = evaluate_classic(settings, paths)
    # direct: the 6 negatives are the other community's items; sequential: the 5 items before the test item are
    # excluded, so the test item is the one community item left. Either way it ranks first for every user.
    assert metrics["direct"]["score"]["hr@1"] == metrics["sequential"]["score"]["hr@1"] == 1.0
