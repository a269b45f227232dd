"""Output that is not a terminal (Slurm and systemd logs, files) gets a timestamp at
the start of each line; a terminal gets the line as it is."""

from __future__ import annotations

import time
from collections.abc import Callable


def stamp(text: str, now: float | None = None) -> str:
    """`2026-11-30T16:15:23Z ` before every line of `text`."""
    prefix = time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime(now))
    return "\n".join(prefix + line for line in text.split("\n"))


def stamped(echo: Callable[[str], None], *, is_tty: bool) -> Callable[[str], None]:
    """`echo` itself on a terminal, else `echo` with each line stamped."""
    if is_tty:
        return echo
    return lambda text: echo(stamp(text))
