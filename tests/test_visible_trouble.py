"""Trouble with the backend is visible (issue 13 item 4): one line when it stops
answering and one when it is back, in a single run's output, the pool's plain
and live views and the log-shipper's own log; TLS/DNS/refused named."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor.link_status import SHOW_AFTER, Link, next_line, trouble_text
from supervisor.local_backend import LocalBackend
from tests.conftest import Env
from tests.faultkit import wait_until
from tests.test_doctor import closed_port_url
from tests.test_faults import gate_path, open_gate


@pytest.mark.parametrize("shown,link,now,expect_shown,expect", [
    (False, Link(None, "", 0), 100.0, False, None),
    (False, Link(98.0, "HTTP 503", 3), 100.0, False, None),  # a blip says nothing
    (False, Link(90.0, "connection refused by h:1 (nothing listens there)", 340), 102.0, True,
     "backend unreachable for 12s (connection refused by h:1 (nothing listens there)); 340 entries waiting on disk"),
    (True, Link(90.0, "HTTP 503", 340), 130.0, True, None),  # said once per outage
    (True, Link(None, "", 2, last_outage_s=46.0), 140.0, False,
     "backend answers again after 46s; 2 entries still to ship"),
    (False, Link(None, "", 1, last_outage_s=1.0), 140.0, False, None),
])
def test_next_line_table(shown: bool, link: Link, now: float, expect_shown: bool, expect: str | None) -> None:
    assert next_line(shown, link, now) == (expect_shown, expect)


def test_trouble_text_singular() -> None:
    assert trouble_text(Link(0.0, "HTTP 503", 1), SHOW_AFTER).endswith("1 entry waiting on disk")


def read_until(stream, needle: str, seen: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Read lines until one holds `needle` (pytest-timeout bounds a missing one)."""
    while True:
        line = stream.readline()
        assert line, f"ended before {needle!r}: {seen}"
        seen.append(line)
        if needle in line:
            return


def test_single_run_says_when_the_backend_stops_and_comes_back(env: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    backend.set_faults(status=503, paths=["/logs"])
    proc = env.start("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "gate=0.05",
                            "FAKE_CODEX_GATE": str(gate_path(env))})
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        read_until(proc.stderr, "backend unreachable for", seen)
        assert "(HTTP 503)" in seen[-1] and "waiting on disk" in seen[-1]
        backend.clear_faults()
        read_until(proc.stderr, "backend answers again after", seen)
    finally:
        backend.clear_faults()
        open_gate(env)
    _, rest = proc.communicate(timeout=90)
    assert proc.returncode == 0, "".join(seen) + rest
    assert sum("backend unreachable" in line for line in seen) == 1
    log = (env.state(run_id) / "worker-log-shipper.log").read_text()
    assert "the backend does not answer (HTTP 503)" in log and "the backend answers again after" in log


def test_a_restart_does_not_report_an_outage_an_earlier_start_recorded(env: Env, backend: LocalBackend) -> None:
    # A start killed during an outage leaves it in shipper.json; the backend
    # has answered since, and a new start used to say it was unreachable.
    run_id, token = backend.create_run(log_batch=True)
    state = env.state(run_id)
    state.mkdir(parents=True)
    (state / "shipper.json").write_text(json.dumps(
        {"backend_down_since": time.time() - 25, "backend_trouble": "HTTP 503"}))
    # Slow, not failing: the first delivery clears an outage once it is answered.
    backend.set_faults(delay_ms=2000, paths=["/logs"])
    done = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                   extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "ok"})
    assert done.returncode == 0, done.stderr
    assert "backend unreachable" not in done.stderr and "answers again" not in done.stderr


def test_fetch_failure_is_said_at_once_and_named(env: Env, backend: LocalBackend) -> None:
    url = closed_port_url()
    done = env.run("--run-id", "r1", "--config", str(env.config()), "--server", url,
                   extra={"FLYWHEEL_RUN_TOKEN": "tok-1", "FLYWHEEL_TIMING_FETCH_TRIES": "3"})
    assert done.returncode == 3
    lines = done.stderr.splitlines()
    assert any("does not answer the task fetch (connection refused" in line for line in lines), done.stderr
    assert "connection refused by 127.0.0.1" in lines[-1] and "after 3 tries" in lines[-1]


