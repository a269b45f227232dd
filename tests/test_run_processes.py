"""The run's processes (workers/run_processes.py): the pure readings of kernel
files by table, then both engines for real — a run that leaves a foreground
command, a `nohup … &` job and a `setsid` daemon, killed and awaited."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.faultkit import alive, wait_until
from workers import run_processes as rp
from workers.run_processes import RunProcesses, Usage

MOUNTINFO_HYBRID = (
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)
MOUNTINFO_SYSTEMD = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
MOUNTINFO_ESCAPED = "30 23 0:26 /user.slice /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw\n"


@pytest.mark.parametrize("text,expected", [
    (MOUNTINFO_HYBRID, ("/sys/fs/cgroup/unified", "/")),
    (MOUNTINFO_SYSTEMD, ("/sys/fs/cgroup", "/")),
    (MOUNTINFO_ESCAPED, ("/mnt/my cgroups", "/user.slice")),
    ("35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n", None),
    ("", None),
])
def test_cgroup2_mount(text: str, expected: tuple[str, str] | None) -> None:
    assert rp.cgroup2_mount(text) == expected


@pytest.mark.parametrize("text,expected", [
    (MOUNTINFO_HYBRID, ("/sys/fs/cgroup/memory", "/")),
    ("36 31 0:33 /docker/x /sys/fs/cgroup/cpu,memory rw - cgroup cgroup rw,cpu,memory\n",
     ("/sys/fs/cgroup/cpu,memory", "/docker/x")),
    (MOUNTINFO_SYSTEMD, None),
    ("35 31 0:32 / /sys/fs/cgroup/memcg rw - cgroup cgroup rw,memcg_x\n", None),
])
def test_v1_memory_mount(text: str, expected: tuple[str, str] | None) -> None:
    assert rp.v1_mount(text, "memory") == expected


@pytest.mark.parametrize("text,expected", [
    ("9:name=systemd:/\n4:memory:/process_api/abc\n0::/\n", "/process_api/abc"),
    ("5:cpu,memory:/docker/x\n", "/docker/x"),
    ("0::/\n", None),
])
def test_own_v1_memory_cgroup(text: str, expected: str | None) -> None:
    assert rp.own_v1_cgroup(text, "memory") == expected


@pytest.mark.parametrize("text,expected", [
    ("0::/\n", "/"),
    ("9:name=systemd:/\n4:memory:/x\n0::/user.slice/session-1.scope\n", "/user.slice/session-1.scope"),
    ("4:memory:/x\n", None),  # v1 only
    ("0::/gone (deleted)\n", None),
])
def test_own_cgroup(text: str, expected: str | None) -> None:
    assert rp.own_cgroup(text) == expected


@pytest.mark.parametrize("mount,own,expected", [
    (("/sys/fs/cgroup", "/"), "/", Path("/sys/fs/cgroup")),
    (("/sys/fs/cgroup", "/"), "/a/b", Path("/sys/fs/cgroup/a/b")),
    (("/mnt/cg", "/user.slice"), "/user.slice/x", Path("/mnt/cg/x")),
    (("/mnt/cg", "/user.slice"), "/system.slice/x", None),
])
def test_cgroup_dir(mount: tuple[str, str], own: str, expected: Path | None) -> None:
    assert rp.cgroup_dir(mount, own) == expected


@pytest.mark.parametrize("text,expected", [
    ("populated 1\nfrozen 0\n", True),
    ("populated 0\nfrozen 0\n", False),
    ("", False),
])
def test_populated(text: str, expected: bool) -> None:
    assert rp.populated(text) is expected


def test_readings() -> None:
    assert rp.cpu_seconds("usage_usec 2500000\nuser_usec 1\n") == 2.5
    assert rp.cpu_seconds("user_usec 1\n") is None
    assert rp.has_marker(b"A=1\0FLYWHEEL_RUN_MARKER=flywheel-r-1\0", "flywheel-r-1")
    assert not rp.has_marker(b"FLYWHEEL_RUN_MARKER=flywheel-r-12\0", "flywheel-r-1")
    assert rp.start_ticks("12 (a b) c) S " + " ".join(str(n) for n in range(4, 30))) == 22
    assert rp.cgroup_name("run-1", 42) == "flywheel-run-1-42"


def _stat(state: str, vsize: int, env_end: int) -> str:
    fields = [state] + ["1"] * 19 + [str(vsize)] + ["1"] * 27 + [str(env_end), "0"]  # fields 3..52
    return "42 (sle) ep) " + " ".join(fields)


@pytest.mark.parametrize("stat,expected", [
    (_stat("R", 135168, 0), True),  # inside execve: new map, environment not yet copied
    (_stat("S", 135168, 140737), False),  # exec done (an empty environment is still `env -i`)
    (_stat("Z", 0, 0), False),  # a zombie has no memory map
    (_stat("Z", 135168, 0), False),
    (_stat("S", 0, 0), False),  # a kernel thread
    ("42 (short) S 1 2 3", False),  # a kernel too old to show env_end
])
def test_mid_exec(stat: str, expected: bool) -> None:
    assert rp.mid_exec(stat) is expected


@pytest.mark.parametrize("usage,text", [
    (Usage(2.25, 3 * 1024**2), "CPU 2.2s, peak memory 3.0 MiB"),
    (Usage(125.0, None), "CPU 2m05s, peak memory unavailable"),
    (Usage(), "CPU time unavailable, peak memory unavailable"),
])
def test_usage_describe_and_round_trip(usage: Usage, text: str) -> None:
    assert usage.describe() == text
    assert Usage.from_json(usage.to_json()) == usage
    assert Usage.from_json(b"[1]") is None


# -- both engines, for real ----------------------------------------------------

# The shapes the real Codex's commands take: a `nohup … &` job and a `setsid`
# daemon (sessions of their own) and a foreground command.
SHAPES = ("nohup sleep 300 >/dev/null 2>&1 & echo $! >> {pids}; "
          "setsid sleep 301 >/dev/null 2>&1 & echo $! >> {pids}; "
          "echo $$ >> {pids}; exec sleep 302")


def engines() -> list[str]:
    return ["cgroup", "marker"]


@pytest.fixture(params=engines())
def run(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = request.param
    env = {rp.ENGINE_VAR: "marker"} if engine == "marker" else {}
    procs = rp.open_run(f"test-{tmp_path.name}", env)
    if engine == "cgroup" and procs.cgroup is None:
        pytest.skip("no writable cgroup v2 on this machine")
    yield procs
    procs.end(None, timeout=5)


def start_shapes(procs: RunProcesses, tmp_path: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    pidfile = tmp_path / "pids"
    # In a session of its own, like the real Codex starts each command.
    proc = procs.start(["bash", "-c", SHAPES.format(pids=pidfile)], env=dict(os.environ),
                       start_new_session=True, stdin=subprocess.DEVNULL)
    pids = wait_until(lambda: pidfile.exists() and len(pidfile.read_text().split()) == 3
                      and [int(p) for p in pidfile.read_text().split()], 10, "three processes")
    return proc, pids


def test_kill_all_ends_every_shape(run: RunProcesses, tmp_path: Path) -> None:
    proc, pids = start_shapes(run, tmp_path)
    assert run.holds(proc.pid)
    wait_until(lambda: set(pids) <= set(run.members()), 5, "every shape counted as the run's")
    assert not run.empty()
    run.kill_all()
    assert run.wait_empty(5)
    proc.wait(5)
    assert not any(alive(p) for p in pids)


def test_end_keeps_usage_and_removes_cgroup_and_record(run: RunProcesses, tmp_path: Path) -> None:
    run.save(tmp_path)
    assert RunProcesses.load(tmp_path) == run
    proc, _ = start_shapes(run, tmp_path)
    assert run.end(tmp_path, timeout=5)
    proc.wait(5)
    assert not (tmp_path / rp.RECORD).exists()
    usage = Usage.from_json((tmp_path / rp.USAGE).read_bytes())
    assert usage is not None
    if run.cgroup is not None:
        assert not run.cgroup.exists()
        assert usage.cpu_seconds is not None
    else:
        assert usage == Usage()


def test_signal_all_reaches_other_sessions(run: RunProcesses, tmp_path: Path) -> None:
    proc, pids = start_shapes(run, tmp_path)
    run.signal_all(signal.SIGTERM)
    wait_until(lambda: not any(alive(p) for p in pids), 5, "SIGTERM to reach every session")
    proc.wait(5)


def test_freeze_and_kill_without_cgroup_kill(tmp_path: Path) -> None:
    procs = rp.open_run(f"freeze-{tmp_path.name}", {})
    if procs.cgroup is None:
        pytest.skip("no writable cgroup v2 on this machine")
    try:
        proc, pids = start_shapes(procs, tmp_path)
        procs._freeze_and_kill()  # what kill_all does on kernels before 5.14
        assert procs.wait_empty(5)
        proc.wait(5)
        assert not any(alive(p) for p in pids)
        assert "frozen 0" in (procs.cgroup / "cgroup.events").read_text()
    finally:
        procs.end(None)


def test_sweep_ends_a_run_whose_bootstrap_died_whole(tmp_path: Path) -> None:
    """A record left by a supervisor that no longer exists: the next start
    kills what it left and removes its cgroup."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    state_root = tmp_path / "state"
    live_state, dead_state = state_root / "live-run", state_root / "dead-run"
    live_state.mkdir(parents=True)
    dead_state.mkdir()
    mine = rp.open_run(f"live-{tmp_path.name}", {})
    theirs = rp.open_run(f"dead-{tmp_path.name}", {})
    theirs = RunProcesses(theirs.marker, theirs.cgroup, dead.pid, None, theirs.memory_v1)
    try:
        mine.save(live_state)
        theirs.save(dead_state)
        _, their_pids = start_shapes(theirs, tmp_path)
        (tmp_path / "pids").unlink()
        _, my_pids = start_shapes(mine, tmp_path)
        assert rp.sweep_stale(state_root) == ["dead-run"]
        wait_until(lambda: not any(alive(p) for p in their_pids), 5, "the stale run's processes gone")
        assert all(alive(p) for p in my_pids), "a live supervisor's run is left alone"
        assert not (dead_state / rp.RECORD).exists() and (live_state / rp.RECORD).exists()
        if theirs.cgroup is not None:
            assert not theirs.cgroup.exists()
        if theirs.memory_v1 is not None:
            assert not theirs.memory_v1.exists()
    finally:
        mine.end(None)
        theirs.end(None)


