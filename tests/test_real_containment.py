"""A run owns every process it starts (docs/design.md: Containment), proven with
the *real* Codex CLI under `danger-full-access`, where nothing else reaps its
commands: the model runs one command that leaves the three shapes seen in the
wild — a `nohup … &` job, a daemon that called setsid itself, and the
foreground command, each in a session other than Codex's — and whatever ends
the run, none of them may be left (5 s; 10 s for SIGTERM's grace).

Skipped, with the reason, where the real Codex is not installed (see
tests/test_real_codex.py: FLYWHEEL_REAL_CODEX, else .ci/install_codex.sh's path).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
from pathlib import Path

import pytest

from supervisor.local_backend import LocalBackend
from tests.conftest import ROOT, Env
from tests.fake_model_server import Exec, FakeModelServer, Say
from tests.faultkit import alive, wait_until, workers
from tests.test_real_codex import (  # noqa: F401  (`real` is a fixture)
    REAL_CODEX,
    SKIP_REASON,
    config_for,
    real,
    wait_no_processes,
)

pytestmark = [
    pytest.mark.real_codex,
    pytest.mark.skipif(REAL_CODEX is None, reason=SKIP_REASON),
    pytest.mark.timeout(90),
]

FAKE_NVIDIA_SMI = ROOT / "examples" / "fake_nvidia_smi"
MARKER_ENGINE = {"FLYWHEEL_CONTAINMENT": "marker"}


class Shapes:
    """The command the model runs; sleeps of unique lengths so that this test
    finds its own processes (and no other test's) by their command lines."""

    def __init__(self) -> None:
        base = random.randrange(100_000, 900_000)
        self.nohup, self.daemon, self.foreground = (f"sleep {base + i}" for i in range(3))

    @property
    def command(self) -> str:
        return (f"nohup {self.nohup} >/dev/null 2>&1 & "
                f"setsid nohup {self.daemon} >/dev/null 2>&1 & {self.foreground}")

    @property
    def all(self) -> tuple[str, str, str]:
        return self.nohup, self.daemon, self.foreground

    def running(self) -> bool:
        # Each shape's own process, exec'd: the shell whose command line names
        # all three exists before any of them (and `nohup`/`setsid` before
        # they exec the sleep).
        return all(self.find(name) is not None for name in self.all)

    def find(self, name: str) -> int | None:
        """The live process that is exactly `name` (not the shell whose
        command line mentions it)."""
        wanted = name.replace(" ", "\0").encode() + b"\0"
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and Path(f"/proc/{entry}/cmdline").read_bytes() == wanted \
                        and alive(int(entry)):
                    return int(entry)
            except OSError:
                continue
        return None

    def pid(self, name: str) -> int:
        pid = self.find(name)
        if pid is None:
            raise AssertionError(f"no process {name!r}")
        return pid


def start(env: Env, backend: LocalBackend, model: FakeModelServer, *args: str,
          extra: dict[str, str] | None = None) -> tuple[str, subprocess.Popen[str]]:
    run_id, token = backend.create_run(prompt="Train the model.")
    config = config_for(env, model, "danger-full-access")
    proc = env.start("--run-id", run_id, "--config", str(config), "--server", backend.url,
                     "--codex-timeout", "60", *args, extra={"FLYWHEEL_RUN_TOKEN": token, **(extra or {})})
    return run_id, proc


def wait_running(shapes: Shapes, proc: subprocess.Popen[str]) -> None:
    try:
        wait_until(lambda: shapes.running() or proc.poll() is not None, 40, "the model's command to run")
    finally:
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"bootstrap ended (exit {proc.returncode}) before the command ran:\n{err}")


def stop(proc: subprocess.Popen[str]) -> str:
    try:
        _, err = proc.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"bootstrap did not finish:\n{err}") from None
    return err


@pytest.mark.parametrize("engine", [pytest.param({}, id="cgroup"), pytest.param(MARKER_ENGINE, id="marker")])
def test_sigkill_of_bootstrap_alone_leaves_nothing(real: Env, backend: LocalBackend, engine: dict) -> None:
    shapes = Shapes()
    with FakeModelServer([Exec(shapes.command)]) as model:
        run_id, proc = start(real, backend, model, extra=engine)
        wait_running(shapes, proc)
        proc.kill()  # bootstrap's own process only: its workers must end the rest
        proc.communicate()
        left = wait_no_processes(*shapes.all, str(real.workspace(run_id)), timeout=5)
    assert not left, left


def test_sigterm_leaves_nothing(real: Env, backend: LocalBackend) -> None:
    shapes = Shapes()
    with FakeModelServer([Exec(shapes.command)]) as model:
        run_id, proc = start(real, backend, model)
        wait_running(shapes, proc)
        proc.send_signal(signal.SIGTERM)
        err = stop(proc)
        left = wait_no_processes(*shapes.all, str(real.workspace(run_id)), timeout=10)
    assert proc.returncode == 143, err
    assert not left, left
    assert backend.run(run_id)["reason"] == "cancelled (SIGTERM)"


