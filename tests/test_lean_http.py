"""The telemetry POST path (workers.common.lean_http under Backend.post_once)
against real loopback servers: what goes on the wire, one write per small
request, no redirects, transport failures as Answer(0), a closed pool reopened."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from backend_fixture import backend  # noqa: F401
from loopback import serving
from requests.adapters import HTTPAdapter

from supervisor.local_backend import LocalBackend
from workers.common.backend_client import Backend
from workers.common.lean_http import ONE_WRITE_MAX
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


def serve_raw(sock: socket.socket, got: bytearray, rounds: list[tuple[Callable[[], bool], bytes]]) -> threading.Thread:
    """One connection accepted on `sock`: per round, what arrives goes into
    `got` until the round's condition holds, then its body is answered."""

    def serve() -> None:
        conn, _ = sock.accept()
        with conn:
            conn.settimeout(5)
            for done, body in rounds:
                while not done():
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    got.extend(chunk)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_a_small_request_on_the_wire() -> None:
    """Header block then body, framed by Content-Length (sent in one write:
    benchmarks/README.md shows what that saves the server)."""
    with raw_listener() as (sock, port):
        got = bytearray()
        thread = serve_raw(sock, got, [(lambda: got.endswith(b'{"seq":1}'), b"{}")])
        with Backend(f"http://127.0.0.1:{port}", "r1", "t", TIMING) as client:
            assert client.post_once("/logs", b'{"seq":1}').status == 200
        thread.join(10)
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"POST /runs/r1/logs HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 9" in head and body == b'{"seq":1}'


def test_a_poll_on_the_wire() -> None:
    """The control poll's GET: the same headers as a post, no body and no
    Content-Length (as requests sends a GET), on the posts' connection."""
    with raw_listener() as (sock, port):
        got = bytearray()
        thread = serve_raw(sock, got, [(lambda: got.count(b"\r\n\r\n") == 1, b"{}"),
                                       (lambda: got.count(b"\r\n\r\n") == 2, b'{"command_id": "c1"}')])
        with Backend(f"http://127.0.0.1:{port}", "r 1", "tok-9", TIMING) as client:
            assert client.get_once("/control/poll", 5.0).json() == {}
            assert client.get_once("/control/poll", 5.0).json() == {"command_id": "c1"}  # the same connection
        thread.join(10)
    first, second, rest = bytes(got).split(b"\r\n\r\n")
    assert first == second and rest == b""
    assert first.startswith(b"GET /runs/r%201/control/poll HTTP/1.1\r\n")
    assert b"\r\nX-Run-Token: tok-9" in first and b"Content-Length" not in first


def test_transport_failures_are_answer_zero(tmp_path: Path) -> None:
    with raw_listener() as (_, port):
        pass  # closed: nothing listens there any more
    with Backend(f"http://127.0.0.1:{port}", "r1", "t", TIMING) as client:
        assert client.post_once("/logs", b"{}").status == 0
        assert client.get_once("/control/poll", 0.5).status == 0
    with raw_listener() as (sock, port):  # accepts (backlog) but never answers
        with Backend(f"http://127.0.0.1:{port}", "r1", "t", Timing(connect_timeout=0.5, read_timeout=0.5)) as client:
            assert client.post_once("/logs", b"{}").status == 0
            assert client.get_once("/control/poll", 0.5).status == 0


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


class _OldAdapter(HTTPAdapter):
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


# -- the connection's life: a scripted loopback server ------------------------

# What the scripted server does with a request: answer and keep the connection,
# answer with "Connection: close" and close, answer (keep-alive framing) and then
# close while the client is idle, answer with no length and close to end the
# body, close without answering, or promise 10 bytes and send 3.
KEEP, CLOSE, CLOSE_IDLE, TO_EOF, DROP, SHORT = "keep", "close", "close idle", "to eof", "drop", "short"


