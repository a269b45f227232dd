"""The run's durable on-disk spool, shared by the supervisor and its workers.

Files in the run's private state folder (0700; files 0600):
- codex.out        Codex's stdout, written by Codex itself (no pipe, so a slow
                   backend or a busy supervisor can never block it);
- bootstrap.jsonl  bootstrap's own entries, one JSON object a line, appended by
                   the supervisor and the artifact-watcher (O_APPEND, one write()
                   per line, so two writers never interleave);
- outbox.jsonl     the log-shipper's output: every entry, fully encoded with its
                   seq, in the order it will be delivered;
- shipper.json     offsets into the three files above, committed atomically.

Nothing that was appended is ever rewritten, and each offset only moves past data
that is already safe elsewhere, so any process may be SIGKILLed at any moment.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from itertools import accumulate
from pathlib import Path
from typing import Any

import orjson

from workers.common.files import open_private, write_all, write_private

CODEX_OUT = "codex.out"
CODEX_ERR = "codex.err"
BOOTSTRAP_LOG = "bootstrap.jsonl"
OUTBOX = "outbox.jsonl"
SHIPPER_STATE = "shipper.json"

# Lines longer than this keep only their head in memory; the rest is counted.
# Real Codex lines exceed 1 MiB routinely (a command's output keeps its first and
# last 512 KiB, then JSON escaping grows it), and must still parse as events.
MAX_LINE_BYTES = 8 * 1024 * 1024
READ_CHUNK = 1024 * 1024
# The outbox is read for delivery in blocks of this size (a batch of 500
# real-shaped entries is about 200 KiB).
_BATCH_READ = 256 * 1024


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Set aside in the state folder when a run starts, given back when its disk is
# full: room for the run's last entries, the shipper's commits, its report.
RESERVE = "reserve"
RESERVE_BYTES = 256 * 1024


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full_reason(state_dir: Path, exc: OSError) -> str:
    return f"disk full: {exc.strerror or 'no space left on device'} for the state folder {state_dir}"


def set_aside(state_dir: Path) -> None:
    """Claim RESERVE_BYTES of the state folder's disk (best effort)."""
    try:
        fd = open_private(state_dir / RESERVE, os.O_WRONLY | os.O_CREAT)
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
        finally:
            os.close(fd)
    except OSError:
        pass  # no room even for this: the run will say the disk is full soon enough


def give_back(state_dir: Path) -> None:
    try:
        (state_dir / RESERVE).unlink()
    except OSError:
        pass


def append_whole(fd: int, data: bytes | bytearray) -> None:
    """Append `data` to the file open at `fd` completely or not at all: a
    write cut short by a full disk is taken back (truncated), then raised."""
    start = os.fstat(fd).st_size
    try:
        write_all(fd, data)
    except OSError:
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass
        raise


