"""Wall time and peak memory of each data stage, on Beauty and on a synthetic raw review file.

    python benchmarks/data_stages.py [--mirror ../shared/data] [--reviews 1000000]

Each stage runs in a fresh process, so its peak resident memory (ru_maxrss) is its own; "base" is the
same process's resident memory after imports, before the stage. Goals on a 2-core machine: Beauty
preprocess < 2 s, graph build + normalisation < 1 s, 4-layer propagation of 512-dim features < 1 s,
1M raw reviews to 5-core Parquet < 15 s.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elmrec.config import settings_for
from elmrec.data.download import download
from elmrec.data.preprocess import preprocess
from elmrec.graph import build_graph, load_adjacency
from elmrec.paths import WorkPaths
from elmrec.propagation import bipartite_adjacency, normalize, propagate, to_torch_sparse


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str, stage: str, args: argparse.Namespace) -> None:
    """Run one stage in a fresh interpreter (fork is unsafe with Polars' thread pool) and print its figures."""
    command = [sys.executable, __file__, "--stage", stage, "--work", str(args.work), "--mirror", args.mirror,
               "--reviews", str(args.reviews)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr}")
    seconds, base, peak, note = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{name:<52} {seconds:8.3f} s   peak {peak:7.0f} MiB (base {base:5.0f})   {note}", flush=True)


def synthetic_reviews(path: Path, n_reviews: int, seed: int = 0) -> None:
    """A raw review file with Zipf-like users and items, so that 5-core filtering keeps a realistic share."""
    rng = np.random.default_rng(seed)
    users = (rng.zipf(1.6, n_reviews) + rng.integers(0, 150_000, n_reviews)) % 150_000
    items = (rng.zipf(1.5, n_reviews) + rng.integers(0, 60_000, n_reviews)) % 60_000
    frame = pl.DataFrame({
        "reviewerID": pl.Series(users).cast(pl.String).str.pad_start(10, "A"),
        "asin": pl.Series(items).cast(pl.String).str.pad_start(10, "B"),
        "unixReviewTime": rng.integers(1_300_000_000, 1_400_000_000, n_reviews),
        "overall": rng.integers(1, 6, n_reviews).astype(np.float64),
        "summary": "Great product",
    })  # fmt: skip
    path.write_bytes(gzip.compress(frame.write_ndjson().encode(), compresslevel=1))


def settings(args: argparse.Namespace, raw: bool = False):
    if raw:
        return settings_for("paper", {"workdir": str(args.work), "data": {
            "dataset": "synthetic", "source": "amazon2014", "category": "Beauty"}})
    return settings_for("paper", {"workdir": str(args.work), "data": {"mirror": str(Path(args.mirror).resolve())}})


def run_stage(stage: str, args: argparse.Namespace) -> str:
    """The measured work of one stage; returns a note on what it did."""
    beauty = settings(args)
    paths = WorkPaths.from_settings(beauty)
    if stage == "download":
        return f"{len(download(beauty.data, paths.raw, beauty.resolved_mirror()))} files"
    if stage == "preprocess":
        stats = preprocess(beauty.data, beauty.seed, paths.raw, paths.data)
        return "{n_users} users, {n_items} items, {n_interactions} interactions".format(**stats)
    if stage == "graph":
        return "{n_nodes} nodes, {n_edges} edges".format(**build_graph(paths.data, paths.graph))
    if stage == "build":
        train = pl.read_parquet(paths.data.interactions).filter(pl.col("split") == "train")
        normalized = normalize(bipartite_adjacency(train["user"].to_numpy(), train["item"].to_numpy(), 22363, 12101))
        return f"nnz {normalized.nnz} (includes reading the parquet)"
    if stage in ("scipy", "torch"):
        adjacency = load_adjacency(paths.graph)
        features = np.random.default_rng(0).standard_normal((adjacency.shape[0], 512), dtype=np.float32)
        if stage == "torch":
            import torch

            adjacency, features = to_torch_sparse(adjacency), torch.from_numpy(features)
        start = time.perf_counter()
        propagate(adjacency, features, 4)
        return f"4 layers x 512 dims: {time.perf_counter() - start:.3f} s without loading"
    raw = settings(args, raw=True)
    raw_paths = WorkPaths.from_settings(raw)
    stats = preprocess(raw.data, raw.seed, raw_paths.raw, raw_paths.data)
    return "{n_users} users, {n_items} items, {n_interactions} interactions after 5-core".format(**stats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", default=os.environ.get("ELMREC_MIRROR", "../shared/data"))
    parser.add_argument("--reviews", type=int, default=1_000_000)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        base = rss_mib()
        start = time.perf_counter()
        note = run_stage(args.stage, args)
        print(json.dumps([time.perf_counter() - start, base, rss_mib(), note]))
        return
    args.work = Path(tempfile.mkdtemp(prefix="elmrec-bench-"))
    print(f"work dir {args.work}; {os.cpu_count()} cores")
    for name, stage in [("beauty: download (mirror copy + sha256)", "download"),
                        ("beauty: preprocess (parse, split, negatives, parquet)", "preprocess"),
                        ("beauty: graph stage (build, normalise, leak probe, save)", "graph"),
                        ("beauty: graph build + normalisation", "build"),
                        ("beauty: 4-layer propagation, scipy", "scipy"),
                        ("beauty: 4-layer propagation, torch sparse", "torch")]:
        measure(name, stage, args)
    raw_dir = WorkPaths.from_settings(settings(args, raw=True)).raw
    raw_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    synthetic_reviews(raw_dir / "reviews_Beauty_5.json.gz", args.reviews)
    print(f"(made {args.reviews:,} synthetic reviews in {time.perf_counter() - start:.1f} s)")
    measure(f"raw reviews: {args.reviews:,} -> 5-core parquet", "raw", args)
    shutil.rmtree(args.work)


if __name__ == "__main__":
    main()
