"""Why a request got no answer, in words a person can act on: TLS, DNS, refused,
timed out — never just "could not connect"."""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import requests
from urllib3 import exceptions as u3

TLS = "tls"
DNS = "dns"
REFUSED = "refused"
TIMEOUT = "timeout"
OTHER = "other"

_DNS_MARKERS = (
    "NameResolutionError",
    "Name or service not known",
    "nodename nor servname",
    "Temporary failure in name resolution",
    "No address associated with hostname",
    "getaddrinfo failed",
)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    stack: list[BaseException | None] = [exc]
    while stack:
        item = stack.pop()
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        stack.extend([item.__cause__, item.__context__, *[a for a in item.args if isinstance(a, BaseException)]])
        reason = getattr(item, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
    return seen


def kind_of(exc: BaseException) -> str:
    """TLS, DNS, REFUSED, TIMEOUT or OTHER for an exception from requests."""
    chain = _chain(exc)
    text = " ".join(f"{type(e).__name__}: {e}" for e in chain)
    if any(isinstance(e, (requests.exceptions.SSLError, ssl.SSLError, u3.SSLError)) for e in chain):
        return TLS
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in text:
        return REFUSED
    if any(isinstance(e, u3.NameResolutionError) for e in chain) or any(m in text for m in _DNS_MARKERS):
        return DNS
    if any(isinstance(e, (requests.Timeout, TimeoutError, u3.TimeoutError)) for e in chain):
        return TIMEOUT
    return OTHER


def _tls_reason(exc: BaseException) -> str:
    for item in _chain(exc):
        if isinstance(item, ssl.SSLCertVerificationError) and item.verify_message:
            return item.verify_message
        if isinstance(item, ssl.SSLError) and item.reason:
            return str(item.reason).lower().replace("_", " ")
    return "handshake failed"


def describe(exc: BaseException, url: str) -> str:
    """One phrase: what went wrong reaching `url`."""
    parts = urlsplit(url)
    host = parts.hostname or url
    where = f"{host}:{parts.port}" if parts.port else host
    kind = kind_of(exc)
    if kind == TLS:
        return f"TLS error talking to {where} ({_tls_reason(exc)})"
    if kind == DNS:
        return f"DNS lookup of {host} failed (no such host)"
    if kind == REFUSED:
        return f"connection refused by {where} (nothing listens there)"
    if kind == TIMEOUT:
        return f"no answer from {where} in time (timed out)"
    return f"could not connect to {where} ({type(exc).__name__})"


FIXES = {
    TLS: "check the server's certificate (or use http:// for a server without TLS)",
    DNS: "check the host name in --server / FLYWHEEL_SERVER",
    REFUSED: "start the backend (or check the port in --server)",
    TIMEOUT: "check the network path to the backend (firewall, proxy) and that it is up",
    OTHER: "check --server and the network",
}
