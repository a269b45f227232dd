"""examples/slurm_bootstrap.sbatch under a real Slurm (README: Many runs, across many hosts).

A single-node cluster with 4 simulated GPUs, started by .ci/slurm_up.sh (`.ci/run`
does it and exports SLURM_CONF); without one every test here is skipped, saying why.
The jobs run the real pool and supervisors against the local backend on 127.0.0.1,
with the fake codex: its `gate` mode keeps each run alive until the test has seen
what it needs, so nothing depends on the machine's speed. Every wait is bounded and
every job a test submitted is cancelled when it ends.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from supervisor.local_backend import LocalBackend
from tests.faultkit import wait_until
from tests.pool_host import codex_starts, wait_codex_starts, wait_gone

ROOT = Path(__file__).resolve().parent.parent
SBATCH_EXAMPLE = ROOT / "examples" / "slurm_bootstrap.sbatch"
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
# The cluster's KillWait (.ci/slurm_up.sh): from scancel's SIGTERM to SIGKILL.
KILL_WAIT = 30.0

pytestmark = pytest.mark.timeout(240)


def _cluster_problem() -> str | None:
    """Why the Slurm tests cannot run here, or None when a cluster answers."""
    if shutil.which("sbatch") is None:
        return "Slurm is not installed (sbatch not on PATH); `.ci/run` starts one with .ci/slurm_up.sh"
    try:
        answer = subprocess.run(["sinfo", "--noheader", "--format=%t %G"], capture_output=True,
                                text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s: no Slurm controller is up"
    if answer.returncode != 0:
        said = answer.stderr.strip().splitlines()[-1:] or [f"exit {answer.returncode}"]
        return f"no Slurm cluster answers ({said[0]}); `.ci/run` starts one with .ci/slurm_up.sh"
    if "gpu:" not in answer.stdout:
        return f"the Slurm cluster has no GPUs (sinfo: {answer.stdout.strip()}); start .ci/slurm_up.sh's"
    return None


@dataclass
class Cluster:
    """Submits jobs to the cluster and reads what became of them; cancels them all at the end."""

    jobs: list[str] = field(default_factory=list)

    def submit(self, *args: str | Path, env: dict[str, str], cwd: Path) -> str:
        answer = subprocess.run(["sbatch", "--parsable", *map(str, args)], env=env, cwd=cwd,
                                capture_output=True, text=True, timeout=30)
        assert answer.returncode == 0, answer.stderr
        job = answer.stdout.strip().split(";")[0]
        self.jobs.append(job)
        return job

    def show(self, job: str) -> dict[str, str]:
        """`scontrol show job -d`: the job's fields (for an array, its first task)."""
        answer = subprocess.run(["scontrol", "show", "job", "-d", job], capture_output=True,
                                text=True, timeout=30)
        assert answer.returncode == 0, answer.stderr
        fields: dict[str, str] = {}
        for word in answer.stdout.split():
            key, eq, value = word.partition("=")
            if eq and key not in fields:
                fields[key] = value
        return fields

    def wait_end(self, job: str, timeout: float = 120) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fields = self.show(job)
            if fields.get("JobState") in FINAL_STATES:
                return fields
            time.sleep(0.2)
        raise AssertionError(f"job {job} did not end within {timeout:g}s: {self.show(job)}")

    def cancel_all(self) -> None:
        if self.jobs:
            subprocess.run(["scancel", "--full", *self.jobs], capture_output=True, timeout=30)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)
    jobs = Cluster()
    try:
        yield jobs
    finally:
        jobs.cancel_all()


def granted_gpus(fields: dict[str, str]) -> set[str]:
    """The GPU indices Slurm gave a job, from `GRES=gpu:2(IDX:1-2)` of scontrol -d."""
    match = re.search(r"\(IDX:([0-9,-]+)\)", fields.get("GRES", ""))
    assert match, fields
    return set(expand_indices(match.group(1)))


def expand_indices(text: str) -> list[str]:
    out: list[str] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        out += [str(i) for i in range(int(low), int(high or low) + 1)]
    return out


