"""Resident memory over a long CPU training or evaluation, on the reused heap and on glibc's: does it stop growing?

    python benchmarks/heap_growth.py [--pairs 60] [--precision bf16] [--heaps reuse,keep,system] [--json out.json]
    python benchmarks/heap_growth.py --stage eval [--pairs 40] ...   # decoding batches instead of training steps

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

`--stage eval` measures an evaluation instead, in its order: `--pairs` decoding batches of the sequential task,
then as many of the direct task (the preset's decoders unless `--sequential-decoders` / `--direct-decoders`;
`eval.batch_size` test users each, in user order as evaluate ranks them); one record per batch. `reuse` gives the
heap's free pages back before a task's first batch, every RELEASE_EVERY and after its last, as evaluation does
(elmrec.decode), `keep` never; the RSS of a batch is taken before the release that may follow it. The process
holds what an evaluation holds: the model and the graph (random init, built without the training data, which the
README's runs of 2026-12-03 13:28-14:49 UTC also loaded), the test users' data and prompts. Evaluation runs in fp32,
`eval.precision`'s default (`--precision` is for training); `--batch-size` sets `eval.batch_size` here.
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

from elmrec.config import Settings, Task, settings_for
from elmrec.decode import rank_direct, rank_sequential
from elmrec.device import Device
from elmrec.evaluate import EvalData, decode_inputs
from elmrec.graph import load_adjacency
from elmrec.memory import RELEASE_EVERY, heap_for, release_freed_memory, releasing
from elmrec.model import ELMRec
from elmrec.pretrained import load_t5, load_tokenizer
from elmrec.step import make_optimizer, train_step
from elmrec.train import TrainData, build_model
from elmrec.trie import ItemTrie
from elmrec.wholeword import collate

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
TASKS = (Task.SEQUENTIAL, Task.DIRECT)  # the order of a pair, as training alternates them
TRAIN_BATCH = 16  # prompts per training step unless --batch-size
HEAPS = {"reuse": ("reuse", RELEASE_EVERY), "keep": ("reuse", 0), "system": ("system", 0)}  # (malloc, release every)


def rss_mib() -> float:
    """The process's resident memory now (Linux VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmRSS in /proc/self/status")


def bench_settings(args: argparse.Namespace) -> Settings:
    """The preset with random init (memory and time only) and the batch size of the stage measured."""
    overrides: dict = {"workdir": str(args.workdir), "data": {"dataset": "beauty", "mirror": args.mirror},
                       "model": {"model_mirror": args.model_mirror, "allow_random_init": True}}
    if args.stage == "train":
        overrides["train"] = {"batch_size": args.batch_size or TRAIN_BATCH}
    else:  # the preset's own where a flag is not given
        chosen = {"batch_size": args.batch_size, "direct_decoders": args.direct_decoders,
                  "sequential_decoders": args.sequential_decoders}
        overrides["eval"] = {key: value for key, value in chosen.items() if value}
    return settings_for(args.preset, overrides)


def train_pairs(args: argparse.Namespace) -> dict:
    """In this process, on args.child's heap: RSS and seconds per step after every pair of steps."""
    malloc, release_every = HEAPS[args.child]
    reused = heap_for(malloc, "cpu")
    settings = bench_settings(args)
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
            # every release_every steps, as elmrec.train does (which also releases before an epoch's first step)
            if release_every and (2 * pair + TASKS.index(task) + 1) % release_every == 0:
                release_freed_memory()
        rss.append(rss_mib())
        peak.append(peak_rss_mib())
        print(f"  heap {args.child}, pair {pair + 1}/{args.pairs}: RSS {rss[-1]:.0f} MiB (peak {peak[-1]:.0f}), "
              f"{seconds['sequential'][-1]:.2f} + {seconds['direct'][-1]:.2f} s, direct batch padded to "
              f"{lengths['direct'][-1]} tokens", flush=True)
    return {"heap": args.child, "stage": "train", "unit": "pair of steps", "reused": reused,
            "release_every": release_every, "precision": args.precision, "rss_mib": rss, "peak_mib": peak,
            "padded_length": lengths, "seconds": seconds}


def eval_batches(args: argparse.Namespace) -> dict:
    """In this process, on args.child's heap: RSS, its peak and seconds after every decoding batch of an
    evaluation (args.pairs batches of each task, sequential first, as evaluate ranks them)."""
    malloc, release_every = HEAPS[args.child]
    reused = heap_for(malloc, "cpu")
    settings = bench_settings(args)
    paths = prepare_data(settings)
    size = settings.eval.batch_size
    data = EvalData.load(paths.data, "test", args.pairs * size)
    torch.manual_seed(settings.seed)
    t5, _ = load_t5(settings.model)  # the model and graph alone, as evaluate loads them: no training data
    model = ELMRec(t5, settings.model, data.n_users, data.n_items, load_adjacency(paths.graph), list(TASKS)).eval()
    tokenizer = load_tokenizer(settings.model)
    trie = ItemTrie.from_tokenizer(tokenizer, data.n_items)
    seq_prompts = data.prompts(Task.SEQUENTIAL, settings.train.max_history)
    inputs = {
        Task.SEQUENTIAL: decode_inputs(model, tokenizer, seq_prompts, Task.SEQUENTIAL,
                                       histories=data.exclusions([p.user for p in seq_prompts])),
        Task.DIRECT: decode_inputs(model, tokenizer, data.prompts(Task.DIRECT, settings.train.max_history),
                                   Task.DIRECT, candidates=data.candidate_lists()),
    }
    rank = {Task.SEQUENTIAL: rank_sequential, Task.DIRECT: rank_direct}
    rss, peak, tasks, seconds, lengths = [], [], [], [], []
    for task in TASKS:
        for batch in releasing(inputs[task].batches(size), release_every):  # as elmrec.decode ranks a task
            reset_peak_rss()
            start = time.perf_counter()
            rank[task](model, batch, trie, settings.eval, progress=False)  # one batch: releases nothing itself
            seconds.append(time.perf_counter() - start)
            rss.append(rss_mib())  # before this batch's release, if one follows
            peak.append(peak_rss_mib())
            tasks.append(task.value)
            lengths.append(int(batch.attention_mask.shape[1]))
            print(f"  heap {args.child}, {task.value} batch {len(rss)}/{2 * args.pairs}: RSS {rss[-1]:.0f} MiB "
                  f"(peak {peak[-1]:.0f}), {seconds[-1]:.2f} s, padded to {lengths[-1]} tokens", flush=True)
    return {"heap": args.child, "stage": "eval", "unit": "decoding batch", "reused": reused,
            "release_every": release_every, "precision": "fp32", "decoders": {
                "sequential": settings.eval.sequential_decoders, "direct": settings.eval.direct_decoders},
            "batch_users": size, "rss_mib": rss, "peak_mib": peak, "record_task": tasks,
            "padded_length": {t.value: [n for n, k in zip(lengths, tasks) if k == t.value] for t in TASKS},
            "seconds": {t.value: [n for n, k in zip(seconds, tasks) if k == t.value] for t in TASKS}}


