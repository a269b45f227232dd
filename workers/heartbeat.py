"""The heartbeat worker: tells the backend the run is alive, with a summary a
person can read at a glance."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from workers.common.backend_client import Backend
from workers.common.spool import ShipperState, utc_now
from workers.common.timing import Timing
from workers.messages import Command, Phase, Stop, unexpected
from workers.run_processes import Usage, live_usage
from workers.runtime import Mailbox


@dataclass(frozen=True)
class HeartbeatConfig:
    state_dir: Path
    server: str
    run_id: str
    token: str = field(repr=False)
    timing: Timing = field(default_factory=Timing)


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def summarize(phase: str, codex_started: float | None, now: float, state: ShipperState, last_event_age: float | None,
              usage: Usage | None = None) -> str:
    """One line: what the run is doing, how far the log has got, tokens used,
    what the run's processes used."""
    parts = [phase]
    if codex_started is not None and "codex running" in phase:
        parts = [phase.replace("codex running", f"codex running for {duration(now - codex_started)}", 1)]
    parts.append(f"{state.delivered:,} log entries shipped")
    backlog = state.next_seq - 1 - state.delivered
    if backlog > 0:
        parts.append(f"{backlog:,} waiting")
    if last_event_age is not None:
        parts.append(f"last event {duration(last_event_age)} ago")
    if state.input_tokens or state.output_tokens:
        parts.append(f"tokens {state.input_tokens:,} in / {state.output_tokens:,} out")
    if usage is not None and usage.short():
        parts.append(usage.short())
    return ", ".join(parts)


def _age(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, time.time() - then.timestamp())


def main(mailbox: Mailbox, cfg: HeartbeatConfig) -> None:
    phase = "preparing the workspace"
    codex_started: float | None = None  # wall clock, shared by the supervisor
    stopping = False

    def handle(messages: list[Command]) -> None:
        nonlocal phase, codex_started, stopping
        for message in messages:
            match message:
                case Stop():
                    stopping = True
                case Phase(text=text, codex_started=started):
                    phase = text
                    if started is not None:
                        codex_started = started
                case _:
                    unexpected(message, "the heartbeat")

    with Backend(cfg.server, cfg.run_id, cfg.token, cfg.timing) as backend:
        while not stopping:
            handle(mailbox.wait(0))
            if stopping:
                break
            state = ShipperState.load(cfg.state_dir)
            summary = summarize(phase, codex_started, time.time(), state, _age(state.last_event_at),
                                live_usage(cfg.state_dir))
            due = time.monotonic() + cfg.timing.heartbeat_interval

            def sleep(seconds: float) -> bool:
                handle(mailbox.wait(seconds))
                return stopping

            # A heartbeat is only worth retrying until the next one is due.
            backend.post(
                "/heartbeat",
                {"observed_at": utc_now(), "summary": summary},
                keep_trying=lambda: time.monotonic() < due,  # noqa: B023 - used before the loop goes on
                sleep=sleep,
            )
            while not stopping and time.monotonic() < due:
                handle(mailbox.wait(due - time.monotonic()))
