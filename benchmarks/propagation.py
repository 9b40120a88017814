"""LightGCN's propagation, forward + backward: torch's COO product (the code before) against elmrec's symmetric CSR
product (`elmrec.propagation`), taking turns on the same table.

    python benchmarks/propagation.py [--adjacency WORK/beauty/.../graph-train/adjacency.npz] [--dim 512] [--layers 4]
    python benchmarks/propagation.py --users 200 --items 100 --rounds 2   # a random graph (no data needed)

Without --adjacency, a random bipartite graph of --users x --items with --per-user items each. The graph stage
writes the normalised Â to `graph-<edges>/adjacency.npz` under a run's data folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elmrec.propagation import bipartite_adjacency, normalize, propagate, to_torch_sparse


def coo_propagate(adjacency: torch.Tensor, features: torch.Tensor, n_layers: int) -> torch.Tensor:
    """The propagation as it was: torch's sparse COO @ dense, with torch's own backward (it transposes Â)."""
    total, layer = features, features
    for _ in range(n_layers):
        layer = adjacency @ layer
        total = total + layer
    return total / (n_layers + 1)


def random_graph(n_users: int, n_items: int, per_user: int, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(1, n_users + 1), per_user)
    items = rng.integers(1, n_items + 1, users.size)
    return normalize(bipartite_adjacency(users, items, n_users, n_items))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adjacency", type=Path, help="a graph stage's adjacency.npz (the normalised Â)")
    parser.add_argument("--users", type=int, default=22363)
    parser.add_argument("--items", type=int, default=12101)
    parser.add_argument("--per-user", type=int, default=7)
    parser.add_argument("--dim", type=int, default=512, help="t5-small's d_model (the LightGCN baseline: 64)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    matrix = (sp.csr_matrix(sp.load_npz(args.adjacency)) if args.adjacency
              else random_graph(args.users, args.items, args.per_user))
    csr = to_torch_sparse(matrix)
    coo = csr.to_sparse_coo().coalesce()
    table = torch.randn(matrix.shape[0], args.dim, generator=torch.Generator().manual_seed(0)).requires_grad_()
    upstream = torch.randn(matrix.shape[0], args.dim, generator=torch.Generator().manual_seed(1))
    ways = {"coo": lambda: coo_propagate(coo, table, args.layers), "csr": lambda: propagate(csr, table, args.layers)}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    grads = {}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, way in ways.items():
            start = time.perf_counter()
            way().backward(upstream)
            if round_:
                seconds[name].append(time.perf_counter() - start)
            grads[name], table.grad = table.grad, None
    coo_s, csr_s = (statistics.median(seconds[name]) for name in ways)
    gap = (grads["coo"] - grads["csr"]).abs().max().item()
    print(f"{matrix.shape[0]} nodes, {matrix.nnz} entries, d {args.dim}, {args.layers} layers; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    print(f"coo {1e3 * coo_s:.0f} ms, csr {1e3 * csr_s:.0f} ms (medians of {args.rounds}, forward + backward): "
          f"csr is {coo_s / csr_s:.2f}x faster; largest gradient difference {gap:.1e}")


if __name__ == "__main__":
    main()