def test_expand_indices() -> None:
    assert expand_indices("0") == ["0"]
    assert expand_indices("1-2") == ["1", "2"]
    assert expand_indices("0,2-3") == ["0", "2", "3"]


@dataclass
class Job:
    """One sbatch of the example: its runs, files and environment."""

    env: Any
    backend: LocalBackend
    count: int
    runs: list[tuple[str, str]] = field(init=False)
    runs_file: Path = field(init=False)
    output: Path = field(init=False)
    log: Path = field(init=False)
    gate: Path = field(init=False)
    pidfile: Path = field(init=False)

    def __post_init__(self) -> None:
        tmp = self.env.tmp
        self.runs = [self.backend.create_run(prompt=f"task {i}") for i in range(self.count)]
        self.runs_file = tmp / "runs.txt"
        self.runs_file.write_text("".join(f"{rid} {tok}\n" for rid, tok in self.runs))
        os.chmod(self.runs_file, 0o600)
        self.output = tmp / "job.out"
        self.log = tmp / "codex.jsonl"
        self.gate = tmp / "gate"
        self.pidfile = tmp / "shapes.pids"

    def variables(self, mode: str = "gate", gpus_per_run: int = 1) -> dict[str, str]:
        """The job's environment (sbatch exports the submitter's)."""
        return {
            "FAKE_CODEX_PIDFILE": str(self.pidfile),
            **self.env.vars,
            "FLYWHEEL_BOOTSTRAP": f"{sys.executable} -m supervisor",
            "FLYWHEEL_SERVER": self.backend.url,
            "GPUS_PER_RUN": str(gpus_per_run),
            "FAKE_CODEX_LOG": str(self.log),
            "FAKE_CODEX_MODE": mode,
            "FAKE_CODEX_GATE": str(self.gate),
        }

    def submit(self, cluster: Cluster, *options: str, mode: str = "gate", gpus_per_run: int = 1,
               output: str | None = None) -> str:
        return cluster.submit(
            "--cpus-per-task=1", f"--output={output or self.output}", *options,
            SBATCH_EXAMPLE, self.runs_file, self.env.config(),
            env=self.variables(mode, gpus_per_run), cwd=self.env.tmp,
        )

    def open_gate(self) -> None:
        self.gate.touch()

    def exec_gpus(self) -> list[str]:
        """CUDA_VISIBLE_DEVICES of each `codex exec` the runs started, in order."""
        return [c["env"].get("CUDA_VISIBLE_DEVICES", "") for c in codex_starts(self.log)]

    def shape_pids(self) -> list[int]:
        """The processes the runs' commands left (the fake codex's `shapes` mode:
        a nohup job, a setsid daemon, the foreground command, per run)."""
        if not self.pidfile.exists():
            return []
        return [int(line.split()[1]) for line in self.pidfile.read_text().splitlines() if len(line.split()) == 2]

    def wait_started(self, count: int) -> list[int]:
        """Wait until `count` runs run Codex, each with its three left processes;
        every pid of them."""
        started = wait_codex_starts(self.log, count, timeout=90)
        deadline = time.monotonic() + 90
        while len(self.shape_pids()) < 3 * count:
            assert time.monotonic() < deadline, f"the runs' commands did not start: {self.shape_pids()}"
            time.sleep(0.05)
        return [c["pid"] for c in started] + self.shape_pids()

    def read_output(self) -> str:
        return self.output.read_text() if self.output.exists() else ""


STATE_LINE = re.compile(r"\brun (\S+): ([a-z]+)(?: on GPUs ([0-9,]+))?")


STATE_ORDER = ["waiting", "starting", "running", "complete"]
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")


def state_changes(output: str, run_id: str) -> list[tuple[str, str]]:
    """(state, GPUs) of each state-change line of one run (timestamped or not)."""
    found = [STATE_LINE.search(line) for line in output.splitlines()]
    return [(m.group(2), m.group(3) or "") for m in found if m and m.group(1) == run_id]


