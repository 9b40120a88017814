"""The GPU check that fits one lease (first run 520 s on an H200; --total-s since 420), then writes one JSON file.

    bash benchmarks/gpu_wheels.sh            # here: wheels, Beauty files and tokenizer into .gpu-bundle/
    bash benchmarks/gpu_check.sh             # on the device (carry .gpu-bundle): installs the wheels, runs this
    python benchmarks/gpu_check.py --smoke   # every section on CPU with the demo-size model, in a minute or two

Each section is time-boxed (`--budget-s NAME=SECONDS`; time a section leaves unused goes to the next); one that
fails or runs out of time is recorded and the next one runs; the JSON is rewritten after every section.
- train_throughput: full t5-small ELMRec (random init), batch 64, real Beauty prompts, fp32 vs bf16 autocast,
  sequential and direct, alternating with a stock T5 step on the same batches: samples/s, peak GPU memory, ours /
  stock, FLOPs per step (train_throughput.t5_train_flops; LightGCN's sparse work not counted) and MFU against
  the card's dense peak (train_throughput.PEAKS: bf16 for autocast, fp32 CUDA cores or TF32 for fp32).
- eval_throughput: users/s of each decoder (direct score, beam; sequential constrained, rerank), paper beams, in
  fp32 and in bf16 autocast (`eval.precision`), in turns; how alike the two precisions' top-10 lists are.
- paper_p5, paper_shuffled: the `paper` preset on full Beauty (bf16; random-init t5-small: no weights travel),
  trained until the next epoch would overrun the budget minus `--eval-reserve-s` (`--passes-per-epoch` 1, not
  the preset's 3, so that epochs and checkpoints come often), then its best checkpoint evaluated on the first
  `--test-users` test users beside the popularity / random / id_order baselines: with P5 item IDs and with
  shuffled ones, does the model learn anything beyond ID order at this scale? The checkpoint is then evaluated
  once more with `eval.precision=bf16` where the time left allows: a trained model's metrics and top-10 lists in
  both precisions, and the seconds of each evaluation.
- attention: bf16 direct steps with SDPA (the default) against eager attention, same weights and batches.
- classic: SASRec and LightGCN (elmrec.classic) on full Beauty with P5 IDs, `--classic-epochs` epochs each on the
  GPU, then the first `--test-users` test users: that the baselines' CUDA path runs, and its seconds per epoch.
- compile: the compilation time of `train.compile`, then compiled against not compiled steps (skipped with --smoke).
Every timed batch runs once untimed first, so that first-use costs (kernels loaded lazily, the allocator growing)
stay out of the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_throughput as tt  # benchmarks/train_throughput.py: data preparation, step timing, FLOP count
from eval_precision import agreement, rankings  # benchmarks/eval_precision.py: two precisions' top-10 lists

from elmrec.classic import evaluate_classic, train_classic
from elmrec.config import Settings, Task, settings_for
from elmrec.decode import rank_direct, rank_sequential
from elmrec.device import Device
from elmrec.evaluate import EvalData, decode_inputs, evaluate_baselines, evaluate_model
from elmrec.graph import load_adjacency
from elmrec.metrics import DecodeResult
from elmrec.model import ELMRec
from elmrec.paths import RunPaths, WorkPaths
from elmrec.pretrained import load_t5, load_tokenizer
from elmrec.step import make_optimizer, train_step
from elmrec.train import EpochRecord, TrainData, build_model, train
from elmrec.trie import ItemTrie
from elmrec.wholeword import Encoded, collate

log = logging.getLogger("gpu_check")
SECTIONS = ("train_throughput", "eval_throughput", "paper_p5", "paper_shuffled", "attention", "classic", "compile")
BUDGET_S = {"train_throughput": 60, "eval_throughput": 60, "paper_p5": 130, "paper_shuffled": 130, "attention": 20,
            "classic": 40, "compile": 60}  # --total-s caps them; compile last: a compilation cannot be stopped at will
DECODERS = (("direct", "score"), ("direct", "beam"), ("sequential", "constrained"), ("sequential", "rerank"))
EVAL_PRECISIONS = ("fp32", "bf16")  # eval.precision, timed side by side
# (GPU, --smoke CPU) defaults of the options left unset
DEFAULTS = {"batch_size": (64, 4), "warmup": (3, 1), "steps": (20, 2), "eval_users": (256, 4), "test_users": (2000, 20),
            "eval_reserve_s": (40.0, 20.0), "total_s": (420.0, 360.0), "classic_epochs": (3, 1)}
SMOKE_BUDGET_S = 60.0  # per section with --smoke (a few seconds each when the machine is quiet)


class TimeUp(Exception):
    """A time box ran out (SIGALRM)."""


class EnoughEpochs(Exception):
    """The next epoch would not end within the training budget."""


@contextmanager
def time_box(seconds: float) -> Iterator[None]:
    """Raise TimeUp in the main thread once `seconds` have passed; in nested boxes the earlier deadline rings."""
    outer_left, start = signal.getitimer(signal.ITIMER_REAL)[0], time.monotonic()

    def ring(signum: int, frame: Any) -> None:
        raise TimeUp(f"time box of {seconds:.0f} s ran out")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(min(seconds, outer_left or seconds), 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left:
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - start), 0.01))


def check_settings(args: argparse.Namespace, id_scheme: str = "p5", **train: Any) -> Settings:
    """The paper preset on full Beauty (GPU), or the demo preset on 200 users (--smoke, CPU)."""
    decoders = ({"direct_decoders": ["score", "beam"], "sequential_decoders": ["constrained", "rerank"]}
                if args.all_decoders else {"direct_decoders": ["score"], "sequential_decoders": ["constrained"]})
    overrides: dict[str, Any] = {
        "workdir": str(args.workdir), "data": {"dataset": "beauty", "mirror": args.mirror, "id_scheme": id_scheme},
        "model": {"model_mirror": args.model_mirror, "allow_random_init": True},  # no weights on the device
        "train": {"device": args.device, "precision": "bf16", "passes_per_epoch": args.passes_per_epoch, **train},
        "eval": {"max_users": args.test_users, **decoders}}  # fmt: skip
    if args.smoke:
        overrides["data"]["max_users"] = 200
        overrides["train"] |= {"batch_size": 16, "max_epochs": 1, "valid_users": 20}
    return settings_for("demo" if args.smoke else "paper", overrides)


# ---------------------------------------------------------------- sections


def rehearsed(steps: dict[str, tt.StepFn], encoded: Encoded, batches: list[np.ndarray], device: Device,
              args: argparse.Namespace, until: float) -> dict[str, dict[str, Any]]:
    """`tt.time_steps` over batches[warmup:] after one untimed pass over every batch: each batch shape meets the
    GPU once before it is timed. On the first H200 lease, the three warm-up batches alone left first-use costs
    (kernels loaded lazily, allocator growth) in the timed steps: bf16 steps from 0.11 to 0.31 s."""
    return tt.time_steps(steps, encoded, batches + batches[args.warmup:], device, len(batches), until)


def throughput_row(steps: dict[str, tt.StepFn], config: Any, prompt_num: int, device: Device, task: Task,
                   prompts: Encoded, batches: list[np.ndarray], args: argparse.Namespace,
                   until: float) -> dict[str, Any]:
    """Timed training steps of ELMRec (and stock T5, alternating) on one task in one precision, with ELMRec's
    FLOPs per step, MFU and peak memory."""
    timed = rehearsed(steps, prompts, batches, device, args, until)
    ours, stock = timed["elmrec"], tt.summary(timed["stock"]["seconds"], args.batch_size)
    shapes = tt.batch_shapes(prompts, batches[args.warmup:], prompt_num)[: len(ours["seconds"])]
    flops = [tt.t5_train_flops(config, *shape) for shape in shapes]
    achieved = sum(flops) / sum(ours["seconds"]) / 1e12
    peak_tflops, peak_name = tt.mfu_peak(device)
    row = {"task": task.value, "precision": device.describe(), "batch_size": args.batch_size,
           **tt.summary(ours["seconds"], args.batch_size), "timed_steps": len(ours["seconds"]),
           "peak_memory_mib": ours["peak_mib"], "encoder_tokens": float(np.mean([s[1] for s in shapes])),
           "decoder_tokens": float(np.mean([s[2] for s in shapes])), "tflop_per_step": float(np.mean(flops)) / 1e12,
           "achieved_tflops": achieved, "peak_tflops": peak_tflops, "peak_used": peak_name,
           "mfu": achieved / peak_tflops if peak_tflops else None, "stock_s_per_step": stock["s_per_step"]}
    row["ratio_vs_stock"] = row["s_per_step"] / stock["s_per_step"]
    if "authors" in timed:  # fp32: the authors' step's stand-in took its turns too (tt.authors_stand_in)
        row["authors_s_per_step"] = float(np.mean(timed["authors"]["seconds"]))
        row["authors_over_ours"] = row["authors_s_per_step"] / row["s_per_step"]
    log.info("train %s %s: %.1f samples/s, %.1f TFLOP/s, ours/stock T5 %.2fx, peak %.0f MiB", task.value,
             device.describe(), row["samples_per_s"], achieved, row["ratio_vs_stock"], ours["peak_mib"])
    return row


def time_precision(settings: Settings, data: TrainData, device: Device, encoded: dict[Task, tuple[Encoded, Any]],
                   args: argparse.Namespace, deadline: float) -> list[dict[str, Any]]:
    """Both tasks' rows of one precision (fp32: with the authors' step's stand-in, fp32 as their code); the models
    are freed when it returns."""
    model, _ = build_model(settings, data, device)
    optimizer, stock = make_optimizer(model, settings), tt.stock_model(settings, device)
    authors = tt.authors_stand_in(settings, data, device) if device.amp_dtype is None else None
    rows = []
    for j, task in enumerate((Task.SEQUENTIAL, Task.DIRECT)):
        steps = {"elmrec": lambda b, t=task: train_step(model, optimizer, b, t, device),
                 "stock": lambda b: tt.stock_step(*stock, b, device)}
        if authors is not None:
            steps["authors"] = lambda b, t=task: tt.authors_step(*authors, b, t)
        until = time.perf_counter() + (deadline - time.perf_counter()) / (2 - j)
        rows.append(throughput_row(steps, model.t5.config, settings.model.prompt_num, device, task,
                                   *encoded[task], args, until))
    return rows


def train_throughput(args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    settings = check_settings(args, batch_size=args.batch_size)
    data = TrainData.load(tt.prepare_data(settings))
    tokenizer, rows = load_tokenizer(settings.model), []
    model, _ = build_model(settings, data, Device(torch.device("cpu"), None))  # only to encode the prompts
    parameters = sum(p.numel() for p in model.parameters())
    encoded = {task: tt.sample_batches(model, tokenizer, data, settings, task, args.batch_size,
                                    args.warmup + args.steps)[:2] for task in (Task.SEQUENTIAL, Task.DIRECT)}
    del model
    devices = [Device(torch.device(args.device), None), Device(torch.device(args.device), torch.bfloat16)]
    for i, device in enumerate(devices):  # the same batches for both precisions
        until = time.perf_counter() + (deadline - time.perf_counter()) / (len(devices) - i)
        rows += time_precision(settings, data, device, encoded, args, until)
        free_memory()
    return {"rows": rows, "parameters_m": parameters / 1e6}


def train_options(args: argparse.Namespace, option: str, deadline: float) -> dict[str, Any]:
    """What `train.attention` (option "attention") or `train.compile` ("compile") buys: bf16 direct training steps
    of two ELMRec models with the same weights (same seed) taking turns on the same batches: SDPA attention, the
    default, against eager attention, or against SDPA under torch.compile (its first call, the compilation, timed
    apart; skipped with --smoke: compiling on a small CPU takes minutes)."""
    if option == "compile" and args.smoke:
        return {"skipped": "with --smoke"}
    device = Device(torch.device(args.device), torch.bfloat16)
    settings = check_settings(args, batch_size=args.batch_size)
    data = TrainData.load(tt.prepare_data(settings))

    def make(**train: Any) -> tuple[ELMRec, tt.StepFn]:
        other = check_settings(args, batch_size=args.batch_size, **train)
        model, _ = build_model(other, data, device)
        optimizer = make_optimizer(model, other)
        return model, lambda batch: train_step(model, optimizer, batch, Task.DIRECT, device)

    model, sdpa = make()
    encoded, batches, _ = tt.sample_batches(model, load_tokenizer(settings.model), data, settings, Task.DIRECT,
                                            args.batch_size, args.warmup + args.steps)
    other = make(attention="eager") if option == "attention" else make(compile=True)
    out: dict[str, Any] = {"task": "direct", "precision": device.describe(), "batch_size": args.batch_size}
    if option == "compile":
        start = time.perf_counter()
        other[1](device.put(collate(encoded, batches[0]))).item()  # the compilation
        out["compile_s"] = time.perf_counter() - start
    name = {"attention": "eager", "compile": "compiled"}[option]
    timed = rehearsed({"sdpa": sdpa, name: other[1]}, encoded, batches, device, args, deadline)
    for key, t in timed.items():
        out[key] = {**tt.summary(t["seconds"], args.batch_size), "timed_steps": len(t["seconds"]),
                    "peak_memory_mib": t["peak_mib"]}
    out["speedup_vs_sdpa"] = out["sdpa"]["s_per_step"] / out[name]["s_per_step"]
    log.info("direct bf16 training, %s: %.1f samples/s against SDPA's %.1f (%.2fx)", name,
             out[name]["samples_per_s"], out["sdpa"]["samples_per_s"], out["speedup_vs_sdpa"])
    return out


def decode_seconds(model: ELMRec, inputs: Any, trie: ItemTrie, task: str, decoder: str, settings: Settings,
                   users: int, precision: str = "fp32") -> tuple[float, DecodeResult]:
    """(seconds, ranking) of the first `users` users ranked with one decoder in `precision` (CUDA synchronised)."""
    limited = settings.eval.model_copy(update={"max_users": users, "precision": precision})
    rank = rank_direct if task == "direct" else rank_sequential
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    result = rank(model, inputs, trie, limited, decoders=[decoder], progress=False)[decoder]
    sync()
    return time.perf_counter() - start, result


def eval_throughput(args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    settings = check_settings(args)
    settings = settings.model_copy(update={"eval": settings.eval.model_copy(update={"batch_size": args.eval_batch})})
    paths = tt.prepare_data(settings)
    data = EvalData.load(paths.data, "test", args.eval_users)
    torch.manual_seed(settings.seed)
    t5, _ = load_t5(settings.model)
    model = ELMRec(t5, settings.model, data.n_users, data.n_items, load_adjacency(paths.graph),
                   [Task.SEQUENTIAL, Task.DIRECT]).to(args.device).eval()
    tokenizer = load_tokenizer(settings.model)
    trie = ItemTrie.from_tokenizer(tokenizer, data.n_items)
    seq = data.prompts(Task.SEQUENTIAL, settings.train.max_history)
    inputs = {"direct": decode_inputs(model, tokenizer, data.prompts(Task.DIRECT, settings.train.max_history),
                                      Task.DIRECT, candidates=data.candidate_lists()),
              "sequential": decode_inputs(model, tokenizer, seq, Task.SEQUENTIAL,
                                          histories=data.exclusions([p.user for p in seq]))}
    figures: dict[str, dict[str, Any]] = {p: {} for p in EVAL_PRECISIONS}
    agree = {}
    for i, (task, decoder) in enumerate(DECODERS):
        batch, name = min(args.eval_batch, len(inputs[task])), f"{task}/{decoder}"
        order = EVAL_PRECISIONS if i % 2 == 0 else EVAL_PRECISIONS[::-1]
        first = {p: decode_seconds(model, inputs[task], trie, task, decoder, settings, batch, p)[0]  # warm-up
                 for p in order}
        share = (deadline - time.perf_counter()) / (len(DECODERS) - i)  # both precisions' share
        users = int(min(len(inputs[task]), max(batch, batch * (0.8 * share / sum(first.values())) // 1)))
        ranked = {}
        for precision in order:
            seconds, ranked[precision] = decode_seconds(model, inputs[task], trie, task, decoder, settings, users,
                                                        precision)
            figures[precision][name] = {"users": users, "seconds": seconds, "users_per_s": users / seconds,
                                        "first_batch_s": first[precision]}
        agree[name] = agreement(ranked["fp32"].items, ranked["bf16"].items)
        log.info("eval %s over %d users: %.1f users/s in fp32, %.1f in bf16; identical top-10 lists %.3f", name, users,
                 figures["fp32"][name]["users_per_s"], figures["bf16"][name]["users_per_s"],
                 agree[name]["identical_top10"])
    speedup = {name: figures["bf16"][name]["users_per_s"] / row["users_per_s"] for name, row in figures["fp32"].items()}
    return {"users_per_s": {k: v["users_per_s"] for k, v in figures["fp32"].items()}, "decoders": figures["fp32"],
            "bf16_users_per_s": {k: v["users_per_s"] for k, v in figures["bf16"].items()},
            "bf16_decoders": figures["bf16"], "bf16_speedup": speedup, "agreement": agree,
            "agreement_of": "random weights: benchmarks/eval_precision.py and the paper sections compare trained ones",
            "batch_size": args.eval_batch, "precision": "fp32 (users_per_s) and bf16 autocast (bf16_*)",
            "beams": {"direct": settings.eval.direct_beams, "sequential": settings.eval.sequential_beams,
                      "rerank_n": settings.eval.rerank_n}}


def paper_training(args: argparse.Namespace, deadline: float, id_scheme: str) -> dict[str, Any]:
    settings = check_settings(args, id_scheme)
    paths = tt.prepare_data(settings)
    baselines = evaluate_baselines(settings, paths)  # popularity, random, id_order: same users, same protocol
    train_until, marks = deadline - args.eval_reserve_s, [time.perf_counter()]

    def on_epoch(record: EpochRecord) -> None:
        marks.append(time.perf_counter())
        if record.epoch < settings.train.max_epochs and marks[-1] + (marks[-1] - marks[-2]) > train_until:
            raise EnoughEpochs

    run: RunPaths = paths.run(settings)
    try:
        with time_box(train_until - time.perf_counter()):
            run, stopped = train(settings, paths, on_epoch=on_epoch).run, "max_epochs or early stopping"
    except EnoughEpochs:
        run, stopped = run.attempt, "time budget: the next epoch would not fit"
    except TimeUp:
        run, stopped = run.attempt, "time budget: interrupted inside an epoch"
    history = json.loads(run.history.read_text()) if run.history.is_file() else {"epochs": []}
    trained = {"stopped": stopped, "seconds": time.perf_counter() - marks[0], "best_epoch": history.get("best_epoch"),
               "best_valid_loss": history.get("best_valid_loss"), "pretrained": history.get("pretrained"),
               "passes_per_epoch": settings.train.passes_per_epoch, "batch_size": settings.train.batch_size,
               "epochs": [{k: r[k] for k in ("epoch", "train_loss", "valid_loss", "valid_losses", "seconds",
                                             "samples_per_s", "best")} for r in history["epochs"]]}
    if not run.checkpoint.is_dir():
        raise RuntimeError(f"no epoch finished within the training budget ({trained})")
    free_memory()  # an interrupted step's tensors
    start = time.perf_counter()
    metrics = evaluate_model(settings, paths, checkpoint_dir=run.checkpoint, progress=False)
    eval_seconds = time.perf_counter() - start
    out = {"id_scheme": id_scheme, "train": trained, "metrics": metrics, "baselines": baselines,
           "eval_seconds": eval_seconds, "test_users": args.test_users}
    return out | {"bf16": bf16_evaluation(settings, paths, run.checkpoint, eval_seconds, deadline)}


def bf16_evaluation(settings: Settings, paths: WorkPaths, checkpoint: Path, fp32_seconds: float,
                    deadline: float) -> dict[str, Any]:
    """The same checkpoint evaluated with eval.precision=bf16, if an evaluation as long as fp32's still fits before
    the deadline: its metrics and seconds, and how alike its top-10 lists are to fp32's (eval_precision.py)."""
    left = deadline - time.perf_counter()
    if left < 1.2 * fp32_seconds:
        return {"skipped": f"{left:.0f} s left, fp32's evaluation took {fp32_seconds:.0f} s"}
    bf16 = settings.model_copy(update={"eval": settings.eval.model_copy(update={"precision": "bf16"})})
    start = time.perf_counter()
    metrics = evaluate_model(bf16, paths, checkpoint_dir=checkpoint, progress=False)
    seconds = time.perf_counter() - start
    names = [f"{task}_{decoder}" for task, by_decoder in metrics.items() for decoder in by_decoder]
    agree = {name: agreement(rankings(settings, paths, name), rankings(bf16, paths, name)) for name in names}
    log.info("bf16 evaluation of the same checkpoint: %.1f s against fp32's %.1f s; %s", seconds, fp32_seconds,
             {name: round(a["identical_top10"], 3) for name, a in agree.items()})
    return {"metrics": metrics, "eval_seconds": seconds, "speedup": fp32_seconds / seconds, "agreement": agree}


