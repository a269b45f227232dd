"""Reporting a run whose supervisor could not report it itself (it was killed by
a signal): the pool posts `POST /runs/{id}/error` on its behalf."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from supervisor.pool.runs_file import RunSpec
from workers.common.errors import BootstrapError
from workers.common.timing import Timing

if TYPE_CHECKING:
    from concurrent.futures import Future

# How long the pool keeps retrying the `error` report of a killed supervisor.
_POST_TRIES = 4
# Second signal: one quick try each, so "immediate" stays immediate.
_FORCED_POST_TIMEOUT = (1.0, 2.0)
_POST_TIMEOUT = (5.0, 10.0)


def post_error(
    spec: RunSpec, reason: str, timing: Timing, abandon: threading.Event, forced: bool
) -> str:
    """Report a run its supervisor could not report; returns a note for the summary."""
    from workers.common.backend_client import Backend

    # Shorter than a run's own timeouts: the pool's exit waits for these reports.
    connect, read = _FORCED_POST_TIMEOUT if forced else _POST_TIMEOUT
    timing = Timing(
        connect_timeout=min(connect, timing.connect_timeout),
        read_timeout=min(read, timing.read_timeout),
        backoff_base=timing.backoff_base,
        backoff_cap=min(timing.backoff_cap, 5.0),
    )
    tries = 1 if forced else _POST_TRIES
    attempts = [0]

    def keep_trying() -> bool:
        attempts[0] += 1
        return attempts[0] < tries and not abandon.is_set()

    body = {
        "summary": f"The bootstrap supervisor of run {spec.run_id} ended without reporting "
        f"({reason}); reported by the bootstrap pool.",
        "reason": reason,
    }
    with Backend(spec.server, spec.run_id, spec.token, timing) as backend:
        answer = backend.post("/error", body, keep_trying=keep_trying, sleep=abandon.wait)
    if answer.ok:
        return "reported to the backend by the pool"
    if answer.status == 409:
        return "the backend already had its outcome"
    got = f"HTTP {answer.status}" if answer.status else "no answer"
    return f"the pool could not report it to the backend ({got})"


def post_note(future: Future[str]) -> str:
    """The note for the summary of a finished report, whatever became of it."""
    try:
        return future.result()
    except BootstrapError as exc:
        return f"the pool could not report it to the backend ({exc.message})"
    except Exception as exc:  # noqa: BLE001 - a report failing must not end the pool
        return f"the pool could not report it to the backend ({type(exc).__name__})"


def undelivered_note(state_dir: Path) -> str:
    """What a killed supervisor's run leaves undelivered, for the summary: once
    the run is reported, the backend takes none of it any more (a new start
    gets 409), so the person must hear where it stays."""
    from workers.common.spool import ShipperState

    state = ShipperState.load(state_dir)
    waiting = max(0, state.next_seq - 1 - state.delivered)
    if not waiting:
        return ""
    return (f"; {waiting:,} log entr{'y was' if waiting == 1 else 'ies were'} never delivered "
            f"(flywheel-bootstrap logs {state_dir.name} shows them; they stay in {state_dir})")
