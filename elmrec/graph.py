"""The graph stage: the normalised user–item adjacency Â of the split interactions (maths: elmrec.propagation).

Nodes: 0 = padding (isolated), users 1..U, items U+1..U+I. By default the graph holds training
interactions only; `edges="all"` adds validation and test edges, which leaks evaluation data.

The graph stage also records a leak probe: HR@5 of untrained, propagated random features on the stored
validation and test candidates. At chance (~.05) the graph carries no held-out edge; far above it, it does.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

import numpy as np
import polars as pl
import scipy.sparse as sp

from elmrec.data import schemas
from elmrec.paths import DataPaths, GraphPaths, atomic_dir
from elmrec.propagation import bipartite_adjacency, normalize, propagate

log = logging.getLogger(__name__)

PROBE_K = 5  # leak_probe's HR@k; chance = k / 100 candidates
PROBE_ALARM = 0.15  # three times chance on a training-only graph: worth a warning


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
