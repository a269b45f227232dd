"""When the supervisor itself fails: the reason reported to the backend, the
traceback kept in the run's state folder, and the fault points tests use to
make it fail for real."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

from workers.common.files import open_private, write_all
from workers.common.redact import Redactor
from workers.common.spool import utc_now

CRASH_FILE = "crash.log"
# Fault injection for tests, like FLYWHEEL_FAULT_CRASH_WORKER: a comma-separated
# list of the fault points (`fault_point`) at which the supervisor raises.
FAULT_ENV = "FLYWHEEL_FAULT_CRASH_SUPERVISOR"


class InjectedFault(RuntimeError):
    """Raised at a fault point named in FLYWHEEL_FAULT_CRASH_SUPERVISOR."""


def fault_point(name: str) -> None:
    if name in os.environ.get(FAULT_ENV, "").split(","):
        raise InjectedFault(f"injected fault at '{name}'")


def crash_reason(exc: BaseException, redactor: Redactor) -> str:
    """The line reported with `error`: 'bootstrap failed: <type>: <message>'."""
    message = str(exc).strip()
    return redactor.text(f"bootstrap failed: {type(exc).__name__}" + (f": {message}" if message else ""))


def write_crash_file(state_dir: Path, exc: BaseException, redactor: Redactor) -> Path | None:
    """Append the traceback (secrets masked) to the state folder's crash file;
    None when even that cannot be written (a full disk, say)."""
    path = state_dir / CRASH_FILE
    text = "".join(traceback.format_exception(exc))
    record = f"--- {utc_now()} pid {os.getpid()}\n{redactor.text(text)}\n"
    try:
        fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            write_all(fd, record.encode("utf-8", "replace"))
        finally:
            os.close(fd)
    except OSError:
        return None
    return path
