"""The log-shipper's work in-process against the real local backend, without
a supervisor: the order of bootstrap's entries among Codex's lines, batches,
a 413 split, a restart from shipper.json, token usage."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import multiprocess  # type: ignore[import-untyped]
import orjson
import pytest
from faultkit import wait_until
from loopback import serving

from supervisor.local_backend import LocalBackend
from workers.common.spool import CODEX_OUT, EntryLog, ShipperState
from workers.common.timing import Timing
from workers.log_shipper import EncodeStep, Shipper, ShipperConfig
from workers.messages import Drain, Drained, Stop
from workers.run_processes import RunProcesses
from workers.runtime import Channels, Mailbox

FAST = Timing(backoff_base=0.01, backoff_cap=0.05, connect_timeout=2, read_timeout=5)


def codex_line(text: str) -> bytes:
    return orjson.dumps({"type": "item.completed", "item": {"id": "i", "type": "agent_message", "text": text}}) + b"\n"


def usage_line(tokens_in: int, tokens_out: int) -> bytes:
    return orjson.dumps({"type": "turn.completed",
                         "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out}}) + b"\n"


def shipper(state: Path, backend: LocalBackend, run_id: str, token: str, **options: Any) -> Shipper:
    mp = multiprocess.get_context("fork")
    procs = RunProcesses(marker="shipper-test", cgroup=None, owner=os.getpid(), owner_start=None)
    channels = Channels(name="log-shipper", commands=mp.SimpleQueue(), events=mp.SimpleQueue(),
                        liveness=mp.Value("d", 0.0, lock=False), run_processes=procs, parent_pid=os.getpid())
    return Shipper(Mailbox(channels), ShipperConfig(state, backend.url, run_id, token, timing=FAST, **options))


def ship_all(s: Shipper) -> None:
    while s.encode_new():
        pass
    while s.state.pending:
        s.deliver_some()


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def test_bootstrap_entries_go_where_they_happened(tmp_path: Path, backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    log = EntryLog(tmp_path)
    log.write("info", "before codex", "codex_event")
    append(tmp_path / CODEX_OUT, codex_line("one"))
    log.write("info", "after one", "codex_event")
    append(tmp_path / CODEX_OUT, codex_line("two") + codex_line("three"))
    log.write("info", "after three", "codex_event")
    ship_all(shipper(tmp_path, backend, run_id, token))
    entries = backend.entries(run_id)
    order = [e["message"] if e["extra"]["run_event_source"] == "bootstrap" else e["extra"]["event"]["item"]["text"]
             for e in entries]
    assert order == ["before codex", "one", "after one", "two", "three", "after three"]
    assert [e["extra"]["seq"] for e in entries] == [1, 2, 3, 4, 5, 6]


def test_a_new_shipper_carries_on_from_the_committed_state(tmp_path: Path, backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    append(tmp_path / CODEX_OUT, codex_line("one") + codex_line("two"))
    first = shipper(tmp_path, backend, run_id, token)
    ship_all(first)
    first.state.save(tmp_path)
    append(tmp_path / CODEX_OUT, codex_line("three"))
    ship_all(shipper(tmp_path, backend, run_id, token))
    entries = backend.entries(run_id)
    assert [e["extra"]["event"]["item"]["text"] for e in entries] == ["one", "two", "three"]
    assert [e["extra"]["seq"] for e in entries] == [1, 2, 3]
    assert ShipperState.load(tmp_path).delivered == 3


def test_batches_and_a_413_split(tmp_path: Path, backend: LocalBackend) -> None:
    run_id, token = backend.create_run(log_batch=True)
    append(tmp_path / CODEX_OUT, b"".join(codex_line(f"line {i}") for i in range(1200)))
    ship_all(shipper(tmp_path, backend, run_id, token, log_batch=True))
    assert backend.entry_count(run_id) == 1200
    assert backend.request_counts(run_id).get("batch") == 3  # 500 + 500 + 200

    run_id, token = backend.create_run(log_batch=True)
    state = tmp_path / "second"
    state.mkdir()
    append(state / CODEX_OUT, b"".join(codex_line(f"line {i}") for i in range(8)))
    backend.set_faults(max_body_bytes=1000)  # one entry fits, eight do not
    ship_all(shipper(state, backend, run_id, token, log_batch=True))
    entries = backend.entries(run_id)
    assert [e["extra"]["seq"] for e in entries] == list(range(1, 9))


def test_token_usage_is_summed(tmp_path: Path, backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    append(tmp_path / CODEX_OUT, usage_line(100, 7) + codex_line("x") + usage_line(23, 5))
    s = shipper(tmp_path, backend, run_id, token)
    ship_all(s)
    assert (s.state.input_tokens, s.state.output_tokens) == (123, 12)


class _Holding(BaseHTTPRequestHandler):
    """A backend that keeps every body it gets and answers each only once the
    shipper has no step of encoding left undone (at most 10 s). Noted per
    post: whether a step was pending when it came, and whether the answer
    had to give up waiting."""

    protocol_version = "HTTP/1.1"
    bodies: list[bytes]
    posts: list[tuple[bool, bool]]
    step: Callable[[], EncodeStep | None]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        pending = self.step() is not None
        deadline = time.monotonic() + 10
        while (step := self.step()) is not None and not step.done and time.monotonic() < deadline:
            time.sleep(0.001)
        self.posts.append((pending, time.monotonic() >= deadline))
        # In one write: headers and body apart meet the client's delayed ACK.
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")


def ship_holding(state: Path, overlap: bool) -> tuple[list[dict[str, Any]], list[tuple[bool, bool]]]:
    """Ship `state` through a _Holding backend: each step encoded at once
    before delivery, or (overlap) delivered as the shipper's loop does it.
    The entries posted, without `created_at` (the time of their encoding), and
    what the backend noted per post."""
    holder: list[Shipper] = []
    handler = type("Handler", (_Holding,), {"bodies": [], "posts": [],
                                            "step": staticmethod(lambda: holder[0]._step)})  # noqa: SLF001
    mp = multiprocess.get_context("fork")
    procs = RunProcesses(marker="shipper-test", cgroup=None, owner=os.getpid(), owner_start=None)
    channels = Channels(name="log-shipper", commands=mp.SimpleQueue(), events=mp.SimpleQueue(),
                        liveness=mp.Value("d", 0.0, lock=False), run_processes=procs, parent_pid=os.getpid())
    with serving(handler) as url:
        s = Shipper(Mailbox(channels), ShipperConfig(state, url, "r1", "t", timing=FAST, log_batch=True))
        s.codex.max_line = 16_384  # so the 40 kB line is kept in part: a `dropped` line
        holder.append(s)
        if not overlap:
            ship_all(s)
        for _ in range(100_000):  # bounded: each turn ships an entry or spools a step
            if not (s.encode_new() or s.state.pending):
                break
            s.deliver_burst(seconds=60)
    entries = [e for b in handler.bodies for e in orjson.loads(b)["entries"]]
    return [{k: v for k, v in e.items() if k != "created_at"} for e in entries], handler.posts


def test_the_next_lines_are_encoded_while_the_backend_stores_a_batch(tmp_path: Path) -> None:
    """While a post waits for its answer, the step of lines read after it is
    encoded a slice at a time; what is shipped is exactly what encoding it
    all at once ships: the same entries, in the same order, bootstrap's own
    among Codex's lines, an over-long line cut."""
    lines = 1500
    for name in ("at-once", "overlap"):
        state = tmp_path / name
        state.mkdir()
        log = EntryLog(state)
        for i in range(lines):
            if i % 97 == 0:
                log.write("info", f"bootstrap note {i}", "codex_event")
            append(state / CODEX_OUT, codex_line(f"line {i} " + "x" * 150) if i != 700 else
                   b"not json " + b"y" * 40_000 + b"\n")
    at_once, _ = ship_holding(tmp_path / "at-once", overlap=False)
    overlapped, posts = ship_holding(tmp_path / "overlap", overlap=True)
    assert overlapped == at_once
    assert len(at_once) == lines + len(range(0, lines, 97))
    assert any(pending for pending, _ in posts)  # posts went out with the next step not encoded yet
    assert not any(gave_up for _, gave_up in posts)  # and it was encoded while they waited