def test_kill_of_200_processes_is_complete(run: RunProcesses, tmp_path: Path) -> None:
    script = "for i in $(seq 200); do setsid sleep 300 & done; wait"
    proc = run.start(["bash", "-c", script], env=dict(os.environ), start_new_session=True)
    wait_until(lambda: len(run.members()) >= 200, 30, "200 processes")
    run.kill_all()
    assert run.wait_empty(10)
    proc.wait(5)


@pytest.mark.parametrize("usage,shown", [
    (None, None),
    (Usage(), None),
    (Usage(3.25, None), "CPU 3.2s"),
    (Usage(3.25, 2 * 1024**3), "CPU 3.2s, peak 2.0 GiB"),
])
def test_heartbeat_summary_shows_what_the_processes_used(usage: Usage | None, shown: str | None) -> None:
    from workers.common.spool import ShipperState
    from workers.heartbeat import summarize

    line = summarize("codex running", 0.0, 10.0, ShipperState(), None, usage)
    assert line.startswith("codex running for 10s")
    if shown is None:
        assert "CPU" not in line and "peak" not in line
    else:
        assert line.endswith(shown)


def test_live_usage_while_running_then_kept(tmp_path: Path) -> None:
    procs = rp.open_run(f"usage-{tmp_path.name}", {})
    if procs.cgroup is None:
        pytest.skip("no writable cgroup v2 on this machine")
    procs.save(tmp_path)
    script = "import time\nx = bytearray(64 << 20)\nt = time.process_time()\nwhile time.process_time() - t < 0.2: pass"
    busy = procs.start(["python3", "-c", script], env=dict(os.environ))
    busy.wait(30)
    live = rp.live_usage(tmp_path)
    assert live is not None and live.cpu_seconds is not None and live.cpu_seconds >= 0.2
    if (procs.cgroup / "memory.peak").exists() or procs.memory_v1 is not None:
        assert live.peak_bytes is not None and live.peak_bytes >= 64 << 20
    final = procs.end(tmp_path)
    assert final is not None and final.cpu_seconds == pytest.approx(live.cpu_seconds, abs=0.05)
    assert rp.live_usage(tmp_path) == final == rp.kept_usage(tmp_path)


