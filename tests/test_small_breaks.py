"""Issue 15's smaller breaks, each caused for real: a manifest path that is no
file name, an interrupt during the final drain, bootstrap's own entries
cleaned and capped, one run-id rule, private workspace and database, and the
admin API's warning beyond loopback."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.local_backend import LocalBackend
from supervisor.local_backend.foreground import is_loopback
from supervisor.workspace import prepare_workspace, validate_run_id
from tests.conftest import Env
from tests.faultkit import wait_until
from workers.artifacts import artifact_files, enrich
from workers.common.errors import ConfigError
from workers.common.redact import Redactor
from workers.log_entries import MESSAGE_MAX_CHARS, TRUNCATED_SUFFIX, bootstrap_record


def test_a_manifest_path_that_is_no_file_name_is_refused_not_raised(tmp_path: Path) -> None:
    artifact = {"artifact_type": "text", "payload": {"path": "\ud800"}}
    result = enrich(artifact, tmp_path, 1024)
    assert result.artifact is None and "not a valid file name" in result.warnings[0]
    assert artifact_files([artifact], tmp_path) == set()


def test_an_interrupt_during_the_final_drain_still_delivers_within_the_flush_bound(
        env: Env, backend: LocalBackend) -> None:
    backend.set_faults(delay_ms=100, paths=["/logs"])  # the spool drains slowly
    run_id, token = backend.create_run(prompt="Work.")
    proc = env.start("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "lines=20",
                            "FLYWHEEL_TIMING_FLUSH_TIMEOUT": "120"})
    state = env.state(run_id)
    wait_until(lambda: b"codex exec exited" in (state / "bootstrap.jsonl").read_bytes()
               if (state / "bootstrap.jsonl").exists() else False, 60, "codex to end")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=150)
    assert proc.returncode == 143, err
    entries = backend.entries(run_id, dedupe=True)
    printed = [line for line in (state / "codex.out").read_bytes().split(b"\n") if line]
    assert len([e for e in entries if e["extra"]["run_event_source"] == "codex"]) == len(printed)
    assert backend.run(run_id)["state"] == "error" and "cancelled (SIGTERM)" in backend.run(run_id)["reason"]


def test_bootstrap_entries_are_cleaned_and_capped_like_codex_entries() -> None:
    record = {"created_at": "2026-01-01T00:00:00.000Z", "level": "warning",
              "message": "\x1b[31mred\x1b[0m " + "x" * 20_000,
              "extra": {"run_event_source": "bootstrap", "run_event_kind": "warning", "files": ["f"] * 100_000}}
    shipped = bootstrap_record(record, Redactor(()))
    assert shipped["message"].startswith("red x") and "\x1b" not in shipped["message"]
    assert len(shipped["message"]) == MESSAGE_MAX_CHARS + len(TRUNCATED_SUFFIX)
    assert len(shipped["extra"]["files"]) < 100_000
    assert shipped["extra"]["run_event_kind"] == "warning"


@pytest.mark.parametrize("run_id", ["r1", "a.b-c_d", "A" * 128])
def test_one_run_id_rule_accepts(tmp_path: Path, run_id: str) -> None:
    validate_run_id(run_id)
    with LocalBackend(tmp_path / "db.sqlite3") as backend:
        assert backend.create_run(prompt="x", run_id=run_id)[0] == run_id


@pytest.mark.parametrize("run_id", ["../x", ".hidden", "a b", "a/b", "A" * 129, "-x"])
def test_one_run_id_rule_refuses_with_the_same_words(tmp_path: Path, run_id: str) -> None:
    with pytest.raises(ConfigError) as cli:
        validate_run_id(run_id)
    with LocalBackend(tmp_path / "db.sqlite3") as backend, pytest.raises(ValueError) as served:
        backend.create_run(prompt="x", run_id=run_id)
    assert str(served.value) == str(cli.value)


def test_a_new_workspace_is_private_an_existing_one_keeps_its_mode(tmp_path: Path) -> None:
    new = tmp_path / "runs" / "r1"
    prepare_workspace(new)
    assert stat.S_IMODE(new.stat().st_mode) == 0o700
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    os.chmod(mine, 0o755)
    prepare_workspace(mine)
    assert stat.S_IMODE(mine.stat().st_mode) == 0o755


def test_the_local_backend_database_is_0600(tmp_path: Path) -> None:
    with LocalBackend(tmp_path / "db.sqlite3") as backend:
        backend.create_run(prompt="x")
    assert stat.S_IMODE((tmp_path / "db.sqlite3").stat().st_mode) == 0o600


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True), ("127.0.0.2", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("example.com", False)])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_serve_beyond_loopback_warns_about_the_admin_api(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "serve", "--host", "0.0.0.0", "--port", "0",
                             "--db", str(tmp_path / "db.sqlite3")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "FLYWHEEL_HOME": str(tmp_path / "home")})
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "warning: the admin API" in first and "no authentication" in first
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_serve_with_an_empty_host_is_refused_not_bound_to_every_interface(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "supervisor", "serve", "--host", "", "--port", "0",
                           "--db", str(tmp_path / "db.sqlite3")], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "FLYWHEEL_HOME": str(tmp_path / "home")})
    assert done.returncode == 2 and "--host: is empty" in done.stderr


def test_the_posted_list_is_appended_to_and_survives_a_torn_line(tmp_path: Path) -> None:
    from workers.artifact_watcher import PostedList

    path = tmp_path / "artifacts.json"
    first = PostedList(path, "job-1")
    for index in range(1000):
        first.add(index)
    assert path.stat().st_size < 10_000, "one short line per artifact, never the whole list again"
    with open(path, "ab") as f:
        f.write(b"10")  # a worker killed mid-append
    again = PostedList(path, "job-1")
    assert again.done == set(range(1000))
    again.add(5000)
    assert PostedList(path, "job-1").done == set(range(1000)) | {5000}
    assert PostedList(path, "job-2").done == set(), "another job starts over"
