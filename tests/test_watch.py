"""`--runs DIR --watch` (supervisor/pool/watch.py, journal.py): runs files dropped into a
folder start as GPUs free up, end in done/ or failed/, and a restart never runs a run
twice. The end-to-end tests run the real command with real supervisors, the fake codex
(its `gate` mode holds runs until the test lets them end) and the local backend; GPUs
come from CUDA_VISIBLE_DEVICES. examples/flywheel-bootstrap.service is checked with
`systemd-analyze verify` where systemd is installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.local_backend import LocalBackend
from supervisor.pool import states
from supervisor.pool.journal import Journal, replay
from supervisor.pool.watch import (
    DONE,
    FAILED,
    SETTLE,
    Look,
    already_taken,
    destination,
    free_name,
    open_for_writing,
    ready_files,
)
from tests.pool_host import codex_starts, wait_codex_starts

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "examples" / "flywheel-bootstrap.service"

pytestmark = pytest.mark.timeout(400)


# --------------------------------------------------------------------- decisions


@pytest.mark.parametrize(("listing", "known", "expected"), [
    ({"a.runs": Look(999.0, False)}, set(), ["a.runs"]),
    ({"a.runs": Look(0.0, True)}, set(), []),                       # being written
    ({"a.runs": Look(999.0, None)}, set(), []),                     # writers unknown: not settled yet
    ({"a.runs": Look(1000.0 - SETTLE, None)}, set(), ["a.runs"]),   # ... settled
    ({"a.runs": Look(0.0, False)}, {"a.runs"}, []),                 # read before
    ({".a.runs": Look(0.0, False), "a.txt": Look(0.0, False), "a.runs.tmp": Look(0.0, False)}, set(), []),
    ({"b.runs": Look(0.0, False), "a.runs": Look(0.0, False)}, set(), ["a.runs", "b.runs"]),
])
def test_ready_files(listing: dict[str, Look], known: set[str], expected: list[str]) -> None:
    assert ready_files(listing, known, now=1000.0) == expected


def test_open_for_writing(tmp_path: Path) -> None:
    path = tmp_path / "a.runs"
    with path.open("w") as writer:
        writer.write("r1 t")
        writer.flush()
        assert open_for_writing(path) is True
    assert open_for_writing(path) is False
    assert open_for_writing(tmp_path / "missing.runs") is None


@pytest.mark.parametrize(("ended", "expected"), [
    ({}, None),
    ({"r1": states.COMPLETE}, None),
    ({"r1": states.COMPLETE, "r2": states.COMPLETE}, DONE),
    ({"r1": states.COMPLETE, "r2": states.ERROR}, FAILED),
    ({"r1": states.CANCELLED, "r2": states.COMPLETE}, FAILED),
])
def test_destination(ended: dict[str, str], expected: str | None) -> None:
    assert destination(["r1", "r2"], ended) == expected


def test_replay_and_already_taken(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    journal.taken("a.runs", ["r1", "r2"])
    journal.started("r1")
    journal.ended("r1", "complete")
    journal.taken("b.runs", ["r3"])
    journal.moved("b.runs", DONE)
    journal.close()
    # A crash tears the last line; the next start ends it and goes on.
    with (tmp_path / "j.jsonl").open("ab") as handle:
        handle.write(b'{"ev": "star')
    journal = Journal(tmp_path / "j.jsonl")
    journal.started("r2")
    known = journal.read()
    journal.close()
    assert known.active == {"a.runs": ("r1", "r2")}
    assert known.started == {"r1", "r2"} and known.ended == {"r1": "complete"}
    assert "still being run" in (already_taken(["r9", "r2"], known.taken, known.active) or "")
    assert "an earlier file" in (already_taken(["r3"], known.taken, known.active) or "")
    assert already_taken(["r9"], known.taken, known.active) is None
    assert replay([b"not json", b"[1]", b'{"ev": "moved", "file": "x"}']).active == {}


def test_free_name(tmp_path: Path) -> None:
    assert free_name(tmp_path, "a.runs") == tmp_path / "a.runs"
    (tmp_path / "a.runs").touch()
    (tmp_path / "a.1.runs").touch()
    assert free_name(tmp_path, "a.runs") == tmp_path / "a.2.runs"


# --------------------------------------------------------------------- end to end


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Watcher:
    """The real `flywheel-bootstrap --runs DIR --watch`, its output in a file."""

    def __init__(self, env: Any, backend: LocalBackend, gpus: str) -> None:
        self.env = env
        self.backend = backend
        self.inbox = env.tmp / "inbox"
        self.inbox.mkdir(exist_ok=True)
        self.log = env.tmp / "codex.jsonl"
        self.gate = env.tmp / "gate"
        self.out = env.tmp / "watcher.out"
        self.gpus = gpus
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        variables = {**self.env.vars, "CUDA_VISIBLE_DEVICES": self.gpus, "FAKE_CODEX_LOG": str(self.log),
                     "FAKE_CODEX_MODE": "gate", "FAKE_CODEX_GATE": str(self.gate)}
        with self.out.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor", "--runs", str(self.inbox), "--watch",
                 "--config", str(self.env.config()), "--server", self.backend.url, "--gpus-per-run", "1"],
                env=variables, stdout=out, stderr=subprocess.STDOUT, cwd=self.env.tmp,
            )
        wait_for("the watcher to start watching", lambda: "watching" in self.output() or self.proc.poll() is not None,
                 timeout=60)
        assert self.proc.poll() is None, self.output()

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        return self.out.read_text() if self.out.exists() else ""

    def drop(self, name: str, runs: list[tuple[str, str]]) -> None:
        """Write a runs file beside the folder and move it in (the documented way)."""
        staging = self.env.tmp / f".{name}"
        staging.write_text("".join(f"{rid} {tok}\n" for rid, tok in runs))
        os.chmod(staging, 0o600)
        os.rename(staging, self.inbox / name)

    def execs(self) -> list[str]:
        return [c["env"]["FLYWHEEL_RUN_ID"] for c in codex_starts(self.log)]


@pytest.fixture
def watcher(env: Any, backend: LocalBackend) -> Iterator[Callable[[str], Watcher]]:
    made: list[Watcher] = []

    def make(gpus: str) -> Watcher:
        made.append(Watcher(env, backend, gpus))
        return made[-1]

    yield make
    for one in made:
        if one.proc is not None and one.proc.poll() is None:
            one.proc.kill()
            one.proc.wait()


def test_files_start_as_gpus_free_and_end_in_done_or_failed(
        watcher: Callable[[str], Watcher], backend: LocalBackend) -> None:
    w = watcher("0,1")
    w.start()
    a = [backend.create_run(prompt=f"a{i}") for i in range(2)]
    w.drop("a.runs", a)
    wait_codex_starts(w.log, 2, timeout=120)
    # A file being written in place is not read until it is closed.
    b = [backend.create_run(prompt="b")]
    with (w.inbox / "b.runs").open("w") as partial:
        line = f"{b[0][0]} {b[0][1]}\n"
        partial.write(line[: len(line) // 2])
        partial.flush()
        # A bad file, dropped after: failed/ at once, with the reason beside it.
        (w.env.tmp / ".c").write_text("lonely-run-id\n")
        os.rename(w.env.tmp / ".c", w.inbox / "c.runs")
        wait_for("c.runs in failed/", lambda: (w.inbox / FAILED / "c.runs.error").exists())
        assert "has no token" in (w.inbox / FAILED / "c.runs.error").read_text()
        assert "b.runs" not in w.output()
        partial.write(line[len(line) // 2:])
    wait_for("b.runs taken", lambda: "b.runs: 1 run taken" in w.output())
    # Both GPUs are busy: b's run waits for one.
    assert sorted(w.execs()) == sorted(rid for rid, _ in a)
    w.gate.touch()
    wait_for("a.runs and b.runs in done/",
             lambda: (w.inbox / DONE / "a.runs").exists() and (w.inbox / DONE / "b.runs").exists())
    assert sorted(w.execs()) == sorted(rid for rid, _ in a + b)
    for rid, tok in a + b:
        assert backend.run(rid)["state"] == "complete"
        assert tok not in w.output()
    assert sorted(os.listdir(w.inbox)) == [DONE, FAILED]
    assert w.stop() == 143, w.output()


def test_a_restart_never_runs_a_run_twice(
        watcher: Callable[[str], Watcher], backend: LocalBackend) -> None:
    w = watcher("0")
    w.start()
    runs = [backend.create_run(prompt=f"r{i}") for i in range(3)]
    w.drop("a.runs", runs)
    wait_codex_starts(w.log, 1, timeout=120)
    # systemctl stop/restart: SIGTERM cancels the running run; the others wait in the file.
    assert w.stop() == 143, w.output()
    assert (backend.run(runs[0][0])["state"], backend.run(runs[0][0])["reason"]) == ("error", "cancelled (SIGTERM)")
    assert (w.inbox / "a.runs").exists()

    w.start()
    wait_codex_starts(w.log, 2, timeout=120)
    # A crash (SIGKILL) while the second run runs: its supervisor, orphaned, cancels it.
    w.stop(signal.SIGKILL)
    wait_for("the orphaned run to be reported", lambda: backend.run(runs[1][0])["state"] == "error")

    w.gate.touch()
    w.start()
    wait_for("a.runs in failed/", lambda: (w.inbox / FAILED / "a.runs").exists())
    output = w.output()
    assert f"run {runs[1][0]}: had started before the restart" in output
    assert backend.run(runs[2][0])["state"] == "complete", output
    # Every run ran exactly once, across three starts of the watcher.
    assert w.execs() == [rid for rid, _ in runs], output
    assert w.stop() == 143, output


def test_watch_needs_a_folder(env: Any) -> None:
    result = env.run("--runs", str(env.tmp / "nope"), "--watch", "--config", str(env.config()))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "nope" in result.stderr
    (env.tmp / "runs.txt").write_text("r1 t1\n")
    result = env.run("--runs", str(env.tmp), "--config", str(env.config()))
    assert result.returncode == 2 and "--watch" in result.stderr


# --------------------------------------------------------------------- the systemd unit


def test_service_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    text = UNIT.read_text()
    assert "--watch" in text and "Restart=on-failure" in text and "KillMode=mixed" in text
    # The install paths the README gives, under a root of our own.
    root = tmp_path / "root"
    for folder in ("opt/flywheel/venv/bin", "etc/systemd/system", "var/lib/flywheel", "etc/flywheel"):
        (root / folder).mkdir(parents=True)
    program = root / "opt/flywheel/venv/bin/flywheel-bootstrap"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    # systemd's own units (sysinit.target, …), which every service depends on.
    system_units = Path("/usr/lib/systemd/system")
    if not system_units.is_dir():
        pytest.skip(f"{system_units} is missing: systemd is not installed")
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    unit = root / "etc/systemd/system/flywheel-bootstrap.service"
    unit.write_text(text)
    answer = subprocess.run([analyze, "verify", f"--root={root}", str(unit)],
                            capture_output=True, text=True, timeout=60)
    problems = [line for line in (answer.stdout + answer.stderr).splitlines()
                if "flywheel-bootstrap.service" in line]
    assert answer.returncode == 0 and not problems, answer.stdout + answer.stderr
