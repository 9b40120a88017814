"""Resident memory over a long CPU training, on the reused heap and on glibc's: does the reused heap stop growing?

    python benchmarks/heap_growth.py [--pairs 60] [--precision bf16] [--heaps reuse,keep,system] [--json out.json]

The heaps: `reuse`, training's (`train.malloc=reuse`, elmrec.memory: freed blocks kept, their pages given back every
elmrec.memory.RELEASE_EVERY steps); `keep`, the same without the releases (the reused heap before they came: it
never gives memory back, and reuses freed blocks first fit, so it crept up); `system`, glibc's default. A process
keeps its heap policy for life, so each heap runs in a fresh process, one after the other: full t5-small ELMRec
(random init) on full Beauty, `--pairs` pairs of optimizer steps in the order training takes them (one sequential
batch, then one direct batch; bucketed batches as the trainer makes them, so their lengths vary). After every pair
it records the process's resident memory (VmRSS), its peak during the pair (VmHWM, reset before each pair: on
glibc's heap RSS falls back between steps, so the peak is what a machine must hold), the padded length of each batch
and the pair's seconds. Prints, per heap: RSS after the first pair, its maximum and the first pair within 1% of it,
the growth over the second half of the pairs, the peak over all pairs, and the mean seconds per step of each task.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import peak_rss_mib, prepare_data, reset_peak_rss, sample_batches  # benchmarks/

from elmrec.config import Task, settings_for
from elmrec.device import Device
from elmrec.memory import RELEASE_EVERY, heap_for, release_freed_memory
from elmrec.pretrained import load_tokenizer
from elmrec.step import make_optimizer, train_step
from elmrec.train import TrainData, build_model
from elmrec.wholeword import collate

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
TASKS = (Task.SEQUENTIAL, Task.DIRECT)  # the order of a pair, as training alternates them
HEAPS = {"reuse": ("reuse", RELEASE_EVERY), "keep": ("reuse", 0), "system": ("system", 0)}  # (malloc, release every)


def rss_mib() -> float:
    """The process's resident memory now (Linux VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmRSS in /proc/self/status")


def train_pairs(args: argparse.Namespace) -> dict:
    """In this process, on args.child's heap: RSS and seconds per step after every pair of steps."""
    malloc, release_every = HEAPS[args.child]
    reused = heap_for(malloc, "cpu")
    settings = settings_for(args.preset, {
        "workdir": str(args.workdir), "data": {"dataset": "beauty", "mirror": args.mirror},
        "model": {"model_mirror": args.model_mirror, "allow_random_init": True},  # memory and time only
        "train": {"batch_size": args.batch_size}})  # fmt: skip
    data = TrainData.load(prepare_data(settings))
    device = Device(torch.device("cpu"), PRECISIONS[args.precision])
    model, _ = build_model(settings, data, device)
    optimizer = make_optimizer(model, settings)
    tokenizer = load_tokenizer(settings.model)
    batches = {task: sample_batches(model, tokenizer, data, settings, task, args.batch_size, args.pairs)[:2]
               for task in TASKS}
    rss, peak = [], []
    seconds, lengths = ({task.value: [] for task in TASKS} for _ in range(2))
    for pair in range(args.pairs):
        reset_peak_rss()
        for task in TASKS:
            encoded, rows = batches[task]
            rows = rows[pair % len(rows)]
            batch = device.put(collate(encoded, rows))
            start = time.perf_counter()
            train_step(model, optimizer, batch, task=task, device=device).item()
            seconds[task.value].append(time.perf_counter() - start)
            lengths[task.value].append(int(encoded.lengths[rows].max()))
            if release_every and (2 * pair + TASKS.index(task) + 1) % release_every == 0:  # as elmrec.train does
                release_freed_memory()
        rss.append(rss_mib())
        peak.append(peak_rss_mib())
        print(f"  heap {args.child}, pair {pair + 1}/{args.pairs}: RSS {rss[-1]:.0f} MiB (peak {peak[-1]:.0f}), "
              f"{seconds['sequential'][-1]:.2f} + {seconds['direct'][-1]:.2f} s, direct batch padded to "
              f"{lengths['direct'][-1]} tokens", flush=True)
    return {"heap": args.child, "reused": reused, "release_every": release_every, "precision": args.precision,
            "rss_mib": rss, "peak_mib": peak, "padded_length": lengths, "seconds": seconds}


def summarize(run: dict) -> dict:
    """The figures printed per heap, from one process's per-pair RSS and seconds."""
    rss = run["rss_mib"]
    top = max(rss)
    half = len(rss) // 2
    return {"heap": run["heap"], "pairs": len(rss), "first_rss_mib": rss[0], "max_rss_mib": top,
            "pair_within_1pct_of_max": next(i + 1 for i, value in enumerate(rss) if value >= 0.99 * top),
            "second_half_growth_mib": rss[-1] - rss[half - 1] if half else 0.0, "peak_mib": max(run["peak_mib"]),
            **{f"{task}_s_per_step": float(np.mean(times)) for task, times in run["seconds"].items()}}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--model-mirror", default=str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "elmrec-bench-train")
    parser.add_argument("--preset", default="paper", choices=["paper", "mini", "demo"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=60, help="pairs of steps (one sequential, one direct)")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="bf16")
    parser.add_argument("--heaps", default="reuse,keep,system", help=f"comma-separated, in this order: {list(HEAPS)}")
    parser.add_argument("--json", type=Path, help="write every heap's per-pair figures and summary here")
    parser.add_argument("--child", choices=list(HEAPS), help=argparse.SUPPRESS)  # one heap's process
    parser.add_argument("--child-json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    heaps = args.heaps.split(",")
    if unknown := set(heaps) - set(HEAPS):
        parser.error(f"--heaps: unknown {sorted(unknown)}; choose from {list(HEAPS)}")
    args.heaps = heaps
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        args.child_json.write_text(json.dumps(train_pairs(args)) + "\n")
        return
    print(f"{args.pairs} pairs of steps per heap, {args.precision}, batch {args.batch_size}, preset {args.preset}, "
          f"the reused heap's free pages given back every {RELEASE_EVERY} steps (not in `keep`), "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}",
          flush=True)
    child = [sys.executable, __file__, "--mirror", args.mirror, "--model-mirror", args.model_mirror, "--workdir",
             str(args.workdir), "--preset", args.preset, "--batch-size", str(args.batch_size), "--pairs",
             str(args.pairs), "--precision", args.precision]
    runs, summaries = [], []
    with tempfile.TemporaryDirectory() as folder:
        for heap in args.heaps:
            out = Path(folder) / f"{heap}.json"
            print(f"heap {heap}: a fresh process, load average {os.getloadavg()[0]:.2f}", flush=True)
            subprocess.run([*child, "--child", heap, "--child-json", str(out)], check=True)
            runs.append(json.loads(out.read_text()))
    for run in runs:
        line = summarize(run)
        summaries.append(line)
        print(f"  heap {line['heap']}: RSS {line['first_rss_mib']:.0f} MiB after pair 1, at most "
              f"{line['max_rss_mib']:.0f} MiB (within 1% of it from pair {line['pair_within_1pct_of_max']}), "
              f"{line['second_half_growth_mib']:+.0f} MiB over the second half, peak {line['peak_mib']:.0f} MiB; "
              f"sequential "
              f"{line['sequential_s_per_step']:.3f} s/step, direct {line['direct_s_per_step']:.3f} s/step", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "summaries": summaries}, indent=1) + "\n")


if __name__ == "__main__":
    main()
