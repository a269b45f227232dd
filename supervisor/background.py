"""A command started now and awaited later, so that the slow checks of a start
(`codex login status`, `nvidia-smi -L`) run side by side with the rest of it.
As a context manager it never leaves the process behind: one still running
on the way out is killed and reaped."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Finished:
    """How the command ended; `problem` says why it did not run or finish
    (then `returncode` is None)."""

    returncode: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    problem: str = ""
    timed_out: bool = False


class Background:
    def __init__(self, argv: Sequence[str], env: Mapping[str, str], timeout: float) -> None:
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._problem = ""
        try:
            self._proc = subprocess.Popen(list(argv), env=dict(env), stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            self._problem = f"cannot run {argv[0]}: {exc.strerror or exc}"

    def result(self) -> Finished:
        """Wait for it (until `timeout` after its start at most)."""
        if self._proc is None:
            return Finished(None, problem=self._problem)
        try:
            out, err = self._proc.communicate(timeout=max(0.0, self._deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.close()
            return Finished(None, problem=f"did not answer within {self._timeout:g} s", timed_out=True)
        return Finished(self._proc.returncode, out, err)

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.communicate()

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
