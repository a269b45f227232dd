"""The run's processes: Codex and everything it starts (docs/design.md,
Containment: a run owns every process it starts).

The real Codex starts every command in a session of its own, and a command may
`setsid` a daemon, so no process group and no parent-death signal reaches them.
A run therefore owns a cgroup v2 of its own, created below bootstrap's cgroup,
that Codex enters before it execs (every descendant inherits it): killing the
run is one write to `cgroup.kill`, and `cgroup.events` says when it is empty.

Where no cgroup can be made (no cgroup2 mount, not delegated, not root), the
run falls back to what GitHub's Actions runner does with RUNNER_TRACKING_ID: a
per-run marker variable in Codex's environment, found again in
`/proc/*/environ`, plus PR_SET_CHILD_SUBREAPER on the supervisor so that
orphans stay below it instead of escaping to init.

This is the one place that starts into, signals, kills, awaits and sweeps a
run's processes; the supervisor, the pool and the workers (which kill the run
when the supervisor dies) all use it, so it depends on nothing above `workers`.
Decisions are pure functions over the text of kernel files, tested by table.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from workers.common.files import write_private
from workers.common.names import CREDENTIALS_NAME

MARKER_VAR = "FLYWHEEL_RUN_MARKER"
# "marker" forces the fallback (for tests, or a host whose cgroups misbehave).
ENGINE_VAR = "FLYWHEEL_CONTAINMENT"
RECORD = "containment.json"
USAGE = "usage.json"
_PR_SET_CHILD_SUBREAPER = 36
_POLL = 0.005
# execve takes microseconds; a loaded machine can stretch it to a few ms.
_EXEC_WAIT = 1.0
_EXEC_POLL = 0.001
# A move into a cgroup takes up to a few tens of ms (an RCU grace period).
_PROBE_WAIT = 10.0


# -- pure decisions over kernel text ------------------------------------------


def _unescape_mount(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def cgroup2_mount(mountinfo: str) -> tuple[str, str] | None:
    """(mount point, root within the hierarchy) of the first cgroup2 mount."""
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if sep and tail.split()[:1] == ["cgroup2"] and len(fields) >= 5:
            return _unescape_mount(fields[4]), _unescape_mount(fields[3])
    return None


def v1_mount(mountinfo: str, controller: str) -> tuple[str, str] | None:
    """(mount point, root) of the cgroup v1 hierarchy that has `controller`."""
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if sep and rest[:1] == ["cgroup"] and len(fields) >= 5 and len(rest) >= 3 \
                and controller in rest[2].split(","):
            return _unescape_mount(fields[4]), _unescape_mount(fields[3])
    return None


def own_v1_cgroup(proc_cgroup: str, controller: str) -> str | None:
    """Our path in the v1 hierarchy of `controller` (`4:memory:/path`)."""
    for line in proc_cgroup.splitlines():
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if controller in controllers.split(",") and path.startswith("/"):
            return path.strip()
    return None


def own_cgroup(proc_cgroup: str) -> str | None:
    """The v2 path (`0::/path`) from /proc/<pid>/cgroup; None without one."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            path = line[3:].strip()
            # "(deleted)": our cgroup was removed under us; nothing can go below it.
            return path if path.startswith("/") and not path.endswith("(deleted)") else None
    return None


def cgroup_dir(mount: tuple[str, str], own: str) -> Path | None:
    """Where `own` lives on disk, given the mount of its hierarchy; None when
    the mount does not show it (a bind mount of another part of the tree)."""
    point, root = mount
    root = root.rstrip("/")
    if root and own != root and not own.startswith(root + "/"):
        return None
    return Path(point) / own[len(root):].lstrip("/")


def populated(events: str) -> bool:
    """cgroup.events: `populated 1` while any process lives in the subtree."""
    for line in events.splitlines():
        key, _, value = line.partition(" ")
        if key == "populated":
            return value.strip() != "0"
    return False


