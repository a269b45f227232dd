"""The pool of `--runs`: scheduling, GPUs, failures, signals — with real processes.

Most tests replace the single-run supervisor by a small Python program (FAKE_SUPERVISOR)
through `run_pool(child_argv=…)`: it records what it saw (CUDA_VISIBLE_DEVICES, its
token, …) in an append-only events file and then does what the test's plan says (finish,
fail, SIGKILL itself, wait for SIGTERM, ignore SIGTERM, leave a grandchild behind).
The GPUs come from the fake nvidia-smi of examples/ on PATH. The end-to-end tests at
the bottom run the real `python -m supervisor --runs` with the mock agent.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from workers.common.errors import ConfigError
from supervisor.local_backend import LocalBackend
from supervisor.pool import states
from supervisor.pool import status_view as sv
from supervisor.pool.children import read_delivered
from supervisor.pool.decisions import (
    EXIT_PRIORITY,
    child_env,
    classify_exit,
    next_starts,
    plan_gpus,
    pool_exit_status,
    supervisor_argv,
)
from supervisor.pool.gpus import GpuAllocator
from supervisor.pool.main import run_pool
from supervisor.pool.runs_file import RunSpec
from supervisor.provision import CODEX_VERSION, host_arch, member_name

ROOT = Path(__file__).resolve().parent.parent
FAKE_NVIDIA_SMI = ROOT / "examples" / "fake_nvidia_smi"
CLOSED_SERVER = "http://127.0.0.1:9"  # nothing listens on the discard port

FAKE_SUPERVISOR = r'''
import json, os, signal, subprocess, sys, time

run_id = sys.argv[1]
events = os.environ["FAKE_EVENTS"]
with open(os.environ["FAKE_PLAN"]) as handle:
    action = json.load(handle).get(run_id, "ok")


def record(event, **extra):
    line = json.dumps({"ev": event, "run": run_id, "pid": os.getpid(), **extra}) + "\n"
    fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, line.encode())
    os.close(fd)


def read_events():
    with open(events) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def overlapped():
    """Another run ran at the same time as this one (or every run has started)."""
    seen = read_events()
    mine = next(i for i, e in enumerate(seen) if e["ev"] == "start" and e["run"] == run_id)
    started = {e["run"] for e in seen if e["ev"] == "start"}
    ended_before = {e["run"] for e in seen[:mine] if e["ev"] == "end"}
    return bool(started - ended_before - {run_id}) or len(started) >= int(os.environ["FAKE_TOTAL"])


def on_term(signum, frame):
    record("term")
    if action != "stubborn":
        sys.exit(143)


signal.signal(signal.SIGTERM, on_term)
record(
    "start",
    gpus=os.environ.get("CUDA_VISIBLE_DEVICES"),
    order=os.environ.get("CUDA_DEVICE_ORDER"),
    token=os.environ.get("FLYWHEEL_RUN_TOKEN"),
    pool_child=os.environ.get("FLYWHEEL_POOL_CHILD"),
    path0=os.environ.get("PATH", "").split(os.pathsep)[0],
    argv=sys.argv,
    sid=os.getsid(0) == os.getpid(),
)
if action == "ok":
    deadline = time.monotonic() + 5
    while not overlapped() and time.monotonic() < deadline:
        time.sleep(0.01)
    state = os.path.join(os.environ["FLYWHEEL_HOME"], "state", run_id)
    with open(os.path.join(state, "shipper.json"), "w") as handle:
        json.dump({"delivered": 42}, handle)
    record("end")
    sys.exit(0)
if action == "fail":
    print("flywheel-bootstrap: error: codex exit code 1 (fake)", file=sys.stderr)
    record("end")
    sys.exit(1)
if action.startswith("exit:"):
    record("end")
    sys.exit(int(action[5:]))
if action == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
if action == "orphan":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    record("grandchild", child=child.pid)
    record("end")
    sys.exit(0)
while True:  # "hang" and "stubborn": until a signal says otherwise
    signal.pause()
'''

POOL_DRIVER = r'''
import json, os, sys
from pathlib import Path
from supervisor.pool.main import run_pool
from supervisor.pool.runs_file import RunSpec

options = json.loads(sys.argv[1])
specs = [
    RunSpec(r["run_id"], r["token"], Path(r["config"]), r["server"], None, n)
    for n, r in enumerate(options["runs"], start=1)
]
sys.exit(run_pool(
    specs, max_parallel=None, gpus_per_run=options.get("gpus_per_run"),
    heartbeat_interval=None, codex_timeout=None, env=dict(os.environ),
    echo=lambda line: print(line, flush=True), is_tty=False,
    child_argv=lambda spec: [sys.executable, options["child"], spec.run_id],
    cancel_grace=options.get("cancel_grace"),
))
'''


class Host:
    """A fake multi-GPU host in tmp_path: PATH, FLYWHEEL_HOME, a config, the fake child."""

    def __init__(self, tmp: Path, gpus: int = 4) -> None:
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.bin.mkdir()
        (self.bin / "python3").symlink_to(sys.executable)
        (self.bin / "nvidia-smi").symlink_to(FAKE_NVIDIA_SMI)
        self.home = tmp / "flywheel"
        self.events = tmp / "events.jsonl"
        self.events.touch()
        self.plan_file = tmp / "plan.json"
        self.plan_file.write_text("{}")
        self.child = tmp / "fake_supervisor.py"
        self.child.write_text(FAKE_SUPERVISOR)
        self.config = tmp / "config.toml"
        self.config.write_text(
            'sandbox_mode = "workspace-write"\n'
            '[flywheel]\nworkspace_instructions = "Work in the workspace."\n'
        )
        self.env = {
            "PATH": str(self.bin),
            "HOME": str(tmp / "userhome"),
            "FLYWHEEL_HOME": str(self.home),
            "FAKE_NVIDIA_SMI_GPUS": str(gpus),
            "FAKE_EVENTS": str(self.events),
            "FAKE_PLAN": str(self.plan_file),
            "FAKE_TOTAL": "0",
            "BOOTSTRAP_MOCK_CODEX": "1",
            "PYTHONPATH": str(ROOT),
        }
        self.lines: list[str] = []

    def specs(self, count: int, server: str = CLOSED_SERVER, **gpus: tuple[str, ...]) -> list[RunSpec]:
        return [
            RunSpec(f"r{i}", f"tok-{i}-secret", self.config, server, gpus.get(f"r{i}"), i)
            for i in range(1, count + 1)
        ]

    def plan(self, **actions: str) -> None:
        self.plan_file.write_text(json.dumps(actions))

    def argv(self, spec: RunSpec) -> list[str]:
        return [sys.executable, str(self.child), spec.run_id]

    def run(self, specs: list[RunSpec], **options: Any) -> int:
        self.env["FAKE_TOTAL"] = str(len(specs))
        kwargs: dict[str, Any] = {
            "max_parallel": None, "gpus_per_run": None, "heartbeat_interval": None,
            "codex_timeout": None, "env": self.env, "echo": self.lines.append,
            "is_tty": False, "child_argv": self.argv,
        }
        kwargs.update(options)
        return run_pool(specs, **kwargs)

    def read_events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.events.read_text().splitlines() if line.strip()]

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.read_events()):
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out; events: {self.read_events()}")

    def output(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def max_concurrency(events: list[dict[str, Any]]) -> int:
    active = peak = 0
    for event in events:
        if event["ev"] == "start":
            active += 1
            peak = max(peak, active)
        elif event["ev"] == "end":
            active -= 1
    return peak


def overlapping_gpu_sets(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of runs that held a common GPU at the same time."""
    holding: dict[str, set[str]] = {}
    clashes = []
    for event in events:
        if event["ev"] == "start":
            mine = set(event["gpus"].split(","))
            clashes += [(event["run"], other) for other, theirs in holding.items() if mine & theirs]
            holding[event["run"]] = mine
        elif event["ev"] == "end":
            holding.pop(event["run"], None)
    return clashes


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pids: list[int], timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if not gone(pid)]
        if not alive:
            return []
        time.sleep(0.02)
    return [pid for pid in pids if not gone(pid)]


