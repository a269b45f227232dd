"""What the `--runs` pool shows (issue 13 items 5 and 8): a run is `starting` until
Codex runs, a failed run shows the reason the backend got, warnings once, the
server checked once before any run starts, --json summary, timestamps."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from supervisor.local_backend import LocalBackend
from tests.conftest import Env
from tests.test_doctor import closed_port_url

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")


def runs_file(env: Env, runs: list[tuple[str, str]]) -> Path:
    path = env.tmp / "runs.txt"
    path.write_text("".join(f"{rid} {tok}\n" for rid, tok in runs))
    path.chmod(0o600)
    return path


def test_starting_until_codex_runs_then_the_real_reason(env: Env, backend: LocalBackend) -> None:
    runs = [backend.create_run(), backend.create_run()]
    gate = env.tmp / "gate"
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "--runs", str(runs_file(env, runs)), "--config", str(env.config()),
         "--server", backend.url],
        env={**env.vars, "FAKE_CODEX_MODE": "gate=0.05,exit=1", "FAKE_CODEX_GATE": str(gate)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=env.tmp)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        # Codex keeps running until the gate opens: both runs must be shown running first.
        while sum(line.endswith(": running") for line in lines) < 2:
            line = proc.stdout.readline()
            assert line, f"the pool ended early: {lines}"
            lines.append(STAMP.sub("", line.rstrip("\n")))
    finally:
        gate.touch()
    out, err = proc.communicate(timeout=120)
    lines += [STAMP.sub("", line) for line in out.splitlines()]
    assert proc.returncode == 1, out + err
    for rid, _ in runs:
        mine = [line for line in lines if line.startswith(f"run {rid}: ")]
        assert mine[0] == f"run {rid}: starting", lines
        assert mine[1] == f"run {rid}: running", lines
        assert mine[2].startswith(f"run {rid}: error after ")
        # Codex's own words, as the backend got them; no doubled prefix.
        assert "codex exit code 1" in mine[2] and "something failed" in mine[2], mine[2]
        assert "flywheel-bootstrap:" not in mine[2] and f"run {rid}: run {rid}" not in mine[2]
        assert "something failed" in backend.run(rid)["reason"]


def test_plain_output_lines_carry_timestamps(env: Env, backend: LocalBackend) -> None:
    runs = [backend.create_run()]
    done = env.run("--runs", str(runs_file(env, runs)), "--config", str(env.config()), "--server", backend.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() and all(STAMP.match(line) for line in done.stdout.splitlines()), done.stdout
    assert all(STAMP.match(line) for line in done.stderr.splitlines()), done.stderr


def test_warnings_surfaced_once_without_doubled_prefix(env: Env, backend: LocalBackend) -> None:
    runs = [backend.create_run(), backend.create_run()]
    path = runs_file(env, runs)
    path.chmod(0o644)
    done = env.run("--runs", str(path), "--config", str(env.config()), "--server", backend.url)
    assert done.returncode == 0, done.stdout + done.stderr
    both = done.stdout + done.stderr
    assert "warning: warning:" not in both
    assert both.count("readable by other users") == 1
    assert both.count("sandbox_mode is not set") == 1, both


def test_server_down_is_one_message_and_exit_3_before_any_run(env: Env) -> None:
    url = closed_port_url()
    runs = [("r1", "tok-1"), ("r2", "tok-2"), ("r3", "tok-3")]
    done = env.run("--runs", str(runs_file(env, runs)), "--config", str(env.config()), "--server", url)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "connection refused" in done.stderr and "no run was started" in done.stderr
    assert done.stderr.count("connection refused") == 1
    assert "running" not in done.stdout and not (env.home / "state" / "r1").exists()


def test_json_summary(env: Env, backend: LocalBackend) -> None:
    runs = [backend.create_run(), backend.create_run()]
    done = env.run("--runs", str(runs_file(env, runs)), "--config", str(env.config()), "--server", backend.url,
                   "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["exit_status"] == 0
    assert [r["run_id"] for r in summary["runs"]] == [rid for rid, _ in runs]
    assert all(r["state"] == "complete" and r["entries"] > 0 for r in summary["runs"])
    assert all(tok not in done.stdout for _, tok in runs)


def test_supervisor_lines_lose_the_prefixes_the_view_already_shows() -> None:
    from supervisor.pool.children import without_prefix

    for line, shown in [
        ("2026-11-30T16:15:23Z flywheel-bootstrap: run r1: error: codex exit code 1", "codex exit code 1"),
        ("flywheel-bootstrap: error: the run token is empty", "the run token is empty"),
        ("flywheel-bootstrap: run r2: error: x", "run r2: error: x"),  # another run's line keeps its id
        ("plain text", "plain text"),
    ]:
        assert without_prefix(line, "r1") == shown
