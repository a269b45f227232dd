"""The local backend's HTTP layer: a threading server that tracks its
connections (so `stop()` can cut kept-alive ones), and a quiet HTTP/1.1 request
handler that reads the body and sends the Reply the service gives it."""

from __future__ import annotations

import select
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from supervisor.local_backend.replies import Drop, Reply, error


@dataclass(frozen=True)
class Service:
    """What the HTTP layer needs from the backend behind it."""

    # (method, path without query, X-Run-Token, body) -> the answer
    answer: Callable[[str, str, str | None, bytes], Reply | Drop]
    # True once the backend is stopping (requests may then fail on a closed database).
    stopping: Callable[[], bool]
    # Keeps the traceback of an internal error for the tests to see.
    record_error: Callable[[str], None]
    # path -> (bytes a second, bytes after which reading stalls) for a slow uplink
    body_pace: Callable[[str], tuple[int | None, int | None]] = lambda path: (None, None)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # Many runs connect at once; the default backlog of 5 drops SYNs under load.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], service: Service) -> None:
        self.service = service
        self._conn_lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.connections_opened = 0
        super().__init__(address, Handler)

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
        self.service.record_error(traceback.format_exc())


class Server6(Server):
    address_family = socket.AF_INET6


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "flywheel-local-backend"
    # Headers and body are written separately: without this, Nagle + delayed
    # ACK add ~40 ms to every answer on a kept-alive connection.
    disable_nagle_algorithm = True
    # An idle kept-alive connection is closed after this long.
    timeout = 300
    server: Server

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
            self._send(error(411, "send a Content-Length (chunked bodies are not supported)"))
            return None
        raw = self.headers.get("Content-Length")
        try:
            length = int(raw) if raw else 0
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._send(error(400, "bad Content-Length"))
            return None
        rate, stall = self.server.service.body_pace(self.path.split("?", 1)[0])
        if rate is None and stall is None:
            return self.rfile.read(length) if length else b""
        return self._read_paced(length, rate, stall)

    def _read_paced(self, length: int, rate: int | None, stall: int | None) -> bytes | None:
        """The body read slowly (a slow uplink), or up to `stall` bytes and then
        not at all until the client gives up or the server stops."""
        # A small receive buffer, so the client's sends wait on our pace as
        # they would on a slow network (not on a megabytes-deep buffer).
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        parts: list[bytes] = []
        got = 0
        started = time.monotonic()
        step = max(1, min(64 * 1024, (rate or 64 * 1024) // 10))
        while got < length:
            if stall is not None and got >= stall:
                self._wait_for_client_to_give_up()
                return None
            piece = self.rfile.read(min(step, length - got, (stall - got) if stall is not None else step))
            if not piece:
                return None  # the client gave up
            parts.append(piece)
            got += len(piece)
            if rate is not None:
                threading.Event().wait(max(0.0, started + got / rate - time.monotonic()))
        return b"".join(parts)

    def _wait_for_client_to_give_up(self) -> None:
        while not self.server.service.stopping():
            readable, _, _ = select.select([self.connection], [], [], 0.2)
            try:
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    return  # closed by the client
            except OSError:
                return
            if readable:
                threading.Event().wait(0.2)  # it is still sending: we are not reading

    def _dispatch(self, method: str) -> None:
        body = self._read_body()
        if body is None:
            self.close_connection = True
            return
        path = self.path.split("?", 1)[0]
        try:
            answer = self.server.service.answer(
                method, path, self.headers.get("X-Run-Token"), body
            )
        except Exception:  # noqa: BLE001 - a bug must not kill the connection silently
            if self.server.service.stopping():
                # stop()/close() raced with this request (closed database).
                self.close_connection = True
                return
            self.server.service.record_error(traceback.format_exc())
            answer = error(500, "internal error in the local backend")
        if isinstance(answer, Drop):
            self.close_connection = True
            return
        self._send(answer)

    def _send(self, answer: Reply) -> None:
        data = orjson.dumps(answer.body)
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


def display_host(host: str) -> str:
    """The host as it goes in a URL; a wildcard address becomes loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
