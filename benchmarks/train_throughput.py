"""Training throughput of the full t5-small ELMRec (random init) on real Beauty prompts, per task.

    python benchmarks/train_throughput.py [--mirror ../shared/data] [--model-mirror ../shared] [--steps 3]
    python benchmarks/train_throughput.py --preset demo --steps 1   # the demo preset's reduced T5: a smoke run

Builds the full Beauty data through the pipeline's own stages (download from the mirror, preprocess, graph),
then one training epoch's prompts exactly as the trainer does (`elmrec.train.epoch_prompts`, `ELMRec.encode`,
bucketed batches), and times `elmrec.train.train_step` (forward, backward, fused AdamW step) on the first
batches after warm-up. Reports s/step, samples/s, the tokenizer time per batch that the trainer spends once per
epoch (the paper's code spends it inside every step), peak memory, and the speed-up over the paper's code on
this 2-core machine: 2.1 s/step (sequential) and 15.7 s/step (direct) at batch 16. CPU always; on CUDA also
fp32 against bf16 autocast. Timings on a shared machine vary with its load: the load average is printed.
Busy cores hurt twice with several OpenMP threads (each parallel region waits for the slowest thread):
compare `--threads 1`, or run with OMP_WAIT_POLICY=PASSIVE.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elmrec.config import Task, settings_for
from elmrec.data.download import download
from elmrec.data.preprocess import preprocess
from elmrec.device import Device
from elmrec.graph import build_graph, propagate
from elmrec.paths import WorkPaths
from elmrec.pretrained import load_tokenizer
from elmrec.train import TrainData, build_model, epoch_prompts, make_optimizer, train_step
from elmrec.wholeword import bucketed_batches, collate

PAPER_S_PER_STEP = {Task.SEQUENTIAL: 2.1, Task.DIRECT: 15.7}  # the authors' code, t5-small, batch 16, 2 CPU cores
ENCODE_PROMPTS = 2000  # prompts per task encoded for the benchmark (the tokenizer cost is per prompt)


def comparable(args: argparse.Namespace) -> bool:
    """The authors' figures are for full t5-small at batch 16."""
    return args.preset == "paper" and args.batch_size == 16


