"""Keeps a run's worker processes alive: spawns them, reaps the dead, replaces
the hung, and gives up on one that keeps dying (after gunicorn's arbiter).

Each incarnation of a worker gets fresh queues: a process SIGKILLed in the
middle of a queue operation can leave that queue's lock held or its pipe holding
half a message, so a queue is never reused across a death. Commands marked
`sticky` are replayed to the new incarnation, which is how a replacement learns
what its predecessor was asked to do.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
from multiprocess.connection import wait as wait_ready  # type: ignore[import-untyped]

from supervisor.signals import describe_exit
from workers.common.files import write_private
from workers.common.timing import Timing
from workers.messages import Command, Event, Stop
from workers.run_processes import RunProcesses
from workers.runtime import Channels, run_worker

# A worker that lived this long before dying is not "dying instantly".
STABLE_AFTER = 5.0
LIVENESS_CHECK_EVERY = 0.5


class Wake(Protocol):
    """Something to wait on besides the workers (the signal pipe)."""

    def fileno(self) -> int: ...

    def drain(self) -> None: ...


@dataclass(frozen=True)
class AfterDeath:
    """What to do about a worker that died: restart it after `delay` seconds,
    or give up on it."""

    quick_deaths: int  # deaths in a row, each soon after its start
    give_up: bool
    delay: float = 0.0


def after_death(quick_deaths: int, lived: float, max_restarts: int) -> AfterDeath:
    """The restart rule. A worker that lived STABLE_AFTER seconds or more starts
    a new count; one that keeps dying soon after its start is restarted with a
    growing delay (the first at once), and given up on after `max_restarts`
    restarts in a row (gunicorn halts on a boot error instead of respawning)."""
    deaths = 0 if lived >= STABLE_AFTER else quick_deaths + 1
    if deaths > max_restarts:
        return AfterDeath(deaths, give_up=True)
    return AfterDeath(deaths, give_up=False, delay=0.0 if deaths <= 1 else min(2.0, 0.05 * 2**deaths))


class WorkerGaveUp(Exception):
    def __init__(self, name: str, restarts: int, last_exit: str) -> None:
        super().__init__(f"the {name} worker kept dying ({restarts} restarts in a row, last: {last_exit})")
        self.name = name


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    target: Callable[..., None]  # target(mailbox, *args), run in the child
    args: tuple[Any, ...] = ()


@dataclass
class _Slot:
    spec: WorkerSpec
    process: Any = None
    channels: Channels | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None
    sticky: list[Command] = field(default_factory=list)
    last_exit: str = ""
    gave_up: bool = False
    deaths: int = 0  # in all, quick or not


class Arbiter:
    def __init__(
        self,
        mp: Any,
        specs: Iterable[WorkerSpec],
        timing: Timing,
        state_dir: Path,
        run_processes: RunProcesses,
        notify: Callable[[str], None],
    ) -> None:
        self.mp = mp
        self.timing = timing
        self.state_dir = state_dir
        self.run_processes = run_processes
        self.notify = notify  # one line about a restart, for the user and the log
        self.slots = {s.name: _Slot(s) for s in specs}
        self._next_liveness_check = 0.0
        # Workers given up on, in order; the supervisor decides what that means.
        self.failures: list[WorkerGaveUp] = []

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self._spawn_all(list(self.slots.values()))

    def add(self, specs: Iterable[WorkerSpec]) -> None:
        """Start more workers, supervised like the first ones."""
        slots = []
        for spec in specs:
            slot = self.slots[spec.name] = _Slot(spec)
            slots.append(slot)
        self._spawn_all(slots)

    def _spawn_all(self, slots: list[_Slot]) -> None:
        # Everything the children inherit is made first, then they are forked
        # one right after the other: after each fork the supervisor's pages
        # are shared again, and every page it writes before the next fork is
        # copied once more (benchmarks/README.md: Many runs on one host).
        made = [(slot, self._make(slot)) for slot in slots]
        for slot, (channels, proc) in made:
            self._launch(slot, channels, proc)
        self._publish_pids()

    def _spawn(self, slot: _Slot) -> None:
        self._spawn_all([slot])

    def _make(self, slot: _Slot) -> tuple[Channels, Any]:
        channels = Channels(
            name=slot.spec.name,
            commands=self.mp.SimpleQueue(),
            events=self.mp.SimpleQueue(),
            liveness=self.mp.Value("d", time.monotonic(), lock=False),
            run_processes=self.run_processes,
            parent_pid=os.getpid(),
            stall_limit=self.timing.stall_limit,
        )
        log_path = self.state_dir / f"worker-{slot.spec.name}.log"
        proc = self.mp.Process(
            target=run_worker,
            args=(slot.spec.target, channels, log_path, *slot.spec.args),
            name=f"flywheel-{slot.spec.name}",
            daemon=True,
        )
        return channels, proc

    def _launch(self, slot: _Slot, channels: Channels, proc: Any) -> None:
        proc.start()
        slot.process, slot.channels = proc, channels
        slot.started_at = time.monotonic()
        slot.restart_at = None
        for message in slot.sticky:
            channels.commands.put(message)

    def _publish_pids(self) -> None:
        """workers.json in the state folder: which pid is which worker, for a
        person debugging a run (and for the fault tests)."""
        pids = {name: s.process.pid for name, s in self.slots.items() if s.process is not None}
        try:
            write_private(self.state_dir / "workers.json", orjson.dumps({"supervisor": os.getpid(), **pids}))
        except OSError:
            pass  # a full disk: only a person's view of the pids is stale

    def send(self, name: str, message: Command, sticky: bool = False) -> None:
        slot = self.slots[name]
        if sticky:
            slot.sticky.append(message)
        if slot.channels is not None and slot.restart_at is None:
            slot.channels.commands.put(message)

    def deaths(self, name: str) -> int:
        """How many times `name` died (and was replaced, or given up on)."""
        return self.slots[name].deaths

    def gave_up(self, name: str) -> bool:
        return self.slots[name].gave_up

    def stop(self, names: Iterable[str] | None = None, timeout: float = 5.0, *,
             until: Callable[[], float | None] = lambda: None, wake: Wake | None = None) -> None:
        """Ask workers to stop, then make sure they have: those still alive
        after `timeout`, or at `until()` if that comes first, are SIGKILLed at
        once (what they had spooled stays on disk for a later start).
        `until()` is asked again whenever `wake` is readable: a signal that
        arrives meanwhile may bring the deadline closer."""
        chosen = [self.slots[n] for n in (names or list(self.slots))]
        for slot in chosen:
            slot.sticky.clear()
            slot.restart_at = None
            if slot.process is not None and slot.process.exitcode is None and slot.channels is not None:
                slot.channels.commands.put(Stop())
        self._await_exit(chosen, time.monotonic() + timeout, until, wake)
        for slot in chosen:
            if slot.process is not None and slot.process.exitcode is None:
                slot.process.kill()
        for slot in chosen:
            if slot.process is not None:
                slot.process.join(1.0)  # reaping a SIGKILLed process: only a process stuck in the kernel waits
            slot.process = None
            slot.channels = None

    @staticmethod
    def _await_exit(slots: list[_Slot], limit: float, until: Callable[[], float | None], wake: Wake | None) -> None:
        """Wait until every one of `slots` exited, or the deadline."""
        while True:
            bound = until()
            deadline = limit if bound is None else min(limit, bound)
            alive = [s.process.sentinel for s in slots if s.process is not None and s.process.exitcode is None]
            left = deadline - time.monotonic()
            if not alive or left <= 0:
                return
            ready = wait_ready([*alive, *([wake] if wake is not None else [])], timeout=left)
            if wake is not None and wake in ready:
                wake.drain()

    # -- supervision -----------------------------------------------------------

    def poll(self, timeout: float, extra: Iterable[Any] = ()) -> list[tuple[str, Event]]:
        """Wait up to `timeout` for worker events, deaths or one of `extra`
        becoming readable; then reap, restart and check liveness. Returns the
        events that arrived as (worker name, message)."""
        now = time.monotonic()
        waits: list[Any] = list(extra)
        wake_at = now + timeout
        for slot in self.slots.values():
            if slot.restart_at is not None:
                wake_at = min(wake_at, slot.restart_at)
            elif slot.process is not None and slot.channels is not None:
                waits += [slot.channels.events._reader, slot.process.sentinel]
        wake_at = min(wake_at, self._next_liveness_check)
        wait_ready(waits, timeout=max(0.0, wake_at - now))
        events = self._collect()
        self._reap()
        if time.monotonic() >= self._next_liveness_check:
            self._check_liveness()
            self._next_liveness_check = time.monotonic() + LIVENESS_CHECK_EVERY
        return events

    def _collect(self) -> list[tuple[str, Event]]:
        events: list[tuple[str, Event]] = []
        for name, slot in self.slots.items():
            channels = slot.channels
            if channels is None or slot.restart_at is not None:
                continue
            reader = channels.events._reader
            try:
                while reader.poll(0):
                    events.append((name, channels.events.get()))
            except (EOFError, OSError, ValueError):
                pass  # half a message from a worker killed mid-put: the queue dies with it
        return events

    def _reap(self) -> None:
        now = time.monotonic()
        for slot in self.slots.values():
            if slot.gave_up:
                continue
            if slot.restart_at is not None:
                if now >= slot.restart_at:
                    self._spawn(slot)
                continue
            if slot.process is None or slot.process.exitcode is None:
                continue
            self._schedule_restart(slot, describe_exit(slot.process.exitcode))

    def _schedule_restart(self, slot: _Slot, why: str) -> None:
        now = time.monotonic()
        slot.last_exit = why
        slot.deaths += 1
        plan = after_death(slot.quick_deaths, now - slot.started_at, self.timing.max_restarts)
        slot.quick_deaths = plan.quick_deaths
        if plan.give_up:
            slot.gave_up = True
            slot.process = slot.channels = None
            self.failures.append(WorkerGaveUp(slot.spec.name, plan.quick_deaths - 1, why))
            return
        delay = plan.delay
        self.notify(f"{slot.spec.name} worker {why}; starting a new one")
        slot.process.join(0)
        slot.process = None
        slot.channels = None
        slot.restart_at = now + delay
        if delay == 0.0:
            self._spawn(slot)

    def _check_liveness(self) -> None:
        now = time.monotonic()
        for slot in self.slots.values():
            if slot.process is None or slot.channels is None or slot.restart_at is not None \
                    or slot.process.exitcode is not None:
                continue
            silent = now - slot.channels.liveness.value
            if silent > self.timing.liveness_timeout:
                slot.process.kill()  # SIGKILL also ends a SIGSTOPped process
                slot.process.join(2.0)
                self._schedule_restart(slot, f"silent for {silent:.1f} s (hung)")
