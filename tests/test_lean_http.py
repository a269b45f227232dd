"""The telemetry POST path (workers.common.lean_http under Backend.post_once)
against real loopback servers: what goes on the wire, one write per small
request, no redirects, transport failures as Answer(0), a closed pool reopened."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from backend_fixture import backend  # noqa: F401
from loopback import serving

from supervisor.local_backend import LocalBackend
from workers.common.backend_client import Backend
from workers.common.lean_http import ONE_WRITE_MAX, OneWriteAdapter
from workers.common.timing import Timing

pytestmark = pytest.mark.timeout(60)

TIMING = Timing(connect_timeout=2.0, read_timeout=2.0)


def entry(seq: int, text: str = "hello") -> dict[str, object]:
    return {"created_at": "2026-01-01T00:00:00.000Z", "level": "info", "message": text,
            "extra": {"run_event_source": "codex", "run_event_kind": "codex_event", "seq": seq}}


def test_entries_reach_the_backend_in_order_on_one_connection(backend: LocalBackend) -> None:  # noqa: F811
    run_id, token = backend.create_run()
    opened = backend.connections_opened
    with Backend(backend.url, run_id, token, TIMING) as client:
        for seq in range(1, 51):
            assert client.post_once("/logs", entry(seq)).status == 200
    assert [e["extra"]["seq"] for e in backend.entries(run_id)] == list(range(1, 51))
    assert backend.connections_opened - opened == 1


def test_a_large_body_is_sent_whole(backend: LocalBackend) -> None:  # noqa: F811
    run_id, token = backend.create_run(log_batch=True)
    big = "x" * (ONE_WRITE_MAX * 3)
    with Backend(backend.url, run_id, token, TIMING) as client:
        body = {"entries": [entry(1, big), entry(2)]}
        assert client.post_once("/logs/batch", body).status == 200
    assert [e["message"] for e in backend.entries(run_id)] == [big, "hello"]


def test_a_wrong_token_is_answered_not_raised(backend: LocalBackend) -> None:  # noqa: F811
    run_id, _ = backend.create_run()
    with Backend(backend.url, run_id, "wrong", TIMING) as client:
        assert client.post_once("/logs", entry(1)).status in (401, 403)


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, dict[str, str], bytes]] = []

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.path, dict(self.headers), body))
        if self.path.endswith("/moved"):
            self.send_response(307)
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
        else:
            self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


def test_headers_path_and_no_redirect() -> None:
    _Recorder.seen = []
    with serving(_Recorder) as url:
        with Backend(url + "/api", "run 1", "tok-123", TIMING) as client:
            assert client.post_once("/logs", b'{"a":1}').status == 200
            moved = client.post_once("/moved", b"{}")
    assert moved.status == 307  # answered as is, never followed
    path, headers, body = _Recorder.seen[0]
    assert path == "/api/runs/run%201/logs"
    assert body == b'{"a":1}'
    assert headers["X-Run-Token"] == "tok-123"
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Length"] == "7"
    assert len(_Recorder.seen) == 2


@contextmanager
def raw_listener() -> Iterator[tuple[socket.socket, int]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    try:
        yield sock, sock.getsockname()[1]
    finally:
        sock.close()


def test_a_small_request_on_the_wire() -> None:
    """Header block then body, framed by Content-Length (sent in one write:
    benchmarks/README.md shows what that saves the server)."""
    with raw_listener() as (sock, port):
        got = bytearray()

        def serve() -> None:
            conn, _ = sock.accept()
            with conn:
                conn.settimeout(5)
                while not got.endswith(b'{"seq":1}'):
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    got.extend(chunk)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with Backend(f"http://127.0.0.1:{port}", "r1", "t", TIMING) as client:
            assert client.post_once("/logs", b'{"seq":1}').status == 200
        thread.join(10)
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"POST /runs/r1/logs HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 9" in head and body == b'{"seq":1}'


def test_transport_failures_are_answer_zero(tmp_path: Path) -> None:
    with raw_listener() as (_, port):
        pass  # closed: nothing listens there any more
    with Backend(f"http://127.0.0.1:{port}", "r1", "t", TIMING) as client:
        assert client.post_once("/logs", b"{}").status == 0
    with raw_listener() as (sock, port):  # accepts (backlog) but never answers
        with Backend(f"http://127.0.0.1:{port}", "r1", "t", Timing(connect_timeout=0.5, read_timeout=0.5)) as client:
            assert client.post_once("/logs", b"{}").status == 0


def test_posts_work_again_after_close(backend: LocalBackend) -> None:  # noqa: F811
    """Closing the session (or its adapter) closes the pool; the next post
    opens a new one rather than failing for good."""
    run_id, token = backend.create_run()
    client = Backend(backend.url, run_id, token, TIMING)
    assert client.post_once("/logs", entry(1)).status == 200
    client.close()
    assert client.post_once("/logs", entry(2)).status == 200
    client.close()
    assert [e["extra"]["seq"] for e in backend.entries(run_id)] == [1, 2]


class _OldAdapter(OneWriteAdapter):
    """An adapter as requests < 2.32.2 has it: no get_connection_with_tls_context."""

    @property
    def get_connection_with_tls_context(self) -> None:  # type: ignore[override]
        raise AttributeError("get_connection_with_tls_context")


@pytest.mark.filterwarnings("ignore:`get_connection` has been deprecated:DeprecationWarning")
def test_older_requests_adapters_still_post(backend: LocalBackend) -> None:  # noqa: F811
    run_id, token = backend.create_run()
    with Backend(backend.url, run_id, token, TIMING) as client:
        client._session.mount("http://", _OldAdapter())
        assert client.post_once("/logs", entry(1)).status == 200
    assert [e["extra"]["seq"] for e in backend.entries(run_id)] == [1]
