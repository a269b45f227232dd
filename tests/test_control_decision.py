"""The control table of docs/control-channel.md, row by row, and the at-most-once rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.control_decision import (
    Ack,
    AckStatus,
    Delivery,
    Mode,
    RunView,
    Step,
    decide_command,
    input_ack,
    on_delivery,
)
from supervisor.control_ledger import ControlLedger, read_mode
from supervisor.outcome import CodexEnd

AUTO, INTER = Mode.AUTONOMOUS, Mode.INTERACTIVE
APPLIED, IGNORED, FAILED = AckStatus.APPLIED, AckStatus.IGNORED, AckStatus.FAILED
TEXT = {"text": "try a smaller learning rate"}


def view(mode: Mode, codex: bool = False, input_running: bool = False, thread: bool = True) -> RunView:
    return RunView(mode, codex_running=codex or input_running, input_running=input_running, thread_id_known=thread)


# (command, payload, run) -> (mode after, step, ack status or None, words in the detail)
ROWS = [
    ("take_over", None, view(AUTO, codex=True), INTER, Step.STOP_CODEX, APPLIED, "interrupted"),
    ("take_over", None, view(AUTO, codex=False), INTER, Step.NOTHING, APPLIED, "not running"),
    ("take_over", None, view(INTER), INTER, Step.NOTHING, APPLIED, "already interactive"),
    ("take_over", None, view(INTER, input_running=True), INTER, Step.NOTHING, APPLIED, "already interactive"),
    ("send_input", TEXT, view(INTER), INTER, Step.RUN_INPUT, None, ""),
    ("send_input", TEXT, view(AUTO, codex=True), AUTO, Step.NOTHING, IGNORED, "autonomous"),
    ("send_input", {"text": "  "}, view(INTER), INTER, Step.NOTHING, IGNORED, "payload.text"),
    ("send_input", {}, view(INTER), INTER, Step.NOTHING, IGNORED, "payload.text"),
    ("send_input", None, view(INTER), INTER, Step.NOTHING, IGNORED, "payload.text"),
    ("send_input", {"text": 7}, view(INTER), INTER, Step.NOTHING, IGNORED, "payload.text"),
    ("send_input", "text", view(INTER), INTER, Step.NOTHING, IGNORED, "payload.text"),
    ("send_input", {"text": "a\0b"}, view(INTER), INTER, Step.NOTHING, FAILED, "NUL"),
    ("send_input", {"text": "x" * (100 * 1024 + 1)}, view(INTER), INTER, Step.NOTHING, FAILED, "at most 102,400"),
    ("send_input", {"text": "é" * (50 * 1024)}, view(INTER), INTER, Step.RUN_INPUT, None, ""),
    ("send_input", TEXT, view(INTER, input_running=True), INTER, Step.NOTHING, FAILED, "still running"),
    ("send_input", TEXT, view(INTER, thread=False), INTER, Step.NOTHING, FAILED, "thread id"),
    ("resume_autonomous", None, view(INTER), AUTO, Step.RESUME_AUTONOMOUS, APPLIED, "resumed"),
    ("resume_autonomous", None, view(INTER, input_running=True), AUTO, Step.RESUME_AUTONOMOUS, APPLIED,
     "input stopped"),
    ("resume_autonomous", None, view(INTER, thread=False), AUTO, Step.END, APPLIED, "ends"),
    ("resume_autonomous", None, view(AUTO, codex=True), AUTO, Step.NOTHING, APPLIED, "already autonomous"),
    ("self_destruct", None, view(AUTO, codex=True), AUTO, Step.NOTHING, IGNORED, "unsupported command 'self_destruct'"),
    ("self_destruct", None, view(INTER), INTER, Step.NOTHING, IGNORED, "unsupported command"),
    (None, None, view(AUTO), AUTO, Step.NOTHING, IGNORED, "unsupported command 'None'"),
]


@pytest.mark.parametrize("command,payload,run,mode,step,status,words", ROWS)
def test_control_table(command: object, payload: object, run: RunView, mode: Mode, step: Step,
                       status: AckStatus | None, words: str) -> None:
    d = decide_command(command, payload, run)
    assert (d.mode, d.step) == (mode, step)
    if status is None:
        assert d.ack is None
    else:
        assert d.ack is not None and d.ack.status is status and words in d.ack.detail


def test_send_input_carries_the_text() -> None:
    assert decide_command("send_input", TEXT, view(INTER)).text == TEXT["text"]


@pytest.mark.parametrize("end,stopped_by,status,words", [
    (CodexEnd(0), None, APPLIED, "exit 0"),
    (CodexEnd(1), None, FAILED, "exit code 1"),
    (CodexEnd(-9), None, FAILED, "SIGKILL"),
    (CodexEnd(-15, timed_out_after=30), None, FAILED, "timed out after 30 s"),
    (CodexEnd(-15, cancelled_by="SIGTERM"), None, FAILED, "cancelled (SIGTERM)"),
    (CodexEnd(-15), "resume_autonomous", FAILED, "stopped by resume_autonomous"),
])
def test_input_ack(end: CodexEnd, stopped_by: str | None, status: AckStatus, words: str) -> None:
    ack = input_ack(end, stopped_by)
    assert ack.status is status and words in ack.detail


@pytest.mark.parametrize("seen,known,delivery", [
    (None, False, Delivery.APPLY),
    (None, True, Delivery.WAIT),
    (Ack(APPLIED, "x"), True, Delivery.REACK),
])
def test_each_command_is_applied_at_most_once(seen: Ack | None, known: bool, delivery: Delivery) -> None:
    assert on_delivery(seen, known) is delivery


def test_ledger_survives_a_restart_and_never_reapplies(tmp_path: Path) -> None:
    ledger = ControlLedger(tmp_path)
    assert read_mode(tmp_path) == "autonomous"
    ledger.begin("c1")
    ledger.finish("c1", Ack(APPLIED, "codex interrupted"))
    ledger.set_mode(INTER)
    ledger.begin("c2")  # bootstrap dies while c2 runs
    assert read_mode(tmp_path) == "interactive"
    again = ControlLedger(tmp_path)
    assert again.delivery("c1") is Delivery.REACK and again.acks["c1"] == Ack(APPLIED, "codex interrupted")
    assert again.delivery("c2") is Delivery.REACK and again.acks["c2"].status is FAILED  # type: ignore[union-attr]
    assert again.delivery("c3") is Delivery.APPLY
    assert read_mode(tmp_path) == "autonomous"  # a restarted run starts autonomous


def test_ledger_torn_file_starts_afresh(tmp_path: Path) -> None:
    (tmp_path / "control.json").write_bytes(b'{"commands": {"c1": ')
    assert ControlLedger(tmp_path).delivery("c1") is Delivery.APPLY
