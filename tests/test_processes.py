"""Detached processes: identity by pid and start time, readiness, failure messages, ending whole groups."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elmrec.app.processes import Proc, ServiceError, end, spawn, tail, wait_for

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process identity comes from /proc")


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_proc_is_its_pid_and_start_time() -> None:
    me = Proc.of(os.getpid())
    assert me.started is not None and me.alive()
    assert not Proc(os.getpid(), me.started - 1).alive()  # the same pid with another start time: a reused pid


def test_spawn_detaches_logs_and_end_stops_the_whole_group(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    # The service starts a grandchild in its own group and ignores nothing: `end` must stop both.
    code = ("import subprocess, sys, time; print('up', flush=True); "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print(child.pid, flush=True); time.sleep(60)")
    process = spawn(python(code), dict(os.environ), log, tmp_path)
    service = Proc.of(process.pid)
    wait_for(lambda: len(log.read_text().splitlines()) >= 4, process, "the service", log, timeout=30)
    lines = log.read_text().splitlines()
    assert lines[0] == "" and lines[1].startswith("--- ") and lines[2] == "up"  # headed by time and command
    grandchild = Proc.of(int(lines[3]))
    assert os.getsid(process.pid) == process.pid  # leads its own session: survives the caller's shell
    assert os.getpgid(grandchild.pid) == process.pid and grandchild.alive()
    assert end([service, Proc(12345678, None)], timeout=10) == [process.pid]  # only live processes are reported
    deadline = time.monotonic() + 10
    while grandchild.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not service.alive() and not grandchild.alive()
    process.wait(timeout=5)  # already reaped by alive(): this only settles the Popen object


def test_end_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "stubborn.log"
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")
    process = spawn(python(code), dict(os.environ), log, tmp_path)
    wait_for(lambda: "ready" in log.read_text().splitlines(), process, "the stubborn service", log, timeout=30)
    stubborn = Proc.of(process.pid)
    started = time.monotonic()
    assert end([stubborn], timeout=1) == [process.pid]
    assert not stubborn.alive() and time.monotonic() - started >= 1  # outlived SIGTERM's 1 s grace: SIGKILL
    process.wait(timeout=5)


def test_wait_for_names_the_log_when_a_service_dies_or_hangs(tmp_path: Path) -> None:
    log = tmp_path / "dies.log"
    dies = spawn(python("import sys; print('bad config', flush=True); sys.exit(3)"), dict(os.environ), log, tmp_path)
    with pytest.raises(ServiceError, match=rf"the server exited with code 3; see {log}:\n(.|\n)*bad config$"):
        wait_for(lambda: False, dies, "the server", log, timeout=30)
    dies.wait(timeout=5)
    hangs = spawn(python("import time; time.sleep(60)"), dict(os.environ), tmp_path / "hangs.log", tmp_path)
    try:
        with pytest.raises(ServiceError, match=r"the worker did not come up within 1s"):
            wait_for(lambda: False, hangs, "the worker", tmp_path / "hangs.log", timeout=1)
    finally:
        end([Proc.of(hangs.pid)])
        hangs.wait(timeout=5)
    assert tail(tmp_path / "missing.log") == "(no log)"
    assert tail(log, lines=1) == "bad config"


def test_an_exited_child_is_reaped_and_not_alive(tmp_path: Path) -> None:
    child = subprocess.Popen(python("pass"))
    proc = Proc.of(child.pid)
    deadline = time.monotonic() + 10
    while proc.alive() and time.monotonic() < deadline:  # alive() reaps our own zombie
        time.sleep(0.05)
    assert not proc.alive()
    child.wait(timeout=5)
