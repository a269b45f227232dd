"""The run control channel of the local backend (docs/control-channel.md): a queue of
commands per run and their acks, in the same SQLite database.

The run API hands out the oldest command not yet acknowledged, again on every
poll, until it is acknowledged; the first ack of a command is the one kept
(later ones are counted). The admin API queues commands and reads them back.
"""

from __future__ import annotations

import secrets
import sqlite3
from typing import Any

import orjson

from supervisor.local_backend.handlers import BadRequest, parse_object
from supervisor.local_backend.replies import Reply, error
from supervisor.local_backend.runs import TERMINAL_STATES, now_iso

SCHEMA = """
CREATE TABLE IF NOT EXISTS control_commands (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    command_id TEXT NOT NULL UNIQUE,
    run_id TEXT NOT NULL,
    command TEXT NOT NULL,
    payload TEXT,
    queued_at TEXT NOT NULL,
    handed_out INTEGER NOT NULL DEFAULT 0,
    first_handed_at TEXT,
    status TEXT,
    detail TEXT,
    acked_at TEXT,
    acks INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS control_by_run ON control_commands (run_id, n);
CREATE TABLE IF NOT EXISTS control_polls (
    run_id TEXT PRIMARY KEY,
    first_at TEXT NOT NULL,
    last_at TEXT NOT NULL,
    n INTEGER NOT NULL
) WITHOUT ROWID;
"""

ACK_STATUSES = frozenset({"applied", "ignored", "failed"})
_COLUMNS = ("command_id", "command", "payload", "queued_at", "handed_out", "first_handed_at",
            "status", "detail", "acked_at", "acks")


def _command(row: sqlite3.Row) -> dict[str, Any]:
    command = {key: row[key] for key in _COLUMNS}
    command["payload"] = None if row["payload"] is None else orjson.loads(row["payload"])
    return command


def do_poll(conn: sqlite3.Connection, row: sqlite3.Row, body: bytes) -> Reply:
    now = now_iso()
    conn.execute(
        "INSERT INTO control_polls (run_id, first_at, last_at, n) VALUES (?, ?, ?, 1) "
        "ON CONFLICT (run_id) DO UPDATE SET last_at = excluded.last_at, n = n + 1",
        (row["id"], now, now),
    )
    if row["state"] in TERMINAL_STATES:
        return Reply(200, {})
    pending = conn.execute(
        "SELECT * FROM control_commands WHERE run_id = ? AND acked_at IS NULL ORDER BY n LIMIT 1",
        (row["id"],),
    ).fetchone()
    if pending is None:
        return Reply(200, {})
    conn.execute(
        "UPDATE control_commands SET handed_out = handed_out + 1, "
        "first_handed_at = coalesce(first_handed_at, ?) WHERE n = ?",
        (now, pending["n"]),
    )
    answer: dict[str, Any] = {"command_id": pending["command_id"], "command": pending["command"]}
    if pending["payload"] is not None:
        answer["payload"] = orjson.loads(pending["payload"])
    return Reply(200, answer)


def do_ack(conn: sqlite3.Connection, row: sqlite3.Row, body: bytes) -> Reply:
    data = parse_object(body)
    command_id, status, detail = data.get("command_id"), data.get("status"), data.get("detail")
    if not isinstance(command_id, str) or not command_id:
        raise BadRequest("'command_id' is required and must be a string")
    if status not in ACK_STATUSES:
        raise BadRequest(f"'status' must be one of {sorted(ACK_STATUSES)}, got {status!r}")
    if detail is not None and not isinstance(detail, str):
        raise BadRequest("'detail' must be a string")
    found = conn.execute(
        "SELECT n, acked_at FROM control_commands WHERE run_id = ? AND command_id = ?", (row["id"], command_id)
    ).fetchone()
    if found is None:
        return error(404, f"unknown command {command_id!r}")
    if found["acked_at"] is None:
        conn.execute(
            "UPDATE control_commands SET status = ?, detail = ?, acked_at = ?, acks = 1 WHERE n = ?",
            (status, detail, now_iso(), found["n"]),
        )
    else:  # a repeat (its answer was lost, or a restarted bootstrap): the first ack stays
        conn.execute("UPDATE control_commands SET acks = acks + 1 WHERE n = ?", (found["n"],))
    return Reply(200, {"ok": True})


def queue_command(conn: sqlite3.Connection, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Queue a command from the admin API body {"command": str, "payload"?: {...}}."""
    unknown = sorted(set(body) - {"command", "payload"})
    if unknown:
        raise BadRequest(f"unknown key(s) {unknown}; allowed: ['command', 'payload']")
    command, payload = body.get("command"), body.get("payload")
    if not isinstance(command, str) or not command.strip():
        raise BadRequest("'command' is required and must be a non-empty string (e.g. 'take_over')")
    if payload is not None and not isinstance(payload, dict):
        raise BadRequest("'payload' must be an object")
    command_id = "cmd_" + secrets.token_hex(6)
    conn.execute(
        "INSERT INTO control_commands (command_id, run_id, command, payload, queued_at) VALUES (?, ?, ?, ?, ?)",
        (command_id, run_id, command, None if payload is None else orjson.dumps(payload).decode(), now_iso()),
    )
    return {"command_id": command_id}


def commands(conn: sqlite3.Connection, run_id: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM control_commands WHERE run_id = ? ORDER BY n", (run_id,)).fetchall()
    return [_command(row) for row in rows]


def polls(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    found = conn.execute("SELECT first_at, last_at, n FROM control_polls WHERE run_id = ?", (run_id,)).fetchone()
    return {"first_at": None, "last_at": None, "n": 0} if found is None else dict(found)
