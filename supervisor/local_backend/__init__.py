"""A local Flywheel backend: docs/protocol.md over real HTTP, stored in SQLite.

Used by `flywheel-bootstrap serve` and `flywheel-bootstrap demo` so people can try
the tool without the hosted service, and by the test suite as the server every
end-to-end test talks to. It can be told to misbehave (delays, 5xx, 413, dropped
connections, bootstrap refusals) so the client's fault handling is tested against
a real socket rather than a mock.

Two faces:
- the run API (`/runs/{id}/...`, token-checked) that bootstrap speaks;
- an admin API (`/admin/...`, no token: bind it to localhost) and the Python class
  `LocalBackend` to create runs, set faults and read back what was received.

It never logs request bodies or tokens; it logs nothing at all by default.

The pieces, each importable from here:
- `runs`: a run's description (NewRun) and the shared vocabularies (KINDS, ...);
- `faults`: the fault model and the pure per-request decision;
- `store`: the SQLite database;
- `handlers`: one handler per run API call;
- `api`: which handler answers a request (run API, admin API, health);
- `replies`: what a request gets back (a Reply, or a dropped connection);
- `httpd`: the HTTP server and request handler;
- `backend`: `LocalBackend`, the facade tests and the demo use;
- `foreground`: `serve`, behind `flywheel-bootstrap serve`.
"""

from __future__ import annotations

from supervisor.local_backend.api import route_runs
from supervisor.local_backend.backend import DEFAULT_HOST, LocalBackend
from supervisor.local_backend.faults import (
    FaultAction,
    FaultCounters,
    Faults,
    counters_after_set,
    decide,
    merge_faults,
)
from supervisor.local_backend.foreground import (
    DEFAULT_PORT,
    default_db_path,
    serve,
    serve_instructions,
)
from supervisor.local_backend.handlers import BadRequest, bootstrap_payload, entry_row
from supervisor.local_backend.replies import Reply
from supervisor.local_backend.runs import (
    KINDS,
    LEVELS,
    TERMINAL_STATES,
    NewRun,
    new_run_from_mapping,
    new_run_id,
)
from supervisor.local_backend.store import public_run

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "KINDS",
    "LEVELS",
    "TERMINAL_STATES",
    "Reply",
    "BadRequest",
    "FaultAction",
    "FaultCounters",
    "Faults",
    "LocalBackend",
    "NewRun",
    "bootstrap_payload",
    "counters_after_set",
    "decide",
    "default_db_path",
    "entry_row",
    "merge_faults",
    "new_run_id",
    "public_run",
    "route_runs",
    "new_run_from_mapping",
    "serve",
    "serve_instructions",
]
