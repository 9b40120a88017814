"""Training steps on the CPU with training's heap (freed memory kept, elmrec.memory) and with glibc's default.

    python benchmarks/heap.py [--rounds 2] [train_throughput.py's options, e.g. --steps 4 --cpu-bf16 --authors]

A process's heap policy holds for its whole life, so the two cannot take turns inside one process: each round
runs `benchmarks/train_throughput.py` twice, `--malloc system` and `--malloc reuse`, in fresh processes one after
the other (which goes first alternates between rounds), with the same batches, seeds and options. Inside each
process ours, stock T5 and the authors' stand-in all run on that process's heap. Prints, per task and precision,
every contestant's mean s/step with each heap over the rounds, system/reuse (above 1: the reused heap is faster),
and the resident peaks. With --authors it also prints each as it ships: the authors' stand-in (fp32) on glibc's
heap, which their code runs on, over ours on the reused heap, training's default, per precision of ours, over
alternating tasks (training alternates one batch of each).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

THROUGHPUT = Path(__file__).resolve().parent / "train_throughput.py"
HEAPS = ("system", "reuse")
TIMES = {"ours": ("s_per_step", "peak_mib"), "stock T5": ("stock_s_per_step", "stock_peak_mib"),
         "authors' stand-in": ("authors_s_per_step", "authors_peak_mib")}  # contestant: its row's (time, peak)
FP32 = "cpu (fp32)"  # the device of train_throughput.py's fp32 rows; the authors' stand-in runs in fp32 only


def run_rounds(rounds: int, options: list[str], folder: Path) -> dict[str, list[list[dict]]]:
    """{heap: [the rows of train_throughput.py's --json, one list per round]}."""
    runs: dict[str, list[list[dict]]] = {heap: [] for heap in HEAPS}
    for round_ in range(rounds):
        for heap in HEAPS if round_ % 2 == 0 else HEAPS[::-1]:
            out = folder / f"{heap}-{round_}.json"
            print(f"round {round_ + 1}/{rounds}, heap {heap}: load average {os.getloadavg()[0]:.2f}", flush=True)
            subprocess.run([sys.executable, str(THROUGHPUT), "--malloc", heap, "--json", str(out), *options],
                           check=True, stdout=subprocess.DEVNULL)
            runs[heap].append(json.loads(out.read_text()))
    return runs


def report(runs: dict[str, list[list[dict]]]) -> list[dict]:
    """One line per (task, precision, contestant): mean s/step and peak RSS per heap, system/reuse."""
    lines = []
    for i, first in enumerate(runs["system"][0]):
        for contestant, (time_key, peak_key) in TIMES.items():
            if time_key not in first or (contestant == "authors' stand-in" and first["device"] != FP32):
                continue  # the stand-in's time is the same in every precision's rows: reported once
            line = {"task": first["task"], "device": first["device"], "contestant": contestant}
            for heap in HEAPS:
                line[f"{heap}_s_per_step"] = float(np.mean([rows[i][time_key] for rows in runs[heap]]))
                line[f"{heap}_peak_mib"] = max(rows[i][peak_key] for rows in runs[heap])
            line["system_over_reuse"] = line["system_s_per_step"] / line["reuse_s_per_step"]
            lines.append(line)
            print(f"  {line['device']} {line['task']:<10} {contestant:<18} system heap {line['system_s_per_step']:7.3f}"
                  f" s/step, reused heap {line['reuse_s_per_step']:7.3f} s/step: system/reuse "
                  f"{line['system_over_reuse']:.2f}x; peak RSS {line['system_peak_mib']:.0f} / "
                  f"{line['reuse_peak_mib']:.0f} MiB", flush=True)
    return lines


def as_shipped(lines: list[dict]) -> list[dict]:
    """Per precision of ours, over alternating tasks: the authors' stand-in on glibc's heap / ours on the reused
    heap (above 1: ours is faster). Empty without the stand-in."""
    authors = [line for line in lines if line["contestant"] == "authors' stand-in"]
    if not authors:
        return []
    theirs = sum(line["system_s_per_step"] for line in authors)
    shipped = []
    for device in dict.fromkeys(line["device"] for line in lines):
        ours = sum(line["reuse_s_per_step"] for line in lines if line["device"] == device
                   and line["contestant"] == "ours")
        shipped.append({"ours": device, "authors_system_s_per_pair": theirs, "ours_reuse_s_per_pair": ours,
                        "authors_over_ours": theirs / ours})
        print(f"  as each ships, over alternating tasks: authors' stand-in (fp32, system heap) {theirs:.3f} s per "
              f"pair of steps / ours ({device}, reused heap) {ours:.3f} s: {theirs / ours:.2f}x", flush=True)
    return shipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="pairs of processes (system, reuse)")
    parser.add_argument("--json", type=Path, help="write the lines here too")
    args, options = parser.parse_known_args()
    if "--malloc" in options:
        parser.error("--malloc is this benchmark's to set: it runs both")
    with tempfile.TemporaryDirectory() as folder:
        lines = report(run_rounds(args.rounds, options, Path(folder)))
    shipped = as_shipped(lines)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"lines": lines, "as_shipped": shipped}, indent=1) + "\n")


if __name__ == "__main__":
    main()
