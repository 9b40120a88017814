"""Should an evaluation run in bf16? One trained checkpoint ranked in fp32 and with bf16 autocast, side by side.

    python benchmarks/eval_precision.py [--preset mini] [--users 1000] [--rounds 2] [--decoders paper] [--json F]
    python benchmarks/eval_precision.py --smoke   # the demo preset, 1 epoch, 20 users: shows the script works

Trains the preset on Beauty in fp32 with `elmrec.train.train` (its own work dir keeps the run: a rerun reuses the
finished checkpoint), then evaluates that checkpoint with `elmrec.evaluate.evaluate_model` under
`eval.precision=fp32` and `bf16`, taking turns (fp32 first in odd rounds, bf16 first in even ones), and prints, per
task and decoder: every metric in both precisions and their relative gap, how many users get the very same
top-10 list, the mean overlap of the two top-10 lists, the share whose first item agrees; and the seconds of each
evaluation, so bf16's speed-up is a ratio of evaluations of one process taking turns. `--decoders paper` adds the
paper's decoders (direct free beam search, sequential rerank, with the settings' beams) beside the default ones.
Every round ranks the same users with the same checkpoint, so the rankings of one precision must repeat exactly
from round to round (checked).
The same model ranks in both: what differs is only the rounding of the products (bf16 keeps 8 bits of mantissa).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from precision_check import COMPARED, relative  # benchmarks/precision_check.py
from train_throughput import prepare_data  # benchmarks/train_throughput.py

from elmrec.checkpoint import is_finished
from elmrec.config import Settings, settings_for
from elmrec.device import cpu_bf16_is_faster, cpu_supports_bf16
from elmrec.evaluate import evaluate_model
from elmrec.paths import WorkPaths
from elmrec.train import train

PRECISIONS = ("fp32", "bf16")
TOP = 10  # the lists compared: HR/NDCG@10's
DECODERS = {"default": {},  # the settings' own; paper: the paper's decoders beside them
            "paper": {"direct_decoders": ["score", "beam"], "sequential_decoders": ["constrained", "rerank"]}}
SMOKE = {"data": {"max_users": 100}, "train": {"max_epochs": 1, "valid_users": 10, "batch_size": 16}}


def settings_of(args: argparse.Namespace, precision: str) -> Settings:
    """The preset trained in fp32 on the CPU, evaluated on the first `--users` test users in `precision`."""
    overrides: dict[str, Any] = {
        "workdir": str(args.workdir), "data": {"dataset": "beauty", "mirror": args.mirror},
        "model": {"model_mirror": args.model_mirror}, "train": {"device": "cpu", "precision": "fp32"},
        "eval": {"precision": precision, **DECODERS[args.decoders],
                 **({"max_users": args.users} if args.users else {})}}  # fmt: skip
    for key, values in (SMOKE if args.smoke else {}).items():
        overrides[key] = {**overrides.get(key, {}), **values}
    return settings_for("demo" if args.smoke else args.preset, overrides)


def trained(settings: Settings) -> tuple[WorkPaths, float | None]:
    """The work dir's paths with the preset's finished training (trained now unless it is there): (paths, seconds
    of training, None when reused)."""
    paths = prepare_data(settings)
    if is_finished(paths.run(settings)):
        return paths, None
    start = time.perf_counter()
    train(settings, paths)
    return paths, time.perf_counter() - start


def rankings(settings: Settings, paths: WorkPaths, name: str) -> np.ndarray:
    """(users, TOP) item IDs of one decoder's written predictions (`<task>_<decoder>`), best first."""
    frame = pl.read_parquet(paths.run(settings).evaluation(settings) / f"predictions_{name}.parquet")
    frame = frame.filter(pl.col("rank") <= TOP).sort(["user", "rank"])
    return frame["item"].to_numpy().reshape(-1, TOP)