def reset_peak_rss() -> None:
    """Reset the process's peak resident memory (Linux: VmHWM), so each measurement has its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the peak is the process's lifetime peak


def peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(args: argparse.Namespace) -> tuple:
    overrides = {"workdir": str(args.workdir), "data": {"dataset": "beauty", "mirror": args.mirror},
                 "model": {"model_mirror": args.model_mirror}, "train": {"batch_size": args.batch_size}}
    settings = settings_for(args.preset, overrides)
    paths = WorkPaths.from_settings(settings)
    if not paths.graph.adjacency.is_file():
        download(settings.data, paths.raw, settings.resolved_mirror())
        preprocess(settings.data, settings.seed, paths.raw, paths.data)
        build_graph(paths.data, paths.graph, settings.data.graph_edges)
    return settings, TrainData.load(paths)


def time_task(model, optimizer, tokenizer, data, settings, task: Task, device: Device, args) -> dict:
    prompts = epoch_prompts(task, data, settings, epoch=1)
    rng = np.random.default_rng(0)
    prompts = [prompts[i] for i in rng.choice(len(prompts), min(ENCODE_PROMPTS, len(prompts)), replace=False)]
    start = time.perf_counter()
    encoded = model.encode(tokenizer, prompts, task)
    encode_s = (time.perf_counter() - start) / len(prompts) * args.batch_size  # tokenizer seconds per batch
    batches = bucketed_batches(encoded.lengths, args.batch_size, rng)[: args.warmup + args.steps]
    reset_peak_rss()
    if device.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds, cpu_seconds = [], []
    for i, rows in enumerate(batches):
        batch = device.put(collate(encoded, rows))
        start, cpu_start = time.perf_counter(), time.process_time()
        train_step(model, optimizer, batch, task, device, args.micro_batch).item()  # .item(): wait for the device
        if i >= args.warmup:
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu_start)
    step = float(np.mean(seconds))
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.device.type == "cuda" else peak_rss_mib()
    tokens = float(np.mean([encoded.lengths[rows].max() for rows in batches]))
    return {"task": task.value, "device": device.describe(), "s_per_step": step,
            "samples_per_s": args.batch_size / step, "min_s": min(seconds), "max_s": max(seconds),
            "cores_busy": float(np.sum(cpu_seconds) / np.sum(seconds)), "padded_length": tokens,
            "encode_s_per_batch": encode_s, "peak_mib": peak,
            "speedup_vs_paper": PAPER_S_PER_STEP[task] / step if comparable(args) else None}


def time_propagation(model, device: Device, repeats: int = 3) -> float:
    """Seconds of one LightGCN forward + backward over the full graph (part of every direct step)."""
    table = model.node_table.weight
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        propagate(model.adjacency, table, model.settings.n_layers).sum().backward()
        if device.device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    table.grad = None
    return float(np.median(seconds))


def print_row(row: dict, device: Device) -> None:
    ratio = f"{row['speedup_vs_paper']:.2f}x" if row["speedup_vs_paper"] else "n/a"
    memory = "GPU allocated" if device.device.type == "cuda" else "RSS"
    print(f"  {row['task']:<10} {row['s_per_step']:7.3f} s/step ({row['min_s']:.3f}-{row['max_s']:.3f})  "
          f"{row['samples_per_s']:6.2f} samples/s  {row['cores_busy']:.1f} cores busy  "
          f"padded length {row['padded_length']:3.0f}  tokenizer {row['encode_s_per_batch']:.3f} s/batch (once per "
          f"epoch)  vs paper {PAPER_S_PER_STEP[Task(row['task'])]} s/step: {ratio}  peak {row['peak_mib']:.0f} MiB "
          f"{memory}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--model-mirror", default=str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "elmrec-bench-train")
    parser.add_argument("--preset", default="paper", choices=["paper", "mini", "demo"],
                        help="settings (model shape, data subset) to time; the paper comparison needs paper")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, help="train.micro_batch_size: slices of this many prompts")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--cpu-bf16", action="store_true", help="also time bf16 autocast on the CPU")
    parser.add_argument("--skip-cpu", action="store_true", help="only CUDA (when present)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    settings, data = prepare(args)
    tokenizer = load_tokenizer(settings.model)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), load average {os.getloadavg()[0]:.2f}; "
          f"Beauty {data.n_users} users, {data.n_items} items; batch {args.batch_size} "
          f"(micro-batches of {args.micro_batch or args.batch_size}), "
          f"{args.warmup} warm-up + {args.steps} timed steps", flush=True)
    devices = [] if args.skip_cpu else [Device(torch.device("cpu"), None)]
    if args.cpu_bf16:
        devices.append(Device(torch.device("cpu"), torch.bfloat16))
    if torch.cuda.is_available():
        devices += [Device(torch.device("cuda"), None), Device(torch.device("cuda"), torch.bfloat16)]
    if not devices:
        parser.error("--skip-cpu leaves nothing to time: CUDA is not available here")
    rows = []
    for device in devices:
        model, pretrained = build_model(settings, data, device)
        optimizer = make_optimizer(model, settings)
        prop = time_propagation(model, device)
        shape = settings.model.model_name + (" (reduced)" if settings.model.reduced else "")
        print(f"{device.describe()}: {shape} {'pretrained' if pretrained else 'random init'}, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; "
              f"LightGCN fwd+bwd over {model.n_nodes} nodes: {prop:.3f} s", flush=True)
        pair = []
        for task in (Task.SEQUENTIAL, Task.DIRECT):
            row = time_task(model, optimizer, tokenizer, data, settings, task, device, args)
            row["propagation_s"] = prop if task is Task.DIRECT else 0.0
            rows.append(row)
            pair.append(row["s_per_step"])
            print_row(row, device)
        # Training alternates one batch of each task: samples/s of the mix, against the paper's 32 / (2.1 + 15.7)
        mix, paper_mix = 2 * args.batch_size / sum(pair), 32 / sum(PAPER_S_PER_STEP.values())
        ratio = f"{mix / paper_mix:.2f}x" if comparable(args) else "n/a"
        print(f"  alternating  {mix:.2f} samples/s; the paper's code {paper_mix:.2f} samples/s: {ratio}", flush=True)
        del model, optimizer
        if device.device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
