"""The faults of docs/design.md, each caused for real: workers SIGKILLed and
SIGSTOPped, the backend down, the supervisor killed, bootstrap interrupted."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from supervisor.local_backend import LocalBackend
from tests.conftest import Env
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
from workers.common.names import CREDENTIALS_NAME

WORKERS = ["log-shipper", "heartbeat", "artifact-watcher"]


def launch(env: Env, backend: LocalBackend, mode: str, log_batch: bool = False,
           **extra: str) -> tuple[str, subprocess.Popen[str]]:
    run_id, token = backend.create_run(prompt="Work.", log_batch=log_batch)
    proc = env.start("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": mode,
                            "FAKE_CODEX_GATE": str(gate_path(env)), **extra})
    return run_id, proc


def gate_path(env: Env) -> Path:
    return env.tmp / "codex-may-finish"


def open_gate(env: Env) -> None:
    """Let a `gate` fake codex finish: until then it keeps printing, so the
    fault a test causes always lands mid-run, however fast the machine is."""
    gate_path(env).touch()


@pytest.mark.parametrize("name", WORKERS)
def test_sigkilled_worker_is_replaced_and_nothing_is_lost(env: Env, backend: LocalBackend, name: str) -> None:
    run_id, proc = launch(env, backend, "lines=1500,gate")
    state = env.state(run_id)
    wait_until(lambda: backend.entry_count(run_id) > 20, 30, "the first entries")
    old = wait_until(lambda: workers(state).get(name), 10, f"the {name} pid")
    assert kill(old, signal.SIGKILL)
    wait_until(lambda: workers(state).get(name, old) != old, 5, f"a new {name} worker")
    open_gate(env)
    code, err = finish(proc)
    assert code == 0, err
    assert backend.run(run_id)["state"] == "complete"
    assert_all_delivered_once(backend.entries(run_id), state / "codex.out")
    assert any(f"{name} worker killed by SIGKILL" in e["message"] for e in backend.entries(run_id))
    assert "Traceback" not in err


@pytest.mark.parametrize("log_batch", [False, True])
def test_soak_twenty_random_worker_kills_during_10000_lines(env: Env, backend: LocalBackend, log_batch: bool) -> None:
    # 10,000 lines at once, then more at a steady pace until the kills are done.
    # With log_batch the log-shipper is also killed while it encodes a step
    # during a batch's post.
    run_id, proc = launch(env, backend, "lines=10000,gate=0.002", log_batch, FLYWHEEL_TIMING_MAX_RESTARTS="100")
    state = env.state(run_id)
    wait_until(lambda: workers(state), 20, "the workers")
    rng = random.Random(20261129)
    kills = 0
    for _ in range(400):
        if kills >= 20 or proc.poll() is not None:
            break
        pids = workers(state)
        name = rng.choice(WORKERS)
        if pids.get(name) and kill(pids[name], signal.SIGKILL):
            kills += 1
            # the next kill waits for the replacement, so each kill hits a live worker
            # (unless that kill landed as the run was stopping its workers for good)
            wait_until(lambda: proc.poll() is not None or workers(state).get(name) not in (None, pids[name]),  # noqa: B023 - called here
                       10, f"a new {name}")
        try:
            proc.wait(rng.uniform(0.05, 0.25))
        except subprocess.TimeoutExpired:
            pass
    assert kills == 20, f"only {kills} kills landed before the run ended"
    open_gate(env)
    code, err = finish(proc)
    assert code == 0, err
    assert_all_delivered_once(backend.entries(run_id), state / "codex.out")
    codex = {e["extra"]["seq"] for e in backend.entries(run_id) if e["extra"]["run_event_source"] == "codex"}
    assert len(codex) >= 10000


def test_sigstopped_worker_is_detected_and_replaced(env: Env, backend: LocalBackend) -> None:
    run_id, proc = launch(env, backend, "lines=1000,gate")
    state = env.state(run_id)
    wait_until(lambda: backend.entry_count(run_id) > 10, 30, "the first entries")
    old = wait_until(lambda: workers(state).get("log-shipper"), 10, "the shipper pid")
    assert kill(old, signal.SIGSTOP)
    wait_until(lambda: workers(state).get("log-shipper", old) != old, 15, "the hung shipper replaced")
    wait_until(lambda: not alive(old), 5, "the hung shipper killed")
    open_gate(env)
    code, err = finish(proc)
    assert code == 0, err
    assert_all_delivered_once(backend.entries(run_id), state / "codex.out")
    assert any("hung" in e["message"] for e in backend.entries(run_id))


def test_worker_that_keeps_dying_fails_the_run_with_its_name(env: Env, backend: LocalBackend) -> None:
    run_id, proc = launch(env, backend, "sleep=30", FLYWHEEL_FAULT_CRASH_WORKER="heartbeat",
                          FLYWHEEL_TIMING_MAX_RESTARTS="3")
    code, err = finish(proc, timeout=60)
    assert code == 1
    run = backend.run(run_id)
    assert run["state"] == "error" and "heartbeat worker kept dying" in run["reason"]
    assert "heartbeat worker kept dying" in err and "Traceback" not in err


def test_backend_503_for_a_while_then_everything_arrives_in_order(env: Env, backend: LocalBackend) -> None:
    run_id, proc = launch(env, backend, "lines=1500,gate")
    state = env.state(run_id)
    wait_until(lambda: backend.entry_count(run_id) > 20, 30, "the first entries")
    backend.set_faults(status=503, status_for_s=4)
    before = len(backend.heartbeats(run_id))
    # The outage ends while Codex still prints: heartbeats come back mid-run.
    wait_until(lambda: len(backend.heartbeats(run_id)) > before, 60, "heartbeats after the outage")
    open_gate(env)
    code, err = finish(proc)
    assert code == 0, err
    assert backend.run(run_id)["state"] == "complete"
    entries = backend.entries(run_id)
    assert_all_delivered_once(entries, state / "codex.out")
    received = [e["extra"]["seq"] for e in backend.entries(run_id, dedupe=True)]
    assert received == sorted(received), "delivered in seq order"


def test_backend_refusing_connections_then_back_on_same_port(env: Env, backend: LocalBackend) -> None:
    run_id, proc = launch(env, backend, "lines=1500,gate")
    state = env.state(run_id)
    wait_until(lambda: backend.entry_count(run_id) > 20, 30, "the first entries")
    backend.stop()
    # Codex keeps going while the backend is away: its output piles up in the spool.
    wait_until(lambda: shipper_state(state).get("next_seq", 0) - shipper_state(state).get("delivered", 0) > 300,
               30, "a backlog in the spool")
    backend.start()
    open_gate(env)
    code, err = finish(proc)
    assert code == 0, err
    assert backend.run(run_id)["state"] == "complete"
    assert_all_delivered_once(backend.entries(run_id), state / "codex.out")


ENGINES = [pytest.param({}, id="cgroup"), pytest.param({"FLYWHEEL_CONTAINMENT": "marker"}, id="marker")]


def launch_shapes(env: Env, backend: LocalBackend, mode: str,
                  **extra: str) -> tuple[str, subprocess.Popen[str], list[int]]:
    """A run whose Codex left the three process shapes of real commands running
    (a `nohup … &` job, a setsid daemon, the foreground command); returns their
    pids and Codex's."""
    pidfile = env.tmp / "shapes.pids"
    log = env.tmp / "codex.jsonl"
    run_id, proc = launch(env, backend, f"shapes,{mode}", FAKE_CODEX_PIDFILE=str(pidfile),
                          FAKE_CODEX_LOG=str(log), **extra)
    shapes = wait_until(lambda: len(shape_pids(pidfile)) == 3 and shape_pids(pidfile), 30, "codex's commands")
    codex_pid = wait_until(lambda: codex_calls(log) and codex_calls(log)[0]["pid"], 10, "codex's pid")
    return run_id, proc, [codex_pid, *shapes.values()]


