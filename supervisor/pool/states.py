"""The states a run goes through in the pool; the view only shows them."""

from __future__ import annotations

WAITING = "waiting"
# Its supervisor runs, Codex not yet (config, workspace, fetching the task).
STARTING = "starting"
RUNNING = "running"
STOPPING = "stopping"
COMPLETE = "complete"
ERROR = "error"
CANCELLED = "cancelled"
FINAL_STATES = frozenset({COMPLETE, ERROR, CANCELLED})
