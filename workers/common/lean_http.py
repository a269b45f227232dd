"""POSTs over requests' own urllib3 connection pool, without requests' per-call
layer, and with a small body in the same write as its headers.

One log entry per request makes the client's cost per call the limit: on
loopback, requests' `Session`/`HTTPAdapter` layer (per-call pool lookup, header
merging, cookie extraction, building a `Response`) costs more than the HTTP
exchange itself, and urllib3 writes the headers and the body in two `send()`
calls, so the server wakes up and reads twice. Here the pool is looked up once,
through the adapter (so TLS verification is exactly requests'), and each call is
one `urlopen` that never retries and never follows a redirect (a redirect could
carry the run token to another host). benchmarks/README.md has the numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, Retry, Timeout
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError

from workers.common.stall_timeout import StallTimeout, StreamedBody

# What a transport failure raises from `LeanPoster.post`: urllib3's errors, and
# the OSError a socket can raise between them.
TransportError = (HTTPError, OSError)

# A body up to this size goes out with its headers in one write; a bigger one
# is streamed, so that a slow uplink is timed out on stalls only (see
# workers.common.stall_timeout).
ONE_WRITE_MAX = 64 * 1024


class _OneWrite:
    """`request()` for a connection that sends a small bytes body in the same
    write as its header block (http.client, under urllib3, sends them apart)."""

    _body_with_headers: bytes | None = None

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **kwargs: Any) -> None:
        if type(body) is bytes and len(body) <= ONE_WRITE_MAX and headers and "Content-Length" in headers:
            # Sent by send() below, with the header block; urllib3 sends no
            # body of its own, and takes the framing from Content-Length.
            self._body_with_headers = body
            try:
                super().request(method, url, body=None, headers=headers, **kwargs)  # type: ignore[misc]
            finally:
                self._body_with_headers = None
        else:
            super().request(method, url, body=body, headers=headers, **kwargs)  # type: ignore[misc]

    def send(self, data: Any) -> None:
        body = self._body_with_headers
        if body is not None:
            # The first send() of a request is its header block.
            self._body_with_headers = None
            data = bytes(data) + body
        super().send(data)  # type: ignore[misc]


class OneWriteConnection(_OneWrite, StallTimeout, HTTPConnection):
    pass


class OneWriteTLSConnection(_OneWrite, StallTimeout, HTTPSConnection):
    pass


class _Pool(HTTPConnectionPool):
    ConnectionCls = OneWriteConnection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = OneWriteTLSConnection


class OneWriteAdapter(HTTPAdapter):
    """requests' adapter whose connections write a small request in one go."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}


class LeanPoster:
    """POSTs to one origin through `session`'s adapter pool. The session's
    headers are taken once, when this is made."""

    def __init__(self, session: requests.Session, base: str, connect_timeout: float, read_timeout: float) -> None:
        self._session = session
        self._base = base
        prepared = requests.PreparedRequest()
        prepared.prepare_url(base, None)
        self._prefix = prepared.path_url  # quoted as requests would
        headers = dict(session.headers)
        # urllib3 asks for an uncompressed answer itself; answers here are small.
        headers.pop("Accept-Encoding", None)
        headers.pop("Connection", None)  # HTTP/1.1 keeps connections alive anyway
        self._headers = headers
        self._timeout = Timeout(connect=connect_timeout, read=read_timeout)
        # Made once (urlopen would make one per call): no retry here (the
        # caller decides), errors raised as they are, no redirect followed.
        self._retries = Retry(False, redirect=False)
        self._pool: HTTPConnectionPool | None = None

    def _current_pool(self) -> HTTPConnectionPool:
        pool = self._pool
        # A pool is closed when the adapter was (Session.close, or a reset
        # after an abandoned request): look it up again.
        if pool is None or pool.pool is None:
            adapter = self._session.get_adapter(self._base)
            assert isinstance(adapter, HTTPAdapter)  # mounted by the Backend
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

    def post(self, path: str, data: bytes, progress: Callable[[], None] | None = None) -> tuple[int, bytes]:
        """(status, body) of one POST to base + path; raises TransportError."""
        # One dict for every call: urllib3 only reads it, and a poster is used
        # by one thread at a time (each process makes its own Backend).
        headers = self._headers
        headers["Content-Length"] = str(len(data))
        r = self._current_pool().urlopen(
            "POST",
            self._prefix + path,
            body=data if len(data) <= ONE_WRITE_MAX else StreamedBody(data, progress),
            headers=headers,
            retries=self._retries,
            redirect=False,
            assert_same_host=False,
            timeout=self._timeout,
            preload_content=True,
        )
        return r.status, r.data
