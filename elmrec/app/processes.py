"""Detached service processes: start one with its output in a log, wait until it is ready, end it for good.

A `Proc` is a pid plus the process's start time, so a recorded process is recognised even after its pid has
been reused. Each process is started leading its own session (it outlives the shell that started it), and
`end` signals its whole process group. POSIX; start times come from /proc where it exists.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO


class ServiceError(RuntimeError):
    """A service did not come up; the message names the log to read and quotes its end."""


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from the state field on ([0] state, [19] start time); None without /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


@dataclass(frozen=True)
class Proc:
    """A started process: its pid and start time (clock ticks after boot, from /proc; None elsewhere)."""

    pid: int
    started: int | None

    @classmethod
    def of(cls, pid: int) -> Proc:
        stat = _proc_stat(pid)
        return cls(pid, int(stat[19]) if stat else None)

    def alive(self) -> bool:
        """True while this very process runs: a zombie, or a reused pid with another start time, is not it."""
        try:
            os.waitpid(self.pid, os.WNOHANG)  # reap it, should it be our own exited child
        except ChildProcessError:
            pass
        try:
            os.kill(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        stat = _proc_stat(self.pid)
        if stat is None:
            return True  # no /proc: existence is all there is to check
        return stat[0] != "Z" and (self.started is None or int(stat[19]) == self.started)


def tail(log: Path, lines: int = 25) -> str:
    """The last `lines` lines of a log, for error messages."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def log_to(log: Path, command: list[str]) -> Iterator[BinaryIO]:
    """`log` opened for appending, headed by the time and the command about to write to it."""
    with log.open("ab") as out:
        out.write(f"\n--- {datetime.now().isoformat(timespec='seconds')} {shlex.join(command)}\n".encode())
        out.flush()
        yield out


def spawn(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start `command` detached: a new session (it survives this shell), stdin closed, output appended to `log`."""
    with log_to(log, command) as out:
        return subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str, log: Path,
             timeout: float) -> None:
    """Poll `ready()` until it holds; ServiceError if `process` exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and not ready():
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} did not come up within {timeout:.0f}s; see {log}:\n{tail(log)}")
        time.sleep(0.3)
    if process.returncode is not None:
        raise ServiceError(f"{what} exited with code {process.returncode}; see {log}:\n{tail(log)}")


def end(procs: list[Proc], timeout: float = 20.0) -> list[int]:
    """SIGTERM each live process's group (each leads its session), SIGKILL what outlives `timeout`; their pids."""
    live = [p for p in procs if p.alive()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in live:
            try:
                if os.getpgid(proc.pid) == proc.pid:
                    os.killpg(proc.pid, sig)
                else:
                    os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while any(p.alive() for p in live) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not any(p.alive() for p in live):
            break
    return [p.pid for p in live]
