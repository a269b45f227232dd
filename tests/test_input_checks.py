"""Inputs that used to give a traceback, a hang or a broken run (probe findings):
each is now one line naming what is wrong and exit 2, before any request. The
real command runs in a real process against real files; where a request could
be made, the server is the real local backend and the test checks that no
connection reached it."""

from __future__ import annotations

import subprocess

import pytest

from supervisor.durations import MAX_WAIT, MIN_HEARTBEAT_INTERVAL, parse_duration
from supervisor.local_backend import LocalBackend
from tests.conftest import Env
from tests.test_bad_input import expect


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