# --------------------------------------------------------------------- the pool


def test_eight_runs_two_gpus_each_on_four(host: Host) -> None:
    specs = host.specs(8)
    assert host.run(specs, gpus_per_run=2) == 0
    events = host.read_events()
    starts = [e for e in events if e["ev"] == "start"]
    assert sorted(e["run"] for e in starts) == [f"r{i}" for i in range(1, 9)]
    assert max_concurrency(events) == 2
    assert overlapping_gpu_sets(events) == []
    assert all(len(e["gpus"].split(",")) == 2 for e in starts)
    assert {g for e in starts for g in e["gpus"].split(",")} <= {"0", "1", "2", "3"}
    # GPUs from nvidia-smi are numbered in PCI bus order; CUDA must count the same way.
    assert {e["order"] for e in starts} == {"PCI_BUS_ID"}
    for event in starts:
        number = event["run"][1:]
        assert event["token"] == f"tok-{number}-secret"
        assert event["pool_child"] == "1"
        assert event["sid"] is True  # own session: a terminal Ctrl-C reaches only the pool
        assert not any("secret" in arg for arg in event["argv"])
    output = host.output()
    assert "secret" not in output
    assert "8 runs: 8 complete" in output
    assert output.count("waiting") >= 6  # runs 3..8 waited for GPUs
    # Entries shipped, from each run's shipper.json.
    assert "42 entries shipped" in output


