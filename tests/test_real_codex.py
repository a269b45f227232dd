"""Integration tests with the *real* Codex CLI (npm `@openai/codex`, pinned 0.169.0),
fully offline: Codex talks to the scripted fake model server of
`tests/fake_model_server.py` on loopback, bootstrap talks to the local backend.

The binary is `FLYWHEEL_REAL_CODEX` (path to the codex executable), else the
default cache path of `.ci/install_codex.sh`; every test here is skipped, with the
reason, when neither exists. Run just these with `pytest -m real_codex`.

What this pins down about the real Codex (see the module docstring of
fake_model_server for the wire side): the exact `codex exec` / `codex exec …
resume` command lines bootstrap builds are accepted; the JSONL it prints (shapes
the fake codex must imitate) is shipped line for line; a 500 from the model makes
it exit 1; an unreachable model server makes it wait forever, which only
`--codex-timeout` ends.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor.local_backend import LocalBackend
from tests.conftest import Env
from tests.fake_model_server import Exec, Fail, FakeModelServer, Say, output_text, provider_toml

PINNED_VERSION = "0.169.0"
def default_codex_path() -> Path:
    """Where `.ci/install_codex.sh` puts the binary (a symlink to the native one)."""
    cache = Path(os.environ.get("FLYWHEEL_CI_CACHE") or Path.home() / ".cache" / "flywheel-ci")
    return cache / f"codex-{PINNED_VERSION}" / "codex"


def find_real_codex() -> tuple[Path | None, str]:
    """(path, "") for a usable binary, or (None, why not)."""
    configured = os.environ.get("FLYWHEEL_REAL_CODEX")
    path = Path(configured) if configured else default_codex_path()
    origin = "FLYWHEEL_REAL_CODEX" if configured else "the default install path"
    if not path.exists():
        return None, (f"real Codex not installed: {path} ({origin}) does not exist; "
                      "run .ci/install_codex.sh or set FLYWHEEL_REAL_CODEX")
    if not os.access(path, os.X_OK):
        return None, f"real Codex at {path} ({origin}) is not executable"
    return path.resolve(), ""


REAL_CODEX, SKIP_REASON = find_real_codex()

pytestmark = [
    pytest.mark.real_codex,
    pytest.mark.skipif(REAL_CODEX is None, reason=SKIP_REASON),
    pytest.mark.timeout(60),
]

# Safety net for every run: a Codex that waits on something that never comes is
# stopped and reported instead of hanging the test until pytest-timeout.
SAFETY_TIMEOUT = "40"


# ---------------------------------------------------------------- helpers


@pytest.fixture
def real(env: Env) -> Env:
    """The `env` fixture with the real Codex first on PATH instead of the fake."""
    assert REAL_CODEX is not None
    link = env.bin / "codex"
    link.unlink()
    link.symlink_to(REAL_CODEX)
    return env


def config_for(env: Env, model: FakeModelServer | str, sandbox: str = "workspace-write") -> Path:
    """A config.toml for one run: bootstrap's keys, the sandbox, the fake model
    provider, and the [flywheel] table (top-level keys before any table)."""
    base_url = model if isinstance(model, str) else model.base_url
    body = (
        f'workspace_dir = "{env.tmp}/ws/<run_id>"\n'
        f'sandbox_mode = "{sandbox}"\n'
        + provider_toml(base_url)
        + '[flywheel]\nworkspace_instructions = "Work in the workspace."\n'
        # Codex's sandbox turns each writable root's missing .git into an empty
        # read-only mount point: with /tmp a writable root, /tmp/.git appears and
        # every later test's tmp folder looks like part of a git repository.
        + '[sandbox_workspace_write]\nexclude_slash_tmp = true\nexclude_tmpdir_env_var = true\n'
    )
    return env.config(body)


def write_file(name: str, content: str) -> str:
    """A shell command writing `content` to `name`."""
    return f"printf '%s' {shlex.quote(content)} > {name}"


MANIFEST = json.dumps([{"artifact_type": "text", "payload": {"path": "report.txt"}}])
WRITE_REPORT_AND_MANIFEST = (
    write_file("report.txt", "the real codex wrote this report")
    + " && " + write_file('"$FLYWHEEL_WORKSPACE/flywheel_artifacts.json"', MANIFEST)
)


def run_bootstrap(env: Env, backend: LocalBackend, run_id: str, token: str, config: Path,
                  *args: str, timeout: str = SAFETY_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return env.run("--run-id", run_id, "--config", str(config), "--server", backend.url,
                   "--codex-timeout", timeout, *args,
                   extra={"FLYWHEEL_RUN_TOKEN": token}, timeout=55)


def codex_out_lines(env: Env, run_id: str) -> list[bytes]:
    return (env.state(run_id) / "codex.out").read_bytes().splitlines()


def codex_entries(backend: LocalBackend, run_id: str) -> list[dict[str, Any]]:
    return [e for e in backend.entries(run_id) if e["extra"]["run_event_source"] == "codex"]


def events(env: Env, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in codex_out_lines(env, run_id)]


def assert_every_line_delivered(env: Env, backend: LocalBackend, run_id: str) -> None:
    """One entry per line Codex printed, in order, and each event intact (or
    marked as cut, for lines too big to ship whole)."""
    entries = backend.entries(run_id)
    seqs = [e["extra"]["seq"] for e in entries]
    assert seqs == list(range(1, len(entries) + 1)), "each entry once, in seq order"
    lines = codex_out_lines(env, run_id)
    shipped = codex_entries(backend, run_id)
    assert len(shipped) == len(lines)
    for entry, line in zip(shipped, lines):
        event = json.loads(line)
        if entry["extra"].get("event_truncated"):
            assert entry["extra"]["event"]["type"] == event["type"]
        else:
            assert entry["extra"]["event"] == event


def leftover_processes(*markers: str) -> list[str]:
    """Live processes whose command line or environment mentions one of `markers`
    (the run's unique workspace path, say): Codex, its sandbox helpers, the
    commands it ran — these live in sessions of their own, outside Codex's group."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue  # a zombie holds nothing; its parent reaps it
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                environ = b""
        except OSError:
            continue
        if any(m.encode() in cmdline or m.encode() in environ for m in markers):
            found.append(f"{pid}: {cmdline[:200]!r}")
    return found


def wait_no_processes(*markers: str, timeout: float) -> list[str]:
    # Children die through parent-death signals, which the kernel delivers
    # asynchronously: give them a bounded moment.
    deadline = time.monotonic() + timeout
    while (left := leftover_processes(*markers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def closed_port() -> int:
    """A loopback port nobody listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------ tests


def test_model_writes_manifest_artifacts_posted_complete(real: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run(prompt="Write a short report.")
    with FakeModelServer([Exec(WRITE_REPORT_AND_MANIFEST), Say("Report written.")]) as model:
        result = run_bootstrap(real, backend, run_id, token, config_for(real, model))
    assert result.returncode == 0, result.stderr
    run = backend.run(run_id)
    assert run["state"] == "complete", run
    artifacts = backend.artifacts(run_id)
    assert [a["artifact_type"] for a in artifacts] == ["text"]
    assert artifacts[0]["payload"]["content"] == "the real codex wrote this report"

    # What Codex asked the model, and what it sent back after running the command.
    requests = model.response_requests()
    assert len(requests) == 2, [r.path for r in model.requests]
    first = requests[0]
    assert first.body["model"] == "mock-model" and first.body["stream"] is True
    assert "exec_command" in first.tool_names()
    user_texts = [part.get("text", "") for item in first.input_items if item.get("role") == "user"
                  for part in item.get("content", [])]
    assert any("Task Description:" in t and "Write a short report." in t for t in user_texts), \
        "the prompt went to Codex on stdin"
    outputs = requests[1].function_outputs()
    assert [o["call_id"] for o in outputs] == ["call_1_0"]
    assert "Process exited with code 0" in output_text(outputs[0])
    assert not model.errors

    # What Codex printed, shipped line for line.
    evs = events(real, run_id)
    types = [e["type"] for e in evs]
    assert types[0] == "thread.started" and types[-1] == "turn.completed"
    command = next(e["item"] for e in evs if e["type"] == "item.completed"
                   and e["item"]["type"] == "command_execution")
    assert command["exit_code"] == 0 and command["status"] == "completed"
    assert command["command"].startswith("/bin/bash -lc ")
    assert_every_line_delivered(real, backend, run_id)
    kinds = [e["extra"]["run_event_kind"] for e in codex_entries(backend, run_id)]
    assert "command_started" in kinds and "command_finished" in kinds
    messages = [e["message"] for e in backend.entries(run_id)]
    assert "Report written." in messages
    assert messages.count("codex exec launched") == 1
    assert "codex exec exited with code 0" in messages
    assert not any("unrecognized configuration" in json.dumps(e) for e in evs), \
        "bootstrap's own keys ([flywheel], workspace_dir) are kept out of Codex's config"
    warnings = [e["message"] for e in backend.entries(run_id) if e["level"] == "warning"]
    assert any("model_provider is 'mock'" in w for w in warnings), "login check: one warning, not an error"


def test_no_manifest_resumes_the_real_session_then_complete(real: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run(prompt="Do the work.")
    script = [Say("I did the work."), Exec(WRITE_REPORT_AND_MANIFEST), Say("Manifest written.")]
    with FakeModelServer(script) as model:
        result = run_bootstrap(real, backend, run_id, token, config_for(real, model))
    assert result.returncode == 0, result.stderr
    assert backend.run(run_id)["state"] == "complete"
    assert backend.artifacts(run_id)[0]["payload"]["content"] == "the real codex wrote this report"

    evs = events(real, run_id)
    threads = [e["thread_id"] for e in evs if e["type"] == "thread.started"]
    assert len(threads) == 2 and threads[0] == threads[1], "resume continues the same thread"
    launches = [e for e in backend.entries(run_id) if e["message"] == "codex exec launched"]
    assert len(launches) == 2
    resume_argv = launches[1]["extra"]["argv"]
    assert resume_argv[resume_argv.index("resume") + 1] == threads[0]

    # The resumed request carries the earlier conversation: it really is the session.
    requests = model.response_requests()
    assert len(requests) == 3
    history = requests[1].input_items
    texts = json.dumps(history)
    assert "I did the work." in texts, "the first turn's answer is in the resumed history"
    last_user = [i for i in history if i.get("role") == "user"][-1]
    assert "flywheel_artifacts.json" in json.dumps(last_user), "the fix prompt was sent"
    assert_every_line_delivered(real, backend, run_id)


def test_failing_command_then_model_500_is_error_with_exit_code(real: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    script = [Exec("echo about to fail; exit 3"), Fail(500)]
    with FakeModelServer(script) as model:
        result = run_bootstrap(real, backend, run_id, token, config_for(real, model))
    assert result.returncode == 1, result.stderr
    run = backend.run(run_id)
    assert run["state"] == "error"
    assert run["reason"].startswith("codex exit code 1"), run["reason"]
    assert len(model.response_requests()) == 2, "request_max_retries = 0: no retry of the 500"

    evs = events(real, run_id)
    failed = next(e["item"] for e in evs if e["type"] == "item.completed"
                  and e["item"]["type"] == "command_execution")
    assert failed["exit_code"] == 3 and failed["status"] == "failed"
    assert "about to fail" in failed["aggregated_output"]
    assert evs[-1]["type"] == "turn.failed" and evs[-1]["error"]["message"]
    entries = backend.entries(run_id)
    assert any(e["level"] == "error" and e["extra"]["run_event_kind"] == "error"
               and e["extra"]["run_event_source"] == "codex" for e in entries), "turn.failed is an error entry"
    assert "codex exec exited with code 1" in [e["message"] for e in entries]
    assert_every_line_delivered(real, backend, run_id)


def test_model_server_unreachable_times_out_and_leaves_no_process(real: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    config = config_for(real, f"http://127.0.0.1:{closed_port()}/v1")
    result = run_bootstrap(real, backend, run_id, token, config, timeout="4")
    assert result.returncode == 1, result.stderr
    run = backend.run(run_id)
    assert run["state"] == "error"
    assert "timed out" in run["reason"] and run["reason"].startswith("codex timed out after 4"), run["reason"]
    # Codex itself never gives up: it keeps printing reconnect notices.
    reconnects = [e for e in events(real, run_id) if e["type"] == "error"
                  and e["message"].startswith("Reconnecting...")]
    assert reconnects
    assert not wait_no_processes(str(real.workspace(run_id)), timeout=5)
    assert_every_line_delivered(real, backend, run_id)


def test_timeout_while_a_command_runs_leaves_no_process(real: Env, backend: LocalBackend) -> None:
    """The command Codex runs lives in a session of its own (sandbox helper,
    bwrap); stopping Codex must still take it down."""
    run_id, token = backend.create_run()
    sleeper = "sleep 987"  # a unique command line to look for
    with FakeModelServer([Exec(f"echo started; {sleeper}")]) as model:
        config = config_for(real, model)
        proc = real.start("--run-id", run_id, "--config", str(config), "--server", backend.url,
                          "--codex-timeout", "5", extra={"FLYWHEEL_RUN_TOKEN": token})
        try:
            # The check below must be able to see the command while it runs.
            deadline = time.monotonic() + 20
            while (not leftover_processes(sleeper) and proc.poll() is None
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            out = real.state(run_id) / "codex.out"
            assert leftover_processes(sleeper), (
                f"the model's command never started; bootstrap exit {proc.poll()}; codex printed:\n"
                + (out.read_text(errors="replace")[-3000:] if out.exists() else "(nothing)"))
            _, stderr = proc.communicate(timeout=40)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 1, stderr
    run = backend.run(run_id)
    assert run["state"] == "error" and run["reason"].startswith("codex timed out after 5"), run["reason"]
    assert not wait_no_processes(sleeper, str(real.workspace(run_id)), timeout=5)
    started = [e for e in events(real, run_id) if e["type"] == "item.started"]
    assert started and started[-1]["item"]["status"] == "in_progress"
    assert_every_line_delivered(real, backend, run_id)


def test_model_error_message_reaches_the_reason(real: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    with FakeModelServer([Fail(500, "model exploded")]) as model:
        result = run_bootstrap(real, backend, run_id, token, config_for(real, model))
    assert result.returncode == 1, result.stderr
    failed = [e for e in events(real, run_id) if e["type"] == "turn.failed"]
    assert failed
    reason = backend.run(run_id)["reason"]
    assert reason.startswith("codex exit code 1")
    assert failed[-1]["error"]["message"] in reason, reason


def test_command_printing_20000_lines_one_huge_jsonl_line(real: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    pad = "x" * 50
    # About 1.2 MB of output: more than the 1 MiB Codex keeps in aggregated_output.
    noisy = f"for i in $(seq 1 20000); do echo \"line $i {pad}\"; done"
    script = [Exec(noisy), Exec(WRITE_REPORT_AND_MANIFEST), Say("Done.")]
    with FakeModelServer(script) as model:
        result = run_bootstrap(real, backend, run_id, token, config_for(real, model))
    assert result.returncode == 0, result.stderr
    assert backend.run(run_id)["state"] == "complete"

    lines = codex_out_lines(real, run_id)
    big = max(lines, key=len)
    assert len(big) > 1_000_000, "one JSONL line holds the command's output"
    item = json.loads(big)["item"]
    output = item["aggregated_output"]
    assert item["type"] == "command_execution" and item["exit_code"] == 0
    # Codex keeps the head and the tail (512 KiB each) and drops the middle.
    assert "line 1 " in output and output.rstrip().endswith(f"line 20000 {pad}")
    assert "line 10000 " not in output
    assert_every_line_delivered(real, backend, run_id)
    shipped = codex_entries(backend, run_id)
    huge = next(e for e in shipped if e["extra"].get("event_truncated"))
    assert huge["extra"]["event"]["item"]["exit_code"] == 0
    assert len(huge["message"]) <= 4000 + len(" [truncated]")
    # The model was told of the truncation rather than flooded.
    tool_result = output_text(model.response_requests()[1].function_outputs()[0])
    assert len(tool_result) < 100_000


def test_danger_full_access_is_passed_as_the_bypass_flag(real: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    with FakeModelServer([Exec(WRITE_REPORT_AND_MANIFEST), Say("ok")]) as model:
        result = run_bootstrap(real, backend, run_id, token,
                               config_for(real, model, "danger-full-access"))
    assert result.returncode == 0, result.stderr
    assert backend.run(run_id)["state"] == "complete"
    argv = next(e for e in backend.entries(run_id) if e["message"] == "codex exec launched")["extra"]["argv"]
    assert "--dangerously-bypass-approvals-and-sandbox" in argv and "--sandbox" not in argv
