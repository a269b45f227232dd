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


# After a signal, the end's work besides the log and the report (the control
# worker's last acks, the artifacts, the git push) may use this share of the
# flush bound: the rest is kept for the log's drain and the terminal report,
# which a hanging artifact post must not starve.
WORK_SHARE = 0.5


class FlushDeadline:
    """Unbounded while nobody asked bootstrap to stop. Once an interrupt has
    arrived, everything the end of the run still waits for counts against
    this one bound: `flush_timeout` seconds from the signal, or from when
    Codex was stopped if that came later (stopping it has its own kill grace).
    The work before the log's drain gets the first WORK_SHARE of it."""

    def __init__(self, interrupts: Interrupts, flush_timeout: float) -> None:
        self.interrupts = interrupts
        self.flush_timeout = flush_timeout
        self._started: float | None = None
        self._codex_over = 0.0

    def start(self) -> None:
        """Bound the end from now on, signal or not (a report sent straight away)."""
        if self._started is None:
            self._started = time.monotonic()

    def codex_stopped(self) -> None:
        self._codex_over = time.monotonic()

    @property
    def at(self) -> float | None:
        """The monotonic time by which bootstrap ends; None while unbounded."""
        first = self.interrupts.first_at
        begins = [t for t in (self._started, None if first is None else max(first, self._codex_over))
                  if t is not None]
        return min(begins) + self.flush_timeout if begins else None

    def work_until(self) -> float | None:
        """The deadline of what comes before the log's drain."""
        at = self.at
        return None if at is None else at - self.flush_timeout * (1 - WORK_SHARE)

    def keep_trying(self) -> bool:
        at = self.at
        return at is None or time.monotonic() < at
