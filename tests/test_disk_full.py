"""The state folder's disk fills up mid-run (SPEC section 9), for real: a
2 MiB tmpfs as FLYWHEEL_HOME and a Codex that prints megabytes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.local_backend import LocalBackend
from tests.conftest import Env
from tests.faultkit import alive, assert_all_delivered_once, codex_calls


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.parametrize("log_batch", [False, True])
def test_a_full_state_disk_stops_codex_delivers_the_spool_and_reports_it(
        env: Env, backend: LocalBackend, small_disk: Path, log_batch: bool) -> None:
    run_id, token = backend.create_run(prompt="Work.", log_batch=log_batch)
    calls = env.tmp / "codex-calls.jsonl"  # off the small disk
    result = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url, timeout=170,
                     extra={"FLYWHEEL_HOME": str(small_disk), "FLYWHEEL_RUN_TOKEN": token,
                            "FAKE_CODEX_MODE": "lines=40000,gate", "FAKE_CODEX_GATE": str(env.tmp / "never"),
                            "FAKE_CODEX_LOG": str(calls)})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    run = backend.run(run_id)
    assert run["state"] == "error", run
    assert "disk full" in run["reason"] and str(small_disk) in run["reason"]
    state = small_disk / "state" / run_id
    entries = backend.entries(run_id)
    assert_all_delivered_once(entries, state / "codex.out")
    assert any("disk full" in e["message"] for e in entries if e["level"] == "error")
    assert not alive(codex_calls(calls)[0]["pid"]), "codex was stopped"


def test_on_a_full_disk_commits_go_in_place_and_appends_whole_or_not_at_all(small_disk: Path) -> None:
    import errno
    import os

    from workers.common.spool import ShipperState, append_whole

    ShipperState(codex_offset=1).save(small_disk)
    fd = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with pytest.raises(OSError) as full:
            while True:
                append_whole(fd, b"x" * 100_000)
        assert full.value.errno == errno.ENOSPC
        size = os.fstat(fd).st_size
        assert size % 100_000 == 0, "a write the disk cut short was taken back"
    finally:
        os.close(fd)
    ShipperState(codex_offset=123456789, next_seq=99).save(small_disk)  # a rename would need a new block
    assert ShipperState.load(small_disk) == ShipperState(codex_offset=123456789, next_seq=99)
