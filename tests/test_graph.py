import json
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
import torch

from elmrec.config import DataSettings
from elmrec.data.preprocess import preprocess
from elmrec.graph import build_graph, leak_probe, load_adjacency
from elmrec.paths import DataPaths, GraphPaths
from elmrec.propagation import bipartite_adjacency, normalize, propagate, to_torch_sparse
from tests.conftest import write_p5

# 2 users, 3 items: user 1 - items 1, 2; user 2 - item 2. Item 3 is isolated. Nodes: 0 pad, 1-2 users, 3-5 items.
USERS, ITEMS = np.array([1, 1, 2, 1]), np.array([1, 2, 2, 1])  # the repeated (1, 1) pair counts once


def test_adjacency_is_symmetric_binary_bipartite() -> None:
    dense = bipartite_adjacency(USERS, ITEMS, n_users=2, n_items=3).toarray()
    expected = np.zeros((6, 6), dtype=np.float32)
    for u, i in [(1, 1), (1, 2), (2, 2)]:
        expected[u, 2 + i] = expected[2 + i, u] = 1
    np.testing.assert_array_equal(dense, expected)


def test_normalization_matches_dense_reference_and_keeps_isolated_nodes_zero() -> None:
    adjacency = bipartite_adjacency(USERS, ITEMS, n_users=2, n_items=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero warnings for the isolated nodes 0 and 5
        normalized = normalize(adjacency).toarray()
    dense = adjacency.toarray().astype(np.float64)
    degree = dense.sum(axis=1)
    reference = np.zeros_like(dense)
    nz = degree > 0
    reference[np.ix_(nz, nz)] = dense[np.ix_(nz, nz)] / np.sqrt(np.outer(degree[nz], degree[nz]))
    np.testing.assert_allclose(normalized, reference, rtol=1e-6)
    assert normalized[1, 4] == pytest.approx(1 / np.sqrt(2 * 2))  # user 1 (deg 2) - item 2 (deg 2)
    assert not normalized[0].any() and not normalized[5].any()


def test_propagation_against_hand_computation_numpy_and_torch() -> None:
    # path graph user1 - item1: Â = [[0,1],[1,0]] on nodes (1, 3); features e1=[1,0], e3=[0,2]
    normalized = normalize(bipartite_adjacency(np.array([1]), np.array([1]), n_users=1, n_items=1))  # nodes 0,1,2
    features = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    # L=2: E0 = f; E1 = swap(f); E2 = f -> mean = (2f + swap(f)) / 3
    expected = np.array([[0, 0], [2 / 3, 2 / 3], [1 / 3, 4 / 3]], dtype=np.float32)
    np.testing.assert_allclose(propagate(normalized, features, 2), expected, rtol=1e-6)
    torch_result = propagate(to_torch_sparse(normalized), torch.from_numpy(features), 2)
    np.testing.assert_allclose(torch_result.numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(propagate(normalized, features, 0), features)


def test_torch_propagation_is_differentiable() -> None:
    normalized = to_torch_sparse(normalize(bipartite_adjacency(USERS, ITEMS, 2, 3)))
    table = torch.randn(6, 4, requires_grad=True)
    propagate(normalized, table, 3)[1].sum().backward()  # user 1 only
    grads = table.grad.abs().sum(dim=1)
    assert grads[[1, 2, 3, 4]].gt(0).all() and grads[[0, 5]].eq(0).all()  # reached its component, not beyond


def test_torch_propagation_gradient_equals_the_dense_one() -> None:
    # The backward multiplies by Â itself (Â is symmetric): it must equal autograd through a dense Â.
    normalized = normalize(bipartite_adjacency(USERS, ITEMS, 2, 3))
    features = torch.randn(6, 4, dtype=torch.float64)
    weights = torch.randn(6, 4, dtype=torch.float64)  # a loss that weighs every output differently
    sparse_table = features.clone().requires_grad_(True)
    (propagate(to_torch_sparse(normalized), sparse_table.float(), 3) * weights.float()).sum().backward()
    dense, dense_table = torch.from_numpy(normalized.toarray()).double(), features.clone().requires_grad_(True)
    layers = [dense_table]
    for _ in range(3):
        layers.append(dense @ layers[-1])  # autograd's own backward: dense.T @ grad
    (torch.stack(layers).mean(0) * weights).sum().backward()
    np.testing.assert_allclose(sparse_table.grad.numpy(), dense_table.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_to_torch_sparse_refuses_an_asymmetric_matrix() -> None:
    asymmetric = sp.csr_matrix(np.array([[0.0, 1.0], [0.5, 0.0]], dtype=np.float32))
    with pytest.raises(ValueError, match="symmetric"):
        to_torch_sparse(asymmetric)
    assert to_torch_sparse(asymmetric + asymmetric.T).layout is torch.sparse_csr


def _preprocessed(tmp_path: Path, tiny_histories) -> DataPaths:
    raw = write_p5(tmp_path / "raw", tiny_histories, n_items=120)
    data = DataPaths(tmp_path / "data")
    preprocess(DataSettings(dataset="tiny", source="local"), 1, raw, data)
    return data


def test_graph_stage_holds_training_edges_only_by_default(tmp_path: Path, tiny_histories) -> None:
    data = _preprocessed(tmp_path, tiny_histories)
    stats = build_graph(data, GraphPaths(tmp_path / "graph"), "train")
    assert stats["n_nodes"] == 4 + 120 + 1 and stats["n_edges"] == 10
    adjacency = load_adjacency(GraphPaths(tmp_path / "graph"))
    user4_items = adjacency[4].indices - 4  # user 4's history 5, 7, 8: only item 5 is a training edge
    assert user4_items.tolist() == [5]
    assert json.loads((tmp_path / "graph" / "stats.json").read_text())["n_edges"] == 10


def test_all_edges_leak_is_loud(tmp_path: Path, tiny_histories, caplog: pytest.LogCaptureFixture) -> None:
    data = _preprocessed(tmp_path, tiny_histories)
    stats = build_graph(data, GraphPaths(tmp_path / "graph-all"), "all")
    assert stats["n_edges"] == 18  # every interaction of the 4 users, validation and test included
    assert "leaks evaluation data" in caplog.text


def test_graph_needs_preprocess_first(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run the preprocess stage first"):
        build_graph(DataPaths(tmp_path / "nothing"), GraphPaths(tmp_path / "g"))


def probe_candidates(n_users: int, n_items: int) -> pl.DataFrame:
    """User u's target is item u; its candidates are the target then 99 items no user touches."""
    negatives = list(range(n_users + 1, n_users + 100))
    return pl.DataFrame({"user": range(1, n_users + 1), "split": "test", "target": range(1, n_users + 1),
                         "candidates": [[u, *negatives] for u in range(1, n_users + 1)]})


def test_leak_probe_finds_held_out_edges_and_only_those() -> None:
    n_users, n_items = 2000, 2099
    users = np.arange(1, n_users + 1)
    leaky = normalize(bipartite_adjacency(users, users, n_users, n_items))  # every user linked to its target
    clean = normalize(bipartite_adjacency(users[:0], users[:0], n_users, n_items))  # no edge at all
    candidates = probe_candidates(n_users, n_items)
    assert leak_probe(leaky, candidates, n_users) == {"test": 1.0}  # the target wins for every user
    chance = leak_probe(clean, candidates, n_users)["test"]
    assert 0.03 < chance < 0.07  # 5 / 100, up to sampling noise over 2000 users
    assert leak_probe(clean, candidates.head(0), n_users) == {}


def test_graph_stage_records_the_leak_probe_at_chance_on_real_data(tmp_path: Path, real_mirror: Path) -> None:
    """Beauty through the mirror: the training graph gives random features nothing (DESIGN.md §2: HR@5 ~ .05);
    a graph with every edge hands them the held-out item."""
    from elmrec.config import settings_for
    from elmrec.data.download import download
    from elmrec.paths import WorkPaths

    settings = settings_for("paper", {"workdir": str(tmp_path), "data": {"mirror": str(real_mirror)}})
    paths = WorkPaths.from_settings(settings)
    download(settings.data, paths.raw, settings.resolved_mirror())
    preprocess(settings.data, settings.seed, paths.raw, paths.data)
    train = build_graph(paths.data, GraphPaths(tmp_path / "train"), "train")
    leaky = build_graph(paths.data, GraphPaths(tmp_path / "all"), "all")
    for split in ("valid", "test"):
        assert 0.04 < train[f"leak_probe_{split}_hr_at_5"] < 0.06, train
        assert leaky[f"leak_probe_{split}_hr_at_5"] > 0.3, leaky  # .43 valid, .44 test (DESIGN.md: ~.44)
