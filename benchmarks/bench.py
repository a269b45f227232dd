#!/usr/bin/env python3
"""Side-by-side performance of this flywheel-bootstrap and the original
(`flywheel-bootstrap==0.1.9.202602081117` from the package index).

Run by hand, with the project's venv active (it imports the local backend):

    python benchmarks/bench.py --quick      # ~4 min
    python benchmarks/bench.py              # full, ~15 min
    python benchmarks/bench.py --only latency,overhead

On first use it installs the original into its own venv under the cache folder
(`--cache`, default ~/.cache/flywheel-bench). Both tools run one after the other
against the same in-process local backend (supervisor.local_backend, SQLite in a
temp folder) with the same fake codex (benchmarks/steady_codex.py) on PATH, and
the script prints a Markdown table of medians with the ratio ours/original.
benchmarks/README.md defines every number. Nothing here checks a threshold: the
targets are only shown next to the results.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from supervisor.local_backend import LocalBackend

ORIGINAL = "flywheel-bootstrap==0.1.9.202602081117"
STEADY_CODEX = ROOT / "benchmarks" / "steady_codex.py"
BARE_CLIENT = ROOT / "benchmarks" / "bare_client.py"
# The bare client's batch: the log-shipper's own (ShipperConfig.batch_entries).
BARE_BATCH = 500
CLK_TCK = os.sysconf("SC_CLK_TCK")
# In the cmdline of every fake-codex process (the wrapper on PATH, then the script).
CODEX_MARKS = ("steady_codex", "/bin/codex ")
SECTIONS = ("throughput", "codex", "latency", "overhead", "runs", "idle_runs")


# --------------------------------------------------------------- settings


@dataclass(frozen=True)
class Plan:
    """Sizes and repetitions of one benchmark session."""

    reps: int
    long_reps: int  # runs of over a minute: 100,000 lines one entry per request
    sizes: tuple[int, ...]
    slow_lines: int  # printed with the backend at 50 ms/request
    slow_rate: float
    latency_seconds: float
    latency_rate: float  # lines/s for log_batch on (and the original)
    latency_rate_single: float  # lines/s for one entry per request: a rate it can sustain
    idle_window: float
    runs_counts: tuple[int, ...]
    runs_reps: int


QUICK = Plan(reps=1, long_reps=1, sizes=(20_000,), slow_lines=500, slow_rate=1000.0,
             latency_seconds=3.0, latency_rate=1000.0, latency_rate_single=250.0, idle_window=10.0, runs_counts=(1, 4, 16), runs_reps=1)
FULL = Plan(reps=3, long_reps=1, sizes=(20_000, 100_000), slow_lines=500, slow_rate=1000.0,
            latency_seconds=10.0, latency_rate=1000.0, latency_rate_single=250.0, idle_window=60.0, runs_counts=(1, 4, 16), runs_reps=2)


@dataclass(frozen=True)
class Tool:
    name: str  # "ours" | "original"
    argv: tuple[str, ...]


def ensure_original(cache: Path, log: Callable[[str], None]) -> Path:
    """The original's console script, installed into cache/orig-venv on first use."""
    venv = cache / "orig-venv"
    script = venv / "bin" / "flywheel-bootstrap"
    if script.exists():
        return script
    log(f"installing {ORIGINAL} into {venv} (first use)")
    cache.mkdir(parents=True, exist_ok=True)
    # The base interpreter, not this venv's: the original must not see our packages.
    base = getattr(sys, "_base_executable", None) or sys.executable
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", ORIGINAL], check=True)
    if not script.exists():
        raise SystemExit(f"installing {ORIGINAL} did not produce {script}")
    return script


# --------------------------------------------------------------- /proc


def _children_map() -> dict[int, list[int]]:
    """ppid -> pids, from /proc/*/stat (the `children` files need
    CONFIG_PROC_CHILDREN, which not every kernel has)."""
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def status_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS of a process, in KiB."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    found[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return found


def pss_kib(pid: int) -> int:
    """Proportional set size: RSS with pages shared by N processes (a forked
    worker shares most of its supervisor's) counted 1/N each."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cpu_seconds(pid: int, children: bool = False) -> float | None:
    """utime+stime (and with `children`, of the children it has reaped: a
    short-lived `git` or `codex login status`)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return sum(int(x) for x in fields[11:15 if children else 13]) / CLK_TCK