def gpu_clashes(output: str) -> list[str]:
    """GPUs the output shows held by two runs at once."""
    holder: dict[str, str] = {}
    clashes = []
    for line in output.splitlines():
        match = STATE_LINE.search(line)
        if not match:
            continue
        run_id, state, gpus = match.groups()
        if state in ("starting", "running"):
            for gpu in gpus.split(","):
                if holder.get(gpu, run_id) != run_id:
                    clashes.append(f"GPU {gpu}: {holder[gpu]} and {run_id}")
                holder[gpu] = run_id
        elif state in ("complete", "error", "cancelled"):
            holder = {gpu: who for gpu, who in holder.items() if who != run_id}
    return clashes


def test_example_runs_every_run_on_the_gpus_slurm_granted(
        cluster: Cluster, env: Any, backend: LocalBackend) -> None:
    # One GPU held by another job, so the pool's job does not simply get 0 and 1.
    cluster.submit("--gres=gpu:1", "--cpus-per-task=1", "--output=/dev/null", "--wrap", "sleep 600",
                   env=env.vars, cwd=env.tmp)
    job = Job(env, backend, count=3)
    job_id = job.submit(cluster, "--gres=gpu:2")
    # Two runs fit on the two granted GPUs; the third waits until one is free.
    first = wait_codex_starts(job.log, 2, timeout=90)
    granted = granted_gpus(cluster.show(job_id))
    assert len(granted) == 2, granted
    held = [c["env"]["CUDA_VISIBLE_DEVICES"] for c in first]
    assert sorted(held) == sorted(granted), (held, granted, job.read_output())
    assert len(codex_starts(job.log)) == 2, job.read_output()
    # The pool says "running" once it has seen Codex run: the gate opens only
    # after it has said so for both held runs (a run that ends between two of
    # the pool's looks goes from starting to complete, as the third may).
    held_runs = [c["env"]["FLYWHEEL_RUN_ID"] for c in first]
    wait_until(lambda: all("running" in [s for s, _ in state_changes(job.read_output(), r)] for r in held_runs),
               60, "the pool's running line for both held runs")
    job.open_gate()
    fields = cluster.wait_end(job_id)
    output = job.read_output()
    assert fields["JobState"] == "COMPLETED", (fields, output)
    assert fields["ExitCode"] == "0:0", (fields, output)

    assert len(job.exec_gpus()) == 3, output
    assert set(job.exec_gpus()) <= granted, (job.exec_gpus(), granted)
    for rid, tok in job.runs:
        assert backend.run(rid)["state"] == "complete", output
        assert tok not in output
        # One line per state change, in order: (waiting,) starting, (running,) complete.
        states = [state for state, _ in state_changes(output, rid)]
        assert set(states) <= set(STATE_ORDER) and states == sorted(set(states), key=STATE_ORDER.index), output
        assert states[-1] == "complete" and "starting" in states, output
        if rid in held_runs:
            assert "running" in states, output
    assert gpu_clashes(output) == [], output
    assert f"GPUs {','.join(sorted(granted))}" in output.splitlines()[0]
    assert "3 runs: 3 complete" in output
    # Readable in the job's output file: every line the pool wrote (all but the
    # script's own first line) starts with a UTC timestamp.
    pool_lines = [line for line in output.splitlines()[1:] if line.strip()]
    assert pool_lines and all(TIMESTAMP.match(line) for line in pool_lines), output


def test_job_exit_status_is_the_pools(cluster: Cluster, env: Any, backend: LocalBackend) -> None:
    job = Job(env, backend, count=1)
    job_id = job.submit(cluster, "--gres=gpu:1", mode="exit=3")
    fields = cluster.wait_end(job_id)
    output = job.read_output()
    assert (fields["JobState"], fields["ExitCode"]) == ("FAILED", "1:0"), (fields, output)
    assert backend.run(job.runs[0][0])["state"] == "error"
    assert "1 run: 1 error" in output or "1 runs: 1 error" in output, output


