"""One run end to end: the real command, the real local backend on loopback,
the fake codex (tests/fake_codex) on PATH."""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from supervisor.local_backend import LocalBackend
from tests.conftest import Env
from tests.faultkit import finish, wait_until
from tests.loopback import serving


def start_run(backend: LocalBackend, env: Env, **payload: object) -> tuple[str, str, Path]:
    run_id, token = backend.create_run(prompt="Write a report.", **payload)
    return run_id, token, env.config()


def bootstrap(env: Env, backend: LocalBackend, run_id: str, token: str, config: Path, *extra_args: str,
              mode: str = "ok", **extra_env: str):
    return env.run("--run-id", run_id, "--config", str(config), "--server", backend.url, *extra_args,
                   extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": mode, **extra_env})


def codex_lines(env: Env, run_id: str) -> list[bytes]:
    return (env.state(run_id) / "codex.out").read_bytes().splitlines()


def test_happy_path_2000_lines_in_order_with_artifacts(env: Env, backend: LocalBackend) -> None:
    run_id, token, config = start_run(backend, env)
    result = bootstrap(env, backend, run_id, token, config, mode="lines=2000")
    assert result.returncode == 0, result.stderr
    run = backend.run(run_id)
    assert run["state"] == "complete"
    entries = backend.entries(run_id)
    seqs = [e["extra"]["seq"] for e in entries]
    assert seqs == list(range(1, len(entries) + 1)), "entries arrive once each, in seq order"
    codex = [e for e in entries if e["extra"]["run_event_source"] == "codex"]
    assert len(codex) == len(codex_lines(env, run_id)) >= 2000
    assert [json.dumps(e["extra"]["event"], sort_keys=True) for e in codex] == [
        json.dumps(json.loads(line), sort_keys=True) for line in codex_lines(env, run_id)]
    messages = [e["message"] for e in entries]
    assert messages.index("codex exec launched") < messages.index("codex exec exited with code 0")
    artifacts = backend.artifacts(run_id)
    assert artifacts and artifacts[0]["artifact_type"] == "text"
    assert artifacts[0]["payload"]["content"], "the file named by the artifact is embedded"
    assert backend.heartbeats(run_id), "heartbeats were sent"
    assert (env.workspace(run_id) / "flywheel_prompt.txt").read_text().count("Task Description:") == 1


def test_batch_mode_uses_batch_endpoint(env: Env, backend: LocalBackend) -> None:
    run_id, token, config = start_run(backend, env, log_batch=True)
    result = bootstrap(env, backend, run_id, token, config, mode="lines=500")
    assert result.returncode == 0, result.stderr
    counts = backend.request_counts(run_id)
    assert counts.get("logs", 0) == 0 and counts.get("logs_batch", counts.get("batch", 0)) > 0
    seqs = [e["extra"]["seq"] for e in backend.entries(run_id)]
    assert seqs == list(range(1, len(seqs) + 1))


def test_exact_codex_command_line_and_stdin(env: Env, backend: LocalBackend) -> None:
    run_id, token, config = start_run(backend, env)
    log = env.tmp / "fake_codex.jsonl"
    result = bootstrap(env, backend, run_id, token, config, FAKE_CODEX_LOG=str(log))
    assert result.returncode == 0, result.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    exec_call = next(c for c in calls if "exec" in c["argv"])
    ws = str(env.workspace(run_id))
    assert exec_call["argv"][exec_call["argv"].index("exec"):] == [
        "exec", "--json", "--cd", ws, "--skip-git-repo-check", "--sandbox", "workspace-write", "-"]


def test_nonzero_exit_reports_error_with_code_and_stderr_tail(env: Env, backend: LocalBackend) -> None:
    run_id, token, config = start_run(backend, env)
    result = bootstrap(env, backend, run_id, token, config, mode="exit=3")
    assert result.returncode == 1
    run = backend.run(run_id)
    assert run["state"] == "error"
    assert run["reason"].startswith("codex exit code 3") and "something failed" in run["reason"]
    assert "Traceback" not in result.stderr


def test_codex_killed_by_signal_reports_the_signal(env: Env, backend: LocalBackend) -> None:
    run_id, token, config = start_run(backend, env)
    result = bootstrap(env, backend, run_id, token, config, mode="crash")
    assert result.returncode == 1
    assert "SIGKILL" in backend.run(run_id)["reason"]


def test_no_manifest_resumes_then_completes(env: Env, backend: LocalBackend) -> None:
    run_id, token, config = start_run(backend, env)
    log = env.tmp / "fake_codex.jsonl"
    result = bootstrap(env, backend, run_id, token, config, mode="no_manifest", FAKE_CODEX_LOG=str(log))
    assert result.returncode == 0, result.stderr
    assert backend.run(run_id)["state"] == "complete"
    assert backend.artifacts(run_id)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    resume = next(c for c in calls if "resume" in c["argv"])
    argv = resume["argv"]
    assert argv.index("--cd") < argv.index("resume"), "exec flags go before resume"
    assert "flywheel_artifacts.json" in argv[-1]
    messages = [e["message"] for e in backend.entries(run_id)]
    assert sum(m == "codex exec launched" for m in messages) == 2


def test_resume_that_fails_completes_with_warning(env: Env, backend: LocalBackend) -> None:
    run_id, token, config = start_run(backend, env)
    result = bootstrap(env, backend, run_id, token, config, mode="no_manifest,resume_fails")
    assert result.returncode == 0, result.stderr
    assert backend.run(run_id)["state"] == "complete"
    warnings = [e["message"] for e in backend.entries(run_id) if e["level"] == "warning"]
    assert any("exit code 1" in w for w in warnings)


def test_malformed_manifest_warns_and_resumes(env: Env, backend: LocalBackend) -> None:
    run_id, token, config = start_run(backend, env)
    result = bootstrap(env, backend, run_id, token, config, mode="malformed_manifest,never_manifest")
    assert result.returncode == 0, result.stderr
    assert backend.run(run_id)["state"] == "complete"
    assert not backend.artifacts(run_id)
    warnings = [e["message"] for e in backend.entries(run_id) if e["level"] == "warning"]
    assert any("no artifacts" in w for w in warnings)


def test_409_already_claimed_exits_0(env: Env, backend: LocalBackend) -> None:
    run_id, token, config = start_run(backend, env)
    backend.set_faults(bootstrap_status={run_id: 409})
    result = bootstrap(env, backend, run_id, token, config)
    assert result.returncode == 0
    assert "already claimed" in result.stderr
    assert not backend.entries(run_id)


@pytest.mark.parametrize("status", [401, 403, 404])
def test_refused_bootstrap_exits_3(env: Env, backend: LocalBackend, status: int) -> None:
    run_id, token, config = start_run(backend, env)
    backend.set_faults(bootstrap_status={run_id: status})
    result = bootstrap(env, backend, run_id, token, config)
    assert result.returncode == 3
    assert f"HTTP {status}" in result.stderr and "Traceback" not in result.stderr


def test_wrong_token_exits_3_without_printing_it(env: Env, backend: LocalBackend) -> None:
    run_id, _, config = start_run(backend, env)
    result = bootstrap(env, backend, run_id, "not-the-real-token-123", config)
    assert result.returncode == 3
    assert "not-the-real-token-123" not in result.stderr + result.stdout


def test_backend_unreachable_exits_3(env: Env) -> None:
    config = env.config()
    result = env.run("--run-id", "r1", "--config", str(config), "--server", "http://127.0.0.1:9",
                     extra={"FLYWHEEL_RUN_TOKEN": "tok-abcdef", "FLYWHEEL_TIMING_FETCH_TRIES": "2"})
    assert result.returncode == 3
    assert "could not fetch" in result.stderr


def test_token_never_leaks(env: Env, backend: LocalBackend) -> None:
    secret_gh = "ghp_SECRETSECRETSECRET"
    run_id, token, config = start_run(backend, env, github_token=secret_gh, wandb_api_key="wandb-SECRET-key-42")
    result = bootstrap(env, backend, run_id, token, config, mode="print_token")
    assert result.returncode == 0, result.stderr
    shipped = json.dumps(backend.entries(run_id)) + json.dumps(backend.heartbeats(run_id))
    for secret in (token, secret_gh):
        assert secret not in result.stdout + result.stderr
        assert secret not in shipped
    assert "***" in shipped, "the token Codex printed was redacted, not dropped"
    state = env.state(run_id)
    for path in state.glob("*.log"):
        assert token not in path.read_text(errors="replace")
    assert state.stat().st_mode & 0o777 == 0o700
    for name in ("codex.out", "outbox.jsonl", "bootstrap.jsonl", "shipper.json"):
        assert (state / name).stat().st_mode & 0o777 == 0o600
    assert token not in (state / "outbox.jsonl").read_text(errors="replace")


def test_413_entry_replaced_by_placeholder(env: Env, backend: LocalBackend) -> None:
    run_id, token, config = start_run(backend, env)
    backend.set_faults(max_body_bytes=6000)
    result = bootstrap(env, backend, run_id, token, config, mode="big_line=20000")
    assert result.returncode == 0, result.stderr
    entries = backend.entries(run_id)
    dropped = [e for e in entries if e["extra"].get("dropped")]
    assert len(dropped) == 1
    extra = dropped[0]["extra"]
    assert dropped[0]["message"] == "Log entry dropped: too large"
    assert extra["drop_reason"] == "payload_too_large" and extra["message_bytes"] > 6000
    seqs = [e["extra"]["seq"] for e in entries]
    assert seqs == list(range(1, len(entries) + 1)), "the placeholder keeps the entry's seq"


def test_mock_mode_end_to_end(env: Env, backend: LocalBackend) -> None:
    run_id, token, config = start_run(backend, env)
    result = bootstrap(env, backend, run_id, token, config, BOOTSTRAP_MOCK_CODEX="1",
                       PATH="/usr/bin:/bin")
    assert result.returncode == 0, result.stderr
    assert backend.run(run_id)["state"] == "complete"
    assert backend.artifacts(run_id)
    kinds = {e["extra"]["run_event_kind"] for e in backend.entries(run_id)}
    assert {"command_started", "command_finished", "codex_event"} <= kinds


def test_artifact_outside_workspace_is_never_read(env: Env, backend: LocalBackend) -> None:
    run_id, token, config = start_run(backend, env)
    secret_file = env.tmp / "outside-secret.txt"
    secret_file.write_text("TOP-SECRET-CONTENT")
    ws = env.workspace(run_id)
    ws.mkdir(parents=True)
    (ws / "link.txt").symlink_to(secret_file)
    manifest = [{"artifact_type": "text", "payload": {"path": "link.txt"}},
                {"artifact_type": "text", "payload": {"path": str(secret_file)}},
                {"artifact_type": "text", "payload": {"path": "../outside-secret.txt"}},
                {"artifact_type": "text", "payload": {"content": "inline ok"}}]
    result = bootstrap(env, backend, run_id, token, config, mode="manifest_json",
                       FAKE_CODEX_MANIFEST=json.dumps(manifest))
    assert result.returncode == 0, result.stderr
    posted = json.dumps(backend.artifacts(run_id))
    assert "TOP-SECRET-CONTENT" not in posted
    assert "inline ok" in posted
    warnings = [e["message"] for e in backend.entries(run_id) if e["level"] == "warning"]
    assert sum("outside" in w for w in warnings) >= 3


@pytest.mark.parametrize("what", ["symlink", "fifo"])
def test_the_prompt_replaces_what_stands_at_its_name_never_writes_through_it(
        env: Env, backend: LocalBackend, what: str) -> None:
    # A reused workspace may hold what an earlier, sandboxed Codex left at the
    # prompt's name: a link out of the workspace must not be written through
    # (bootstrap is not sandboxed), and a FIFO must not block the run.
    run_id, token, config = start_run(backend, env)
    ws = env.workspace(run_id)
    ws.mkdir(parents=True)
    victim = env.tmp / "victim.txt"
    victim.write_text("PRECIOUS")
    if what == "symlink":
        (ws / "flywheel_prompt.txt").symlink_to(victim)
    else:
        os.mkfifo(ws / "flywheel_prompt.txt")
    result = bootstrap(env, backend, run_id, token, config)
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "PRECIOUS"
    prompt = ws / "flywheel_prompt.txt"
    assert prompt.is_file() and not prompt.is_symlink()
    assert "Write a report." in prompt.read_text()
    assert not [p.name for p in ws.iterdir() if p.name.endswith(".tmp")]


def test_a_folder_at_the_prompts_name_is_a_reported_error_naming_it(env: Env, backend: LocalBackend) -> None:
    run_id, token, config = start_run(backend, env)
    (env.workspace(run_id) / "flywheel_prompt.txt").mkdir(parents=True)
    result = bootstrap(env, backend, run_id, token, config)
    assert result.returncode == 1, result.stderr
    run = backend.run(run_id)
    assert run["state"] == "error"
    assert "flywheel_prompt.txt is a folder" in run["reason"]


def test_a_second_start_of_a_running_run_on_this_host_is_refused(
        env: Env, backend: LocalBackend) -> None:
    # Two starts sharing one state folder sent different entries under one seq
    # and two terminal reports; the local backend hands a claimed run out again.
    run_id, token, config = start_run(backend, env)
    gate = env.tmp / "codex-may-finish"
    first = env.start("--run-id", run_id, "--config", str(config), "--server", backend.url,
                      extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "gate", "FAKE_CODEX_GATE": str(gate)})
    try:
        wait_until(lambda: (env.state(run_id) / "codex.out").exists(), 60, "the first start's codex")
        codex_config = env.state(run_id) / "codex_home" / "config.toml"
        before = codex_config.read_bytes()
        other = env.config('model = "SECOND-START-MODEL"\n[flywheel]\nworkspace_instructions = "x"\n',
                           name="second.toml")
        second = bootstrap(env, backend, run_id, token, other, FLYWHEEL_TIMING_RUN_LOCK_WAIT="0.5")
        assert second.returncode == 2, second.stderr
        assert "already being run by another bootstrap on this machine" in second.stderr
        assert "Traceback" not in second.stderr
        assert codex_config.read_bytes() == before, "the running run's CODEX_HOME was rewritten"
    finally:
        gate.touch()
        code, err = finish(first)
    assert code == 0, err
    assert backend.run(run_id)["state"] == "complete"
    seqs = [e["extra"]["seq"] for e in backend.entries(run_id)]
    assert seqs == list(range(1, len(seqs) + 1))


