"""What every worker process shares: its mailbox, its liveness tick, and the
guard that takes the run's processes (Codex and all it started) down when the
supervisor dies.

A worker talks to the supervisor through two one-way SimpleQueues made for that
incarnation only (no feeder threads, so nothing is lost in a buffer when it is
killed, and a queue left locked by a dead worker is simply dropped with it).
Liveness is a double in shared memory, written without a lock so a worker
killed mid-write can never leave a lock held; the supervisor reads it like
gunicorn's arbiter reads its workers' tmp files.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multiprocess.connection import wait as wait_ready  # type: ignore[import-untyped]

from workers.messages import Command, Event
from workers.run_processes import RunProcesses, drop_secrets

PR_SET_PDEATHSIG = 1
TICK_EVERY = 1.0
# A main loop silent this long is stuck even though its process still runs;
# every blocking call it makes (HTTP, file I/O) is bounded well below this.
STALL_LIMIT = 120.0


def _libc_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: the parent-pid check in the ticker still catches it


# Looked up once, at import (in the pool's launcher, before any fork): each
# worker, and Codex between fork and exec, only calls it. Loading libc and
# making its function types in every child took ~0.2 ms and 50 page copies.
_PRCTL = _libc_prctl()


def set_parent_death_signal(sig: int) -> None:
    """Ask Linux to send `sig` to this process when its parent dies."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


@dataclass(frozen=True)
class Channels:
    """One incarnation's link to the supervisor. Built by the supervisor,
    inherited by the forked worker."""

    name: str
    commands: Any  # SimpleQueue: supervisor -> worker
    events: Any  # SimpleQueue: worker -> supervisor
    liveness: Any  # shared c_double: monotonic time of the last tick
    run_processes: RunProcesses
    parent_pid: int
    stall_limit: float = STALL_LIMIT  # main-loop silence taken for a hang


class Mailbox:
    """The worker's side of its channels."""

    def __init__(self, channels: Channels) -> None:
        self.channels = channels
        self.name = channels.name
        self._progress = time.monotonic()

    def tick(self) -> None:
        """The main loop is making progress."""
        self._progress = time.monotonic()

    @property
    def progress_age(self) -> float:
        return time.monotonic() - self._progress

    def put(self, event: Event) -> None:
        self.channels.events.put(event)

    def wait(self, timeout: float, extra: Iterable[Any] = ()) -> list[Command]:
        """Wait for commands (or for one of `extra`'s objects to be readable);
        returns the commands that arrived, possibly none."""
        self.tick()
        reader = self.channels.commands._reader
        wait_ready([reader, *extra], timeout=max(0.0, timeout))
        messages: list[Command] = []
        while reader.poll(0):
            messages.append(self.channels.commands.get())
        self.tick()
        return messages


def _ticker(mailbox: Mailbox, state_dir: Path) -> None:
    channels = mailbox.channels
    while True:
        if os.getppid() != channels.parent_pid:
            _orphaned(channels, state_dir)
        if mailbox.progress_age < channels.stall_limit:
            channels.liveness.value = time.monotonic()
        time.sleep(TICK_EVERY)


# How long an orphaned worker waits for the run's processes to die.
ORPHAN_KILL_WAIT = 5.0


def _orphaned(channels: Channels, state_dir: Path) -> None:
    """The supervisor is gone: nobody else will end the run's processes (and
    free its GPUs), so do it and leave."""
    drop_secrets(state_dir)
    channels.run_processes.end(state_dir, ORPHAN_KILL_WAIT)
    os._exit(1)


def run_worker(target: Callable[..., None], channels: Channels, log_path: Path, *args: Any) -> None:
    """Entry point of every worker process (the `target` of its Process)."""
    set_parent_death_signal(signal.SIGTERM)

    def on_term(signum: int, frame: object) -> None:
        if os.getppid() != channels.parent_pid:
            _orphaned(channels, log_path.parent)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C, Ctrl-\ and a closed terminal reach the whole foreground group;
    # only the supervisor acts on them (it stops Codex and reports the run,
    # which needs its workers alive until then).
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    if os.getppid() != channels.parent_pid:
        _orphaned(channels, log_path.parent)
    if os.environ.get("FLYWHEEL_FAULT_CRASH_WORKER") == channels.name:
        os._exit(70)  # fault injection for tests: a worker that dies instantly, forever
    # A worker's own stderr goes to a private file: a traceback there must not
    # spill onto the user's terminal, and the supervisor reports the restart.
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.dup2(fd, 2)
    os.close(fd)
    mailbox = Mailbox(channels)
    channels.liveness.value = time.monotonic()
    threading.Thread(target=_ticker, args=(mailbox, log_path.parent), daemon=True, name="liveness").start()
    try:
        target(mailbox, *args)
    except Exception:
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        os._exit(70)
    os._exit(0)
