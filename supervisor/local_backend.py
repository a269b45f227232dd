"""A local Flywheel backend: SPEC section 6 over real HTTP, stored in SQLite.

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
"""

from __future__ import annotations

import errno
import hmac
import re
import secrets
import signal
import socket
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import orjson

from supervisor.errors import ConfigError
from supervisor.settings import flywheel_home

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

TERMINAL_STATES = frozenset({"complete", "error"})
LEVELS = frozenset({"info", "warning", "error"})
# Request kinds, as counted per run (and as keys of `request_counts`).
KINDS = (
    "bootstrap",
    "heartbeat",
    "logs",
    "batch",
    "artifacts",
    "complete",
    "error",
    "github_token",
)
# (method, path after /runs/{id}/) -> kind
_ROUTES: Mapping[tuple[str, str], str] = {
    ("GET", "bootstrap"): "bootstrap",
    ("POST", "heartbeat"): "heartbeat",
    ("POST", "logs"): "logs",
    ("POST", "logs/batch"): "batch",
    ("POST", "artifacts"): "artifacts",
    ("POST", "complete"): "complete",
    ("POST", "error"): "error",
    ("POST", "github-token"): "github_token",
}
_BODY_LIMITED_KINDS = frozenset({"logs", "batch"})
_SECRET_KEYS = ("github_token", "wandb_api_key", "hf_token")
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MASK = "***"

T = TypeVar("T")


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunSpec:
    """What a new run is created with (admin API body / `create_run` arguments)."""

    prompt: str
    run_id: str | None = None
    token: str | None = field(default=None, repr=False)
    repo_context: Mapping[str, Any] | None = None
    github_token: str | None = field(default=None, repr=False)
    wandb_api_key: str | None = field(default=None, repr=False)
    hf_token: str | None = field(default=None, repr=False)
    log_batch: bool | None = None


