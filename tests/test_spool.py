"""The on-disk spool: lines of any length, torn writes, atomic state."""

from __future__ import annotations

import os
from dataclasses import FrozenInstanceError, asdict
from pathlib import Path

import orjson
import pytest

from workers.common.spool import EntryLog, LineTail, OutboxReader, ShipperState, terminate_last_line


def test_linetail_returns_only_complete_lines(tmp_path: Path) -> None:
    f = tmp_path / "out"
    f.write_bytes(b"one\ntw")
    tail = LineTail(f, 0)
    assert [line.data for line in tail.read()] == [b"one"]
    assert tail.offset == 4
    with open(f, "ab") as w:
        w.write(b"o\nthree\n")
    lines = tail.read()
    assert [line.data for line in lines] == [b"two", b"three"]
    assert lines[-1].end == f.stat().st_size


def test_linetail_keeps_head_of_huge_line_without_holding_it(tmp_path: Path) -> None:
    f = tmp_path / "out"
    with open(f, "wb") as w:
        w.write(b"a" * (3 * 1024 * 1024 + 5) + b"\nnext\n")
    tail = LineTail(f, 0, max_line=1024)
    lines = tail.read(max_bytes=64 * 1024 * 1024)
    assert len(lines[0].data) == 1024 and lines[0].dropped == 3 * 1024 * 1024 + 5 - 1024
    assert lines[1].data == b"next"


def test_linetail_restarted_from_offset_never_splits_a_line(tmp_path: Path) -> None:
    f = tmp_path / "out"
    f.write_bytes(b"first\nsecond-partial")
    tail = LineTail(f, 0)
    tail.read()
    again = LineTail(f, tail.offset)
    with open(f, "ab") as w:
        w.write(b"-done\n")
    assert [line.data for line in again.read()] == [b"second-partial-done"]


def test_terminate_last_line_adds_newline_once(tmp_path: Path) -> None:
    f = tmp_path / "out"
    f.write_bytes(b"x")
    terminate_last_line(f)
    terminate_last_line(f)
    assert f.read_bytes() == b"x\n"
    terminate_last_line(tmp_path / "missing")


def test_entry_log_records_codex_offset_and_is_private(tmp_path: Path) -> None:
    (tmp_path / "codex.out").write_bytes(b"12345")
    EntryLog(tmp_path).write("info", "hello", "codex_event", exit_code=0)
    record = orjson.loads((tmp_path / "bootstrap.jsonl").read_bytes())
    assert record["codex_offset"] == 5
    assert record["extra"] == {"run_event_source": "bootstrap", "run_event_kind": "codex_event", "exit_code": 0}
    assert (tmp_path / "bootstrap.jsonl").stat().st_mode & 0o777 == 0o600


def test_shipper_state_roundtrip_and_corrupt_file(tmp_path: Path) -> None:
    state = ShipperState(codex_offset=10, next_seq=7, outbox_size=99)
    state.save(tmp_path)
    assert ShipperState.load(tmp_path) == state
    (tmp_path / "shipper.json").write_bytes(b"{torn")
    assert ShipperState.load(tmp_path) == ShipperState()
    assert not list((tmp_path / ".tmp").iterdir())


def test_shipper_state_file_keeps_its_format(tmp_path: Path) -> None:
    # A restarted worker of another version reads what this one wrote: every
    # field, in declaration order, as dataclasses.asdict gave them.
    state = ShipperState(codex_offset=10, next_seq=7, outbox_size=99, last_event_at="2026-01-01T00:00:00.000Z")
    state = state.evolve(backend_down_since=1.5, backend_trouble="HTTP 503", delivered=3)
    state.save(tmp_path)
    assert (tmp_path / "shipper.json").read_bytes() == orjson.dumps(asdict(state))


def test_shipper_state_evolve_changes_only_what_it_names() -> None:
    state = ShipperState(codex_offset=10, next_seq=7, outbox_size=99)
    moved = state.evolve(delivered_offset=40, delivered=3)
    assert moved == ShipperState(codex_offset=10, next_seq=7, outbox_size=99, delivered_offset=40, delivered=3)
    assert state == ShipperState(codex_offset=10, next_seq=7, outbox_size=99)  # frozen: a new one
    with pytest.raises(FrozenInstanceError):
        moved.delivered = 4  # type: ignore[misc]
    with pytest.raises(TypeError, match="delivred"):
        state.evolve(delivred=1)


def test_outbox_lines_stop_at_committed_size(tmp_path: Path) -> None:
    f = tmp_path / "outbox"
    f.write_bytes(b"a\nb\nc-torn")
    reader = OutboxReader(f)
    got = reader.batch(0, 4, 10, 1024)
    reader.close()
    assert got == ([b"a", b"b"], 4)
    assert os.path.getsize(f) == 10


def test_linetail_rewind_rereads_a_line(tmp_path: Path) -> None:
    f = tmp_path / "out"
    f.write_bytes(b"a\nb\n")
    tail = LineTail(f, 0)
    first = tail.read()
    tail.rewind(first[0].end)
    assert [line.data for line in tail.read()] == [b"b"]


def test_write_private_keeps_its_temporary_out_of_the_watched_folder(tmp_path: Path) -> None:
    from workers.common.files import write_private

    write_private(tmp_path / "state.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp", "state.json"]
    assert (tmp_path / ".tmp").stat().st_mode & 0o777 == 0o700
