"""The run API's calls (docs/protocol.md), one handler each: validate the body and
write it, inside the transaction the store opened for the request.

Each handler takes (conn, run row, raw body) and returns the Reply; a body the
backend refuses raises BadRequest (answered 400, the transaction rolled back).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from supervisor.local_backend.replies import OK, Reply, error
from supervisor.local_backend.runs import LEVELS, SECRET_KEYS, TERMINAL_STATES, now_iso

Handler = Callable[[sqlite3.Connection, sqlite3.Row, bytes], Reply]

_ENTRY_SQL = (
    "INSERT INTO entries (run_id, seq, level, message, extra, created_at, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class BadRequest(Exception):
    """A request body the backend refuses with 400."""


def _require_str(body: Mapping[str, Any], *keys: str) -> None:
    for key in keys:
        if not isinstance(body.get(key), str):
            raise BadRequest(f"{key!r} is required and must be a string")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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


def bootstrap_payload(row: Mapping[str, Any] | sqlite3.Row) -> dict[str, Any]:
    """The payload of GET bootstrap: only the keys that are set."""
    payload: dict[str, Any] = {"prompt": row["prompt"]}
    if row["repo_context"] is not None:
        payload["repo_context"] = orjson.loads(row["repo_context"])
    for key in SECRET_KEYS:
        if row[key] is not None:
            payload[key] = row[key]
    if row["log_batch"] is not None:
        payload["log_batch"] = bool(row["log_batch"])
    return payload


def parse_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise BadRequest("body must be a JSON object")
    return parsed


def _do_bootstrap(conn: sqlite3.Connection, row: sqlite3.Row, body: bytes) -> Reply:
    if row["state"] in TERMINAL_STATES:
        return error(409, f"run already {row['state']}")
    if row["state"] == "created":
        conn.execute(
            "UPDATE runs SET state = 'claimed', claimed_at = ? WHERE id = ?",
            (now_iso(), row["id"]),
        )
    return Reply(200, {"payload": bootstrap_payload(row)})


def _do_heartbeat(conn: sqlite3.Connection, row: sqlite3.Row, body: bytes) -> Reply:
    data = parse_object(body)
    _require_str(data, "observed_at", "summary")
    now = now_iso()
    conn.execute(
        "INSERT INTO heartbeats (run_id, observed_at, summary, received_at) VALUES (?, ?, ?, ?)",
        (row["id"], data["observed_at"], data["summary"], now),
    )
    conn.execute("UPDATE runs SET last_heartbeat_at = ? WHERE id = ?", (now, row["id"]))
    return OK


def _do_logs(conn: sqlite3.Connection, row: sqlite3.Row, body: bytes) -> Reply:
    conn.execute(_ENTRY_SQL, entry_row(row["id"], parse_object(body), now_iso()))
    return Reply(200, {"ok": True, "accepted": 1}, entries_added=1)


def _do_batch(conn: sqlite3.Connection, row: sqlite3.Row, body: bytes) -> Reply:
    entries = parse_object(body).get("entries")
    if not isinstance(entries, list):
        raise BadRequest("'entries' is required and must be a list")
    now = now_iso()
    rows = [entry_row(row["id"], entry, now) for entry in entries]
    conn.executemany(_ENTRY_SQL, rows)
    return Reply(200, {"ok": True, "accepted": len(rows)}, entries_added=len(rows))


def _do_artifacts(conn: sqlite3.Connection, row: sqlite3.Row, body: bytes) -> Reply:
    data = parse_object(body)
    _require_str(data, "artifact_type")
    if not isinstance(data.get("payload"), dict):
        raise BadRequest("'payload' is required and must be an object")
    conn.execute(
        "INSERT INTO artifacts (run_id, artifact_type, payload, received_at) VALUES (?, ?, ?, ?)",
        (row["id"], data["artifact_type"], orjson.dumps(data["payload"]).decode(), now_iso()),
    )
    return OK


def _terminal(kind: str) -> Handler:
    def handle(conn: sqlite3.Connection, row: sqlite3.Row, body: bytes) -> Reply:
        data = parse_object(body)
        _require_str(data, "summary", *(("reason",) if kind == "error" else ()))
        now = now_iso()
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
            return Reply(200, {"ok": True, "state": kind})
        return Reply(200, {"ok": True, "state": row["state"]})

    return handle


def _do_github_token(conn: sqlite3.Connection, row: sqlite3.Row, body: bytes) -> Reply:
    if row["github_token"] is None:
        return error(404, "run has no github token")
    return Reply(200, {"token": row["github_token"]})


HANDLERS: Mapping[str, Handler] = {
    "bootstrap": _do_bootstrap,
    "heartbeat": _do_heartbeat,
    "logs": _do_logs,
    "batch": _do_batch,
    "artifacts": _do_artifacts,
    "complete": _terminal("complete"),
    "error": _terminal("error"),
    "github_token": _do_github_token,
}
