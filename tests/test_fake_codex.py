"""The fake `codex` (tests/fake_codex) and the built-in mock agent, run as
real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faultkit import alive, shape_pids, wait_until
from workers.common.redact import Redactor
from workers.log_entries import codex_entry, encode_entry, thread_id_of, token_usage

FAKE = Path(__file__).resolve().parents[1] / "tests" / "fake_codex"
REPO = FAKE.parents[1]
EXEC = ["exec", "--json", "--cd", "{ws}", "--skip-git-repo-check", "--sandbox", "workspace-write", "-"]
TIMEOUT = 30
ALIAS_WARNING = b"WARNING: proceeding, even though we could not create PATH aliases: "
MODEL_WARNING = ("Model metadata for `mock-model` not found. Defaulting to fallback metadata; "
                 "this can degrade performance and cause issues.")
FAILURE = "unexpected status 500 Internal Server Error: something failed"


class Box:
    """A workspace, a CODEX_HOME and a log of the fake's invocations."""

    def __init__(self, root: Path) -> None:
        self.ws = root / "ws"
        self.home = root / "codex_home"
        self.log = root / "fake.jsonl"
        self.pidfile = root / "child.pid"
        self.ws.mkdir()
        self.home.mkdir()

    def env(self, mode: str = "ok", **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKE_CODEX_", "FLYWHEEL_"))}
        env.update(CODEX_HOME=str(self.home), FAKE_CODEX_LOG=str(self.log), FAKE_CODEX_MODE=mode,
                   FAKE_CODEX_PIDFILE=str(self.pidfile), FLYWHEEL_WORKSPACE=str(self.ws),
                   FLYWHEEL_RUN_ID="run-1")
        env.update(extra)
        return env

    def args(self, template: list[str], **values: str) -> list[str]:
        return [a.format(ws=self.ws, **values) for a in template]

    def run(self, args: list[str], mode: str = "ok", stdin: bytes | None = b"do the task\n",
            **extra: str) -> subprocess.CompletedProcess[bytes]:
        kwargs: dict[str, Any] = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
        return subprocess.run([str(FAKE), *args], capture_output=True, timeout=TIMEOUT,
                              env=self.env(mode, **extra), cwd=self.ws.parent, **kwargs)

    def exec(self, mode: str = "ok", **extra: str) -> subprocess.CompletedProcess[bytes]:
        return self.run(self.args(EXEC), mode, **extra)

    def resume(self, thread_id: str, mode: str = "ok") -> subprocess.CompletedProcess[bytes]:
        args = ["exec", "--json", "--skip-git-repo-check", "--sandbox", "workspace-write", "--cd", str(self.ws),
                "resume", thread_id, "Write flywheel_artifacts.json now."]
        return self.run(args, mode, stdin=None)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(ln) for ln in self.log.read_text().splitlines()]

    def popen(self, mode: str, **extra: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([str(FAKE), *self.args(EXEC)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self.env(mode, **extra), cwd=self.ws.parent)
        assert proc.stdin is not None
        proc.stdin.write(b"prompt\n")
        proc.stdin.close()
        return proc


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=TIMEOUT)
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream:
                stream.close()


def events(stdout: bytes) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in stdout.splitlines()]


def stderr_text(done: subprocess.CompletedProcess[bytes]) -> bytes:
    """stderr without the PATH-aliases warning (CODEX_HOME is under /tmp here)."""
    return b"".join(ln for ln in done.stderr.splitlines(keepends=True) if not ln.startswith(ALIAS_WARNING))


def read_until(proc: subprocess.Popen[bytes], predicate: Any) -> list[bytes]:
    """Lines of stdout up to and including the first that matches (EOF fails)."""
    assert proc.stdout is not None
    seen = []
    for raw in proc.stdout:
        seen.append(raw)
        if predicate(raw):
            return seen
    raise AssertionError(f"stdout ended before the expected line; saw {seen[-3:]!r}")


# ------------------------------------------------------------ simple commands


def test_version(box: Box) -> None:
    done = box.run(["--version"], stdin=None)
    assert (done.returncode, done.stdout) == (0, b"codex-cli 0.169.0\n")


