"""The log-shipper worker: turns Codex's output and bootstrap's own entries into
numbered log entries, spools them in the outbox, and delivers them in order.

Two stages, each restartable from `shipper.json`:
1. encode: read new lines of codex.out and bootstrap.jsonl, give each a seq,
   append the encoded entries to outbox.jsonl, commit the offsets;
2. deliver: post the outbox from the delivered offset, one entry per request or
   in batches of consecutive entries, strictly in seq order, and commit.
A crash between a delivery and its commit re-sends entries with the same seq,
which the backend can drop; nothing is ever skipped.
With log_batch, the next step is encoded while the backend stores a batch
(`_encode_ahead`) and spooled once it is whole, so the encoding costs the run
no time of its own.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from workers.common.backend_client import Backend
from workers.common.lean_http import Meanwhile
from workers.common.redact import Redactor
from workers.common.spool import (
    BOOTSTRAP_LOG,
    CODEX_OUT,
    OUTBOX,
    LineBlock,
    LineTail,
    OutboxReader,
    ShipperState,
    append_whole,
    disk_full_reason,
    is_disk_full,
    utc_now,
)
from workers.common.timing import Timing
from workers.file_watch import FileChanges, follow_files, warn_once_per_run
from workers.log_entries import (
    bootstrap_record,
    encode_codex_lines,
    encode_json,
    too_large_placeholder,
)
from workers.messages import Command, Drain, Drained, RunCannotGoOn, Stop, unexpected
from workers.runtime import Mailbox

ENCODE_STEP = 1024 * 1024  # bytes of input encoded per step, at most
FIRST_STEP = 64 * 1024  # when no entry waits for delivery
COMMIT_EVERY = 0.25  # seconds between commits of the delivered offset
IDLE_WAIT = 2.0


@dataclass(frozen=True)
class ShipperConfig:
    state_dir: Path
    server: str
    run_id: str
    token: str = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False, default=())
    log_batch: bool = False
    timing: Timing = field(default_factory=Timing)
    batch_entries: int = 500
    batch_bytes: int = 4 * 1024 * 1024


def interleave(markers: Sequence[int], codex_ends: Sequence[int], codex_read: int) -> tuple[list[int], int]:
    """Where bootstrap's entries go among Codex's lines, so the log reads in the
    order things happened. Entry k was written when codex.out was `markers[k]`
    bytes long; Codex's lines end at `codex_ends` (ascending); codex.out was
    read up to `codex_read`. Returns, for each entry placed, how many of the
    Codex lines come before it, and how many entries were placed: an entry
    whose Codex lines were not read yet waits (with every entry after it)."""
    before: list[int] = []
    ci = 0
    for marker in markers:
        if marker > codex_read:
            break
        while ci < len(codex_ends) and codex_ends[ci] <= marker:
            ci += 1
        before.append(ci)
    return before, len(before)


class EncodeStep:
    """One step of encoding: the lines read, turned into outbox lines a slice
    at a time, so that the work can be done while the backend stores a batch.
    Bootstrap's entries go where `interleave` put them among Codex's lines."""

    SLICE = 128  # Codex lines between two looks at whether to stop: ~0.4 ms

    def __init__(self, codex: LineBlock, records: list[tuple[int, dict[str, Any]]], redactor: Redactor,
                 created_at: str, seq: int, tokens: tuple[int, int]) -> None:
        self.codex = codex
        self.created_at = created_at
        self.out = bytearray()  # the encoded entries, one a line
        self.seq = seq  # the next entry's
        self.tokens = tokens
        self._redactor = redactor
        # (Codex lines before it, record); a last None takes the lines left.
        self._work: list[tuple[int, dict[str, Any] | None]] = [*records, (len(codex.data), None)]
        self._next = 0  # in _work
        self._ci = 0  # Codex lines encoded

    @property
    def done(self) -> bool:
        return self._next == len(self._work)

    def advance(self, enough: Callable[[], bool] | None = None) -> None:
        """Encode the rest, or, with `enough`, until it says so (looking after
        each slice)."""
        while self._next < len(self._work):
            upto, record = self._work[self._next]
            if self._ci < upto:
                self._take_codex(upto if enough is None else min(upto, self._ci + self.SLICE))
            else:
                if record is not None:
                    record = bootstrap_record(record, self._redactor)
                    record["extra"]["seq"] = self.seq
                    self.out += encode_json(record)
                    self.out += b"\n"
                    self.seq += 1
                self._next += 1
            if enough is not None and enough():
                return

    def _take_codex(self, upto: int) -> None:
        ci, data, dropped = self._ci, self.codex.data, self.codex.dropped
        lines = data if ci == 0 and upto == len(data) else data[ci:upto]
        self.tokens = encode_codex_lines(self.out, self.created_at, lines, self._redactor, self.seq, self.tokens,
                                         {i - ci: n for i, n in dropped.items() if ci <= i < upto} if dropped else None)
        self.seq += upto - ci
        self._ci = upto


# The backend no longer accepts this run's token: nothing more can be delivered.
AUTH_REFUSED = frozenset({401, 403})


class _Stop(Exception):
    """The supervisor asked us to stop while a delivery was still retrying."""


class _Refused(Exception):
    """The backend refused the run token; the run cannot go on."""


class Shipper:
    def __init__(self, mailbox: Mailbox, cfg: ShipperConfig) -> None:
        self.mb = mailbox
        self.cfg = cfg
        self.dir = cfg.state_dir
        self.redactor = Redactor(cfg.secrets)
        self.state = ShipperState.load(self.dir)
        outbox = self.dir / OUTBOX
        fd = os.open(outbox, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        # Bytes past the committed size are an append that was interrupted:
        # they are encoded again from the committed input offsets.
        os.ftruncate(fd, self.state.outbox_size)
        self.outbox_fd = fd
        self.outbox = OutboxReader(outbox)
        self.codex = LineTail(self.dir / CODEX_OUT, self.state.codex_offset)
        self.boot = LineTail(self.dir / BOOTSTRAP_LOG, self.state.boot_offset)
        self.backend = Backend(cfg.server, cfg.run_id, cfg.token, cfg.timing)
        self.changes: FileChanges | None = None  # while run() follows the spool files
        self.drain_id: str | None = None
        self.stopping = False
        self._last_commit = 0.0
        self._saved: ShipperState | None = None  # the state last written to shipper.json
        self._refusals: set[str] = set()
        self.refused: str | None = None  # why delivery stopped for good
        self.disk_full = False  # the outbox could not grow: deliver from memory
        self._direct = False  # delivering from memory now
        self._step: EncodeStep | None = None  # read, being encoded, not spooled yet
        self._look = True  # read the spool files on the next turn
        self._codex_read_on = False  # the step's read of codex.out ended inside a line

    # -- encode ----------------------------------------------------------------

    def encode_new(self) -> bool:
        """Encode what was appended since last time (one step of it, or the
        rest of the step begun while delivering). True if this step made
        progress, so another may be waiting."""
        if self._direct:
            return False  # called while delivering from memory: that comes first
        step = self._step if self._step is not None else self._begin_step()
        if step is None:
            return self._inside_a_long_line()
        step.advance()
        return self._finish_step(step)

    def _step_bytes(self) -> int:
        """How much input the next step reads. About what the backend needs to
        store the entries still to deliver, so the step is encoded by the time
        they are delivered (`_encode_ahead`) and delivery waits for neither;
        small when nothing waits, so the first entries go out early; at most
        ENCODE_STEP, which keeps memory flat while Codex prints megabytes."""
        waiting = self.state.outbox_size - self.state.delivered_offset
        return min(ENCODE_STEP, max(FIRST_STEP, waiting))

    def _inside_a_long_line(self) -> bool:
        """After a read that found no whole line: whether it read part of one
        (so reading on finds more)."""
        return self._codex_read_on or self.boot.last_read > 0

    def _begin_step(self) -> EncodeStep | None:
        """Read the next step's lines; None when there are none."""
        boot_start = self.boot.offset
        boot_lines = self.boot.read(max_bytes=ENCODE_STEP)
        if self.boot.mid_line:
            # One of bootstrap's entries is not whole yet (longer than a read,
            # or being written): it may belong before any Codex line not read
            # yet, so those wait for it.
            codex = LineBlock(self.codex.offset, [], {})
            self._codex_read_on = False
        else:
            codex = self.codex.read_block(max_bytes=self._step_bytes())
            self._codex_read_on = self.codex.last_read > 0
        if not boot_lines and not codex.data:
            return None
        records: list[tuple[int, int, dict[str, Any]]] = []  # (line start, codex offset, record)
        for b in boot_lines:
            line_start, boot_start = boot_start, b.end
            try:
                record = orjson.loads(b.data)
                marker = int(record.pop("codex_offset", 0))
                record.pop("final", None)  # written by earlier versions; never shipped
                record["extra"]["run_event_kind"]  # noqa: B018 - a record without it is torn
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                continue  # the torn line of a writer killed mid-append
            records.append((line_start, marker, record))
        before, taken = interleave([marker for _, marker, _ in records],
                                   codex.ends() if records else [], self.codex.offset)
        if taken < len(records):
            self.boot.rewind(records[taken][0])  # it waits for Codex's lines (next step)
        self._step = EncodeStep(codex, list(zip(before, (record for _, _, record in records[:taken]))),
                                self.redactor, utc_now(), self.state.next_seq,
                                (self.state.input_tokens, self.state.output_tokens))
        return self._step

    def _finish_step(self, step: EncodeStep) -> bool:
        """Spool an encoded step (outbox, then shipper.json). True if it held
        entries."""
        self._step = None
        out = step.out
        if not out:
            return self._codex_read_on  # else only entries waiting for Codex's lines
        grown = len(out)
        try:
            append_whole(self.outbox_fd, out)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            # An encoded entry never holds a raw newline (JSON escapes it).
            if not self._spool_full(exc, bytes(out).split(b"\n")[:-1]):
                return False
            grown = 0  # delivered straight from memory: the outbox stays as it was
        self.state = self.state.evolve(
            codex_offset=self.codex.offset,
            boot_offset=self.boot.offset,
            next_seq=step.seq,
            outbox_size=self.state.outbox_size + grown,
            delivered=self.state.delivered + (0 if grown else step.seq - self.state.next_seq),
            last_event_at=step.created_at if step.codex.data else self.state.last_event_at,
            input_tokens=step.tokens[0],
            output_tokens=step.tokens[1],
        )
        self._commit()
        return True

    def _encode_ahead(self, answered: Callable[[], bool]) -> None:
        """While the backend stores a batch, encode the step in progress, until
        the answer arrives: the encoding then costs the run no time of its
        own. (The step is spooled after the answer, in `_keep_encoding`.)"""
        if self._step is not None and not self._direct:
            self._step.advance(answered)

    def _keep_encoding(self) -> None:
        """Between two deliveries: spool the step encoded meanwhile, and begin
        the next one when there may be more to read."""
        step = self._step
        if step is not None and step.done:
            self._look = self._finish_step(step)
        # A full disk ends the run; reading a step again per batch would only
        # find the outbox still full (the loop tries between bursts, as before).
        if self._step is None and not self.disk_full and (self._spool_changed() or self._look):
            self._look = self._begin_step() is not None or self._inside_a_long_line()

    def _spool_full(self, exc: OSError, out: list[bytes]) -> bool:
        """The outbox cannot grow (the disk is full). Say so once (the
        supervisor stops Codex and ends the run); then, once everything in
        the outbox is delivered, deliver `out` straight from memory so that
        what Codex printed still arrives in order. False: not now, read it
        again later (the readers go back to the committed offsets)."""
        if not self.disk_full:
            self.disk_full = True
            self.mb.put(RunCannotGoOn(disk_full_reason(self.dir, exc)))
        if self.state.pending or self._direct or self.refused is not None:
            self.codex.rewind(self.state.codex_offset)
            self.boot.rewind(self.state.boot_offset)
            return False
        self._direct = True
        try:
            limit = self.cfg.batch_entries if self.cfg.log_batch else 1
            for start in range(0, len(out), limit):
                self._send(out[start:start + limit])
        except BaseException:
            self.codex.rewind(self.state.codex_offset)
            self.boot.rewind(self.state.boot_offset)
            raise
        finally:
            self._direct = False
        return True

    # -- deliver ---------------------------------------------------------------

    def deliver_some(self) -> None:
        """Deliver the next batch (or single entry) from the outbox."""
        limit = self.cfg.batch_entries if self.cfg.log_batch else 1
        lines, end = self.outbox.batch(self.state.delivered_offset, self.state.outbox_size, limit,
                                       self.cfg.batch_bytes)
        if not lines:
            return
        self._send(lines)
        self._backend_answers()
        self.state = self.state.evolve(delivered_offset=end, delivered=self.state.delivered + len(lines))
        now = time.monotonic()
        if now - self._last_commit >= COMMIT_EVERY or not self.state.pending:
            self._commit()
            self._last_commit = now

    def _commit(self) -> None:
        """Save the state (shipper.json), unless it is the one saved last:
        a drain answered or a stop right after a delivery has nothing new."""
        if self.state is not self._saved:
            self.state.save(self.dir)
            self._saved = self.state

    def _send(self, lines: list[bytes]) -> None:
        if len(lines) == 1:
            self._send_one(lines[0])
            return
        answer = self._post("/logs/batch", b'{"entries":[' + b",".join(lines) + b"]}", self._encode_ahead)
        if 400 <= answer.status < 500:
            # Too large (413), or one entry the backend will not take: halves
            # find the entry at fault, and every other entry is kept.
            half = len(lines) // 2
            self._send(lines[:half])
            self._send(lines[half:])
        elif not answer.ok:
            self._report_dropped(len(lines), f"HTTP {answer.status} for a batch")

    def _send_one(self, line: bytes) -> None:
        path = "/logs/batch" if self.cfg.log_batch else "/logs"
        body = b'{"entries":[' + line + b"]}" if self.cfg.log_batch else line
        answer = self._post(path, body)
        if answer.status == 413:
            entry = orjson.loads(line)
            placeholder = orjson.dumps(too_large_placeholder(entry, len(line), None))
            body = b'{"entries":[' + placeholder + b"]}" if self.cfg.log_batch else placeholder
            answer = self._post(path, body)
            if not answer.ok:
                self._report_dropped(1, f"HTTP {answer.status} even for the too-large placeholder")
        elif not answer.ok:
            self._report_dropped(1, f"HTTP {answer.status}")

    def _post(self, path: str, body: bytes, meanwhile: Meanwhile | None = None) -> Any:
        answer = self.backend.post(path, body, sleep=self._sleep, meanwhile=meanwhile)
        if answer.status == 0 or (answer.status >= 500 or answer.status == 429):
            raise _Stop()
        if answer.status in AUTH_REFUSED:
            raise _Refused(f"the backend refused the run token (HTTP {answer.status}) for {path}; "
                           "the run was stopped")
        return answer

    def _sleep(self, seconds: float) -> bool:
        """Wait between retries; keep encoding meanwhile. True = stop now."""
        self._backend_fails(self.backend.last_answer)
        deadline = time.monotonic() + seconds
        while True:
            self._handle(self.mb.wait(min(IDLE_WAIT, max(0.0, deadline - time.monotonic())), self._followed()))
            if self.stopping:
                return True
            self._spool_changed()
            self.encode_new()
            if time.monotonic() >= deadline:
                return False

    def _backend_fails(self, answer: Any) -> None:
        """A try failed: record since when and why (shipper.json), and say so in
        this worker's log when it starts or its cause changes."""
        why = (answer.why or f"HTTP {answer.status}") if answer is not None else "no answer"
        if self.state.backend_down_since is None:
            self.state = self.state.evolve(backend_down_since=time.time(), backend_trouble=why)
            self._log(f"the backend does not answer ({why}); entries wait on disk and are retried")
        elif why != self.state.backend_trouble:
            self.state = self.state.evolve(backend_trouble=why)
            self._log(f"the backend still does not answer, now: {why}")
        else:
            return
        self._commit()

    def _backend_answers(self) -> None:
        since = self.state.backend_down_since
        if since is None:
            return
        outage = max(0.0, time.time() - since)
        self.state = self.state.evolve(backend_down_since=None, backend_trouble="", last_outage_s=outage)
        self._commit()
        self._log(f"the backend answers again after {outage:.1f} s")

    @staticmethod
    def _log(text: str) -> None:
        # stderr is this worker's log file (worker-log-shipper.log).
        print(f"{utc_now()} log-shipper: {text}", file=sys.stderr, flush=True)

    def _report_dropped(self, count: int, why: str) -> None:
        # Not retried (docs/protocol.md); said once per kind of refusal, locally, without
        # the entries' content. shipper.json keeps the running count.
        self.state = self.state.evolve(dropped=self.state.dropped + count)
        if why not in self._refusals:
            self._refusals.add(why)
            self._log(f"the backend refused log entries ({why}); they are dropped, not retried "
                      "(count in shipper.json)")

    # -- loop ------------------------------------------------------------------

    def _handle(self, messages: list[Command]) -> None:
        for message in messages:
            match message:
                case Stop():
                    self.stopping = True
                case Drain(job=job):
                    self.drain_id = job
                case _:
                    unexpected(message, "the log-shipper")

    def _followed(self) -> list[FileChanges]:
        return [self.changes] if self.changes is not None else []

    def _spool_changed(self) -> bool:
        return self.changes is not None and self.changes.changed()

    def run(self) -> None:
        changes = self.changes = follow_files(self.dir, {CODEX_OUT, BOOTSTRAP_LOG}, warn_once_per_run(self.dir))
        self._look = True
        try:
            while not self.stopping:
                self.mb.tick()
                # Reading the files only when inotify says they changed keeps
                # the delivery loop free of needless syscalls. (Encoding may
                # deliver too, when the disk is full.)
                look = self._spool_changed() or self._look or self._step is not None
                encoded = self._guarded(self.encode_new) if look else False
                self._look = encoded  # more may be waiting than one step took
                if self.state.pending and self.refused is None:
                    self._guarded(self.deliver_burst)
                    continue
                if self.drain_id is not None:
                    if self._guarded(self.encode_new):
                        continue
                    self._commit()
                    self.mb.put(Drained(self.drain_id, self.state.delivered, left=self.state.pending))
                    self.drain_id = None
                if not encoded:
                    self._handle(self.mb.wait(IDLE_WAIT, self._followed()))
                    self._look = True
        finally:
            self._commit()
            self.changes = None
            changes.close()

    def _guarded(self, step: Callable[[], Any]) -> Any:
        """Run one step of the loop; a stop while a delivery was retrying ends
        the loop, a refused token stops delivery for good."""
        try:
            return step()
        except _Stop:
            self.stopping = True
        except _Refused as why:
            # Said once to the supervisor, which ends the run; what is left
            # stays spooled, and drains are answered at once.
            self.refused = str(why)
            self._commit()
            self.mb.put(RunCannotGoOn(self.refused))
        return False

    def deliver_burst(self, seconds: float = 0.2) -> None:
        """Deliver for a while before looking at the spool files again."""
        until = time.monotonic() + seconds
        while self.state.pending and time.monotonic() < until and not self.stopping:
            # Only with batches: one entry per request, the round trips are the
            # limit and encoding is ~1% of them, not worth a look at the spool
            # files per entry.
            if self.cfg.log_batch:
                self._keep_encoding()
            self.deliver_some()
        self.mb.tick()


def main(mailbox: Mailbox, cfg: ShipperConfig) -> None:
    # Encoding makes many short-lived objects; the default thresholds make the
    # collector run thousands of times a second for nothing.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    Shipper(mailbox, cfg).run()
