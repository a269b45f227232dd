"""run_status.json in the run's state folder: where the run's supervisor is
(`codex running`, `ended`) and, at the end, the run's outcome with its full
reason. Written only by the supervisor (atomically); read by the pool, which shows
a run `running` only once Codex runs and shows the reason the backend got."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from workers.common.files import write_private

RUN_STATUS = "run_status.json"
CODEX_RUNNING = "codex running"
ENDED = "ended"


def write(state_dir: Path, phase: str, **fields: Any) -> None:
    try:
        write_private(state_dir / RUN_STATUS, orjson.dumps({"phase": phase, "at": time.time(), **fields}))
    except OSError:
        pass  # only for display: a full disk must not fail the run here


def read(state_dir: Path) -> dict[str, Any]:
    try:
        value = orjson.loads((state_dir / RUN_STATUS).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def codex_started_since(status: dict[str, Any], since: float) -> bool:
    """Whether this start of the run got as far as Codex (an earlier start's file
    is older than `since`)."""
    at = status.get("at")
    return isinstance(at, (int, float)) and at >= since and status.get("phase") in (CODEX_RUNNING, ENDED) \
        and (status.get("phase") == CODEX_RUNNING or bool(status.get("codex_ran")))


def reason_line(status: dict[str, Any], since: float) -> str:
    """The run's reason on one line, from this start of the run; "" if unknown."""
    at = status.get("at")
    reason = status.get("reason")
    if status.get("phase") != ENDED or not isinstance(at, (int, float)) or at < since or not isinstance(reason, str):
        return ""
    return " — ".join(line.strip() for line in reason.splitlines() if line.strip())