def test_pool_plain_view_says_it_once(env: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    runs = env.tmp / "runs.txt"
    runs.write_text(f"{run_id} {token}\n")
    runs.chmod(0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "--runs", str(runs), "--config", str(env.config()), "--server",
         backend.url], env={**env.vars, "FAKE_CODEX_MODE": "gate=0.05", "FAKE_CODEX_GATE": str(gate_path(env))},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=env.tmp)
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        read_until(proc.stdout, f"run {run_id}: running", seen)
        backend.set_faults(status=503, paths=["/logs"])
        read_until(proc.stdout, f"run {run_id}: backend unreachable for", seen)
        backend.clear_faults()
        read_until(proc.stdout, f"run {run_id}: backend answers again", seen)
    finally:
        backend.clear_faults()
        open_gate(env)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, "".join(seen) + out + err


@pytest.fixture
def tmux(tmp_path: Path):  # type: ignore[no-untyped-def]
    program = shutil.which("tmux")
    if program is None:
        pytest.skip("tmux is not installed (apt-get install tmux; .ci/run installs it)")
    socket = str(tmp_path / "tmux.sock")
    yield lambda *args: subprocess.run([program, "-S", socket, *args], capture_output=True, text=True, timeout=30)
    subprocess.run([program, "-S", socket, "kill-server"], capture_output=True, timeout=30)


def test_live_view_in_a_real_terminal(env: Env, backend: LocalBackend, tmux) -> None:  # type: ignore[no-untyped-def]
    run_id, token = backend.create_run()
    runs = env.tmp / "runs.txt"
    runs.write_text(f"{run_id} {token}\n")
    runs.chmod(0o600)
    exports = " ".join(f"{k}='{v}'" for k, v in {**env.vars, "FAKE_CODEX_MODE": "gate=0.05",
                                                   "FAKE_CODEX_GATE": str(gate_path(env))}.items() if "'" not in v)
    done_file = env.tmp / "pool-exit"
    command = (f"cd {env.tmp} && env -i {exports} {sys.executable} -m supervisor --runs {runs} --config "
               f"{env.config()} --server {backend.url}; echo $? > {done_file}; sleep 600")
    assert tmux("new-session", "-d", "-x", "150", "-y", "30", command).returncode == 0

    def screen() -> str:
        return tmux("capture-pane", "-p").stdout

    def showing(needle: str) -> str:
        text = screen()
        return text if needle in text else ""

    def wait_screen(needle: str) -> str:
        return wait_until(lambda: showing(needle), 60, f"{needle!r} on the screen", every=0.2)

    try:
        table = wait_screen(f"{run_id}  running")
        assert "RUN" in table and "STATE" in table and "ENTRIES" in table
        backend.set_faults(status=503, paths=["/logs"])
        wait_screen("backend unreachable for")
        backend.clear_faults()
    finally:
        backend.clear_faults()
        open_gate(env)
    wait_until(done_file.exists, 60, "the pool's exit status", every=0.2)
    assert done_file.read_text().strip() == "0", screen()
    final = screen()
    assert "1 run: 1 complete" in final
    assert "\x1b" not in final and final.count(f"{run_id}  complete") == 1


def test_unanswered_posts_say_why() -> None:
    from workers.common.backend_client import Backend
    from workers.common.timing import Timing

    with Backend(closed_port_url(), "r1", "tok", Timing(connect_timeout=2, read_timeout=2)) as backend:
        answer = backend.post_once("/logs", {"message": "x"})
    assert answer.status == 0 and answer.why.startswith("connection refused by 127.0.0.1:"), answer
    with Backend("http://no-such-host.invalid", "r1", "tok", Timing(connect_timeout=2, read_timeout=2)) as backend:
        answer = backend.post_once("/logs", {"message": "x"})
    assert answer.status == 0 and answer.why == "DNS lookup of no-such-host.invalid failed (no such host)", answer