def agreement(fp32: np.ndarray, bf16: np.ndarray) -> dict[str, float]:
    """How alike two rankings' top-10 lists are, user by user: (users, K) item IDs, best first. Slots past K count
    as empty (-1), and an empty slot as an item: two lists with three empty slots each share those three."""
    fp32, bf16 = (np.pad(a[:, :TOP], ((0, 0), (0, TOP - min(a.shape[1], TOP))), constant_values=-1)
                  for a in (fp32, bf16))
    overlap = [(Counter(a) & Counter(b)).total() / TOP for a, b in zip(fp32.tolist(), bf16.tolist(), strict=True)]
    return {"identical_top10": float((fp32 == bf16).all(1).mean()), "mean_overlap@10": float(np.mean(overlap)),
            "same_first": float((fp32[:, 0] == bf16[:, 0]).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(__file__).resolve().parents[2] / "shared"
    parser.add_argument("--mirror", default=str(shared / "data"))
    parser.add_argument("--model-mirror", default=str(shared))
    parser.add_argument("--preset", default="mini", choices=["mini", "demo"], help="the trained model (reduced T5)")
    parser.add_argument("--users", type=int, help="test users evaluated (default: the preset's eval.max_users)")
    parser.add_argument("--rounds", type=int, default=2, help="evaluations per precision, the order alternating")
    parser.add_argument("--decoders", choices=list(DECODERS), default="default",
                        help="the settings' decoders (default), or with the paper's beside them (paper)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "elmrec-eval-precision")
    parser.add_argument("--smoke", action="store_true", help="demo preset, 100 users, 1 epoch: the script works")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}; "
          f"bf16 instructions: {cpu_supports_bf16()}, bf16 the faster precision here: {cpu_bf16_is_faster()}",
          flush=True)
    paths, train_s = trained(settings_of(args, "fp32"))
    print("training: " + ("reused the work dir's finished run" if train_s is None else f"{train_s:.0f} s (fp32)"),
          flush=True)
    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    metrics: dict[str, dict[str, Any]] = {}
    lists: dict[str, dict[str, np.ndarray]] = {}
    for round_ in range(args.rounds):
        for precision in PRECISIONS if round_ % 2 == 0 else PRECISIONS[::-1]:
            settings = settings_of(args, precision)
            start = time.perf_counter()
            metrics[precision] = evaluate_model(settings, paths, progress=False)
            seconds[precision].append(time.perf_counter() - start)
            ranked = {f"{task}_{decoder}": rankings(settings, paths, f"{task}_{decoder}")
                      for task, by_decoder in metrics[precision].items() for decoder in by_decoder}
            if precision in lists and any(not np.array_equal(lists[precision][k], v) for k, v in ranked.items()):
                raise AssertionError(f"{precision}: round {round_ + 1} ranked otherwise than round 1")
            lists[precision] = ranked
            print(f"round {round_ + 1} {precision}: {seconds[precision][-1]:.1f} s", flush=True)
    rows, agree = [], {}
    print(f"{'':30} {'fp32':>8} {'bf16':>8} {'relative':>9}")
    for task, by_decoder in metrics["fp32"].items():
        for decoder, values in by_decoder.items():
            for metric in COMPARED:
                a, b = values[metric], metrics["bf16"][task][decoder][metric]
                rows.append({"name": f"{task}/{decoder} {metric}", "fp32": a, "bf16": b, "relative": relative(a, b)})
                print(f"{rows[-1]['name']:30} {a:8.4f} {b:8.4f} {100 * rows[-1]['relative']:8.2f}%")
            name = f"{task}_{decoder}"
            agree[name] = agreement(lists["fp32"][name], lists["bf16"][name])
            print(f"{task}/{decoder} over {values['n_users']} users: identical top-10 lists "
                  f"{agree[name]['identical_top10']:.3f}, mean overlap@10 {agree[name]['mean_overlap@10']:.4f}, "
                  f"same first item {agree[name]['same_first']:.3f}")
    mean = {p: float(np.mean(s)) for p, s in seconds.items()}
    print(f"seconds per evaluation (mean of {args.rounds}): fp32 {mean['fp32']:.1f}, bf16 {mean['bf16']:.1f}: "
          f"bf16 {mean['fp32'] / mean['bf16']:.2f}x as fast; load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"preset": "demo (smoke)" if args.smoke else args.preset,
                                         "decoders": args.decoders,
                                         "train_seconds": train_s, "seconds": seconds, "metrics": metrics,
                                         "comparison": rows, "agreement": agree,
                                         "speed_ratio": mean["fp32"] / mean["bf16"]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
