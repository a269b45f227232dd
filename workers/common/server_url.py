"""The backend's base URL, checked before anything else of a start (a module
of its own so that the check does not import the HTTP stack)."""

from __future__ import annotations

from urllib.parse import urlsplit

from workers.common.errors import ConfigError


def validate_server_url(url: str) -> str:
    """The base URL without a trailing slash, or a ConfigError naming it."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"--server {url!r} is not a valid backend URL: expected http://HOST[:PORT] "
            "or https://HOST[:PORT], e.g. http://localhost:8000"
        )
    try:
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise ConfigError(f"--server {url!r} has an invalid port number") from None
    if parts.query or parts.fragment:
        raise ConfigError(f"--server {url!r} must not have a query string or fragment")
    return url.strip().rstrip("/")
