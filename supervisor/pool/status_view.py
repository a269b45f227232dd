"""What the pool shows while its runs go (README: Many runs).

On a terminal, a compact table redrawn in place (at most a few times a second);
without one, one plain line per state change, so logs of a batch job stay
readable. At the end, a summary table either way. `render` is pure: the table
for a list of rows, so it can be tested without a terminal.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from supervisor.pool.states import CANCELLED, COMPLETE, ERROR, FINAL_STATES, RUNNING, STARTING, STOPPING, WAITING
from workers.run_processes import format_bytes, format_seconds

_HEADERS = ("RUN", "STATE", "MODE", "ELAPSED", "ENTRIES", "GPUS", "CPU", "PEAK", "RESULT")
# Running runs first when a terminal is too short for the whole table.
_SHOW_FIRST = {STOPPING: 0, RUNNING: 1, STARTING: 1, WAITING: 2, ERROR: 3, CANCELLED: 4, COMPLETE: 5}
_CLEAR_BELOW = "\x1b[J"


@dataclass(frozen=True)
class RunRow:
    """One run as the view shows it."""

    run_id: str
    state: str
    elapsed: float | None = None
    entries: int | None = None
    gpus: tuple[str, ...] | None = None
    result: str = ""
    # What the run's processes used (from its cgroup); None where unknown.
    cpu_seconds: float | None = None
    peak_bytes: int | None = None
    # autonomous / interactive (a person took it over; docs/control-channel.md)
    # once it runs; None before.
    mode: str | None = None
    # The backend does not answer this run's shipper (link_status.trouble_text).
    trouble: str = ""


def format_elapsed(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _clip(text: str, width: int | None) -> str:
    if width is None or len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + "…"


def _cells(row: RunRow, max_result: int | None) -> tuple[str, ...]:
    return (
        row.run_id,
        row.state,
        row.mode or "-",
        format_elapsed(row.elapsed),
        "-" if row.entries is None else f"{row.entries:,}",
        ",".join(row.gpus) if row.gpus else "-",
        "-" if row.cpu_seconds is None else format_seconds(row.cpu_seconds),
        "-" if row.peak_bytes is None else format_bytes(row.peak_bytes),
        _clip((row.trouble or row.result).replace("\n", " "), max_result) or "-",
    )


def render(rows: Sequence[RunRow], *, max_result: int | None = 60) -> str:
    """The table of runs, one line per run under a header; no trailing newline."""
    table = [_HEADERS, *(_cells(row, max_result) for row in rows)]
    widths = [max(len(line[col]) for line in table) for col in range(len(_HEADERS))]
    lines = []
    for line in table:
        # The last column is not padded: no trailing blanks.
        padded = [cell.ljust(width) for cell, width in zip(line[:-1], widths)]
        lines.append("  ".join([*padded, line[-1]]).rstrip())
    return "\n".join(lines)


def tally(rows: Sequence[RunRow]) -> str:
    """`8 runs: 6 complete, 1 error, 1 cancelled` (states in a fixed order)."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    order = [COMPLETE, ERROR, CANCELLED, RUNNING, STARTING, STOPPING, WAITING]
    parts = [f"{counts[state]} {state}" for state in order if counts.get(state)]
    parts += [f"{n} {state}" for state, n in sorted(counts.items()) if state not in order]
    noun = "run" if len(rows) == 1 else "runs"
    return f"{len(rows)} {noun}: {', '.join(parts)}"


def summary(rows: Sequence[RunRow]) -> str:
    """The end-of-pool table: every run, the full result text, and the tally."""
    return f"{render(rows, max_result=None)}\n{tally(rows)}"


def summary_json(rows: Sequence[RunRow], exit_status: int) -> str:
    """The end-of-pool summary as one JSON object (`--runs FILE --json`)."""
    runs = [{"run_id": r.run_id, "state": r.state, "elapsed_s": None if r.elapsed is None else round(r.elapsed, 3),
             "entries": r.entries, "gpus": list(r.gpus) if r.gpus else None, "result": r.result,
             "cpu_seconds": r.cpu_seconds, "peak_bytes": r.peak_bytes} for r in rows]
    return json.dumps({"exit_status": exit_status, "tally": tally(rows), "runs": runs}, ensure_ascii=False)


