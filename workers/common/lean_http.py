"""POSTs (and the control poll's GETs) over a connection of requests' own
urllib3 pool, without the per-call layers of requests and of urllib3.

One log entry per request makes the client's cost per call the limit (strict
order: each entry waits for the answer to the one before). On loopback,
requests' `Session`/`HTTPAdapter` layer, then urllib3's `urlopen` with its
`HTTPResponse` wrapper, each cost more than `http.client` itself
(benchmarks/README.md has the numbers). So a post here:

- takes a connection from the pool that requests' adapter owns, looked up once
  (`adapter.get_connection_with_tls_context`), so TLS is exactly requests': the
  pool's connection class does the handshake and the verification;
- sends a header block made once per path by `http.client`'s own
  `putrequest`/`putheader` (so validated as they validate), with the body in
  the same write when it is up to 64 KiB; a bigger body is streamed and
  stall-timed (workers.common.stall_timeout);
- reads the answer with the connection's `response_class` (`http.client`'s
  parser), fully, before the connection goes back to the pool; a connection
  that failed mid-way, or that the server closes, is closed, never returned.

Like `urlopen` with `Retry(False)`: no retry and no redirect here (the caller
retries; a redirect could carry the run token to another host), a kept-alive
connection the server closed while idle is replaced by a fresh one before
sending (`_get_conn`), a server that closes while we send is still read from,
and failures are raised as urllib3's errors: `SSLError` around a TLS error,
`ProtocolError("Connection aborted.", cause)` around a socket or protocol
error, urllib3's own (refused, DNS, connect timeout) as they are.
"""

from __future__ import annotations

import errno
import http.client
import select
import ssl
from collections.abc import Callable
from typing import Any, cast

import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool
from urllib3.connection import HTTPConnection
from urllib3.exceptions import HTTPError, ProtocolError, SSLError
from urllib3.util.ssl_match_hostname import CertificateError

from workers.common.stall_timeout import StreamedBody, wait_delivered

# What a transport failure raises from `LeanPoster.post`: urllib3's errors, and
# the OSError a socket can raise between them.
TransportError = (HTTPError, OSError)

# A body up to this size goes out with its headers in one write; a bigger one
# is streamed, so that a slow uplink is timed out on stalls only (see
# workers.common.stall_timeout).
ONE_WRITE_MAX = 64 * 1024

# The last header of every head: its value is the body's length.
_LENGTH_HEADER = b"Content-Length: 0\r\n\r\n"


class _HeadRecorder(http.client.HTTPConnection):
    """Keeps what `http.client` would send as a request's header block."""

    sent = b""

    def send(self, data: Any) -> None:
        self.sent += bytes(data)


def request_head(conn: HTTPConnection, url: str, headers: dict[str, str], method: str = "POST") -> bytes:
    """The header block of a `method` request to `url` on `conn`'s host, as
    `http.client` writes it (Host, Accept-Encoding: identity, `headers`):
    a POST's up to the value of its last header, Content-Length; a GET's
    whole (no body, so no length, as requests sends it)."""
    recorder = _HeadRecorder(conn.host, conn.port)
    recorder.default_port = conn.default_port  # Host names the port unless it is the scheme's
    recorder.putrequest(method, url)
    for name, value in headers.items():
        recorder.putheader(name, value)
    if method == "GET":
        recorder.endheaders()
        return recorder.sent
    recorder.putheader("Content-Length", "0")
    recorder.endheaders()
    assert recorder.sent.endswith(_LENGTH_HEADER)
    return recorder.sent[:-len(b"0\r\n\r\n")]


# Work to do while the server answers: called once the request is out, with a
# function that says whether the answer has begun to arrive (no wait). What it
# raises comes out of a post as MeanwhileFailed, never as a transport failure.
Meanwhile = Callable[[Callable[[], bool]], None]


class MeanwhileFailed(Exception):
    """Carries what `meanwhile` raised past the transport error handling
    (its `__cause__`); the caller of the post raises that again."""


def _meanwhile(sock: Any, meanwhile: Meanwhile | None) -> None:
    if meanwhile is not None:
        poll = select.poll()
        poll.register(sock, select.POLLIN)
        try:
            meanwhile(lambda: bool(poll.poll(0)))
        except Exception as exc:
            raise MeanwhileFailed from exc


