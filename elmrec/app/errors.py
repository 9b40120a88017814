"""How the command line ends: one `error: …` line for the failures a user causes and can fix, the full story in a
log file under the work dir (or on the terminal with `--verbose`).

Expected failures (exit status 2): bad data (elmrec.data's DataError, DownloadError), bad settings (pydantic's
ValidationError, ValueError, a bad --config file), a stage whose upstream output is missing, a work dir that
cannot be written, a full-size T5 without weights (RandomInitRefused), an unfinished training to evaluate
(UnfinishedTraining). Ctrl-C exits 130 (elmrec.app.interrupts); a training resumes from its last saved epoch when
the same command runs again. Anything else is a bug: its traceback is printed as Python would.

While a flow runs, the ERROR records of Prefect's and elmrec's loggers (Prefect's own tracebacks of the failed
task and flow run) go to the log file instead of the terminal; INFO progress stays on the terminal, and the
records still reach the Prefect API (its UI shows them).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from elmrec.stages import MissingUpstream  # raised by `elmrec task` and by the flow; named here for the CLI

EXIT_ERROR = 2  # an expected failure: the `error: …` line says what to fix
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT
RESUME_HINT = "rerun the same command to resume (training continues from its last saved epoch)"
DIVERTED = ("prefect", "elmrec")  # loggers whose ERROR records go to the log file unless --verbose


CHEAP = (ValidationError, ValueError, MissingUpstream)  # ValueError: DataError, settings, ConfigFileError
HEAVY = (("elmrec.paths", "NotWritableError"), ("elmrec.data.download", "DownloadError"),  # (module, class)
         ("elmrec.pretrained", "RandomInitRefused"), ("elmrec.checkpoint", "UnfinishedTraining"))


def is_expected(error: BaseException) -> bool:
    """Whether `error` ends with one line. The modules of HEAVY import torch and transformers: a class is
    looked up only when its module is loaded (an error of a module never imported cannot have been raised)."""
    if isinstance(error, CHEAP):
        return True
    for module, name in HEAVY:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(error, getattr(loaded, name)):
            return True
    return False


def describe(error: BaseException) -> str:
    """The error as one line: a validation error's fields, a message's lines joined, an OS error's file."""
    if isinstance(error, ValidationError):
        fields = []
        for item in error.errors():
            where = ".".join(str(part) for part in item["loc"])
            shown = "" if isinstance(item.get("input"), dict) else f" (got {item.get('input')!r})"
            fields.append(f"{where}: {item['msg']}{shown}" if where else f"{item['msg']}")
        return "invalid settings: " + "; ".join(fields)
    text = "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    filename = getattr(error, "filename", None)
    if isinstance(error, OSError) and filename and str(filename) not in text:
        text = f"{filename}: {text}"
    return text


class LogFile:
    """`<workdir>/logs/elmrec-<time>-<pid>.log`, created only when something is written to it."""

    def __init__(self, workdir: Path) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.path = workdir / "logs" / f"elmrec-{stamp}-{os.getpid()}.log"
        self.handler: logging.Handler | None = None

    def _open(self) -> logging.Handler:
        if self.handler is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handler = logging.FileHandler(self.path, encoding="utf-8")
            self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        return self.handler

    def record(self, record: logging.LogRecord) -> None:
        self._open().handle(record)

    def traceback(self, error: BaseException) -> Path | None:
        """Write the error's full traceback; the file, or None when it cannot be written."""
        try:
            handler = self._open()
            handler.acquire()
            try:
                text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
                handler.stream.write(f"--- the error that ended the command ---\n{text}")
                handler.flush()
            finally:
                handler.release()
        except OSError:
            return None
        return self.path

    def close(self) -> None:
        if self.handler is not None:
            self.handler.close()


class ErrorsToFile(logging.Filter):
    """A terminal handler's filter: ERROR records of Prefect's and elmrec's loggers go to the log file instead
    (once each, however many terminal handlers see them)."""

    def __init__(self, log: LogFile) -> None:
        super().__init__()
        self.log = log
        self.last: logging.LogRecord | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.name.startswith(DIVERTED):
            return True
        if record is not self.last:
            self.last = record
            try:
                self.log.record(record)
            except OSError:
                return True  # no log file: the terminal keeps the record
        return False


@contextmanager
def divert_errors(log: LogFile) -> Iterator[None]:
    """While in the block, the filter is on every terminal handler (those of the root logger and of any other
    logger); enter it once Prefect has configured logging (it replaces the root logger's handlers)."""
    divert = ErrorsToFile(log)
    loggers = [logging.getLogger(), *(logger for logger in logging.root.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    handlers = {handler for logger in loggers for handler in logger.handlers
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)}
    for handler in handlers:
        handler.addFilter(divert)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(divert)


def report(error: BaseException, log: LogFile | None, verbose: bool) -> int:
    """Print the `error: …` line (the traceback first with --verbose); the exit status."""
    if isinstance(error, KeyboardInterrupt):
        print(f"\nerror: interrupted; {RESUME_HINT}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if verbose:
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    where = log.traceback(error) if log is not None and not verbose else None
    suffix = f" (traceback in {where})" if where else ""
    print(f"error: {describe(error)}{suffix}", file=sys.stderr)
    return EXIT_ERROR
