"""Every wait is bounded and a signal ends it (SPEC sections 9 and 13), while a
long upload that keeps making progress is never cut: a hanging /complete and
SIGTERM, a git command that hangs, a slow and a stalled uplink."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from supervisor.git_persist import _git
from supervisor.local_backend import LocalBackend
from supervisor.signals import Aborted, Interrupts
from tests.conftest import Env
from tests.faultkit import alive, wait_until
from workers.common.backend_client import Backend
from workers.common.timing import Timing

pytestmark = pytest.mark.timeout(180)


def test_sigterm_while_complete_hangs_ends_bootstrap_within_the_flush_bound(env: Env, backend: LocalBackend) -> None:
    # The report (complete, or error once the signal lands) is accepted and never answered.
    backend.set_faults(delay_ms=300_000, paths=["/complete", "/error"])
    run_id, token = backend.create_run(prompt="Work.")
    proc = env.start("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "ok",
                            "FLYWHEEL_TIMING_READ_TIMEOUT": "120"})  # the read timeout alone would not do
    wait_until(lambda: any(e["message"] == "run complete" for e in backend.entries(run_id)), 60,
               "the last entry before the report")
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)  # flush bound 5 s here; the report would hang 300 s
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("bootstrap kept waiting on the hanging report after SIGTERM") from None
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert "report (HTTP no answer)" in err


def test_a_signal_ends_a_hanging_git_within_the_grace_period(tmp_path: Path) -> None:
    pidfile = tmp_path / "ssh.pid"
    fake_ssh = tmp_path / "ssh"
    fake_ssh.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 300\n")
    fake_ssh.chmod(0o755)
    env = {**os.environ, "GIT_SSH_COMMAND": str(fake_ssh)}
    interrupts = Interrupts().install()
    try:
        def terminate_when_git_hangs() -> None:
            wait_until(pidfile.exists, 30, "git to start its ssh")
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=terminate_when_git_hangs, daemon=True).start()
        with pytest.raises(Aborted), interrupts.bounded(grace=0.5):
            _git(["ls-remote", "ssh://example.invalid/repo.git"], cwd=tmp_path, env=env, timeout=600)
    finally:
        interrupts.restore()
    assert interrupts.name == "SIGTERM"
    ssh_pid = int(pidfile.read_text())
    wait_until(lambda: not alive(ssh_pid), 10, "git's ssh to be killed")


def _backend(backend: LocalBackend, run_id: str, token: str) -> Backend:
    return Backend(backend.url, run_id, token, Timing(connect_timeout=1.0, read_timeout=2.0))


def test_a_slow_uplink_never_cuts_a_big_body_that_keeps_moving(backend: LocalBackend) -> None:
    run_id, token = backend.create_run(prompt="Work.")
    backend.set_faults(body_rate_bps=400_000, paths=["/artifacts"])
    payload = {"artifact_type": "text", "payload": {"content": "x" * (3 * 1024 * 1024)}}
    with _backend(backend, run_id, token) as client:  # about 8 s of sending, timeouts 1 s and 2 s
        answer = client.post_once("/artifacts", payload)
    assert answer.status == 200
    assert len(backend.artifacts(run_id)[0]["payload"]["content"]) == 3 * 1024 * 1024


def test_a_stalled_send_is_cut_and_the_next_try_goes_through(backend: LocalBackend) -> None:
    run_id, token = backend.create_run(prompt="Work.")
    backend.set_faults(body_stall_after_bytes=200_000, body_stall_count=1, paths=["/artifacts"])
    payload = {"artifact_type": "text", "payload": {"content": "y" * (2 * 1024 * 1024)}}
    with _backend(backend, run_id, token) as client:
        assert client.post_once("/artifacts", payload).status == 0, "the stalled send was cut"
        assert client.post_once("/artifacts", payload).status == 200
    assert len(backend.artifacts(run_id)) == 1


def test_a_4_mib_checkpoint_over_a_slow_uplink_is_posted_once(env: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run(prompt="Work.")
    workspace = env.workspace(run_id)
    workspace.mkdir(parents=True)
    (workspace / "model.pt").write_bytes(os.urandom(4 * 1024 * 1024))
    backend.set_faults(body_rate_bps=500_000, paths=["/artifacts"])  # about 11 s for 5.6 MB of JSON
    manifest = json.dumps([{"artifact_type": "checkpoint", "payload": {"path": "model.pt"}}])
    # The upload lasts far longer than the watcher may go without progress:
    # its progress is counted per block sent, so it is never taken for a hang.
    result = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url, timeout=170,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "manifest_json",
                            "FAKE_CODEX_MANIFEST": manifest, "FLYWHEEL_TIMING_STALL_LIMIT": "1"})
    assert result.returncode == 0, result.stderr
    assert backend.run(run_id)["state"] == "complete"
    artifacts = backend.artifacts(run_id)
    assert [a["artifact_type"] for a in artifacts] == ["checkpoint"], "posted once, never re-sent"
    assert backend.request_counts(run_id).get("artifacts") == 1
    assert not any("hung" in e["message"] for e in backend.entries(run_id))


def test_sigterm_while_the_fetch_hangs_ends_bootstrap_within_the_flush_bound(env: Env, backend: LocalBackend) -> None:
    backend.set_faults(delay_ms=300_000, paths=["/bootstrap"])  # accepts the fetch, never answers
    run_id, token = backend.create_run(prompt="Work.")
    proc = env.start("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "ok",
                            "FLYWHEEL_TIMING_READ_TIMEOUT": "120"})  # the read timeout alone would not do
    wait_until(lambda: backend.connections_opened >= 1, 60, "the fetch to be under way")
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)  # flush bound 5 s here; the fetch would hang 300 s
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("bootstrap kept waiting on the hanging fetch after SIGTERM") from None
    assert proc.returncode == 143, err
    assert "Traceback" not in err