def test_failed_run_gives_exit_1_and_the_others_complete(host: Host) -> None:
    host.plan(r2="fail")
    assert host.run(host.specs(4), gpus_per_run=1) == 1
    events = host.read_events()
    assert sorted(e["run"] for e in events if e["ev"] == "end") == ["r1", "r2", "r3", "r4"]
    output = host.output()
    assert "4 runs: 3 complete, 1 error" in output
    assert "run reported an error (exit 1): flywheel-bootstrap: error: codex exit code 1 (fake)" in output
    assert str(host.home / "state" / "r2" / "pool-output.log") in output


def test_sigkilled_supervisor_is_reported_by_the_pool(host: Host, backend: LocalBackend) -> None:
    runs = [backend.create_run(prompt=f"task {i}") for i in range(3)]
    victim = runs[1][0]
    specs = [RunSpec(rid, tok, host.config, backend.url, None, n) for n, (rid, tok) in enumerate(runs, 1)]
    host.plan(**{victim: "sigkill"})
    assert host.run(specs) == 1
    ended = {e["run"] for e in host.read_events() if e["ev"] == "end"}
    assert ended == {runs[0][0], runs[2][0]}
    reported = backend.run(victim)
    assert reported["state"] == "error"
    assert reported["reason"] == "bootstrap supervisor killed by SIGKILL"
    assert backend.run(runs[0][0])["state"] != "error"
    output = host.output()
    assert "supervisor killed by SIGKILL; reported to the backend by the pool" in output
    assert "3 runs: 2 complete, 1 error" in output


def test_unreachable_backend_for_the_report_is_said(host: Host) -> None:
    host.plan(r1="sigkill")
    host.env["FLYWHEEL_TIMING_BACKOFF_BASE"] = "0.01"
    assert host.run(host.specs(1)) == 1
    assert "the pool could not report it to the backend (no answer)" in host.output()


def test_max_parallel_without_gpus(host: Host) -> None:
    assert host.run(host.specs(5), max_parallel=2) == 0
    events = host.read_events()
    assert max_concurrency(events) == 2
    # Without --gpus-per-run the pool leaves CUDA_VISIBLE_DEVICES alone.
    assert {e["gpus"] for e in events if e["ev"] == "start"} == {None}


def test_gpus_named_on_a_line_are_honoured(host: Host) -> None:
    specs = host.specs(4, r1=("3",), r2=("3",), r4=("0", "1"))
    assert host.run(specs, gpus_per_run=1) == 0
    events = host.read_events()
    gpus = {e["run"]: e["gpus"] for e in events if e["ev"] == "start"}
    assert gpus["r1"] == "3" and gpus["r2"] == "3" and gpus["r4"] == "0,1"
    assert overlapping_gpu_sets(events) == []


def test_run_holding_a_gpu_leaves_it_to_no_one_else(host: Host) -> None:
    # r1 keeps GPU 0 until the test lets it go; r2 wants GPU 0 and must wait.
    host.plan(r1="hang", r2="ok")
    specs = host.specs(2, r1=("0",), r2=("0",))

    def let_go() -> None:
        host.wait_for(lambda events: any(e["ev"] == "start" for e in events))
        os.kill(host.read_events()[0]["pid"], signal.SIGTERM)

    threading.Thread(target=let_go, daemon=True).start()
    status = host.run(specs)
    starts = [e["run"] for e in host.read_events() if e["ev"] in ("start", "term")]
    assert starts == ["r1", "r1", "r2"]  # r2 started only after r1 let GPU 0 go
    assert status == 1  # r1 was cancelled by someone other than the pool
    assert "run r2: waiting (needs GPU 0)" in host.output()