def run_spec_from_mapping(raw: Mapping[str, Any]) -> RunSpec:
    """Validate a run description; ValueError names the bad key."""
    known = set(RunSpec.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; allowed: {sorted(known)}")
    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("'prompt' must be a non-empty string")
    for key in ("run_id", "token", *_SECRET_KEYS):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{key!r} must be a non-empty string")
    run_id = raw.get("run_id")
    if run_id is not None and not _RUN_ID_RE.match(run_id):
        raise ValueError("'run_id' may only hold letters, digits, '-' and '_' (1-64)")
    repo_context = raw.get("repo_context")
    if repo_context is not None and not isinstance(repo_context, Mapping):
        raise ValueError("'repo_context' must be an object")
    log_batch = raw.get("log_batch")
    if log_batch is not None and not isinstance(log_batch, bool):
        raise ValueError("'log_batch' must be true or false")
    return RunSpec(
        prompt=prompt,
        run_id=run_id,
        token=raw.get("token"),
        repo_context=dict(repo_context) if repo_context is not None else None,
        github_token=raw.get("github_token"),
        wandb_api_key=raw.get("wandb_api_key"),
        hf_token=raw.get("hf_token"),
        log_batch=log_batch,
    )


def new_run_id() -> str:
    # Starts with a letter so it can never look like a command-line option.
    return "r" + secrets.token_hex(5)


# ------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Faults:
    """The misbehaviour asked for. Counters that run down live in FaultCounters."""

    delay_ms: float = 0
    status: int | None = None
    status_count: int | None = None
    status_for_s: float | None = None
    max_body_bytes: int | None = None
    drop_count: int = 0
    # False: the dropped request is not handled at all (lost on the way in);
    # True: it is handled and stored, then the answer is lost (the client resends).
    drop_after_handling: bool = False
    paths: tuple[str, ...] = ()
    run_ids: tuple[str, ...] = ()
    bootstrap_status: tuple[tuple[str, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "delay_ms": self.delay_ms,
            "status": self.status,
            "status_count": self.status_count,
            "status_for_s": self.status_for_s,
            "max_body_bytes": self.max_body_bytes,
            "drop_count": self.drop_count,
            "drop_after_handling": self.drop_after_handling,
            "paths": list(self.paths),
            "run_ids": list(self.run_ids),
            "bootstrap_status": dict(self.bootstrap_status),
        }


@dataclass(frozen=True)
class FaultCounters:
    """How much of the counted/timed faults is left."""

    status_left: int | None = None  # None: not limited by count
    status_until: float | None = None  # time.monotonic() deadline; None: not timed
    drops_left: int = 0


@dataclass(frozen=True)
class Decision:
    """What the fault layer does to one request."""

    delay_s: float = 0.0
    drop: bool = False
    drop_after_handling: bool = False
    # An answer to send instead of handling the request.
    status: int | None = None
    body: Mapping[str, Any] | None = None


_STATUS_KEYS = frozenset({"status", "status_count", "status_for_s"})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def merge_faults(base: Faults, raw: Mapping[str, Any]) -> Faults:
    """`base` with the keys of `raw` replaced; ValueError names a bad key/value.

    A key set to None goes back to its default.
    """
    known = set(Faults.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown fault(s) {unknown}; allowed: {sorted(known)}")
    defaults = Faults()
    changes: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None:
            changes[key] = getattr(defaults, key)
            continue
        if key in ("delay_ms", "status_for_s"):
            if not _is_number(value) or value < 0:
                raise ValueError(f"{key!r} must be a number >= 0, got {value!r}")
        elif key == "status":
            if not _is_int(value) or not 100 <= value <= 599:
                raise ValueError(f"'status' must be an HTTP status (100-599), got {value!r}")
        elif key in ("status_count", "max_body_bytes", "drop_count"):
            if not _is_int(value) or value < 0:
                raise ValueError(f"{key!r} must be an integer >= 0, got {value!r}")
        elif key == "drop_after_handling":
            if not isinstance(value, bool):
                raise ValueError("'drop_after_handling' must be true or false")
        elif key in ("paths", "run_ids"):
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{key!r} must be a list of strings")
            value = tuple(value)
        elif key == "bootstrap_status":
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and _is_int(v) and 100 <= v <= 599 for k, v in value.items()
            ):
                raise ValueError("'bootstrap_status' must map run ids to HTTP statuses")
            value = tuple(sorted(value.items()))
        changes[key] = value
    merged = replace(base, **changes)
    if merged.status is None and (merged.status_count is not None or merged.status_for_s is not None):
        raise ValueError("'status_count'/'status_for_s' need 'status' (e.g. 503)")
    return merged


def counters_after_set(
    faults: Faults, changed: frozenset[str], old: FaultCounters, now: float
) -> FaultCounters:
    """Restart the counters of the faults that were just set; keep the others."""
    counters = old
    if changed & _STATUS_KEYS:
        until = None if faults.status_for_s is None else now + faults.status_for_s
        counters = replace(counters, status_left=faults.status_count, status_until=until)
    if "drop_count" in changed:
        counters = replace(counters, drops_left=faults.drop_count)
    return counters


def _fault_applies(faults: Faults, path: str, run_id: str) -> bool:
    if faults.run_ids and run_id not in faults.run_ids:
        return False
    return not faults.paths or any(p in path for p in faults.paths)


def _status_active(faults: Faults, counters: FaultCounters, now: float) -> bool:
    if faults.status is None:
        return False
    if counters.status_left is not None and counters.status_left <= 0:
        return False
    return counters.status_until is None or now < counters.status_until


def decide(
    faults: Faults,
    counters: FaultCounters,
    *,
    path: str,
    run_id: str,
    kind: str,
    body_bytes: int,
    now: float,
) -> tuple[Decision, FaultCounters]:
    """The fault decision for one /runs request, and the counters after it.

    Order: drop, then the injected status, then the body limit, then the
    per-run bootstrap override. The delay comes before any of them.
    """
    override = dict(faults.bootstrap_status).get(run_id) if kind == "bootstrap" else None
    override_decision = (
        Decision(status=override, body={"error": f"injected bootstrap answer: HTTP {override}"})
        if override is not None
        else Decision()
    )
    if not _fault_applies(faults, path, run_id):
        return override_decision, counters
    delay = faults.delay_ms / 1000.0
    if counters.drops_left > 0:
        decision = Decision(
            delay_s=delay, drop=True, drop_after_handling=faults.drop_after_handling
        )
        return decision, replace(counters, drops_left=counters.drops_left - 1)
    if _status_active(faults, counters, now):
        left = None if counters.status_left is None else counters.status_left - 1
        body = {"error": f"injected fault: HTTP {faults.status}"}
        return Decision(delay, status=faults.status, body=body), replace(counters, status_left=left)
    limit = faults.max_body_bytes
    if limit is not None and kind in _BODY_LIMITED_KINDS and body_bytes > limit:
        body = {"error": "payload too large", "limit_bytes": limit, "body_bytes": body_bytes}
        return Decision(delay, status=413, body=body), counters
    return replace(override_decision, delay_s=delay), counters


class _FaultState:
    """The current faults and counters, swapped atomically under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults = Faults()
        self._counters = FaultCounters()

    def set(self, raw: Mapping[str, Any]) -> Faults:
        with self._lock:
            faults = merge_faults(self._faults, raw)
            self._counters = counters_after_set(
                faults, frozenset(raw), self._counters, time.monotonic()
            )
            self._faults = faults
            return faults

    def clear(self) -> None:
        with self._lock:
            self._faults = Faults()
            self._counters = FaultCounters()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counters = self._counters
            status_left_s = (
                None
                if counters.status_until is None
                else max(0.0, counters.status_until - time.monotonic())
            )
            return {
                "faults": self._faults.to_json(),
                "remaining": {
                    "status_count": counters.status_left,
                    "status_for_s": status_left_s,
                    "drop_count": counters.drops_left,
                },
            }

    def decide(self, *, path: str, run_id: str, kind: str, body_bytes: int) -> Decision:
        with self._lock:
            decision, self._counters = decide(
                self._faults,
                self._counters,
                path=path,
                run_id=run_id,
                kind=kind,
                body_bytes=body_bytes,
                now=time.monotonic(),
            )
            return decision


# ------------------------------------------------------------------ validation


class BadRequest(Exception):
    """A request body the backend refuses with 400."""


def _require_str(body: Mapping[str, Any], *keys: str) -> None:
    for key in keys:
        if not isinstance(body.get(key), str):
            raise BadRequest(f"{key!r} is required and must be a string")


def entry_row(run_id: str, entry: Any, received_at: str) -> tuple[Any, ...]:
    """One log entry as a row of the entries table; BadRequest if malformed."""
    if not isinstance(entry, dict):
        raise BadRequest("a log entry must be a JSON object")
    _require_str(entry, "created_at", "level", "message")
    if entry["level"] not in LEVELS:
        raise BadRequest(f"'level' must be one of {sorted(LEVELS)}, got {entry['level']!r}")
    extra = entry.get("extra")
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise BadRequest("'extra' must be an object")
    seq = extra.get("seq")
    if not _is_int(seq):
        seq = None
    return (
        run_id,
        seq,
        entry["level"],
        entry["message"],
        orjson.dumps(extra).decode(),
        entry["created_at"],
        received_at,
    )


def bootstrap_payload(row: Mapping[str, Any]) -> dict[str, Any]:
    """The payload of GET bootstrap: only the keys that are set."""
    payload: dict[str, Any] = {"prompt": row["prompt"]}
    if row["repo_context"] is not None:
        payload["repo_context"] = orjson.loads(row["repo_context"])
    for key in _SECRET_KEYS:
        if row[key] is not None:
            payload[key] = row[key]
    if row["log_batch"] is not None:
        payload["log_batch"] = bool(row["log_batch"])
    return payload


def public_run(row: Mapping[str, Any]) -> dict[str, Any]:
    """A run as shown to tests and the admin API: no token, secrets masked."""
    run = {key: row[key] for key in row.keys() if key != "token"}
    if run["repo_context"] is not None:
        run["repo_context"] = orjson.loads(run["repo_context"])
    if run["log_batch"] is not None:
        run["log_batch"] = bool(run["log_batch"])
    for key in _SECRET_KEYS:
        if run[key] is not None:
            run[key] = _MASK
    return run


# ------------------------------------------------------------------------- store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    prompt TEXT NOT NULL,
    repo_context TEXT,
    github_token TEXT,
    wandb_api_key TEXT,
    hf_token TEXT,
    log_batch INTEGER,
    state TEXT NOT NULL,
    summary TEXT,
    reason TEXT,
    created_at TEXT NOT NULL,
    claimed_at TEXT,
    finished_at TEXT,
    last_heartbeat_at TEXT
);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    seq INTEGER,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    extra TEXT NOT NULL,
    created_at TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_run ON entries (run_id, id);
CREATE TABLE IF NOT EXISTS heartbeats (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    observed_at TEXT NOT NULL,
    summary TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS heartbeats_by_run ON heartbeats (run_id, id);
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    artifact_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS artifacts_by_run ON artifacts (run_id, id);
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    summary TEXT NOT NULL,
    reason TEXT,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS request_counts (
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (run_id, kind)
) WITHOUT ROWID;
"""

_COUNT_SQL = (
    "INSERT INTO request_counts (run_id, kind, n) VALUES (?, ?, 1) "
    "ON CONFLICT (run_id, kind) DO UPDATE SET n = n + 1"
)
_ENTRY_SQL = (
    "INSERT INTO entries (run_id, seq, level, message, extra, created_at, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status and JSON body."""

    status: int
    body: Mapping[str, Any]
    # Log entries this answer stored (keeps entry_count O(1) for waiters).
    entries_added: int = 0


def _error(status: int, message: str) -> Answer:
    return Answer(status, {"error": message})


_OK = Answer(200, {"ok": True})


class _Store:
    """One SQLite connection behind one re-entrant lock.

    The lock is also the lock of `changed`, a Condition notified after every
    write, so tests wait for what they expect instead of sleeping.
    """

    def __init__(self, db_path: Path) -> None:
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # A test/demo database: speed over durability after a power cut.
            conn.execute("PRAGMA synchronous=OFF")
            conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"Cannot open the local backend database {db_path}: {exc}. "
                "Choose a writable path."
            ) from None
        self._conn = conn
        self.changed = threading.Condition(threading.RLock())
        # Tests wait on entry counts after every write: a count(*) each time
        # would be quadratic over a 100,000-entry run.
        self._entry_counts: dict[str, int] = {
            run_id: n
            for run_id, n in conn.execute("SELECT run_id, count(*) FROM entries GROUP BY run_id")
        }

    def close(self) -> None:
        with self.changed:
            self._conn.close()

    # -- writes

    def create_run(self, spec: RunSpec) -> tuple[str, str]:
        token = spec.token or secrets.token_urlsafe(24)
        with self.changed:
            run_id = spec.run_id or new_run_id()
            exists = self._conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone()
            if exists:
                raise ValueError(f"run {run_id!r} already exists")
            self._conn.execute(
                "INSERT INTO runs (id, token, prompt, repo_context, github_token, wandb_api_key,"
                " hf_token, log_batch, state, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'created', ?)",
                (
                    run_id,
                    token,
                    spec.prompt,
                    None if spec.repo_context is None else orjson.dumps(spec.repo_context).decode(),
                    spec.github_token,
                    spec.wandb_api_key,
                    spec.hf_token,
                    None if spec.log_batch is None else int(spec.log_batch),
                    _now_iso(),
                ),
            )
            self.changed.notify_all()
        return run_id, token

    def count_request(self, run_id: str, kind: str) -> None:
        """Count a request that was answered by a fault (if the run exists)."""
        with self.changed:
            if self._conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                self._conn.execute(_COUNT_SQL, (run_id, kind))
                self.changed.notify_all()

    def run_request(
        self,
        run_id: str,
        kind: str,
        token: str | None,
        handle: Callable[[sqlite3.Connection, sqlite3.Row], Answer],
    ) -> Answer:
        """Check the run and its token, count the request and handle it, all in
        one transaction (one fsync-free commit per request keeps it fast)."""
        with self.changed:
            conn = self._conn
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                return _error(404, "unknown run")
            conn.execute("BEGIN")
            try:
                conn.execute(_COUNT_SQL, (run_id, kind))
                if token is None or not hmac.compare_digest(token.encode(), row["token"].encode()):
                    answer = _error(401, "missing or wrong X-Run-Token")
                else:
                    answer = handle(conn, row)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if answer.entries_added:
                self._entry_counts[run_id] = self._entry_counts.get(run_id, 0) + answer.entries_added
            self.changed.notify_all()
            return answer

    # -- reads

    def _one_run(self, run_id: str) -> sqlite3.Row:
        row = self._conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"unknown run {run_id!r}")
        return row

    def run(self, run_id: str) -> dict[str, Any]:
        with self.changed:
            return public_run(self._one_run(run_id))

    def runs(self) -> list[dict[str, Any]]:
        with self.changed:
            rows = self._conn.execute("SELECT * FROM runs ORDER BY created_at, id").fetchall()
        return [public_run(row) for row in rows]

    def entries(self, run_id: str) -> list[dict[str, Any]]:
        with self.changed:
            self._one_run(run_id)
            rows = self._conn.execute(
                "SELECT id, seq, level, message, extra, created_at, received_at"
                " FROM entries WHERE run_id = ? ORDER BY id",
                (run_id,),
            ).fetchall()
        return [
            {
                "id": row["id"],
                "seq": row["seq"],
                "level": row["level"],
                "message": row["message"],
                "extra": orjson.loads(row["extra"]),
                "created_at": row["created_at"],
                "received_at": row["received_at"],
            }
            for row in rows
        ]

    def entry_count(self, run_id: str) -> int:
        with self.changed:
            self._one_run(run_id)
            return self._entry_counts.get(run_id, 0)

    def heartbeats(self, run_id: str) -> list[dict[str, Any]]:
        with self.changed:
            self._one_run(run_id)
            rows = self._conn.execute(
                "SELECT observed_at, summary, received_at FROM heartbeats"
                " WHERE run_id = ? ORDER BY id",
                (run_id,),
            ).fetchall()
        return [dict(row) for row in rows]

    def artifacts(self, run_id: str) -> list[dict[str, Any]]:
        with self.changed:
            self._one_run(run_id)
            rows = self._conn.execute(
                "SELECT artifact_type, payload, received_at FROM artifacts"
                " WHERE run_id = ? ORDER BY id",
                (run_id,),
            ).fetchall()
        return [
            {
                "artifact_type": row["artifact_type"],
                "payload": orjson.loads(row["payload"]),
                "received_at": row["received_at"],
            }
            for row in rows
        ]

    def reports(self, run_id: str) -> list[dict[str, Any]]:
        with self.changed:
            self._one_run(run_id)
            rows = self._conn.execute(
                "SELECT kind, summary, reason, received_at FROM reports"
                " WHERE run_id = ? ORDER BY id",
                (run_id,),
            ).fetchall()
        return [dict(row) for row in rows]

    def request_counts(self, run_id: str) -> dict[str, int]:
        with self.changed:
            self._one_run(run_id)
            rows = self._conn.execute(
                "SELECT kind, n FROM request_counts WHERE run_id = ?", (run_id,)
            ).fetchall()
        counts = dict.fromkeys(KINDS, 0)
        counts.update({row["kind"]: row["n"] for row in rows})
        return counts


# ---------------------------------------------------------- run API handlers
# Each takes (conn, run row, parsed body) inside the request's transaction.


def _parse_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise BadRequest("body must be a JSON object")
    return parsed


def _do_bootstrap(conn: sqlite3.Connection, row: sqlite3.Row, body: bytes) -> Answer:
    if row["state"] in TERMINAL_STATES:
        return _error(409, f"run already {row['state']}")
    if row["state"] == "created":
        conn.execute(
            "UPDATE runs SET state = 'claimed', claimed_at = ? WHERE id = ?",
            (_now_iso(), row["id"]),
        )
    return Answer(200, {"payload": bootstrap_payload(row)})


def _do_heartbeat(conn: sqlite3.Connection, row: sqlite3.Row, body: bytes) -> Answer:
    data = _parse_object(body)
    _require_str(data, "observed_at", "summary")
    now = _now_iso()
    conn.execute(
        "INSERT INTO heartbeats (run_id, observed_at, summary, received_at) VALUES (?, ?, ?, ?)",
        (row["id"], data["observed_at"], data["summary"], now),
    )
    conn.execute("UPDATE runs SET last_heartbeat_at = ? WHERE id = ?", (now, row["id"]))
    return _OK


def _do_logs(conn: sqlite3.Connection, row: sqlite3.Row, body: bytes) -> Answer:
    conn.execute(_ENTRY_SQL, entry_row(row["id"], _parse_object(body), _now_iso()))
    return Answer(200, {"ok": True, "accepted": 1}, entries_added=1)


def _do_batch(conn: sqlite3.Connection, row: sqlite3.Row, body: bytes) -> Answer:
    entries = _parse_object(body).get("entries")
    if not isinstance(entries, list):
        raise BadRequest("'entries' is required and must be a list")
    now = _now_iso()
    rows = [entry_row(row["id"], entry, now) for entry in entries]
    conn.executemany(_ENTRY_SQL, rows)
    return Answer(200, {"ok": True, "accepted": len(rows)}, entries_added=len(rows))


def _do_artifacts(conn: sqlite3.Connection, row: sqlite3.Row, body: bytes) -> Answer:
    data = _parse_object(body)
    _require_str(data, "artifact_type")
    if not isinstance(data.get("payload"), dict):
        raise BadRequest("'payload' is required and must be an object")
    conn.execute(
        "INSERT INTO artifacts (run_id, artifact_type, payload, received_at) VALUES (?, ?, ?, ?)",
        (row["id"], data["artifact_type"], orjson.dumps(data["payload"]).decode(), _now_iso()),
    )
    return _OK


def _terminal(kind: str) -> Callable[[sqlite3.Connection, sqlite3.Row, bytes], Answer]:
    def handle(conn: sqlite3.Connection, row: sqlite3.Row, body: bytes) -> Answer:
        data = _parse_object(body)
        _require_str(data, "summary", *(("reason",) if kind == "error" else ()))
        now = _now_iso()
        reason = data.get("reason") if kind == "error" else None
        conn.execute(
            "INSERT INTO reports (run_id, kind, summary, reason, received_at) VALUES (?, ?, ?, ?, ?)",
            (row["id"], kind, data["summary"], reason, now),
        )
        # The first terminal report wins; a repeat (e.g. resent after a lost
        # answer) is accepted so the client stops retrying.
        if row["state"] not in TERMINAL_STATES:
            conn.execute(
                "UPDATE runs SET state = ?, summary = ?, reason = ?, finished_at = ? WHERE id = ?",
                (kind, data["summary"], reason, now, row["id"]),
            )
            return Answer(200, {"ok": True, "state": kind})
        return Answer(200, {"ok": True, "state": row["state"]})

    return handle


def _do_github_token(conn: sqlite3.Connection, row: sqlite3.Row, body: bytes) -> Answer:
    if row["github_token"] is None:
        return _error(404, "run has no github token")
    return Answer(200, {"token": row["github_token"]})


_HANDLERS: Mapping[str, Callable[[sqlite3.Connection, sqlite3.Row, bytes], Answer]] = {
    "bootstrap": _do_bootstrap,
    "heartbeat": _do_heartbeat,
    "logs": _do_logs,
    "batch": _do_batch,
    "artifacts": _do_artifacts,
    "complete": _terminal("complete"),
    "error": _terminal("error"),
    "github_token": _do_github_token,
}


def route_runs(method: str, path: str) -> tuple[str, str] | Answer:
    """(run_id, kind) for a /runs path, or the 404/405 answer."""
    parts = path.split("/", 3)  # ['', 'runs', id, rest]
    if len(parts) < 4 or not parts[2]:
        return _error(404, "no such endpoint")
    run_id, rest = parts[2], parts[3].rstrip("/")
    kind = _ROUTES.get((method, rest))
    if kind is not None:
        return run_id, kind
    if any(action == rest for _, action in _ROUTES):
        return _error(405, f"{method} not allowed here")
    return _error(404, "no such endpoint")


# --------------------------------------------------------------------- HTTP


class _Drop:
    """Answer marker: close the connection without answering."""


_DROP = _Drop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Many runs connect at once; the default backlog of 5 drops SYNs under load.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], backend: LocalBackend) -> None:
        self.backend = backend
        self._conn_lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.connections_opened = 0
        super().__init__(address, _Handler)

    def track(self, sock: socket.socket) -> None:
        with self._conn_lock:
            self._open.add(sock)
            self.connections_opened += 1

    def untrack(self, sock: socket.socket) -> None:
        with self._conn_lock:
            self._open.discard(sock)

    def close_connections(self) -> None:
        """Cut kept-alive connections so their handler threads end with the server."""
        with self._conn_lock:
            open_socks = list(self._open)
        for sock in open_socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client going away mid-answer is normal here (drops, timeouts, stop()).
        if isinstance(sys.exc_info()[1], OSError):
            return
        self.backend._record_error(traceback.format_exc())


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "flywheel-local-backend"
    # Headers and body are written separately: without this, Nagle + delayed
    # ACK add ~40 ms to every answer on a kept-alive connection.
    disable_nagle_algorithm = True
    # An idle kept-alive connection is closed after this long.
    timeout = 300
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet: a request line can carry a run id, a body can carry secrets."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._send(_error(411, "send a Content-Length (chunked bodies are not supported)"))
            return None
        raw = self.headers.get("Content-Length")
        try:
            length = int(raw) if raw else 0
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._send(_error(400, "bad Content-Length"))
            return None
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        body = self._read_body()
        if body is None:
            return
        path = self.path.split("?", 1)[0]
        try:
            answer = self.server.backend._answer(
                method, path, self.headers.get("X-Run-Token"), body
            )
        except Exception:  # noqa: BLE001 - a bug must not kill the connection silently
            if self.server.backend._stopping.is_set():
                # stop()/close() raced with this request (closed database).
                self.close_connection = True
                return
            self.server.backend._record_error(traceback.format_exc())
            answer = _error(500, "internal error in the local backend")
        if isinstance(answer, _Drop):
            self.close_connection = True
            return
        self._send(answer)

    def _send(self, answer: Answer) -> None:
        data = orjson.dumps(answer.body)
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


