"""Inputs that used to give a traceback, a hang or a broken run (probe findings):
each is now one line naming what is wrong and exit 2, before any request. The
real command runs in a real process against real files; where a request could
be made, the server is the real local backend and the test checks that no
connection reached it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from supervisor.config import CONFIG_MAX_BYTES, INSTRUCTIONS_MAX_BYTES
from supervisor.durations import MAX_WAIT, MIN_HEARTBEAT_INTERVAL, parse_duration
from supervisor.git_persist import url_problem
from supervisor.local_backend import LocalBackend
from supervisor.preflight import token_problem
from tests.conftest import Env
from tests.test_bad_input import OK_FLYWHEEL, expect
from workers.common.errors import ConfigError
from workers.common.server_url import validate_server_url

TOKEN = "tok-123456"


def start_run(env: Env, backend: LocalBackend, *args: str, config: str | None = None, token: str | None = None,
              **extra: str) -> tuple[str, subprocess.CompletedProcess[str]]:
    """One real run against the real backend; returns (run_id, result)."""
    run_id, real_token = backend.create_run(prompt="Work.")
    path = env.config(config) if config is not None else env.config()
    result = env.run("--run-id", run_id, "--config", str(path), "--server", backend.url, *args,
                     extra={"FLYWHEEL_RUN_TOKEN": real_token if token is None else token,
                            "FLYWHEEL_TIMING_FETCH_TRIES": "1", **extra})
    return run_id, result


def refused_before_any_request(env: Env, backend: LocalBackend, *args: str, fragments: tuple[str, ...],
                               config: str | None = None, token: str | None = None, **extra: str) -> None:
    run_id, result = start_run(env, backend, *args, config=config, token=token, **extra)
    expect(result, 2, *fragments)
    assert backend.connections_opened == 0
    assert backend.run(run_id)["state"] == "created"


# -- durations ---------------------------------------------------------------

@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e400", "NaN", "9" * 400 + "d"])
def test_parse_duration_refuses_what_is_not_finite(text: str) -> None:
    with pytest.raises(ValueError, match="finite"):
        parse_duration(text)


@pytest.mark.parametrize("value,fragment", [
    ("nan", "not a finite duration"), ("inf", "not a finite duration"), ("25d", "at most 1d"),
    ("1e308", "at most 1d"), ("9999999999999d", "at most 1d"), ("1e-300", f"at least {MIN_HEARTBEAT_INTERVAL:g}s"),
    ("0.1", "at least"),
])
def test_heartbeat_interval_out_of_range(env: Env, backend: LocalBackend, value: str, fragment: str) -> None:
    refused_before_any_request(env, backend, "--heartbeat-interval", value,
                               fragments=("--heartbeat-interval", fragment))


def test_heartbeat_interval_from_the_environment(env: Env, backend: LocalBackend) -> None:
    refused_before_any_request(env, backend, fragments=("heartbeat-interval", "finite"),
                               FLYWHEEL_HEARTBEAT_INTERVAL="nan")


@pytest.mark.parametrize("value,fragment", [("nan", "finite"), ("inf", "finite"), ("31d", "at most 30d")])
def test_codex_timeout_out_of_range(env: Env, backend: LocalBackend, value: str, fragment: str) -> None:
    refused_before_any_request(env, backend, "--codex-timeout", value, fragments=("--codex-timeout", fragment))


def test_codex_timeout_at_the_maximum_is_taken(env: Env, backend: LocalBackend) -> None:
    run_id, result = start_run(env, backend, "--codex-timeout", f"{MAX_WAIT:g}")
    assert result.returncode == 0, result.stderr
    assert backend.run(run_id)["state"] == "complete"


@pytest.mark.parametrize("value", ["nan", "inf", "31d"])
def test_control_wait_out_of_range(env: Env, backend: LocalBackend, value: str) -> None:
    run_id, _ = backend.create_run()
    result = env.run("control", run_id, "take-over", "--server", backend.url, "--wait", value)
    expect(result, 2, "--wait")
    assert backend.connections_opened == 0


@pytest.mark.parametrize("value,fragment", [("nan", "finite"), ("inf", "finite"), ("3651d", "at most 3650d")])
def test_prune_older_than_out_of_range(env: Env, value: str, fragment: str) -> None:
    expect(env.run("prune", "--older-than", value), 2, "--older-than", fragment)


def test_prune_takes_a_long_age(env: Env) -> None:
    result = env.run("prune", "--older-than", "365d", "--dry-run")
    assert result.returncode == 0 and "older than 365d" in result.stdout, result.stderr


# -- FLYWHEEL_HOME -----------------------------------------------------------

def test_relative_flywheel_home_is_made_absolute(env: Env, backend: LocalBackend) -> None:
    run_id, result = start_run(env, backend, FLYWHEEL_HOME="rel/home")
    assert result.returncode == 0, result.stderr
    assert backend.run(run_id)["state"] == "complete"
    assert (env.tmp / "rel" / "home" / "state" / run_id).is_dir()


# -- config and instructions file -------------------------------------------

LONG = "a" * 300  # over NAME_MAX (255)
NESTED = "x = " + "[" * 5000 + "]" * 5000 + "\n"


def config_cases(tmp: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    sandboxed = 'sandbox_mode = "workspace-write"\n[sandbox_workspace_write]\n'
    return {
        "workspace NUL": ('workspace_dir = "/tmp/a\\u0000b"\n' + OK_FLYWHEEL, ("workspace_dir", "NUL")),
        "workspace name too long": (f'workspace_dir = "{tmp}/{LONG}/x"\n' + OK_FLYWHEEL,
                                    ("workspace", "File name too long")),
        "instructions file NUL": ('[flywheel]\nworkspace_instructions_file = "a\\u0000b"\n',
                                  ("workspace_instructions_file", "NUL")),
        "writable root NUL": (f'workspace_dir = "{tmp}/ws/<run_id>"\n{sandboxed}writable_roots = ["/tmp/a\\u0000"]\n'
                              + OK_FLYWHEEL, ("writable_roots", "NUL")),
        "writable root name too long": (f'workspace_dir = "{tmp}/ws/<run_id>"\n{sandboxed}'
                                        f'writable_roots = ["{tmp}/{LONG}"]\n' + OK_FLYWHEEL,
                                        ("writable_roots", "File name too long")),
        "nested too deeply": (NESTED + OK_FLYWHEEL, ("not valid TOML", "nested too deeply")),
        "instructions /dev/zero": ('[flywheel]\nworkspace_instructions_file = "/dev/zero"\n',
                                   ("/dev/zero", "not a regular file")),
        "instructions folder": ('[flywheel]\nworkspace_instructions_file = "/"\n', ("folder",)),
    }


@pytest.mark.parametrize("case", sorted(config_cases("/tmp")))
def test_bad_config_values(env: Env, backend: LocalBackend, case: str) -> None:
    body, fragments = config_cases(str(env.tmp))[case]
    refused_before_any_request(env, backend, config=body, fragments=fragments)


def test_instructions_file_fifo_does_not_hang(env: Env, backend: LocalBackend) -> None:
    os.mkfifo(env.tmp / "notes.md")
    refused_before_any_request(env, backend, config='[flywheel]\nworkspace_instructions_file = "notes.md"\n',
                               fragments=("notes.md", "FIFO"))


def test_huge_instructions_file(env: Env, backend: LocalBackend) -> None:
    with open(env.tmp / "notes.md", "wb") as f:
        f.truncate(4 * 1024**3)  # sparse: no disk used
    refused_before_any_request(env, backend, config='[flywheel]\nworkspace_instructions_file = "notes.md"\n',
                               fragments=("notes.md", f"larger than {INSTRUCTIONS_MAX_BYTES // 1024**2} MiB"))


def test_instructions_file_at_the_cap_is_taken(env: Env, backend: LocalBackend) -> None:
    (env.tmp / "notes.md").write_text("x" * INSTRUCTIONS_MAX_BYTES)
    run_id, result = start_run(env, backend, config=f'workspace_dir = "{env.tmp}/ws/<run_id>"\n'
                               '[flywheel]\nworkspace_instructions_file = "notes.md"\n')
    assert result.returncode == 0, result.stderr
    assert backend.run(run_id)["state"] == "complete"


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "huge", "folder"])
def test_config_that_is_not_a_small_regular_file(env: Env, backend: LocalBackend, kind: str) -> None:
    path = env.tmp / "c.toml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "huge":
        path.write_text(OK_FLYWHEEL + "# " + "x" * CONFIG_MAX_BYTES + "\n")
    elif kind == "folder":
        path.mkdir()
    else:
        path = Path("/dev/zero")
    run_id, token = backend.create_run()
    result = env.run("--run-id", run_id, "--config", str(path), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token}, timeout=30)
    expect(result, 2, str(path))
    assert backend.connections_opened == 0
    doctor = env.run("doctor", "--config", str(path), "--server", "http://127.0.0.1:9", timeout=60)
    assert "Traceback" not in doctor.stderr and doctor.returncode == 1
    assert f"✗ config: config file {path}" in doctor.stdout, doctor.stdout


def test_doctor_names_a_deeply_nested_config(env: Env) -> None:
    config = env.config(NESTED + OK_FLYWHEEL)
    doctor = env.run("doctor", "--config", str(config), "--server", "http://127.0.0.1:9", timeout=60)
    assert "Traceback" not in doctor.stderr and doctor.returncode == 1
    assert "✗ config:" in doctor.stdout and "nested too deeply" in doctor.stdout, doctor.stdout


# -- --server ------------------------------------------------------------------

BAD_SERVERS = {
    "unclosed IPv6": ("http://[::1", "Invalid IPv6"),
    "bad percent": ("http://%zz/", "not a host name"),
    "Arabic-Indic digits": ("http://١٢٧.0.0.1/", "internationalised"),
    "label over 63": ("http://" + "a" * 70 + ".com", "at most 63"),
}


@pytest.mark.parametrize("case", sorted(BAD_SERVERS))
def test_validate_server_url_refuses(case: str) -> None:
    url, fragment = BAD_SERVERS[case]
    with pytest.raises(ConfigError, match=fragment):
        validate_server_url(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "https://bücher.de", "http://[::1]:80",
                                 "http://my_host:80/prefix/", "https://flywheel.example.com."])
def test_validate_server_url_takes(url: str) -> None:
    assert validate_server_url(url) == url.rstrip("/")


@pytest.mark.parametrize("case", sorted(BAD_SERVERS))
def test_bad_server_everywhere(env: Env, backend: LocalBackend, case: str) -> None:
    url, fragment = BAD_SERVERS[case]
    run_id, token = backend.create_run()
    config = str(env.config())
    message = f"--server {url!r} is not a valid backend URL"
    single = env.run("--run-id", run_id, "--config", config, "--server", url, extra={"FLYWHEEL_RUN_TOKEN": token})
    expect(single, 2, message, fragment)
    many = env.run("--runs", "-", "--config", config, "--server", url, stdin=f"{run_id} {token}\n")
    expect(many, 2, message, fragment)
    control = env.run("control", run_id, "take-over", "--server", url, "--wait", "1")
    expect(control, 2, message)
    doctor = env.run("doctor", "--config", config, "--server", url, "--run-id", run_id,
                     extra={"FLYWHEEL_RUN_TOKEN": token}, timeout=60)
    assert doctor.returncode == 1 and "Traceback" not in doctor.stderr
    assert f"✗ backend: {message}" in doctor.stdout, doctor.stdout
    assert backend.connections_opened == 0
    assert backend.run(run_id)["state"] == "created"


def test_server_password_is_masked(env: Env) -> None:
    url = "http://u:SrvPassword999@127.0.0.1:9"
    result = env.run("--run-id", "r1", "--config", str(env.config()), "--server", url,
                     extra={"FLYWHEEL_RUN_TOKEN": TOKEN, "FLYWHEEL_TIMING_FETCH_TRIES": "2"})
    expect(result, 3, "http://***@127.0.0.1:9")
    assert "SrvPassword999" not in result.stderr + result.stdout


def test_doctor_masks_the_server_password(env: Env, backend: LocalBackend) -> None:
    password = "DocTokBADbad999"
    for url in (f"http://user:{password}@127.0.0.1:9", backend.url.replace("http://", f"http://user:{password}@")):
        doctor = env.run("doctor", "--config", str(env.config()), "--server", url, "--run-id", "r1",
                         extra={"FLYWHEEL_RUN_TOKEN": password}, timeout=60)
        assert "Traceback" not in doctor.stderr
        assert "✗ backend: http://***@127.0.0.1:9" in doctor.stdout or "✓ backend: http://***@" in doctor.stdout
        assert password not in doctor.stdout + doctor.stderr, doctor.stdout


# -- run tokens ----------------------------------------------------------------

BAD_TOKENS = {
    "euro sign": ("tok-123456€", "HTTP header"),
    "only one ASCII": ("x€", "HTTP header"),
    "DEL": ("tok-\x7f123456", "control"),
    "C1 control": ("tok-\x85123456", "whitespace or control"),
    "three characters": ("Qz9", "3 characters long"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_token_problem(case: str) -> None:
    token, fragment = BAD_TOKENS[case]
    problem = token_problem(token)
    assert problem and fragment in problem and token not in problem


@pytest.mark.parametrize("token", ["tok-123456", "abcd", "tok-é12345"])
def test_token_taken(token: str) -> None:
    assert token_problem(token) is None


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_bad_token_refused_before_any_request(env: Env, backend: LocalBackend, case: str) -> None:
    token, fragment = BAD_TOKENS[case]
    refused_before_any_request(env, backend, token=token, fragments=("run token", fragment))


def test_doctor_names_a_bad_token(env: Env, backend: LocalBackend) -> None:
    run_id, _ = backend.create_run()
    doctor = env.run("doctor", "--config", str(env.config()), "--server", backend.url, "--run-id", run_id,
                     extra={"FLYWHEEL_RUN_TOKEN": "x€"}, timeout=60)
    assert doctor.returncode == 1 and "Traceback" not in doctor.stderr, doctor.stderr
    assert "✗ token:" in doctor.stdout and "HTTP header" in doctor.stdout, doctor.stdout
    assert "x€" not in doctor.stdout


# -- repo_context --------------------------------------------------------------

def test_control_character_in_repo_url_skips_persistence(env: Env, backend: LocalBackend) -> None:
    context = {"repo_url": f"file://{env.tmp}/re\x00po.git", "repo_owner": "o", "repo_name": "n",
               "branch_name": "fw/x", "base_branch": "main"}
    run_id, token = backend.create_run(prompt="Work.", repo_context=context, github_token="ght-12345")
    result = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token})
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert backend.run(run_id)["state"] == "complete"
    warnings = [e["message"] for e in backend.entries(run_id) if e["level"] == "warning"]
    assert any(w.startswith("Code persistence skipped:") and "control character" in w for w in warnings), warnings


@pytest.mark.parametrize("url", ["https://h/x\x00y.git", "https://h/x\ny.git", "file:///tmp/a\rb"])
def test_url_problem_names_control_characters(url: str) -> None:
    assert url_problem(url) == "it contains a control character"


def test_doctor_with_a_flywheel_home_name_too_long(env: Env) -> None:
    home = str(env.tmp / ("b" * 300))
    doctor = env.run("doctor", "--config", str(env.config()), "--server", "http://127.0.0.1:9",
                     extra={"FLYWHEEL_HOME": home, "PATH": "/usr/bin:/bin"}, timeout=60)
    assert doctor.returncode == 1 and "Traceback" not in doctor.stderr, doctor.stderr
    assert "✗ state folder:" in doctor.stdout and "File name too long" in doctor.stdout, doctor.stdout


# -- the workspace and the state folders ----------------------------------------

@pytest.mark.parametrize(("where", "fragment"), [
    ("{home}/state/<run_id>", "is inside bootstrap's state folders"),
    ("{home}/state", "is inside bootstrap's state folders"),
    ("{home}", "holds bootstrap's state folders"),
])
def test_a_workspace_that_meets_the_state_folders_is_refused(env: Env, backend: LocalBackend, where: str,
                                                            fragment: str) -> None:
    # Codex's sandboxed commands could read the run's spool, CODEX_HOME and git
    # credentials, and the code persistence would commit them.
    config = f'workspace_dir = "{where.format(home=env.home)}"\n' + OK_FLYWHEEL
    refused_before_any_request(env, backend, config=config, fragments=(fragment, "outside"
                               if "inside" in fragment else "elsewhere"))


@pytest.mark.parametrize("raw", ["nan", "inf", "-1", "abc"])
def test_a_timing_variable_must_be_a_finite_number(raw: str) -> None:
    from workers.common.timing import Timing

    with pytest.raises(ConfigError) as caught:
        Timing.from_env({"FLYWHEEL_TIMING_HEARTBEAT_INTERVAL": raw})
    assert f"FLYWHEEL_TIMING_HEARTBEAT_INTERVAL={raw!r}" in caught.value.message
    assert Timing.from_env({"FLYWHEEL_TIMING_HEARTBEAT_INTERVAL": "0.5"}).heartbeat_interval == 0.5
