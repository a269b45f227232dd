"""The pool's side of the launcher (`launcher.py`, which says how it works and
what it sends): start it, ask it for supervisors, and follow them through it.

A `LaunchedChild` is one supervisor the launcher forked; the pool handles it as
it handles an exec'd one (`children.PopenChild`): it asks whether it exited,
reaps it, signals it. The launcher does the signalling and the reaping, so a pid
is never signalled after it was reaped. Should the launcher die, its
supervisors get SIGTERM from the kernel (PR_SET_PDEATHSIG) and shut down as if
cancelled; the pool counts each as ended by SIGTERM once it is gone (a pidfd
follows it: it is no child of the pool's), so its GPUs are held until then,
and starts later runs by exec.
"""

from __future__ import annotations

import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence

from supervisor.pool.children import CannotStart, parent_death_hook
from supervisor.pool.launcher import MAX_MESSAGE, send

# Room for a forked supervisor's command line (it replaces the launcher's).
TITLE_ROOM = 4096
# How long a start may wait for the launcher's answer (its imports come first).
ANSWER_TIMEOUT = 120.0


class LauncherGone(Exception):
    """The launcher is not there (any more): start by exec instead."""


class LaunchedChild:
    """One supervisor forked by the launcher."""

    def __init__(self, launcher: Launcher, pid: int) -> None:
        self._launcher = launcher
        self.pid = pid
        self.returncode: int | None = None
        # Should the launcher die first, the supervisor is no child of ours nor
        # of the launcher any more: a pidfd still says when it is gone, and
        # never names a process that later took its pid.
        self._pidfd = _pidfd(pid)

    def exited(self) -> bool:
        self._launcher.pump()
        if self.returncode is None and self._launcher.gone:
            self._orphan_gone(block=False)
        return self.returncode is not None

    def reap(self) -> int:
        """Its exit status (Popen's returncode), once the launcher has reaped it
        (after SIGKILLing what it left in its process group)."""
        while self.returncode is None:
            if self._launcher.gone:
                self._orphan_gone(block=True)
            else:
                self._launcher.pump(block=True)
        self._close_pidfd()
        return self.returncode

    def signal(self, sig: int) -> None:
        if self._launcher.gone:
            self._signal_orphan(sig, group=False)
        else:
            self._launcher.signal(self.pid, sig, group=False)

    def kill_group(self) -> None:
        if self._launcher.gone:
            self._signal_orphan(signal.SIGKILL, group=True)
        else:
            self._launcher.signal(self.pid, signal.SIGKILL, group=True)

    def _orphan_gone(self, *, block: bool) -> None:
        """After the launcher died (its supervisors got SIGTERM from the
        kernel): ended by SIGTERM once the process is gone, so that its GPUs
        go to another run only then."""
        if self._pidfd is not None:
            if not _readable(self._pidfd, None if block else 0):
                return
        self.returncode = -signal.SIGTERM
        self._close_pidfd()

    def _signal_orphan(self, sig: int, *, group: bool) -> None:
        if self._pidfd is None or self.returncode is not None:
            return
        try:
            if group and not _readable(self._pidfd, 0):
                os.killpg(self.pid, sig)  # alive: its session (and group) id is still its own
            signal.pidfd_send_signal(self._pidfd, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def _readable(fd: int, timeout: float | None) -> bool:
    """Whether `fd` is readable within `timeout` seconds (None: wait for it);
    a pidfd is, once its process has exited."""
    poller = select.poll()  # not select(): the pool may hold fds past FD_SETSIZE
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else timeout * 1000))


def _pidfd(pid: int) -> int | None:
    """A pidfd for `pid` (Linux 5.3+), else None: then a launcher's death
    counts as its supervisors' end at once, as it did before pidfds."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class Launcher:
    """The pool's handle on its launcher process."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self._proc = proc
        self._sock = sock
        self._children: dict[int, LaunchedChild] = {}
        self._answers: list[dict[str, object]] = []
        self.gone = False

    @classmethod
    def start(cls, env: Mapping[str, str]) -> Launcher | None:
        """Start the launcher with `env` (the runs' base environment); None where it cannot be."""
        if not hasattr(os, "fork") or not hasattr(socket, "send_fds"):
            return None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor.pool.launcher", str(theirs.fileno()), " " * TITLE_ROOM],
                env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                pass_fds=[theirs.fileno()], start_new_session=True,
                preexec_fn=parent_death_hook(signal.SIGKILL),
            )
        except OSError:
            ours.close()
            return None
        finally:
            theirs.close()
        return cls(proc, ours)

    def fileno(self) -> int:
        return self._sock.fileno()

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], log_fd: int) -> LaunchedChild:
        """Have the launcher start one supervisor. CannotStart says why it could
        not; LauncherGone means: start it by exec."""
        if self.gone:
            raise LauncherGone
        try:
            send(self._sock, {"op": "start", "argv": list(argv), "env": dict(env)}, [log_fd])
        except OSError:
            # Too large for one datagram, or the launcher is gone.
            raise LauncherGone from None
        answer = self._answer()
        if answer.get("op") == "failed":
            raise CannotStart(f"could not start its supervisor: {answer.get('why')}")
        pid = answer.get("pid")
        assert isinstance(pid, int)
        child = LaunchedChild(self, pid)
        self._children[pid] = child
        return child

    def _answer(self) -> dict[str, object]:
        with selectors.DefaultSelector() as selector:
            selector.register(self._sock, selectors.EVENT_READ)
            while not self._answers:
                if self.gone:
                    raise LauncherGone
                if not selector.select(ANSWER_TIMEOUT):
                    self._lost()
                    raise LauncherGone
                self._receive()
        return self._answers.pop(0)

    def pump(self, block: bool = False) -> None:
        """Take in what the launcher said (children that exited)."""
        if self.gone:
            return
        self._sock.setblocking(block)
        try:
            self._receive()
            while not self.gone:
                self._sock.setblocking(False)
                self._receive()
        except BlockingIOError:
            pass
        finally:
            if not self.gone:
                self._sock.setblocking(True)

    def _receive(self) -> None:
        try:
            data = self._sock.recv(MAX_MESSAGE)
        except BlockingIOError:
            raise  # nothing more to take in now
        except OSError:
            data = b""
        if not data:
            self._lost()
            return
        message = json.loads(data)
        if message.get("op") == "exited":
            child = self._children.pop(message["pid"], None)
            if child is not None:
                child.returncode = int(message["code"])
        else:
            self._answers.append(message)

    def signal(self, pid: int, sig: int, *, group: bool) -> None:
        if self.gone:
            return
        try:
            send(self._sock, {"op": "signal", "pid": pid, "sig": int(sig), "group": group})
        except OSError:
            self._lost()

    def _lost(self) -> None:
        """The launcher died (or hangs, and is killed): its supervisors got
        SIGTERM from the kernel, and each is over once it is gone."""
        self.gone = True
        self._children.clear()  # each is followed by its pidfd from now on (LaunchedChild)
        self._end()

    def close(self) -> None:
        """The pool is done with it: the launcher exits once its socket closes."""
        if not self.gone:
            self.gone = True
            self._end()

    def _end(self) -> None:
        self._sock.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
