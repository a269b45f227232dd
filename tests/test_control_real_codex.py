"""A person takes over a run of the REAL Codex CLI (docs/control-channel.md), offline:
the fake model server plays the model, the local backend plays Flywheel. An
input resumes the real thread: the model server sees the same thread id in the
input's request as in the first turn's, with the person's text as the latest
user message."""

from __future__ import annotations

import json
import subprocess

import pytest

from supervisor.local_backend import LocalBackend
from tests.conftest import Env
from tests.fake_model_server import Exec, FakeModelServer, ModelRequest, Say
from tests.faultkit import wait_until
from tests.test_real_codex import (  # noqa: F401  (`real` is a fixture)
    REAL_CODEX,
    SAFETY_TIMEOUT,
    SKIP_REASON,
    WRITE_REPORT_AND_MANIFEST,
    config_for,
    events,
    real,
)

pytestmark = [
    pytest.mark.real_codex,
    pytest.mark.skipif(REAL_CODEX is None, reason=SKIP_REASON),
    pytest.mark.timeout(120),
]

TEXT = "Use a learning rate of 1e-4 from now on."


def thread_of(request: ModelRequest) -> str | None:
    headers = {k.lower(): v for k, v in request.headers.items()}
    return headers.get("thread-id") or (request.body or {}).get("prompt_cache_key")


def last_user_text(request: ModelRequest) -> str:
    users = [i for i in request.input_items if i.get("role") == "user"]
    return json.dumps(users[-1]) if users else ""


def test_take_over_input_and_hand_back_with_the_real_codex(real: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run(prompt="Train the model.")
    script = [
        Exec("sleep 60"),  # the autonomous turn is busy when the person takes over
        Say("Noted: 1e-4 it is."),  # the answer to the person's input
        Exec(WRITE_REPORT_AND_MANIFEST), Say("Done."),  # the autonomous resume
    ]
    with FakeModelServer(script) as model:
        proc = real.start("--run-id", run_id, "--config", str(config_for(real, model)), "--server", backend.url,
                          "--codex-timeout", SAFETY_TIMEOUT,
                          extra={"FLYWHEEL_RUN_TOKEN": token, "FLYWHEEL_TIMING_CONTROL_POLL_INTERVAL": "0.2"})
        try:
            out = real.state(run_id) / "codex.out"
            wait_until(lambda: out.exists() and b'"command_execution"' in out.read_bytes(), 60,
                       "codex running the first command")
            took = backend.wait_ack(run_id, backend.queue_command(run_id, "take_over"), 60)
            assert took["status"] == "applied" and "interrupted" in took["detail"]
            said = backend.wait_ack(run_id, backend.queue_command(run_id, "send_input", {"text": TEXT}), 60)
            assert said["status"] == "applied", said
            assert backend.reports(run_id) == [], "no report while interactive"
            back = backend.wait_ack(run_id, backend.queue_command(run_id, "resume_autonomous"), 60)
            assert back["status"] == "applied"
            _, err = proc.communicate(timeout=90)
        except (AssertionError, TimeoutError, subprocess.TimeoutExpired):
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0, err
    assert backend.run(run_id)["state"] == "complete"
    assert backend.artifacts(run_id)[0]["payload"]["content"] == "the real codex wrote this report"

    threads = {e["thread_id"] for e in events(real, run_id) if e["type"] == "thread.started"}
    assert len(threads) == 1, "the input and the hand-back resumed the first thread"
    requests = model.response_requests()
    assert len(requests) == 4
    assert {thread_of(r) for r in requests} == threads, "every request of the conversation is the same thread"
    assert TEXT in last_user_text(requests[1]), "the person's text reached the model"
    assert "Continue autonomously" in last_user_text(requests[2])