def parts(run: dict) -> list[dict]:
    """What is summarized apart: a training's pairs together; an evaluation's batches task by task (each task's own
    tensors: their growth is within a task, not across the change of task)."""
    if "record_task" not in run:
        return [run]
    return [{"heap": run["heap"], "task": task, "seconds": {task: run["seconds"][task]},
             **{key: [v for v, t in zip(run[key], run["record_task"], strict=True) if t == task]
                for key in ("rss_mib", "peak_mib")}} for task in run["seconds"]]


def summarize(run: dict) -> dict:
    """The figures printed per heap, from one process's per-pair RSS and seconds."""
    rss = run["rss_mib"]
    top = max(rss)
    half = len(rss) // 2
    return {"heap": run["heap"], **({"task": run["task"]} if "task" in run else {}), "records": len(rss),
            "first_rss_mib": rss[0], "max_rss_mib": top,
            "record_within_1pct_of_max": next(i + 1 for i, value in enumerate(rss) if value >= 0.99 * top),
            "second_half_growth_mib": rss[-1] - rss[half - 1] if half else 0.0, "peak_mib": max(run["peak_mib"]),
            **{f"{task}_s_per_record": float(np.mean(times)) for task, times in run["seconds"].items()}}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--model-mirror", default=str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "elmrec-bench-train")
    parser.add_argument("--preset", default="paper", choices=["paper", "mini", "demo"])
    parser.add_argument("--stage", choices=["train", "eval"], default="train")
    parser.add_argument("--batch-size", type=int, help=f"train: prompts per step (default {TRAIN_BATCH}); "
                        "eval: users per decoding batch (default: the preset's eval.batch_size)")
    parser.add_argument("--direct-decoders", type=lambda text: text.split(","),
                        help="eval: comma-separated (default: the preset's eval.direct_decoders)")
    parser.add_argument("--sequential-decoders", type=lambda text: text.split(","),
                        help="eval: comma-separated (default: the preset's eval.sequential_decoders)")
    parser.add_argument("--pairs", type=int, default=60, help="train: pairs of steps (one sequential, one direct); "
                        "eval: decoding batches of each task")
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
        measure = train_pairs if args.stage == "train" else eval_batches
        args.child_json.write_text(json.dumps(measure(args)) + "\n")
        return
    what = (f"{args.pairs} pairs of training steps per heap, {args.precision}, batch {args.batch_size or TRAIN_BATCH}"
            if args.stage == "train" else f"{args.pairs} decoding batches of each task per heap, fp32, batch "
            f"{args.batch_size or 'of the preset'}")
    print(f"{what}, preset {args.preset}, the reused heap's free pages given back every {RELEASE_EVERY} "
          f"{'steps' if args.stage == 'train' else 'batches'} (not in `keep`), "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}",
          flush=True)
    child = [sys.executable, __file__, *sys.argv[1:]]  # each heap's process measures with this one's arguments
    runs, summaries = [], []
    with tempfile.TemporaryDirectory() as folder:
        for heap in args.heaps:
            out = Path(folder) / f"{heap}.json"
            print(f"heap {heap}: a fresh process, load average {os.getloadavg()[0]:.2f}", flush=True)
            subprocess.run([*child, "--child", heap, "--child-json", str(out)], check=True)
            runs.append(json.loads(out.read_text()))
    for run in runs:
        for part in parts(run):
            line = summarize(part)
            summaries.append(line)
            unit, per = run["unit"], "step" if args.stage == "train" else "batch"
            times = ", ".join(f"{task} {line[f'{task}_s_per_record']:.3f} s" for task in part["seconds"])
            print(f"  heap {line['heap']}{', ' + line['task'] if 'task' in line else ''}: RSS "
                  f"{line['first_rss_mib']:.0f} MiB after the first {unit}, at most {line['max_rss_mib']:.0f} MiB "
                  f"(within 1% of it from {unit} {line['record_within_1pct_of_max']}), "
                  f"{line['second_half_growth_mib']:+.0f} MiB over the second half, peak {line['peak_mib']:.0f} MiB; "
                  f"{times} per {per}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "summaries": summaries}, indent=1) + "\n")


if __name__ == "__main__":
    main()
