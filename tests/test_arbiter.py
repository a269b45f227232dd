"""The Arbiter with real worker processes but no run: events, stop, a killed
worker replaced with its sticky commands, a stopped one killed as hung, one
that keeps dying given up on."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import multiprocess  # type: ignore[import-untyped]
import orjson
import pytest

from supervisor.arbiter import Arbiter, WorkerGaveUp, WorkerSpec
from tests.faultkit import wait_until
from workers.common.timing import Timing
from workers.messages import Drain, Drained, Event, Stop
from workers.run_processes import RunProcesses
from workers.runtime import Mailbox

TIMING = Timing(liveness_timeout=2.0, max_restarts=2)


def echo_worker(mailbox: Mailbox) -> None:
    """Answers every Drain at once; leaves on Stop."""
    while True:
        for message in mailbox.wait(1.0):
            match message:
                case Stop():
                    return
                case Drain(job=job):
                    mailbox.put(Drained(job, 0))


def crashing_worker(mailbox: Mailbox) -> None:
    raise RuntimeError("boom")


class Harness:
    def __init__(self, tmp: Path, *specs: WorkerSpec, timing: Timing = TIMING) -> None:
        self.tmp = tmp
        self.notes: list[str] = []
        self.events: list[tuple[str, Event]] = []
        procs = RunProcesses(marker=f"arbiter-test-{os.getpid()}", cgroup=None, owner=os.getpid(), owner_start=None)
        self.arbiter = Arbiter(multiprocess.get_context("fork"), specs, timing, tmp, procs, self.notes.append)

    def poll_until(self, predicate: Callable[[], object], what: str, timeout: float = 30) -> None:
        def check() -> bool:
            self.events += self.arbiter.poll(0.2)
            return bool(predicate())
        wait_until(check, timeout, what, every=0)

    def pid(self, name: str) -> int | None:
        process = self.arbiter.slots[name].process
        return process.pid if process is not None else None

    def published(self) -> dict[str, int]:
        return orjson.loads((self.tmp / "workers.json").read_bytes())


MakeHarness = Callable[..., Harness]


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[MakeHarness]:
    made: list[Harness] = []

    def make(*specs: WorkerSpec, timing: Timing = TIMING) -> Harness:
        made.append(Harness(tmp_path, *specs, timing=timing))
        return made[-1]

    yield make
    for h in made:
        h.arbiter.stop(timeout=5.0)


def test_events_arrive_and_stop_ends_the_workers(harness: MakeHarness) -> None:
    h = harness(WorkerSpec("echo", echo_worker))
    h.arbiter.start()
    assert h.published() == {"supervisor": os.getpid(), "echo": h.pid("echo")}
    h.arbiter.send("echo", Drain("a"))
    h.poll_until(lambda: h.events, "the answer")
    assert h.events == [("echo", Drained("a", 0))]
    process = h.arbiter.slots["echo"].process
    h.arbiter.stop(timeout=5.0)
    assert process.exitcode == 0 and h.pid("echo") is None and h.notes == []


def test_a_killed_worker_is_replaced_and_gets_its_sticky_commands(harness: MakeHarness) -> None:
    h = harness(WorkerSpec("echo", echo_worker))
    h.arbiter.start()
    h.arbiter.send("echo", Drain("kept"), sticky=True)
    h.arbiter.send("echo", Drain("once"))
    h.poll_until(lambda: len(h.events) == 2, "both answers")
    first = h.pid("echo")
    assert first is not None
    os.kill(first, signal.SIGKILL)
    h.poll_until(lambda: h.pid("echo") not in (None, first) and len(h.events) == 3, "a replacement's answer")
    assert h.events[2] == ("echo", Drained("kept", 0))  # replayed; "once" is not
    assert h.notes == ["echo worker killed by SIGKILL; starting a new one"]
    assert h.published()["echo"] == h.pid("echo")


def test_a_stopped_worker_is_killed_as_hung_and_replaced(harness: MakeHarness) -> None:
    h = harness(WorkerSpec("echo", echo_worker))
    h.arbiter.start()
    first = h.pid("echo")
    assert first is not None
    os.kill(first, signal.SIGSTOP)
    h.poll_until(lambda: h.pid("echo") not in (None, first), "a replacement", timeout=60)
    assert len(h.notes) == 1 and "silent for" in h.notes[0] and "(hung)" in h.notes[0]


def test_a_worker_that_keeps_dying_is_given_up_on(harness: MakeHarness) -> None:
    h = harness(WorkerSpec("crash", crashing_worker), WorkerSpec("echo", echo_worker))
    h.arbiter.start()
    h.poll_until(lambda: h.arbiter.failures, "the arbiter to give up")
    (failure,) = h.arbiter.failures
    assert isinstance(failure, WorkerGaveUp) and failure.name == "crash"
    assert str(failure) == "the crash worker kept dying (2 restarts in a row, last: exit code 70)"
    assert h.arbiter.gave_up("crash") and not h.arbiter.gave_up("echo")
    assert len(h.notes) == 2