def test_refused_entries_are_dropped_not_retried(env: Env, backend: LocalBackend) -> None:
    run_id, token, config = start_run(backend, env)
    backend.set_faults(status=400, status_count=3, paths=["/logs"])
    result = bootstrap(env, backend, run_id, token, config)
    assert result.returncode == 0, result.stderr
    seqs = [e["extra"]["seq"] for e in backend.entries(run_id)]
    assert len(seqs) == seqs[-1] - 3 and seqs == sorted(seqs)
    log = (env.state(run_id) / "worker-log-shipper.log").read_text()
    assert log.count("refused log entries") == 1
    # Said where the person looks, not only in the worker's log.
    assert f"run {run_id}: the backend refused 3 log entries; they were dropped" in result.stderr
    shown = env.run("logs", run_id)
    assert shown.stdout.splitlines()[-1] == f"-- {len(seqs):,} of {len(seqs) + 3:,} entries were shipped; " \
        "the backend refused 3 (dropped, not retried)"


def test_codex_timeout_stops_codex_and_reports_error(env: Env, backend: LocalBackend) -> None:
    from tests.faultkit import alive, codex_calls

    run_id, token, config = start_run(backend, env)
    log = env.tmp / "codex.jsonl"
    result = bootstrap(env, backend, run_id, token, config, "--codex-timeout", "1.5", mode="hang",
                       FAKE_CODEX_LOG=str(log))
    assert result.returncode == 1, result.stderr
    run = backend.run(run_id)
    assert run["state"] == "error" and run["reason"] == "codex timed out after 1.5 s"
    assert not alive(codex_calls(log)[0]["pid"])
    reconnecting = [e for e in backend.entries(run_id) if "Reconnecting" in e["message"]]
    assert reconnecting and all(e["level"] == "warning" for e in reconnecting)


