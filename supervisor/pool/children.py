"""One run's supervisor as a child process of the pool (forked by its launcher,
or exec'd where there is none): starting it (own session,
output to its log, PR_SET_PDEATHSIG), seeing that it exited, ending what its run
left running, and reading what it left behind (entries shipped, its last line
of output).

Each child's stdout/stderr goes to `$FLYWHEEL_HOME/state/<run_id>/pool-output.log`
so the pool's status view stays readable.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from workers.common.redact import Redactor
from workers.common.spool import ShipperState
from workers.run_processes import RunProcesses, signal_group

if TYPE_CHECKING:
    from supervisor.pool.launched import Launcher

OUTPUT_LOG = "pool-output.log"
_PR_SET_PDEATHSIG = 1


class CannotStart(Exception):
    """A run's supervisor could not be started; the message says why."""


def parent_death_hook(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec_fn that makes the child get `sig` when this process dies, or None
    where prctl does not exist. libc is looked up here, before the fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    signum = int(sig)

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signum)
        # The parent may have died between fork and prctl: then nobody would signal us.
        if os.getppid() != parent:
            os.kill(os.getpid(), signum)

    return hook


def open_output_log(state_dir: Path) -> int:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)
    fd = os.open(state_dir / OUTPUT_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    os.write(fd, f"--- pool started this run's supervisor at {stamp} ---\n".encode())
    return fd


class Child(Protocol):
    """One run's supervisor as the pool sees it, whether exec'd (PopenChild) or
    forked by the launcher (launched.LaunchedChild)."""

    pid: int

    @property
    def returncode(self) -> int | None:
        """Its exit status once reaped, else None."""

    def exited(self) -> bool:
        """True once it has exited (it is not reaped yet)."""

    def reap(self) -> int:
        """SIGKILL what it left in its process group, reap it; its exit status
        (negative: killed by that signal)."""

    def signal(self, sig: int) -> None:
        """`sig` to the supervisor only."""

    def kill_group(self) -> None:
        """SIGKILL to its process group (while it is not reaped)."""


class PopenChild:
    """A supervisor exec'd by the pool itself."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self.pid = proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def exited(self) -> bool:
        return self._proc.returncode is not None or exited_unreaped(self.pid)

    def reap(self) -> int:
        # While its zombie pins the group id, nothing else can have taken it.
        signal_group(self.pid, signal.SIGKILL)
        return self._proc.wait()

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill_group(self) -> None:
        signal_group(self.pid, signal.SIGKILL)


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    state_dir: Path,
    preexec: Callable[[], None] | None,
    launcher: Launcher | None = None,
) -> Child:
    """Start one run's supervisor, its output appended to its log in `state_dir`:
    forked by `launcher` where there is one, else exec'd. CannotStart says why it
    could not be."""
    try:
        log_fd = open_output_log(state_dir)
    except OSError as exc:
        raise CannotStart(f"could not create {state_dir}: {exc.strerror}") from None
    try:
        if launcher is not None:
            from supervisor.pool.launched import LauncherGone

            try:
                return launcher.spawn(argv, env, log_fd)
            except LauncherGone:
                pass
        # Its own session: a Ctrl-C on the terminal reaches only the pool.
        return PopenChild(subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
            close_fds=True,
        ))
    except OSError as exc:
        raise CannotStart(f"could not start its supervisor: {exc.strerror or exc}") from None
    finally:
        os.close(log_fd)


def end_run_processes(state_dir: Path) -> bool:
    """Kill what the run's supervisor started (Codex and every process of its
    run, by the containment record it keeps in its state folder); True once
    none lives. Never waits: the pool asks again on its next turn."""
    record = RunProcesses.load(state_dir)
    return record is None or record.end(state_dir, timeout=0.0) is not None


def exited_unreaped(pid: int) -> bool:
    """True once the child has exited; it stays a zombie (its pid, and so its
    process group id, cannot be reused) until the pool reaps it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def read_delivered(state_dir: Path) -> int | None:
    """Entries shipped so far, from the run's shipper state file; None if unknown
    (not written yet, or caught half-written)."""
    state = ShipperState.read(state_dir)
    delivered = state.delivered if state is not None else None
    if isinstance(delivered, int) and not isinstance(delivered, bool) and delivered >= 0:
        return delivered
    return None


def last_output_line(path: Path, secret: str) -> str:
    """The last non-blank line the supervisor printed (its error message), with the
    token masked should it ever appear."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(size - 4096, 0))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    for line in reversed(tail.splitlines()):
        line = line.strip()
        if line and not line.startswith("--- pool"):
            return Redactor.of(secret).text(line)
    return ""


_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")


def without_prefix(line: str, run_id: str) -> str:
    """A supervisor's line without its timestamp and `flywheel-bootstrap: run <id>: `
    (the pool's view already names the run) and without a repeated `error: `."""
    line = _STAMP.sub("", line)
    for prefix in ("flywheel-bootstrap: ", f"run {run_id}: ", "error: "):
        line = line.removeprefix(prefix)
    return line
