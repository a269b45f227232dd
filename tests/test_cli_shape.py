"""The command line's shape (issue 13 item 7): help without arguments, no silently
ignored options, durations with units, the default config, demo --count, 409."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from supervisor.cli import cli
from supervisor.durations import format_duration, parse_duration
from supervisor.local_backend import LocalBackend
from supervisor.pool.decisions import plan_gpus
from supervisor.pool.gpus import NO_NVIDIA_SMI
from tests.conftest import Env
from workers.common.errors import ConfigError


def invoke(*args: str, env: dict[str, str] | None = None) -> click.testing.Result:
    unset: dict[str, str | None] = {"FLYWHEEL_RUN_ID": None, "FLYWHEEL_RUN_TOKEN": None}
    return CliRunner().invoke(cli, list(args), prog_name="flywheel-bootstrap", env={**unset, **(env or {})})


def test_no_arguments_prints_help() -> None:
    result = invoke()
    assert result.exit_code == 0
    assert "Usage: flywheel-bootstrap" in result.output and "Commands:" in result.output


@pytest.mark.parametrize("args,named", [
    (["--run-id", "r1", "serve", "--help"], "--run-id"),
    (["--server", "http://x:1", "--codex-timeout", "5", "doctor"], "--server, --codex-timeout"),
    (["--runs", "f.txt", "demo"], "--runs"),
])
def test_top_level_options_with_a_subcommand_are_refused(args: list[str], named: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert named in result.output and "cannot be given before" in result.output


@pytest.mark.parametrize("text,seconds", [
    ("30", 30), ("30s", 30), ("90m", 5400), ("2h", 7200), ("7d", 604800), ("1h30m", 5400), ("0.5", 0.5),
    ("1.5h", 5400), ("250ms", 0.25), (" 2H ", 7200),
])
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "2x", "h", "1h junk", "-"])
def test_bad_durations_name_the_value(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (30, 90, 7200, 604800, 5400)] == ["30s", "90s", "2h", "7d", "90m"]


def test_duration_options_take_units_and_refuse_junk() -> None:
    result = invoke("--run-id", "r1", "--codex-timeout", "2 weeks", "--config", "x.toml")
    assert result.exit_code == 2 and "'2 weeks' is not a duration" in result.output
    result = invoke("--run-id", "r1", "--heartbeat-interval", "0s", "--config", "x.toml")
    assert result.exit_code == 2 and "positive duration" in result.output


def test_codex_timeout_with_units_reaches_the_run(env: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    done = env.run("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                   "--codex-timeout", "2h", "--heartbeat-interval", "1s", extra={"FLYWHEEL_RUN_TOKEN": token})
    assert done.returncode == 0, done.stderr
    assert backend.run(run_id)["state"] == "complete"


def test_config_defaults_to_codex_config_when_it_exists(env: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    done = env.run("--run-id", run_id, "--server", backend.url, extra={"FLYWHEEL_RUN_TOKEN": token})
    assert done.returncode == 2 and "--config (or ~/.codex/config.toml)" in done.stderr
    user_config = Path(env.vars["HOME"]) / ".codex" / "config.toml"
    user_config.parent.mkdir(parents=True)
    user_config.write_text(env.config().read_text())
    done = env.run("--run-id", run_id, "--server", backend.url, extra={"FLYWHEEL_RUN_TOKEN": token})
    assert done.returncode == 0, done.stderr


def test_second_start_of_a_finished_run_says_what_409_means(env: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    args = ("--run-id", run_id, "--config", str(env.config()), "--server", backend.url)
    assert env.run(*args, extra={"FLYWHEEL_RUN_TOKEN": token}).returncode == 0
    again = env.run(*args, extra={"FLYWHEEL_RUN_TOKEN": token})
    assert again.returncode == 0
    assert "409" in again.stderr and "already ran and finished" in again.stderr
    assert f"flywheel-bootstrap logs {run_id}" in again.stderr


def test_serve_help_explains_port() -> None:
    result = invoke("serve", "--help")
    assert "Port to listen on" in result.output


def test_serve_hint_mentions_mock_mode() -> None:
    from supervisor.local_backend.foreground import serve_instructions

    assert any("BOOTSTRAP_MOCK_CODEX=1" in line for line in serve_instructions("http://h:1", Path("/db")))


def test_demo_count_and_old_spelling() -> None:
    assert "--count" in invoke("demo", "--help").output
    assert "--runs" not in invoke("demo", "--help").output


def test_missing_nvidia_smi_is_said_as_such() -> None:
    from supervisor.pool.runs_file import RunSpec

    spec = RunSpec(run_id="r1", token="t", config=Path("c"), server="http://h", gpus=None, line=1)
    with pytest.raises(ConfigError, match="nvidia-smi is not installed"):
        plan_gpus([spec], 1, (), NO_NVIDIA_SMI)
    with pytest.raises(ConfigError, match=r"\(nvidia-smi -L lists none\)"):
        plan_gpus([spec], 1, (), "nvidia-smi -L")
