"""What Codex printed, read back from codex.out after it exited: its session
id (to resume it), why it failed (in its own words), its last message."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from workers.common.spool import LineTail
from workers.log_entries import thread_id_of

# Read in steps this size: finding the thread id (the first event) reads one
# step, not megabytes of output.
READ_STEP = 64 * 1024


def codex_events(path: Path, start: int) -> Iterator[dict[str, Any]]:
    """The JSON events Codex printed since `start`, in order."""
    tail = LineTail(path, start)
    try:
        while True:
            lines = tail.read(max_bytes=READ_STEP)
            if not lines and not tail.last_read:
                return  # the end of the file (no lines, but bytes read: inside a long line)
            for line in lines:
                try:
                    event = orjson.loads(line.data)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(event, dict):
                    yield event
    finally:
        tail.close()


def find_thread_id(path: Path, start: int) -> str | None:
    """The session id Codex printed (its first event, normally) since `start`."""
    return next((found for event in codex_events(path, start) if (found := thread_id_of(event))), None)


def last_failure(path: Path, start: int) -> str | None:
    """Why Codex failed, in its own words. With --json it says so only on
    stdout (`turn.failed`, else a top-level `error`); its stderr is empty."""
    failed = error = None
    for event in codex_events(path, start):
        kind = event.get("type")
        if kind == "turn.failed" and isinstance(event.get("error"), dict):
            failed = event["error"].get("message") or failed
        elif kind == "error" and isinstance(event.get("message"), str):
            error = event["message"]
    found = failed or error
    return found.strip()[:1000] if isinstance(found, str) and found.strip() else None


# Codex prints this under the system temp folder; it says nothing about a failure.
_HARMLESS_STDERR = ("WARNING: proceeding, even though we could not",)


def failure_detail(stderr: str, failure: str | None) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith(_HARMLESS_STDERR)]
    return "\n".join(part for part in (failure, "\n".join(lines).strip()) if part)


def last_agent_message(path: Path, limit: int = 500) -> str | None:
    """The last thing the agent said, for the run's summary. Only the file's
    tail is read: the message is normally among the last few lines."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - 256 * 1024))
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        if b'"agent_message"' not in line:
            continue
        try:
            item = orjson.loads(line).get("item") or {}
        except (orjson.JSONDecodeError, AttributeError):
            continue
        text = item.get("text") if isinstance(item, dict) else None
        if isinstance(text, str) and text.strip():
            text = " ".join(text.split())
            return text if len(text) <= limit else text[: limit - 1] + "…"
    return None
