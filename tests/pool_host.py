"""A fake multi-GPU host for the pool's tests: the pool runs there with a small
Python program (FAKE_SUPERVISOR) in place of the single-run supervisor, through
`run_pool(child_argv=…)`. It records what it saw (CUDA_VISIBLE_DEVICES, its token, …)
in an append-only events file and then does what the test's plan says (finish, fail,
SIGKILL itself, wait for SIGTERM, ignore SIGTERM, leave a grandchild behind). The GPUs
come from the fake nvidia-smi of examples/ on PATH.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from supervisor.pool.main import run_pool
from supervisor.pool.runs_file import RunSpec

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
        sys.exit(128 + signum)


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_term)  # the pool forwards the signal it got
record(
    "start",
    gpus=os.environ.get("CUDA_VISIBLE_DEVICES"),
    order=os.environ.get("CUDA_DEVICE_ORDER"),
    token=os.environ.get("FLYWHEEL_RUN_TOKEN"),
    pool_child=os.environ.get("FLYWHEEL_POOL_CHILD"),
    path0=os.environ.get("PATH", "").split(os.pathsep)[0],
    argv=sys.argv,
    sid=os.getsid(0) == os.getpid(),
    ppid=os.getppid(),
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