def _exchange(conn: HTTPConnection, head: bytes, data: bytes, progress: Callable[[], None] | None,
              connect_timeout: float, read_timeout: float, method: str,
              meanwhile: Meanwhile | None = None) -> tuple[int, bytes, bool]:
    """One request and its whole answer on `conn`: (status, body, whether the
    connection may be used again). `head` is the whole header block."""
    sock = conn.sock
    assert sock is not None
    # Sending is bounded by the connect timeout, as urllib3 does it; a
    # streamed body by stalls only (wait_delivered).
    sock.settimeout(connect_timeout)
    try:
        if len(data) <= ONE_WRITE_MAX:
            conn.send(head + data)
            _meanwhile(sock, meanwhile)
        else:
            conn.send(head)
            conn.send(StreamedBody(data, progress))
            # Most of the server's work comes before the peer has taken the
            # last bytes: the work to do meanwhile begins here.
            _meanwhile(sock, meanwhile)
            wait_delivered(sock, connect_timeout, progress or (lambda: None))
    except OSError as exc:
        # The server may close after answering without reading everything
        # (a 413): its answer is still read, as urlopen reads it.
        if not (isinstance(exc, BrokenPipeError) or exc.errno == errno.ECONNRESET):
            raise
    sock.settimeout(read_timeout)
    response = conn.response_class(sock, method=method)
    try:
        response.begin()
        body = response.read()  # to its length (or the close): nothing is left unread
    finally:
        response.close()
    return response.status, body, not response.will_close


class LeanPoster:
    """POSTs and GETs to one origin through `session`'s adapter pool. The session's
    headers are taken once, when this is made. Used by one thread at a time
    (each process makes its own Backend)."""

    def __init__(self, session: requests.Session, base: str, connect_timeout: float, read_timeout: float) -> None:
        self._session = session
        self._base = base
        prepared = requests.PreparedRequest()
        prepared.prepare_url(base, None)
        self._prefix = prepared.path_url  # quoted as requests would
        headers = dict(session.headers)
        # http.client asks for an uncompressed answer itself; answers here are small.
        headers.pop("Accept-Encoding", None)
        headers.pop("Connection", None)  # HTTP/1.1 keeps connections alive anyway
        self._headers = headers
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._pool: HTTPConnectionPool | None = None
        self._heads: dict[tuple[str, str], bytes] = {}  # per method and path, for this pool's host

    def close(self) -> None:
        """Close the pool's connections; the next post looks the pool up
        again. (Closing requests' adapter only forgets its pools: urllib3 2
        closes one when the last reference to it goes, and this holds one.)"""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _current_pool(self) -> HTTPConnectionPool:
        pool = self._pool
        # Closed by someone else (urllib3 1 closes an adapter's pools when
        # the adapter is): look it up again.
        if pool is None or pool.pool is None:
            adapter = self._session.get_adapter(self._base)
            assert isinstance(adapter, HTTPAdapter)  # requests' own
            verify, cert = self._session.verify, self._session.cert
            if hasattr(adapter, "get_connection_with_tls_context"):  # requests >= 2.32.2
                request = requests.PreparedRequest()
                request.prepare(method="POST", url=self._base)
                pool = adapter.get_connection_with_tls_context(request, verify=verify, cert=cert)
            else:  # older requests set TLS verification on the pool per request
                pool = adapter.get_connection(self._base)
                adapter.cert_verify(pool, self._base, verify, cert)
            self._pool = pool
        return pool

    def post(self, path: str, data: bytes, progress: Callable[[], None] | None = None,
             meanwhile: Meanwhile | None = None) -> tuple[int, bytes]:
        """(status, body) of one POST to base + path; raises TransportError.
        `meanwhile` runs while the server works on the answer."""
        return self._request("POST", path, data, progress, self._read_timeout, meanwhile)

    def get(self, path: str, read_timeout: float) -> tuple[int, bytes]:
        """(status, body) of one GET of base + path, its answer awaited at most
        `read_timeout` seconds; raises TransportError."""
        return self._request("GET", path, b"", None, read_timeout)

    def _request(self, method: str, path: str, data: bytes, progress: Callable[[], None] | None,
                 read_timeout: float, meanwhile: Meanwhile | None = None) -> tuple[int, bytes]:
        pool = self._current_pool()
        # A kept-alive connection the server has closed meanwhile comes back
        # closed (urllib3 looks), and is connected again below.
        conn = cast(HTTPConnection, pool._get_conn())  # requests' pools make urllib3's own
        reusable = False
        try:
            if conn.sock is None:
                conn.timeout = self._connect_timeout
                pool._validate_conn(conn)  # HTTPS: connects (handshake, verification) now
                if conn.sock is None:
                    conn.connect()
            head = self._heads.get((method, path))
            if head is None:
                head = self._heads[method, path] = request_head(conn, self._prefix + path, self._headers, method)
            if method != "GET":
                head += b"%d\r\n\r\n" % len(data)
            status, body, reusable = _exchange(conn, head, data, progress,
                                               self._connect_timeout, read_timeout, method, meanwhile)
            return status, body
        except (ssl.SSLError, CertificateError) as exc:
            raise SSLError(exc) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ProtocolError("Connection aborted.", exc) from exc
        finally:
            if not reusable:
                # Closed by the server, or left mid-way (an error, a signal):
                # its state is unknown, so it is never used again.
                conn.close()
            pool._put_conn(conn if reusable else None)