def _display_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class LocalBackend:
    """A local Flywheel backend on a real port, with its data in SQLite.

    `start()` serves in a background thread; `stop()` stops serving (the data
    stays readable until `close()`); `start()` again serves on the same port.
    As a context manager: started on enter, stopped and closed on exit.
    """

    def __init__(self, db_path: Path, host: str = DEFAULT_HOST, port: int = 0) -> None:
        self.db_path = Path(db_path)
        self.host = host
        self._port = port
        self._store = _Store(self.db_path)
        self._faults = _FaultState()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._errors: list[str] = []
        self._errors_lock = threading.Lock()
        self._connections_before = 0

    # -- lifecycle

    def start(self) -> "LocalBackend":
        if self._server is not None:
            raise RuntimeError("the local backend is already running")
        server_cls = _Server6 if ":" in self.host else _Server
        try:
            server = server_cls((self.host, self._port), self)
        except socket.gaierror as exc:
            raise ConfigError(f"Cannot serve on host {self.host!r}: {exc.strerror}.") from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"Port {self._port} on {self.host} is already in use (another "
                    "`flywheel-bootstrap serve`?). Stop that process or choose another port."
                ) from None
            raise ConfigError(
                f"Cannot serve on {self.host} port {self._port}: {exc.strerror or exc}. "
                "Choose another host or port."
            ) from None
        self._port = server.server_address[1]
        self._stopping = threading.Event()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"local-backend:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()  # wakes requests sleeping in an injected delay
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join()
        self._connections_before += server.connections_opened
        self._server = None
        self._thread = None

    def close(self) -> None:
        """Stop and close the database."""
        self.stop()
        self._store.close()

    def __enter__(self) -> "LocalBackend":
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{_display_host(self.host)}:{self._port}"

    @property
    def connections_opened(self) -> int:
        """TCP connections accepted since this object was created."""
        current = self._server.connections_opened if self._server is not None else 0
        return self._connections_before + current

    @property
    def errors(self) -> list[str]:
        """Tracebacks of internal errors (answered 500); empty when all is well."""
        with self._errors_lock:
            return list(self._errors)

    def _record_error(self, text: str) -> None:
        with self._errors_lock:
            self._errors.append(text)

    # -- runs and faults

    def create_run(self, prompt: str = "Say hello.", **payload_extras: Any) -> tuple[str, str]:
        """Create a run; returns (run_id, token).

        Extras: repo_context, github_token, wandb_api_key, hf_token, log_batch,
        and run_id/token to choose them instead of generating them.
        """
        unknown = sorted(set(payload_extras) - set(RunSpec.__dataclass_fields__))
        if unknown:
            raise TypeError(f"create_run() got unexpected keyword argument(s) {unknown}")
        return self._store.create_run(run_spec_from_mapping({"prompt": prompt, **payload_extras}))

    def set_faults(self, **faults: Any) -> None:
        """Set (merge) faults; the counters of the given ones restart. See Faults."""
        self._faults.set(faults)

    def clear_faults(self) -> None:
        self._faults.clear()

    def faults(self) -> dict[str, Any]:
        """The current faults and what is left of the counted/timed ones."""
        return self._faults.snapshot()

    # -- reading back

    def run(self, run_id: str) -> dict[str, Any]:
        """The run (no token; github/wandb/hf tokens shown as '***'). KeyError if unknown."""
        return self._store.run(run_id)

    def runs(self) -> list[dict[str, Any]]:
        return self._store.runs()

    def entries(self, run_id: str, *, dedupe: bool = False) -> list[dict[str, Any]]:
        """Log entries in received order, `extra` parsed. With dedupe, only the
        first entry of each `seq` is kept (entries without seq are all kept)."""
        entries = self._store.entries(run_id)
        if not dedupe:
            return entries
        seen: set[int] = set()
        unique = []
        for entry in entries:
            seq = entry["seq"]
            if seq is not None:
                if seq in seen:
                    continue
                seen.add(seq)
            unique.append(entry)
        return unique

    def entry_count(self, run_id: str) -> int:
        """Entries received for the run (duplicates included); O(1), cheap to wait on."""
        return self._store.entry_count(run_id)

    def heartbeats(self, run_id: str) -> list[dict[str, Any]]:
        return self._store.heartbeats(run_id)

    def artifacts(self, run_id: str) -> list[dict[str, Any]]:
        return self._store.artifacts(run_id)

    def reports(self, run_id: str) -> list[dict[str, Any]]:
        """Every complete/error report received, repeats included."""
        return self._store.reports(run_id)

    def request_counts(self, run_id: str) -> dict[str, int]:
        """Requests received for the run by kind (KINDS), whatever they were answered."""
        return self._store.request_counts(run_id)

    def wait_for(self, predicate: Callable[[], T], timeout: float) -> T:
        """Wait until predicate() is truthy, re-checking after every write to the
        store; returns its value. TimeoutError after `timeout` seconds."""
        with self._store.changed:
            result = self._store.changed.wait_for(predicate, timeout)
        if not result:
            raise TimeoutError(f"local backend: condition not met within {timeout} s")
        return result

    def wait_terminal(self, run_id: str, timeout: float) -> dict[str, Any]:
        """Wait until the run is complete or error; returns the run."""

        def terminal() -> dict[str, Any] | None:
            run = self.run(run_id)
            return run if run["state"] in TERMINAL_STATES else None

        try:
            return self.wait_for(terminal, timeout)
        except TimeoutError:
            state = self.run(run_id)["state"]
            raise TimeoutError(
                f"run {run_id} not terminal after {timeout} s (state {state})"
            ) from None

    # -- request handling (called from handler threads)

    def _answer(self, method: str, path: str, token: str | None, body: bytes) -> Answer | _Drop:
        if path.startswith("/runs/"):
            return self._answer_run(method, path, token, body)
        if path.startswith("/admin/"):
            return self._answer_admin(method, path, body)
        if path in ("/", "/health") and method == "GET":
            return Answer(200, {"ok": True, "service": "flywheel local backend"})
        return _error(404, "no such endpoint")

    def _answer_run(self, method: str, path: str, token: str | None, body: bytes) -> Answer | _Drop:
        routed = route_runs(method, path)
        if isinstance(routed, Answer):
            return routed
        run_id, kind = routed
        decision = self._faults.decide(path=path, run_id=run_id, kind=kind, body_bytes=len(body))
        if decision.delay_s > 0 and self._stopping.wait(decision.delay_s):
            return _DROP  # stopped while delaying: the server is going away
        if decision.drop and not decision.drop_after_handling:
            self._store.count_request(run_id, kind)
            return _DROP
        if decision.status is not None:
            self._store.count_request(run_id, kind)
            return Answer(decision.status, decision.body or {})
        handler = _HANDLERS[kind]

        def handle(conn: sqlite3.Connection, row: sqlite3.Row) -> Answer:
            return handler(conn, row, body)

        try:
            answer = self._store.run_request(run_id, kind, token, handle)
        except BadRequest as exc:
            # The transaction was rolled back, the count with it: count again.
            self._store.count_request(run_id, kind)
            return _error(400, str(exc))
        return _DROP if decision.drop else answer

    def _answer_admin(self, method: str, path: str, body: bytes) -> Answer:
        path = path.rstrip("/")
        if path == "/admin/runs":
            if method == "GET":
                return Answer(200, {"runs": self.runs()})
            if method == "POST":
                try:
                    spec = run_spec_from_mapping(_parse_object(body))
                    run_id, token = self._store.create_run(spec)
                except (BadRequest, ValueError) as exc:
                    return _error(400, str(exc))
                return Answer(200, {"run_id": run_id, "token": token})
            return _error(405, f"{method} not allowed here")
        if path.startswith("/admin/runs/"):
            if method != "GET":
                return _error(405, f"{method} not allowed here")
            run_id = path[len("/admin/runs/") :]
            try:
                return Answer(200, self._details(run_id))
            except KeyError:
                return _error(404, "unknown run")
        if path == "/admin/faults":
            if method == "GET":
                return Answer(200, self.faults())
            if method == "POST":
                try:
                    self._faults.set(_parse_object(body))
                except (BadRequest, ValueError) as exc:
                    return _error(400, str(exc))
                return Answer(200, self.faults())
            if method == "DELETE":
                self.clear_faults()
                return Answer(200, self.faults())
            return _error(405, f"{method} not allowed here")
        return _error(404, "no such endpoint")

    def _details(self, run_id: str) -> dict[str, Any]:
        with self._store.changed:  # one consistent snapshot
            return {
                "run": self.run(run_id),
                "entries": self.entries(run_id),
                "heartbeats": self.heartbeats(run_id),
                "artifacts": self.artifacts(run_id),
                "reports": self.reports(run_id),
                "requests": self.request_counts(run_id),
            }


