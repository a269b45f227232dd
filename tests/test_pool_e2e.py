"""The real `python -m supervisor --runs` end to end: the mock agent, the fake
codex, real supervisors killed and interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from supervisor.local_backend import LocalBackend
from supervisor.pool.main import run_pool
from supervisor.pool.runs_file import RunSpec
from tests.pool_host import FAKE_NVIDIA_SMI, codex_starts, wait_codex_starts, wait_gone


def test_runs_file_end_to_end_with_the_mock_agent(env: Any, backend: LocalBackend) -> None:
    runs = [backend.create_run(prompt=f"task {i}") for i in range(3)]
    runs_file = env.tmp / "runs.txt"
    runs_file.write_text("".join(f"{rid} {tok}\n" for rid, tok in runs))
    os.chmod(runs_file, 0o600)
    (env.bin / "nvidia-smi").symlink_to(FAKE_NVIDIA_SMI)
    result = env.run(
        "--runs", str(runs_file), "--config", str(env.config()), "--server", backend.url,
        "--gpus-per-run", "2", extra={"BOOTSTRAP_MOCK_CODEX": "1"},
    )
    assert result.returncode == 0, result.stderr + result.stdout
    for rid, tok in runs:
        assert backend.run(rid)["state"] == "complete"
        assert tok not in result.stdout + result.stderr
        # A forked supervisor leaves without tearing its interpreter down: what
        # it printed last (buffered, not a terminal) still reaches its log.
        last = (env.state(rid) / "pool-output.log").read_text().splitlines()[-1]
        assert f"run {rid}: complete" in last
    assert "3 runs: 3 complete" in result.stdout + result.stderr


def test_bad_runs_file_end_to_end(env: Any) -> None:
    result = env.run("--runs", "-", "--config", str(env.config()), stdin="r1\nr2 t2 foo=bar\nr2 t\n")
    assert result.returncode == 2
    assert "<stdin>:1: run 'r1' has no token" in result.stderr
    assert "<stdin>:2: unknown key 'foo'" in result.stderr
    assert "Traceback" not in result.stderr


def test_real_supervisors_with_the_fake_codex(env: Any, backend: LocalBackend) -> None:
    """run_pool with its real children (`python -m supervisor --run-id …`) and the fake codex."""
    runs = [backend.create_run(prompt=f"task {i}") for i in range(3)]
    (env.bin / "nvidia-smi").symlink_to(FAKE_NVIDIA_SMI)
    config = env.config()
    specs = [RunSpec(rid, tok, config, backend.url, None, n) for n, (rid, tok) in enumerate(runs, 1)]
    lines: list[str] = []
    status = run_pool(
        specs, max_parallel=None, gpus_per_run=2, heartbeat_interval=0.5, codex_timeout=None,
        env=env.vars, echo=lines.append, is_tty=False,
    )
    output = "\n".join(lines)
    assert status == 0, output
    for rid, tok in runs:
        assert backend.run(rid)["state"] == "complete", output
        assert tok not in output
    assert "3 runs: 3 complete" in output


def supervisor_pid(run_id: str) -> int:
    """The pid of the real single-run supervisor of run_id, found in /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"supervisor" in argv and b"--run-id" in argv and run_id.encode() in argv:
            return int(entry.name)
    raise AssertionError(f"no supervisor process for {run_id}")


def test_a_killed_supervisors_undelivered_entries_are_named_in_the_summary(env: Any, backend: LocalBackend) -> None:
    # The pool reports the run, after which the backend takes none of its
    # entries: the person must hear that some never arrived, and where they are.
    run_id, token = backend.create_run(prompt="task")
    backend.set_faults(status=503, paths=["/logs"])
    state = env.home / "state" / run_id
    gate = env.tmp / "codex-may-finish"

    def kill_when_spooled() -> None:
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if json.loads((state / "shipper.json").read_text()).get("next_seq", 0) > 5:
                        break
                except (OSError, ValueError):
                    pass
                time.sleep(0.02)
            os.kill(supervisor_pid(run_id), signal.SIGKILL)
        finally:
            backend.clear_faults()
            gate.touch()

    threading.Thread(target=kill_when_spooled, daemon=True).start()
    lines: list[str] = []
    status = run_pool(
        [RunSpec(run_id, token, env.config(), backend.url, None, 1)], max_parallel=None, gpus_per_run=None,
        heartbeat_interval=0.5, codex_timeout=None,
        env={**env.vars, "FAKE_CODEX_MODE": "gate", "FAKE_CODEX_GATE": str(gate)}, echo=lines.append, is_tty=False,
    )
    output = "\n".join(lines)
    assert status == 1, output
    assert backend.run(run_id)["reason"] == "bootstrap supervisor killed by SIGKILL"
    assert "were never delivered (flywheel-bootstrap logs" in output and str(state) in output, output


