"""SIGINT/SIGTERM as an event the supervisor's loop can wait on, not an
exception thrown into the middle of whatever it was doing; and how a signal or
an exit status reads in a message."""

from __future__ import annotations

import select
import signal
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


class Interrupts:
    def __init__(self) -> None:
        self._pipe = WakePipe()
        self.received: list[int] = []
        self._previous: dict[int, object] = {}

    def install(self) -> "Interrupts":
        if self._previous:
            return self  # installed already (before the bootstrap fetch)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        self._pipe.poke()

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
