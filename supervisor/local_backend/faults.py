"""The misbehaviour the local backend can be told to show (delays, 5xx, 413,
dropped connections, bootstrap refusals, a log entry refused for what it
holds, a slow uplink), and the pure decision of what it does
to one request. `FaultState` is the only stateful piece: the current faults and
their counters behind a lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

# `max_body_bytes` (answered 413) applies to log uploads only.
_BODY_LIMITED_KINDS = frozenset({"logs", "batch"})


@dataclass(frozen=True)
class Faults:
    """The misbehaviour asked for. Counters that run down live in FaultCounters."""

    delay_ms: float = 0
    status: int | None = None
    status_count: int | None = None
    status_for_s: float | None = None
    max_body_bytes: int | None = None
    drop_count: int = 0
    # False: the dropped request is not handled at all (lost on the way in);
    # True: it is handled and stored, then the answer is lost (the client resends).
    drop_after_handling: bool = False
    paths: tuple[str, ...] = ()
    run_ids: tuple[str, ...] = ()
    bootstrap_status: tuple[tuple[str, int], ...] = ()
    # A log upload whose body holds this text is refused with 422, as a backend
    # refuses one malformed entry (and with it the whole batch that carries it).
    reject_containing: str | None = None
    # Request bodies are read at this many bytes a second (a slow uplink)...
    body_rate_bps: int | None = None
    # ...or not at all past this many bytes (a stalled uplink), for this many requests.
    body_stall_after_bytes: int | None = None
    body_stall_count: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "delay_ms": self.delay_ms,
            "status": self.status,
            "status_count": self.status_count,
            "status_for_s": self.status_for_s,
            "max_body_bytes": self.max_body_bytes,
            "drop_count": self.drop_count,
            "drop_after_handling": self.drop_after_handling,
            "paths": list(self.paths),
            "run_ids": list(self.run_ids),
            "bootstrap_status": dict(self.bootstrap_status),
            "reject_containing": self.reject_containing,
            "body_rate_bps": self.body_rate_bps,
            "body_stall_after_bytes": self.body_stall_after_bytes,
            "body_stall_count": self.body_stall_count,
        }


@dataclass(frozen=True)
class FaultCounters:
    """How much of the counted/timed faults is left."""

    status_left: int | None = None  # None: not limited by count
    status_until: float | None = None  # time.monotonic() deadline; None: not timed
    drops_left: int = 0
    stalls_left: int = 0


@dataclass(frozen=True)
class FaultAction:
    """What the fault layer does to one request."""

    delay_s: float = 0.0
    drop: bool = False
    drop_after_handling: bool = False
    # An answer to send instead of handling the request.
    status: int | None = None
    body: Mapping[str, Any] | None = None


_STATUS_KEYS = frozenset({"status", "status_count", "status_for_s"})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def merge_faults(base: Faults, raw: Mapping[str, Any]) -> Faults:
    """`base` with the keys of `raw` replaced; ValueError names a bad key/value.

    A key set to None goes back to its default.
    """
    known = set(Faults.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown fault(s) {unknown}; allowed: {sorted(known)}")
    defaults = Faults()
    changes: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None:
            changes[key] = getattr(defaults, key)
            continue
        if key in ("delay_ms", "status_for_s"):
            if not _is_number(value) or value < 0:
                raise ValueError(f"{key!r} must be a number >= 0, got {value!r}")
        elif key == "status":
            if not _is_int(value) or not 100 <= value <= 599:
                raise ValueError(f"'status' must be an HTTP status (100-599), got {value!r}")
        elif key == "reject_containing":
            if not isinstance(value, str) or not value:
                raise ValueError("'reject_containing' must be a non-empty string")
        elif key == "body_rate_bps":
            if not _is_int(value) or value < 1:
                raise ValueError(f"'body_rate_bps' must be an integer >= 1, got {value!r}")
        elif key in ("status_count", "max_body_bytes", "drop_count", "body_stall_after_bytes", "body_stall_count"):
            if not _is_int(value) or value < 0:
                raise ValueError(f"{key!r} must be an integer >= 0, got {value!r}")
        elif key == "drop_after_handling":
            if not isinstance(value, bool):
                raise ValueError("'drop_after_handling' must be true or false")
        elif key in ("paths", "run_ids"):
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{key!r} must be a list of strings")
            value = tuple(value)
        elif key == "bootstrap_status":
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and _is_int(v) and 100 <= v <= 599 for k, v in value.items()
            ):
                raise ValueError("'bootstrap_status' must map run ids to HTTP statuses")
            value = tuple(sorted(value.items()))
        changes[key] = value
    merged = replace(base, **changes)
    if merged.status is None and (merged.status_count is not None or merged.status_for_s is not None):
        raise ValueError("'status_count'/'status_for_s' need 'status' (e.g. 503)")
    return merged


def counters_after_set(
    faults: Faults, changed: frozenset[str], old: FaultCounters, now: float
) -> FaultCounters:
    """Restart the counters of the faults that were just set; keep the others."""
    counters = old
    if changed & _STATUS_KEYS:
        until = None if faults.status_for_s is None else now + faults.status_for_s
        counters = replace(counters, status_left=faults.status_count, status_until=until)
    if "drop_count" in changed:
        counters = replace(counters, drops_left=faults.drop_count)
    if changed & {"body_stall_after_bytes", "body_stall_count"}:
        stalls = faults.body_stall_count if faults.body_stall_after_bytes is not None else 0
        counters = replace(counters, stalls_left=stalls)
    return counters


def _fault_applies(faults: Faults, path: str, run_id: str) -> bool:
    if faults.run_ids and run_id not in faults.run_ids:
        return False
    return not faults.paths or any(p in path for p in faults.paths)


def _status_active(faults: Faults, counters: FaultCounters, now: float) -> bool:
    if faults.status is None:
        return False
    if counters.status_left is not None and counters.status_left <= 0:
        return False
    return counters.status_until is None or now < counters.status_until


def decide(
    faults: Faults,
    counters: FaultCounters,
    *,
    path: str,
    run_id: str,
    kind: str,
    body_bytes: int,
    now: float,
    body: bytes = b"",
) -> tuple[FaultAction, FaultCounters]:
    """The fault decision for one /runs request, and the counters after it.

    Order: drop, then the injected status, then the body limit, then a
    refused entry, then the per-run bootstrap override. The delay comes
    before any of them.
    """
    override = dict(faults.bootstrap_status).get(run_id) if kind == "bootstrap" else None
    override_decision = (
        FaultAction(status=override, body={"error": f"injected bootstrap answer: HTTP {override}"})
        if override is not None
        else FaultAction()
    )
    if not _fault_applies(faults, path, run_id):
        return override_decision, counters
    delay = faults.delay_ms / 1000.0
    if counters.drops_left > 0:
        decision = FaultAction(
            delay_s=delay, drop=True, drop_after_handling=faults.drop_after_handling
        )
        return decision, replace(counters, drops_left=counters.drops_left - 1)
    if _status_active(faults, counters, now):
        left = None if counters.status_left is None else counters.status_left - 1
        injected: dict[str, Any] = {"error": f"injected fault: HTTP {faults.status}"}
        return FaultAction(delay, status=faults.status, body=injected), replace(counters, status_left=left)
    limit = faults.max_body_bytes
    if limit is not None and kind in _BODY_LIMITED_KINDS and body_bytes > limit:
        too_large = {"error": "payload too large", "limit_bytes": limit, "body_bytes": body_bytes}
        return FaultAction(delay, status=413, body=too_large), counters
    marker = faults.reject_containing
    if marker is not None and kind in _BODY_LIMITED_KINDS and marker.encode() in body:
        return FaultAction(delay, status=422, body={"error": "invalid log entry (injected fault)"}), counters
    return replace(override_decision, delay_s=delay), counters


class FaultState:
    """The current faults and counters, swapped atomically under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults = Faults()
        self._counters = FaultCounters()

    def set(self, raw: Mapping[str, Any]) -> Faults:
        with self._lock:
            faults = merge_faults(self._faults, raw)
            self._counters = counters_after_set(
                faults, frozenset(raw), self._counters, time.monotonic()
            )
            self._faults = faults
            return faults

    def clear(self) -> None:
        with self._lock:
            self._faults = Faults()
            self._counters = FaultCounters()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counters = self._counters
            status_left_s = (
                None
                if counters.status_until is None
                else max(0.0, counters.status_until - time.monotonic())
            )
            return {
                "faults": self._faults.to_json(),
                "remaining": {
                    "status_count": counters.status_left,
                    "status_for_s": status_left_s,
                    "drop_count": counters.drops_left,
                },
            }

    def body_pace(self, path: str) -> tuple[int | None, int | None]:
        """(bytes a second, bytes after which reading stops) for this request's
        body; (None, None) reads it at once."""
        with self._lock:
            faults, counters = self._faults, self._counters
            if not path.startswith("/runs/") or (faults.paths and not any(p in path for p in faults.paths)):
                return None, None
            stall = None
            if faults.body_stall_after_bytes is not None and counters.stalls_left > 0:
                stall = faults.body_stall_after_bytes
                self._counters = replace(counters, stalls_left=counters.stalls_left - 1)
            return faults.body_rate_bps, stall

    def decide(self, *, path: str, run_id: str, kind: str, body_bytes: int, body: bytes = b"") -> FaultAction:
        with self._lock:
            decision, self._counters = decide(
                self._faults,
                self._counters,
                path=path,
                run_id=run_id,
                kind=kind,
                body_bytes=body_bytes,
                now=time.monotonic(),
                body=body,
            )
            return decision