def test_real_supervisor_sigkilled_is_reported_and_others_complete(env: Any, backend: LocalBackend) -> None:
    runs = [backend.create_run(prompt=f"task {i}") for i in range(3)]
    victim = runs[0][0]
    config = env.config()
    log = env.tmp / "codex.jsonl"
    specs = [RunSpec(rid, tok, config, backend.url, None, n) for n, (rid, tok) in enumerate(runs, 1)]
    killed: list[int] = []

    gate = env.tmp / "codex-may-finish"

    def kill_victim() -> None:
        # Every fake codex keeps printing until the gate opens: the kill lands
        # mid-run however fast the machine is.
        try:
            deadline = time.monotonic() + 30
            while not any(c["env"].get("FLYWHEEL_RUN_ID") == victim for c in codex_starts(log)):
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)
            pid = supervisor_pid(victim)
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)
        finally:
            gate.touch()

    threading.Thread(target=kill_victim, daemon=True).start()
    lines: list[str] = []
    status = run_pool(
        specs, max_parallel=None, gpus_per_run=None, heartbeat_interval=0.5, codex_timeout=None,
        env={**env.vars, "FAKE_CODEX_LOG": str(log), "FAKE_CODEX_MODE": "gate", "FAKE_CODEX_GATE": str(gate)},
        echo=lines.append, is_tty=False,
    )
    output = "\n".join(lines)
    assert killed, output
    assert status == 1, output
    assert backend.run(victim)["state"] == "error"
    assert backend.run(victim)["reason"] == "bootstrap supervisor killed by SIGKILL"
    for rid, _ in runs[1:]:
        assert backend.run(rid)["state"] == "complete", output
    # Nothing of the killed run lives on: not its Codex, not its workers.
    assert wait_gone([c["pid"] for c in codex_starts(log)]) == []


REAL_POOL_DRIVER = r'''
import json, os, sys
from pathlib import Path
from supervisor.pool.main import run_pool
from supervisor.pool.runs_file import RunSpec

options = json.loads(sys.argv[1])
specs = [RunSpec(r[0], r[1], Path(options["config"]), options["server"], None, n)
         for n, r in enumerate(options["runs"], start=1)]
sys.exit(run_pool(
    specs, max_parallel=None, gpus_per_run=options["gpus_per_run"], heartbeat_interval=0.5,
    codex_timeout=None, env=dict(os.environ), echo=lambda line: print(line, flush=True),
    is_tty=False,
))
'''


def test_sigint_to_a_pool_of_real_supervisors(env: Any, backend: LocalBackend) -> None:
    runs = [backend.create_run(prompt=f"task {i}") for i in range(3)]
    (env.bin / "nvidia-smi").symlink_to(FAKE_NVIDIA_SMI)
    log = env.tmp / "codex.jsonl"
    options = {"runs": runs, "config": str(env.config()), "server": backend.url, "gpus_per_run": 1}
    pool = subprocess.Popen(
        [sys.executable, "-c", REAL_POOL_DRIVER, json.dumps(options)],
        env={**env.vars, "FAKE_CODEX_LOG": str(log), "FAKE_CODEX_MODE": "hang"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        started_codex = wait_codex_starts(log, 3)
    except AssertionError:
        pool.kill()
        raise AssertionError(pool.communicate()[0]) from None
    gpus = [c.get("env", {}).get("CUDA_VISIBLE_DEVICES") for c in started_codex]
    pool.send_signal(signal.SIGINT)
    out, _ = pool.communicate(timeout=60)
    assert pool.returncode == 130, out
    for rid, tok in runs:
        assert backend.run(rid)["state"] == "error", out
        assert backend.run(rid)["reason"] == "cancelled (SIGINT)", out
        assert tok not in out
    assert "3 runs: 3 cancelled" in out
    assert wait_gone([c["pid"] for c in started_codex]) == []
    assert sorted(gpus) == ["0", "1", "2"], gpus