def test_sweep_removes_empty_cgroups_of_dead_supervisors(tmp_path: Path) -> None:
    """A run's cgroup whose state folder is gone (a test's temporary home) and
    whose supervisor is dead: empty, it is removed by any later start."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = rp.make_cgroup(rp.cgroup_name(f"left-{tmp_path.name}", dead.pid))
    if left is None:
        pytest.skip("no writable cgroup v2 on this machine")
    mine = rp.open_run(f"mine-{tmp_path.name}", {})
    try:
        rp.sweep_stale(tmp_path / "no-such-state")
        assert not left.exists()
        assert mine.cgroup is not None and mine.cgroup.exists(), "a live supervisor's cgroup is kept"
    finally:
        mine.end(None)


def test_a_cgroup_its_probe_cannot_enter_is_dropped(tmp_path: Path) -> None:
    """A folder whose `cgroup.procs` the probe cannot write (here: a directory of
    that name) is not made the run's cgroup, and the v1 memory cgroup probed
    beside it is dropped too: the run falls back to the marker."""
    refused, beside = tmp_path / "refused", tmp_path / "beside"
    (refused / "cgroup.procs").mkdir(parents=True)
    beside.mkdir()
    opening = rp.OpeningRun("flywheel-probe-test", os.getpid(), rp._probing(refused), rp._probing(beside))
    procs = opening.finish()
    assert (procs.engine, procs.cgroup, procs.memory_v1) == ("marker", None, None)
    assert not refused.exists()