# ---------------------------------------------------------------------- serve


def default_db_path() -> Path:
    return flywheel_home() / "local-backend.sqlite3"


def serve_instructions(url: str, db_path: Path) -> list[str]:
    """What `serve` prints: where it is, and how to use it."""
    create = (
        f"curl -s -X POST {url}/admin/runs -H 'Content-Type: application/json' "
        """-d '{"prompt": "Write hello.txt and list it as a text artifact"}'"""
    )
    return [
        f"Flywheel local backend at {url} (database {db_path}); Ctrl-C stops it.",
        f"  create a run:  {create}",
        "  run it:        FLYWHEEL_RUN_TOKEN=<token> flywheel-bootstrap --run-id <run_id> "
        f"--config <config.toml> --server {url}",
        f"  look at it:    curl -s {url}/admin/runs/<run_id>",
    ]


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    db_path: Path | None = None,
    *,
    echo: Callable[[str], None] = print,
) -> None:
    """Run the local backend in the foreground until SIGINT or SIGTERM.

    ConfigError (exit 2) when the port is taken or the database cannot be opened.
    """
    path = Path(db_path) if db_path is not None else default_db_path()
    stop = threading.Event()
    with LocalBackend(path, host, port) as backend:
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():

            def on_signal(signum: int, frame: FrameType | None) -> None:
                stop.set()

            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, on_signal)
        try:
            for line in serve_instructions(backend.url, path):
                echo(line)
            stop.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        echo("Local backend stopped.")
