"""What the local backend answers to one request: an HTTP status with a JSON
body, or nothing at all (the connection is dropped)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status and JSON body."""

    status: int
    body: Mapping[str, Any]
    # Log entries this answer stored (keeps entry_count O(1) for waiters).
    entries_added: int = 0


def error(status: int, message: str) -> Reply:
    return Reply(status, {"error": message})


OK = Reply(200, {"ok": True})


class Drop:
    """Reply marker: close the connection without answering."""


DROP = Drop()
