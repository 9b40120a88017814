"""Is bf16 the faster precision on this CPU? t5-small's matrix products in fp32 and in bf16, taking turns.

    python benchmarks/matmul_precision.py [--repeats 8] [--threads N] [--json out.json]

A CPU with bf16 instructions (AVX512-BF16, AMX-BF16) need not multiply bf16 matrices faster than fp32 ones: on
this project's machines it went both ways (README, Speed). This answers in seconds what the training benchmark
(`train_throughput.py --cpu-bf16`) answers in minutes, for the products that dominate the direct step: a batch of
16 prompts of 410 tokens (6,560 rows) through t5-small's projections (512 x 512: attention; 512 x 2048 and
2048 x 512: feed-forward), and the backward's weight gradient (rows contracted). Each product runs in fp32 and in
bf16 (operands cast beforehand, as autocast does for a Linear) in alternation, so load changes hit both alike;
medians are reported, with the ratio bf16 / fp32 (below 1: bf16 is faster) and the CPU's bf16 flags.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elmrec.device import cpu_has_bf16_tiles, cpu_supports_bf16

ROWS = 16 * 410  # a direct batch's tokens
SHAPES = {  # name -> (m, k, n): an (m x k) by (k x n) product
    "attention projection 6560x512 . 512x512": (ROWS, 512, 512),
    "feed-forward in 6560x512 . 512x2048": (ROWS, 512, 2048),
    "feed-forward out 6560x2048 . 2048x512": (ROWS, 2048, 512),
    "weight gradient 2048x6560 . 6560x512": (2048, ROWS, 512),
}


def time_product(a: torch.Tensor, b: torch.Tensor) -> float:
    start = time.perf_counter()
    torch.mm(a, b)
    return time.perf_counter() - start


def measure(m: int, k: int, n: int, repeats: int) -> dict[str, float]:
    """Median seconds of the product in fp32 and in bf16, the two alternating after one untimed call each."""
    generator = torch.Generator().manual_seed(0)
    a32, b32 = torch.randn(m, k, generator=generator), torch.randn(k, n, generator=generator)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    time_product(a32, b32), time_product(a16, b16)
    for turn in range(repeats):
        order = ("fp32", "bf16") if turn % 2 == 0 else ("bf16", "fp32")
        for name in order:
            times[name].append(time_product(*((a32, b32) if name == "fp32" else (a16, b16))))
    fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    return {"fp32_ms": 1e3 * fp32, "bf16_ms": 1e3 * bf16, "bf16_over_fp32": bf16 / fp32,
            "fp32_gflops": 2 * m * k * n / fp32 / 1e9, "bf16_gflops": 2 * m * k * n / bf16 / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=8, help="timed calls per product and precision")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    report = {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "cpu_supports_bf16": cpu_supports_bf16(), "cpu_has_bf16_tiles": cpu_has_bf16_tiles(),
              "load_average": os.getloadavg()[0], "products": {}}
    print(f"{cpu}: {report['threads']} threads, torch {torch.__version__}, bf16 instructions "
          f"{report['cpu_supports_bf16']}, AMX tiles {report['cpu_has_bf16_tiles']}")
    for name, (m, k, n) in SHAPES.items():
        figures = measure(m, k, n, args.repeats)
        report["products"][name] = figures
        print(f"{name:40s} fp32 {figures['fp32_ms']:7.1f} ms ({figures['fp32_gflops']:5.0f} GFLOP/s)  "
              f"bf16 {figures['bf16_ms']:7.1f} ms ({figures['bf16_gflops']:5.0f} GFLOP/s)  "
              f"bf16/fp32 {figures['bf16_over_fp32']:.2f}")
    ratios = [figures["bf16_over_fp32"] for figures in report["products"].values()]
    report["geomean_bf16_over_fp32"] = statistics.geometric_mean(ratios)
    print(f"geometric mean bf16/fp32 {report['geomean_bf16_over_fp32']:.2f} "
          f"({'bf16' if report['geomean_bf16_over_fp32'] < 1 else 'fp32'} is the faster precision here); "
          f"load average {report['load_average']:.2f} at the start")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
