"""Wall time, peak memory and test metrics of the classic baselines (SASRec, LightGCN), next to popularity.

    python benchmarks/classic_baselines.py --dataset beauty --id-scheme p5 [--model sasrec --model lightgcn]
        [--mirror ../shared/data] [--workdir DIR] [--set sasrec.lr=2e-3] [--json figures.json]

Everything goes through the library, as a pipeline run would: download (from the mirror) -> preprocess ->
graph -> popularity baseline (elmrec.evaluate.evaluate_baselines) -> for each model train_classic (afresh) +
evaluate_classic. Each model runs in a fresh interpreter, so its peak resident memory (ru_maxrss) is its own;
its wall time covers training (with validation every epoch) and the test evaluation, not the data stages.
Torch uses every core (`--threads`, default os.cpu_count()).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elmrec.config import Settings, settings_for

METRICS = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")
TASKS = ("direct", "sequential")


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def settings_of(args: argparse.Namespace, model: str) -> Settings:
    overrides: dict[str, Any] = {"workdir": str(args.workdir), "recommender": model,
                                 "data": {"dataset": args.dataset, "id_scheme": args.id_scheme,
                                          "mirror": str(Path(args.mirror).resolve())},
                                 "eval": {"split": "test"}}
    for item in args.set:
        name, _, value = item.partition("=")
        *parents, leaf = name.split(".")
        node = overrides
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = parse_value(value)
    return settings_for("paper", overrides)


def prepare(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Data stages (skipped when their outputs exist) and the popularity baseline's test metrics."""
    from elmrec.data.download import download
    from elmrec.data.preprocess import preprocess
    from elmrec.evaluate import evaluate_baselines
    from elmrec.graph import build_graph
    from elmrec.paths import WorkPaths

    settings = settings_of(args, "sasrec")
    paths = WorkPaths.from_settings(settings)
    start = time.perf_counter()
    if not paths.graph.adjacency.is_file():
        download(settings.data, paths.raw, settings.resolved_mirror())
        preprocess(settings.data, settings.seed, paths.raw, paths.data)
        build_graph(paths.data, paths.graph)
    baselines = evaluate_baselines(settings, paths)
    print(f"data stages + baselines: {time.perf_counter() - start:.1f} s ({paths.derived})", flush=True)
    return {task: {m: baselines["popularity"][task]["score"][m] for m in METRICS} for task in TASKS}


def train_and_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """The measured work of one model, in this (fresh) process."""
    import torch

    from elmrec.classic import evaluate_classic, train_classic
    from elmrec.paths import WorkPaths

    torch.set_num_threads(args.threads)
    settings = settings_of(args, args.child)
    paths = WorkPaths.from_settings(settings)
    start = time.perf_counter()
    result = train_classic(settings, paths, resume=False)
    trained = time.perf_counter()
    metrics = evaluate_classic(settings, paths)
    return {"train_s": trained - start, "eval_s": time.perf_counter() - trained,
            "wall_s": time.perf_counter() - start, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            / 1024, "epochs": len(result.history), "best_epoch": result.best_epoch, "device": result.device,
            "metrics": {task: {m: metrics[task]["score"][m] for m in METRICS} for task in TASKS}}


def measure(args: argparse.Namespace, model: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", model, "--dataset", args.dataset, "--id-scheme", args.id_scheme,
               "--mirror", args.mirror, "--workdir", str(args.workdir), "--threads", str(args.threads),
               *[f"--set={item}" for item in args.set]]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)  # its log goes to stderr
    if done.returncode != 0:
        raise SystemExit(f"{model} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(name: str, figures: dict[str, Any], metrics: dict[str, dict[str, float]]) -> str:
    cells = " ".join(f"{metrics[t][m]:.4f}" for t in TASKS for m in METRICS)
    return f"{name:<11} {figures.get('wall_s', 0):8.1f} {figures.get('peak_rss_mib', 0):8.0f} " \
           f"{figures.get('epochs', '-'):>6} {cells}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="beauty")
    parser.add_argument("--id-scheme", choices=["p5", "shuffled"], default="p5")
    parser.add_argument("--model", action="append", choices=["sasrec", "lightgcn"])
    parser.add_argument("--mirror", default=os.environ.get("ELMREC_MIRROR", "../shared/data"))
    parser.add_argument("--workdir", type=Path, help="keeps the data stages between calls (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting, dotted")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    args.workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="elmrec-classic-"))).resolve()
    if args.child:
        print(json.dumps(train_and_evaluate(args)))
        return
    print(f"{args.dataset} ({args.id_scheme} IDs), test split; {os.cpu_count()} cores, torch threads {args.threads}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    figures: dict[str, Any] = {"dataset": args.dataset, "id_scheme": args.id_scheme, "settings": args.set,
                               "popularity": prepare(args), "models": {}}
    for model in args.model or ["sasrec", "lightgcn"]:
        figures["models"][model] = measure(args, model)
        figures["models"][model]["load_average"] = os.getloadavg()
    header = " ".join(f"{t[:3]}-{m}" for t in TASKS for m in METRICS)
    print(f"{'model':<11} {'wall s':>8} {'peak MiB':>8} {'epochs':>6} {header}")
    print(row("popularity", {}, figures["popularity"]))
    for model, measured in figures["models"].items():
        print(row(model, measured, measured["metrics"]))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
