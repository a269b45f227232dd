"""SIGINT/SIGTERM as an event the supervisor's loop can wait on, not an
exception thrown into the middle of whatever it was doing."""

from __future__ import annotations

import os
import signal
from types import FrameType


class Interrupts:
    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.received: list[int] = []
        self._previous: dict[int, object] = {}

    def install(self) -> "Interrupts":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        try:
            os.write(self.w, b"!")
        except BlockingIOError:
            pass

    def drain(self) -> None:
        try:
            while os.read(self.r, 64):
                pass
        except BlockingIOError:
            pass

    def fileno(self) -> int:
        return self.r

    @property
    def first(self) -> int | None:
        return self.received[0] if self.received else None

    @property
    def name(self) -> str | None:
        return signal.Signals(self.first).name if self.first else None

    @property
    def exit_code(self) -> int:
        return 128 + (self.first or signal.SIGTERM)
