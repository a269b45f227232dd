"""SIGINT/SIGTERM (and SIGHUP/SIGQUIT) as an event the supervisor's loop can
wait on, not an exception thrown into the middle of whatever it was doing; and
how a signal or an exit status reads in a message."""

from __future__ import annotations

import select
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from workers.common.wake import WakePipe


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_exit(code: int | None) -> str:
    """A process's exit status (Popen's: negative means killed by that signal)."""
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal_name(-code)}"
    return f"exit code {code}"


class Aborted(Exception):
    """A blocking call inside `Interrupts.bounded` ran past its deadline, or
    past the grace period after a signal."""


# A closed terminal or a dropped SSH session (SIGHUP) and Ctrl-\ (SIGQUIT)
# would otherwise kill the supervisor outright, leaving the run unreported.
# Left ignored when they were ignored already: `nohup` asks bootstrap to
# outlive its terminal, and a shell's background job has SIGQUIT ignored.
STOPPING_UNLESS_IGNORED = (signal.SIGHUP, signal.SIGQUIT)


class Interrupts:
    def __init__(self) -> None:
        self._pipe = WakePipe()
        self.received: list[int] = []
        self._previous: dict[int, object] = {}
        self.first_at: float | None = None  # monotonic time of the first signal
        self._grace: float | None = None  # inside bounded(): seconds a signal leaves
        self._deadline: float | None = None

    def install(self) -> Interrupts:
        if self._previous:
            return self  # installed already (before the bootstrap fetch)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        for sig in STOPPING_UNLESS_IGNORED:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.first_at is None:
            self.first_at = time.monotonic()
        self._pipe.poke()
        if self._grace is not None:
            # Inside bounded(): the call in progress (an HTTP request, a git
            # push) may go on for the grace period, not longer; a second signal
            # ends it at once.
            limit = time.monotonic() + self._grace
            if len(self.received) > 1:
                raise Aborted(f"{signal.Signals(signum).name} received again")
            self._arm(limit)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self._grace is not None:
            raise Aborted("deadline reached")

    def _arm(self, limit: float) -> None:
        if self._deadline is None or limit < self._deadline:
            self._deadline = limit
            signal.setitimer(signal.ITIMER_REAL, max(0.001, limit - time.monotonic()))

    @contextmanager
    def bounded(self, grace: float, deadline: float | None = None) -> Iterator[None]:
        """Run a blocking call that does not watch our signal pipe: inside, it
        is ended by `Aborted` at `deadline` (a monotonic time), or `grace`
        seconds after a signal (at once on a second one). Cleanup of what the
        call started is the call's own `finally`."""
        previous = signal.signal(signal.SIGALRM, self._on_alarm)
        self._grace, self._deadline = grace, None
        try:
            if deadline is not None:
                self._arm(deadline)
            if self.received:
                self._arm(time.monotonic() + grace)
            yield
        finally:
            self._grace = self._deadline = None
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def sleep(self, seconds: float) -> None:
        """Sleep between tries of the bootstrap fetch; an interrupt ends the
        sleep and bootstrap with it (the run is not claimed yet)."""
        if not self.received:
            select.select([self], [], [], seconds)
        self.raise_if_received()

    def raise_if_received(self) -> None:
        """End bootstrap as the default handlers would have (before a run is claimed)."""
        if self.first == signal.SIGINT:
            raise KeyboardInterrupt
        if self.first is not None:
            raise SystemExit(self.exit_code)

    def drain(self) -> None:
        self._pipe.clear()

    def fileno(self) -> int:
        return self._pipe.fileno()

    @property
    def first(self) -> int | None:
        return self.received[0] if self.received else None

    @property
    def name(self) -> str | None:
        return signal.Signals(self.first).name if self.first else None

    @property
    def exit_code(self) -> int:
        return 128 + (self.first or signal.SIGTERM)
