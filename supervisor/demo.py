"""`flywheel-bootstrap demo`: try the whole tool locally in a minute.

Starts a local backend, writes a config, creates a few runs and runs them in
parallel in mock mode (no Codex, no model, no network beyond 127.0.0.1), then
says what happened and where to look. Everything goes under one folder; no
process is left behind, even when the demo is interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from supervisor.local_backend import LocalBackend
from workers.common.errors import ConfigError

DEFAULT_TIMEOUT_S = 120.0
# After SIGTERM a bootstrap stops Codex (10 s grace) and flushes its spool.
TERM_GRACE_S = 15.0

_PROMPTS = (
    "Write a haiku about GPUs to haiku.txt and list it as a text artifact.",
    "Compute the first 20 Fibonacci numbers, save them as fib.json and list it as a json artifact.",
    "Summarise what you did in report.md and list it as a text artifact.",
)

# What `--take-over` does to the first run (docs/control-channel.md), one step at a time.
_CONVERSATION = (
    ("take_over", None),
    ("send_input", {"text": "Please also note which GPU you would train on."}),
    ("resume_autonomous", None),
)
# The first run's mock agent keeps training this long unless taken over.
_TAKE_OVER_WORK_S = 60

_INSTRUCTIONS = (
    "This is a local demo run in mock mode. Work only inside the current workspace "
    "folder; no GPU and no network are needed."
)


@dataclass(frozen=True)
class DemoRun:
    """One demo run as it ended."""

    run_id: str
    state: str
    reason: str | None
    entries: int
    artifacts: int
    exit_code: int | None  # None: still running at the deadline and killed
    timed_out: bool


def demo_config_text(folder: Path) -> str:
    """The Codex config of the demo runs (workspace_dir is a top-level Codex key)."""
    workspace = f"{folder}/workspaces/<run_id>"
    return (
        "# Written by `flywheel-bootstrap demo`.\n"
        f"workspace_dir = {json.dumps(workspace, ensure_ascii=False)}\n"
        'sandbox_mode = "workspace-write"\n'
        "\n"
        "[flywheel]\n"
        f"workspace_instructions = {json.dumps(_INSTRUCTIONS, ensure_ascii=False)}\n"
    )


def bootstrap_env(base: Mapping[str, str], token: str, home: Path) -> dict[str, str]:
    """The environment of one demo bootstrap: the token goes here, never in argv."""
    env = {k: v for k, v in base.items() if k not in ("FLYWHEEL_RUN_ID", "FLYWHEEL_SERVER")}
    env.update(
        FLYWHEEL_RUN_TOKEN=token,
        BOOTSTRAP_MOCK_CODEX="1",
        FLYWHEEL_HOME=str(home),
        FLYWHEEL_HEARTBEAT_INTERVAL="1",
    )
    return env


def outcome_line(run: DemoRun) -> str:
    if run.timed_out:
        code = "killed (timed out)"
    else:
        code = f"exit {run.exit_code}"
    line = (
        f"  {run.run_id}  {run.state:<8}  {run.entries:>4} entries  "
        f"{run.artifacts} artifact(s)  {code}"
    )
    if run.state == "error" and run.reason:
        first = run.reason.strip().splitlines()[0] if run.reason.strip() else ""
        line += f"  ({first[:160]})"
    return line


def _signal_group(pid: int, signum: int) -> None:
    # Only ever called while `pid` is unreaped, so its process group id
    # cannot have been reused by anything that is not ours.
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_exited(pid: int, deadline: float) -> bool:
    """Wait until `pid` has exited, without reaping it. False at the deadline."""
    delay = 0.01
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.2)


def converse(backend: LocalBackend, run_id: str, echo: Callable[[str], None], timeout: float) -> None:
    """Take `run_id` over, talk to its agent, hand it back; say each ack."""

    def working() -> bool:
        return backend.control(run_id)["polls"]["n"] > 0 and any(
            e["message"].startswith("codex thread started") for e in backend.entries(run_id))

    try:
        backend.wait_for(working, timeout)
        echo(f"Run {run_id}: a person takes over, talks to the agent and hands it back:")
        for command, payload in _CONVERSATION:
            done = backend.wait_ack(run_id, backend.queue_command(run_id, command, payload), timeout)
            said = f" {payload['text']!r}" if payload else ""
            echo(f"  {command}{said} -> {done['status']}: {done['detail']}")
    except TimeoutError as exc:
        echo(f"  the conversation stopped: {exc}")


def _finish(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Wait for one bootstrap until the deadline, then stop it. Its whole
    process group is killed before it is reaped, so nothing of it survives.
    Returns True when it had to be stopped."""
    timed_out = not _wait_exited(proc.pid, deadline)
    if timed_out:
        _signal_group(proc.pid, signal.SIGTERM)
        _wait_exited(proc.pid, time.monotonic() + TERM_GRACE_S)
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()
    return timed_out


