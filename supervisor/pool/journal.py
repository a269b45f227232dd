"""The journal of `--runs DIR --watch`: what the watcher took and did, so that a
restart never runs a run twice (SPEC section 16).

An append-only file of JSON lines in `$FLYWHEEL_HOME/watch/`, one per watched
folder, each line written with one `write` and fsynced before the step it records
goes ahead (a run is journaled `started` before its supervisor exists):

    {"ev": "taken",   "file": NAME, "runs": [RUN_ID, ...]}
    {"ev": "started", "run": RUN_ID}
    {"ev": "ended",   "run": RUN_ID, "state": "complete" | "error" | "cancelled"}
    {"ev": "moved",   "file": NAME, "to": "done" | "failed" | "gone"}

A file name that is not UTF-8 (JSON cannot hold its bytes) is written as
`"file_hex": HEX` of its bytes instead of `"file"`. A line torn by a crash is
ignored. `replay` turns the lines back into what the watcher knows; it is a
pure function.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson


@dataclass(frozen=True)
class Known:
    """What the journal says, after replaying it."""

    # Files taken and not yet moved away: their run ids, in file order.
    active: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Every run id ever taken, from any file: none of them is taken again.
    taken: frozenset[str] = frozenset()
    started: frozenset[str] = frozenset()
    # Run id -> its final state.
    ended: dict[str, str] = field(default_factory=dict)


def replay(lines: Iterable[bytes]) -> Known:
    active: dict[str, tuple[str, ...]] = {}
    taken: set[str] = set()
    started: set[str] = set()
    ended: dict[str, str] = {}
    for line in lines:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # torn by a crash while being written
        if not isinstance(record, dict):
            continue
        event = record.get("ev")
        if event == "taken" and isinstance(record.get("runs"), list):
            runs = tuple(str(run) for run in record["runs"])
            active[file_name(record)] = runs
            taken.update(runs)
        elif event == "started":
            started.add(str(record.get("run")))
        elif event == "ended":
            ended[str(record.get("run"))] = str(record.get("state"))
        elif event == "moved":
            active.pop(file_name(record), None)
    return Known(active, frozenset(taken), frozenset(started), ended)


def name_field(name: str) -> dict[str, str]:
    """A file name as a journal field. os.listdir gives a name that is not
    UTF-8 with its bytes as lone surrogates, which JSON cannot carry."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return {"file_hex": os.fsencode(name).hex()}
    return {"file": name}


def file_name(record: dict[str, object]) -> str:
    """The file name a record names (see name_field)."""
    raw = record.get("file_hex")
    if isinstance(raw, str):
        try:
            return os.fsdecode(bytes.fromhex(raw))
        except ValueError:
            pass
    return str(record.get("file"))


def journal_path(home: Path, folder: Path) -> Path:
    """One journal per watched folder, named after its real path."""
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return home / "watch" / f"journal-{digest}.jsonl"


class Journal:
    """Appends records, each on disk before the step it records goes ahead."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        size = os.fstat(self._fd).st_size
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            # A line torn by a crash: end it, so the next record is a line of its own.
            os.write(self._fd, b"\n")

    def read(self) -> Known:
        with self.path.open("rb") as handle:
            return replay(handle.read().splitlines())

    def _write(self, record: dict[str, object]) -> None:
        os.write(self._fd, orjson.dumps(record) + b"\n")
        os.fsync(self._fd)

    def taken(self, name: str, runs: Sequence[str]) -> None:
        self._write({"ev": "taken", **name_field(name), "runs": list(runs)})

    def started(self, run_id: str) -> None:
        self._write({"ev": "started", "run": run_id})

    def ended(self, run_id: str, state: str) -> None:
        self._write({"ev": "ended", "run": run_id, "state": state})

    def moved(self, name: str, to: str) -> None:
        self._write({"ev": "moved", **name_field(name), "to": to})

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
