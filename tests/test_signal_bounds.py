"""Signals caused for real against a real bootstrap and the local backend: a
closed terminal (SIGHUP) or Ctrl-\\ (SIGQUIT) to bootstrap's whole process
group cancels and reports the run like SIGTERM does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from supervisor.local_backend import LocalBackend
from tests.conftest import Env
from tests.faultkit import alive, codex_calls, finish, kill, shape_pids, wait_until, workers

pytestmark = pytest.mark.timeout(180)


def _default_signals() -> None:
    # As in a terminal: a background job of a non-interactive shell (which may
    # have started this test) inherits SIGINT and SIGQUIT ignored.
    for sig in (signal.SIGHUP, signal.SIGQUIT, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)


def _nohup() -> None:
    _default_signals()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def start_in_own_group(env: Env, backend: LocalBackend, mode: str,
                       nohup: bool = False) -> tuple[str, subprocess.Popen[str]]:
    """A single run started as a terminal starts a job: in a process group of
    its own, which a closed terminal signals whole."""
    run_id, token = backend.create_run(prompt="Work.")
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "--run-id", run_id, "--config", str(env.config()),
         "--server", backend.url],
        env={**env.vars, "FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": mode,
             "FAKE_CODEX_GATE": str(env.tmp / "codex-may-finish"),
             "FAKE_CODEX_PIDFILE": str(env.tmp / "shapes.pids"), "FAKE_CODEX_LOG": str(env.tmp / "codex.jsonl")},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=env.tmp,
        start_new_session=True, preexec_fn=_nohup if nohup else _default_signals,
    )
    return run_id, proc


def end_leftovers(proc: subprocess.Popen[str], pids: list[int]) -> None:
    """A failing test must not leave bootstrap or the run's processes behind."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate()
    for pid in pids:
        if alive(pid):
            kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT])
def test_a_signal_to_the_whole_group_cancels_and_reports_the_run(env: Env, backend: LocalBackend, sig: int) -> None:
    run_id, proc = start_in_own_group(env, backend, "shapes,sleep=60")
    state = env.state(run_id)
    pids: list[int] = []
    try:
        shapes = wait_until(lambda: len(shape_pids(env.tmp / "shapes.pids")) == 3
                            and shape_pids(env.tmp / "shapes.pids"), 30, "codex's commands")
        pids += shapes.values()
        pids.append(wait_until(lambda: codex_calls(env.tmp / "codex.jsonl"), 10, "codex's pid")[0]["pid"])
        wait_until(lambda: {"log-shipper", "artifact-watcher", "control"} <= set(workers(state)), 10, "the workers")
        pids += (p for n, p in workers(state).items() if n != "supervisor")
        os.killpg(proc.pid, sig)
        code, err = finish(proc, timeout=60)
        name = signal.Signals(sig).name
        assert code == 128 + sig, err
        run = backend.run(run_id)
        assert run["state"] == "error" and run["reason"] == f"cancelled ({name})", (run, err)
        assert f"{name} received, stopping codex" in err
        wait_until(lambda: not any(alive(p) for p in pids), 10, "codex, what it started and the workers to end")
        assert not (state / "containment.json").exists()
        assert "Traceback" not in err
    finally:
        end_leftovers(proc, pids)


def test_under_nohup_a_closed_terminal_leaves_the_run_going(env: Env, backend: LocalBackend) -> None:
    run_id, proc = start_in_own_group(env, backend, "lines=2000,gate", nohup=True)
    try:
        state = env.state(run_id)
        wait_until(lambda: backend.entry_count(run_id) > 5, 30, "the first entries")
        os.killpg(proc.pid, signal.SIGHUP)
        wait_until(lambda: backend.entry_count(run_id) > 100, 30, "entries after the SIGHUP")
        assert proc.poll() is None, proc.communicate()[1]
        assert len(workers(state)) == 5, "no worker died of it"
        (env.tmp / "codex-may-finish").touch()
        code, err = finish(proc, timeout=60)
        assert code == 0, err
        assert backend.run(run_id)["state"] == "complete"
    finally:
        end_leftovers(proc, [])


def test_a_refused_report_is_no_complete_run_and_the_pool_reports_it(env: Env, backend: LocalBackend) -> None:
    backend.set_faults(status=401, paths=["/complete"])
    run_id, token = backend.create_run(prompt="Work.")
    single = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url, timeout=90,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "ok"})
    assert single.returncode == 70, single.stderr
    last = single.stderr.strip().splitlines()[-1]
    assert "not reported" in last and ": complete" not in single.stderr, single.stderr
    assert "could not deliver the complete report (HTTP 401)" in single.stderr
    assert backend.run(run_id)["state"] == "claimed"

    pooled, token = backend.create_run(prompt="Work.")
    runs_file = env.tmp / "runs.txt"
    runs_file.write_text(f"{pooled} {token}\n")
    runs_file.chmod(0o600)
    pool = env.run("--runs", str(runs_file), "--config", str(env.config()), "--server", backend.url, timeout=120,
                   extra={"FAKE_CODEX_MODE": "ok"})
    output = pool.stdout + pool.stderr
    assert pool.returncode == 1, output
    assert "1 run: 1 error" in output and "could not deliver the complete report (HTTP 401)" in output, output
    run = backend.run(pooled)
    assert run["state"] == "error" and "could not report the run" in run["reason"], run