def git(*args: str, cwd: Path | None = None) -> str:
    import subprocess

    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


def test_code_is_committed_and_pushed_to_the_run_branch(env: Env, backend: LocalBackend) -> None:
    bare = env.tmp / "remote.git"
    git("init", "--bare", "-b", "main", str(bare))
    seed = env.tmp / "seed"
    git("clone", str(bare), str(seed))
    (seed / "README.md").write_text("seed\n")
    git("add", "README.md", cwd=seed)
    git("commit", "-m", "seed", cwd=seed)
    git("push", "origin", "HEAD:main", cwd=seed)
    gh_token = "ghp_E2ETOKENE2ETOKEN"
    repo = {"repo_url": f"file://{bare}", "repo_owner": "o", "repo_name": "r",
            "branch_name": "flywheel/run-1", "base_branch": "main"}
    run_id, token, config = start_run(backend, env, repo_context=repo, github_token=gh_token)
    result = bootstrap(env, backend, run_id, token, config, mode="manifest_json",
                       FAKE_CODEX_MANIFEST='[{"artifact_type": "text", "payload": {"content": "inline"}}]')
    assert result.returncode == 0, result.stderr
    assert git("log", "-1", "--format=%s", "flywheel/run-1", cwd=bare).strip() == f"Flywheel experiment run: {run_id}"
    files = git("ls-tree", "-r", "--name-only", "flywheel/run-1", cwd=bare).split()
    assert "report.md" in files and "README.md" in files
    assert "flywheel_artifacts.json" not in files and "flywheel_prompt.txt" not in files
    ws = env.workspace(run_id)
    assert gh_token not in (ws / ".git" / "config").read_text()
    assert gh_token not in git("remote", "-v", cwd=ws)


