"""A self-pipe: the one way a thread or a signal handler wakes a loop that
waits on file descriptors (supervisor, pool and workers alike)."""

from __future__ import annotations

import os


class WakePipe:
    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self.r

    def poke(self) -> None:
        try:
            os.write(self.w, b"x")
        except OSError:
            pass  # pipe full: the loop is awake anyway

    def clear(self) -> bool:
        """Empty the pipe; True if it had been poked since the last clear."""
        poked = False
        try:
            while os.read(self.r, 4096):
                poked = True
        except BlockingIOError:
            pass
        return poked

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)
