"""Training in several processes (`train.nproc` > 1): PyTorch DDP, one process per GPU (gloo on a CPU), run by
`torchrun`.

    launch(settings, paths)                     in the calling process (the Prefect task, the CLI)
      python -m torch.distributed.run --standalone --nproc-per-node N -m elmrec.distributed --settings-json F ...
        main()                                  in each of the N processes
          init_process_group (nccl on CUDA, gloo on CPU), then elmrec.train.train: every process builds the same
          batches and steps on its share of each (elmrec.train explains the split); rank 0 alone writes
          checkpoint/, last/ and history.json, as one process would
      -> the TrainResult `train` would have returned, read from the history.json rank 0 wrote

The processes' output is relayed to this module's logger line by line (rank 0 logs INFO, the others WARNING);
if one fails, LaunchFailed carries the failing rank's last lines. Rank 0 appends each finished epoch's record
to a progress file that `launch` reads every POLL_S seconds to call `on_epoch` (the Prefect task's progress).
MLflow is not touched here: the pipeline logs a training from its history.json, in the calling process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from elmrec.config import Settings
from elmrec.device import Device
from elmrec.paths import WorkPaths
from elmrec.train import EpochRecord, TrainResult, check_tasks, read_result, train

log = logging.getLogger(__name__)

POLL_S = 2.0  # how often launch looks for newly finished epochs
TAIL_LINES = 30  # lines of the failing process shown in LaunchFailed
RANK_PREFIX = re.compile(r"^\[default(\d+)\]:")  # torchrun --tee: each process's lines start with [default<rank>]:
ROOT_CAUSE = re.compile(r"Root Cause[^\n]*\n(?:.*\n)*?\s*rank\s*:\s*(\d+)")  # torchrun's summary of the failure


class LaunchFailed(RuntimeError):
    """The distributed training exited with an error; the message ends with the failing rank's last lines."""


def wanted(settings: Settings) -> bool:
    """Whether the training runs under torchrun: several processes, or chosen CUDA devices."""
    return settings.train.nproc > 1 or settings.train.devices is not None


def launch(settings: Settings, paths: WorkPaths, resume: bool = True,
           on_epoch: Callable[[EpochRecord], None] | None = None) -> TrainResult:
    """Train in `settings.train.nproc` processes under torchrun; `train`'s result and `on_epoch` calls."""
    check_tasks(settings)  # the errors a process would raise before any work, raised here
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    env.update(_visible_devices(settings))
    with tempfile.TemporaryDirectory(prefix="elmrec-ddp-") as tmp:
        folder = Path(tmp)
        (folder / "settings.json").write_text(settings.model_dump_json())
        progress = folder / "epochs.jsonl"
        command = torchrun_command(settings.train.nproc, folder / "settings.json", progress, resume, folder / "logs")
        log.info("training in %d processes: %s", settings.train.nproc, " ".join(command[1:]))
        code, tails = _run(command, env, progress, on_epoch)
    if code != 0:
        rank, lines = _failure(tails)
        raise LaunchFailed(f"distributed training failed (exit status {code}); {rank}'s last lines:\n"
                           + "\n".join(lines))
    return read_result(paths.run(settings))


def torchrun_command(nproc: int, settings_file: Path, progress: Path, resume: bool, log_dir: Path) -> list[str]:
    """torchrun starting `main` in `nproc` processes on this machine (a free rendezvous port: --standalone), each
    process's output teed to the console with a [default<rank>]: prefix."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "--tee=3",
            f"--log-dir={log_dir}", "-m", "elmrec.distributed", "--settings-json", str(settings_file),
            "--progress", str(progress), *(["--resume"] if resume else [])]


def _visible_devices(settings: Settings) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES for train.devices (indices into the devices visible here); checks there are enough
    GPUs for train.nproc when training on CUDA."""
    cfg = settings.train
    if Device.resolve(cfg.device, cfg.precision).device.type != "cuda":
        return {}
    count = torch.cuda.device_count()
    wanted_devices = cfg.devices if cfg.devices is not None else list(range(cfg.nproc))
    if max(wanted_devices) >= count:
        raise ValueError(f"train.nproc / train.devices: CUDA devices {wanted_devices} wanted, {count} visible")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = visible.split(",") if visible else [str(i) for i in range(count)]
    return {"CUDA_VISIBLE_DEVICES": ",".join(names[i] for i in wanted_devices)}


