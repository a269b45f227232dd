"""Where the local backend keeps its runs: one SQLite database (schema, writes,
reads) and the conversion of its rows to what tests and the admin API see."""

from __future__ import annotations

import hmac
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from supervisor.local_backend import control
from supervisor.local_backend.replies import Reply, error
from supervisor.local_backend.runs import KINDS, SECRET_KEYS, NewRun, new_run_id, now_iso
from workers.common.errors import ConfigError
from workers.common.redact import MASK

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


def public_run(row: Mapping[str, Any] | sqlite3.Row) -> dict[str, Any]:
    """A run as shown to tests and the admin API: no token, secrets masked."""
    run = {key: row[key] for key in row.keys() if key != "token"}
    if run["repo_context"] is not None:
        run["repo_context"] = orjson.loads(run["repo_context"])
    if run["log_batch"] is not None:
        run["log_batch"] = bool(run["log_batch"])
    for key in SECRET_KEYS:
        if run[key] is not None:
            run[key] = MASK
    return run


class Store:
    """One SQLite connection behind one re-entrant lock.

    The lock is also the lock of `changed`, a Condition notified after every
    write, so tests wait for what they expect instead of sleeping.
    """

    def __init__(self, db_path: Path) -> None:
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            # It holds run tokens: 0600 before SQLite writes anything (its
            # -wal and -shm files take the database file's mode).
            os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            os.chmod(db_path, 0o600)
            conn = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # A test/demo database: speed over durability after a power cut.
            conn.execute("PRAGMA synchronous=OFF")
            conn.executescript(_SCHEMA)
            conn.executescript(control.SCHEMA)
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

    def create_run(self, spec: NewRun) -> tuple[str, str]:
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
                    now_iso(),
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
        handle: Callable[[sqlite3.Connection, sqlite3.Row], Reply],
    ) -> Reply:
        """Check the run and its token, count the request and handle it, all in
        one transaction (one fsync-free commit per request keeps it fast)."""
        with self.changed:
            conn = self._conn
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                return error(404, "unknown run")
            conn.execute("BEGIN")
            try:
                conn.execute(_COUNT_SQL, (run_id, kind))
                if token is None or not hmac.compare_digest(token.encode(), row["token"].encode()):
                    answer = error(401, "missing or wrong X-Run-Token")
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

    def queue_command(self, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Queue a control command for a run (KeyError if unknown, BadRequest if malformed)."""
        with self.changed:
            self._one_run(run_id)
            queued = control.queue_command(self._conn, run_id, body)
            self.changed.notify_all()
        return queued

    # -- reads

    def _one_run(self, run_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = self._conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
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

    def control(self, run_id: str) -> dict[str, Any]:
        """The run's control commands (oldest first, with their acks) and its polls."""
        with self.changed:
            self._one_run(run_id)
            return {"commands": control.commands(self._conn, run_id), "polls": control.polls(self._conn, run_id)}

    def request_counts(self, run_id: str) -> dict[str, int]:
        with self.changed:
            self._one_run(run_id)
            rows = self._conn.execute(
                "SELECT kind, n FROM request_counts WHERE run_id = ?", (run_id,)
            ).fetchall()
        counts = dict.fromkeys(KINDS, 0)
        counts.update({row["kind"]: row["n"] for row in rows})
        return counts
