"""The backend's base URL, checked before anything else of a start (a module
of its own so that the check does not import the HTTP stack).

The host is checked the way requests and urllib3 will take it later (IDNA for a
non-ASCII name, a label of at most 63 characters, a bracketed IPv6 address), so
that a URL that passes here cannot fail inside the HTTP client after the run
was claimed."""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

from workers.common.errors import ConfigError
from workers.common.redact import mask_url_userinfo

EXPECTED = "expected http://HOST[:PORT] or https://HOST[:PORT], e.g. http://localhost:8000"
# RFC 1035 limits, which the resolver and urllib3's IDNA step enforce.
MAX_LABEL = 63
MAX_HOST = 253
# What a DNS name holds once IDNA-encoded; `_` appears in container and
# cluster-internal names, which resolvers accept.
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?")


def validate_server_url(url: str) -> str:
    """The base URL without a trailing slash, or a ConfigError naming it."""
    shown = mask_url_userinfo(url)
    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:  # an unclosed "[" of an IPv6 address, and the like
        raise _invalid(shown, str(exc)) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _invalid(shown, EXPECTED)
    try:
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise ConfigError(f"--server {shown!r} has an invalid port number") from None
    if parts.query or parts.fragment:
        raise ConfigError(f"--server {shown!r} must not have a query string or fragment")
    problem = host_problem(parts)
    if problem:
        raise _invalid(shown, problem)
    return url.strip().rstrip("/")


def _invalid(shown: str, why: str) -> ConfigError:
    return ConfigError(f"--server {shown!r} is not a valid backend URL: {why}")


def host_problem(parts: SplitResult) -> str | None:
    """Why the host of `parts` cannot be connected to, or None."""
    host = parts.hostname or ""
    if "[" in parts.netloc:
        return _ip6_problem(host)
    if not host.isascii():
        encoded = _idna(host)
        if encoded is None:
            return f"host {host!r} is not a valid internationalised domain name"
        host = encoded
    return _dns_problem(host)


def _ip6_problem(host: str) -> str | None:
    import ipaddress  # only for a bracketed host: it costs every start a few ms otherwise

    try:
        ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return f"[{host}] is not an IPv6 address"
    return None


def _idna(host: str) -> str | None:
    # requests encodes a non-ASCII host with the idna package (UTS 46) before
    # anything is sent; only then is it worth importing.
    import idna

    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None


def _dns_problem(host: str) -> str | None:
    name = host[:-1] if host.endswith(".") else host
    if len(name) > MAX_HOST:
        return f"the host name is {len(name)} characters long; at most {MAX_HOST}"
    for label in name.split("."):
        if len(label) > MAX_LABEL:
            return f"the host name has a label of {len(label)} characters; at most {MAX_LABEL}"
        if not _LABEL.fullmatch(label):
            return f"host {host!r} is not a host name (letters, digits, '-', '_' and '.' only)"
    return None