def test_path_alias_warning_comes_first_when_codex_home_is_under_the_temp_dir(box: Box) -> None:
    done = box.run(["--version"], stdin=None)
    [line] = done.stderr.splitlines()
    assert line.startswith(ALIAS_WARNING + b"Refusing to create helper binaries under temporary dir")
    assert str(box.home).encode() in line
    clap = box.run(["frobnicate"], stdin=None)
    assert clap.stderr.startswith(ALIAS_WARNING), "printed before the arguments are parsed"
    elsewhere = box.run(["--version"], stdin=None, TMPDIR=str(box.ws))  # home is not under this temp dir
    assert elsewhere.stderr == b""


def test_login_status(box: Box) -> None:
    ok = box.run(["login", "status"], stdin=None)
    assert ok.returncode == 0 and b"Logged in using an API key" in ok.stderr and ok.stdout == b""
    out = box.run(["login", "status"], stdin=None, FAKE_CODEX_LOGGED_OUT="1", OPENAI_API_KEY="sk-x")
    assert out.returncode == 1 and stderr_text(out).strip() == b"Not logged in"


def test_refuses_a_missing_codex_home(box: Box, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    done = box.run(box.args(EXEC), CODEX_HOME=str(missing))
    assert done.returncode == 1 and done.stdout == b""
    why = f'CODEX_HOME points to "{missing}", but that path does not exist'.encode()
    assert done.stderr.splitlines() == [ALIAS_WARNING + why, b"Error loading configuration: " + why]


# ------------------------------------------------------------ exec


def test_exec_prints_codex_shaped_jsonl_and_writes_the_manifest(box: Box) -> None:
    done = box.exec()
    assert done.returncode == 0, done.stderr
    lines = events(done.stdout)  # every stdout line is JSON
    assert lines[0]["type"] == "thread.started"
    uuid.UUID(lines[0]["thread_id"])
    assert lines[1] == {"type": "item.completed", "item": {"id": "item_0", "type": "error", "message": MODEL_WARNING}}
    assert lines[2] == {"type": "turn.started"}
    assert lines[-1]["type"] == "turn.completed"
    assert set(lines[-1]["usage"]) == {"input_tokens", "cached_input_tokens", "cache_write_input_tokens",
                                       "output_tokens", "reasoning_output_tokens"}
    assert lines[-1]["usage"]["input_tokens"] > 0
    commands = [e["item"]["command"] for e in lines if e["type"] == "item.completed"
                and e["item"]["type"] == "command_execution"]
    assert commands[:2] == ["/bin/bash -lc ls", "/bin/bash -lc 'python3 --version'"]
    kinds = {(e["type"], e.get("item", {}).get("type")) for e in lines}
    assert {("item.started", "command_execution"), ("item.completed", "command_execution"),
            ("item.completed", "reasoning"), ("item.completed", "agent_message")} <= kinds
    manifest = json.loads((box.ws / "flywheel_artifacts.json").read_text())
    assert manifest == [{"artifact_type": "text", "payload": {"path": "report.md", "title": "Fake Codex report"}}]
    assert (box.ws / "report.md").read_text().startswith("# Fake Codex report")
    assert stderr_text(done) == b"", "with --json only the PATH-aliases warning goes to stderr"
    [record] = box.records()
    assert record["argv"] == box.args(EXEC)
    assert (record["subcommand"], record["stdin"], record["prompt"]) == ("exec", "pipe", "do the task\n")
    assert record["env"]["FLYWHEEL_RUN_ID"] == "run-1" and record["has_run_token"] is False


def test_every_line_maps_to_an_entry(box: Box) -> None:
    done = box.exec()
    entries = [codex_entry(raw, Redactor()) for raw in done.stdout.splitlines(keepends=True)]
    kinds = [e.extra["run_event_kind"] for e in entries]
    assert kinds[:3] == ["codex_event", "warning", "codex_event"]
    assert (entries[1].level, entries[1].message) == ("warning", MODEL_WARNING)
    assert "command_started" in kinds and "command_finished" in kinds
    first = entries[0].extra["event"]
    assert entries[0].message == f"codex thread started ({thread_id_of(first)})"
    assert token_usage(entries[-1].extra["event"]) == (24763, 122)


def test_stdin_is_read_to_eof_even_with_the_prompt_as_an_argument(box: Box, procs: list) -> None:
    args = box.args(["exec", "--json", "--cd", "{ws}", "--skip-git-repo-check", "a prompt argument"])
    proc = subprocess.Popen([str(FAKE), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=box.env())
    procs.append(proc)
    assert proc.stdin is not None
    proc.stdin.write(b"x" * 100_000)
    proc.stdin.flush()
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.5)  # still reading: stdin is open
    proc.stdin.close()
    assert proc.wait(timeout=TIMEOUT) == 0
    [record] = box.records()
    assert record["stdin_bytes"] == 100_000 and record["prompt"] == "a prompt argument"


def test_empty_prompt_on_stdin_is_an_error(box: Box) -> None:
    done = box.run(box.args(EXEC), stdin=b"")
    assert done.returncode == 1 and b"No prompt provided via stdin." in done.stderr


def test_no_model_warning_for_a_known_model(box: Box) -> None:
    base = ["exec", "--json", "--cd", str(box.ws), "--skip-git-repo-check"]
    for args in ([*base, "-m", "gpt-5", "-"], ["-c", "model=gpt-5", *base, "-"], [*base, "-c", 'model="o3"', "-"]):
        done = box.run(args)
        assert done.returncode == 0
        lines = events(done.stdout)
        assert lines[1] == {"type": "turn.started"}, args
        assert lines[2]["item"]["id"] == "item_0"
    (box.home / "config.toml").write_text('model = "my-local-model"\n')
    named = events(box.exec().stdout)[1]["item"]["message"]
    assert named.startswith("Model metadata for `my-local-model` not found.")


def test_without_json_only_the_last_message_goes_to_stdout(box: Box) -> None:
    done = box.run(["exec", "--cd", str(box.ws), "--skip-git-repo-check", "-"])
    assert done.returncode == 0
    assert done.stdout == b"Done. I wrote report.md and listed it in flywheel_artifacts.json.\n"
    assert b"session id:" in done.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["exec", "--json", "--bogus", "-"], b"unexpected argument '--bogus' found"),
        (["exec", "--json", "--sandbox", "loose", "-"], b"invalid value 'loose' for '--sandbox <SANDBOX_MODE>'"),
        (["exec", "--json", "--cd"], b"a value is required for '--cd <DIR>'"),
        (["exec", "--cd", "a", "--cd", "b", "-"], b"cannot be used multiple times"),
        (["exec", "--json", "-", "extra"], b"unexpected argument 'extra' found"),
        (["exec", "--full-auto", "--dangerously-bypass-approvals-and-sandbox", "-"], b"cannot be used with"),
        (["exec", "--json", "--skip-git-repo-check", "resume", "--cd", "/tmp", "t", "p"],
         b"unexpected argument '--cd' found"),
        (["exec", "--json", "--skip-git-repo-check", "resume", "--sandbox", "read-only", "t", "p"],
         b"unexpected argument '--sandbox' found"),
        (["exec", "resume", "t", "p", "q"], b"unexpected argument 'q' found"),
        (["frobnicate"], b"unrecognized subcommand 'frobnicate'"),
    ],
)
def test_bad_arguments_exit_2_like_clap(box: Box, args: list[str], message: bytes) -> None:
    done = box.run(args, stdin=None)
    assert done.returncode == 2
    assert stderr_text(done).startswith(b"error: ") and message in done.stderr
    assert done.stdout == b""


