"""The states a run goes through in the pool; the view only shows them."""

from __future__ import annotations

WAITING = "waiting"
RUNNING = "running"
STOPPING = "stopping"
COMPLETE = "complete"
ERROR = "error"
CANCELLED = "cancelled"
FINAL_STATES = frozenset({COMPLETE, ERROR, CANCELLED})
