"""The log-shipper's work in-process against the real local backend, without
a supervisor: the order of bootstrap's entries among Codex's lines, batches,
a 413 split, a restart from shipper.json, token usage."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import multiprocess  # type: ignore[import-untyped]
import orjson

from supervisor.local_backend import LocalBackend
from workers.common.spool import CODEX_OUT, EntryLog, ShipperState
from workers.common.timing import Timing
from workers.log_shipper import Shipper, ShipperConfig
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
