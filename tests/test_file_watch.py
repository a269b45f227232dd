"""inotify exhausted (too many runs on one host): the workers poll instead,
and the run says so once (SPEC section 9)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from watchdog.observers.polling import PollingObserver

from supervisor.local_backend import LocalBackend
from tests.conftest import Env
from tests.faultkit import assert_all_delivered_once, wait_until
from workers.common.wake import WakePipe
from workers.file_watch import FAULT_ENV, FileChanges, follow_files, watch_files, watch_names


@pytest.mark.parametrize("fault", ["EMFILE", "ENOSPC"])
def test_exhausted_inotify_falls_back_to_polling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    monkeypatch.setenv(FAULT_ENV, fault)
    said: list[str] = []
    wake = WakePipe()
    observer = watch_files(tmp_path, {"codex.out"}, wake, said.append)
    try:
        assert isinstance(observer, PollingObserver)
        assert len(said) == 1 and "polling" in said[0]
        assert ("instances" if fault == "EMFILE" else "watches") in said[0]
        (tmp_path / "codex.out").write_text("a line\n")
        wait_until(wake.clear, 10, "the polling observer to see the new file")
    finally:
        observer.stop()


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def test_followed_files_wake_the_loop_and_nothing_else_does(tmp_path: Path) -> None:
    # inotify queues an event within the write itself: no waiting needed.
    _append(tmp_path / "codex.out", b"")
    changes = follow_files(tmp_path, {"codex.out", "bootstrap.jsonl"})
    try:
        assert not changes.changed()
        _append(tmp_path / "outbox.jsonl", b"own output\n")
        (tmp_path / "state.tmp").write_bytes(b"{}")
        (tmp_path / "state.tmp").rename(tmp_path / "shipper.json")
        assert not changes.changed()
        for _ in range(3):
            _append(tmp_path / "codex.out", b"a line\n")
        assert changes.changed()
        assert not changes.changed()
        _append(tmp_path / "bootstrap.jsonl", b"{}\n")  # created after the start
        assert changes.changed()
        _append(tmp_path / "bootstrap.jsonl", b"{}\n")
        _append(tmp_path / "outbox.jsonl", b"own output\n")
        assert changes.changed()
        _append(tmp_path / "outbox.jsonl", b"own output\n")
        assert not changes.changed()
        # Deleted, then there again: followed again.
        (tmp_path / "codex.out").unlink()
        changes.changed()
        _append(tmp_path / "codex.out", b"a line\n")
        assert changes.changed()
        _append(tmp_path / "codex.out", b"a line\n")
        assert changes.changed()
    finally:
        changes.close()


@pytest.mark.parametrize("fault", ["EMFILE", "ENOSPC"])
@pytest.mark.parametrize(("watch", "name"), [(follow_files, "codex.out"), (watch_names, "flywheel_artifacts.json")])
def test_watched_files_are_polled_without_inotify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str,
                                                  watch: Callable[..., FileChanges], name: str) -> None:
    monkeypatch.setenv(FAULT_ENV, fault)
    said: list[str] = []
    changes = watch(tmp_path, {name}, said.append)
    try:
        assert len(said) == 1 and "polling" in said[0]
        _append(tmp_path / name, b"a line\n")
        wait_until(changes.changed, 10, "the polling observer to see the new file")
    finally:
        changes.close()


def test_a_run_without_inotify_delivers_everything_and_warns_once(env: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run(prompt="Work.")
    result = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "lines=300", FAULT_ENV: "EMFILE"})
    assert result.returncode == 0, result.stderr
    assert backend.run(run_id)["state"] == "complete"
    entries = backend.entries(run_id)
    assert_all_delivered_once(entries, env.state(run_id) / "codex.out")
    warnings = [e for e in entries if "watching files by polling" in e["message"]]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning", [e["message"] for e in warnings]
    assert "Traceback" not in result.stderr


def test_watched_names_are_seen_written_replaced_and_deleted(tmp_path: Path) -> None:
    """The artifact-watcher's manifest: written in place or replaced (written
    aside, renamed over); the folder's other files are not reported."""
    manifest = tmp_path / "flywheel_artifacts.json"
    changes = watch_names(tmp_path, {manifest.name})
    try:
        assert not changes.changed()
        (tmp_path / "train.log").write_text("epoch 1\n")
        (tmp_path / "other.tmp").write_text("{}")
        (tmp_path / "other.tmp").rename(tmp_path / "other.json")
        assert not changes.changed()
        manifest.write_text("[")  # created
        assert changes.changed()
        assert not changes.changed()
        with open(manifest, "a") as f:  # written in place
            f.write("]")
        assert changes.changed()
        (tmp_path / "manifest.tmp").write_text("[]")
        (tmp_path / "manifest.tmp").rename(manifest)  # replaced
        assert changes.changed()
        manifest.unlink()
        assert changes.changed()
        manifest.write_text("[]")  # there again
        assert changes.changed()
    finally:
        changes.close()