def test_accepted_flag_spellings(box: Box) -> None:
    args = ["exec", "--experimental-json", f"--cd={box.ws}", "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox", "-c", "model_reasoning_effort=high", "-m", "gpt-5", "-"]
    assert box.run(args).returncode == 0


def test_outside_a_git_repo_without_skip_flag(box: Box) -> None:
    done = box.run(["exec", "--json", "--cd", str(box.ws), "-"])
    assert done.returncode == 1 and b"--skip-git-repo-check was not specified" in done.stderr


def test_unknown_mode_is_refused(box: Box) -> None:
    done = box.exec("ok,frobnicate")
    assert done.returncode == 2 and b"frobnicate" in done.stderr


# ------------------------------------------------------------ resume


def first_thread(done: subprocess.CompletedProcess[bytes]) -> str:
    return events(done.stdout)[0]["thread_id"]


def test_resume_keeps_the_thread_id_and_writes_the_manifest(box: Box) -> None:
    first = box.exec("no_manifest")
    assert first.returncode == 0
    assert not (box.ws / "flywheel_artifacts.json").exists()
    thread = first_thread(first)
    again = box.resume(thread, "no_manifest")
    assert again.returncode == 0, again.stderr
    lines = events(again.stdout)
    assert lines[0] == {"type": "thread.started", "thread_id": thread}
    assert lines[1]["item"]["type"] == "error" and lines[2] == {"type": "turn.started"}
    assert lines[-1]["type"] == "turn.completed"
    assert json.loads((box.ws / "flywheel_artifacts.json").read_text())[0]["artifact_type"] == "text"
    record = box.records()[1]
    assert (record["subcommand"], record["stdin"], record["thread_id"]) == ("exec resume", "devnull", thread)
    assert record["prompt"] == "Write flywheel_artifacts.json now."
    assert record["argv"][-3:] == ["resume", thread, "Write flywheel_artifacts.json now."]


