"""Durations as people write them: `30s`, `90m`, `2h`, `7d`, `1h30m`; a bare number
is seconds (as systemd and `timeout` take them)."""

from __future__ import annotations

import math
import re

import click

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)")

DAY = 86400.0
# The longest anything of a run waits on in one go. The workers' selectors take
# their timeout in milliseconds as a C int (about 24.8 days); 30 days of
# `--codex-timeout` or `control --wait` is waited on in short steps.
MAX_WAIT = 30 * DAY
# A heartbeat is waited on in one selector call, so it must stay well below
# that C int; and more than a day between heartbeats says nothing about liveness.
MAX_HEARTBEAT_INTERVAL = DAY
# Two heartbeats a second at most: fewer would flood the backend with no gain;
# the test suite and the demo run at 0.5–1 s.
MIN_HEARTBEAT_INTERVAL = 0.5
# `prune --older-than` only compares ages, so it may reach far back; ten years
# keeps it a number rather than "forever".
MAX_AGE = 3650 * DAY


def parse_duration(text: str) -> float:
    """Seconds in `text` (finite, maybe zero or negative); ValueError naming what is wrong."""
    raw = text.strip().lower()
    if not raw:
        raise ValueError("empty duration")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = _with_units(text, raw)
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r} is not a finite duration")
    return seconds


def _with_units(text: str, raw: str) -> float:
    total, pos = 0.0, 0
    for match in _PART.finditer(raw):
        if raw[pos:match.start()].strip():
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or raw[pos:].strip():
        raise ValueError(f"{text!r} is not a duration: use seconds or units such as 30s, 90m, 2h, 7d")
    return total


def format_duration(seconds: float) -> str:
    """The shortest unit that keeps the value whole-ish: 90 -> 90s, 7200 -> 2h."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def check_bounds(seconds: float, *, minimum: float = 0.0, maximum: float = MAX_WAIT) -> str | None:
    """Why `seconds` is out of (minimum, maximum], or None; `minimum` 0 means any positive value."""
    if not math.isfinite(seconds):
        return f"{seconds} is not a finite duration"
    if seconds <= 0:
        return f"must be a positive duration, not {seconds:g}"
    if seconds < minimum:
        return f"must be at least {format_duration(minimum)}, not {format_duration(seconds)}"
    if seconds > maximum:
        return f"must be at most {format_duration(maximum)}, not {format_duration(seconds)}"
    return None


class Duration(click.ParamType[float]):
    """A click option taking a positive, finite duration (seconds as a float) within bounds."""

    name = "duration"

    def __init__(self, *, minimum: float = 0.0, maximum: float = MAX_WAIT) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            try:
                seconds = parse_duration(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        problem = check_bounds(seconds, minimum=self.minimum, maximum=self.maximum)
        if problem:
            self.fail(problem, param, ctx)
        return seconds


DURATION = Duration()
HEARTBEAT_INTERVAL = Duration(minimum=MIN_HEARTBEAT_INTERVAL, maximum=MAX_HEARTBEAT_INTERVAL)
AGE = Duration(maximum=MAX_AGE)
