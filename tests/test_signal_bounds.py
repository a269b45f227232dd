"""Signals and refusals caused for real against a real bootstrap and the local
backend: a closed terminal (SIGHUP) or Ctrl-\\ (SIGQUIT) to bootstrap's whole
process group cancels and reports the run like SIGTERM does; a refused terminal
report is no complete run; with a backend that accepts and never answers, a
signal ends bootstrap within one flush bound."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from supervisor.local_backend import LocalBackend
from tests.conftest import FAST_TIMING, Env
from tests.faultkit import (
    alive,
    assert_all_delivered_once,
    codex_calls,
    finish,
    kill,
    shape_pids,
    shipper_state,
    wait_until,
    workers,
)

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


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT], ids=["SIGHUP", "SIGQUIT"])
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


# A hung request really hangs: not cut by the read timeout before the signal's bound.
HANGING = {"FLYWHEEL_TIMING_READ_TIMEOUT": "120", "FLYWHEEL_TIMING_FLUSH_TIMEOUT": "3"}
FLUSH, KILL_GRACE = 3.0, float(FAST_TIMING["FLYWHEEL_TIMING_KILL_GRACE"])


def signalled_until_exit(proc: subprocess.Popen[str], signals: list[int]) -> tuple[float, int, str]:
    """Send `signals` (0.2 s apart); seconds from the first to bootstrap's exit, its status, its stderr."""
    began = time.monotonic()
    for n, sig in enumerate(signals):
        if n:
            time.sleep(0.2)
        proc.send_signal(sig)
    code, err = finish(proc, timeout=90)
    return time.monotonic() - began, code, err


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGINT, signal.SIGINT]], ids=["once", "twice"])
def test_a_signal_ends_bootstrap_within_one_flush_bound_when_the_backend_hangs(
        env: Env, backend: LocalBackend, signals: list[int]) -> None:
    run_id, token = backend.create_run(prompt="Work.")
    proc = env.start("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "shapes,sleep=60",
                            "FAKE_CODEX_PIDFILE": str(env.tmp / "shapes.pids"), **HANGING})
    state = env.state(run_id)
    pids: list[int] = []
    try:
        pids += wait_until(lambda: len(shape_pids(env.tmp / "shapes.pids")) == 3
                           and shape_pids(env.tmp / "shapes.pids"), 30, "codex's commands").values()
        wait_until(lambda: {"log-shipper", "artifact-watcher", "control"} <= set(workers(state)), 10, "the workers")
        pids += (p for n, p in workers(state).items() if n != "supervisor")
        backend.set_faults(delay_ms=600_000)  # every request accepted, none answered
        wait_until(lambda: backend.connections_opened > 0 and shipper_state(state).get("next_seq", 0) > 0, 10,
                   "the workers to be talking to the backend")
        took, code, err = signalled_until_exit(proc, signals)
        assert code == 128 + signals[0], err
        # Before, the control worker's join, the drain, the heartbeat's stop and
        # the workers' stop each had a bound of their own: about 13 s here. The
        # bound is halfway, so a slow machine's exit and reaping do not trip it.
        assert took < FLUSH + KILL_GRACE + 3.5, f"{took:.1f} s after the signal:\n{err}"
        assert "the run was not reported" in err and "Traceback" not in err
        wait_until(lambda: not any(alive(p) for p in pids), 10, "the run's processes and the workers to end")
    finally:
        end_leftovers(proc, pids)
    # What the killed workers left spooled goes out with the next start.
    backend.clear_faults()
    again = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url, timeout=90,
                    extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "ok"})
    assert again.returncode == 0, again.stderr
    assert_all_delivered_once(backend.entries(run_id), state / "codex.out")


def test_sigterm_while_the_artifact_post_hangs_still_reports_within_the_flush_bound(
        env: Env, backend: LocalBackend) -> None:
    backend.set_faults(delay_ms=600_000, paths=["/artifacts"])
    run_id, token = backend.create_run(prompt="Work.")
    proc = env.start("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "ok", **HANGING})
    state = env.state(run_id)
    try:
        wait_until(lambda: any(e["message"].startswith("codex exec exited") for e in backend.entries(run_id)), 60,
                   "codex to end")
        took, code, err = signalled_until_exit(proc, [signal.SIGTERM])
    finally:
        end_leftovers(proc, [])
    assert code == 143, err
    # Codex has ended: no kill grace. Before, the wait for the artifacts had
    # the whole flush bound and the watcher's stop 5 s more: about 8 s here
    # (the bound is halfway).
    assert took < FLUSH + 2.5, f"{took:.1f} s after the signal:\n{err}"
    run = backend.run(run_id)
    assert run["state"] == "error" and run["reason"] == "cancelled (SIGTERM)", "the hung post did not starve the report"
    assert not any(alive(p) for p in workers(state).values() if p != proc.pid)