class Scripted:
    """A loopback HTTP/1.1 server (raw sockets, optionally TLS) that does with
    its n-th request what `script[n]` says (KEEP past the end), and records
    every request's connection number and body."""

    def __init__(self, script: list[str], tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.requests: list[tuple[int, bytes]] = []
        self.connections = 0
        self.idle_closed = threading.Event()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self._listener.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> Scripted:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except OSError:
                continue
            raw.settimeout(5)
            try:
                conn = self.tls.wrap_socket(raw, server_side=True) if self.tls else raw
            except (ssl.SSLError, OSError):
                raw.close()  # a client that did not trust us
                continue
            self.connections += 1
            with conn:
                self._one_connection(conn, self.connections)

    def _one_connection(self, conn: socket.socket, number: int) -> None:
        buffered = b""
        while True:
            while b"\r\n\r\n" not in buffered:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buffered += chunk
            head, _, buffered = buffered.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(buffered) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffered += chunk
            body, buffered = buffered[:length], buffered[length:]
            n = len(self.requests)
            self.requests.append((number, body))
            what = self.script[n] if n < len(self.script) else KEEP
            if what == DROP:
                return
            if what == SHORT:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}x")
                return
            if what == TO_EOF:
                conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"to\": \"eof\"}")
                return
            close = b"Connection: close\r\n" if what == CLOSE else b""
            conn.sendall(b"HTTP/1.1 200 OK\r\n" + close + b"Content-Length: 2\r\n\r\n{}")
            if what == CLOSE:
                return
            if what == CLOSE_IDLE:
                conn.close()
                self.idle_closed.set()
                return


def posts(client: Backend, count: int) -> list[int]:
    return [client.post_once("/logs", b'{"seq":%d}' % seq).status for seq in range(1, count + 1)]


def test_a_kept_alive_connection_is_reused() -> None:
    with Scripted([]) as server, Backend(server.url, "r1", "t", TIMING) as client:
        assert posts(client, 3) == [200, 200, 200]
    assert [number for number, _ in server.requests] == [1, 1, 1]


def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    """Keep-alive framing, then the server closes between two posts: the next
    post goes out on a fresh connection, once, not as an error."""
    with Scripted([CLOSE_IDLE]) as server, Backend(server.url, "r1", "t", TIMING) as client:
        assert client.post_once("/logs", b'{"seq":1}').status == 200
        assert server.idle_closed.wait(10)
        assert client.post_once("/logs", b'{"seq":2}').status == 200
    assert server.requests == [(1, b'{"seq":1}'), (2, b'{"seq":2}')]


@pytest.mark.parametrize("how", [CLOSE, TO_EOF])
def test_a_server_that_answers_then_closes(how: str) -> None:
    """The whole answer is read (up to its length, or to the close), and the
    closed connection is not used again."""
    with Scripted([how, how]) as server, Backend(server.url, "r1", "t", TIMING) as client:
        first = client.post_once("/logs", b'{"seq":1}')
        assert first.status == 200
        assert first.body == (b'{"to": "eof"}' if how == TO_EOF else b"{}")
        assert posts(client, 2) == [200, 200]
    assert [number for number, _ in server.requests] == [1, 2, 3]


@pytest.mark.parametrize("how", [DROP, SHORT])
def test_a_broken_answer_is_no_answer_and_its_connection_is_not_reused(how: str) -> None:
    """No answer, or one cut short: Answer(0) naming why, and the caller's
    retry (same body: the backend drops a duplicate seq) goes out on a fresh
    connection."""
    with Scripted([how]) as server, Backend(server.url, "r1", "t", TIMING) as client:
        broken = client.post_once("/logs", b'{"seq":1}')
        assert broken.status == 0 and broken.why.startswith("could not connect to 127.0.0.1:"), broken
        assert client.post_once("/logs", b'{"seq":1}').status == 200
    assert server.requests == [(1, b'{"seq":1}'), (2, b'{"seq":1}')]


def test_a_big_body_is_streamed_with_progress_and_the_connection_kept() -> None:
    big = b'{"x":"' + b"y" * (ONE_WRITE_MAX * 4) + b'"}'
    heard = []
    with Scripted([]) as server, Backend(server.url, "r1", "t", TIMING) as client:
        assert client.post_once("/logs", big, progress=lambda: heard.append(1)).status == 200
        assert client.post_once("/logs", b"{}").status == 200
    assert server.requests == [(1, big), (1, b"{}")]
    assert len(heard) > 4  # every block it sent (16 KiB each), and then the acknowledgements


