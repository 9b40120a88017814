"""Ctrl-C during `elmrec run` / `elmrec task`: the flow run stops at once and the command exits 130.

A Ctrl-C in a terminal sends SIGINT to every process of the foreground process group: the command and the
temporary Prefect server it started (a subprocess). The server shut down at once, and the flow run, interrupted,
then tried to report its crashed state to it, retrying for minutes against a closed port (measured: still
hanging 79 s after the Ctrl-C). Here the temporary server starts in a session of its own, so the signal reaches
the command alone: the task and flow run end `Crashed` on a live server, the on-crashed hook marks the MLflow
run FAILED, and Prefect stops the server as the command exits. The next run resumes (training from its last
saved epoch).

Prefect is imported inside the functions: call them only when a flow is about to run.
"""

from __future__ import annotations

import functools
import logging
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any
from unittest import mock


@contextmanager
def prompt_interrupts() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt in the main thread, whatever handler was set before (a command started in
    the background of a script inherits an ignored SIGINT); an asyncio Runner keeps a handler already set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _not_the_stop_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Stopping temporary server")


@contextmanager
def shielded_temporary_server() -> Iterator[None]:
    """The temporary server Prefect starts when no PREFECT_API_URL is set (SubprocessASGIServer(), one per
    process) starts in a session of its own, out of reach of the terminal's Ctrl-C. Prefect stops it at exit,
    after its log and event workers have drained; its notice of that is dropped, so that the command's own
    lines come last. A server already set up in this process (a test harness's) is left alone."""
    from prefect.server.api.server import SubprocessASGIServer

    class OwnSession(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> Any:
            detached = functools.partial(subprocess.Popen, start_new_session=True)
            with mock.patch.object(subprocess, "Popen", detached):
                return super()._run_uvicorn_command()

    instances = getattr(SubprocessASGIServer, "_instances", None)  # a private detail: without it, no shield
    if instances is None or None in instances:
        yield
        return
    OwnSession()  # the instance Prefect's clients get from SubprocessASGIServer()
    try:
        yield
    finally:
        logging.getLogger("prefect").addFilter(_not_the_stop_notice)  # logged by that very logger, at exit