def reaped_cpu() -> float:
    """CPU of every descendant this process (transitively) waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class TreeSampler:
    """Follows process trees every `interval` s: the peak RSS of each process
    (VmHWM), the peaks of their summed RSS and PSS, and each one's CPU. The
    fake codex (and whatever it starts) is not the tool and is left out of the
    memory figures. Sampling is slow by default on purpose: the backend shares
    this process (and its GIL), and VmHWM needs no fast sampling."""

    def __init__(self, roots: int | Sequence[int], interval: float = 0.25) -> None:
        self.roots = [roots] if isinstance(roots, int) else list(roots)
        self.interval = interval
        self.hwm: dict[int, int] = {}  # pid -> KiB
        self.peak_rss = 0  # KiB
        self.peak_pss = 0  # KiB
        self.codex: set[int] = set()
        self.cpu: dict[int, float] = {}  # pid -> CPU seconds as last seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def tool_pids(self) -> list[int]:
        """The trees' live processes that are not the fake codex. The cmdline
        is read every time: a child forked to become codex shows its parent's
        until it calls exec."""
        kids = _children_map()
        found, todo = [], list(self.roots)
        while todo:
            pid = todo.pop()
            if pid in self.codex:
                continue
            if any(mark in cmdline(pid) for mark in CODEX_MARKS):
                self.codex.add(pid)
                self.hwm.pop(pid, None)
                self.cpu.pop(pid, None)
                continue  # a codex's descendants are codex too
            found.append(pid)
            todo.extend(kids.get(pid, ()))
        return found

    def sample(self) -> None:
        rss = pss = 0
        for pid in self.tool_pids():
            found = status_kib(pid)
            if not found:
                continue
            self.hwm[pid] = max(self.hwm.get(pid, 0), found.get("VmHWM", 0))
            rss += found.get("VmRSS", 0)
            pss += pss_kib(pid)
            cpu = cpu_seconds(pid)
            if cpu is not None:
                self.cpu[pid] = cpu
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    @property
    def hwm_mb(self) -> float:
        return sum(self.hwm.values()) / 1024


# --------------------------------------------------------------- runs


def iso_ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@dataclass(frozen=True)
class RunResult:
    tool: str
    label: str
    run_id: str
    returncode: int
    state: str
    wall: float  # process start -> the backend holds every entry and the terminal report
    entries: int
    printing: float | None  # the fake codex's own printing time
    hwm_mb: float  # sum over the tool's processes of their peak RSS
    pss_mb: float  # peak of the tool's summed PSS
    processes: int
    tool_cpu: float  # CPU seconds of the whole tree minus the fake codex's `exec`
    backend_cpu: float  # CPU seconds of this process (the backend) meanwhile
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.entries / self.wall if self.wall > 0 else 0.0


class Bench:
    """One backend, one fake codex, and the runs made against them."""

    def __init__(self, workdir: Path, tools: dict[str, Tool], log: Callable[[str], None],
                 ours_root: Path = ROOT) -> None:
        self.dir = workdir
        self.tools = tools
        self.log = log
        self.ours_root = ours_root
        self.db = workdir / "backend.sqlite3"
        self.backend = LocalBackend(self.db).start()
        self.times = workdir / "times"
        self.times.mkdir()
        self.bin = workdir / "bin"
        self.bin.mkdir()
        wrapper = self.bin / "codex"
        # One interpreter for the fake under both tools (no pyenv shim in between).
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STEADY_CODEX}" "$@"\n')
        wrapper.chmod(0o755)
        self.results: list[RunResult] = []
        self._count = 0

    def close(self) -> None:
        self.backend.stop()
        self.backend.close()

    def _env(self, run_dir: Path, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("FLYWHEEL_", "BOOTSTRAP_", "CODEX_", "BENCH_", "PYTHON"))}
        env.update(PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", HOME=str(run_dir / "home"),
                   FLYWHEEL_HOME=str(run_dir / "flywheel"), BENCH_TIMES_DIR=str(self.times), **extra)
        return env

    def _config(self, run_dir: Path) -> Path:
        config = run_dir / "config.toml"
        config.write_text(f'workspace_dir = "{run_dir}/ws/<run_id>"\nsandbox_mode = "workspace-write"\n'
                          '[flywheel]\nworkspace_instructions = "Work in the workspace."\n')
        return config

    def _new_dir(self, label: str) -> Path:
        self._count += 1
        run_dir = self.dir / f"{self._count:03d}-{label}"
        (run_dir / "home").mkdir(parents=True)
        return run_dir

    def _tool_env(self, tool: str, env: dict[str, str]) -> dict[str, str]:
        return {**env, "PYTHONPATH": str(self.ours_root)} if tool == "ours" else env

    def _times(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.times / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None

    def run(self, tool_name: str, label: str, *, lines: int, log_batch: bool, delay_ms: float = 0,
            rate: float = 0, idle: float = 0, timeout: float = 900,
            during: Callable[[subprocess.Popen[bytes], TreeSampler, str], dict[str, Any]] | None = None,
            ) -> RunResult:
        """One run of one tool, to its end."""
        run_dir = self._new_dir(f"{tool_name}-{label}")
        run_id, token = self.backend.create_run(prompt="Benchmark run.", log_batch=log_batch)
        config = self._config(run_dir)
        env = self._tool_env(tool_name, self._env(run_dir, {
            "FLYWHEEL_RUN_TOKEN": token, "BENCH_LINES": str(lines), "BENCH_RATE": str(rate),
            "BENCH_IDLE": str(idle)}))
        argv = [*self.tools[tool_name].argv, "--run-id", run_id, "--config", str(config),
                "--server", self.backend.url]
        self.backend.set_faults(delay_ms=delay_ms)
        extra: dict[str, Any] = {}
        try:
            with open(run_dir / "output.log", "wb") as out:
                own_cpu, tree_cpu = sum(os.times()[:2]), reaped_cpu()
                start = time.time()
                proc = subprocess.Popen(argv, env=env, cwd=run_dir, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
                with TreeSampler(proc.pid) as sampler:
                    if during is not None:
                        extra = during(proc, sampler, run_id)
                    try:
                        proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                        self.log(f"  !! {tool_name} {label}: timed out after {timeout:.0f} s (killed)")
                own_cpu, tree_cpu = sum(os.times()[:2]) - own_cpu, reaped_cpu() - tree_cpu
        finally:
            self.backend.clear_faults()
        entries, last_entry, report_at = self.stored(run_id)
        state = self.backend.run(run_id)["state"]
        done = max(t for t in (last_entry, report_at, start) if t is not None) if report_at else time.time()
        times = self._times(run_id) or {}
        printing = times["end"] - times["start"] if "end" in times else None
        if "start" in times:
            extra["first_line"] = times["start"] - start  # what Codex's first line waited for
        extra["stored_rate"] = self.steady_rate(run_id)
        extra.update(cpu_by_pid={p: round(v, 2) for p, v in sorted(sampler.cpu.items())},
                     hwm_by_pid={p: round(v / 1024) for p, v in sorted(sampler.hwm.items())})
        result = RunResult(tool_name, label, run_id, proc.returncode, state, done - start, entries, printing,
                           sampler.hwm_mb, sampler.peak_pss / 1024, len(sampler.hwm),
                           tree_cpu - times.get("cpu", 0.0), own_cpu, extra)
        if proc.returncode != 0 or state != "complete":
            tail = (run_dir / "output.log").read_text(errors="replace")[-600:]
            self.log(f"  !! {tool_name} {label}: exit {proc.returncode}, state {state}; output tail:\n{tail}")
        self.results.append(result)
        return result

    def bare(self, lines: int, batch: int, delay_ms: float = 0) -> dict[str, Any]:
        """The bare client (bare_client.py) delivering `lines` entries: wall
        from its process start to the backend storing the last one (as for the
        tools), and its steady rate (first request to last answer)."""
        run_id, token = self.backend.create_run(prompt="Benchmark run.", log_batch=batch > 1)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "BENCH_"))}
        self.backend.set_faults(delay_ms=delay_ms)
        try:
            start = time.time()
            out = subprocess.run([sys.executable, str(BARE_CLIENT), self.backend.url, run_id, str(lines), str(batch)],
                                 env={**env, "BENCH_TOKEN": token}, stdout=subprocess.PIPE, check=True, timeout=900)
        finally:
            self.backend.clear_faults()
        own = json.loads(out.stdout)
        entries, last, _ = self.stored(run_id)
        stored_rate = self.steady_rate(run_id)
        wall = (last or own["end"]) - start
        return {"entries": entries, "wall": wall, "rate": entries / wall if wall > 0 else 0.0,
                "steady_rate": entries / max(1e-9, own["end"] - own["first_send"]),
                "startup": own["first_send"] - start, "cpu": own["cpu"], "stored_rate": stored_rate}

    def stored(self, run_id: str) -> tuple[int, float | None, float | None]:
        """(entries stored, when the last one was, when the terminal report was)."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            count, last = conn.execute(
                "SELECT count(*), max(received_at) FROM entries WHERE run_id = ?", (run_id,)).fetchone()
            (report,) = conn.execute("SELECT min(received_at) FROM reports WHERE run_id = ?", (run_id,)).fetchone()
        finally:
            conn.close()
        return count, iso_ts(last) if last else None, iso_ts(report) if report else None

    def steady_rate(self, run_id: str) -> float | None:
        """Entries the backend stored per second once delivery was going: from
        the first stored batch to the last entry, that batch left out. Measured
        at the backend alike for every client (the bare client's own
        `steady_rate` is timed at the client)."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT received_at, count(*) FROM entries WHERE run_id = ? "
                                "GROUP BY received_at ORDER BY received_at", (run_id,)).fetchall()
        finally:
            conn.close()
        if len(rows) < 2:
            return None
        span = iso_ts(rows[-1][0]) - iso_ts(rows[0][0])
        return sum(n for _, n in rows[1:]) / span if span > 0 else None

    def latencies(self, run_id: str) -> list[float]:
        """Seconds from the fake codex stamping each line to the backend storing it."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT extra, received_at FROM entries WHERE run_id = ?", (run_id,)).fetchall()
        finally:
            conn.close()
        found = []
        for extra, received in rows:
            event = json.loads(extra).get("event")
            if isinstance(event, dict) and isinstance(event.get("bench_t"), (int, float)):
                found.append(iso_ts(received) - event["bench_t"])
        return found

    def baseline_printing(self, lines: int, rate: float) -> float:
        """The fake codex alone, stdout to a plain file: its printing time
        when nothing slows it down."""
        run_dir = self._new_dir("baseline")
        name = f"baseline-{self._count}"
        (run_dir / "ws").mkdir()
        env = self._env(run_dir, {"BENCH_LINES": str(lines), "BENCH_RATE": str(rate), "FLYWHEEL_RUN_ID": name})
        with open(run_dir / "codex.out", "wb") as out:
            subprocess.run([str(self.bin / "codex"), "exec", "--json", "--cd", str(run_dir / "ws"),
                            "--skip-git-repo-check", "-"], env=env, stdin=subprocess.DEVNULL, stdout=out, check=True)
        times = self._times(name)
        assert times is not None
        return times["end"] - times["start"]

    def many(self, tool_name: str, count: int) -> dict[str, Any]:
        """`count` mock runs in parallel: ours through --runs, the original
        (which has no --runs) as `count` processes started at once. Wall time
        until every process exited."""
        run_dir = self._new_dir(f"{tool_name}-runs{count}")
        config = self._config(run_dir)
        created = [self.backend.create_run(prompt="Benchmark run.") for _ in range(count)]
        base = self._tool_env(tool_name, self._env(run_dir, {"BOOTSTRAP_MOCK_CODEX": "1"}))
        tool, server = self.tools[tool_name].argv, ["--server", self.backend.url]
        procs: list[subprocess.Popen[bytes]] = []
        tree_cpu = reaped_cpu()
        with open(run_dir / "output.log", "wb") as out:
            start = time.time()
            try:
                if tool_name == "ours":
                    runs_file = run_dir / "runs.txt"
                    runs_file.write_text("".join(f"{rid} {tok}\n" for rid, tok in created))
                    runs_file.chmod(0o600)
                    procs.append(subprocess.Popen([*tool, "--runs", str(runs_file), "--config", str(config), *server],
                                                  env=base, cwd=run_dir, stdin=subprocess.DEVNULL, stdout=out,
                                                  stderr=out))
                else:
                    for rid, tok in created:
                        procs.append(subprocess.Popen([*tool, "--run-id", rid, "--config", str(config), *server],
                                                      env={**base, "FLYWHEEL_RUN_TOKEN": tok}, cwd=run_dir,
                                                      stdin=subprocess.DEVNULL, stdout=out, stderr=out))
                # Mock runs are short: sample fast so no process is missed.
                with TreeSampler([p.pid for p in procs], interval=0.05) as sampler:
                    for p in procs:
                        p.wait(600)
                    wall = time.time() - start
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
        ok = sum(self.backend.run(rid)["state"] == "complete" for rid, _ in created)
        if ok != count or any(p.returncode for p in procs):
            tail = (run_dir / "output.log").read_text(errors="replace")[-800:]
            self.log(f"  !! {tool_name} x{count}: {ok}/{count} complete; output tail:\n{tail}")
        return {"wall": wall, "hwm_mb": sampler.hwm_mb, "rss_mb": sampler.peak_rss / 1024,
                "pss_mb": sampler.peak_pss / 1024, "processes": len(sampler.hwm), "complete": ok,
                "cpu": reaped_cpu() - tree_cpu}


