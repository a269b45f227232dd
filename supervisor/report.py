"""The end of a run: which terminal report it gets and with what body (pure),
and how long the end may keep trying once an interrupt arrived."""

from __future__ import annotations

import time
from dataclasses import dataclass

from supervisor.outcome import Action, Decision
from supervisor.signals import Interrupts
from workers.common.redact import Redactor


@dataclass(frozen=True)
class Report:
    path: str  # "/complete" or "/error", under /runs/{id}
    body: dict[str, str]


def report_for(decision: Decision, *, posted: int, usage: str, said: str | None, redactor: Redactor) -> Report:
    """The terminal report for `decision`: `complete` with a summary of what was
    delivered, or `error` with the reason (its first line in the summary)."""
    used = f"its processes used {usage}"
    if decision.action is Action.COMPLETE:
        summary = f"Codex completed with {posted} artifact(s); {used}" + (f": {said}" if said else "")
        return Report("/complete", {"summary": redactor.text(summary)})
    reason = redactor.text(decision.reason)
    return Report("/error", {"summary": f"Run failed: {reason.splitlines()[0]} ({used})", "reason": reason})


class FlushDeadline:
    """Unbounded while nobody asked bootstrap to stop; once an interrupt has
    arrived, the end of the run (draining the spool, the report) may take
    `flush_timeout` more seconds, counted from when the end noticed it."""

    def __init__(self, interrupts: Interrupts, flush_timeout: float) -> None:
        self.interrupts = interrupts
        self.flush_timeout = flush_timeout
        self.at: float | None = None
        if interrupts.received:
            self.start()

    def start(self) -> None:
        self.at = time.monotonic() + self.flush_timeout

    def keep_trying(self) -> bool:
        if self.at is None and self.interrupts.first_at is not None:
            # Interrupted while the backend is down or hanging: try a while
            # longer, counted from the signal.
            self.at = self.interrupts.first_at + self.flush_timeout
        return self.at is None or time.monotonic() < self.at
