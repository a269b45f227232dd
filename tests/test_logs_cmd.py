"""`flywheel-bootstrap logs RUN_ID [-f] [--json]` and `--follow` on a run (issue 13
item 3): what was shipped and what still waits, in order, readable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from supervisor.local_backend import LocalBackend
from tests.conftest import Env
from tests.test_faults import gate_path, open_gate, shipper_state, wait_until


def test_logs_of_a_finished_run_in_order(env: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    done = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                   extra={"FLYWHEEL_RUN_TOKEN": token})
    assert done.returncode == 0, done.stderr
    shown = env.run("logs", run_id)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    shipped = backend.entries(run_id, dedupe=True)
    assert len(lines) == len(shipped) + 1
    assert "codex exec launched" in lines[0] or "codex exec launched" in shown.stdout
    assert lines[-2].rstrip().endswith("run complete")
    assert lines[-1] == f"-- all {len(shipped)} entries were shipped"
    assert token not in shown.stdout
    as_json = [json.loads(line) for line in env.run("logs", run_id, "--json").stdout.splitlines()]
    assert [e["extra"]["seq"] for e in as_json] == [e["extra"]["seq"] for e in shipped]
    assert all(e["shipped"] for e in as_json)


def test_logs_marks_what_still_waits(env: Env, backend: LocalBackend) -> None:
    backend.set_faults(status=503, paths=["/logs"])
    run_id, token = backend.create_run()
    proc = env.start("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "lines=50,sleep=60"})
    state = env.state(run_id)
    try:
        wait_until(lambda: shipper_state(state).get("next_seq", 0) > 50, 30, "entries spooled")
        shown = env.run("logs", run_id)
        assert "⧗" in shown.stdout
        assert "still wait to be shipped" in shown.stdout.splitlines()[-1]
        as_json = [json.loads(line) for line in env.run("logs", run_id, "--json").stdout.splitlines()]
        assert as_json and not any(e["shipped"] for e in as_json)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


def test_logs_follow_prints_a_live_run_until_it_ends(env: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    proc = env.start("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "gate",
                            "FAKE_CODEX_GATE": str(gate_path(env))})
    state = env.state(run_id)
    wait_until(lambda: (state / "workers.json").exists() and shipper_state(state).get("next_seq", 0) > 3, 30,
               "the run to start")
    follower = subprocess.Popen([sys.executable, "-m", "supervisor", "logs", run_id, "-f"], env=env.vars,
                                stdout=subprocess.PIPE, text=True)
    assert follower.stdout is not None
    first = follower.stdout.readline()
    assert "codex" in first or "bootstrap" in first
    open_gate(env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    rest, _ = follower.communicate(timeout=30)
    assert follower.returncode == 0
    assert "run complete" in rest


def test_run_follow_echoes_codex_events(env: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    done = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url, "--follow",
                   extra={"FLYWHEEL_RUN_TOKEN": token})
    assert done.returncode == 0, done.stderr
    assert "codex turn completed" in done.stderr and "run complete" in done.stderr
    assert token not in done.stderr


def test_run_follow_goes_on_without_its_printer_when_it_cannot_start(env: Env, backend: LocalBackend) -> None:
    """The printer is started after the fetch claimed the run: a failure to
    start it must not leave the run unreported (or its cgroup behind)."""
    run_id, token = backend.create_run()
    done = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url, "--follow",
                   extra={"FLYWHEEL_RUN_TOKEN": token, "FLYWHEEL_FAULT_CRASH_SUPERVISOR": "follow"})
    assert done.returncode == 0, done.stderr
    assert "--follow could not start its log printer (injected fault at 'follow'); the run goes on" in done.stderr
    assert "Traceback" not in done.stderr and "codex turn completed" not in done.stderr
    assert backend.run(run_id)["state"] == "complete"
    assert len(backend.reports(run_id)) == 1


def test_logs_of_an_unknown_run(env: Env) -> None:
    shown = env.run("logs", "no-such-run")
    assert shown.returncode == 2 and "no run no-such-run on this machine" in shown.stderr



def test_logs_of_a_damaged_state_folder_say_so_and_hide_nothing(env: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    done = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                   extra={"FLYWHEEL_RUN_TOKEN": token})
    assert done.returncode == 0, done.stderr
    state = env.state(run_id)
    count = len(backend.entries(run_id, dedupe=True))
    for damage in ('{"next_seq": "x", "delivered_offset": "abc", "outbox_size": -5}', "{junk"):
        (state / "shipper.json").write_text(damage)
        shown = env.run("logs", run_id)
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
        lines = shown.stdout.splitlines()
        assert "shipper.json cannot be read" in lines[0]
        assert len(lines) == count + 2 and f"{count} entries (⧗) still wait" in lines[-1]
    fifo = state / "fifo"
    os.mkfifo(fifo)
    fifo.replace(state / "shipper.json")
    shown = env.run("logs", run_id, timeout=30)
    assert shown.returncode == 0 and "shipper.json cannot be read" in shown.stdout, shown.stderr
    (state / "outbox.jsonl").unlink()
    (state / "outbox.jsonl").mkdir()
    shown = env.run("logs", run_id, timeout=30)
    assert shown.returncode == 1 and "Traceback" not in shown.stderr
    assert "outbox.jsonl is not a regular file: this run's state folder is damaged" in shown.stderr
