"""Durations as people write them: `30s`, `90m`, `2h`, `7d`, `1h30m`; a bare number
is seconds (as systemd and `timeout` take them)."""

from __future__ import annotations

import re

import click

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)")


def parse_duration(text: str) -> float:
    """Seconds in `text`; ValueError naming what is wrong."""
    raw = text.strip().lower()
    if not raw:
        raise ValueError("empty duration")
    try:
        return float(raw)
    except ValueError:
        pass
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


class Duration(click.ParamType[float]):
    """A click option taking a positive duration (seconds as a float)."""

    name = "duration"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            try:
                seconds = parse_duration(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if seconds <= 0:
            self.fail(f"must be a positive duration, not {value}", param, ctx)
        return seconds


DURATION = Duration()
