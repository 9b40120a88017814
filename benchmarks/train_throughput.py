"""Training throughput of the full t5-small ELMRec (random init) on real Beauty prompts, against stock T5, per task.

    python benchmarks/train_throughput.py [--mirror ../shared/data] [--model-mirror ../shared] [--steps 3]
    python benchmarks/train_throughput.py --preset demo --steps 1   # the demo preset's reduced T5: a smoke run

Builds the full Beauty data through the pipeline's own stages (download from the mirror, preprocess, graph),
then one training epoch's prompts exactly as the trainer does (`elmrec.train.epoch_prompts`, `ELMRec.encode`,
bucketed batches). On each batch it times, in turn, `elmrec.step.train_step` (ELMRec: soft prompts, whole-word
embeddings, LightGCN, T5; forward, backward, fused AdamW step) and the same step of a stock Hugging Face
`T5ForConditionalGeneration` of the same shape and precision (same input_ids, attention mask and labels; fused
AdamW with the same settings). The two alternate batch by batch (which goes first alternates too), so a change
of the machine's load hits both alike; the figure of merit is their ratio, measured in this run: ours / stock
(1.00 = no overhead over plain T5; the soft prompts add 3 encoder tokens). The LightGCN share is one forward +
backward of the propagation over the full graph (timed alone) over our direct step.
Reports s/step, samples/s, the tokenizer time per batch that the trainer spends once per epoch, peak memory
(CUDA: allocated by the step; CPU: the process's resident peak during the step, both models loaded).
CPU always (`--cpu-bf16` adds bf16 autocast); on CUDA also fp32 against bf16 autocast. On one device every
precision's ours and stock T5 take turns on the same batches, so reduced precision is also measured against stock
T5 in fp32 in the same run (`stock_fp32_s_per_step`). `--authors` adds a stand-in for the authors' step
(benchmarks/authors_standin.py: stock T5 plus their tables, COO LightGCN in every direct forward, fp32, plain
AdamW; a lower bound on their step) to the same turns (`authors_s_per_step`). Timings on a shared
machine vary with its load: the load average is printed. Busy cores hurt twice with several OpenMP threads
(each parallel region waits for the slowest thread): run with OMP_WAIT_POLICY=PASSIVE, or compare `--threads 1`.
On a CPU every contestant runs on training's heap (`--malloc reuse`, elmrec.memory: freed memory kept for the
next step); `--malloc system` keeps glibc's default, and benchmarks/heap.py times the two side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authors_standin import AuthorsStandIn, authors_optimizer, authors_step  # benchmarks/authors_standin.py

from elmrec.config import HeapPolicy, Settings, Task, settings_for
from elmrec.data.download import download
from elmrec.data.preprocess import preprocess
from elmrec.device import Device
from elmrec.graph import build_graph
from elmrec.memory import heap_for
from elmrec.model import ELMRec
from elmrec.paths import WorkPaths
from elmrec.pretrained import load_t5, load_tokenizer
from elmrec.propagation import propagate
from elmrec.step import make_optimizer, optimizer_step, train_step
from elmrec.train import TrainData, build_model, epoch_prompts
from elmrec.wholeword import Encoded, bucketed_batches, collate

ENCODE_PROMPTS = 2000  # prompts per task encoded for the benchmark (the tokenizer cost is per prompt)
AUTHORS = "authors' stand-in (fp32)"  # the step name of benchmarks/authors_standin.py in the turns
StepFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]  # one optimizer step on one batch -> detached loss


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


def prepare_data(settings: Settings) -> WorkPaths:
    """Run download, preprocess and graph unless their outputs exist (a benchmark's own work dir)."""
    paths = WorkPaths.from_settings(settings)
    if not paths.graph.adjacency.is_file():
        download(settings.data, paths.raw, settings.resolved_mirror())
        preprocess(settings.data, settings.seed, paths.raw, paths.data)
        build_graph(paths.data, paths.graph, settings.data.graph_edges)
    return paths


def sample_batches(model: ELMRec, tokenizer: PreTrainedTokenizerBase, data: TrainData, settings: Settings,
                   task: Task, batch_size: int, n_batches: int) -> tuple[Encoded, list[np.ndarray], float]:
    """(encoded prompts, the first `n_batches` bucketed batches, tokenizer seconds per batch) of one epoch's
    prompts of `task`, a seeded sample of at most max(ENCODE_PROMPTS, batch_size * n_batches) prompts."""
    prompts = epoch_prompts(task, data, settings, epoch=1)
    rng = np.random.default_rng(0)
    wanted = min(max(ENCODE_PROMPTS, batch_size * n_batches), len(prompts))
    prompts = [prompts[i] for i in rng.choice(len(prompts), wanted, replace=False)]
    start = time.perf_counter()
    encoded = model.encode(tokenizer, prompts, task)
    encode_s = (time.perf_counter() - start) / len(prompts) * batch_size
    return encoded, bucketed_batches(encoded.lengths, batch_size, rng)[:n_batches], encode_s


def stock_model(settings: Settings, device: Device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A stock T5ForConditionalGeneration of the same shape (same seed), with ELMRec's optimizer settings."""
    torch.manual_seed(settings.seed)
    t5, _ = load_t5(settings.model)
    t5 = t5.to(device.device).train()
    return t5, make_optimizer(t5, settings)


def stock_step(t5: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor], device: Device,
               micro_batch_size: int | None = None) -> torch.Tensor:
    """`train_step` for stock T5: same slices and token weights, plain input_ids (no ww ids, no soft prompts)."""
    return optimizer_step(optimizer, batch, device, micro_batch_size, lambda part: t5(
        input_ids=part["input_ids"], attention_mask=part["attention_mask"], labels=part["labels"]).loss)


def time_steps(steps: dict[str, StepFn], encoded: Encoded, batches: list[np.ndarray], device: Device, warmup: int,
               deadline: float = float("inf")) -> dict[str, dict[str, float | list[float]]]:
    """Per step function: its timed seconds per batch (after `warmup` batches) and its peak memory (MiB).

    The functions take turns on each batch, the first one rotating, so load changes hit all alike. Stops early,
    after at least one timed batch, once `deadline` (time.perf_counter) has passed."""
    cuda = device.device.type == "cuda"
    out: dict[str, dict] = {name: {"seconds": [], "peak_mib": 0.0} for name in steps}
    names = list(steps)
    for i, rows in enumerate(batches):
        batch = device.put(collate(encoded, rows))
        for name in names[i % len(names):] + names[: i % len(names)]:
            reset_peak_rss()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            steps[name](batch).item()  # .item(): wait for the device
            seconds = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()
            out[name]["peak_mib"] = max(out[name]["peak_mib"], peak)
            if i >= warmup:
                out[name]["seconds"].append(seconds)
        if i >= warmup and time.perf_counter() > deadline:
            break
    return out


def time_propagation(model: ELMRec, device: Device, repeats: int = 3) -> float:
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


# Dense peaks (TFLOP/s) from NVIDIA's datasheets: bf16 tensor cores, TF32 tensor cores, fp32 CUDA cores. The first
# name fragment found in torch.cuda.get_device_name() wins (the PCIe and NVL H100s before the SXM one).
PEAKS = (("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
         ("H100 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
         ("H100", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
         ("H200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}))


def mfu_peak(device: Device) -> tuple[float | None, str]:
    """(peak TFLOP/s, which) the MFU of `device` is measured against: bf16 for bf16 autocast; for fp32 the
    CUDA-core peak, or TF32 when torch's float32 matmul precision lets matrix products use it."""
    if device.device.type != "cuda":
        return None, "no peak known for this device"
    name = torch.cuda.get_device_name(device.device)
    kind = "bf16" if device.amp_dtype is not None else (
        "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32")
    for fragment, peaks in PEAKS:
        if fragment in name:
            return peaks[kind], f"{fragment} dense {kind}: {peaks[kind]} TFLOP/s"
    return None, f"no peak known for {name}"


def t5_train_flops(config: Any, batch: int, enc_len: int, dec_len: int) -> float:
    """FLOPs of one training step (forward + backward = 3 forwards) of T5 on a padded batch (B, enc_len) ->
    (B, dec_len): every matrix product (2 FLOPs per multiply-add), attention scores and weighted sums included,
    embedding look-ups and element-wise work not. Per layer and token: q, k, v, o projections 4 d h (h = heads x
    d_kv), feed-forward 2 d f (3 d f gated); attention 2 L h per query; decoder cross-attention: q, o on decoder
    tokens, k, v on encoder tokens; the LM head d V per decoder token."""
    d, h, f = config.d_model, config.num_heads * config.d_kv, config.d_ff
    ffn = (3 if getattr(config, "is_gated_act", False) else 2) * d * f
    enc, dec = batch * enc_len, batch * dec_len  # tokens
    encoder = enc * (4 * d * h + ffn) + 2 * batch * enc_len * enc_len * h
    decoder = (dec * (6 * d * h + ffn) + enc * 2 * d * h
               + 2 * batch * dec_len * (dec_len + enc_len) * h)
    forward = config.num_layers * encoder + config.num_decoder_layers * decoder + dec * d * config.vocab_size
    return 3 * 2 * float(forward)


def batch_shapes(encoded: Encoded, batches: list[np.ndarray], prompt_num: int) -> list[tuple[int, int, int]]:
    """(B, encoder tokens incl. the soft prompts, decoder tokens) of each padded batch."""
    label_lengths = np.diff(encoded.label_offsets)
    return [(len(rows), int(encoded.lengths[rows].max()) + prompt_num, int(label_lengths[rows].max()))
            for rows in batches]


def summary(seconds: list[float], batch_size: int) -> dict[str, float]:
    step = float(np.mean(seconds))
    return {"s_per_step": step, "min_s": min(seconds), "max_s": max(seconds), "samples_per_s": batch_size / step}


@dataclass
class Contestant:
    """One precision on one device: ELMRec and stock T5 with their optimizers, and the LightGCN seconds."""
    device: Device
    model: ELMRec
    optimizer: torch.optim.Optimizer
    stock: tuple[torch.nn.Module, torch.optim.Optimizer]
    propagation_s: float


def authors_stand_in(settings: Settings, data: TrainData,
                     device: Device) -> tuple[AuthorsStandIn, torch.optim.Optimizer]:
    """The authors' step's stand-in (benchmarks/authors_standin.py), seeded like ours, with their optimizer."""
    torch.manual_seed(settings.seed)
    t5, _ = load_t5(settings.model)
    m = settings.model
    model = AuthorsStandIn(t5, data.adjacency, m.alpha, m.sigma, m.n_layers, m.prompt_num).to(device.device).train()
    return model, authors_optimizer(model, settings.train.lr)


def time_task(contestants: list[Contestant], tokenizer: PreTrainedTokenizerBase, data: TrainData,
              settings: Settings, task: Task, args: argparse.Namespace,
              authors: tuple[AuthorsStandIn, torch.optim.Optimizer] | None = None) -> list[dict[str, Any]]:
    """One row per contestant: ours and stock T5 of every precision take turns on the same batches. Each row also
    holds stock T5 in fp32 from the same turns (`stock_fp32_s_per_step`) when fp32 is among the contestants, and
    the authors' stand-in (`authors_s_per_step`, fp32 as their code) when it is given."""
    first = contestants[0]
    encoded, batches, encode_s = sample_batches(first.model, tokenizer, data, settings, task, args.batch_size,
                                                args.warmup + args.steps)
    steps: dict[str, StepFn] = {}
    for c in contestants:
        name = c.device.describe()
        steps[f"{name} elmrec"] = partial(train_step, c.model, c.optimizer, task=task, device=c.device,
                                          micro_batch_size=args.micro_batch)
        steps[f"{name} stock"] = partial(stock_step, *c.stock, device=c.device, micro_batch_size=args.micro_batch)
    if authors is not None:
        steps[AUTHORS] = partial(authors_step, *authors, task=task)
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    timed = time_steps(steps, encoded, batches, first.device, args.warmup)
    cores = (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)
    fp32 = next((c.device.describe() for c in contestants if c.device.amp_dtype is None), None)
    shapes = batch_shapes(encoded, batches[args.warmup:], first.model.settings.prompt_num)
    flops = float(np.mean([t5_train_flops(first.model.t5.config, *shape) for shape in shapes]))
    rows = []
    for c in contestants:
        name = c.device.describe()
        ours, plain = summary(timed[f"{name} elmrec"]["seconds"], args.batch_size), summary(
            timed[f"{name} stock"]["seconds"], 1)
        lightgcn = c.propagation_s if task is Task.DIRECT else 0.0  # once per step (ELMRec.propagation_once)
        row = {"task": task.value, "device": name, **ours, "peak_mib": timed[f"{name} elmrec"]["peak_mib"],
               "stock_s_per_step": plain["s_per_step"], "stock_min_s": plain["min_s"], "stock_max_s": plain["max_s"],
               "stock_peak_mib": timed[f"{name} stock"]["peak_mib"],
               "ratio_vs_stock": ours["s_per_step"] / plain["s_per_step"],
               "propagation_s": lightgcn, "lightgcn_share": lightgcn / ours["s_per_step"], "cores_busy": cores,
               "padded_length": float(np.mean([encoded.lengths[rows].max() for rows in batches])),
               "encode_s_per_batch": encode_s, "timed_steps": len(timed[f"{name} elmrec"]["seconds"]),
               "tflop_per_step": flops / 1e12, "achieved_tflops": flops / 1e12 / ours["s_per_step"]}
        if fp32 is not None:
            row["stock_fp32_s_per_step"] = float(np.mean(timed[f"{fp32} stock"]["seconds"]))
        if authors is not None:
            row["authors_s_per_step"] = float(np.mean(timed[AUTHORS]["seconds"]))
            row["authors_peak_mib"] = timed[AUTHORS]["peak_mib"]
        rows.append(row)
    return rows


def print_row(row: dict[str, Any], device: Device) -> None:
    memory = "GPU allocated" if device.device.type == "cuda" else "RSS"
    print(f"  {row['device']} {row['task']:<10} ours {row['s_per_step']:7.3f} s/step "
          f"({row['min_s']:.3f}-{row['max_s']:.3f}), "
          f"stock T5 {row['stock_s_per_step']:7.3f} s/step ({row['stock_min_s']:.3f}-{row['stock_max_s']:.3f}): "
          f"ours/stock {row['ratio_vs_stock']:.2f}x; LightGCN {100 * row['lightgcn_share']:.0f}% of ours;  "
          f"{row['samples_per_s']:6.2f} samples/s  {1e3 * row['achieved_tflops']:.0f} GFLOP/s  "
          f"{row['cores_busy']:.1f} cores busy  padded length "
          f"{row['padded_length']:3.0f}  tokenizer {row['encode_s_per_batch']:.3f} s/batch (once per epoch)  "
          f"peak {row['peak_mib']:.0f} MiB {memory} (stock {row['stock_peak_mib']:.0f})"
          + (f"; {AUTHORS} {row['authors_s_per_step']:7.3f} s/step" if "authors_s_per_step" in row else ""),
          flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--model-mirror", default=str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "elmrec-bench-train")
    parser.add_argument("--preset", default="paper", choices=["paper", "mini", "demo"],
                        help="settings (model shape, data subset) to time")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, help="train.micro_batch_size: slices of this many prompts")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--cpu-bf16", action="store_true", help="also time bf16 autocast on the CPU")
    parser.add_argument("--authors", action="store_true",
                        help="also time a stand-in for the authors' step (benchmarks/authors_standin.py), in fp32")
    parser.add_argument("--skip-cpu", action="store_true", help="only CUDA (when present)")
    parser.add_argument("--malloc", choices=get_args(HeapPolicy), default="reuse",
                        help="the CPU heap for every contestant, as train.malloc: reuse (training's default, "
                             "elmrec.memory) or glibc's default; benchmarks/heap.py compares the two")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    return parser.parse_args()


def contestants_on(device_type: str, args: argparse.Namespace) -> list[Device]:
    """The precisions timed together on one device: CPU fp32 (+ bf16 autocast with --cpu-bf16); CUDA both."""
    precisions = [None, torch.bfloat16] if device_type == "cuda" or args.cpu_bf16 else [None]
    return [Device(torch.device(device_type), amp_dtype) for amp_dtype in precisions]


def print_alternating(rows: list[dict[str, Any]], batch_size: int) -> None:
    """Training alternates one batch of each task: per precision, the pair's throughput, ours against stock T5
    of the same precision and, for reduced precisions, against stock T5 in fp32 (timed in the same turns)."""
    for name in dict.fromkeys(row["device"] for row in rows):
        pair = [row for row in rows if row["device"] == name]
        ours, plain = (sum(row[key] for row in pair) for key in ("s_per_step", "stock_s_per_step"))
        line = (f"  alternating, {name}: ours {2 * batch_size / ours:.2f} samples/s, stock T5 "
                f"{2 * batch_size / plain:.2f} samples/s: ours/stock time {ours / plain:.2f}x")
        if "(fp32)" not in name and all("stock_fp32_s_per_step" in row for row in pair):
            fp32 = sum(row["stock_fp32_s_per_step"] for row in pair)
            line += f"; stock T5 in fp32 / ours: {fp32 / ours:.2f}x (ours faster above 1)"
        if all("authors_s_per_step" in row for row in pair):
            authors = sum(row["authors_s_per_step"] for row in pair)
            line += f"; {AUTHORS} / ours: {authors / ours:.2f}x"
        print(line, flush=True)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reused = heap_for(args.malloc, "cpu")
    settings = settings_for(args.preset, {
        "workdir": str(args.workdir), "data": {"dataset": "beauty", "mirror": args.mirror},
        "model": {"model_mirror": args.model_mirror, "allow_random_init": True},  # throughput only
        "train": {"batch_size": args.batch_size}})  # fmt: skip
    data = TrainData.load(prepare_data(settings))
    tokenizer = load_tokenizer(settings.model)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), load average {os.getloadavg()[0]:.2f}; "
          f"Beauty {data.n_users} users, {data.n_items} items; batch {args.batch_size} "
          f"(micro-batches of {args.micro_batch or args.batch_size}), "
          f"{args.warmup} warm-up + {args.steps} timed steps; on each device every precision's ours and stock T5 "
          f"take turns on the same batches; heap: {'reuse' if reused else 'system'} (elmrec.memory)", flush=True)
    device_types = ([] if args.skip_cpu else ["cpu"]) + (["cuda"] if torch.cuda.is_available() else [])
    if not device_types:
        raise SystemExit("--skip-cpu leaves nothing to time: CUDA is not available here")
    rows = []
    for device_type in device_types:
        contestants = []
        for device in contestants_on(device_type, args):
            model, pretrained = build_model(settings, data, device)
            optimizer, stock = make_optimizer(model, settings), stock_model(settings, device)
            contestants.append(Contestant(device, model, optimizer, stock, time_propagation(model, device)))
            shape = settings.model.model_name + (" (reduced)" if settings.model.reduced else "")
            print(f"{device.describe()}: {shape} {'pretrained' if pretrained else 'random init'}, "
                  f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters (stock T5 "
                  f"{sum(p.numel() for p in stock[0].parameters()) / 1e6:.1f}M); "
                  f"LightGCN fwd+bwd over {model.n_nodes} nodes: {contestants[-1].propagation_s:.3f} s", flush=True)
        fp32_device = next((c.device for c in contestants if c.device.amp_dtype is None), None)
        authors = authors_stand_in(settings, data, fp32_device) if args.authors and fp32_device else None
        group = []
        for task in (Task.SEQUENTIAL, Task.DIRECT):
            group += time_task(contestants, tokenizer, data, settings, task, args, authors)
        fp32_first = contestants[0].device.describe()
        group.sort(key=lambda row: row["device"] != fp32_first)  # by precision, each in task order
        for row in group:
            print_row(row, contestants[0].device)
        print_alternating(group, args.batch_size)
        rows += group
        del contestants, authors
        if device_type == "cuda":
            torch.cuda.empty_cache()
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