@pytest.mark.parametrize("engine", ENGINES)
def test_supervisor_sigkill_leaves_no_process_behind(env: Env, backend: LocalBackend, engine: dict) -> None:
    run_id, proc, pids = launch_shapes(env, backend, "sleep=60", **engine)
    state = env.state(run_id)
    pids += [p for n, p in wait_until(lambda: workers(state), 5, "workers").items() if n != "supervisor"]
    # A push of this start will never come: the token for it must not stay on disk.
    (state / CREDENTIALS_NAME).write_text("https://x-access-token:ghp_stand-in@example.com\n")
    proc.kill()
    proc.wait()
    wait_until(lambda: not any(alive(p) for p in pids), 5, "codex, every process it started and the workers to die")
    assert not (state / CREDENTIALS_NAME).exists()


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupt_cancels_codex_and_reports_error(env: Env, backend: LocalBackend, sig: int, code: int) -> None:
    run_id, proc, pids = launch_shapes(env, backend, "sleep=60")
    proc.send_signal(sig)
    exit_code, err = finish(proc, timeout=30)
    assert exit_code == code, err
    run = backend.run(run_id)
    assert run["state"] == "error" and run["reason"] == f"cancelled ({signal.Signals(sig).name})"
    assert not any(alive(p) for p in pids)
    assert "Traceback" not in err


