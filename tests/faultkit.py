"""Helpers for tests that really cause faults: find a run's processes, kill
them, and wait (bounded) for what should follow."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.02) -> T:
    """Poll `predicate` until it is truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def workers(state_dir: Path) -> dict[str, int]:
    try:
        return json.loads((state_dir / "workers.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped — this
    container's PID 1 does not reap orphans) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def shipper_state(state_dir: Path) -> dict[str, int]:
    try:
        return json.loads((state_dir / "shipper.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def codex_calls(log: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def kill(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def assert_all_delivered_once(entries: list[dict], codex_out: Path) -> None:
    """Every seq from 1 to the last arrived (duplicates only with the same seq),
    and every line Codex printed is among them, in order."""
    by_seq: dict[int, dict] = {}
    for e in entries:
        by_seq.setdefault(e["extra"]["seq"], e)
    seqs = sorted(by_seq)
    missing = sorted(set(range(1, seqs[-1] + 1)) - set(seqs))
    assert seqs == list(range(1, len(seqs) + 1)), f"missing seqs: {missing[:10]}"
    codex = [by_seq[s] for s in seqs if by_seq[s]["extra"]["run_event_source"] == "codex"]
    printed = [line for line in codex_out.read_bytes().split(b"\n") if line]
    assert len(codex) == len(printed), (len(codex), len(printed))


def shape_pids(pidfile: Path) -> dict[str, int]:
    """The fake codex's `shapes` mode: {"nohup": pid, "setsid": pid, "foreground": pid}."""
    try:
        lines = pidfile.read_text().splitlines()
    except FileNotFoundError:
        return {}
    return {name: int(pid) for name, pid in (line.split() for line in lines if line.strip())}


def finish(proc: subprocess.Popen[str], timeout: float = 90) -> tuple[int, str]:
    """Wait (bounded) for a bootstrap started in the background; its exit status and stderr."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"bootstrap did not finish within {timeout} s:\n{err}") from None
    return proc.returncode, err
