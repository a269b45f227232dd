"""`--runs DIR --watch` keeps running whatever one runs file holds or is named
(README: A service that keeps running): a file that cannot be run goes to
failed/ with the reason in NAME.error, while the runs in progress go on; a
failed/ or done/ that is a plain file is said once and the service goes on. The
real command, the fake codex held by its gate, and the local backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor.local_backend import LocalBackend
from supervisor.pool.journal import Journal
from supervisor.pool.watch import DONE, FAILED, shown
from tests.test_watch import Watcher, wait_for, watcher  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(400)

DEEP_JSON = "{" + '"a":{' * 100_000 + "}" * 100_001 + "\n"
DEEP_TOML = "x = " + "[" * 5000 + "]" * 5000 + "\n"
ODD_NAME = b"\xff.runs"


def until(w: Watcher, what: str, check: Callable[[], bool]) -> None:
    """wait_for, failing at once when the watcher has died."""
    wait_for(what, lambda: check() or (w.proc is not None and w.proc.poll() is not None))
    assert w.proc is not None and w.proc.poll() is None, w.output()
    assert check(), what


def put(inbox: Path, name: str | bytes, text: str) -> None:
    """Write a runs file beside the folder and move it in (the documented way)."""
    staging = inbox.parent / ".staging"
    staging.write_text(text)
    os.chmod(staging, 0o600)
    os.rename(os.fsencode(staging), os.path.join(os.fsencode(inbox), os.fsencode(name)))


def test_journal_records_a_name_that_is_not_utf8(tmp_path: Path) -> None:
    name = os.fsdecode(ODD_NAME)
    journal = Journal(tmp_path / "j.jsonl")
    journal.taken(name, ["r1"])
    journal.taken("b.runs", ["r2"])
    journal.moved("b.runs", DONE)
    assert journal.read().active == {name: ("r1",)}
    journal.moved(name, DONE)
    assert journal.read().active == {}
    journal.close()
    assert shown(name) == "\\xff.runs"


def test_files_that_cannot_be_run_go_to_failed_while_a_run_goes_on(
        watcher: Callable[[str], Watcher], backend: LocalBackend) -> None:
    w = watcher("0")
    w.start()
    good = backend.create_run(prompt="good")
    w.drop("good.runs", [good])
    wait_for("the good run's codex", lambda: w.execs() == [good[0]])

    (w.env.tmp / "deep.toml").write_text(DEEP_TOML)
    late = backend.create_run(prompt="odd name")
    put(w.inbox, "deep.runs", DEEP_JSON)
    put(w.inbox, "deeptoml.runs", f"r-toml tok-toml config={w.env.tmp / 'deep.toml'}\n")
    put(w.inbox, "nul.runs", '{"run_id": "r-nul", "token": "tok-nul", "config": "/tmp/a\\u0000b"}\n')
    # A name that is not UTF-8 with a good run in it: taken, journaled, run later.
    put(w.inbox, ODD_NAME, f"{late[0]} {late[1]}\n")

    failed = w.inbox / FAILED
    for name in ("deep.runs", "deeptoml.runs", "nul.runs"):
        until(w, f"{name} in failed/", lambda name=name: (failed / f"{name}.error").exists())
    assert "not valid JSON" in (failed / "deep.runs.error").read_text()
    assert "nested too deeply" in (failed / "deeptoml.runs.error").read_text()
    assert (failed / "nul.runs.error").read_text().strip()
    until(w, "the odd name taken", lambda: "\\xff.runs: 1 run taken" in w.output())
    assert w.proc is not None and w.proc.poll() is None, w.output()
    assert w.execs() == [good[0]]

    w.gate.touch()
    done = os.fsencode(w.inbox / DONE)
    until(w, "both good files in done/", lambda: (w.inbox / DONE / "good.runs").exists()
             and os.path.exists(os.path.join(done, ODD_NAME)))
    assert backend.run(good[0])["state"] == "complete"
    assert backend.run(late[0])["state"] == "complete"
    output = w.output()
    assert "Traceback" not in output, output
    assert w.stop() == 143, output
    # The journal, the odd name included, replays: a restart runs nothing again.
    w.start()
    wait_for("the restarted watcher to settle", lambda: w.output().count("watching") == 2)
    assert w.execs() == [good[0], late[0]]
    assert w.stop() == 143, w.output()


def test_failed_and_done_that_are_plain_files_are_said_once(
        watcher: Callable[[str], Watcher], backend: LocalBackend) -> None:
    w = watcher("0")
    (w.inbox / FAILED).write_text("not a folder\n")
    (w.inbox / DONE).write_text("not a folder\n")
    w.start()
    put(w.inbox, "bad1.runs", "lonely-run-id\n")
    put(w.inbox, "bad2.runs", "another-lonely-run-id\n")
    until(w, "both refusals", lambda: (w.inbox / "bad1.runs.error").exists()
             and (w.inbox / "bad2.runs.error").exists())
    assert "has no token" in (w.inbox / "bad2.runs.error").read_text()
    assert w.output().count(f"{w.inbox / FAILED} is not a folder") == 1, w.output()

    good = backend.create_run(prompt="good")
    w.gate.touch()
    w.drop("good.runs", [good])
    until(w, "the good file to end", lambda: "good.runs: every run ended" in w.output())
    assert backend.run(good[0])["state"] == "complete"
    output = w.output()
    assert f"{w.inbox / DONE} is not a folder" in output and "Traceback" not in output, output
    assert (w.inbox / "good.runs").exists()
    assert w.stop() == 143, output