@pytest.mark.parametrize("engine", ENGINES)
def test_normal_end_leaves_no_setsid_daemon(env: Env, backend: LocalBackend, engine: dict) -> None:
    run_id, proc, pids = launch_shapes(env, backend, "gate", **engine)
    if not engine:  # the heartbeat says what the run's processes used so far
        wait_until(lambda: any("CPU " in h["summary"] for h in backend.heartbeats(run_id)), 20, "usage in a heartbeat")
    open_gate(env)
    code, err = finish(proc)
    assert code == 0, err
    run = backend.run(run_id)
    assert run["state"] == "complete"
    # The terminal summary says what they used; honestly "unavailable" where unknown.
    assert "its processes used CPU " in run["summary"] if not engine else \
        "its processes used CPU time unavailable, peak memory unavailable" in run["summary"]
    assert not any(alive(p) for p in pids), "the daemon a command started ends with the run"
    assert not (env.state(run_id) / "containment.json").exists()
    said = [e["message"] for e in backend.entries(run_id) if e["message"].startswith("containment:")]
    assert len(said) == 1 and ("cgroup v2" if not engine else "environment marker") in said[0]
    assert err.count("containment:") == 1


def test_codex_timeout_leaves_no_process(env: Env, backend: LocalBackend) -> None:
    # Long enough for the fake to start its commands on a busy machine first.
    run_id, proc, pids = launch_shapes(env, backend, "sleep=60", FLYWHEEL_CODEX_TIMEOUT="8")
    code, err = finish(proc, timeout=40)
    assert code == 1, err
    assert backend.run(run_id)["reason"].startswith("codex timed out after 8")
    assert not any(alive(p) for p in pids)


def test_next_start_sweeps_what_a_bootstrap_killed_whole_left(env: Env, backend: LocalBackend) -> None:
    """Bootstrap, its workers and Codex SIGKILLed at once (no one left to clean
    up): the next bootstrap with the same state folder ends the rest."""
    run_id, proc, pids = launch_shapes(env, backend, "sleep=60")
    state = env.state(run_id)
    helpers = [p for n, p in wait_until(lambda: workers(state), 5, "workers").items() if n != "supervisor"]
    # Frozen first, so that it neither replaces its workers nor ends Codex's commands.
    (state / CREDENTIALS_NAME).write_text("https://x-access-token:ghp_stand-in@example.com\n")
    kill(proc.pid, signal.SIGSTOP)
    for pid in (*helpers, pids[0], proc.pid):
        kill(pid, signal.SIGKILL)
    proc.wait()
    team = [proc.pid, *helpers, pids[0]]
    wait_until(lambda: not any(alive(p) for p in team), 5, "the bootstrap's own processes gone")
    assert all(alive(p) for p in pids[1:]), "nobody was left to end the commands"
    other, token = backend.create_run(prompt="Work.")
    again = env.run("--run-id", other, "--config", str(env.config()), "--server", backend.url,
                    extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "ok"})
    assert again.returncode == 0, again.stderr
    assert f"left running for run {run_id}" in again.stderr
    assert not any(alive(p) for p in pids)
    assert not (state / "containment.json").exists()
    assert not (state / CREDENTIALS_NAME).exists(), "the killed start's git credentials are dropped too"


