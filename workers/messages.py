"""Every message between the supervisor and its workers, one small frozen
dataclass each (after CPython's concurrent.futures.process `_CallItem` and
`_ResultItem`).

    supervisor ── Command ──> commands queue ──> worker (its `handle`)
    supervisor <── Event ──── events queue <──── worker (`Mailbox.put`)

Each incarnation of a worker has its own pair of queues (see
`workers.runtime`); a command sent `sticky` is replayed to a replacement.

Adding a message:
1. define a frozen dataclass here, with a docstring saying who sends it, who
   receives it and what the receiver does;
2. add it to `Command` (supervisor -> worker) or `Event` (worker -> supervisor);
3. handle it where it arrives: the receiving worker's `handle` (one `match`
   per worker) or `RunSupervisor._on_event`.
A message that arrives where nobody handles it raises (`unexpected`): it is
never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

# ---------------------------------------------------------------- commands


@dataclass(frozen=True)
class Stop:
    """To any worker: finish what is safe to finish and exit."""


@dataclass(frozen=True)
class Phase:
    """To the heartbeat: what the run is doing now, for the summary line.
    `codex_started` (wall clock) is when Codex started; None keeps the last."""

    text: str
    codex_started: float | None = None


@dataclass(frozen=True)
class PostArtifacts:
    """To the artifact-watcher: post every artifact of the manifest, then
    answer `ArtifactsPosted` with the same `job`."""

    job: str


@dataclass(frozen=True)
class Drain:
    """To the log-shipper: deliver everything spooled so far, then answer
    `Drained` with the same `job`."""

    job: str


@dataclass(frozen=True)
class ControlLive:
    """To the control worker: Codex has started, so the run is live: poll the
    backend for control commands from now on (the first poll at once)."""


@dataclass(frozen=True)
class ControlAck:
    """To the control worker: deliver this ack of a control command
    (docs/control-channel.md), retried like telemetry until the backend answers. Sent
    sticky, so a replacement worker delivers what its predecessor had not."""

    command_id: str
    status: str  # applied | ignored | failed
    detail: str


Command = Stop | Phase | PostArtifacts | Drain | ControlLive | ControlAck

# ------------------------------------------------------------------ events


@dataclass(frozen=True)
class ArtifactsPosted:
    """From the artifact-watcher: `PostArtifacts(job)` is done."""

    job: str
    posted: int
    skipped: int


@dataclass(frozen=True)
class Drained:
    """From the log-shipper: `Drain(job)` is done; `delivered` entries so far;
    `left` entries could not be (the backend refused the run token)."""

    job: str
    delivered: int
    left: bool = False


@dataclass(frozen=True)
class ControlCommand:
    """From the control worker: the backend handed out this command (each id
    forwarded once per worker incarnation); the supervisor applies it at most
    once per run and answers with `ControlAck`."""

    command_id: str
    command: object  # as the backend sent it: normally a str, checked by the decision
    payload: object


@dataclass(frozen=True)
class ControlWarning:
    """From the control worker: something to tell the person once (no control
    channel on the backend, a refused poll or ack); logged as a warning."""

    text: str


@dataclass(frozen=True)
class RunCannotGoOn:
    """From any worker: the run cannot go on (the backend refused the run
    token, the state folder's disk is full). The supervisor stops Codex and
    reports the run `error` with `reason`."""

    reason: str


Event = ArtifactsPosted | Drained | ControlCommand | ControlWarning | RunCannotGoOn


def unexpected(message: object, where: str) -> NoReturn:
    """A message its receiver has no case for: a programming error, raised so
    it shows in the worker's log (and the restart) instead of vanishing."""
    raise TypeError(f"{where} got a message it does not handle: {message!r}")