def idle_many(bench: Bench, count: int, window: float) -> dict[str, Any]:
    """`count` runs of ours in one `--runs` pool, all with Codex idle (the fake
    prints a few lines, then nothing): CPU of every process of the tool (pool,
    supervisors, workers; not Codex) over `window` seconds, and their summed PSS."""
    run_dir = bench._new_dir(f"ours-idle{count}")
    config = bench._config(run_dir)
    created = [bench.backend.create_run(prompt="Benchmark run.") for _ in range(count)]
    env = bench._tool_env("ours", bench._env(run_dir, {"BENCH_LINES": "20", "BENCH_IDLE": str(window + 15)}))
    runs_file = run_dir / "runs.txt"
    runs_file.write_text("".join(f"{rid} {tok}\n" for rid, tok in created))
    runs_file.chmod(0o600)
    found: dict[str, Any] = {}
    with open(run_dir / "output.log", "wb") as out:
        proc = subprocess.Popen([*bench.tools["ours"].argv, "--runs", str(runs_file), "--config", str(config),
                                 "--server", bench.backend.url], env=env, cwd=run_dir, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out)
        try:
            sampler = TreeSampler(proc.pid)
            deadline = time.time() + 120
            while not all((bench.times / f"{rid}.idle").exists() for rid, _ in created):
                if proc.poll() is not None or time.time() > deadline:
                    bench.log("  !! idle runs: not every run reached its idle period")
                    return found
                time.sleep(0.1)
            time.sleep(3.0)  # the lines before the pause are shipped; start-up work is done
            pids = sampler.tool_pids()
            before = {p: cpu_seconds(p, children=True) for p in pids}
            t0 = time.monotonic()
            time.sleep(window)
            pids = sampler.tool_pids()
            elapsed = time.monotonic() - t0
            by_pid = {p: (cpu_seconds(p, children=True) or 0.0) - (before.get(p) or 0.0) for p in pids}
            used = sum(by_pid.values())
            pss = sum(pss_kib(p) for p in pids) / 1024
            busiest = sorted(by_pid, key=by_pid.__getitem__, reverse=True)[:3]
            found = {"cpu_pct_per_run": used / elapsed * 100 / count, "pss_mb_per_run": pss / count,
                     "processes": len(pids), "window": elapsed,
                     "busiest": [(round(by_pid[p], 2), cmdline(p)[:60]) for p in busiest]}
            proc.wait(window + 120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return found


def idle_cpu(bench: Bench, proc: subprocess.Popen[bytes], sampler: TreeSampler, run_id: str,
             window: float) -> dict[str, Any]:
    """CPU of the tool's processes over `window` seconds while the fake codex
    prints nothing (it idles for window + 6 s)."""
    marker = bench.times / f"{run_id}.idle"
    deadline = time.time() + 60
    while not marker.exists():
        if proc.poll() is not None or time.time() > deadline:
            return {}
        time.sleep(0.05)
    time.sleep(2.0)  # the lines before the pause are shipped; startup work is done
    before = {p: cpu_seconds(p, children=True) for p in sampler.tool_pids()}
    t0 = time.monotonic()
    time.sleep(window)
    pids = sampler.tool_pids()
    elapsed = time.monotonic() - t0
    used = sum((cpu_seconds(p, children=True) or 0.0) - (before.get(p) or 0.0) for p in pids)
    return {"idle_cpu_pct": used / elapsed * 100, "idle_window": elapsed, "idle_processes": len(pids)}


# --------------------------------------------------------------- the table


def median(values: Iterable[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return statistics.median(found) if found else None


def percentile(values: Sequence[float], q: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def fmt_s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


@dataclass(frozen=True)
class Row:
    metric: str
    ours: float | None
    original: float | None
    unit: str
    target: str = ""
    fmt: str = "{:,.0f}"
    bare: float | None = None  # the same figure for the bare client (bare_client.py), where it has one


def table(rows: list[Row]) -> str:
    out = ["| metric | ours | original | bare client | ours/original | ours/bare | target |",
           "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]

    def shown(r: float | None) -> str:
        return "n/a" if r is None else (f"{r:,.2f}×" if r >= 0.01 else f"{r:.4f}×")

    for row in rows:
        unit = row.unit if row.unit in ("", "×", "/s") else f" {row.unit}"
        ours, orig, bare = ("" if v is None else row.fmt.format(v) + unit for v in (row.ours, row.original, row.bare))
        out.append(f"| {row.metric} | {ours or 'n/a'} | {orig or 'n/a'} | {bare} | {shown(ratio(row.ours, row.original))} "
                   f"| {shown(ratio(row.ours, row.bare)) if row.bare is not None else ''} | {row.target} |")
    return "\n".join(out)


def onoff(log_batch: bool) -> str:
    return "on" if log_batch else "off"


class Session:
    """The sections of one benchmark session; each adds rows to the table."""

    def __init__(self, bench: Bench, plan: Plan, log: Callable[[str], None]) -> None:
        self.bench = bench
        self.plan = plan
        self.log = log
        self.rows: list[Row] = []
        self.notes: list[str] = []
        # (tool, size, log_batch) -> runs, shared by the throughput and codex sections
        self.bulk: dict[tuple[str, int, bool], list[RunResult]] = {}
        self.bare: dict[tuple[int, int], list[dict[str, Any]]] = {}  # (lines, batch) -> bare client runs

    def _describe(self, r: RunResult) -> str:
        return (f"{r.entries:,} entries in {r.wall:.2f} s = {r.rate:,.0f}/s; codex printed in {fmt_s(r.printing)}; "
                f"CPU s: tool {r.tool_cpu:.2f} {list(r.extra['cpu_by_pid'].values())}, backend {r.backend_cpu:.2f}; "
                f"peak RSS {r.hwm_mb:.0f} MB {list(r.extra['hwm_by_pid'].values())}, PSS {r.pss_mb:.0f} MB")

    def _reps(self, tool: str, lines: int, log_batch: bool) -> int:
        one_per_request = tool == "original" or not log_batch
        return self.plan.long_reps if one_per_request and lines >= 50_000 else self.plan.reps

    def _bulk_run(self, tool: str, lines: int, log_batch: bool) -> RunResult:
        r = self.bench.run(tool, f"{lines}-{onoff(log_batch)}", lines=lines, log_batch=log_batch,
                           timeout=max(300, lines / 100))
        found = self.bulk.setdefault((tool, lines, log_batch), [])
        found.append(r)
        self.log(f"  {tool:8} {lines:>7,} lines, log_batch {onoff(log_batch):3}, rep {len(found)}: " + self._describe(r)
                 + f"; first Codex line after {r.extra.get('first_line', float('nan')):.3f} s")
        return r

    def _bulk(self, tool: str, lines: int, log_batch: bool) -> list[RunResult]:
        key = (tool, lines, log_batch)
        while len(self.bulk.get(key, ())) < self._reps(tool, lines, log_batch):
            self._bulk_run(tool, lines, log_batch)
        return self.bulk[key]

    def _bare_run(self, lines: int, batch: int) -> dict[str, Any]:
        r = self.bench.bare(lines, batch)
        found = self.bare.setdefault((lines, batch), [])
        found.append(r)
        self.log(f"  bare     {lines:>7,} lines, batch {batch:3}, rep {len(found)}: {r['entries']:,} entries in "
                 f"{r['wall']:.2f} s = {r['rate']:,.0f}/s (steady {r['steady_rate']:,.0f}/s, first request after "
                 f"{r['startup']:.3f} s, CPU {r['cpu']:.2f} s)")
        return r

    def throughput(self) -> None:
        self.log("== throughput: lines printed at full speed, backend at 0 ms (interleaved with the bare client)")
        for lines in self.plan.sizes:
            # One of each per round, so a burst of load on the machine hits all alike.
            for rnd in range(self.plan.reps):
                for tool, log_batch in (("bare", False), ("ours", False), ("original", False), ("bare", True),
                                        ("ours", True)):
                    reps = self._reps("ours" if tool == "bare" else tool, lines, log_batch)
                    if rnd >= reps:
                        continue
                    if tool == "bare":
                        self._bare_run(lines, BARE_BATCH if log_batch else 1)
                    else:
                        self._bulk_run(tool, lines, log_batch)
            original = self._bulk("original", lines, False)
            for log_batch in (False, True):
                ours = self._bulk("ours", lines, log_batch)
                bare = self.bare[(lines, BARE_BATCH if log_batch else 1)]
                self.rows.append(Row(
                    f"delivered entries/s, {lines:,} lines, log_batch {onoff(log_batch)}",
                    median(r.rate for r in ours), median(r.rate for r in original), "/s",
                    "≥ 0.8× bare", bare=median(r["rate"] for r in bare)))
                self.rows.append(Row(
                    f"  until all {lines:,} entries are stored (start-up included)", median(r.wall for r in ours),
                    median(r.wall for r in original), "s", "≤ 1.5× bare" if log_batch else "", "{:.2f}",
                    bare=median(r["wall"] for r in bare)))
                self.rows.append(Row(
                    "  steady: entries stored per second from the first stored batch on",
                    median(r.extra.get("stored_rate") for r in ours), None, "/s",
                    "≥ 0.8× bare" if log_batch else "", bare=median(r["stored_rate"] for r in bare)))
                self.rows.append(Row(
                    "  start-up: Codex's first line (bare client: its first request) after",
                    median(r.extra.get("first_line") for r in ours), median(r.extra.get("first_line") for r in original),
                    "s", "", "{:.3f}", bare=median(r["startup"] for r in bare)))
                self.notes.append(
                    f"Bare client, {lines:,} lines, {'batches of ' + str(BARE_BATCH) if log_batch else 'one per request'}: "
                    f"steady {median(r['steady_rate'] for r in bare):,.0f} entries/s (first request to last answer), "
                    f"CPU {median(r['cpu'] for r in bare):.2f} s.")
        biggest = max(self.plan.sizes)
        original = self._bulk("original", biggest, False)
        for log_batch in (False, True):
            ours = self._bulk("ours", biggest, log_batch)
            self.rows.append(Row(f"  CPU to ship {biggest:,} lines, log_batch {onoff(log_batch)} (tool; backend)",
                                 median(r.tool_cpu for r in ours), median(r.tool_cpu for r in original), "s",
                                 f"backend: {median(r.backend_cpu for r in ours):.1f} s vs "
                                 f"{median(r.backend_cpu for r in original):.1f} s", "{:.1f}"))
            self.rows.append(Row(f"  peak RSS while shipping {biggest:,} lines, log_batch {onoff(log_batch)} "
                                 "(sum over processes)", median(r.hwm_mb for r in ours),
                                 median(r.hwm_mb for r in original), "MB",
                                 f"PSS {median(r.pss_mb for r in ours):.0f} MB vs "
                                 f"{median(r.pss_mb for r in original):.0f} MB"))
        self.notes.append("The original ignores `log_batch` (one POST per entry, on a new connection, on the "
                          "thread that reads Codex): it is measured once per size and compared with both modes.")

    def codex(self) -> None:
        self.log("== codex printing time")
        plan = self.plan
        lines0 = plan.sizes[0]
        alone0 = median(self.bench.baseline_printing(lines0, 0) for _ in range(max(3, plan.reps)))
        original0 = median(r.printing for r in self._bulk("original", lines0, False))
        for log_batch in (False, True):
            ours0 = median(r.printing for r in self._bulk("ours", lines0, log_batch))
            self.rows.append(Row(
                f"Codex printing {lines0:,} lines at full speed, backend 0 ms, log_batch {onoff(log_batch)} "
                f"(Codex alone: {fmt_s(alone0)})", ours0, original0, "s", "", "{:.3f}"))
            self.rows.append(Row("  slowdown vs Codex alone", ratio(ours0, alone0), ratio(original0, alone0),
                                 "×", "", "{:.2f}"))
        # 50 ms per request: lines at a steady rate, so "alone" is the pacing
        # itself and the slowdown is not a ratio of two noisy milliseconds.
        lines, rate = plan.slow_lines, plan.slow_rate
        alone = median(self.bench.baseline_printing(lines, rate) for _ in range(max(3, plan.reps)))
        slow: dict[tuple[str, bool], list[RunResult]] = {}
        for tool, log_batch in (("original", False), ("ours", False), ("ours", True)):
            found = []
            for i in range(plan.reps):
                r = self.bench.run(tool, f"slow-{onoff(log_batch)}", lines=lines, log_batch=log_batch,
                                   delay_ms=50, rate=rate, timeout=600)
                self.log(f"  {tool:8} backend 50 ms, {lines} lines at {rate:,.0f}/s, log_batch {onoff(log_batch):3}, "
                         f"rep {i + 1}: codex printed in {fmt_s(r.printing)} (alone {fmt_s(alone)}); "
                         f"all delivered after {r.wall:.1f} s")
                found.append(r)
            slow[(tool, log_batch)] = found
        bare_slow = {batch: [self.bench.bare(lines, batch, delay_ms=50) for _ in range(plan.reps)]
                     for batch in (1, BARE_BATCH)}
        original = median(r.printing for r in slow[("original", False)])
        for log_batch in (False, True):
            ours = median(r.printing for r in slow[("ours", log_batch)])
            self.rows.append(Row(
                f"Codex printing {lines} lines at {rate:,.0f}/s, backend 50 ms/request, log_batch {onoff(log_batch)} "
                f"(Codex alone: {fmt_s(alone)})", ours, original, "s", "", "{:.3f}"))
            self.rows.append(Row("  slowdown vs Codex alone", ratio(ours, alone), ratio(original, alone), "×",
                                 "ours ≤ 1.1×", "{:.2f}"))
            self.rows.append(Row(f"  until all {lines} lines are stored", median(r.wall for r in slow[("ours", log_batch)]),
                                 median(r.wall for r in slow[("original", False)]), "s", "", "{:.1f}",
                                 bare=median(r["wall"] for r in bare_slow[BARE_BATCH if log_batch else 1])))
        self.notes.append(f"Backend at 50 ms per request: SPEC 8 sends no entry before every smaller seq was "
                          f"accepted, so one entry per request is bounded by {lines} round trips "
                          f"({lines} x 50 ms = {lines * 0.05:.0f} s) for any client, the bare one included.")

    def latency(self) -> None:
        self.log("== latency: printed -> stored")
        plan = self.plan
        found: dict[tuple[str, bool, float], tuple[float | None, float | None]] = {}
        # One entry per request at 1,000 lines/s is past what it can sustain on
        # a small machine (the queue only grows); so also at a rate it can.
        cases = [("original", False, plan.latency_rate), ("ours", False, plan.latency_rate),
                 ("ours", False, plan.latency_rate_single), ("ours", True, plan.latency_rate)]
        for tool, log_batch, rate in cases:
            lines = int(plan.latency_seconds * rate)
            p50s, p99s = [], []
            for i in range(plan.reps):
                r = self.bench.run(tool, f"latency-{onoff(log_batch)}", lines=lines, log_batch=log_batch,
                                   rate=rate, timeout=600)
                lat = [x * 1000 for x in self.bench.latencies(r.run_id)]
                p50, p99 = percentile(lat, 50), percentile(lat, 99)
                self.log(f"  {tool:8} {lines:,} lines at {rate:,.0f}/s, log_batch {onoff(log_batch):3}, "
                         f"rep {i + 1}: p50 {p50 or 0:,.1f} ms, p99 {p99 or 0:,.1f} ms, "
                         f"max {max(lat, default=0):,.1f} ms ({len(lat):,} lines)")
                p50s.append(p50)
                p99s.append(p99)
            found[(tool, log_batch, rate)] = (median(p50s), median(p99s))
        original = found[("original", False, plan.latency_rate)]
        for tool, log_batch, rate in cases[1:]:
            ours = found[(tool, log_batch, rate)]
            mode = onoff(log_batch)
            self.rows.append(Row(f"latency p50 at {rate:,.0f} lines/s, log_batch {mode}",
                                 ours[0], original[0], "ms", "", "{:,.1f}"))
            self.rows.append(Row(f"latency p99 at {rate:,.0f} lines/s, log_batch {mode}",
                                 ours[1], original[1], "ms", "≤ 50 ms" if log_batch else "", "{:,.1f}"))
        self.notes.append(f"Latency: the original is measured at {plan.latency_rate:,.0f} lines/s only; every "
                          "latency row compares with that.")

    def overhead(self) -> None:
        self.log("== overhead while Codex is idle")
        window = self.plan.idle_window
        found: dict[str, RunResult] = {}
        for tool in ("original", "ours"):
            r = self.bench.run(tool, "idle", lines=20, log_batch=False, idle=window + 6, timeout=window + 120,
                               during=lambda p, s, rid: idle_cpu(self.bench, p, s, rid, window))
            self.log(f"  {tool:8} idle {window:.0f} s: CPU {r.extra.get('idle_cpu_pct', float('nan')):.3f}% of one "
                     f"core over {r.extra.get('idle_window', 0):.1f} s ({r.extra.get('idle_processes')} processes); "
                     f"peak RSS {r.hwm_mb:.0f} MB {list(r.extra['hwm_by_pid'].values())}, PSS {r.pss_mb:.0f} MB")
            found[tool] = r
        ours, orig = found["ours"], found["original"]
        self.rows.append(Row(f"CPU while Codex is idle ({window:.0f} s), all the tool's processes",
                             ours.extra.get("idle_cpu_pct"), orig.extra.get("idle_cpu_pct"), "% of a core", "≤ 1%",
                             "{:.2f}"))
        self.rows.append(Row("peak RSS of one run (sum of its processes' peaks)", ours.hwm_mb, orig.hwm_mb, "MB",
                             "≤ 150 MB"))
        self.rows.append(Row("  the same as PSS (pages shared after fork counted once)", ours.pss_mb, orig.pss_mb,
                             "MB"))
        self.notes.append(f"Processes per run: ours {ours.processes} (supervisor and 4 workers), "
                          f"original {orig.processes}.")

    def idle_runs(self) -> None:
        self.log("== idle runs: 16 runs in one --runs pool, Codex idle")
        window = self.plan.idle_window
        found = []
        for i in range(self.plan.runs_reps):
            r = idle_many(self.bench, 16, window)
            if r:
                self.log(f"  ours     16 idle runs, rep {i + 1}: CPU {r['cpu_pct_per_run']:.3f}% of a core per run over "
                         f"{r['window']:.0f} s, PSS {r['pss_mb_per_run']:.1f} MB per run ({r['processes']} processes); "
                         f"busiest: {r['busiest']}")
                found.append(r)
        self.rows.append(Row("16 idle runs in one pool: CPU per run", median(r["cpu_pct_per_run"] for r in found),
                             None, "% of a core", "< 0.5%", "{:.3f}"))
        self.rows.append(Row("  PSS per run (pool included)", median(r["pss_mb_per_run"] for r in found), None, "MB",
                             "< 60 MB", "{:.1f}"))

    def runs(self) -> None:
        self.log("== --runs scaling (mock runs)")
        for count in self.plan.runs_counts:
            results: dict[str, list[dict[str, Any]]] = {"ours": [], "original": []}
            for i in range(self.plan.runs_reps):
                for tool in ("original", "ours"):
                    r = self.bench.many(tool, count)
                    self.log(f"  {tool:8} {count:>2} runs, rep {i + 1}: {r['wall']:.2f} s, CPU {r['cpu']:.1f} s, "
                             f"peak RSS {r['rss_mb']:.0f} MB, PSS {r['pss_mb']:.0f} MB ({r['processes']} processes), "
                             f"{r['complete']}/{count} complete")
                    results[tool].append(r)
            ours, orig = results["ours"], results["original"]
            self.rows.append(Row(f"{count} mock run{'s' if count > 1 else ''} in parallel: wall time",
                                 median(r["wall"] for r in ours), median(r["wall"] for r in orig), "s", "", "{:.2f}"))
            self.rows.append(Row("  CPU per run (every process, start to end)", median(r["cpu"] / count for r in ours),
                                 median(r["cpu"] / count for r in orig), "s", "≤ 0.12 s", "{:.2f}"))
            self.rows.append(Row("  peak memory (RSS summed over processes)", median(r["rss_mb"] for r in ours),
                                 median(r["rss_mb"] for r in orig), "MB",
                                 f"PSS {median(r['pss_mb'] for r in ours):,.0f} MB vs "
                                 f"{median(r['pss_mb'] for r in orig):,.0f} MB"))
        self.notes.append("Mock runs (BOOTSTRAP_MOCK_CODEX=1): ours is one `--runs FILE` (a pool and its "
                          "launcher, then per run a supervisor forked by the launcher and 4 workers); the original "
                          "has no --runs and is started once per run, all at once.")


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "?"
    return f"{os.cpu_count()} CPUs ({model}), Python {sys.version.split()[0]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repetition, smaller sizes (~4 min)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3; 1 with --quick)")
    parser.add_argument("--long-reps", type=int, help="repetitions of 100,000 lines one entry per request "
                                                      "(default 1: each takes about 2 minutes)")
    parser.add_argument("--only", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "flywheel-bench",
                        help="where the original's venv is kept (default ~/.cache/flywheel-bench)")
    parser.add_argument("--ours-root", type=Path, default=ROOT,
                        help="run 'ours' from this checkout, to A/B a change (default: this one)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (database, logs)")
    parser.add_argument("--json", type=Path, help="also write every run's numbers to this file")
    args = parser.parse_args(argv)

    plan = QUICK if args.quick else FULL
    if args.reps:
        plan = replace(plan, reps=args.reps, runs_reps=min(args.reps, plan.runs_reps))
    if args.long_reps:
        plan = replace(plan, long_reps=args.long_reps)
    sections = SECTIONS if not args.only else tuple(s.strip() for s in args.only.split(","))
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")

    began = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - began:6.0f}s] {text}", file=sys.stderr, flush=True)

    original = ensure_original(args.cache, log)
    tools = {"ours": Tool("ours", (sys.executable, "-m", "supervisor")), "original": Tool("original", (str(original),))}
    workdir = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    bench = Bench(workdir, tools, log, args.ours_root.resolve())
    session = Session(bench, plan, log)
    try:
        for name in sections:
            getattr(session, name)()
    finally:
        bench.close()
        if args.json:
            args.json.write_text(json.dumps([r.__dict__ for r in bench.results], indent=1, default=str))
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    reps = f"{plan.reps} repetition{'s' if plan.reps > 1 else ''}"
    if plan.long_reps != plan.reps and 100_000 in plan.sizes:
        reps += f" ({plan.long_reps} for 100,000 lines one entry per request)"
    print(f"\n{'Quick' if args.quick else 'Full'} run, medians of {reps}; {machine()}; "
          f"{time.strftime('%Y-%m-%d')}; took {(time.monotonic() - began) / 60:.1f} min.\n")
    print(table(session.rows))
    print("\nours/original: for entries/s higher is better; for times, latencies, CPU and memory lower is better.")
    for note in session.notes:
        print(f"\n{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