def wait_output(job: Job, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output = job.read_output()
        if text in output:
            return output
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in the job's output within {timeout:g}s:\n{job.read_output()}")


def assert_all_cancelled(job: Job, backend: LocalBackend, started: list[int]) -> str:
    output = job.read_output()
    for rid, tok in job.runs:
        run = backend.run(rid)
        assert (run["state"], run["reason"]) == ("error", "cancelled (SIGTERM)"), (rid, run, output)
        assert tok not in output
    # The pool ended on its own (its summary is there), and nothing of any run lives
    # on: not Codex, not what its commands left (a setsid daemon is out of Slurm's
    # sight with proctrack/linuxproc: only the run's own containment ends it).
    assert f"{len(job.runs)} runs: {len(job.runs)} cancelled" in output, output
    assert wait_gone(started, timeout=10) == []
    return output


def test_scancel_cancels_every_run_within_kill_wait(
        cluster: Cluster, env: Any, backend: LocalBackend) -> None:
    job = Job(env, backend, count=2)
    job_id = job.submit(cluster, "--gres=gpu:2", mode="gate,shapes")
    started = job.wait_started(2)
    # SIGTERM to every process of the job at once (pool, supervisors, workers, Codex),
    # SIGKILL to what is left after KillWait.
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    # The summary is the pool's last word: printed only when it ended by itself,
    # that is before KillWait's SIGKILL.
    wait_output(job, "2 runs: 2 cancelled", timeout=KILL_WAIT + 30)
    assert cluster.wait_end(job_id)["JobState"] == "CANCELLED"
    assert_all_cancelled(job, backend, started)


def test_time_limit_warning_signal_cancels_every_run(
        cluster: Cluster, env: Any, backend: LocalBackend) -> None:
    job = Job(env, backend, count=2)
    # The example asks for SIGTERM to the batch shell (the pool) 300 s before the limit.
    job_id = job.submit(cluster, "--gres=gpu:2", "--time=60", mode="gate,shapes")
    started = job.wait_started(2)
    # Bring the limit within the warning window: the controller signals the pool at
    # its next time-limit check, as it would 300 s before a real limit.
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=5"], check=True, timeout=30)
    fields = cluster.wait_end(job_id, timeout=120)
    output = assert_all_cancelled(job, backend, started)
    # The pool exited 143 by itself, long before the limit.
    assert (fields["JobState"], fields["ExitCode"]) == ("FAILED", "143:0"), (fields, output)


def test_job_array_runs_every_run_exactly_once(cluster: Cluster, env: Any, backend: LocalBackend) -> None:
    job = Job(env, backend, count=5)
    # Task ids 1 and 2 (not from 0): shares 0/2 and 1/2 all the same.
    job_id = job.submit(cluster, "--array=1-2", "--gres=gpu:2", mode="ok",
                        output=str(env.tmp / "task-%a.out"))
    outputs = []
    for task in ("1", "2"):
        fields = cluster.wait_end(f"{job_id}_{task}")
        output = (env.tmp / f"task-{task}.out").read_text()
        outputs.append(output)
        assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), (fields, output)
    assert "shard 0/2 (from SLURM_ARRAY_TASK_ID=1, SLURM_ARRAY_TASK_COUNT=2): 3 of the 5 runs" in outputs[0]
    assert "shard 1/2 (from SLURM_ARRAY_TASK_ID=2, SLURM_ARRAY_TASK_COUNT=2): 2 of the 5 runs" in outputs[1]
    ran = sorted(c["env"]["FLYWHEEL_RUN_ID"] for c in codex_starts(job.log))
    assert ran == sorted(rid for rid, _ in job.runs), ran
    for rid, _ in job.runs:
        assert backend.run(rid)["state"] == "complete", outputs
    # The first task took runs 1, 3, 5 of the file; the second runs 2 and 4.
    ids = [rid for rid, _ in job.runs]
    assert [rid for rid in ids if f"run {rid}: complete" in outputs[0]] == ids[0::2], outputs
    assert [rid for rid in ids if f"run {rid}: complete" in outputs[1]] == ids[1::2], outputs
