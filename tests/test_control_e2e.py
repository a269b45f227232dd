"""A person takes over a run, talks to its agent and hands it back
(docs/control-channel.md), end to end: the real command, the local backend on
loopback, the fake codex on PATH."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from supervisor.local_backend import LocalBackend
from tests.conftest import Env
from tests.faultkit import alive, codex_calls, kill, wait_until, workers

TEXT = "Try a smaller learning rate."


class Run:
    """One bootstrap run driven by a test that plays the person."""

    def __init__(self, env: Env, backend: LocalBackend, mode: str = "gate,resume_gate", **extra: str) -> None:
        self.env, self.backend = env, backend
        self.run_id, token = backend.create_run(prompt="Train the model.")
        self.gate = env.tmp / "codex-may-finish"
        self.log = env.tmp / "codex-calls.jsonl"
        self.extra = {"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": mode, "FAKE_CODEX_GATE": str(self.gate),
                      "FAKE_CODEX_LOG": str(self.log), "FLYWHEEL_TIMING_CONTROL_POLL_INTERVAL": "0.2", **extra}
        self.proc = self.start()

    def start(self) -> subprocess.Popen[str]:
        return self.env.start("--run-id", self.run_id, "--config", str(self.env.config()), "--server",
                              self.backend.url, extra=self.extra)

    @property
    def state(self) -> Path:
        return self.env.state(self.run_id)

    def command(self, name: str, payload: dict[str, Any] | None = None) -> str:
        return self.backend.queue_command(self.run_id, name, payload)

    def ack(self, command_id: str) -> dict[str, Any]:
        return self.backend.wait_ack(self.run_id, command_id, 60)

    def wait_polling(self) -> None:
        """Until the run polls and its Codex has a thread (an input needs one to resume)."""
        wait_until(lambda: self.backend.control(self.run_id)["polls"]["n"] > 0, 60, "the first control poll")
        out = self.state / "codex.out"
        wait_until(lambda: out.exists() and b'"thread.started"' in out.read_bytes(), 60, "codex's thread id")

    def calls(self, subcommand: str) -> list[dict[str, Any]]:
        return [c for c in codex_calls(self.log) if c.get("subcommand") == subcommand]

    def finish(self, timeout: float = 90) -> tuple[int, str]:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"bootstrap did not finish within {timeout} s:\n{err}") from None
        return self.proc.returncode, err


def thread_of(codex_out: Path) -> str:
    return next(json.loads(line)["thread_id"] for line in codex_out.read_text().splitlines()
                if '"thread.started"' in line)


def test_the_whole_conversation(env: Env, backend: LocalBackend) -> None:
    run = Run(env, backend)
    run.wait_polling()
    early = run.ack(run.command("send_input", {"text": "too early"}))
    assert (early["status"], early["acks"]) == ("ignored", 1) and "autonomous" in early["detail"]

    took = run.ack(run.command("take_over"))
    assert took["status"] == "applied" and "codex interrupted" in took["detail"]
    wait_until(lambda: any("interactive" in h["summary"] for h in backend.heartbeats(run.run_id)), 30,
               "a heartbeat saying interactive")
    assert (run.state / "control.json").read_text().count('"interactive"') == 1
    assert len(run.calls("exec")) == 1 and not run.calls("exec resume")

    unknown = run.ack(run.command("self_destruct"))
    assert unknown["status"] == "ignored" and unknown["detail"] == "unsupported command 'self_destruct'"

    said = run.command("send_input", {"text": TEXT})
    # The input's Codex keeps running (resume_gate): the command is handed out
    # again and again meanwhile, and gets no ack until it is done.
    wait_until(lambda: backend.command(run.run_id, said)["handed_out"] >= 3, 60, "repeated polls of the input")
    assert backend.command(run.run_id, said)["acked_at"] is None
    assert backend.reports(run.run_id) == [] and backend.run(run.run_id)["state"] == "claimed"
    run.gate.touch()
    answered = run.ack(said)
    assert answered["status"] == "applied" and answered["acks"] == 1, answered
    inputs = [c for c in run.calls("exec resume") if c["prompt"] == TEXT]
    assert len(inputs) == 1 and inputs[0]["thread_id"] == thread_of(run.state / "codex.out")
    assert backend.reports(run.run_id) == [], "no report while interactive"

    back = run.ack(run.command("resume_autonomous"))
    assert back["status"] == "applied"
    code, err = run.finish()
    assert code == 0, err
    assert backend.run(run.run_id)["state"] == "complete"
    assert backend.artifacts(run.run_id), "the autonomous resume's manifest was posted"
    resumes = run.calls("exec resume")
    assert len(resumes) == 2 and "Continue autonomously" in resumes[1]["prompt"]
    commands = backend.control(run.run_id)["commands"]
    assert [c["acks"] for c in commands] == [1] * 5
    entries = backend.entries(run.run_id)
    assert any(e["message"] == f"control command send_input ({said}): {TEXT}" for e in entries)
    assert any(f"Resumed with: {TEXT}" in str(e["extra"].get("event")) for e in entries), \
        "the input's answer was shipped like any output"
    assert "Traceback" not in err


def taken_over(run: Run) -> None:
    run.wait_polling()
    assert run.ack(run.command("take_over"))["status"] == "applied"


def ledger_ack(run: Run, command_id: str) -> dict[str, Any] | None:
    try:
        return json.loads((run.state / "control.json").read_text())["commands"][command_id]["ack"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return None


def test_an_input_codex_cannot_take_fails_alone_and_the_run_stays_interactive(env: Env,
                                                                             backend: LocalBackend) -> None:
    # A NUL, or text over Linux's limit for one argument, used to make the
    # input's Codex fail to start and take the whole run down, unacknowledged.
    run = Run(env, backend)
    taken_over(run)
    for text, words in (("hello\0world", "NUL"), ("x" * 200_000, "at most")):
        failed = run.ack(run.command("send_input", {"text": text}))
        assert failed["status"] == "failed" and words in failed["detail"], failed
    assert backend.run(run.run_id)["state"] == "claimed" and not run.calls("exec resume")
    run.gate.touch()
    assert run.ack(run.command("resume_autonomous"))["status"] == "applied"
    code, err = run.finish()
    assert code == 0, err
    assert backend.run(run.run_id)["state"] == "complete"


def test_worker_killed_between_applying_and_acking_applies_once(env: Env, backend: LocalBackend) -> None:
    run = Run(env, backend, mode="gate")
    taken_over(run)
    backend.set_faults(status=503, paths=["/control/ack"])  # the ack cannot get through
    said = run.command("send_input", {"text": TEXT})
    wait_until(lambda: ledger_ack(run, said), 60, "the input applied")
    wait_until(lambda: backend.request_counts(run.run_id)["control_ack"] > 1, 30, "the ack tried and refused")
    old = workers(run.state)["control"]
    assert kill(old, signal.SIGKILL)
    wait_until(lambda: workers(run.state).get("control", old) != old, 10, "a new control worker")
    wait_until(lambda: backend.command(run.run_id, said)["handed_out"] >= 2, 30, "the input handed out again")
    backend.clear_faults()
    assert run.ack(said)["status"] == "applied"
    assert [c["prompt"] for c in run.calls("exec resume")] == [TEXT], "applied once"
    assert run.ack(run.command("resume_autonomous"))["status"] == "applied"
    code, err = run.finish()
    assert code == 0, err
    assert backend.run(run.run_id)["state"] == "complete"


def test_bootstrap_killed_before_the_ack_is_restarted_and_never_applies_again(env: Env,
                                                                              backend: LocalBackend) -> None:
    run = Run(env, backend, mode="gate")
    taken_over(run)
    backend.set_faults(status=503, paths=["/control/ack"])
    said = run.command("send_input", {"text": TEXT})
    wait_until(lambda: ledger_ack(run, said), 60, "the input applied")
    run.proc.kill()  # SIGKILL: the supervisor, its workers and Codex are gone
    run.proc.communicate(timeout=30)
    backend.clear_faults()
    run.extra["FAKE_CODEX_MODE"] = "ok"
    run.proc = run.start()
    answered = run.ack(said)
    assert (answered["status"], answered["detail"]) == ("applied", "codex answered (exit 0)")
    code, err = run.finish()
    assert code == 0, err
    assert [c["prompt"] for c in run.calls("exec resume")] == [TEXT], "the restarted bootstrap did not apply it again"
    assert len(run.calls("exec")) == 2


def test_sigterm_while_interactive_cancels_the_run(env: Env, backend: LocalBackend) -> None:
    run = Run(env, backend)
    taken_over(run)
    wait_until(lambda: any("interactive" in h["summary"] for h in backend.heartbeats(run.run_id)), 30,
               "a heartbeat saying interactive")
    run.proc.send_signal(signal.SIGTERM)
    code, err = run.finish()
    assert code == 143, err
    run_row = backend.run(run.run_id)
    assert (run_row["state"], run_row["reason"]) == ("error", "cancelled (SIGTERM)")


def test_a_backend_without_control_channel_is_asked_rarely_with_one_warning(env: Env,
                                                                            backend: LocalBackend) -> None:
    backend.set_faults(status=404, paths=["/control/poll"])
    run = Run(env, backend, mode="gate", FLYWHEEL_TIMING_CONTROL_ABSENT_RETRY="0.3")
    wait_until(lambda: backend.request_counts(run.run_id)["control_poll"] >= 3, 60, "three polls")
    run.gate.touch()
    code, err = run.finish()
    assert code == 0, err
    warnings = [e for e in backend.entries(run.run_id) if "no control channel" in e["message"]]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    assert err.count("no control channel") == 1


def test_take_over_stops_only_codex_and_the_run_keeps_its_other_processes(env: Env,
                                                                          backend: LocalBackend) -> None:
    pidfile = env.tmp / "pids"
    run = Run(env, backend, mode="shapes,gate", FAKE_CODEX_PIDFILE=str(pidfile))
    wait_until(lambda: pidfile.exists() and len(pidfile.read_text().splitlines()) == 3, 60, "codex's commands")
    pids = [int(line.split()[1]) for line in pidfile.read_text().splitlines()]
    taken_over(run)
    wait_until(lambda: any("interactive" in h["summary"] for h in backend.heartbeats(run.run_id)), 30,
               "a heartbeat saying interactive")
    assert all(alive(pid) for pid in pids), "codex's commands outlive a take_over"
    assert run.ack(run.command("resume_autonomous"))["status"] == "applied"
    code, err = run.finish()
    assert code == 0, err
    wait_until(lambda: not any(alive(pid) for pid in pids), 10, "the run's processes gone with the run")


def test_the_runs_pool_shows_a_taken_over_run(env: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run(prompt="Train the model.")
    runs_file = env.tmp / "runs.txt"
    runs_file.write_text(f"{run_id} {token}\n")
    runs_file.chmod(0o600)
    gate = env.tmp / "codex-may-finish"
    pool = env.start("--runs", str(runs_file), "--config", str(env.config()), "--server", backend.url,
                     extra={"FAKE_CODEX_MODE": "gate", "FAKE_CODEX_GATE": str(gate),
                            "FLYWHEEL_TIMING_CONTROL_POLL_INTERVAL": "0.2"})
    lines: list[str] = []
    readers = [threading.Thread(target=lambda f=f: lines.extend(f), daemon=True) for f in (pool.stdout, pool.stderr)]
    for reader in readers:
        reader.start()
    try:
        wait_until(lambda: backend.control(run_id)["polls"]["n"] > 0, 60, "the first control poll")
        assert backend.wait_ack(run_id, backend.queue_command(run_id, "take_over"), 60)["status"] == "applied"
        wanted = f"run {run_id}: running, taken over by a person (interactive)"
        wait_until(lambda: any(wanted in line for line in lines), 60, "the pool saying the run is interactive")
        assert backend.wait_ack(run_id, backend.queue_command(run_id, "resume_autonomous"), 60)["status"] == "applied"
        gate.touch()
        assert pool.wait(90) == 0, "".join(lines)
    finally:
        pool.kill()
        pool.wait()


def test_demo_take_over_shows_the_conversation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.demo import run_demo

    monkeypatch.setenv("FLYWHEEL_TIMING_CONTROL_POLL_INTERVAL", "0.2")
    lines: list[str] = []
    assert run_demo(tmp_path / "demo", runs=1, echo=lines.append, take_over=True) == 0, "\n".join(lines)
    said = "\n".join(lines)
    assert "take_over -> applied: codex interrupted" in said
    assert "send_input 'Please also note which GPU you would train on.' -> applied" in said
    assert "resume_autonomous -> applied" in said and "All runs completed." in said