def test_resume_needs_the_session_in_the_same_codex_home(box: Box) -> None:
    thread = str(uuid.uuid4())
    done = box.resume(thread)
    assert done.returncode == 1 and done.stdout == b""
    assert stderr_text(done) == (b"Error: thread/resume: thread/resume failed: no rollout found for thread id "
                                 + thread.encode() + b" (code -32600)\n")


def test_resume_usage_line(box: Box) -> None:
    done = box.run(["exec", "resume", "t", "p", "q"], stdin=None)
    assert b"Usage: codex exec resume <SESSION_ID> [PROMPT]" in done.stderr


def test_resume_fails_and_never_manifest(box: Box) -> None:
    thread = first_thread(box.exec("no_manifest"))
    failed = box.resume(thread, "resume_fails")
    assert failed.returncode == 1 and stderr_text(failed) == b""
    message = "unexpected status 500 Internal Server Error: resume failed"
    assert events(failed.stdout)[-2:] == [{"type": "error", "message": message},
                                          {"type": "turn.failed", "error": {"message": message}}]
    never = box.resume(thread, "never_manifest")
    assert never.returncode == 0
    assert not (box.ws / "flywheel_artifacts.json").exists()


def test_malformed_manifest(box: Box) -> None:
    assert box.exec("malformed_manifest").returncode == 0
    assert (box.ws / "flywheel_artifacts.json").read_bytes() == b'[{"artifact_type":'


def test_manifest_json_is_written_verbatim(box: Box) -> None:
    text = '[{"artifact_type": "text", "payload": {"path": "../outside.txt"}}]'
    assert box.exec("manifest_json", FAKE_CODEX_MANIFEST=text).returncode == 0
    assert (box.ws / "flywheel_artifacts.json").read_text() == text


# ------------------------------------------------------------ failures


def test_exit_code_mode(box: Box) -> None:
    done = box.exec("exit=3")
    assert done.returncode == 3
    assert stderr_text(done) == b"", "the real one says why on stdout only"
    assert events(done.stdout)[-2:] == [{"type": "error", "message": FAILURE},
                                        {"type": "turn.failed", "error": {"message": FAILURE}}]
    assert "something failed" in FAILURE  # what the bootstrap tests look for in the run's reason
    assert (box.ws / "flywheel_artifacts.json").exists()  # artifacts made before failing


def test_crash_is_a_sigkill_mid_line(box: Box) -> None:
    done = box.exec("crash")
    assert done.returncode == -signal.SIGKILL
    assert not done.stdout.endswith(b"\n")
    assert json.loads(done.stdout.splitlines()[0])["type"] == "thread.started"


