"""Bootstrap itself fails after it claimed the run, for real: an injected fault
at each step, a Codex that cannot be launched, a report that cannot be sent, a
SIGTERM while the run is being claimed. Every claimed run still ends with one
report (or exit 70, and the pool reports it); no traceback reaches the user."""

from __future__ import annotations

import os
import signal
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
import requests

from supervisor.local_backend import LocalBackend
from tests.conftest import Env
from tests.faultkit import wait_until
from tests.loopback import serving
from workers import run_processes as rp

FAULT = "FLYWHEEL_FAULT_CRASH_SUPERVISOR"


def run_once(env: Env, backend: LocalBackend, **extra: str) -> tuple[str, Any]:
    run_id, token = backend.create_run(prompt="Work.")
    result = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "ok", **extra})
    return run_id, result


@pytest.mark.parametrize("step", ["containment", "start", "work", "finish"])
def test_a_failure_at_any_step_is_reported_with_a_crash_file(env: Env, backend: LocalBackend, step: str) -> None:
    run_id, result = run_once(env, backend, **{FAULT: step})
    assert result.returncode == 1, result.stderr
    run = backend.run(run_id)
    assert run["state"] == "error"
    assert run["reason"] == f"bootstrap failed: InjectedFault: injected fault at '{step}'"
    crash = (env.state(run_id) / "crash.log").read_text()
    assert "Traceback" in crash and "InjectedFault" in crash
    assert "Traceback" not in result.stderr and "crash.log" in result.stderr
    assert (env.state(run_id) / "crash.log").stat().st_mode & 0o777 == 0o600
    assert len(backend.reports(run_id)) == 1


def test_a_failure_during_the_work_still_delivers_the_log(env: Env, backend: LocalBackend) -> None:
    run_id, result = run_once(env, backend, **{FAULT: "work"})
    assert result.returncode == 1, result.stderr
    messages = [e["message"] for e in backend.entries(run_id)]
    assert any(m.startswith("run failed: bootstrap failed: InjectedFault") for m in messages)


def test_a_codex_that_cannot_be_launched_is_reported(env: Env, backend: LocalBackend) -> None:
    # An environment variable over the kernel's 128 KiB limit: execve fails (E2BIG).
    run_id, token = backend.create_run(prompt="Work.", hf_token="h" * 140_000)
    result = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "ok"})
    assert result.returncode == 1, result.stderr
    run = backend.run(run_id)
    assert run["state"] == "error" and run["reason"].startswith("bootstrap failed: OSError: [Errno 7]")
    assert "h" * 100 not in result.stderr and "Traceback" not in result.stderr
    assert "OSError" in (env.state(run_id) / "crash.log").read_text()


def test_when_even_the_report_fails_exit_70_and_the_pool_reports(env: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run(prompt="Work.")
    single = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "ok", FAULT: "finish,report"})
    assert single.returncode == 70, single.stderr
    assert backend.run(run_id)["state"] != "error" and "Traceback" not in single.stderr

    run_id, token = backend.create_run(prompt="Work.")
    runs_file = env.tmp / "runs.txt"
    runs_file.write_text(f"{run_id} {token}\n")
    os.chmod(runs_file, 0o600)
    pooled = env.run("--runs", str(runs_file), "--config", str(env.config()), "--server", backend.url,
                     extra={"FAKE_CODEX_MODE": "ok", FAULT: "finish,report"})
    assert pooled.returncode == 1, pooled.stdout + pooled.stderr
    run = backend.run(run_id)
    assert run["state"] == "error" and "could not report the run" in run["reason"]
    assert "exit 70" in pooled.stdout + pooled.stderr


def test_sigterm_while_the_run_is_being_claimed_still_reports(env: Env, backend: LocalBackend) -> None:
    """The signal lands while the bootstrap fetch is on its way: the run is
    claimed by then, so it must end with `error` `cancelled (SIGTERM)`."""
    arrived, release = threading.Event(), threading.Event()

    class HoldingProxy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.endswith("/bootstrap"):
                arrived.set()
                release.wait(30)
            self._forward()

        def do_POST(self) -> None:
            self._forward()

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("x-run-token", "content-type")}
            answer = requests.request(self.command, backend.url + self.path, data=body, headers=headers,
                                      timeout=30)
            self.send_response(answer.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        def log_message(self, *args: Any) -> None:
            pass

    run_id, token = backend.create_run(prompt="Work.")
    with serving(HoldingProxy) as url:
        proc = env.start("--run-id", run_id, "--config", str(env.config()), "--server", url,
                         extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "ok"})
        try:
            wait_until(arrived.is_set, 60, "the bootstrap fetch")
            proc.send_signal(signal.SIGTERM)
            release.set()
            _, err = proc.communicate(timeout=60)
        finally:
            release.set()
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 143, err
    run = backend.run(run_id)
    assert run["state"] == "error" and run["reason"] == "cancelled (SIGTERM)"
    assert "Traceback" not in err


def test_a_start_that_fails_before_its_cgroup_is_finished_leaves_none(env: Env, backend: LocalBackend) -> None:
    """The run's cgroup is begun right after the fetch (cli.run_single) and
    finished by the supervisor's start; a start that fails in between removes it."""
    parents = [p for p in (rp._own_v2(), rp._own_memory_v1()) if p is not None and os.access(p, os.W_OK)]
    if not parents:
        pytest.skip("no writable cgroup here")
    run_id, result = run_once(env, backend, **{FAULT: "containment"})
    assert result.returncode == 1, result.stderr
    assert backend.run(run_id)["state"] == "error"
    assert [str(left) for parent in parents for left in parent.glob(f"flywheel-{run_id}-*")] == []