def run_demo(
    folder: Path,
    runs: int = 3,
    echo: Callable[[str], None] = print,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    command: Sequence[str] | None = None,
    take_over: bool = False,
) -> int:
    """Run `runs` mock runs in parallel against a local backend in `folder`.

    `command` replaces `python -m supervisor` (tests use a stand-in). With
    `take_over`, the first run is taken over, given an input and handed back
    (the control channel, docs/control-channel.md). Returns 0 when every run
    completed, else 1.
    """
    if runs < 1:
        raise ConfigError(f"The demo needs at least one run (got {runs}).")
    folder = Path(folder).expanduser().resolve()
    config = folder / "config.toml"
    logs = folder / "logs"
    home = folder / "home"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        config.write_text(demo_config_text(folder))
    except OSError as exc:
        raise ConfigError(
            f"Cannot write the demo folder {folder}: {exc.strerror or exc}. Choose another folder."
        ) from None
    prefix = list(command) if command is not None else [sys.executable, "-m", "supervisor"]

    with LocalBackend(folder / "backend.sqlite3") as backend:
        echo(f"Local backend at {backend.url}; starting {runs} mock run(s)…")
        created = [
            backend.create_run(_PROMPTS[i % len(_PROMPTS)], log_batch=i % 2 == 0)
            for i in range(runs)
        ]
        procs: dict[str, subprocess.Popen[bytes]] = {}
        timed_out: dict[str, bool] = {}
        try:
            for n, (run_id, token) in enumerate(created):
                argv = [*prefix, "--run-id", run_id, "--config", str(config), "--server", backend.url]
                env = bootstrap_env(os.environ, token, home)
                if take_over and n == 0:
                    env["BOOTSTRAP_MOCK_WORK_S"] = str(_TAKE_OVER_WORK_S)
                with open(logs / f"{run_id}.log", "wb") as log:
                    procs[run_id] = subprocess.Popen(
                        argv,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        # Own process group: the demo can stop a run and all it started.
                        start_new_session=True,
                    )
            deadline = time.monotonic() + timeout
            if take_over:
                converse(backend, created[0][0], echo, min(60.0, timeout))
            for run_id, proc in procs.items():
                timed_out[run_id] = _finish(proc, deadline)
        finally:
            # Interrupted (Ctrl-C) or failed to start one: stop whatever runs.
            for run_id, proc in procs.items():
                if run_id not in timed_out:
                    timed_out[run_id] = _finish(proc, time.monotonic())

        results = [
            DemoRun(
                run_id=run_id,
                state=backend.run(run_id)["state"],
                reason=backend.run(run_id)["reason"],
                entries=backend.entry_count(run_id),
                artifacts=len(backend.artifacts(run_id)),
                exit_code=None if timed_out[run_id] else procs[run_id].returncode,
                timed_out=timed_out[run_id],
            )
            for run_id, _ in created
        ]

    echo("Runs:")
    for result in results:
        echo(outcome_line(result))
    echo(f"Database:   {folder / 'backend.sqlite3'}  (sqlite3; tables runs, entries, artifacts, heartbeats, "
         "control_commands)")
    echo(f"Workspaces: {folder / 'workspaces'}")
    echo(f"Logs:       {logs}  (what each bootstrap printed)")
    echo(f"Config:     {config}")
    ok = all(r.state == "complete" for r in results)
    echo("All runs completed." if ok else f"Some runs did not complete: see their logs in {logs}.")
    return 0 if ok else 1