def run_in_thread(s: Shipper) -> threading.Thread:
    """The shipper's own loop, as its worker runs it."""
    thread = threading.Thread(target=s.run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("size", [200_000, 1_500_000])
def test_a_long_entry_of_bootstrap_keeps_its_place_and_is_drained(tmp_path: Path, backend: LocalBackend,
                                                                   size: int) -> None:
    """One of bootstrap's entries longer than a step of Codex's output, even
    than a whole step (a control command's text, say), written between two
    Codex lines and right before the supervisor's drain: it goes out between
    them, and the drain is answered only once it has."""
    run_id, token = backend.create_run(log_batch=True)
    append(tmp_path / CODEX_OUT, codex_line("before"))
    EntryLog(tmp_path).write("info", "control command send_input (c1): " + "z" * size, "codex_event")
    append(tmp_path / CODEX_OUT, codex_line("after"))
    s = shipper(tmp_path, backend, run_id, token, log_batch=True)
    s.mb.channels.commands.put(Drain("final"))
    thread = run_in_thread(s)
    wait_until(lambda: not s.mb.channels.events.empty(), 30, "the shipper's answer to the drain")
    drained = s.mb.channels.events.get()
    delivered = backend.entry_count(run_id)
    s.mb.channels.commands.put(Stop())
    thread.join(10)
    assert isinstance(drained, Drained) and delivered == 3
    order = [e["extra"]["event"]["item"]["text"] if e["extra"]["run_event_source"] == "codex" else "bootstrap"
             for e in backend.entries(run_id)]
    assert order == ["before", "bootstrap", "after"]


def test_codex_lines_wait_for_an_entry_of_bootstrap_being_written(tmp_path: Path, backend: LocalBackend) -> None:
    """Half an entry in bootstrap.jsonl (its writer not done): the Codex lines
    not read yet wait for it (and the entries placed among them with them);
    once it is whole, everything goes out in order."""
    run_id, token = backend.create_run(log_batch=True)
    append(tmp_path / CODEX_OUT, codex_line("before"))
    EntryLog(tmp_path).write("info", "whole", "codex_event")
    record = orjson.dumps({"created_at": "2026-11-30T00:00:00.000Z", "level": "info", "message": "late",
                           "extra": {"run_event_source": "bootstrap", "run_event_kind": "codex_event"},
                           "codex_offset": (tmp_path / CODEX_OUT).stat().st_size}) + b"\n"
    append(tmp_path / "bootstrap.jsonl", record[:20])
    append(tmp_path / CODEX_OUT, codex_line("after"))
    s = shipper(tmp_path, backend, run_id, token, log_batch=True)
    ship_all(s)
    assert backend.entries(run_id) == []
    append(tmp_path / "bootstrap.jsonl", record[20:])
    ship_all(s)
    assert [e["message"] if e["extra"]["run_event_source"] == "bootstrap" else e["extra"]["event"]["item"]["text"]
            for e in backend.entries(run_id)] == ["before", "whole", "late", "after"]