def _run(command: Sequence[str], env: dict[str, str], progress: Path,
         on_epoch: Callable[[EpochRecord], None] | None) -> tuple[int, dict[str | int, deque[str]]]:
    """Run torchrun, relaying its output and the epochs of `progress`; (exit status, last lines per rank,
    torchrun's own under "torchrun"). Ends the processes if this one is interrupted."""
    tails: dict[str | int, deque[str]] = {}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace")
    relay = threading.Thread(target=_relay, args=(process.stdout, tails), name="elmrec-torchrun-output", daemon=True)
    relay.start()
    reported = 0
    try:
        while True:
            try:
                code = process.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                reported = _report(progress, reported, on_epoch)
        relay.join()
        _report(progress, reported, on_epoch)
    finally:
        if process.poll() is None:  # interrupted here (Ctrl-C, an on_epoch that raised): end the training
            process.terminate()  # torchrun passes it on to the processes
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return code, tails


def _relay(stream: IO[str], tails: dict[str | int, deque[str]]) -> None:
    """Log every line of torchrun's output and keep each rank's last TAIL_LINES."""
    for raw in stream:
        line = raw.rstrip("\n").split("\r")[-1]  # a progress bar redraws with carriage returns
        if not line.strip():
            continue
        match = RANK_PREFIX.match(line)
        source: str | int = int(match.group(1)) if match else "torchrun"
        tails.setdefault(source, deque(maxlen=TAIL_LINES)).append(line)
        log.info("%s", line)


def _report(progress: Path, reported: int, on_epoch: Callable[[EpochRecord], None] | None) -> int:
    """Call on_epoch for the complete lines of `progress` after the first `reported`; how many there are now."""
    if not progress.is_file():
        return reported
    lines = progress.read_text().split("\n")[:-1]  # the last piece is "" or a line still being written
    for line in lines[reported:]:
        if on_epoch is not None:
            on_epoch(EpochRecord(**json.loads(line)))
    return max(reported, len(lines))


def _failure(tails: dict[str | int, deque[str]]) -> tuple[str, list[str]]:
    """(which process, its last lines): the rank torchrun names as the root cause, else one that printed a
    traceback, else torchrun itself."""
    summary = "\n".join(tails.get("torchrun", []))
    named = ROOT_CAUSE.search(summary)
    ranks = [r for r in tails if isinstance(r, int)]
    if named and int(named.group(1)) in tails:
        rank: str | int = int(named.group(1))
    else:
        rank = next((r for r in ranks if any("Traceback" in line for line in tails[r])), "torchrun")
    lines = list(tails.get(rank, []))
    if rank != "torchrun":
        lines += ["", "torchrun:", *list(tails.get("torchrun", []))[-8:]]
    return (f"rank {rank}" if isinstance(rank, int) else "torchrun"), lines


# ---------------------------------------------------------------- in each process


@record  # an uncaught error's traceback goes to torchrun, which names the failing rank
def main(argv: Sequence[str] | None = None) -> None:
    """One process of a distributed training (torchrun sets RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous)."""
    parser = argparse.ArgumentParser(prog="python -m elmrec.distributed", description=main.__doc__)
    parser.add_argument("--settings-json", type=Path, required=True, help="Settings as JSON (launch writes it)")
    parser.add_argument("--progress", type=Path, help="rank 0 appends each finished epoch's record here (JSON lines)")
    parser.add_argument("--resume", action="store_true", help="continue an unfinished attempt with these settings")
    args = parser.parse_args(argv)
    settings = Settings.model_validate_json(args.settings_json.read_text())
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s")
    cuda = Device.resolve(settings.train.device, settings.train.precision).device.type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)  # "cuda" is this process's GPU from here on
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        on_epoch = _appender(args.progress) if args.progress is not None and rank == 0 else None
        train(settings, WorkPaths.from_settings(settings), resume=args.resume, on_epoch=on_epoch)
    finally:
        dist.destroy_process_group()


def _appender(path: Path) -> Callable[[EpochRecord], None]:
    def append(epoch: EpochRecord) -> None:
        with path.open("a") as file:
            file.write(json.dumps(asdict(epoch)) + "\n")
    return append


if __name__ == "__main__":
    main()
