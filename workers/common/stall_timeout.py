"""HTTP uploads bounded by stalls, not by their length (SPEC section 9).

urllib3 sends a request body under the connect timeout, and the read timeout
starts as soon as the last byte is handed to the kernel (psf/requests#5263):
a big body on a slow uplink is either cut mid-way or, once the kernel holds
the rest, waited on under a read timeout that may end before it even arrives.
Here (workers.common.lean_http) a body over 64 KiB is streamed: it goes in
blocks, each under the connect timeout, and then the connection waits until
the peer has acknowledged every byte, for as long as the unacknowledged amount
keeps shrinking: a send that keeps making progress is never cut, one that
makes none for the connect timeout is.
"""

from __future__ import annotations

import fcntl
import io
import select
import socket
import struct
import termios
import time
from collections.abc import Callable

_POLL = 0.05


def unacknowledged(sock: socket.socket) -> int:
    """Bytes written to `sock` that the peer has not acknowledged yet
    (SIOCOUTQ, which Linux numbers like TIOCOUTQ); 0 where unknown."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", raw)[0])


class StreamedBody(io.BytesIO):
    """A body urllib3 reads (and sends) block by block; `progress()` hears of
    every block, and of every acknowledgement after the last."""

    def __init__(self, data: bytes, progress: Callable[[], None] | None = None) -> None:
        super().__init__(data)
        self.progress = progress or (lambda: None)

    def read(self, size: int | None = -1) -> bytes:
        self.progress()
        return super().read(size)


def wait_delivered(sock: socket.socket, stall: float, progress: Callable[[], None] = lambda: None) -> None:
    """Return once the peer acknowledged everything sent, or answered; raise
    TimeoutError when nothing moved for `stall` seconds."""
    left = unacknowledged(sock)
    moved_at = time.monotonic()
    while left > 0:
        readable, _, _ = select.select([sock], [], [], _POLL)
        if readable:
            return  # an answer (or a close) came early: the reader takes it
        now_left = unacknowledged(sock)
        if now_left < left:
            moved_at = time.monotonic()
            progress()
        elif time.monotonic() - moved_at > stall:
            raise TimeoutError(f"upload stalled: {now_left} bytes unacknowledged for {stall:g} s")
        left = now_left