def test_sleep_dies_by_sigterm(box: Box, procs: list) -> None:
    proc = box.popen("sleep=60")
    procs.append(proc)
    read_until(proc, lambda raw: b"/bin/bash -lc 'sleep 60'" in raw)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == -signal.SIGTERM  # killed by the signal, not exit 143


def test_sigint_exits_130(box: Box, procs: list) -> None:
    proc = box.popen("sleep=60")
    procs.append(proc)
    read_until(proc, lambda raw: b"sleep 60" in raw)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=5) == 130


RECONNECT = "Reconnecting... waiting for network (Connection failed: error sending request)"


def test_hang_repeats_reconnect_errors_until_terminated(box: Box, procs: list) -> None:
    proc = box.popen("hang=0.01")
    procs.append(proc)
    count = 0

    def third_reconnect(raw: bytes) -> bool:
        nonlocal count
        count += b"Reconnecting" in raw
        return count == 3

    lines = read_until(proc, third_reconnect)
    assert json.loads(lines[0])["type"] == "thread.started"
    errors = [json.loads(raw) for raw in lines if raw.startswith(b'{"type":"error"')]
    assert errors == [{"type": "error", "message": RECONNECT}] * 3
    entry = codex_entry(lines[-1], Redactor())
    assert (entry.level, entry.extra["run_event_kind"]) == ("warning", "warning")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == -signal.SIGTERM


def test_ignore_sigterm_needs_sigkill(box: Box, procs: list) -> None:
    proc = box.popen("hang,ignore_sigterm")
    procs.append(proc)
    read_until(proc, lambda raw: b"Reconnecting" in raw)
    proc.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.5)
    proc.kill()
    assert proc.wait(timeout=5) == -signal.SIGKILL


def test_spawn_child_in_a_session_of_its_own_ended_on_exit(box: Box, procs: list) -> None:
    proc = box.popen("spawn_child,sleep=30")
    procs.append(proc)
    read_until(proc, lambda raw: b"sleep 30" in raw)
    child = int(box.pidfile.read_text())
    [record] = box.records()
    # Like the real Codex's commands: a signal to Codex's group misses it.
    assert os.getsid(child) == child != record["pgid"]
    proc.kill()
    os.kill(child, signal.SIGKILL)


def test_shapes_leave_the_setsid_daemon_after_a_normal_exit(box: Box) -> None:
    done = box.exec("shapes")
    assert done.returncode == 0
    shapes = shape_pids(box.pidfile)
    nohup_job, daemon, foreground = (shapes[name] for name in ("nohup", "setsid", "foreground"))
    try:
        assert os.getsid(daemon) == daemon, "the daemon called setsid itself"
        # The real Codex ends its commands' groups on a normal exit, not the daemon.
        wait_until(lambda: not alive(nohup_job) and not alive(foreground), 5, "the command's group to end")
        assert alive(daemon)
    finally:
        for pid in (nohup_job, daemon, foreground):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ------------------------------------------------------------ output volume and shape


def test_lines_mode(box: Box) -> None:
    done = box.exec("lines=5000")
    assert done.returncode == 0
    lines = events(done.stdout)
    assert len(lines) >= 5000
    assert sum(1 for e in lines if e.get("item", {}).get("id", "").startswith("item_l")) == 5000


def test_print_token_then_redaction(box: Box) -> None:
    token = "tok-" + uuid.uuid4().hex
    done = box.exec("print_token", FLYWHEEL_RUN_TOKEN=token)
    assert token.encode() in done.stdout
    redactor = Redactor.of(token)
    bodies = b"".join(encode_entry("t", codex_entry(raw, redactor), i)
                      for i, raw in enumerate(done.stdout.splitlines()))
    assert token.encode() not in bodies and b"The run token is ***" in bodies
    assert box.records()[0]["has_run_token"] is True
    assert token not in box.log.read_text()


def test_big_line_has_no_trailing_newline(box: Box) -> None:
    size = 3_000_000
    done = box.exec(f"big_line={size}")
    assert done.returncode == 0
    last = done.stdout.rsplit(b"\n", 1)[1]
    assert len(last) == size
    entry = codex_entry(last, Redactor())
    assert entry.extra["event_truncated"] and len(encode_entry("t", entry, 1)) < 64 * 1024