def test_requests_that_can_never_be_met_fail_up_front(host: Host) -> None:
    with pytest.raises(ConfigError, match=r"--gpus-per-run 5: this host has only 4 GPUs \(0, 1, 2, 3, from nvidia-smi -L\)"):
        host.run(host.specs(2), gpus_per_run=5)
    with pytest.raises(ConfigError, match=r"line 2: run 'r2' asks for GPU 7"):
        host.run(host.specs(2, r2=("7",)))
    host.env["FAKE_NVIDIA_SMI_GPUS"] = "0"
    with pytest.raises(ConfigError, match="no GPUs found"):
        host.run(host.specs(2), gpus_per_run=1)
    with pytest.raises(ConfigError, match="--max-parallel 0"):
        host.run(host.specs(2), max_parallel=0)
    assert host.read_events() == []


def test_inherited_cuda_visible_devices_is_the_host(host: Host) -> None:
    host.env["CUDA_VISIBLE_DEVICES"] = "2,3"
    assert host.run(host.specs(3), gpus_per_run=1) == 0
    starts = [e for e in host.read_events() if e["ev"] == "start"]
    assert {e["gpus"] for e in starts} <= {"2", "3"}
    # The user's own numbering: the pool does not impose an order on it.
    assert {e["order"] for e in starts} == {None}


def test_bad_config_fails_everything_before_any_run(host: Host) -> None:
    bad = host.tmp / "bad.toml"
    bad.write_text("[flywheel]\n")
    specs = host.specs(3)
    specs[1] = RunSpec("r2", "t", bad, CLOSED_SERVER, None, 2)
    with pytest.raises(ConfigError) as caught:
        host.run(specs)
    assert str(bad) in caught.value.message and "run r2" in caught.value.message
    assert host.read_events() == []


def test_supervisor_leaving_a_process_behind_is_cleaned_up(host: Host) -> None:
    host.plan(r1="orphan")
    assert host.run(host.specs(1)) == 0
    grandchild = next(e["child"] for e in host.read_events() if e["ev"] == "grandchild")
    assert wait_gone([grandchild]) == []


def test_exit_statuses_map_to_the_pool_status(host: Host) -> None:
    host.plan(r1="exit:3", r2="exit:2", r3="ok")
    assert host.run(host.specs(3)) == 2
    output = host.output()
    assert "bad usage or config (exit 2)" in output and "backend refused or unreachable (exit 3)" in output


