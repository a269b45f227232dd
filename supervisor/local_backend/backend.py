"""`LocalBackend`: the local Flywheel backend as one Python object. It serves the
HTTP API on a real port in a background thread, and is how tests and the demo
create runs, set faults and read back what was received."""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from supervisor.local_backend import api
from supervisor.local_backend.faults import FaultState
from supervisor.local_backend.httpd import Server, Server6, Service, display_host
from supervisor.local_backend.replies import Drop, Reply
from supervisor.local_backend.runs import (
    TERMINAL_STATES,
    NewRun,
    dedupe_entries,
    new_run_from_mapping,
)
from supervisor.local_backend.store import Store
from workers.common.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"

T = TypeVar("T")


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
        self._store = Store(self.db_path)
        self._faults = FaultState()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._errors: list[str] = []
        self._errors_lock = threading.Lock()
        self._connections_before = 0

    # -- lifecycle

    def start(self) -> LocalBackend:
        if self._server is not None:
            raise RuntimeError("the local backend is already running")
        server_cls = Server6 if ":" in self.host else Server
        service = Service(
            answer=self._answer,
            # Read at call time: start() replaces the event.
            stopping=lambda: self._stopping.is_set(),
            record_error=self._record_error,
            body_pace=self._faults.body_pace,
        )
        try:
            server = server_cls((self.host, self._port), service)
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

    def __enter__(self) -> LocalBackend:
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
        return f"http://{display_host(self.host)}:{self._port}"

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
        unknown = sorted(set(payload_extras) - set(NewRun.__dataclass_fields__))
        if unknown:
            raise TypeError(f"create_run() got unexpected keyword argument(s) {unknown}")
        return self._store.create_run(new_run_from_mapping({"prompt": prompt, **payload_extras}))

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
        return dedupe_entries(entries) if dedupe else entries

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

    def queue_command(self, run_id: str, command: str, payload: dict[str, Any] | None = None) -> str:
        """Queue a control command for the run (docs/control-channel.md); returns its command_id."""
        body: dict[str, Any] = {"command": command} if payload is None else {"command": command, "payload": payload}
        return str(self._store.queue_command(run_id, body)["command_id"])

    def control(self, run_id: str) -> dict[str, Any]:
        """The run's control commands, oldest first, each with how often it was
        handed out and its ack; and the run's polls (first_at, last_at, n)."""
        return self._store.control(run_id)

    def command(self, run_id: str, command_id: str) -> dict[str, Any]:
        """One control command and its ack; KeyError if unknown."""
        for command in self.control(run_id)["commands"]:
            if command["command_id"] == command_id:
                return dict(command)
        raise KeyError(f"unknown command {command_id!r}")

    def wait_ack(self, run_id: str, command_id: str, timeout: float) -> dict[str, Any]:
        """Wait until the command is acknowledged; returns it with its ack."""
        try:
            return self.wait_for(lambda: (c := self.command(run_id, command_id))["acked_at"] and c, timeout)
        except TimeoutError:
            raise TimeoutError(f"command {command_id} of run {run_id} not acknowledged after {timeout} s") from None

    def wait_for(self, predicate: Callable[[], T | None], timeout: float) -> T:
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

    def _answer(self, method: str, path: str, token: str | None, body: bytes) -> Reply | Drop:
        return api.answer(self._store, self._faults, self._stopping, method, path, token, body)