def test_big_json_keeps_head_and_tail_like_the_real_one(box: Box) -> None:
    size = 1_500_000
    done = box.exec(f"big_json={size}")
    [big] = [raw for raw in done.stdout.splitlines(keepends=True) if len(raw) > 100_000]
    item = json.loads(big)["item"]
    expected = ("command_execution", "/bin/bash -lc 'cat huge.log'", 0)
    assert (item["type"], item["command"], item["exit_code"]) == expected
    output = item["aggregated_output"]
    assert len(output.encode()) == 1024 * 1024  # 512 KiB of head, 512 KiB of tail
    assert output.startswith("line 1 ") and "line 12000 " not in output  # the middle is gone, unmarked
    small = events(box.exec("big_json=1000").stdout)
    [kept] = [e["item"]["aggregated_output"] for e in small if "cat huge.log" in e.get("item", {}).get("command", "")
              and e["type"] == "item.completed"]
    assert len(kept) == 1000 and kept.startswith("line 1 ")


def test_binary_mode_output_becomes_clean_messages(box: Box) -> None:
    done = box.exec("binary")
    assert done.returncode == 0
    raw = done.stdout
    assert b"\xff" in raw and b"\x00" in raw and b"\x1b[31m" in raw and b"\r" in raw
    entries = [codex_entry(ln, Redactor()) for ln in raw.splitlines()]
    for entry in entries:
        assert not any(ch in entry.message for ch in "\x1b\r\x00\x07")
        encode_entry("t", entry, 1)
    messages = [e.message for e in entries]
    assert "red flood" in messages
    assert "nulbytesinsidethis line" in messages
    assert "link text" in messages


# ------------------------------------------------------------ the mock agent


def mock(args: list[str], cwd: Path, stdin: bytes | None, **env: str) -> subprocess.CompletedProcess[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    full_env.update(env, PYTHONPATH=str(REPO))
    kwargs: dict[str, Any] = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run([sys.executable, "-m", "supervisor.mock_agent", *args], capture_output=True,
                          timeout=TIMEOUT, cwd=cwd, env=full_env, **kwargs)


def test_mock_agent_run_and_resume(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    prompt = b"You are a Flywheel engineer.\n\nTask Description:\nTrain a tiny model\n"
    started = time.monotonic()
    done = mock(["exec", "--json", "--cd", str(ws), "--skip-git-repo-check", "--sandbox", "workspace-write", "-"],
                tmp_path, prompt, FLYWHEEL_WORKSPACE=str(ws), FLYWHEEL_RUN_ID="run-7")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < TIMEOUT
    lines = events(done.stdout)
    thread = lines[0]["thread_id"]
    assert lines[0]["type"] == "thread.started" and lines[-1]["type"] == "turn.completed"
    manifest = json.loads((ws / "flywheel_artifacts.json").read_text())
    assert manifest == [{"artifact_type": "text", "payload": {"path": "mock_report.md", "title": "Mock agent report"}}]
    report = (ws / "mock_report.md").read_text()
    assert "Train a tiny model" in report and "run-7" in report
    entries = [codex_entry(raw, Redactor()) for raw in done.stdout.splitlines()]
    assert [e.extra["run_event_kind"] for e in entries].count("command_started") == 1

    (ws / "flywheel_artifacts.json").unlink()
    again = mock(["exec", "--json", "--skip-git-repo-check", "--cd", str(ws), "resume", thread, "fix"],
                 tmp_path, None)
    assert again.returncode == 0, again.stderr
    assert events(again.stdout)[0] == {"type": "thread.started", "thread_id": thread}
    assert (ws / "flywheel_artifacts.json").exists()


def test_mock_agent_rejects_cd_after_resume(tmp_path: Path) -> None:
    done = mock(["exec", "--json", "resume", "--cd", str(tmp_path), "t", "p"], tmp_path, None)
    assert done.returncode == 2 and b"unexpected argument '--cd'" in done.stderr
