"""`prune [--older-than 7d]` and `completion bash|zsh|fish` (issue 13 item 8)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor.local_backend import LocalBackend
from supervisor.prune import find_prunable
from tests.conftest import Env

DEFAULT_WS_CONFIG = '[flywheel]\nworkspace_instructions = "Work."\n'


def age(folder: Path, seconds: float) -> None:
    """Make every file of the folder look `seconds` old."""
    then = time.time() - seconds
    for root, dirs, files in os.walk(folder):
        for name in [*files, *dirs]:
            os.utime(os.path.join(root, name), (then, then), follow_symlinks=False)
    os.utime(folder, (then, then))


def test_prune_removes_old_finished_runs_and_their_default_workspaces(env: Env, backend: LocalBackend) -> None:
    config = env.config(DEFAULT_WS_CONFIG)
    old_id, old_token = backend.create_run()
    new_id, new_token = backend.create_run()
    for run_id, token in ((old_id, old_token), (new_id, new_token)):
        done = env.run("--run-id", run_id, "--config", str(config), "--server", backend.url,
                       extra={"FLYWHEEL_RUN_TOKEN": token})
        assert done.returncode == 0, done.stderr
    old_ws = env.home / "runs" / old_id
    assert old_ws.is_dir()
    age(env.state(old_id), 8 * 86400)
    dry = env.run("prune", "--dry-run")
    assert f"would remove run {old_id}" in dry.stdout and new_id not in dry.stdout
    assert env.state(old_id).exists()
    done = env.run("prune")
    assert done.returncode == 0, done.stderr
    assert f"removed run {old_id}" in done.stdout and "older than 7d" in done.stdout
    assert not env.state(old_id).exists() and not old_ws.exists()
    assert env.state(new_id).exists() and (env.home / "runs" / new_id).exists()
    done = env.run("prune", "--older-than", "0.001s")
    assert f"removed run {new_id}" in done.stdout


def test_prune_keeps_a_running_run_and_a_user_workspace(env: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    proc = env.start("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "gate",
                            "FAKE_CODEX_GATE": str(env.tmp / "gate")})
    try:
        deadline = time.monotonic() + 30
        while not (env.state(run_id) / "workers.json").exists():
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.1)
        age(env.state(run_id), 30 * 86400)
        assert find_prunable(env.home, 60) == []
    finally:
        (env.tmp / "gate").touch()
        proc.communicate(timeout=60)
    age(env.state(run_id), 30 * 86400)
    assert [p.run_id for p in find_prunable(env.home, 60)] == [run_id]
    done = env.run("prune")
    assert f"removed run {run_id}" in done.stdout
    assert env.workspace(run_id).exists()  # the config placed it: never pruned


def test_prune_refuses_a_bad_duration(env: Env) -> None:
    done = env.run("prune", "--older-than", "soon")
    assert done.returncode == 2 and "'soon' is not a duration" in done.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(env: Env, shell: str) -> None:
    done = env.run("completion", shell)
    assert done.returncode == 0, done.stderr
    assert "_FLYWHEEL_BOOTSTRAP_COMPLETE" in done.stdout


def test_bash_completion_completes_commands(env: Env, tmp_path: Path) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    script = env.run("completion", "bash").stdout
    shim = tmp_path / "flywheel-bootstrap"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m supervisor \"$@\"\n")
    shim.chmod(0o755)
    test = script + '\nCOMP_WORDS=(flywheel-bootstrap do); COMP_CWORD=1; _flywheel_bootstrap_completion ' \
        'flywheel-bootstrap; printf "%s\\n" "${COMPREPLY[@]}"\n'
    done = subprocess.run([bash, "-c", test], env={**env.vars, "PATH": f"{tmp_path}:{env.vars['PATH']}"},
                          capture_output=True, text=True, timeout=60)
    assert "doctor" in done.stdout.split(), done.stdout + done.stderr


def test_a_start_that_meets_prune_removing_its_folder_says_so(tmp_path: Path) -> None:
    # prune holds the run's lock while it removes the folder; a start that
    # opened the lock file meanwhile must not go on in a folder that is gone.
    import shutil
    import threading

    from supervisor.run_lock import hold_run, lock_to_remove
    from workers.common.errors import ConfigError

    state = tmp_path / "state" / "r1"
    state.mkdir(parents=True)
    lock = lock_to_remove(state)
    assert lock is not None
    outcome: list[BaseException | int] = []
    waiting = threading.Event()

    def start() -> None:
        try:
            outcome.append(hold_run(state, "r1", 30, lambda line: waiting.set()))
        except ConfigError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    assert waiting.wait(30), "the start never waited for the lock"
    shutil.rmtree(state)
    os.close(lock)
    thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], ConfigError), outcome
    assert "was removed (by prune?)" in str(outcome[0])
