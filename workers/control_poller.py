"""The control worker: polls the backend for a person's commands (take_over,
send_input, resume_autonomous; docs/control-channel.md) and delivers their acks.

Why a fourth worker rather than a job of the heartbeat worker: the two have
opposite rhythms and failure modes. A heartbeat is worth retrying only until
the next one is due and may sit in a 30 s read timeout; a poll must go out
every second (the first within a second of Codex starting) and an ack must
never be given up while the run lives. Sharing one loop would put a command's
latency at the mercy of a slow heartbeat and make an ack outage hold back
heartbeats. Apart, each keeps one kept-alive connection, a SIGKILL of one
never delays the other, and the arbiter restarts them the same way.

The worker decides nothing: it forwards each command id once per incarnation
to the supervisor, which applies it at most once per run (its ledger in the
state folder) and sends back the ack to deliver. Acks are sticky messages, so
a restarted worker delivers the ones its predecessor had not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from workers.common.backend_client import RETRYABLE_STATUS, Answer, Backend
from workers.common.backoff import backoff_delay
from workers.common.timing import Timing
from workers.messages import Command, ControlAck, ControlCommand, ControlLive, ControlWarning, Stop, unexpected
from workers.runtime import Mailbox

POLL_PATH, ACK_PATH = "/control/poll", "/control/ack"
# A poll that takes longer than this is given up and asked again: a hung
# connection must not hold back the next command or an ack.
POLL_READ_TIMEOUT = 5.0


@dataclass(frozen=True)
class ControlConfig:
    server: str
    run_id: str
    token: str = field(repr=False)
    timing: Timing = field(default_factory=Timing)


def parse_command(answer: Answer) -> tuple[str, Any, Any] | None:
    """(command_id, command, payload) from a poll's answer; None for `{}` or
    anything unreadable. Unknown extra keys are ignored."""
    try:
        body = answer.json()
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    command_id = body.get("command_id")
    if not isinstance(command_id, str) or not command_id:
        return None
    return command_id, body.get("command"), body.get("payload")


class Poller:
    """The worker's state between two waits; every method returns quickly
    (each HTTP call is bounded by its timeouts)."""

    def __init__(self, mailbox: Mailbox, cfg: ControlConfig, backend: Backend) -> None:
        self.mailbox = mailbox
        self.cfg = cfg
        self.timing = cfg.timing
        self.backend = backend
        self.live = False  # Codex has started: poll
        self.stop_by: float | None = None  # stopping: deliver the acks left until then
        self.next_poll = 0.0
        self.poll_failures = 0
        self.pending: dict[str, dict[str, Any]] = {}  # acks to deliver, by command id
        self.next_ack = 0.0
        self.ack_failures = 0
        self.delivered: dict[str, dict[str, Any]] = {}  # to answer a repeat the same way
        self.forwarded: set[str] = set()
        self.warned: set[str] = set()

    def warn_once(self, key: str, text: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self.mailbox.put(ControlWarning(text))

    def handle(self, messages: list[Command]) -> None:
        for message in messages:
            match message:
                case Stop():
                    self.stop_by = time.monotonic() + self.timing.flush_timeout
                case ControlLive():
                    if not self.live:
                        self.live, self.next_poll = True, 0.0
                case ControlAck(command_id=command_id, status=status, detail=detail):
                    self.pending[command_id] = {"command_id": command_id, "status": status, "detail": detail}
                    self.next_ack = 0.0
                case _:
                    unexpected(message, "the control worker")

    def poll(self) -> None:
        now = time.monotonic()
        answer = self.backend.get_once(POLL_PATH, POLL_READ_TIMEOUT)
        if answer.status in (404, 405):
            self.warn_once("absent", f"the backend has no control channel (HTTP {answer.status} on "
                           f"{POLL_PATH}); asking again every {self.timing.control_absent_retry:g} s")
            self.next_poll = now + self.timing.control_absent_retry
            return
        if answer.status and answer.status not in RETRYABLE_STATUS and not answer.ok:
            self.warn_once(f"poll {answer.status}", f"the backend refused the control poll (HTTP {answer.status}); "
                           f"asking again every {self.timing.control_absent_retry:g} s")
            self.next_poll = now + self.timing.control_absent_retry
            return
        if not answer.ok:  # down or overloaded: back off, but keep asking
            delay = backoff_delay(self.poll_failures, self.timing.backoff_base, self.timing.backoff_cap)
            self.poll_failures += 1
            self.next_poll = now + max(self.timing.control_poll_interval, delay)
            return
        self.poll_failures = 0
        self.next_poll = now + self.timing.control_poll_interval
        command = parse_command(answer)
        if command is None:
            return
        command_id, name, payload = command
        if command_id in self.delivered and command_id not in self.pending:
            # Acked, yet handed out again (our ack was lost on its way): say it again.
            self.pending[command_id] = self.delivered[command_id]
        elif command_id not in self.forwarded:
            self.forwarded.add(command_id)
            self.mailbox.put(ControlCommand(command_id, name, payload))

    def deliver_acks(self) -> None:
        for command_id, body in list(self.pending.items()):
            answer = self.backend.post_once(ACK_PATH, body)
            if not answer.status or answer.status in RETRYABLE_STATUS:
                delay = backoff_delay(self.ack_failures, self.timing.backoff_base, self.timing.backoff_cap)
                self.ack_failures += 1
                self.next_ack = time.monotonic() + delay
                return  # the backend is struggling: try again after the delay
            self.ack_failures = 0
            if not answer.ok:
                self.warn_once(f"ack {answer.status}", f"the backend refused the ack of control command "
                               f"{command_id} (HTTP {answer.status})")
            self.delivered[command_id] = self.pending.pop(command_id)

    def next_wake(self) -> float:
        wakes = [time.monotonic() + 1.0]  # ticks liveness; also bounds every wait
        if self.pending:
            wakes.append(self.next_ack)
        if self.live and self.stop_by is None:
            wakes.append(self.next_poll)
        if self.stop_by is not None:
            wakes.append(self.stop_by)
        return min(wakes)

    def done(self) -> bool:
        return self.stop_by is not None and (not self.pending or time.monotonic() >= self.stop_by)


def main(mailbox: Mailbox, cfg: ControlConfig) -> None:
    with Backend(cfg.server, cfg.run_id, cfg.token, cfg.timing) as backend:
        poller = Poller(mailbox, cfg, backend)
        poller.handle(mailbox.wait(0))
        while not poller.done():
            if poller.pending and time.monotonic() >= poller.next_ack:
                poller.deliver_acks()
            if poller.live and poller.stop_by is None and time.monotonic() >= poller.next_poll:
                poller.poll()
            poller.handle(mailbox.wait(max(0.0, poller.next_wake() - time.monotonic())))
