"""What `ps` shows for a process forked by the pool's launcher: its command line
rewritten in place, as setproctitle(3) does, since the standard library has no
way to set it.

/proc/PID/cmdline is read from the process's own argument area (`arg_start` to
`arg_end` in /proc/self/stat), so writing there changes what `ps`, `pgrep -f`
and /proc show. The new command line must fit the old one's room; the launcher
is started with a spare argument to make that room.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence

# Fields 48 and 49 of /proc/self/stat (proc(5)), counted after the `comm` field.
_ARG_START = 48 - 3
_ARG_END = 49 - 3


def encode_title(argv: Sequence[str], room: int) -> bytes:
    """`argv` as the kernel lays it out (each argument NUL-terminated), cut to
    `room` bytes and padded with NULs; its last byte is always a NUL, so the
    kernel reads it as a plain argument area."""
    text = b"".join(os.fsencode(arg) + b"\0" for arg in argv)[: max(room - 1, 0)]
    return text.ljust(room, b"\0")


def _arg_area() -> tuple[int, int] | None:
    try:
        with open("/proc/self/stat", "rb") as handle:
            stat = handle.read()
        fields = stat[stat.rindex(b")") + 2:].split()
        start, end = int(fields[_ARG_START]), int(fields[_ARG_END])
        with open("/proc/self/cmdline", "rb") as handle:
            shown = handle.read()
    except (OSError, ValueError, IndexError):
        return None
    # Only an area the kernel shows whole, unmodified, is ours to write.
    if start <= 0 or end - start != len(shown) or ctypes.string_at(start, end - start) != shown:
        return None
    return start, end - start


def set_title(argv: Sequence[str]) -> bool:
    """Make this process's command line read `argv` (cut to the room there is);
    False where that cannot be done (no /proc, or an argument area that is
    not what the kernel shows)."""
    area = _arg_area()
    if area is None:
        return False
    start, room = area
    title = encode_title(argv, room)
    ctypes.memmove(start, title, room)
    return True