def fetch_answers(body: bytes, post_status: int, posted: list[tuple[str, bytes]]) -> type[BaseHTTPRequestHandler]:
    """A backend that answers the fetch 200 with `body`, every POST with
    `post_status`, and keeps what was posted."""

    class Answers(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(200, body)

        def do_POST(self) -> None:
            posted.append((self.path, self.rfile.read(int(self.headers.get("Content-Length") or 0))))
            self._answer(post_status, b"{}")

        def _answer(self, status: int, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return Answers


@pytest.mark.parametrize(("body", "words"), [
    (b'{"payload": {"prompt": 5}}', 'expected {"payload": {"prompt"'),
    (b"\xff\xfe not json", "not JSON"),
    (b'{"payload": {"prompt": "a\\ud800"}}', "lone surrogate"),
])
def test_a_200_answer_that_is_no_payload_still_gets_the_runs_error_report(env: Env, body: bytes, words: str) -> None:
    # The backend answered the fetch, so it may hold the run as claimed: the
    # run must end with its one terminal report, not leave it claimed forever.
    posted: list[tuple[str, bytes]] = []
    with serving(fetch_answers(body, 200, posted)) as url:
        result = env.run("--run-id", "r1", "--config", str(env.config()), "--server", url,
                         extra={"FLYWHEEL_RUN_TOKEN": "tok-secret-123"})
    assert result.returncode == 1, result.stderr
    assert "not a bootstrap payload" in result.stderr and words in result.stderr
    assert "Traceback" not in result.stderr
    assert [path for path, _ in posted] == ["/runs/r1/error"]
    report = json.loads(posted[0][1])
    assert "not a bootstrap payload" in report["reason"]


def test_a_no_payload_run_whose_report_fails_too_asks_its_starter_to_report_it(env: Env) -> None:
    # Exit 70 is what the --runs pool reports a run for; the password of
    # --server is in neither the message nor the report.
    posted: list[tuple[str, bytes]] = []
    with serving(fetch_answers(b"not json", 500, posted)) as url:
        result = env.run("--run-id", "r1", "--config", str(env.config()), "--server",
                         url.replace("http://", "http://alice:hunter2pw@"),
                         extra={"FLYWHEEL_RUN_TOKEN": "tok-secret-123", "FLYWHEEL_TIMING_FLUSH_TIMEOUT": "1"})
    assert result.returncode == 70, result.stderr
    assert "could not report it either (HTTP 500)" in result.stderr
    assert posted and not any(b"hunter2pw" in body for _, body in posted)
    assert "hunter2pw" not in result.stderr


def test_valid_json_that_orjson_refuses_is_a_payload() -> None:
    from workers.common.backend_client import parse_payload

    assert parse_payload(b'\xef\xbb\xbf{"payload": {"prompt": "x", "seed": 18446744073709551616}}')["prompt"] == "x"
