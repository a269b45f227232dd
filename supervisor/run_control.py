"""The supervisor's side of the control channel (docs/control-channel.md): the commands
the control worker forwarded, the run's mode and its ledger, and what each
command asks of the run.

Pure decisions come from control_decision; this class holds the state they are
made over and carries out the immediate part (stopping Codex, acks). What takes
longer — an input's Codex resume, the autonomous resume — it hands back to the
supervisor's flow as a follow-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.control_decision import (
    Ack,
    Delivery,
    Mode,
    RunView,
    Step,
    decide_command,
    input_ack,
)
from supervisor.control_ledger import ControlLedger
from supervisor.outcome import CodexEnd


@dataclass(frozen=True)
class FollowUp:
    """A step the supervisor's flow carries out after the command was taken."""

    step: Step  # RUN_INPUT, RESUME_AUTONOMOUS or END
    command_id: str
    text: str = ""


class RunControl:
    def __init__(
        self,
        state_dir: Path,
        send_ack: Callable[[str, Ack], None],
        log: Callable[[str, str], None],
    ) -> None:
        self.ledger = ControlLedger(state_dir)
        self.send_ack = send_ack  # to the control worker, which delivers it
        self.log = log  # (level, message): an entry in the run's log
        self.inbox: list[tuple[str, Any, Any]] = []
        self.input_id: str | None = None  # the send_input whose Codex is running
        self.input_stopped_by: str | None = None
        self.follow_ups: list[FollowUp] = []

    @property
    def mode(self) -> Mode:
        return self.ledger.mode

    @property
    def interactive(self) -> bool:
        return self.ledger.mode is Mode.INTERACTIVE

    def receive(self, command_id: Any, name: Any, payload: Any) -> None:
        if isinstance(command_id, str):
            self.inbox.append((command_id, name, payload))

    def take(self, codex_running: bool, thread_id_known: Callable[[], bool],
             stop_codex: Callable[[], None]) -> None:
        """Apply the commands waiting in the inbox. `stop_codex` stops the Codex
        that runs now (SIGTERM, SIGKILL after the grace). A follow-up step ends
        this round: the commands after it wait until it has been carried out."""
        while self.inbox and not self.follow_ups:
            command_id, name, payload = self.inbox.pop(0)
            delivery = self.ledger.delivery(command_id)
            if delivery is Delivery.REACK:
                ack = self.ledger.acks[command_id]
                if ack is not None:
                    self.send_ack(command_id, ack)
                continue
            if delivery is Delivery.WAIT:
                continue  # still being carried out: acked when it is done
            view = RunView(self.mode, codex_running, self.input_id is not None,
                           thread_id_known() if name in ("send_input", "resume_autonomous") else False)
            decision = decide_command(name, payload, view)
            self.ledger.begin(command_id)
            self.ledger.set_mode(decision.mode)
            self.log("info", f"control command {str(name)[:100]} ({command_id})"
                     + (f": {decision.text}" if decision.step is Step.RUN_INPUT else ""))
            if decision.step is Step.STOP_CODEX or (decision.step is Step.RESUME_AUTONOMOUS and self.input_id):
                if decision.step is Step.RESUME_AUTONOMOUS:
                    self.input_stopped_by = "resume_autonomous"
                stop_codex()
            if decision.step in (Step.RUN_INPUT, Step.RESUME_AUTONOMOUS, Step.END):
                self.follow_ups.append(FollowUp(decision.step, command_id, decision.text))
            if decision.ack is not None:
                self.finish(command_id, decision.ack)

    def finish(self, command_id: str, ack: Ack) -> None:
        self.ledger.finish(command_id, ack)
        self.log("info" if ack.status.value == "applied" else "warning",
                 f"control command {command_id} {ack.status.value}: {ack.detail}")
        self.send_ack(command_id, ack)

    def next_follow_up(self) -> FollowUp | None:
        return self.follow_ups.pop(0) if self.follow_ups else None

    def input_started(self, command_id: str) -> None:
        self.input_id, self.input_stopped_by = command_id, None

    def input_ended(self, end: CodexEnd) -> None:
        if self.input_id is not None:
            self.finish(self.input_id, input_ack(end, self.input_stopped_by))
        self.input_id = self.input_stopped_by = None
