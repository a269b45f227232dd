"""The pool's launcher (supervisor/pool/launcher.py): supervisors forked from a
process that imported them once, with what an exec'd one would get (session,
environment, command line, exit status), the exec fallback, and a launcher that
dies."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from supervisor.local_backend import LocalBackend
from supervisor.pool.launcher import exit_status
from supervisor.pool.main import run_pool
from supervisor.pool.proc_title import encode_title
from supervisor.pool.runs_file import RunSpec
from tests.pool_host import FAKE_NVIDIA_SMI, Host, codex_starts, wait_codex_starts, wait_gone
from tests.test_pool_e2e import supervisor_pid
from tests.test_pool_loop import start_driver, started


@pytest.mark.parametrize(("argv", "room", "laid_out"), [
    (["python", "-m", "supervisor"], 40, b"python\0-m\0supervisor\0".ljust(40, b"\0")),
    (["abc", "def"], 6, b"abc\0d\0"),  # cut to the room, still NUL-terminated
    (["x"], 1, b"\0"),
])
def test_a_command_line_is_laid_out_as_the_kernel_shows_it(argv: list[str], room: int, laid_out: bytes) -> None:
    assert encode_title(argv, room) == laid_out


@pytest.mark.parametrize(("code", "status", "said"), [
    (None, 0, ""), (0, 0, ""), (3, 3, ""), (256 + 7, 7, ""), (-1, 255, ""),
    ("bad config", 1, "bad config\n"), (["x"], 1, "['x']\n"),
])
def test_a_forked_supervisor_exits_with_the_status_sys_exit_gives(
        code: object, status: int, said: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(code) == status
    assert capsys.readouterr().err == said


def test_fake_supervisors_are_the_launchers_children_and_exec_is_the_way_back(host: Host) -> None:
    host.plan(r1="ok", r2="exit:3")
    assert host.run(host.specs(2), gpus_per_run=1) == 3, host.output()
    forked = {e["run"]: e for e in host.read_events() if e["ev"] == "start"}
    assert {e["ppid"] for e in forked.values()} != {os.getpid()}  # the launcher's
    assert all(e["sid"] and e["token"] == f"tok-{e['run'][1:]}-secret" for e in forked.values())
    assert sorted(e["gpus"] for e in forked.values()) == ["0", "1"]

    host.events.write_text("")
    host.env["FLYWHEEL_POOL_START"] = "exec"
    assert host.run(host.specs(2), gpus_per_run=1) == 3, host.output()
    execd = [e for e in host.read_events() if e["ev"] == "start"]
    assert [e["ppid"] for e in execd] == [os.getpid(), os.getpid()]


def test_a_command_that_cannot_be_started_is_said(host: Host) -> None:
    status = host.run(host.specs(1), child_argv=lambda spec: [str(host.tmp / "no-such-supervisor")])
    assert status == 1
    assert "could not start its supervisor: No such file or directory" in host.output()


def test_a_killed_launcher_takes_its_runs_down_and_the_pool_goes_on(host: Host) -> None:
    host.plan(r1="hang", r2="hang")
    pool = start_driver(host, 2)
    try:
        host.wait_for(started(2))
        starts = [e for e in host.read_events() if e["ev"] == "start"]
        launcher = starts[0]["ppid"]
        assert launcher != pool.pid and b"supervisor.pool.launcher" in Path(f"/proc/{launcher}/cmdline").read_bytes()
        os.kill(launcher, signal.SIGKILL)
        # PR_SET_PDEATHSIG: each supervisor gets SIGTERM, as when the pool dies.
        host.wait_for(lambda events: sum(e["ev"] == "term" for e in events) == 2)
        out, _ = pool.communicate(timeout=60)
    finally:
        if pool.poll() is None:
            pool.kill()
            pool.communicate()
    assert pool.returncode == 1, out
    assert "supervisor killed by SIGTERM" in out
    assert wait_gone([e["pid"] for e in starts]) == []


def test_forked_supervisors_hold_only_their_own_run(env: Any, backend: LocalBackend) -> None:
    """Real supervisors, forked: each one's command line names its run, its
    /proc environ holds no run's token, and its Codex gets its own run's GPU."""
    runs = [backend.create_run(prompt=f"task {i}") for i in range(2)]
    (env.bin / "nvidia-smi").symlink_to(FAKE_NVIDIA_SMI)
    log = env.tmp / "codex.jsonl"
    gate = env.tmp / "codex-may-finish"
    seen: dict[str, bytes] = {}
    errors: list[str] = []

    def look() -> None:
        try:
            wait_codex_starts(log, 2)
            for rid, _ in runs:
                pid = supervisor_pid(rid)
                seen[rid] = Path(f"/proc/{pid}/environ").read_bytes()
                assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(
                    os.fsencode(sys.executable) + b"\0-m\0supervisor\0--run-id\0" + rid.encode() + b"\0")
        except Exception as exc:  # noqa: BLE001 - said by the test below
            errors.append(repr(exc))
        finally:
            gate.touch()

    threading.Thread(target=look, daemon=True).start()
    specs = [RunSpec(rid, tok, env.config(), backend.url, None, n) for n, (rid, tok) in enumerate(runs, 1)]
    lines: list[str] = []
    status = run_pool(
        specs, max_parallel=None, gpus_per_run=1, heartbeat_interval=0.5, codex_timeout=None,
        env={**env.vars, "FAKE_CODEX_LOG": str(log), "FAKE_CODEX_MODE": "gate", "FAKE_CODEX_GATE": str(gate)},
        echo=lines.append, is_tty=False,
    )
    output = "\n".join(lines)
    assert status == 0 and not errors, f"{errors}\n{output}"
    assert sorted(seen) == sorted(rid for rid, _ in runs)
    for environ in seen.values():
        assert not any(tok.encode() in environ for _, tok in runs)
        assert b"CUDA_VISIBLE_DEVICES=" not in environ and b"FLYWHEEL_RUN_TOKEN=" not in environ
    starts = codex_starts(log)
    by_run = {c["env"]["FLYWHEEL_RUN_ID"]: c["env"] for c in starts}
    assert sorted(e["CUDA_VISIBLE_DEVICES"] for e in by_run.values()) == ["0", "1"]
    for codex_env in by_run.values():
        assert not any(tok in str(codex_env) for _, tok in runs)


def test_a_dead_launchers_runs_keep_their_gpus_until_they_are_gone(host: Host) -> None:
    """The launcher dies alone: its supervisors get SIGTERM from the kernel, but a
    run is over, and its GPU goes to the waiting run, only once its supervisor is
    gone (here they ignore SIGTERM until the test kills them)."""
    host.plan(r1="stubborn", r2="stubborn", r3="stubborn", r4="stubborn")
    pool = start_driver(host, 5, gpus_per_run=1)  # r5 waits for a GPU
    lines: list[str] = []
    said = threading.Condition()

    def read() -> None:
        assert pool.stdout is not None
        for line in pool.stdout:
            with said:
                lines.append(line)
                said.notify_all()

    def wait_said(text: str, timeout: float) -> bool:
        with said:
            return said.wait_for(lambda: any(text in line for line in lines), timeout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    starts: dict[str, dict[str, Any]] = {}
    try:
        host.wait_for(started(4))
        starts = {e["run"]: e for e in host.read_events() if e["ev"] == "start"}
        os.kill(starts["r1"]["ppid"], signal.SIGKILL)  # the launcher
        host.wait_for(lambda events: sum(e["ev"] == "term" for e in events) == 4)
        assert wait_said("launcher of supervisors died", 30), "".join(lines)
        # Nothing may start while r1..r4 live; a pool that counted them as ended
        # at the launcher's death starts r5 within a tick of saying so.
        assert not wait_said("run r5: starting", 2), "".join(lines)
        assert not any("run r1: error" in line for line in lines), "".join(lines)
        os.kill(starts["r1"]["pid"], signal.SIGKILL)
        assert wait_said("run r5: starting on GPUs " + starts["r1"]["gpus"], 30), "".join(lines)
        for run in ("r2", "r3", "r4"):
            os.kill(starts[run]["pid"], signal.SIGKILL)
        pool.wait(timeout=60)
    finally:
        if pool.poll() is None:
            pool.kill()
            pool.wait()
        for start in starts.values():
            try:
                os.kill(start["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        reader.join(timeout=10)
    out = "".join(lines)
    assert pool.returncode == 1, out
    assert "run r1: error" in out and "supervisor killed by SIGTERM" in out
    assert wait_gone([e["pid"] for e in starts.values()]) == []