def test_a_post_abandoned_mid_way_leaves_no_connection_behind() -> None:
    """An exception inside a post (here from `progress`, as a signal's would
    come) closes its connection: the next post does not read the answer
    meant for the abandoned one."""

    class Abandon(Exception):
        pass

    def give_up() -> None:
        raise Abandon

    big = b'{"x":"' + b"y" * (ONE_WRITE_MAX * 2) + b'"}'
    with Scripted([]) as server, Backend(server.url, "r1", "t", TIMING) as client:
        assert client.post_once("/logs", b'{"seq":1}').status == 200
        with pytest.raises(Abandon):
            client.post_once("/logs", big, progress=give_up)
        assert client.post_once("/logs", b'{"seq":2}').status == 200
    assert server.requests[0] == (1, b'{"seq":1}') and server.requests[-1] == (2, b'{"seq":2}')


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (key, cert)."""
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "k.pem", folder / "c.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                           "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                           "-addext", "subjectAltName=IP:127.0.0.1"], capture_output=True)
    if made.returncode != 0:
        pytest.skip("openssl cannot make a test certificate here")
    return key, cert


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate[1], certificate[0])
    return context


def test_tls_is_verified_as_requests_verifies_it(certificate: tuple[Path, Path]) -> None:
    """Trusted (the session's `verify`, as requests takes it): posts go
    through on one kept-alive TLS connection. Not trusted: no answer, named
    a TLS error, and nothing reaches the server."""
    with Scripted([], tls=server_context(certificate)) as server:
        with Backend(server.url, "r1", "t", TIMING) as client:
            client._session.verify = str(certificate[1])
            assert posts(client, 3) == [200, 200, 200]
        with Backend(server.url, "r1", "t", TIMING) as client:
            refused = client.post_once("/logs", b'{"seq":4}')
    assert [number for number, _ in server.requests] == [1, 1, 1]
    assert refused.status == 0 and refused.why.startswith("TLS error talking to 127.0.0.1:"), refused


def test_reset_and_close_drop_the_connection() -> None:
    """After Backend.reset() (a request was abandoned) or close(), the next
    post goes out on a fresh connection, and the old one is closed."""
    with Scripted([]) as server, Backend(server.url, "r1", "t", TIMING) as client:
        assert posts(client, 1) == [200]
        client.reset()
        assert posts(client, 1) == [200]
        client.close()
        assert posts(client, 1) == [200]
    assert [number for number, _ in server.requests] == [1, 2, 3]


@pytest.mark.parametrize("size", [10, ONE_WRITE_MAX * 3])
def test_work_meanwhile_runs_once_the_request_is_out(size: int) -> None:
    """`meanwhile` runs after the whole request is sent and before the answer
    is read (the server answers only once it ran); `answered()` tells it the
    answer has come; then the answer is read as usual and the connection kept."""
    body = b'{"x":"' + b"y" * size + b'"}'
    ran = threading.Event()
    seen: list[bool] = []

    def meanwhile(answered: Callable[[], bool]) -> None:
        seen.append(answered())
        ran.set()
        for _ in range(10_000):  # bounded: the server answers as soon as `ran` is set
            if answered():
                break
            time.sleep(0.001)
        seen.append(answered())

    with raw_listener() as (sock, port):
        got = bytearray()
        thread = serve_raw(sock, got, [(lambda: got.endswith(body) and ran.wait(10), b'{"ok":1}'),
                                       (lambda: got.endswith(b"{}"), b"{}")])
        with Backend(f"http://127.0.0.1:{port}", "r1", "t", TIMING) as client:
            answer = client.post_once("/logs", body, meanwhile=meanwhile)
            assert (answer.status, answer.body) == (200, b'{"ok":1}')
            assert client.post_once("/logs", b"{}").status == 200  # the same connection
        thread.join(10)
    assert seen == [False, True]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), ConnectionResetError(104, "reset"),
                                   ValueError("a bug")])
def test_what_meanwhile_raises_is_not_a_transport_failure(error: Exception) -> None:
    """An error of the caller's own work is raised as it was: not an
    Answer(0) to retry (a backend blamed for a full disk), nor swallowed like
    a server closing after its answer; the connection is not reused."""

    def meanwhile(answered: Callable[[], bool]) -> None:
        raise error

    with Scripted([]) as server, Backend(server.url, "r1", "t", TIMING) as client:
        with pytest.raises(type(error)) as raised:
            client.post_once("/logs", b'{"seq":1}', meanwhile=meanwhile)
        assert raised.value is error
        assert client.post_once("/logs", b'{"seq":2}').status == 200
    assert [number for number, _ in server.requests] == [1, 2]