def cpu_seconds(cpu_stat: str) -> float | None:
    for line in cpu_stat.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec" and value.strip().isdigit():
            return int(value) / 1e6
    return None


def has_marker(environ: bytes, marker: str) -> bool:
    return f"{MARKER_VAR}={marker}".encode() in environ.split(b"\0")


def mid_exec(stat: str) -> bool:
    """Whether /proc/PID/stat shows a live process inside execve: its new
    memory map exists (vsize > 0) but its environment is not yet copied in
    (env_end 0), so its environ reads empty although it is still the process
    that had the marker. Zombies and kernel threads have no memory map."""
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 49 or fields[0] in ("Z", "X"):
        return False
    return fields[20] != "0" and fields[48] == "0"  # vsize, env_end


def start_ticks(stat: str) -> int | None:
    """Field 22 of /proc/<pid>/stat: when the process started (tells a reused
    pid from the process that made a record)."""
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def cgroup_name(run_id: str, pid: int) -> str:
    return f"flywheel-{run_id}-{pid}"


# -- what the kernel says about processes -------------------------------------


def _read(path: Path | str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def process_start(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat")
    return start_ticks(stat) if stat else None


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _environ(pid: int) -> bytes | None:
    """The environment of `pid`; None when gone, not ours to read (then not
    ours to kill either), a zombie or a kernel thread (they hold nothing).
    A process inside execve reads empty for a moment: read it again once
    exec is done, else a scan misses a process that is the run's."""
    deadline: float | None = None
    while True:
        environ = _read_bytes(f"/proc/{pid}/environ")
        if environ != b"":
            return environ
        stat = _read(f"/proc/{pid}/stat")
        if stat is None or not mid_exec(stat):
            # Exec may have ended between the two reads: one more read settles it.
            return _read_bytes(f"/proc/{pid}/environ") or None
        now = time.monotonic()
        if deadline is None:
            deadline = now + _EXEC_WAIT
        elif now >= deadline:
            return None  # stuck inside exec (frozen): unknown, so not signalled
        time.sleep(_EXEC_POLL)


def _marked_pids(marker: str) -> list[int]:
    me = os.getpid()
    found = []
    for pid in _all_pids():
        if pid == me:
            continue
        environ = _environ(pid)
        if environ and has_marker(environ, marker):
            found.append(pid)
    return found


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def signal_group(pgid: int, sig: int) -> None:
    """`sig` to process group `pgid`, and to process `pgid` should it have
    left its group (a group leader's pid is its group's id)."""
    if pgid <= 0:
        return
    for send in (os.killpg, os.kill):
        try:
            send(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _set_child_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


# -- accounting ---------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """What the run's processes used; None where this host cannot say."""

    cpu_seconds: float | None = None
    peak_bytes: int | None = None

    def describe(self) -> str:
        cpu = "CPU time unavailable" if self.cpu_seconds is None else f"CPU {format_seconds(self.cpu_seconds)}"
        peak = "peak memory unavailable" if self.peak_bytes is None else f"peak memory {format_bytes(self.peak_bytes)}"
        return f"{cpu}, {peak}"

    def short(self) -> str:
        """What is known, for a status line: "CPU 3.2s, peak 1.5 GiB"; "" if nothing."""
        parts = [] if self.cpu_seconds is None else [f"CPU {format_seconds(self.cpu_seconds)}"]
        if self.peak_bytes is not None:
            parts.append(f"peak {format_bytes(self.peak_bytes)}")
        return ", ".join(parts)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @staticmethod
    def from_json(data: bytes) -> Usage | None:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(value, dict):
            return None
        cpu, peak = value.get("cpu_seconds"), value.get("peak_bytes")
        return Usage(
            float(cpu) if isinstance(cpu, (int, float)) and not isinstance(cpu, bool) else None,
            peak if isinstance(peak, int) and not isinstance(peak, bool) else None,
        )


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def format_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


# -- the run's processes ------------------------------------------------------


@dataclass(frozen=True)
class RunProcesses:
    """A run's processes, by cgroup or (cgroup None) by environment marker.
    Plain data: the workers inherit it, and the state folder keeps it as a
    record so that the pool, and a later bootstrap, can find the run again."""

    marker: str
    cgroup: Path | None
    # The supervisor that made it, and when that process started (pid reuse).
    owner: int
    owner_start: int | None
    # Hybrid hosts (cgroup v1 memory controller, as on Ubuntu 20.04): a v1
    # memory cgroup beside the v2 one, for the run's peak memory only.
    memory_v1: Path | None = None

    @property
    def engine(self) -> str:
        return "cgroup" if self.cgroup is not None else "marker"

    def describe(self) -> str:
        if self.cgroup is not None:
            memory = f" (peak memory from the v1 memory cgroup {self.memory_v1})" if self.memory_v1 else ""
            return f"containment: cgroup v2 {self.cgroup}{memory}"
        return (f"containment: no writable cgroup v2 here; falling back to the {MARKER_VAR} environment "
                "marker and a child subreaper (a process that clears its environment can escape)")

    # -- starting into

    def child_env(self, env: Mapping[str, str]) -> dict[str, str]:
        return {**env, MARKER_VAR: self.marker}

    def start(
        self, argv: Sequence[str], *, env: Mapping[str, str], preexec: Callable[[], None] | None = None,
        **popen: object,
    ) -> subprocess.Popen[bytes]:
        """Popen `argv` as a process of the run: marked, and moved into the
        run's cgroup between fork and exec (before `preexec`), so that nothing
        it starts can be outside. The file is opened here, in the parent, so
        the child only writes to it."""
        fds = []
        for folder in (self.cgroup, self.memory_v1):
            if folder is not None:
                try:
                    fds.append(os.open(folder / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
                except OSError:
                    pass  # `holds` then says so; the marker still finds the process

        def setup() -> None:
            for fd in fds:
                try:
                    os.write(fd, b"0")
                except OSError:
                    pass
            if preexec is not None:
                preexec()

        try:
            # preexec_fn: the standard library has no CLONE_INTO_CGROUP; the
            # supervisor starts Codex from its only thread.
            return subprocess.Popen(list(argv), env=self.child_env(env),  # type: ignore[call-overload,no-any-return]
                                    preexec_fn=setup, **popen)  # noqa: PLW1509
        finally:
            for fd in fds:
                os.close(fd)

    def holds(self, pid: int) -> bool:
        """Whether a process started with `start` really is in the cgroup."""
        if self.cgroup is None:
            return True
        own = own_cgroup(_read(f"/proc/{pid}/cgroup") or "")
        return own is not None and own.rstrip("/").endswith("/" + self.cgroup.name)

    # -- looking

    def members(self) -> list[int]:
        """The pids of the run's live processes (the whole subtree)."""
        if self.cgroup is None:
            return _marked_pids(self.marker)
        pids: list[int] = []
        for folder, _dirs, files in os.walk(self.cgroup):
            if "cgroup.procs" in files:
                text = _read(Path(folder) / "cgroup.procs") or ""
                pids += [int(p) for p in text.split() if p.isdigit()]
        return pids

    def empty(self) -> bool:
        if self.cgroup is None:
            return not _marked_pids(self.marker)
        events = _read(self.cgroup / "cgroup.events")
        return events is None or not populated(events)

    # -- acting

    def signal_all(self, sig: int) -> None:
        _signal(self.members(), sig)

    def kill_all(self) -> None:
        """SIGKILL every process of the run, including any started meanwhile."""
        if self.cgroup is None:
            self._kill_marked()
        elif not _write(self.cgroup / "cgroup.kill", "1"):
            self._freeze_and_kill()

    def _kill_marked(self) -> None:
        # Stop them first so none forks a new one between the scan and the kill.
        for _ in range(20):
            pids = _marked_pids(self.marker)
            if not pids:
                return
            _signal(pids, signal.SIGSTOP)
            _signal(pids, signal.SIGKILL)

    def _freeze_and_kill(self) -> None:
        """Kernels before 5.14 have no cgroup.kill: a frozen cgroup cannot fork,
        so one pass of SIGKILL gets every member; a fatal signal thaws them."""
        assert self.cgroup is not None
        frozen = _write(self.cgroup / "cgroup.freeze", "1")
        if frozen:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and "frozen 1" not in (_read(self.cgroup / "cgroup.events") or ""):
                time.sleep(_POLL)
        _signal(self.members(), signal.SIGKILL)
        if frozen:
            _write(self.cgroup / "cgroup.freeze", "0")

    def wait_empty(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) until no process of the run lives."""
        deadline = time.monotonic() + timeout
        while not self.empty():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)
        return True

    def usage(self) -> Usage:
        if self.cgroup is None:
            return Usage()
        stat = _read(self.cgroup / "cpu.stat")
        peak = _read(self.cgroup / "memory.peak")
        if peak is None and self.memory_v1 is not None:
            peak = _read(self.memory_v1 / "memory.max_usage_in_bytes")
        return Usage(cpu_seconds(stat) if stat else None,
                     int(peak) if peak and peak.strip().isdigit() else None)

    def end(self, state_dir: Path | None, timeout: float = 5.0) -> Usage | None:
        """Kill every process of the run, await them, keep what they used,
        remove the cgroup and the record; returns the usage. None (and
        everything kept, for the caller to try again) while some process
        still lives after `timeout`."""
        self.kill_all()
        if not self.wait_empty(timeout):
            return None
        usage = self.usage()
        if state_dir is not None:
            if usage != Usage() or not (state_dir / USAGE).exists():
                with contextlib.suppress(OSError):  # a full disk: the report still says it
                    write_private(state_dir / USAGE, usage.to_json())
            else:
                usage = kept_usage(state_dir) or usage  # an earlier `end` removed the cgroup
        for folder in (self.cgroup, self.memory_v1):
            if folder is not None:
                _remove_tree(folder)
        if state_dir is not None:
            try:
                (state_dir / RECORD).unlink()
            except FileNotFoundError:
                pass
        return usage

    # -- the record in the state folder

    def save(self, state_dir: Path) -> None:
        body = {"marker": self.marker, "cgroup": str(self.cgroup) if self.cgroup else None,
                "owner": self.owner, "owner_start": self.owner_start,
                "memory_v1": str(self.memory_v1) if self.memory_v1 else None}
        write_private(state_dir / RECORD, orjson.dumps(body))
        try:
            (state_dir / USAGE).unlink()
        except FileNotFoundError:
            pass

    @staticmethod
    def load(state_dir: Path) -> RunProcesses | None:
        try:
            value = orjson.loads((state_dir / RECORD).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        if not isinstance(value, dict) or not isinstance(value.get("marker"), str) \
                or not isinstance(value.get("owner"), int):
            return None
        cgroup, memory = value.get("cgroup"), value.get("memory_v1")
        start = value.get("owner_start")
        return RunProcesses(value["marker"], Path(cgroup) if isinstance(cgroup, str) else None,
                            value["owner"], start if isinstance(start, int) else None,
                            Path(memory) if isinstance(memory, str) else None)

    def owner_alive(self) -> bool:
        start = process_start(self.owner)
        return start is not None and (self.owner_start is None or start == self.owner_start)


def kept_usage(state_dir: Path) -> Usage | None:
    """What a run's processes used, as kept by `end` in its state folder."""
    try:
        return Usage.from_json((state_dir / USAGE).read_bytes())
    except OSError:
        return None


def live_usage(state_dir: Path) -> Usage | None:
    """What a run's processes have used so far (while it runs), else what
    they used in the end; None when neither is known."""
    record = RunProcesses.load(state_dir)
    if record is not None and record.cgroup is not None:
        usage = record.usage()
        if usage != Usage():
            return usage
    return kept_usage(state_dir)


def _write(path: Path, text: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.write(fd, text.encode())
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _remove_tree(cgroup: Path) -> None:
    """rmdir the cgroup and any child cgroup a command made, deepest first."""
    for folder, _dirs, _files in sorted(os.walk(cgroup), key=lambda t: -len(t[0])):
        try:
            os.rmdir(folder)
        except OSError:
            pass  # gone already, or EBUSY: a member still lives and the next sweep tries again


# -- making one ---------------------------------------------------------------


def _own_v2() -> Path | None:
    """Our own cgroup v2 folder, where the runs' cgroups go."""
    mount = cgroup2_mount(_read("/proc/self/mountinfo") or "")
    own = own_cgroup(_read("/proc/self/cgroup") or "")
    return cgroup_dir(mount, own) if mount is not None and own is not None else None


def _own_memory_v1() -> Path | None:
    mount = v1_mount(_read("/proc/self/mountinfo") or "", "memory")
    own = own_v1_cgroup(_read("/proc/self/cgroup") or "", "memory")
    return cgroup_dir(mount, own) if mount is not None and own is not None else None


def make_cgroup(name: str) -> Path | None:
    """Create the run's cgroup below our own; None where that is impossible."""
    return _enterable(_probing(_make_dir(_own_v2(), name)))


@dataclass(frozen=True)
class _Made:
    """A cgroup just made, and the throwaway process trying to enter it."""

    path: Path
    probe: subprocess.Popen[bytes] | None  # None when it could not be started


def _make_dir(parent: Path | None, name: str) -> Path | None:
    if parent is None:
        return None
    path = parent / name
    try:
        path.mkdir()
    except FileExistsError:
        pass
    except OSError:
        return None
    return path


def _probing(path: Path | None) -> _Made | None:
    return None if path is None else _Made(path, _start_probe(path))


def _enterable(made: _Made | None) -> Path | None:
    """The cgroup once its probe got in; else it is removed: None."""
    if made is None:
        return None
    if made.probe is None or not _probe_passed(made.probe):
        _remove_tree(made.path)
        return None
    return made.path


# The shell itself is the process that moves: "0" is the writer.
_ENTER = 'echo 0 > "$1"'


def _start_probe(path: Path) -> subprocess.Popen[bytes] | None:
    """Whether a process of ours may move into `path` takes write access to the
    common ancestor's cgroup.procs too (delegation), so a throwaway process
    tries it for real. /bin/sh (as `shell=True` runs), not a fork of ours: it
    waits in the kernel while we work on, and a fork alive meanwhile would
    have every page we write to copied."""
    try:
        return subprocess.Popen(["/bin/sh", "-c", _ENTER, "probe", str(path / "cgroup.procs")], env={},
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None


def _probe_passed(probe: subprocess.Popen[bytes]) -> bool:
    try:
        return probe.wait(timeout=_PROBE_WAIT) == 0
    except subprocess.TimeoutExpired:
        probe.kill()
        probe.wait()
        return False


@dataclass(frozen=True)
class OpeningRun:
    """`open_run` in two halves (`begin_run`, then `finish` once), for a caller
    with work to do meanwhile. The first move into a cgroup after a quiet spell
    waits in the kernel for an RCU grace period (5-15 ms; benchmarks/README.md,
    item 2), which the probes wait out while the caller works. Finish
    soon: a move within ~20 ms of the one before is cheap, so Codex's own
    placement costs nothing then; much later it waits again."""

    name: str
    owner: int
    v2: _Made | None
    v1: _Made | None

    def finish(self) -> RunProcesses:
        cgroup = _enterable(self.v2)
        memory = _enterable(self.v1)
        if cgroup is None:
            _set_child_subreaper()
            if memory is not None:
                _remove_tree(memory)
                memory = None
        return RunProcesses(marker=self.name, cgroup=cgroup, owner=self.owner,
                            owner_start=process_start(self.owner), memory_v1=memory)

    def cancel(self) -> None:
        """Instead of `finish`, for a start that failed first: the probes
        awaited, the folders removed (no process of the run was started)."""
        for path in (_enterable(self.v2), _enterable(self.v1)):
            if path is not None:
                _remove_tree(path)


def begin_run(run_id: str, env: Mapping[str, str]) -> OpeningRun:
    """Make the run's cgroup (unless ENGINE_VAR says "marker") and start
    probing it; `finish` says what the run got."""
    pid = os.getpid()
    name = cgroup_name(run_id, pid)
    v2 = None if env.get(ENGINE_VAR) == "marker" else _make_dir(_own_v2(), name)
    # Peak memory: v2's memory.peak needs the memory controller enabled for us;
    # where it is a v1 controller instead, a v1 memory cgroup measures it (kept
    # only if v2's probe passes).
    v1 = _make_dir(_own_memory_v1(), name) if v2 is not None and not (v2 / "memory.peak").exists() else None
    # Both probes start once both folders exist: a move holds the kernel's
    # cgroup lock through its grace period, and a mkdir would wait for it.
    return OpeningRun(name, pid, _probing(v2), _probing(v1))


def open_run(run_id: str, env: Mapping[str, str]) -> RunProcesses:
    """The containment for a run this process supervises: its own cgroup where
    one can be made (unless ENGINE_VAR says "marker"), else the fallback."""
    return begin_run(run_id, env).finish()


def containment_in_force(env: Mapping[str, str]) -> str:
    """What `open_run` would give a run here, in words (made and removed)."""
    probe = open_run("probe", env)
    probe.end(None, timeout=1.0)
    return probe.describe()


def sweep_stale(state_root: Path, timeout: float = 5.0) -> list[str]:
    """End the processes of runs whose supervisor died whole (nobody was left
    to do it), found by the records in every run's state folder below
    `state_root`. Returns the run ids swept."""
    swept: list[str] = []
    _sweep_empty_cgroups()
    try:
        folders = [p for p in state_root.iterdir() if p.is_dir()]
    except OSError:
        return swept
    for folder in folders:
        record = RunProcesses.load(folder)
        if record is None or record.owner_alive():
            continue
        drop_secrets(folder)
        if record.end(folder, timeout) is not None:
            swept.append(folder.name)
    return swept


def drop_secrets(state_dir: Path) -> None:
    """The run's supervisor is dead: no push of this start will need the git
    credentials any more (a restart writes them again), so none stays on disk."""
    with contextlib.suppress(FileNotFoundError):
        (state_dir / CREDENTIALS_NAME).unlink()


def _sweep_empty_cgroups() -> None:
    """Remove the empty cgroups of runs whose supervisor is gone and whose state
    folder no sweep will see again (a test's temporary FLYWHEEL_HOME, say): an
    empty cgroup holds nothing, but they would pile up."""
    for parent in (_own_v2(), _own_memory_v1()):
        try:
            entries = list(parent.iterdir()) if parent is not None else []
        except OSError:
            continue
        for folder in entries:
            pid = folder.name.rsplit("-", 1)[-1]
            if not folder.name.startswith("flywheel-") or not pid.isdigit() or process_start(int(pid)) is not None:
                continue
            if not (_read(folder / "cgroup.procs") or "").strip() and not populated(
                    _read(folder / "cgroup.events") or ""):
                _remove_tree(folder)


def sweep_left_processes(state_root: Path, say: Callable[[str], None]) -> None:
    """`sweep_stale` at a bootstrap's start, saying what it ended."""
    for run_id in sweep_stale(state_root):
        say(f"ended the processes that a killed earlier bootstrap left running for run {run_id}")
