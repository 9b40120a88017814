"""Should the CPU train with bf16 autocast by default? The `mini` preset trained in fp32 and in bf16, side by side.

    python benchmarks/precision_check.py [--mirror ../shared/data] [--model-mirror ../shared] [--json out.json]
    python benchmarks/precision_check.py --smoke   # a tiny run (100 users, 1 epoch): shows that the script works

Trains the `mini` preset (Beauty, first 3,000 users, reduced T5, up to 4 epochs) with `elmrec.train.train` on the
CPU twice, in fp32 and with bf16 autocast (same seed, data, batches and dropout draws; only the precision
differs; `--control` adds a third run, fp32 with the learning rate x (1 + 1e-6), as the noise floor), evaluates
each best checkpoint with `elmrec.evaluate.evaluate_model` (the preset's 1,000 test users),
and prints both best validation losses, every test metric, their relative differences and the training speed.

Two rules of quality, both printed; with --control the second decides. Quality is one half of the CPU default:
bf16 must also be the faster precision there (`train_throughput.py --cpu-bf16`, `matmul_precision.py`, and the
bf16 / fp32 training speed printed here), which is why the default is bf16 only on some CPUs
(`elmrec.device.cpu_bf16_is_faster`).
- The 1% rule (issue 11 as filed): the best validation loss and every HR/NDCG of bf16 end within 1% (relative)
  of fp32's. The control showed that fp32 itself fails it: a learning rate moved by one part in a million moved
  direct HR@10 by 4% and NDCG@10 by 6% (2026-11-28), so on the metrics it measures the chaos of training.
- The noise-floor rule (set on 2026-11-28 after that control, before this script's next run): the best
  validation loss within 1% of fp32's, and each headline metric (`HEADLINE`: direct/score HR@10 and NDCG@10,
  the ones with enough hits in 1,000 users to measure; sequential/constrained has a handful) within the larger
  of 1% and NOISE_FACTOR x the control's own gap to fp32. One control is one draw of that noise, hence the
  factor 2 rather than 1. The rule was written after the first control had been seen, so the runs with the
  preset's seed (2024) only reproduce what set it; the independent evidence is `--seed 2025`, run afterwards. bf16
  becomes the default only if both seeds pass.
The standard error of each HR over the test users is printed beside it. Takes about 3 x 20 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_throughput import prepare_data  # benchmarks/train_throughput.py

from elmrec.config import Settings, settings_for
from elmrec.device import cpu_supports_bf16
from elmrec.evaluate import evaluate_model
from elmrec.train import train

TOLERANCE = 0.01  # relative: bf16 must end within 1% of fp32
CONTROL_LR_FACTOR = 1 + 1e-6  # --control: fp32 again with the learning rate moved by one part in a million
COMPARED = ("hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10")
HEADLINE = ("direct/score hr@10", "direct/score ndcg@10")  # the noise-floor rule's metrics
NOISE_FACTOR = 2.0  # the noise-floor rule: a headline gap may reach this many times the control's
SMOKE = {"data": {"max_users": 100}, "train": {"max_epochs": 1, "valid_users": 10, "batch_size": 16},
         "eval": {"max_users": 10}}


def settings_of(args: argparse.Namespace, precision: str) -> Settings:
    """The run of `precision`: fp32, bf16, or "control" = fp32 with lr x CONTROL_LR_FACTOR."""
    train = {"device": "cpu", "precision": "fp32" if precision == "control" else precision}
    overrides: dict[str, Any] = {
        "workdir": str(args.workdir), "data": {"dataset": "beauty", "mirror": args.mirror},
        "model": {"model_mirror": args.model_mirror}, "train": train}  # fmt: skip
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.smoke:
        for key, values in SMOKE.items():
            overrides[key] = {**overrides.get(key, {}), **values}
    if precision == "control":
        overrides["train"]["lr"] = settings_for("mini", overrides).train.lr * CONTROL_LR_FACTOR
    return settings_for("mini", overrides)


def run(args: argparse.Namespace, precision: str) -> dict[str, Any]:
    """Train (a fresh attempt) and evaluate one precision: best validation loss, per-epoch losses, metrics."""
    settings = settings_of(args, precision)
    paths = prepare_data(settings)
    start = time.perf_counter()
    result = train(settings, paths)
    train_s = time.perf_counter() - start
    metrics = evaluate_model(settings, paths, progress=False)
    samples = sum(r.samples for r in result.history)
    return {"precision": precision, "device": result.device, "best_epoch": result.best_epoch,
            "best_valid_loss": result.best_valid_loss, "valid_losses": [r.valid_loss for r in result.history],
            "train_seconds": train_s, "samples_per_s": samples / sum(r.seconds for r in result.history),
            "metrics": metrics}


def relative(a: float, b: float) -> float:
    """|b - a| / |a|; 0 when both are 0, inf when only a is."""
    if a == b:
        return 0.0
    return abs(b - a) / abs(a) if a else math.inf


def compare(fp32: dict[str, Any], bf16: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """One row per compared figure (validation loss, then task/decoder/metric) and whether all are within."""
    rows = [{"name": "best validation loss", "fp32": fp32["best_valid_loss"], "bf16": bf16["best_valid_loss"],
             "stderr": None}]
    for task, by_decoder in fp32["metrics"].items():
        for decoder, values in by_decoder.items():
            n = values["n_users"]
            for metric in COMPARED:
                p = values[metric]
                stderr = math.sqrt(p * (1 - p) / n) if metric.startswith("hr") and n else None
                rows.append({"name": f"{task}/{decoder} {metric}", "fp32": p,
                             "bf16": bf16["metrics"][task][decoder][metric], "stderr": stderr})
    for row in rows:
        row["relative"] = relative(row["fp32"], row["bf16"])
        row["within"] = row["relative"] <= TOLERANCE
    return rows, all(row["within"] for row in rows)


def noise_floor(rows: list[dict[str, Any]], control: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """The noise-floor rule: the validation loss within TOLERANCE, each HEADLINE metric within the larger of
    TOLERANCE and NOISE_FACTOR x the control's relative gap. Its rows (name, bf16 gap, allowed, within) and verdict."""
    controls = {row["name"]: row["relative"] for row in control}
    checked = []
    for row in rows:
        if row["name"] == "best validation loss" or row["name"] in HEADLINE:
            allowed = TOLERANCE if row["name"] == "best validation loss" else max(
                TOLERANCE, NOISE_FACTOR * controls[row["name"]])
            checked.append({"name": row["name"], "bf16": row["relative"], "control": controls[row["name"]],
                            "allowed": allowed, "within": row["relative"] <= allowed})
    return checked, all(row["within"] for row in checked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(__file__).resolve().parents[2] / "shared"
    parser.add_argument("--mirror", default=str(shared / "data"))
    parser.add_argument("--model-mirror", default=str(shared))
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "elmrec-precision-check")
    parser.add_argument("--smoke", action="store_true", help="100 users, 1 epoch: only shows the script works")
    parser.add_argument("--seed", type=int, help="the runs' seed (data negatives, initialisation, batches; default: "
                        "the preset's, 2024)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--control", action="store_true", help="also train fp32 with lr x (1 + 1e-6): how far a "
                        "rounding-level perturbation moves the figures (the noise floor of the 1%% rule)")
    args = parser.parse_args()
    native = cpu_supports_bf16()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}; "
          f"CPU does bf16 natively: {native}", flush=True)
    runs = {precision: run(args, precision) for precision in ("fp32", "bf16", "control")[: 3 if args.control else 2]}
    rows, within = compare(runs["fp32"], runs["bf16"])
    control = compare(runs["fp32"], runs["control"])[0] if args.control else None
    for precision, figures in runs.items():
        print(f"{precision}: best epoch {figures['best_epoch']}, validation losses "
              f"{', '.join(f'{v:.4f}' for v in figures['valid_losses'])}; {figures['samples_per_s']:.1f} samples/s "
              f"({figures['train_seconds']:.0f} s of training)")
    print(f"{'':32} {'fp32':>9} {'bf16':>9} {'relative':>9}  HR std. error")
    for row in rows:
        stderr = f"{row['stderr']:.4f}" if row["stderr"] is not None else ""
        print(f"{row['name']:32} {row['fp32']:9.4f} {row['bf16']:9.4f} {100 * row['relative']:8.2f}%  {stderr}"
              f"{'' if row['within'] else '  > 1%'}")
    if control:
        print(f"control, fp32 with lr x {CONTROL_LR_FACTOR}: its gaps to fp32, beside bf16's")
        for row, other in zip(rows, control, strict=True):
            print(f"{row['name']:32} control {other['bf16']:9.4f} ({100 * other['relative']:5.2f}%)   bf16 "
                  f"{row['bf16']:9.4f} ({100 * row['relative']:5.2f}%)")
    floor, floor_within = noise_floor(rows, control) if control else ([], False)
    if control:
        print(f"noise-floor rule (validation loss within 1%; {', '.join(HEADLINE)} within max(1%, "
              f"{NOISE_FACTOR:g} x the control's gap)):")
        for row in floor:
            print(f"{row['name']:32} bf16 {100 * row['bf16']:5.2f}%  control {100 * row['control']:5.2f}%  allowed "
                  f"{100 * row['allowed']:5.2f}%  {'within' if row['within'] else 'OUTSIDE'}")
    print(f"1% rule: {'within' if within else 'not within'}"
          + (f"; noise-floor rule: {'within' if floor_within else 'not within'}" if control else
             "; the noise-floor rule needs --control"))
    speed = runs["bf16"]["samples_per_s"] / runs["fp32"]["samples_per_s"]
    passed = floor_within if control else within
    rule = "the noise-floor rule" if control else "the 1% rule"
    faster = speed > 1.0
    verdict = (f"bf16 passes {rule} and trains {speed:.2f}x as fast as fp32 here: a bf16 default suits this CPU"
               if passed and native and faster else "fp32 suits this CPU: " + (
                   f"bf16 fails {rule}" if not passed else "it has no native bf16" if not native else
                   f"bf16 passes {rule} but trains only {speed:.2f}x as fast as fp32"))
    print(f"bf16 / fp32 training speed: {speed:.2f}x; load average at the end {os.getloadavg()[0]:.2f}")
    print(f"verdict: {verdict}")
    if args.json:
        args.json.write_text(json.dumps({"cpu_supports_bf16": native, "runs": runs, "comparison": rows,
                                         "control_comparison": control, "noise_floor": floor,
                                         "noise_floor_within": floor_within if control else None,
                                         "within_tolerance": within, "speed_ratio": speed, "verdict": verdict},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