def test_prune_ends_what_a_bootstrap_killed_whole_left_before_removing_its_record(
        env: Env, backend: LocalBackend) -> None:
    # prune used to remove the containment record of such a run, and with it
    # the only way any later start could find and end its processes.
    run_id, proc, pids = launch_shapes(env, backend, "sleep=60")
    state = env.state(run_id)
    helpers = [p for n, p in wait_until(lambda: workers(state), 5, "workers").items() if n != "supervisor"]
    kill(proc.pid, signal.SIGSTOP)
    for pid in (*helpers, pids[0], proc.pid):
        kill(pid, signal.SIGKILL)
    proc.wait()
    wait_until(lambda: not any(alive(p) for p in [proc.pid, *helpers, pids[0]]), 5, "the bootstrap's own processes")
    assert all(alive(p) for p in pids[1:])
    past = time.time() - 3600
    for path in [state, *state.rglob("*")]:
        os.utime(path, (past, past), follow_symlinks=False)
    looked = env.run("prune", "--older-than", "1m", "--dry-run")
    assert looked.returncode == 0, looked.stderr
    assert f"would end the processes its killed bootstrap left running, then remove run {run_id}" in looked.stdout
    assert all(alive(p) for p in pids[1:]) and (state / "containment.json").exists()
    pruned = env.run("prune", "--older-than", "1m")
    assert pruned.returncode == 0, pruned.stderr
    assert f"left running for run {run_id}" in pruned.stderr
    assert not any(alive(p) for p in pids)
    assert f"removed run {run_id}" in pruned.stdout and not state.exists()


def test_restart_after_crash_delivers_the_spool_first(env: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run(prompt="Work.")
    config = str(env.config())
    backend.set_faults(status=503, paths=["/logs"])
    proc = env.start("--run-id", run_id, "--config", config, "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "lines=500,sleep=60"})
    state = env.state(run_id)
    wait_until(lambda: shipper_state(state).get("next_seq", 0) > 500, 30, "500 entries spooled")
    proc.kill()
    proc.wait()
    wait_until(lambda: not any(alive(p) for p in workers(state).values()), 5, "the old processes gone")
    assert backend.entry_count(run_id) == 0
    backend.clear_faults()
    again = env.run("--run-id", run_id, "--config", config, "--server", backend.url,
                    extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "ok"})
    assert again.returncode == 0, again.stderr
    entries = backend.entries(run_id)
    assert_all_delivered_once(entries, state / "codex.out")
    first_launch = [e["extra"]["seq"] for e in entries if e["message"] == "codex exec launched"]
    assert len(first_launch) == 2 and entries[0]["extra"]["seq"] == 1


def test_interrupt_while_backend_is_down_ends_within_the_flush_bound(env: Env, backend: LocalBackend) -> None:
    backend.set_faults(status=503, paths=["/logs", "/error", "/complete"])
    run_id, proc = launch(env, backend, "ok")
    state = env.state(run_id)
    # Codex is done and its entries are spooled, but the backend takes none of them.
    wait_until(lambda: b"turn.completed" in (state / "codex.out").read_bytes()
               if (state / "codex.out").exists() else False, 30, "codex to finish")
    wait_until(lambda: shipper_state(state).get("next_seq", 0) > 10, 10, "entries spooled")
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc, timeout=30)  # FLYWHEEL_TIMING_FLUSH_TIMEOUT is 5 s in tests
    assert code == 143, err
    assert "stay spooled" in err and "could not deliver the error report" in err
    assert backend.entry_count(run_id) == 0
