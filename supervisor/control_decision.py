"""What a control command does to a run: the table of docs/control-channel.md as pure
functions over plain data (mode x command -> step and ack), plus the rule that
applies each command id at most once.

The supervisor carries the steps out; nothing here touches a process or a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from supervisor.outcome import CodexEnd
from supervisor.signals import signal_name

AUTONOMOUS_PROMPT = (
    "Continue autonomously on the active Flywheel task. If all requested work is complete, "
    "finalize artifacts and exit."
)


class Mode(str, Enum):
    AUTONOMOUS = "autonomous"
    INTERACTIVE = "interactive"


class Step(str, Enum):
    NOTHING = "nothing"
    STOP_CODEX = "stop_codex"  # take_over: stop the running Codex, hold the run
    RUN_INPUT = "run_input"  # send_input: resume the thread with the person's text
    RESUME_AUTONOMOUS = "resume_autonomous"  # stop an input, resume with AUTONOMOUS_PROMPT
    END = "end"  # resume_autonomous with no thread to resume: the run ends as it stands


class AckStatus(str, Enum):
    APPLIED = "applied"
    IGNORED = "ignored"
    FAILED = "failed"


@dataclass(frozen=True)
class Ack:
    status: AckStatus
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"status": self.status.value, "detail": self.detail}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Ack:
        return cls(AckStatus(raw["status"]), str(raw.get("detail", "")))


@dataclass(frozen=True)
class RunView:
    """What the decision needs to know about the run when a command arrives."""

    mode: Mode
    codex_running: bool  # any Codex invocation: the autonomous one or an input's
    input_running: bool  # an input's resume (only in interactive mode)
    thread_id_known: bool


@dataclass(frozen=True)
class ControlDecision:
    mode: Mode  # the run's mode once the command is applied
    step: Step
    # None: acknowledged when the step ends (an input is acked by its exit code).
    ack: Ack | None
    text: str = ""  # the person's input, for RUN_INPUT


def _applied(detail: str) -> Ack:
    return Ack(AckStatus.APPLIED, detail)


def _ignored(detail: str) -> Ack:
    return Ack(AckStatus.IGNORED, detail)


def _failed(detail: str) -> Ack:
    return Ack(AckStatus.FAILED, detail)


def input_text(payload: Any) -> str | None:
    """The person's text of a send_input, or None when it is missing or blank."""
    text = payload.get("text") if isinstance(payload, Mapping) else None
    return text if isinstance(text, str) and text.strip() else None


# The text goes to `codex exec resume` as one argument, and Linux refuses an
# argument over 128 KiB (MAX_ARG_STRLEN) or with a NUL in it: such an input
# must fail on its own, not take the run down when Codex cannot be started.
MAX_INPUT_BYTES = 100 * 1024


def input_problem(text: str) -> str | None:
    """Why Codex cannot be given `text`, or None."""
    if "\0" in text:
        return "send_input's payload.text holds a NUL character, which cannot be passed to codex"
    size = len(text.encode("utf-8"))
    if size > MAX_INPUT_BYTES:
        return f"send_input's payload.text is {size:,} bytes; codex takes at most {MAX_INPUT_BYTES:,}"
    return None


def decide_command(command: Any, payload: Any, run: RunView) -> ControlDecision:
    """The row of the table in docs/control-channel.md that applies to `command` now."""
    mode = run.mode
    if command == "take_over":
        if mode is Mode.INTERACTIVE:
            return ControlDecision(mode, Step.NOTHING, _applied("already interactive"))
        if run.codex_running:
            return ControlDecision(Mode.INTERACTIVE, Step.STOP_CODEX,
                                   _applied("codex interrupted; the run is now interactive"))
        return ControlDecision(Mode.INTERACTIVE, Step.NOTHING,
                               _applied("codex was not running; the run is now interactive"))
    if command == "send_input":
        if mode is Mode.AUTONOMOUS:
            return ControlDecision(mode, Step.NOTHING,
                                   _ignored("the run is autonomous: send take_over before send_input"))
        text = input_text(payload)
        if text is None:
            return ControlDecision(mode, Step.NOTHING, _ignored("send_input needs a non-empty payload.text"))
        problem = input_problem(text)
        if problem is not None:
            return ControlDecision(mode, Step.NOTHING, _failed(problem))
        if run.input_running:
            return ControlDecision(mode, Step.NOTHING, _failed("another input is still running"))
        if not run.thread_id_known:
            return ControlDecision(mode, Step.NOTHING,
                                   _failed("no codex thread id is known, so there is no session to resume"))
        return ControlDecision(mode, Step.RUN_INPUT, None, text)
    if command == "resume_autonomous":
        # Already autonomous, Codex is working (or the run is ending) on its own:
        # a second Codex on the same thread would only fight the first.
        if mode is Mode.AUTONOMOUS:
            return ControlDecision(mode, Step.NOTHING, _applied("already autonomous"))
        if not run.thread_id_known:
            return ControlDecision(Mode.AUTONOMOUS, Step.END,
                                   _applied("no codex thread id is known; the run ends as it stands"))
        detail = "input stopped; codex resumed autonomously" if run.input_running else "codex resumed autonomously"
        return ControlDecision(Mode.AUTONOMOUS, Step.RESUME_AUTONOMOUS, _applied(detail))
    name = command if isinstance(command, str) else repr(command)
    return ControlDecision(mode, Step.NOTHING, _ignored(f"unsupported command '{name[:100]}'"))


def input_ack(end: CodexEnd, stopped_by: str | None = None) -> Ack:
    """The ack of a send_input, once its Codex resume has ended."""
    if stopped_by:
        return _failed(f"stopped by {stopped_by}")
    if end.cancelled_by:
        return _failed(f"cancelled ({end.cancelled_by})")
    if end.timed_out_after is not None:
        return _failed(f"codex timed out after {end.timed_out_after:g} s")
    if end.returncode < 0:
        return _failed(f"codex killed by signal {signal_name(-end.returncode)}")
    if end.returncode != 0:
        return _failed(f"codex exit code {end.returncode}")
    return _applied("codex answered (exit 0)")


class Delivery(str, Enum):
    """What to do with a command the backend handed out (again)."""

    APPLY = "apply"  # never seen in this run: carry it out
    WAIT = "wait"  # being carried out: its ack comes when it is done
    REACK = "reack"  # done: send its original ack again


def on_delivery(seen: Ack | None, known: bool) -> Delivery:
    """Each command id is applied at most once per run, however often the
    backend hands it out (a lost ack, a restarted worker or bootstrap)."""
    if not known:
        return Delivery.APPLY
    return Delivery.WAIT if seen is None else Delivery.REACK
