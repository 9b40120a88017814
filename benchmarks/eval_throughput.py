"""Evaluation throughput (users/s) of each decoding mode, full t5-small shape (random init), real Beauty inputs.

    python benchmarks/eval_throughput.py [--mirror ../shared/data] [--users 32] [--device auto|cpu|cuda]
    python benchmarks/eval_throughput.py --preset demo --users 4   # the demo preset's reduced T5: a smoke run
    python benchmarks/eval_throughput.py --precisions fp32,bf16    # each mode in both eval.precision, in turns

The data stages run on Beauty in a temporary work dir (through the mirror, as a user's download would); the
model is ELMRec around a randomly initialised t5-small with Beauty's node table and graph, so every tensor has
its real shape. Each mode ranks the first `--users` test users twice with the paper's beam counts (direct 20,
sequential 30, rerank N 15); the second pass is the figure (steady state, as in a long evaluation), the first
is shown beside it: on a loaded CPU its first allocations of each tensor shape can cost several times more.
Goal: direct `score` >= 3x the users/s of direct `beam`. The default batch of 16 users keeps beam search's
cross-attention cache (users x beams x prompt tokens) within a small machine's memory.
Random weights do not change the cost of a forward pass; they do change how many beam steps end early, so
the beam figures are indicative. With `--precisions fp32,bf16` each mode runs in each `eval.precision` in turn
(both passes of one, then both of the other, the order alternating from mode to mode) and prints bf16's speed-up
and how alike the two precisions' top-10 lists are (on random weights; benchmarks/eval_precision.py compares them
on a trained model). On a CPU the modes rank on the heap an evaluation uses (`elmrec.memory.releases_for`: freed
memory kept for the next batch, its pages given back every 20 batches; `--malloc system`: glibc's default, which
this script ran on until 2026-12-04).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval_precision import agreement  # benchmarks/eval_precision.py

from elmrec.config import EvalSettings, Settings, Task, settings_for
from elmrec.data.download import download
from elmrec.data.preprocess import preprocess
from elmrec.decode import DecodeInputs, rank_direct, rank_sequential
from elmrec.device import Device
from elmrec.evaluate import EvalData, decode_inputs
from elmrec.graph import build_graph, load_adjacency
from elmrec.memory import releases_for
from elmrec.model import ELMRec
from elmrec.paths import WorkPaths
from elmrec.pretrained import load_t5, load_tokenizer
from elmrec.trie import ItemTrie

MODES = (("direct", "score"), ("direct", "beam"), ("sequential", "constrained"), ("sequential", "rerank"))


def prepare(settings: Settings) -> WorkPaths:
    paths = WorkPaths.from_settings(settings)
    download(settings.data, paths.raw, settings.resolved_mirror())
    preprocess(settings.data, settings.seed, paths.raw, paths.data)
    build_graph(paths.data, paths.graph)
    return paths


def run_mode(model: ELMRec, inputs: DecodeInputs, trie: ItemTrie, task: str, mode: str, eval_settings: EvalSettings,
             n_users: int, precision: str = "fp32", release_every: int = 0) -> tuple[float, dict[str, Any]]:
    """(seconds, {decoder: ranking}) of the first n_users users ranked with one decoder, or several side by side
    on one encoder pass per batch (`score+beam`), in `precision` (eval.precision) (CUDA synchronised), the heap's
    free pages given back every `release_every` batches as evaluation does (0: never)."""
    limited = eval_settings.model_copy(update={"max_users": n_users, "precision": precision})
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    rank = rank_direct if task == "direct" else rank_sequential
    results = rank(model, inputs, trie, limited, decoders=mode.split("+"), progress=False, release_every=release_every)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirror", default=os.environ.get("ELMREC_MIRROR", "../shared/data"))
    parser.add_argument("--model-mirror", default=os.environ.get("ELMREC_MODEL_MIRROR", "../shared"))
    parser.add_argument("--preset", default="paper", choices=["paper", "mini", "demo"],
                        help="settings (model shape, data subset) to time")
    parser.add_argument("--users", type=int, default=32, help="test users ranked per mode")
    parser.add_argument("--batch-size", type=int, default=16, help="users per batch (EvalSettings.batch_size)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--modes", default=",".join(f"{t}/{m}" for t, m in MODES),
                        help="comma-separated task/decoder; task/a+b times decoders a and b side by side")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice); on a shared, "
                        "loaded CPU one thread avoids stalls of threads waiting for a descheduled sibling")
    parser.add_argument("--precisions", default="fp32", help="comma-separated eval.precision values, each mode "
                        "timed in each, in turns (fp32,bf16: bf16's speed-up and top-10 agreement)")
    parser.add_argument("--malloc", choices=["reuse", "system"], default="reuse",
                        help="the CPU heap (train.malloc): reuse, as an evaluation does (default), or glibc's")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    work = Path(tempfile.mkdtemp(prefix="elmrec-eval-bench-"))
    try:
        settings = settings_for(args.preset, {
            "workdir": str(work), "data": {"mirror": str(Path(args.mirror).resolve())},
            "model": {"model_name": "t5-small", "model_mirror": str(Path(args.model_mirror).resolve()),
                      "allow_random_init": True},  # throughput only: random weights cost the same
            "train": {"malloc": args.malloc}, "eval": {"batch_size": args.batch_size}})  # fmt: skip
        start = time.perf_counter()
        paths = prepare(settings)
        data = EvalData.load(paths.data, "test", args.users)
        device = Device.resolve(args.device).device
        release_every = releases_for(settings.train.malloc, device.type)  # before the model: as evaluate_model
        t5, _ = load_t5(settings.model)  # no weights in the mirror: random init (warned), same cost
        model = ELMRec(t5, settings.model, data.n_users, data.n_items, load_adjacency(paths.graph),
                       [Task.SEQUENTIAL, Task.DIRECT]).to(device).eval()
        tokenizer = load_tokenizer(settings.model)
        trie = ItemTrie.from_tokenizer(tokenizer, data.n_items)
        direct_prompts = data.prompts(Task.DIRECT, settings.train.max_history)
        seq_prompts = data.prompts(Task.SEQUENTIAL, settings.train.max_history)
        inputs = {
            "direct": decode_inputs(model, tokenizer, direct_prompts, Task.DIRECT, candidates=data.candidate_lists()),
            "sequential": decode_inputs(model, tokenizer, seq_prompts, Task.SEQUENTIAL,
                                        histories=data.exclusions([p.user for p in seq_prompts])),
        }
        threads = torch.get_num_threads()
        shape = settings.model.model_name + (" (reduced)" if settings.model.reduced else "")
        heap = "not on the heap" if device.type != "cpu" else (
            f"reused heap, released every {release_every} batches" if release_every else "glibc's default heap")
        print(f"beauty: {data.n_users} users, {data.n_items} items; setup {time.perf_counter() - start:.1f} s; "
              f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{threads} threads'}, "
              f"{heap}); "
              f"{shape} {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; "
              f"direct prompt {int(inputs['direct'].attention_mask.sum(1).float().mean())} tokens, "
              f"sequential {int(inputs['sequential'].attention_mask.sum(1).float().mean())}", flush=True)
        precisions = args.precisions.split(",")
        figures, cold, agree = {}, {}, {}
        for i, name in enumerate(args.modes.split(",")):
            task, mode = name.split("/")
            results = {}
            for precision in precisions if i % 2 == 0 else precisions[::-1]:
                label = name if precisions == ["fp32"] else f"{name} {precision}"
                first, _ = run_mode(model, inputs[task], trie, task, mode, settings.eval, args.users, precision,
                                    release_every)
                seconds, results[precision] = run_mode(model, inputs[task], trie, task, mode, settings.eval,
                                                       args.users, precision, release_every)
                figures[label], cold[label] = args.users / seconds, args.users / first
                print(f"{label:<29} {args.users:4d} users {seconds:8.2f} s  {figures[label]:8.2f} users/s   "
                      f"(first pass {first:7.2f} s, {cold[label]:6.2f} users/s)", flush=True)
            if {"fp32", "bf16"} <= set(results):
                speedup = figures[f"{name} bf16"] / figures[f"{name} fp32"]
                for decoder in results["fp32"]:
                    alike = agreement(results["fp32"][decoder].items, results["bf16"][decoder].items)
                    agree[f"{task}/{decoder}"] = alike
                    print(f"{task}/{decoder}: bf16 {speedup:.2f}x the users/s of fp32; identical top-10 lists "
                          f"{alike['identical_top10']:.3f}, mean overlap@10 {alike['mean_overlap@10']:.4f}, same "
                          f"first item {alike['same_first']:.3f}", flush=True)
        if "direct/score" in figures and "direct/beam" in figures:
            ratio = figures["direct/score"] / figures["direct/beam"]
            print(f"direct score / beam throughput: {ratio:.2f}x (goal >= 3x)")
        if args.json:
            args.json.write_text(json.dumps({"device": str(device), "heap": heap, "users": args.users,
                                             "batch_size": args.batch_size,
                                             "users_per_s": figures, "first_pass_users_per_s": cold,
                                             "agreement": agree}, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
