"""Starting and stopping Codex: the exact command lines of docs/design.md
(Codex and its resume), started as the first of the run's processes (workers/run_processes), which
never outlive bootstrap."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from workers.run_processes import RunProcesses, signal_group
from workers.runtime import set_parent_death_signal


def exec_argv(prefix: Sequence[str], workspace: Path, sandbox: Sequence[str]) -> list[str]:
    """`codex exec` with the prompt on stdin (`-`)."""
    return [*prefix, "exec", "--json", "--cd", str(workspace), "--skip-git-repo-check", *sandbox, "-"]


def resume_argv(
    prefix: Sequence[str], workspace: Path, sandbox: Sequence[str], thread_id: str, prompt: str
) -> list[str]:
    """`codex exec … resume`: after `resume`, Codex rejects `--cd` and `--sandbox`,
    so every exec-level flag goes before it."""
    return [*prefix, "exec", "--json", "--skip-git-repo-check", *sandbox, "--cd", str(workspace),
            "resume", thread_id, prompt]


def _child_setup() -> None:
    # Runs in the child between fork and exec: if bootstrap is SIGKILLed, the
    # kernel kills Codex at once (what it started, the workers then kill).
    set_parent_death_signal(signal.SIGKILL)


class CodexProcess:
    """One Codex invocation, in a process group of its own, inside the run's
    processes (`procs`)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        procs: RunProcesses,
        cwd: Path,
        env: Mapping[str, str],
        stdin: Path | None,
        stdout: Path,
        stderr: Path,
    ) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        out = os.open(stdout, flags, 0o600)
        err = os.open(stderr, flags, 0o600)
        inp = os.open(stdin if stdin is not None else os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.popen = procs.start(
                argv,
                env=env,
                preexec=_child_setup,
                cwd=cwd,
                stdin=inp,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            for fd in (out, err, inp):
                os.close(fd)
        self.procs = procs
        self.pgid = self.popen.pid
        self.started = time.monotonic()
        try:
            self.pidfd: int | None = os.pidfd_open(self.popen.pid)
        except (AttributeError, OSError):
            self.pidfd = None  # older kernels: the caller's wait times out and polls

    @property
    def returncode(self) -> int | None:
        """How Codex ended, or None while it runs. Looked at without reaping
        it: until it is reaped, its pid (its group's id too) cannot be given to
        another process, so signalling the group after this can never reach a
        stranger. Whoever ends the invocation reaps it (`popen.wait()`)."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        try:
            info = os.waitid(os.P_PID, self.popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return self.popen.poll()
        if info is None:
            return None
        if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
            return -info.si_status
        return info.si_status

    def waitables(self) -> list[int]:
        return [self.pidfd] if self.pidfd is not None else []

    def signal_group(self, sig: int) -> None:
        """Codex's own process group: Codex and what it did not put in a
        session of its own, so that it can end its commands itself."""
        signal_group(self.pgid, sig)

    def terminate(self, grace: float) -> int:
        """SIGTERM to Codex's group, SIGKILL to every process of the run after
        `grace` seconds."""
        self.signal_group(signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        self.procs.kill_all()
        return self.popen.wait()

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def stderr_tail(path: Path, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - limit * 4))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return text[-limit:].strip()

