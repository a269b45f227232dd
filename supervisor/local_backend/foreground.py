"""`flywheel-bootstrap serve`: the local backend in the foreground until SIGINT
or SIGTERM, with a few lines on how to use it."""

from __future__ import annotations

import ipaddress
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from supervisor.local_backend.backend import DEFAULT_HOST, LocalBackend
from workers.common.files import flywheel_home

DEFAULT_PORT = 8000


def default_db_path() -> Path:
    return flywheel_home() / "local-backend.sqlite3"


def is_loopback(host: str) -> bool:
    """True when `host` (a name or an address) only ever means this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
        "                 (add BOOTSTRAP_MOCK_CODEX=1 to try it without Codex or a model: the mock agent)",
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
            if not is_loopback(host):
                echo(f"warning: the admin API (/admin/...: create runs, read their entries, inject faults) has "
                     f"no authentication and now listens on {host}, beyond this machine; bind to 127.0.0.1 "
                     "unless every host that can reach it is trusted")
            for line in serve_instructions(backend.url, path):
                echo(line)
            stop.wait()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
        echo("Local backend stopped.")
