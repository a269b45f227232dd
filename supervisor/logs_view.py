"""`flywheel-bootstrap logs RUN_ID [-f] [--json]` (SPEC 16): what a run shipped and
what still waits to be shipped, in order, from its state folder on this machine.

Only the outbox is shown: its entries are already redacted by the log-shipper.
Codex output not yet encoded is counted, never printed raw (the raw spool may hold
a secret Codex printed, and this command does not know the run's secrets).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from workers.common.errors import BootstrapError
from workers.common.spool import BOOTSTRAP_LOG, CODEX_OUT, OUTBOX, SHIPPER_STATE, ShipperState

WORKERS_FILE = "workers.json"
_FOLLOW_POLL = 0.5


@dataclass(frozen=True)
class Shown:
    """One outbox entry and whether the backend has it."""

    entry: dict[str, Any]
    shipped: bool


def _item_text(event: dict[str, Any]) -> str:
    item = event.get("item")
    if isinstance(item, dict) and item.get("type") in ("agent_message", "reasoning"):
        text = item.get("text")
        if isinstance(text, str) and text.strip():
            return " ".join(text.split())
    return ""


def render(shown: Shown) -> str:
    """`16:15:23.808  info     codex  codex thread started (…)`, a ⧗ for waiting entries."""
    entry = shown.entry
    stamp = str(entry.get("created_at", ""))
    clock = stamp[11:23] if len(stamp) >= 23 else stamp
    raw_extra = entry.get("extra")
    extra: dict[str, Any] = raw_extra if isinstance(raw_extra, dict) else {}
    source = str(extra.get("run_event_source", ""))
    message = str(entry.get("message", "")).replace("\n", " ⏎ ")
    event = extra.get("event")
    said = _item_text(event) if isinstance(event, dict) else ""
    if said and said not in message:
        message = f"{message}: {said}"
    mark = " " if shown.shipped else "⧗"
    return f"{mark} {clock}  {str(entry.get('level', '')):<7}  {source:<9}  {message}"


def as_json_line(shown: Shown) -> str:
    return orjson.dumps({**shown.entry, "shipped": shown.shipped}).decode()


def _entries(state_dir: Path, start: int, stop: int) -> Iterator[tuple[dict[str, Any], int]]:
    """Outbox entries between two offsets, with the offset after each."""
    try:
        handle = open(state_dir / OUTBOX, "rb")
    except FileNotFoundError:
        return
    with handle:
        handle.seek(start)
        pos = start
        while pos < stop:
            line = handle.readline()
            if not line.endswith(b"\n"):
                return
            pos += len(line)
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict):
                yield entry, pos


def not_encoded(state_dir: Path, state: ShipperState) -> int:
    """Bytes of Codex and bootstrap output the shipper has not encoded yet."""
    waiting = 0
    for name, offset in ((CODEX_OUT, state.codex_offset), (BOOTSTRAP_LOG, state.boot_offset)):
        try:
            waiting += max(0, (state_dir / name).stat().st_size - offset)
        except FileNotFoundError:
            pass
    return waiting


def supervisor_alive(state_dir: Path) -> bool:
    """Whether the run's supervisor (from workers.json) still runs."""
    try:
        pid = orjson.loads((state_dir / WORKERS_FILE).read_bytes()).get("supervisor")
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return False
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def show(state_dir: Path, out: Callable[[str], None], *, as_json: bool, follow: bool,
         still_follow: Callable[[], bool] | None = None) -> int:
    """Print the run's entries; with `follow`, keep printing new ones until the
    run's supervisor is gone and nothing more comes. Returns how many were shown."""
    emit = as_json_line if as_json else render
    shown = 0
    pos = 0
    _check_regular(state_dir / OUTBOX)
    state = _state_or_note(state_dir, None if as_json else out)
    while True:
        for entry, end in _entries(state_dir, pos, state.outbox_size):
            out(emit(Shown(entry, shipped=end <= state.delivered_offset)))
            shown += 1
            pos = end
        if not follow:
            break
        alive = supervisor_alive(state_dir) if still_follow is None else still_follow()
        time.sleep(_FOLLOW_POLL)
        state = ShipperState.read(state_dir) or state
        if not alive and pos >= state.outbox_size:
            break
    if not as_json:
        waiting = state.outbox_size - state.delivered_offset
        unencoded = not_encoded(state_dir, state)
        if waiting or unencoded:
            parts = []
            if waiting:
                entries = sum(1 for _ in _entries(state_dir, state.delivered_offset, state.outbox_size))
                parts.append(f"{entries} entr{'y' if entries == 1 else 'ies'} (⧗) still wait to be shipped")
            if unencoded:
                parts.append(f"{unencoded:,} bytes of output are not encoded yet")
            out(f"-- {'; '.join(parts)}; they are in {state_dir}")
        elif shown:
            out(_shipped_line(state.delivered, state.dropped))
    return shown


def _check_regular(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise BootstrapError(f"{path} is not a regular file: this run's state folder is damaged")


def _state_or_note(state_dir: Path, out: Callable[[str], None] | None) -> ShipperState:
    """The shipper's progress. A shipper.json that cannot be read hides nothing:
    every encoded entry is shown, as not known to be shipped."""
    state = ShipperState.read(state_dir)
    if state is not None or not (state_dir / SHIPPER_STATE).exists():
        return state or ShipperState()
    if out is not None:
        out(f"-- {state_dir / SHIPPER_STATE} cannot be read; every entry of {OUTBOX} is shown as waiting (⧗), "
            "though some may have been shipped")
    try:
        size = (state_dir / OUTBOX).stat().st_size
    except FileNotFoundError:
        size = 0
    return ShipperState(outbox_size=size)


def _shipped_line(delivered: int, refused: int) -> str:
    """`delivered` counts every entry the backend answered, refused ones too."""
    if not refused:
        return f"-- all {delivered:,} entries were shipped"
    return (f"-- {delivered - refused:,} of {delivered:,} entries were shipped; the backend refused {refused:,} "
            f"(dropped, not retried)")
