"""Trouble reaching the backend, made visible (issue 13 item 4): the log-shipper
records in shipper.json since when the backend has not answered and why; the run's
supervisor and the pool turn that into one line when it starts and one when it
ends. A blip shorter than SHOW_AFTER says nothing.

`trouble_text` and `next_line` are pure, so the wording and the rules are tested
without a backend."""

from __future__ import annotations

from dataclasses import dataclass

from supervisor.pool.status_view import format_elapsed
from workers.common.spool import ShipperState

# Shorter outages are retried silently: a single 503 is not news.
SHOW_AFTER = 5.0


@dataclass(frozen=True)
class Link:
    """What shipper.json says about the backend."""

    down_since: float | None  # wall-clock time of the first failed try; None while it answers
    why: str  # the last failure, in words (TLS, DNS, refused, HTTP 503 …)
    waiting: int  # entries encoded but not yet accepted
    last_outage_s: float = 0.0  # how long the last outage lasted, once over


def link_of(state: ShipperState) -> Link:
    return Link(state.backend_down_since, state.backend_trouble, max(0, state.next_seq - 1 - state.delivered),
                state.last_outage_s)


def trouble_text(link: Link, now: float) -> str:
    """`backend unreachable for 12s (connection refused …); 340 entries waiting on disk`,
    or "" when there is nothing to say yet."""
    if link.down_since is None or now - link.down_since < SHOW_AFTER:
        return ""
    return (f"backend unreachable for {format_elapsed(now - link.down_since)} ({link.why}); "
            f"{link.waiting:,} entr{'y' if link.waiting == 1 else 'ies'} waiting on disk")


def next_line(shown: bool, link: Link, now: float) -> tuple[bool, str | None]:
    """Whether an outage is now on screen, and the line to print (or None)."""
    text = trouble_text(link, now)
    if text and not shown:
        return True, text
    if shown and link.down_since is None:
        return False, (f"backend answers again after {format_elapsed(link.last_outage_s)}; "
                       f"{link.waiting:,} entr{'y' if link.waiting == 1 else 'ies'} still to ship")
    return shown, None


class LinkWatch:
    """Remembers whether an outage line was printed, for one run."""

    def __init__(self) -> None:
        self.shown = False

    def look(self, link: Link, now: float) -> str | None:
        self.shown, line = next_line(self.shown, link, now)
        return line
