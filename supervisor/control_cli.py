"""`flywheel-bootstrap control RUN_ID take-over | send TEXT | resume-autonomous`:
a person at the terminal queues a control command in the local backend (its
admin API) and waits, bounded, for the run to acknowledge it (docs/control-channel.md)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests

from workers.common.errors import EXIT_OK, EXIT_RUN_ERROR, BackendUnavailable
from workers.common.server_url import validate_server_url

# The words a person types -> the protocol's command names.
ACTIONS = {"take-over": "take_over", "send": "send_input", "resume-autonomous": "resume_autonomous"}
ASK_EVERY = 0.2


def _call(session: requests.Session, method: str, url: str, **kw: Any) -> Any:
    try:
        r = session.request(method, url, timeout=10, allow_redirects=False, **kw)
    except requests.RequestException as exc:
        raise BackendUnavailable(f"cannot reach the local backend at {url}: {type(exc).__name__}; "
                                 "is `flywheel-bootstrap serve` running and --server right?") from None
    try:
        body = r.json()
    except ValueError:
        body = {}
    if r.status_code == 404:
        raise BackendUnavailable(f"{body.get('error') or 'not found'} ({url}); check the run id and --server "
                                 "(the control command speaks to the local backend only)")
    if r.status_code != 200:
        raise BackendUnavailable(f"the local backend answered HTTP {r.status_code} for {url}: {body.get('error', '')}")
    return body


def describe(command: dict[str, Any]) -> str:
    detail = f": {command['detail']}" if command.get("detail") else ""
    return f"{command['command_id']} {command['status']}{detail}"


def send_control(server: str, run_id: str, action: str, text: str | None, wait: float,
                 echo: Callable[[str], None]) -> int:
    """Queue the command, print its ack; exit 0 when applied, 1 otherwise."""
    base = f"{validate_server_url(server)}/admin/runs/{run_id}/control"
    body: dict[str, Any] = {"command": ACTIONS[action]}
    if text is not None:
        body["payload"] = {"text": text}
    session = requests.Session()
    session.trust_env = False  # a proxy variable must not reroute loopback traffic
    command_id = _call(session, "POST", base, json=body)["command_id"]
    echo(f"queued {ACTIONS[action]} as {command_id}; waiting up to {wait:g} s for the run to acknowledge it")
    deadline = time.monotonic() + wait
    while True:
        command = _call(session, "GET", f"{base}/{command_id}")
        if command.get("acked_at"):
            echo(describe(command))
            return EXIT_OK if command["status"] == "applied" else EXIT_RUN_ERROR
        if time.monotonic() >= deadline:
            echo(f"{command_id} not acknowledged within {wait:g} s (handed out {command.get('handed_out', 0)} "
                 "time(s)); it stays queued for the run")
            return EXIT_RUN_ERROR
        time.sleep(min(ASK_EVERY, max(0.0, deadline - time.monotonic())))