def test_codex_timeout_leaves_nothing(real: Env, backend: LocalBackend) -> None:
    shapes = Shapes()
    with FakeModelServer([Exec(shapes.command)]) as model:
        run_id, token = backend.create_run(prompt="Train the model.")
        config = config_for(real, model, "danger-full-access")
        # Long enough for the model's command to start on a busy machine first.
        proc = real.start("--run-id", run_id, "--config", str(config), "--server", backend.url,
                          "--codex-timeout", "15", extra={"FLYWHEEL_RUN_TOKEN": token})
        wait_running(shapes, proc)
        err = stop(proc)
        left = wait_no_processes(*shapes.all, str(real.workspace(run_id)), timeout=5)
    assert proc.returncode == 1, err
    assert backend.run(run_id)["reason"].startswith("codex timed out after 15")
    assert not left, left


def test_normal_end_leaves_no_setsid_daemon(real: Env, backend: LocalBackend) -> None:
    """The real Codex ends its commands' groups when it exits, but not a
    daemon that called setsid itself: the run's end must."""
    shapes = Shapes()
    command = f"setsid nohup {shapes.daemon} >/dev/null 2>&1 & echo started"
    with FakeModelServer([Exec(command), Say("Training runs in the background.")]) as model:
        run_id, proc = start(real, backend, model)
        err = stop(proc)
        left = wait_no_processes(shapes.daemon, str(real.workspace(run_id)), timeout=5)
    assert proc.returncode == 0, err
    assert backend.run(run_id)["state"] == "complete"
    assert not left, left
    said = [e["message"] for e in backend.entries(run_id) if e["message"].startswith("containment:")]
    assert len(said) == 1, said


# -- the pool: a run's GPUs go to the next run only once its processes are gone


def v1_freezer() -> Path | None:
    """The cgroup v1 freezer where this host has one: a task frozen there
    cannot act on a SIGKILL until thawed, which lets a test hold one of a
    run's processes alive for as long as it needs."""
    root = Path("/sys/fs/cgroup/freezer")
    return root if (root / "tasks").exists() and os.access(root / "tasks", os.W_OK) else None


@pytest.mark.timeout(240)  # bounded waits below sum past the file's 90 s on a loaded machine
def test_pool_keeps_gpus_until_a_killed_supervisors_processes_are_gone(real: Env, backend: LocalBackend) -> None:
    """One GPU, two runs: the first run's supervisor is SIGKILLed while its
    command's processes live; the second run gets the GPU only after they are
    all gone. Where the v1 freezer exists, one of them is kept alive (frozen)
    past the supervisor's death to show that the pool waits for it."""
    shapes = Shapes()
    freezer = v1_freezer()
    held: Path | None = None
    (real.bin / "nvidia-smi").symlink_to(FAKE_NVIDIA_SMI)
    first, second = (backend.create_run(prompt="Train the model.") for _ in range(2))
    runs_file = real.tmp / "runs.txt"
    runs_file.write_text(f"{first[0]} {first[1]}\n{second[0]} {second[1]}\n")
    os.chmod(runs_file, 0o600)
    with FakeModelServer([Exec(shapes.command)], after_script=Say("Done.")) as model:
        config = config_for(real, model, "danger-full-access")
        pool = real.start("--runs", str(runs_file), "--config", str(config), "--server", backend.url,
                          "--gpus-per-run", "1", "--codex-timeout", "60",
                          extra={"FAKE_NVIDIA_SMI_GPUS": "1"})
        try:
            wait_running(shapes, pool)
            first_state, second_state = real.state(first[0]), real.state(second[0])
            assert not (second_state / "pool-output.log").exists(), "one GPU: the second run waits"
            supervisor = wait_until(lambda: workers(first_state).get("supervisor"), 10, "the supervisor's pid")
            nohup_job, daemon, foreground = (shapes.pid(name) for name in shapes.all)
            if freezer is not None:
                held = freezer / f"flywheel-test-{os.getpid()}-{random.randrange(1 << 30)}"
                held.mkdir()
                (held / "tasks").write_text(str(daemon))
                (held / "freezer.state").write_text("FROZEN")
                wait_until(lambda: (held / "freezer.state").read_text().strip() == "FROZEN", 5, "the daemon frozen")
            os.kill(supervisor, signal.SIGKILL)
            if held is not None:
                # Its workers have killed all they could; the frozen daemon lives on.
                wait_until(lambda: not alive(nohup_job) and not alive(foreground), 30, "the rest to die")
                assert alive(daemon)
                # The pool has reaped the supervisor (it reports the run on its
                # behalf) and still holds the GPU.
                wait_until(lambda: backend.run(first[0])["state"] == "error", 40, "the pool to report the run")
                assert alive(daemon)
                assert not (second_state / "pool-output.log").exists(), \
                    "the GPU went to the next run while a process of the killed one lived"
                (held / "freezer.state").write_text("THAWED")
            wait_until(lambda: (second_state / "pool-output.log").exists(), 40, "the second run to get the GPU")
            assert not any(alive(pid) for pid in (nohup_job, daemon, foreground))
            out, err = pool.communicate(timeout=60)
        finally:
            if held is not None:
                (held / "freezer.state").write_text("THAWED")
            if pool.poll() is None:
                pool.kill()
                pool.communicate()
            if held is not None:
                wait_until(lambda: not (held / "tasks").read_text().strip(), 5, "the frozen task gone")
                held.rmdir()
    assert backend.run(second[0])["state"] == "complete", err
    if "containment: cgroup v2" in out:  # the status view shows what each run used
        done = next(line for line in out.splitlines() if f"run {second[0]}: complete" in line)  # after the timestamp
        assert "CPU " in done, out
    assert backend.run(first[0])["state"] == "error"
    assert not alive(supervisor)
