"""Which code answers a request: the run API (`/runs/{id}/...`, token-checked,
subject to the injected faults), the admin API (`/admin/...`) and `/health`.

Plain functions over the store, the fault state and the backend's `stopping`
event; the HTTP layer calls `answer` from its handler threads.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping
from typing import Any

from supervisor.local_backend import control
from supervisor.local_backend.faults import FaultState
from supervisor.local_backend.handlers import HANDLERS, BadRequest, parse_object
from supervisor.local_backend.replies import DROP, Drop, Reply, error
from supervisor.local_backend.runs import new_run_from_mapping
from supervisor.local_backend.store import Store

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
    ("GET", "control/poll"): "control_poll",
    ("POST", "control/ack"): "control_ack",
}
_HANDLERS = {**HANDLERS, "control_poll": control.do_poll, "control_ack": control.do_ack}


def route_runs(method: str, path: str) -> tuple[str, str] | Reply:
    """(run_id, kind) for a /runs path, or the 404/405 answer."""
    parts = path.split("/", 3)  # ['', 'runs', id, rest]
    if len(parts) < 4 or not parts[2]:
        return error(404, "no such endpoint")
    run_id, rest = parts[2], parts[3].rstrip("/")
    kind = _ROUTES.get((method, rest))
    if kind is not None:
        return run_id, kind
    if any(action == rest for _, action in _ROUTES):
        return error(405, f"{method} not allowed here")
    return error(404, "no such endpoint")


def answer(
    store: Store,
    faults: FaultState,
    stopping: threading.Event,
    method: str,
    path: str,
    token: str | None,
    body: bytes,
) -> Reply | Drop:
    """The answer to one request (path without its query string)."""
    if path.startswith("/runs/"):
        return answer_run(store, faults, stopping, method, path, token, body)
    if path.startswith("/admin/"):
        return answer_admin(store, faults, method, path, body)
    if path in ("/", "/health") and method == "GET":
        return Reply(200, {"ok": True, "service": "flywheel local backend"})
    return error(404, "no such endpoint")


def answer_run(
    store: Store,
    faults: FaultState,
    stopping: threading.Event,
    method: str,
    path: str,
    token: str | None,
    body: bytes,
) -> Reply | Drop:
    routed = route_runs(method, path)
    if isinstance(routed, Reply):
        return routed
    run_id, kind = routed
    decision = faults.decide(path=path, run_id=run_id, kind=kind, body_bytes=len(body), body=body)
    if decision.delay_s > 0 and stopping.wait(decision.delay_s):
        return DROP  # stopped while delaying: the server is going away
    if decision.drop and not decision.drop_after_handling:
        store.count_request(run_id, kind)
        return DROP
    if decision.status is not None:
        store.count_request(run_id, kind)
        return Reply(decision.status, decision.body or {})
    handler = _HANDLERS[kind]

    def handle(conn: sqlite3.Connection, row: sqlite3.Row) -> Reply:
        return handler(conn, row, body)

    try:
        result = store.run_request(run_id, kind, token, handle)
    except BadRequest as exc:
        # The transaction was rolled back, the count with it: count again.
        store.count_request(run_id, kind)
        return error(400, str(exc))
    return DROP if decision.drop else result


def answer_admin(store: Store, faults: FaultState, method: str, path: str, body: bytes) -> Reply:
    path = path.rstrip("/")
    if path == "/admin/runs":
        if method == "GET":
            return Reply(200, {"runs": store.runs()})
        if method == "POST":
            try:
                spec = new_run_from_mapping(parse_object(body))
                run_id, token = store.create_run(spec)
            except (BadRequest, ValueError) as exc:
                return error(400, str(exc))
            return Reply(200, {"run_id": run_id, "token": token})
        return error(405, f"{method} not allowed here")
    if path.startswith("/admin/runs/"):
        run_id, _, rest = path[len("/admin/runs/") :].partition("/")
        if rest == "control" or rest.startswith("control/"):
            return answer_control(store, method, run_id, rest[len("control/") :], body)
        if rest:
            return error(404, "no such endpoint")
        if method != "GET":
            return error(405, f"{method} not allowed here")
        try:
            return Reply(200, run_details(store, run_id))
        except KeyError:
            return error(404, "unknown run")
    if path == "/admin/faults":
        if method == "GET":
            return Reply(200, faults.snapshot())
        if method == "POST":
            try:
                faults.set(parse_object(body))
            except (BadRequest, ValueError) as exc:
                return error(400, str(exc))
            return Reply(200, faults.snapshot())
        if method == "DELETE":
            faults.clear()
            return Reply(200, faults.snapshot())
        return error(405, f"{method} not allowed here")
    return error(404, "no such endpoint")


def answer_control(store: Store, method: str, run_id: str, command_id: str, body: bytes) -> Reply:
    """/admin/runs/{id}/control: POST queues a command, GET lists them (and the
    polls); /admin/runs/{id}/control/{command_id}: GET one command and its ack."""
    try:
        if command_id:
            if method != "GET":
                return error(405, f"{method} not allowed here")
            found = [c for c in store.control(run_id)["commands"] if c["command_id"] == command_id]
            return Reply(200, found[0]) if found else error(404, f"unknown command {command_id!r}")
        if method == "GET":
            return Reply(200, store.control(run_id))
        if method == "POST":
            return Reply(200, store.queue_command(run_id, parse_object(body)))
    except KeyError:
        return error(404, "unknown run")
    except BadRequest as exc:
        return error(400, str(exc))
    return error(405, f"{method} not allowed here")


def run_details(store: Store, run_id: str) -> dict[str, Any]:
    """Everything received for a run; KeyError if unknown."""
    with store.changed:  # one consistent snapshot
        return {
            "run": store.run(run_id),
            "entries": store.entries(run_id),
            "heartbeats": store.heartbeats(run_id),
            "artifacts": store.artifacts(run_id),
            "reports": store.reports(run_id),
            "requests": store.request_counts(run_id),
            "control": store.control(run_id),
        }