class EntryLog:
    """Appends bootstrap's own entries. Each entry records how much of Codex's
    output existed when it was written, so the shipper can place it after those
    lines. `on_disk_full(exc)`, when given, hears of an entry the full disk
    refused (instead of an exception)."""

    def __init__(self, state_dir: Path, redact: Any = None,
                 on_disk_full: Callable[[OSError], None] | None = None) -> None:
        self.path = state_dir / BOOTSTRAP_LOG
        self.codex_out = state_dir / CODEX_OUT
        self._redact = redact
        self._on_disk_full = on_disk_full

    def write(self, level: str, message: str, kind: str, **extra: Any) -> None:
        if self._redact is not None:
            message = self._redact.text(message)
            extra = self._redact.value(extra)
        try:
            codex_offset = self.codex_out.stat().st_size
        except FileNotFoundError:
            codex_offset = 0
        record = {
            "created_at": utc_now(),
            "level": level,
            "message": message,
            "extra": {"run_event_source": "bootstrap", "run_event_kind": kind, **extra},
            "codex_offset": codex_offset,
        }
        line = orjson.dumps(record) + b"\n"
        try:
            fd = open_private(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                append_whole(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            if self._on_disk_full is None or not is_disk_full(exc):
                raise
            self._on_disk_full(exc)


def terminate_last_line(path: Path) -> None:
    """Codex has exited: make its unterminated last line (a crash mid-write, or
    a 50 MB line with no newline) a complete line, so it is shipped and a resume's
    output starts on a line of its own. Raises OSError when the disk is full."""
    try:
        with open(path, "rb+") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
    except FileNotFoundError:
        pass


@dataclass(frozen=True)
class Line:
    data: bytes  # without the newline; only the head of an over-long line
    end: int  # file offset just past this line (and its newline)
    dropped: int = 0  # bytes of an over-long line that were not kept


@dataclass(frozen=True)
class LineBlock:
    """Consecutive complete lines as plain bytes (no object per line: the
    log-shipper reads tens of thousands a second). `data[i]` is line i without
    its newline (only the head of an over-long one); `dropped[i]`, when
    present, how many bytes of line i were not kept."""

    start: int  # file offset of the first line
    data: list[bytes]
    dropped: dict[int, int]

    def ends(self) -> list[int]:
        """The file offset just past each line (and its newline)."""
        dropped = self.dropped
        return list(accumulate((len(d) + 1 + (dropped.get(i, 0) if dropped else 0) for i, d in enumerate(self.data)),
                               initial=self.start))[1:]

    def lines(self) -> list[Line]:
        return [Line(d, end, self.dropped.get(i, 0)) for i, (d, end) in enumerate(zip(self.data, self.ends()))]


class LineTail:
    """Reads complete lines from a file that another process keeps appending to.

    Never assumes short lines: a line of any length costs at most MAX_LINE_BYTES
    of memory. Only the position after a complete line is ever reported, so a
    reader restarted from `Line.end` never splits a line."""

    def __init__(self, path: Path, offset: int, max_line: int = MAX_LINE_BYTES) -> None:
        self.path = path
        self.offset = offset  # start of the first line not yet returned
        self.max_line = max_line
        self._scan = offset  # how far the current unfinished line was read
        self._head = bytearray()
        self._dropped = 0
        self._file: Any = None
        self.last_read = 0  # bytes the last read() consumed, complete lines or not

    def read(self, max_bytes: int = 8 * READ_CHUNK) -> list[Line]:
        """Complete lines from the current offset (at most about `max_bytes`).
        A last line without a newline waits: once Codex has exited, the
        supervisor terminates it with one (see `terminate_last_line`)."""
        return self.read_block(max_bytes).lines()

    def read_block(self, max_bytes: int = 8 * READ_CHUNK) -> LineBlock:
        """`read()` as one LineBlock."""
        block = LineBlock(self.offset, [], {})
        if self._file is None:
            try:
                # Kept open: the file is only ever appended to, never replaced.
                self._file = open(self.path, "rb", buffering=0)
            except FileNotFoundError:
                return block
        f = self._file
        f.seek(self._scan)
        budget = max_bytes
        while budget > 0:
            chunk = f.read(min(READ_CHUNK, budget))
            if not chunk:
                break
            budget -= len(chunk)
            self._take(chunk, block)
        self.last_read = max_bytes - budget
        return block

    @property
    def mid_line(self) -> bool:
        """Whether the last read ended inside a line: its writer is not done,
        or the line is longer than what one read takes."""
        return self._scan > self.offset

    def rewind(self, offset: int) -> None:
        """Read again from `offset`, the start of a line already returned."""
        self.offset = self._scan = offset
        self._head.clear()
        self._dropped = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _take(self, chunk: bytes, block: LineBlock) -> None:
        parts = chunk.split(b"\n")
        end = self._scan + len(chunk)
        self._scan = end
        last = parts.pop()  # the start of a line not finished yet (maybe empty)
        if parts:
            data = block.data
            self._keep(parts[0])  # it finishes the line read so far
            if self._dropped:
                block.dropped[len(data)] = self._dropped
                self._dropped = 0
            data.append(bytes(self._head))
            self._head.clear()
            if len(chunk) <= self.max_line:
                data.extend(parts[1:])  # none is over-long
            else:
                for part in parts[1:]:
                    if len(part) > self.max_line:
                        block.dropped[len(data)] = len(part) - self.max_line
                        part = part[: self.max_line]
                    data.append(part)
            self.offset = end - len(last)
        self._keep(last)

    def _keep(self, piece: bytes) -> None:
        room = self.max_line - len(self._head)
        if room >= len(piece):
            self._head += piece
        else:
            self._head += piece[: max(room, 0)]
            self._dropped += len(piece) - max(room, 0)


@dataclass(frozen=True)
class ShipperState:
    """The log-shipper's committed progress. `outbox_size` bounds what is known
    to be encoded; bytes past it in the outbox are an interrupted append."""

    codex_offset: int = 0
    boot_offset: int = 0
    next_seq: int = 1
    outbox_size: int = 0
    delivered_offset: int = 0
    delivered: int = 0
    dropped: int = 0
    last_event_at: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    # The backend's trouble, for the run's and the pool's output (link_status):
    # wall-clock time of the first failed try of the current outage, what failed,
    # and how long the last outage lasted.
    backend_down_since: float | None = None
    backend_trouble: str = ""
    last_outage_s: float = 0.0

    @classmethod
    def read(cls, state_dir: Path) -> ShipperState | None:
        """The committed state; None if there is none yet (or it cannot be read:
        not a regular file, not JSON, a field of the wrong type)."""
        try:
            raw = orjson.loads(_read_regular(state_dir / SHIPPER_STATE))
            known = {k: raw[k] for k in _FIELD_NAMES if k in raw}
        except (OSError, orjson.JSONDecodeError, TypeError):
            return None
        if not all(_FIELD_TYPES[k](v) for k, v in known.items()):
            return None
        return cls(**known)

    @classmethod
    def load(cls, state_dir: Path) -> ShipperState:
        """The committed state, or a fresh start."""
        return cls.read(state_dir) or cls()

    def save(self, state_dir: Path) -> None:
        path = state_dir / SHIPPER_STATE
        # Not dataclasses.asdict: it deep-copies every field; these are all plain values.
        data = orjson.dumps({name: getattr(self, name) for name in _FIELD_NAMES})
        try:
            write_private(path, data)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            # A rename needs a new file's blocks, which a full disk has not:
            # overwrite the old one in place instead (its block is there, and
            # trailing spaces keep it valid JSON when the new text is shorter).
            fd = open_private(path, os.O_WRONLY)
            try:
                old = os.fstat(fd).st_size
                os.pwrite(fd, data.ljust(old), 0)
            finally:
                os.close(fd)

    def evolve(self, **changes: Any) -> ShipperState:
        # Once per delivered entry with one entry per request: a copy of the
        # fields costs a quarter of dataclasses.replace (which calls __init__,
        # with a getattr per field). Same checks: only known fields change.
        if not changes.keys() <= _STATE_FIELDS:
            raise TypeError(f"not a ShipperState field: {sorted(changes.keys() - _STATE_FIELDS)}")
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__, **changes)
        return new

    @property
    def pending(self) -> bool:
        return self.delivered_offset < self.outbox_size


_FIELD_NAMES = tuple(f.name for f in fields(ShipperState))  # in the order shipper.json has always had


def _count(value: object) -> bool:
    return type(value) is int and value >= 0


def _seconds(value: object) -> bool:
    return type(value) in (int, float)


# What each field of shipper.json may hold: a damaged file reads as none at all,
# never as a state whose arithmetic fails later.
_FIELD_TYPES: dict[str, Callable[[object], bool]] = {
    name: _count for name in _FIELD_NAMES
} | {
    "last_event_at": lambda v: v is None or isinstance(v, str),
    "backend_down_since": lambda v: v is None or _seconds(v),
    "backend_trouble": lambda v: isinstance(v, str),
    "last_outage_s": _seconds,
}


def _read_regular(path: Path) -> bytes:
    """A file's bytes; OSError when it is not a regular file (a FIFO would block)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(fd)
_STATE_FIELDS = frozenset(_FIELD_NAMES)


class OutboxReader:
    """Reads encoded entries between committed outbox offsets, through one
    handle kept open for the shipper's lifetime."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")

    def batch(self, start: int, stop: int, limit: int, max_bytes: int) -> tuple[list[bytes], int]:
        """Up to `limit` consecutive entries from `start`, never past `stop`,
        together at most `max_bytes` (the first one whatever its size), and the
        offset after the last one. Read in blocks, not a line at a time."""
        f = self._file
        f.seek(start)
        entries: list[bytes] = []
        end = read = start
        size = 0
        rest = b""  # the start of an entry that the block read so far cut
        # About what `limit` real-shaped entries take, growing while an entry
        # is longer (one entry per request reads a few KiB, not a whole block).
        want = min(_BATCH_READ, limit * 512)
        while read < stop:
            block = f.read(min(want, stop - read))
            want = min(want * 2, _BATCH_READ)
            if not block:
                break
            read += len(block)
            parts = (rest + block if rest else block).split(b"\n")
            rest = parts.pop()
            room = limit - len(entries)
            take = parts[:room] if len(parts) > room else parts
            total = sum(map(len, take))
            if size + total <= max_bytes:  # nearly always: all of them at once
                entries += take
                size += total
                end += total + len(take)
            else:
                for entry in take:
                    if entries and size + len(entry) > max_bytes:
                        return entries, end
                    entries.append(entry)
                    size += len(entry)
                    end += len(entry) + 1
            if len(entries) >= limit:
                break
        return entries, end

    def close(self) -> None:
        self._file.close()


def forget_outage(state_dir: Path) -> None:
    """A new start of the run: an outage an earlier start recorded is not news
    (the backend may have answered for an hour since); this start's shipper
    records its own. Called before the workers start, so nobody else writes."""
    state = ShipperState.read(state_dir)
    if state is not None and state.backend_down_since is not None:
        state.evolve(backend_down_since=None, backend_trouble="").save(state_dir)