class _Tarball(BaseHTTPRequestHandler):
    body = b""
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        type(self).hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def codex_mirror() -> Iterator[tuple[str, list[str]]]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        data = b"#!/bin/sh\necho fake codex\n"
        info = tarfile.TarInfo(member_name(host_arch()))
        info.size, info.mode = len(data), 0o755
        archive.addfile(info, io.BytesIO(data))
    handler = type("Handler", (_Tarball,), {"body": gzip.compress(raw.getvalue()), "hits": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.hits
    server.shutdown()
    server.server_close()


def test_codex_is_downloaded_once_and_found_on_path_by_every_run(
    host: Host, codex_mirror: tuple[str, list[str]]
) -> None:
    url, hits = codex_mirror
    del host.env["BOOTSTRAP_MOCK_CODEX"]
    host.env["FLYWHEEL_CODEX_DOWNLOAD_URL"] = url
    assert host.run(host.specs(3)) == 0
    assert len(hits) == 1
    codex_dir = str(host.home / "codex" / CODEX_VERSION)
    assert {e["path0"] for e in host.read_events() if e["ev"] == "start"} == {codex_dir}
    # A second pool finds it in the cache: no download, same PATH.
    host.events.write_text("")
    assert host.run(host.specs(2)) == 0
    assert len(hits) == 1
    assert {e["path0"] for e in host.read_events() if e["ev"] == "start"} == {codex_dir}


def test_terminal_gets_a_live_table_then_the_summary(host: Host) -> None:
    assert host.run(host.specs(3), gpus_per_run=2, is_tty=True) == 0
    frames = [line for line in host.lines if line.startswith("RUN") or "\x1b[" in line]
    assert frames, host.lines
    assert "\x1b[" in host.output()  # redrawn in place
    summary = host.lines[-1]
    assert summary.startswith("RUN") and summary.endswith("3 runs: 3 complete")


# --------------------------------------------------------------------- signals


def start_driver(host: Host, count: int, **options: Any) -> subprocess.Popen[str]:
    host.env["FAKE_TOTAL"] = str(count)
    spec = {
        "runs": [
            {"run_id": f"r{i}", "token": f"tok-{i}", "config": str(host.config), "server": CLOSED_SERVER}
            for i in range(1, count + 1)
        ],
        "child": str(host.child),
        **options,
    }
    return subprocess.Popen(
        [sys.executable, "-c", POOL_DRIVER, json.dumps(spec)],
        env=host.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def started(count: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda events: sum(e["ev"] == "start" for e in events) == count


def test_sigint_cancels_every_run_and_leaves_nothing(host: Host) -> None:
    host.plan(r1="hang", r2="hang", r3="hang", r4="hang")
    pool = start_driver(host, 5, gpus_per_run=1)  # r5 waits for a GPU
    host.wait_for(started(4))
    pool.send_signal(signal.SIGINT)
    out, _ = pool.communicate(timeout=30)
    assert pool.returncode == 130, out
    events = host.read_events()
    assert sorted(e["run"] for e in events if e["ev"] == "term") == ["r1", "r2", "r3", "r4"]
    assert "r5" not in {e["run"] for e in events}
    assert "5 runs: 5 cancelled" in out
    assert "cancelled before it started" in out
    assert wait_gone([e["pid"] for e in events if e["ev"] == "start"]) == []


def test_sigterm_gives_143(host: Host) -> None:
    host.plan(r1="hang")
    pool = start_driver(host, 1)
    host.wait_for(started(1))
    pool.send_signal(signal.SIGTERM)
    out, _ = pool.communicate(timeout=30)
    assert pool.returncode == 143, out
    assert "1 run: 1 cancelled" in out


def test_second_sigint_kills_at_once(host: Host) -> None:
    host.plan(r1="stubborn", r2="stubborn")
    pool = start_driver(host, 2, cancel_grace=600)
    host.wait_for(started(2))
    pool.send_signal(signal.SIGINT)
    host.wait_for(lambda events: sum(e["ev"] == "term" for e in events) == 2)
    pool.send_signal(signal.SIGINT)
    out, _ = pool.communicate(timeout=30)
    assert pool.returncode == 130, out
    assert "killing every run now" in out
    assert "cancelled (supervisor killed by SIGKILL)" in out
    assert wait_gone([e["pid"] for e in host.read_events() if e["ev"] == "start"]) == []


def test_cancel_grace_bounds_a_stuck_shutdown(host: Host) -> None:
    host.plan(r1="stubborn")
    pool = start_driver(host, 1, cancel_grace=0.3)
    host.wait_for(started(1))
    pool.send_signal(signal.SIGINT)
    out, _ = pool.communicate(timeout=30)
    assert pool.returncode == 130, out
    assert "still stopping after 0.3s" in out


def test_sigkilled_pool_takes_its_runs_down(host: Host) -> None:
    host.plan(r1="hang", r2="hang")
    pool = start_driver(host, 2)
    host.wait_for(started(2))
    pool.kill()
    pool.communicate(timeout=30)
    # PR_SET_PDEATHSIG: each supervisor gets SIGTERM and shuts down as if cancelled.
    host.wait_for(lambda events: sum(e["ev"] == "term" for e in events) == 2)
    assert wait_gone([e["pid"] for e in host.read_events() if e["ev"] == "start"]) == []


# --------------------------------------------------------------------- decisions


def test_classify_exit() -> None:
    assert classify_exit(0, cancelling=False).state == states.COMPLETE
    assert classify_exit(1, cancelling=False).status == 1
    killed = classify_exit(-9, cancelling=False)
    assert (killed.state, killed.status, killed.post_reason) == (
        states.ERROR, 1, "bootstrap supervisor killed by SIGKILL")
    assert classify_exit(-15, cancelling=True).post_reason == "cancelled (SIGTERM)"
    assert classify_exit(143, cancelling=True).state == states.CANCELLED
    assert classify_exit(143, cancelling=True).post_reason is None
    assert classify_exit(77, cancelling=False).status == 1
    # 70: the supervisor failed and could not report the run; the pool reports it.
    unreported = classify_exit(70, cancelling=False)
    assert (unreported.state, unreported.status) == (states.ERROR, 1)
    assert unreported.post_reason is not None and unreported.post_reason.startswith("bootstrap failed:")


def test_pool_exit_status_priority() -> None:
    assert EXIT_PRIORITY == (2, 4, 3, 1)
    assert pool_exit_status([0, 0], None) == 0
    assert pool_exit_status([0, 1, 3], None) == 3
    assert pool_exit_status([4, 1, 3, 2], None) == 2
    assert pool_exit_status([1, 4], None) == 4
    assert pool_exit_status([1], signal.SIGINT) == 130
    assert pool_exit_status([0], signal.SIGTERM) == 143


def test_next_starts_keeps_promised_gpus_for_runs_ahead() -> None:
    alloc = GpuAllocator(["0", "1", "2", "3"])
    assert alloc.try_acquire(["0"]) == ("0",)
    requests = {"a": 2, "b": ("1",), "c": None, "d": 2}
    # "a" takes 1,2; "b" wants 1 and waits; "c" needs no GPU; "d" must not take 3 —
    # only one is free and it waits too.
    starts, why = next_starts(["a", "b", "c", "d"], requests, alloc, running=1, max_parallel=None)
    assert starts == [("a", ("1", "2")), ("c", None)]
    assert why == {"b": "needs GPU 1", "d": "needs 2 free GPUs"}
    alloc.release(["0"])
    # "b" waits for GPU 1: "x" behind it may not take 1 even when free later.
    alloc.release(["1", "2"])
    alloc.try_acquire(["1"])
    starts, why = next_starts(["b", "x"], {"b": ("1",), "x": ("0", "1")}, alloc, running=0, max_parallel=None)
    assert starts == [] and set(why) == {"b", "x"}
    starts, why = next_starts(["p", "q"], {"p": None, "q": None}, alloc, running=1, max_parallel=2)
    assert starts == [("p", None)] and why == {"q": "max-parallel 2"}


def test_plan_gpus_without_discovery_trusts_named_gpus() -> None:
    specs = [RunSpec("a", "t", Path("c"), "http://x", ("5",), 1), RunSpec("b", "t", Path("c"), "http://x", None, 2)]
    plan = plan_gpus(specs, None, (), "nvidia-smi -L")
    assert plan.host == ("5",) and plan.requests == {"a": ("5",), "b": None}


def test_child_command_and_environment() -> None:
    spec = RunSpec("r1", "s3cret", Path("/c.toml"), "http://h:1", None, 1)
    argv = supervisor_argv(spec, heartbeat_interval=2.5, codex_timeout=None)
    assert argv[1:] == ["-m", "supervisor", "--run-id", "r1", "--config", "/c.toml", "--server",
                        "http://h:1", "--heartbeat-interval", "2.5"]
    assert "s3cret" not in argv
    env = child_env({"FLYWHEEL_RUN_ID": "other", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, spec, None, pci_order=True)
    assert env["FLYWHEEL_RUN_TOKEN"] == "s3cret" and "FLYWHEEL_RUN_ID" not in env
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"  # no assignment: left alone
    env = child_env({"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}, spec, ("1", "2"), pci_order=True)
    assert env["CUDA_VISIBLE_DEVICES"] == "1,2" and env["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"


def test_read_delivered_tolerates_partial_files(tmp_path: Path) -> None:
    assert read_delivered(tmp_path) is None
    (tmp_path / "shipper.json").write_text('{"deliv')
    assert read_delivered(tmp_path) is None
    (tmp_path / "shipper.json").write_text('{"delivered": true}')
    assert read_delivered(tmp_path) is None
    (tmp_path / "shipper.json").write_text('{"delivered": 1234, "seq": 9}')
    assert read_delivered(tmp_path) == 1234


# --------------------------------------------------------------------- status view


def test_render_table() -> None:
    rows = [
        sv.RunRow("r1", states.RUNNING, 75.2, 1234, ("0", "1"), "", 12.5, 3 * 2**29),
        sv.RunRow("run-two", states.WAITING, None, None, None, "needs 2 free GPUs"),
        sv.RunRow("r3", states.ERROR, 3725, 7, None, "x" * 100),
    ]
    text = sv.render(rows, max_result=20)
    lines = text.split("\n")
    assert lines[0].split() == ["RUN", "STATE", "ELAPSED", "ENTRIES", "GPUS", "CPU", "PEAK", "RESULT"]
    assert lines[1].split() == ["r1", "running", "1m15s", "1,234", "0,1", "12.5s", "1.5", "GiB", "-"]
    assert lines[2].split()[:5] == ["run-two", "waiting", "-", "-", "-"]
    assert lines[3].split()[2] == "1h02m05s"
    assert lines[3].endswith("x" * 19 + "…")
    # Columns line up.
    assert len({line.index(line.split()[1]) for line in lines}) == 1
    assert sv.tally(rows) == "3 runs: 1 error, 1 running, 1 waiting"


def test_live_view_redraws_in_place() -> None:
    out: list[str] = []
    view = sv.LiveView(out.append, width=80, height=30, interval=0.25)
    rows = [sv.RunRow("r1", states.RUNNING), sv.RunRow("r2", states.WAITING)]
    view.update(rows, 10.0)
    view.update(rows, 10.1)  # too soon: skipped
    view.update(rows, 10.3)
    assert len(out) == 2
    assert not out[0].startswith("\x1b")
    assert out[1].startswith("\x1b[3F\x1b[J")  # up over header + 2 rows, clear
    view.message("SIGINT: cancelling")
    assert out[2] == "\x1b[3F\x1b[JSIGINT: cancelling"
    view.update(rows, 10.31)  # a message forces the next frame
    assert not out[3].startswith("\x1b")


def test_live_view_fits_a_short_terminal() -> None:
    rows = [sv.RunRow(f"r{i}", states.COMPLETE) for i in range(20)] + [sv.RunRow("busy", states.RUNNING)]
    out: list[str] = []
    sv.LiveView(out.append, width=80, height=8).update(rows, 0.0)
    lines = out[0].split("\n")
    assert len(lines) <= 7
    assert any(line.startswith("busy") for line in lines)
    assert lines[-1].startswith("… and 16 more")


# --------------------------------------------------------------------- end to end


def test_runs_file_end_to_end_with_the_mock_agent(env: Any, backend: LocalBackend) -> None:
    runs = [backend.create_run(prompt=f"task {i}") for i in range(3)]
    runs_file = env.tmp / "runs.txt"
    runs_file.write_text("".join(f"{rid} {tok}\n" for rid, tok in runs))
    os.chmod(runs_file, 0o600)
    (env.bin / "nvidia-smi").symlink_to(FAKE_NVIDIA_SMI)
    result = env.run(
        "--runs", str(runs_file), "--config", str(env.config()), "--server", backend.url,
        "--gpus-per-run", "2", extra={"BOOTSTRAP_MOCK_CODEX": "1"},
    )
    assert result.returncode == 0, result.stderr + result.stdout
    for rid, tok in runs:
        assert backend.run(rid)["state"] == "complete"
        assert tok not in result.stdout + result.stderr
    assert "3 runs: 3 complete" in result.stdout + result.stderr


def test_bad_runs_file_end_to_end(env: Any) -> None:
    result = env.run("--runs", "-", "--config", str(env.config()), stdin="r1\nr2 t2 foo=bar\nr2 t\n")
    assert result.returncode == 2
    assert "<stdin>:1: run 'r1' has no token" in result.stderr
    assert "<stdin>:2: unknown key 'foo'" in result.stderr
    assert "Traceback" not in result.stderr


def test_real_supervisors_with_the_fake_codex(env: Any, backend: LocalBackend) -> None:
    """run_pool with its real children (`python -m supervisor --run-id …`) and the fake codex."""
    runs = [backend.create_run(prompt=f"task {i}") for i in range(3)]
    (env.bin / "nvidia-smi").symlink_to(FAKE_NVIDIA_SMI)
    config = env.config()
    specs = [RunSpec(rid, tok, config, backend.url, None, n) for n, (rid, tok) in enumerate(runs, 1)]
    lines: list[str] = []
    status = run_pool(
        specs, max_parallel=None, gpus_per_run=2, heartbeat_interval=0.5, codex_timeout=None,
        env=env.vars, echo=lines.append, is_tty=False,
    )
    output = "\n".join(lines)
    assert status == 0, output
    for rid, tok in runs:
        assert backend.run(rid)["state"] == "complete", output
        assert tok not in output
    assert "3 runs: 3 complete" in output


def codex_starts(log: Path) -> list[dict[str, Any]]:
    """`codex exec` invocations the fake codex logged (not `codex login status`)."""
    if not log.exists():
        return []
    # Only whole lines: a fake codex may be writing its line right now.
    complete = log.read_text().rpartition("\n")[0]
    seen = [json.loads(line) for line in complete.splitlines() if line.strip()]
    return [record for record in seen if record["argv"][:1] == ["exec"]]


def wait_codex_starts(log: Path, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = codex_starts(log)
        if len(seen) >= count:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"only {len(codex_starts(log))} of {count} codex processes started")


def supervisor_pid(run_id: str) -> int:
    """The pid of the real single-run supervisor of run_id, found in /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"supervisor" in argv and b"--run-id" in argv and run_id.encode() in argv:
            return int(entry.name)
    raise AssertionError(f"no supervisor process for {run_id}")


def test_real_supervisor_sigkilled_is_reported_and_others_complete(env: Any, backend: LocalBackend) -> None:
    runs = [backend.create_run(prompt=f"task {i}") for i in range(3)]
    victim = runs[0][0]
    config = env.config()
    log = env.tmp / "codex.jsonl"
    specs = [RunSpec(rid, tok, config, backend.url, None, n) for n, (rid, tok) in enumerate(runs, 1)]
    killed: list[int] = []

    def kill_victim() -> None:
        deadline = time.monotonic() + 30
        while not any(c["env"].get("FLYWHEEL_RUN_ID") == victim for c in codex_starts(log)):
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        pid = supervisor_pid(victim)
        killed.append(pid)
        os.kill(pid, signal.SIGKILL)

    threading.Thread(target=kill_victim, daemon=True).start()
    lines: list[str] = []
    status = run_pool(
        specs, max_parallel=None, gpus_per_run=None, heartbeat_interval=0.5, codex_timeout=None,
        env={**env.vars, "FAKE_CODEX_LOG": str(log), "FAKE_CODEX_MODE": "sleep=1.5"},
        echo=lines.append, is_tty=False,
    )
    output = "\n".join(lines)
    assert killed, output
    assert status == 1, output
    assert backend.run(victim)["state"] == "error"
    assert backend.run(victim)["reason"] == "bootstrap supervisor killed by SIGKILL"
    for rid, _ in runs[1:]:
        assert backend.run(rid)["state"] == "complete", output
    # Nothing of the killed run lives on: not its Codex, not its workers.
    assert wait_gone([c["pid"] for c in codex_starts(log)]) == []


REAL_POOL_DRIVER = r'''
import json, os, sys
from pathlib import Path
from supervisor.pool.main import run_pool
from supervisor.pool.runs_file import RunSpec

options = json.loads(sys.argv[1])
specs = [RunSpec(r[0], r[1], Path(options["config"]), options["server"], None, n)
         for n, r in enumerate(options["runs"], start=1)]
sys.exit(run_pool(
    specs, max_parallel=None, gpus_per_run=options["gpus_per_run"], heartbeat_interval=0.5,
    codex_timeout=None, env=dict(os.environ), echo=lambda line: print(line, flush=True),
    is_tty=False,
))
'''


def test_sigint_to_a_pool_of_real_supervisors(env: Any, backend: LocalBackend) -> None:
    runs = [backend.create_run(prompt=f"task {i}") for i in range(3)]
    (env.bin / "nvidia-smi").symlink_to(FAKE_NVIDIA_SMI)
    log = env.tmp / "codex.jsonl"
    options = {"runs": runs, "config": str(env.config()), "server": backend.url, "gpus_per_run": 1}
    pool = subprocess.Popen(
        [sys.executable, "-c", REAL_POOL_DRIVER, json.dumps(options)],
        env={**env.vars, "FAKE_CODEX_LOG": str(log), "FAKE_CODEX_MODE": "hang"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        started_codex = wait_codex_starts(log, 3)
    except AssertionError:
        pool.kill()
        raise AssertionError(pool.communicate()[0]) from None
    gpus = [c.get("env", {}).get("CUDA_VISIBLE_DEVICES") for c in started_codex]
    pool.send_signal(signal.SIGINT)
    out, _ = pool.communicate(timeout=60)
    assert pool.returncode == 130, out
    for rid, tok in runs:
        assert backend.run(rid)["state"] == "error", out
        assert backend.run(rid)["reason"] == "cancelled (SIGTERM)", out
        assert tok not in out
    assert "3 runs: 3 cancelled" in out
    assert wait_gone([c["pid"] for c in started_codex]) == []
    assert sorted(gpus) == ["0", "1", "2"], gpus