def plain_line(row: RunRow) -> str:
    """One line for a state change, for logs without a terminal."""
    text = f"run {row.run_id}: {row.state}"
    if row.state in (RUNNING, STARTING) and row.gpus:
        text += f" on GPUs {','.join(row.gpus)}"
    if row.state == RUNNING and row.mode == "interactive":
        text += ", taken over by a person (interactive)"
    if row.state in FINAL_STATES:
        details = []
        if row.elapsed is not None:
            details.append(f"after {format_elapsed(row.elapsed)}")
        if row.entries is not None:
            details.append(f"{row.entries:,} entries shipped")
        if row.cpu_seconds is not None:
            details.append(f"CPU {format_seconds(row.cpu_seconds)}")
        if row.peak_bytes is not None:
            details.append(f"peak memory {format_bytes(row.peak_bytes)}")
        if details:
            text += " " + ", ".join(details)
        if row.result and row.state != COMPLETE:
            text += f": {row.result}"
    elif row.result:
        text += f" ({row.result})"
    return text


def fit_rows(rows: Sequence[RunRow], height: int) -> tuple[list[RunRow], int]:
    """The rows a terminal of `height` lines can show (active runs first), and how
    many were left out. Rows keep their order among those shown."""
    room = max(height - 3, 1)  # header, the "more" line, the cursor line
    if len(rows) <= room + 1:
        return list(rows), 0
    ranked = sorted(range(len(rows)), key=lambda i: (_SHOW_FIRST.get(rows[i].state, 9), i))
    keep = sorted(ranked[:room])
    return [rows[i] for i in keep], len(rows) - room


class LiveView:
    """A table redrawn in place on a terminal.

    `echo` prints one line (it appends the newline); the previous frame is erased
    by moving the cursor up over it, so nothing else may print while the view is
    up — other text goes through `message`."""

    def __init__(
        self,
        echo: Callable[[str], None],
        *,
        width: int = 100,
        height: int = 40,
        interval: float = 0.25,
    ) -> None:
        self._echo = echo
        self._width = width
        self._height = height
        self._interval = interval
        self._lines_up = 0
        self._last_draw: float | None = None

    def update(self, rows: Sequence[RunRow], now: float, *, force: bool = False) -> None:
        """Redraw, unless the last frame is younger than the interval."""
        if not force and self._last_draw is not None and now - self._last_draw < self._interval:
            return
        self._last_draw = now
        shown, hidden = fit_rows(rows, self._height)
        text = render(shown, max_result=max(self._width - 50, 20))
        if hidden:
            text += f"\n… and {hidden} more ({tally(rows)})"
        lines = [_clip(line, self._width - 1) for line in text.split("\n")]
        self._echo(self._erase() + "\n".join(lines))
        self._lines_up = len(lines)

    def message(self, text: str) -> None:
        """Print text where the table was; the next update draws the table below it."""
        self._echo(self._erase() + text)
        self._lines_up = 0
        self._last_draw = None

    def close(self) -> None:
        """Remove the live table (the summary replaces it)."""
        if self._lines_up:
            # Up over the frame and clear it; echo's newline leaves one blank line
            # that the summary then starts on.
            self._echo(f"\x1b[{self._lines_up}F{_CLEAR_BELOW}\x1b[1A")
        self._lines_up = 0

    def _erase(self) -> str:
        if not self._lines_up:
            return ""
        return f"\x1b[{self._lines_up}F{_CLEAR_BELOW}"


class PlainView:
    """One line per state change."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self._echo = echo
        self._seen: dict[str, tuple[str, bool]] = {}
        self._troubled: set[str] = set()

    def update(self, rows: Sequence[RunRow], now: float, *, force: bool = False) -> None:
        for row in rows:
            # A run taken over or handed back is a change worth a line too (but
            # not its mode becoming known: that line would say nothing new).
            seen = (row.state, row.state == RUNNING and row.mode == "interactive")
            if self._seen.get(row.run_id) != seen:
                self._seen[row.run_id] = seen
                self._echo(plain_line(row))
            # One line when the backend stops answering the run, one when it is back.
            if row.trouble and row.run_id not in self._troubled:
                self._troubled.add(row.run_id)
                self._echo(f"run {row.run_id}: {row.trouble}")
            elif not row.trouble and row.run_id in self._troubled:
                self._troubled.discard(row.run_id)
                if row.state not in FINAL_STATES:
                    self._echo(f"run {row.run_id}: backend answers again")

    def message(self, text: str) -> None:
        self._echo(text)

    def close(self) -> None:
        return None
