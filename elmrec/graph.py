"""The user–item bipartite graph and LightGCN propagation.

Nodes: 0 = padding (isolated), users 1..U, items U+1..U+I. By default the graph holds training
interactions only; `edges="all"` adds validation and test edges, which leaks evaluation data.

    A      symmetric 0/1 adjacency, (N, N) with N = U + I + 1
    Â      = D^-1/2 A D^-1/2  (isolated nodes keep all-zero rows)
    E_0    = features;  E_{l+1} = Â E_l;  result = mean(E_0, ..., E_L)

The graph stage also records a leak probe: HR@5 of untrained, propagated random features on the stored
validation and test candidates. At chance (~.05) the graph carries no held-out edge; far above it, it does.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal, TypeVar

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from elmrec.data import schemas
from elmrec.paths import DataPaths, GraphPaths, atomic_dir

log = logging.getLogger(__name__)

Features = TypeVar("Features", np.ndarray, torch.Tensor)
PROBE_K = 5  # leak_probe's HR@k; chance = k / 100 candidates
PROBE_ALARM = 0.15  # three times chance on a training-only graph: worth a warning


def bipartite_adjacency(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """Symmetric 0/1 adjacency over nodes 0..U+I from (user, item) pairs; repeated pairs count once."""
    n_nodes = n_users + n_items + 1
    rows = np.concatenate([users, n_users + items]).astype(np.int64)
    cols = np.concatenate([n_users + items, users]).astype(np.int64)
    adjacency = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=(n_nodes, n_nodes))
    adjacency.sum_duplicates()
    adjacency.data[:] = 1.0
    return adjacency


def normalize(adjacency: sp.spmatrix) -> sp.csr_matrix:
    """Â = D^-1/2 A D^-1/2; rows and columns of isolated nodes stay zero (no division by zero)."""
    adjacency = sp.csr_matrix(adjacency, dtype=np.float32)
    degree = np.asarray(adjacency.sum(axis=1), dtype=np.float64).ravel()
    inv_sqrt = np.zeros_like(degree)
    np.power(degree, -0.5, out=inv_sqrt, where=degree > 0)
    scale = sp.diags(inv_sqrt.astype(np.float32))
    return sp.csr_matrix(scale @ adjacency @ scale, dtype=np.float32)


def to_torch_sparse(matrix: sp.spmatrix) -> torch.Tensor:
    """A scipy sparse matrix as a coalesced torch sparse COO tensor (float32)."""
    coo = sp.coo_matrix(sp.csr_matrix(matrix, dtype=np.float32))  # CSR order = row-major = coalesced order
    indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(indices, torch.from_numpy(coo.data), size=coo.shape,
                                   is_coalesced=True, check_invariants=False)


def propagate(adjacency: sp.spmatrix | torch.Tensor, features: Features, n_layers: int) -> Features:
    """LightGCN: mean of E_0..E_L with E_{l+1} = Â E_l. NumPy features take a scipy Â, torch a torch sparse Â."""
    if n_layers < 0:
        raise ValueError(f"n_layers must be >= 0, got {n_layers}")
    total, layer = features, features
    for _ in range(n_layers):
        layer = adjacency @ layer  # (N, d); torch: sparse @ dense keeps the autograd graph to `features`
        total = total + layer
    return total / (n_layers + 1)


def leak_probe(normalized: sp.spmatrix, candidates: pl.DataFrame, n_users: int, k: int = PROBE_K,
               dim: int = 64, n_layers: int = 4, seed: int = 0, chunk: int = 4096) -> dict[str, float]:
    """Per split: HR@k of untrained LightGCN features over the stored candidates; about k/100 if leak-free.

    Random N(0, 1) node features are propagated over Â and each candidate is scored by dot(user, item). With
    training edges only nothing points at the held-out item and HR@5 stays at chance (~.05); a graph holding
    the held-out edges hands it over (HR@5 .44 on Beauty's test split). `candidates`: (user, split, target,
    candidates) rows; ties count against the target.
    """
    features = np.random.default_rng(seed).standard_normal((normalized.shape[0], dim)).astype(np.float32)
    nodes = propagate(sp.csr_matrix(normalized), features, n_layers)  # (N, dim)
    probes = {}
    for (split,), rows in candidates.group_by("split", maintain_order=True):
        users, targets = rows["user"].to_numpy(), rows["target"].to_numpy()
        lists = np.stack(rows["candidates"].to_list()).astype(np.int64)  # (M, C)
        hits = 0
        for begin in range(0, len(users), chunk):  # (chunk, C, dim) at a time
            part = slice(begin, begin + chunk)
            scores = np.einsum("bd,bcd->bc", nodes[users[part]], nodes[n_users + lists[part]])  # (b, C)
            target = scores[np.arange(len(scores)), (lists[part] == targets[part, None]).argmax(1)]
            hits += int(((scores >= target[:, None]).sum(1) <= k).sum())  # rank (1-based, ties first) <= k
        probes[str(split)] = hits / len(users)
    return probes


def build_graph(data: DataPaths, out: GraphPaths, edges: Literal["train", "all"] = "train") -> dict[str, Any]:
    """Graph stage: read the split interactions, write the normalised adjacency (.npz) and stats.json."""
    for path in (data.interactions, data.stats):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; run the preprocess stage first (elmrec task preprocess)")
    data_stats = json.loads(data.stats.read_text())
    n_users, n_items = int(data_stats["n_users"]), int(data_stats["n_items"])
    interactions = schemas.read(data.interactions, schemas.INTERACTIONS)
    if edges == "train":
        interactions = interactions.filter(pl.col("split") == "train")
    else:
        log.warning("graph_edges=all: the graph holds validation and test interactions, "
                    "which leaks evaluation data into training; metrics are not comparable")
    adjacency = bipartite_adjacency(interactions["user"].to_numpy(), interactions["item"].to_numpy(), n_users, n_items)
    normalized = normalize(adjacency)
    stats = {"n_nodes": adjacency.shape[0], "n_edges": int(adjacency.nnz // 2), "edges": edges,
             "n_users": n_users, "n_items": n_items,
             "n_isolated": int((np.diff(adjacency.indptr) == 0).sum())}
    probes = {}
    if data.candidates.is_file():
        probes = leak_probe(normalized, schemas.read(data.candidates, schemas.CANDIDATES), n_users)
        for split, probe in probes.items():
            stats[f"leak_probe_{split}_hr_at_{PROBE_K}"] = probe
            if edges == "train" and probe > PROBE_ALARM:
                log.warning("untrained graph features find the %s item in the top %d for %.1f%% of users (chance "
                            "about %d%%): the training interactions may repeat held-out items", split, PROBE_K,
                            100 * probe, PROBE_K)
    with atomic_dir(out.root) as tmp:
        staged = GraphPaths(tmp)
        sp.save_npz(staged.adjacency, normalized, compressed=False)
        staged.stats.write_text(json.dumps(stats, indent=2) + "\n")
    log.info("graph (%s edges): %d nodes, %d edges; leak probe HR@%d (chance %.2f): %s", edges, stats["n_nodes"],
             stats["n_edges"], PROBE_K, PROBE_K / 100,
             ", ".join(f"{split} {probe:.3f}" for split, probe in probes.items()) or "no candidates")
    return stats


def load_adjacency(paths: GraphPaths) -> sp.csr_matrix:
    if not paths.adjacency.is_file():
        raise FileNotFoundError(f"{paths.adjacency} is missing; run the graph stage first (elmrec task graph)")
    return sp.csr_matrix(sp.load_npz(paths.adjacency))
