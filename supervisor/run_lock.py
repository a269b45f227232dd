"""One bootstrap per run on a host.

A run's state folder (spool, seq counter, containment record) has one writer:
two starts of the same run sharing it would send different entries under one
seq and two terminal reports. So a start locks `run.lock` in the folder before
the bootstrap fetch. The lock is an `flock` on an open file: the workers forked
later inherit it, so an orphaned worker still finishing its last write keeps
the run locked, and the kernel frees it when the last of them exits, however
they end. Codex never holds it (the descriptor is close-on-exec).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from workers.common.errors import ConfigError
from workers.common.files import open_private

LOCK_NAME = "run.lock"
_RETRY_EVERY = 0.1


def hold_run(state_dir: Path, run_id: str, wait: float, say: Callable[[str], None]) -> int:
    """Lock the run for this process and its forks; returns the descriptor,
    to keep open. Waits up to `wait` seconds for an earlier start; then
    ConfigError (exit 2: nothing was asked of the backend)."""
    fd = open_private(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    deadline = time.monotonic() + wait
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise ConfigError(
                    f"run {run_id} is already being run by another bootstrap on this machine (its processes hold "
                    f"{state_dir / LOCK_NAME}); not starting it twice") from None
            if not waited:
                say(f"run {run_id}: waiting up to {wait:g} s for an earlier bootstrap of this run to end")
                waited = True
            time.sleep(_RETRY_EVERY)
            continue
        if os.fstat(fd).st_nlink == 0:  # `prune` removed the folder meanwhile (it holds the lock to do so)
            os.close(fd)
            raise ConfigError(f"run {run_id}'s state folder {state_dir} was removed (by prune?) while this "
                              "start began; start it again")
        return fd


def run_locked(state_dir: Path) -> bool:
    """Whether a bootstrap of this run, or a process it forked, is still alive."""
    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # frees the shared lock taken just to look
    return False


def lock_to_remove(state_dir: Path) -> int | None:
    """The run's lock, for removing its folder; None while anything of the run
    holds it. Kept until the folder is gone: a start that opened the lock file
    meanwhile then finds it removed (`hold_run`), instead of going on in a
    folder that is no more."""
    try:
        fd = open_private(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
