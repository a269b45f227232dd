"""Every wrong value a user can give: one clear message, the right exit status,
no traceback, and nothing sent to the backend (the server given here is a
closed port, so any request would turn exit 2 into exit 3)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from supervisor.local_backend import LocalBackend
from tests.conftest import Env

CLOSED = "http://127.0.0.1:9"
OK_FLYWHEEL = '[flywheel]\nworkspace_instructions = "x"\n'


def run_with(env: Env, config_body: str | None, *args: str, run_id: str = "run-1", token: str = "tok-123456",
             **extra: str):
    config = env.config(config_body) if config_body is not None else env.tmp / "missing.toml"
    return env.run("--run-id", run_id, "--config", str(config), "--server", CLOSED, *args,
                   extra={"FLYWHEEL_RUN_TOKEN": token, "FLYWHEEL_TIMING_FETCH_TRIES": "1", **extra})


def expect(result, code: int, *fragments: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    assert len(result.stderr.strip().splitlines()) <= 6, result.stderr


CONFIG_CASES = {
    "not TOML": ('[flywheel\nworkspace_instructions = "x"\n', ["line 1"]),
    "no [flywheel] table": ('model = "o3"\n', ["[flywheel]"]),
    "no instructions": ("[flywheel]\n", ["workspace_instructions"]),
    "instructions a number": ("[flywheel]\nworkspace_instructions = 5\n", ["workspace_instructions"]),
    "instructions blank": ('[flywheel]\nworkspace_instructions = "   "\n', ["workspace_instructions"]),
    "instructions file missing": ('[flywheel]\nworkspace_instructions_file = "nope.md"\n', ["nope.md"]),
    "instructions file is a folder": ('[flywheel]\nworkspace_instructions_file = "."\n',
                                      ["workspace_instructions_file"]),
    "bad sandbox_mode": ('sandbox_mode = "yolo"\n' + OK_FLYWHEEL, ["sandbox_mode", "workspace-write"]),
    "writable_roots not a list": ('[sandbox_workspace_write]\nwritable_roots = "/tmp"\n' + OK_FLYWHEEL,
                                  ["writable_roots"]),
    "workspace not writable": ('workspace_dir = "/proc/flywheel/<run_id>"\n' + OK_FLYWHEEL, ["/proc/flywheel"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_exits_2_before_any_request(env: Env, case: str) -> None:
    body, fragments = CONFIG_CASES[case]
    expect(run_with(env, body), 2, *fragments)


def test_blank_instructions_file(env: Env) -> None:
    (env.tmp / "notes.md").write_text("\n  \n")
    expect(run_with(env, '[flywheel]\nworkspace_instructions_file = "notes.md"\n'), 2, "notes.md")


def test_manifest_outside_writable_roots(env: Env) -> None:
    roots = env.tmp / "elsewhere"
    body = (f'workspace_dir = "{env.tmp}/ws/<run_id>"\nsandbox_mode = "workspace-write"\n'
            f'[sandbox_workspace_write]\nwritable_roots = ["{roots}"]\n' + OK_FLYWHEEL)
    expect(run_with(env, body), 2, "flywheel_artifacts.json", str(roots))


def test_config_file_missing(env: Env) -> None:
    expect(run_with(env, None), 2, "missing.toml")


@pytest.mark.parametrize("server", ["localhost:8000", "http://", "ftp://example.com", "http://host:99999"])
def test_malformed_server_url(env: Env, server: str) -> None:
    config = env.config()
    result = env.run("--run-id", "r1", "--config", str(config), "--server", server,
                     extra={"FLYWHEEL_RUN_TOKEN": "tok-123456"})
    expect(result, 2, "--server")


@pytest.mark.parametrize("run_id", ["a/b", "..", "../x", "has space", ""])
def test_bad_run_id(env: Env, run_id: str) -> None:
    result = run_with(env, None if False else f'workspace_dir = "{env.tmp}/ws/<run_id>"\n' + OK_FLYWHEEL,
                      run_id=run_id)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


def test_empty_token(env: Env) -> None:
    result = run_with(env, OK_FLYWHEEL, token="")
    expect(result, 2, "token")


@pytest.mark.parametrize("args,fragment", [
    (["--heartbeat-interval", "-1"], "--heartbeat-interval"),
    (["--codex-timeout", "abc"], "--codex-timeout"),
    (["--max-parallel", "2"], "--runs"),
])
def test_bad_options(env: Env, args: list[str], fragment: str) -> None:
    expect(run_with(env, OK_FLYWHEEL, *args), 2, fragment)


def test_runs_with_run_id_is_usage_error(env: Env) -> None:
    result = env.run("--runs", "-", "--run-id", "x", "--config", str(env.config()), stdin="")
    expect(result, 2, "--runs")


def test_missing_run_id_names_the_option(env: Env) -> None:
    result = env.run("--config", str(env.config()), extra={"FLYWHEEL_RUN_TOKEN": "tok-123456"})
    expect(result, 2, "--run-id")


def test_codex_not_logged_in(env: Env) -> None:
    expect(run_with(env, OK_FLYWHEEL, FAKE_CODEX_LOGGED_OUT="1"), 2, "codex login")


def test_local_model_provider_needs_no_login(env: Env) -> None:
    body = ('model_provider = "local"\n[model_providers.local]\nname = "l"\nbase_url = "http://127.0.0.1:9/v1"\n'
            + OK_FLYWHEEL)
    result = run_with(env, body, FAKE_CODEX_LOGGED_OUT="1")
    expect(result, 3, "model_provider", "could not fetch")  # went past the login check to the backend


def test_no_codex_and_download_fails_exits_4(env: Env) -> None:
    (env.bin / "codex").unlink()
    result = run_with(env, OK_FLYWHEEL, FLYWHEEL_CODEX_DOWNLOAD_URL="http://127.0.0.1:9/mirror",
                      PATH=f"{env.bin}:/usr/bin:/bin")
    expect(result, 4, "127.0.0.1:9")


def test_bad_blob_threshold_env(env: Env) -> None:
    expect(run_with(env, OK_FLYWHEEL, FLYWHEEL_ARTIFACT_BLOB_THRESHOLD_BYTES="lots"), 2,
           "FLYWHEEL_ARTIFACT_BLOB_THRESHOLD_BYTES")


# -- bad output from Codex, and bad manifests: the run still ends cleanly ------

def run_codex(env: Env, backend: LocalBackend, mode: str, **extra: str):
    run_id, token = backend.create_run(prompt="Work.")
    result = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": mode, **extra}, timeout=120)
    assert "Traceback" not in result.stderr
    return run_id, result


def test_50mb_line_without_newline(env: Env, backend: LocalBackend) -> None:
    run_id, result = run_codex(env, backend, f"big_line={50 * 1024 * 1024}")
    assert result.returncode == 0, result.stderr
    entries = backend.entries(run_id)
    big = [e for e in entries if e["extra"].get("line_truncated_bytes")]
    assert len(big) == 1 and big[0]["message"].endswith(" [truncated]")
    assert len(big[0]["message"]) <= 4000 + len(" [truncated]")
    seqs = [e["extra"]["seq"] for e in entries]
    assert seqs == list(range(1, len(seqs) + 1))


def test_binary_garbage_nul_bytes_and_ansi_floods(env: Env, backend: LocalBackend) -> None:
    run_id, result = run_codex(env, backend, "binary")
    assert result.returncode == 0, result.stderr
    for entry in backend.entries(run_id):
        assert "\x1b" not in entry["message"] and "\x00" not in entry["message"] and "\r" not in entry["message"]


@pytest.mark.parametrize("manifest,problem", [
    ("", "empty"),
    ('[{"artifact_type": "text", "payload": {', "malformed"),
    ("42", "malformed"),
])
def test_bad_manifest_is_resumed_then_completes_with_warning(env: Env, backend: LocalBackend, manifest: str,
                                                             problem: str) -> None:
    run_id, result = run_codex(env, backend, "manifest_json,never_manifest", FAKE_CODEX_MANIFEST=manifest)
    assert result.returncode == 0, result.stderr
    assert backend.run(run_id)["state"] == "complete"
    resumed = [e for e in backend.entries(run_id) if "resuming codex session" in e["message"]]
    assert resumed and problem in resumed[0]["message"]


def test_dict_wrapped_manifest_is_unwrapped_with_warning(env: Env, backend: LocalBackend) -> None:
    manifest = json.dumps({"artifacts": [{"artifact_type": "text", "payload": {"content": "hi"}}]})
    run_id, result = run_codex(env, backend, "manifest_json", FAKE_CODEX_MANIFEST=manifest)
    assert result.returncode == 0, result.stderr
    assert [a["payload"]["content"] for a in backend.artifacts(run_id)] == ["hi"]
    assert any("unwrap" in e["message"] for e in backend.entries(run_id) if e["level"] == "warning")


def test_artifact_pointing_at_fifo_or_folder_does_not_hang(env: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run(prompt="Work.")
    ws = env.workspace(run_id)
    ws.mkdir(parents=True)
    os.mkfifo(ws / "pipe")
    (ws / "folder").mkdir()
    manifest = json.dumps([{"artifact_type": "text", "payload": {"path": "pipe"}},
                           {"artifact_type": "text", "payload": {"path": "folder"}},
                           {"artifact_type": "image", "payload": {"path": "/dev/zero", "format": "png"}}])
    result = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "manifest_json",
                            "FAKE_CODEX_MANIFEST": manifest})
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO((ws / "pipe").stat().st_mode)
    warnings = [e["message"] for e in backend.entries(run_id) if e["level"] == "warning"]
    assert len([w for w in warnings if w.startswith("artifact #")]) >= 3


def test_bad_timing_knob(env: Env) -> None:
    expect(run_with(env, OK_FLYWHEEL, FLYWHEEL_TIMING_KILL_GRACE="soon"), 2, "FLYWHEEL_TIMING_KILL_GRACE")
