"""LightGCN's maths: the user–item bipartite adjacency, its normalisation and the propagation.

Pure functions of NumPy/SciPy/torch arrays (no files, no Polars), shared by the graph stage (elmrec.graph),
ELMRec's whole-word table (elmrec.model) and the LightGCN baseline.

Nodes: 0 = padding (isolated), users 1..U, items U+1..U+I.

    A      symmetric 0/1 adjacency, (N, N) with N = U + I + 1
    Â      = D^-1/2 A D^-1/2  (isolated nodes keep all-zero rows)
    E_0    = features;  E_{l+1} = Â E_l;  result = mean(E_0, ..., E_L)
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import scipy.sparse as sp
import torch

Features = TypeVar("Features", np.ndarray, torch.Tensor)


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