def classic_models(args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    """SASRec and LightGCN trained afresh for `--classic-epochs` epochs (validation after each), then tested."""
    out: dict[str, Any] = {}
    for name in ("sasrec", "lightgcn"):
        settings = check_settings(args)
        settings = settings.model_copy(update={"recommender": name, name: getattr(settings, name).model_copy(
            update={"max_epochs": args.classic_epochs})})
        paths = tt.prepare_data(settings)
        start = time.perf_counter()
        result = train_classic(settings, paths, resume=False)
        trained = time.perf_counter()
        metrics = evaluate_classic(settings, paths)
        out[name] = {"device": result.device, "epochs": len(result.history), "train_s": trained - start,
                     "s_per_epoch": [r.seconds for r in result.history], "eval_s": time.perf_counter() - trained,
                     "test_users": metrics["direct"]["score"]["n_users"],
                     "hr@10": {task: metrics[task]["score"]["hr@10"] for task in ("direct", "sequential")}}
        log.info("%s on %s: %d epochs in %.1f s, test HR@10 %s", name, result.device, len(result.history),
                 trained - start, out[name]["hr@10"])
        free_memory()
    return out


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """HR@10 of the exact decoders beside the baselines, per ID scheme: the one-look answer of the paper runs."""
    out = {}
    for scheme in ("p5", "shuffled"):
        section = report["sections"].get(f"paper_{scheme}", {})
        if not section.get("ok"):
            continue
        row = {f"{task}/{dec}": m["hr@10"] for task, by in section["metrics"].items() for dec, m in by.items()}
        row |= {f"{task}/{dec} bf16": m["hr@10"] for task, by in section["bf16"].get("metrics", {}).items()
                for dec, m in by.items()}  # the same checkpoint evaluated in bf16
        row |= {f"{name}:{task}": by[task]["score"]["hr@10"] for name, by in section["baselines"].items()
                for task in ("direct", "sequential")}
        out[scheme] = {"hr@10": row, "best_valid_loss": section["train"]["best_valid_loss"]}
    return out


# ---------------------------------------------------------------- the runner


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_section(name: str, body: Callable[[float], dict[str, Any]], budget: float) -> dict[str, Any]:
    """The section's figures with ok/seconds/budget_s, or its error: a failure never stops the check."""
    start = time.perf_counter()
    try:
        with time_box(budget + 30):  # the body stops itself at its budget; this rings only if it cannot
            result = {"ok": True, **body(start + budget)}
    except Exception as error:  # recorded, then the next section runs
        log.exception("section %s failed", name)
        result = {"ok": False, "error": f"{type(error).__name__}: {error}",
                  "traceback": traceback.format_exc(limit=8).splitlines()[-12:]}
    free_memory()
    return {**result, "seconds": time.perf_counter() - start, "budget_s": budget}


def budgets(args: argparse.Namespace) -> dict[str, float]:
    out = {name: SMOKE_BUDGET_S if args.smoke else seconds for name, seconds in BUDGET_S.items()}
    for item in args.budget_s:
        name, _, seconds = item.rpartition("=")
        if name and name not in SECTIONS:
            raise SystemExit(f"--budget-s {item}: unknown section {name!r}; known: {', '.join(SECTIONS)}")
        out |= {n: float(seconds) for n in ([name] if name else SECTIONS)}
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(__file__).resolve().parents[2] / "shared"
    parser.add_argument("--smoke", action="store_true", help="CPU, demo-size model, tiny budgets")
    parser.add_argument("--json", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    parser.add_argument("--mirror", default=str(shared / "data"), help="folder holding beauty/sequential.txt")
    parser.add_argument("--model-mirror", default=str(shared), help="folder holding t5-small/")
    parser.add_argument("--workdir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--budget-s", action="append", default=[], help="NAME=SECONDS, or SECONDS for every section")
    parser.add_argument("--passes-per-epoch", type=int, default=1)
    parser.add_argument("--all-decoders", action="store_true", help="paper sections: also beam and rerank")
    parser.add_argument("--eval-batch", type=int, default=32, help="users per decoding batch")
    for name in DEFAULTS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(DEFAULTS[name][0]))
    args = parser.parse_args()
    for name, (gpu, smoke) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else gpu)
    args.device = "cpu" if args.smoke else "cuda"
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device here: run with --smoke")
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="elmrec-gpu-check-"))
    args.mirror, args.model_mirror = str(Path(args.mirror).resolve()), str(Path(args.model_mirror).resolve())
    return args


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    report: dict[str, Any] = {"meta": {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "smoke": args.smoke,
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
        "float32_matmul_precision": torch.get_float32_matmul_precision(), "cpu_count": os.cpu_count(),
        "budgets_s": budgets(args), "args": {k: str(v) for k, v in vars(args).items()}}, "sections": {}}
    bodies = {"train_throughput": partial(train_throughput, args), "eval_throughput": partial(eval_throughput, args),
              "paper_p5": partial(paper_training, args, id_scheme="p5"),
              "paper_shuffled": partial(paper_training, args, id_scheme="shuffled"),
              "attention": partial(train_options, args, "attention"), "classic": partial(classic_models, args),
              "compile": partial(train_options, args, "compile")}
    start, planned = time.perf_counter(), 0.0
    for name in args.sections.split(","):  # time left unused by a section goes to the next one
        planned += report["meta"]["budgets_s"][name]
        budget = min(planned, args.total_s) - (time.perf_counter() - start)
        if budget < 5:
            report["sections"][name] = {"ok": False, "error": f"skipped: --total-s {args.total_s} spent"}
        else:
            log.info("section %s (budget %.0f s)", name, budget)
            report["sections"][name] = run_section(name, bodies[name], budget)
        report["summary"] = summarize(report)
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    log.info("wrote %s: %s", args.json, {k: v["ok"] for k, v in report["sections"].items()})


if __name__ == "__main__":
    main()
