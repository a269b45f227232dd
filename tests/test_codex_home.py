"""The per-run CODEX_HOME and the TOML writer it uses (README: Codex)."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest

from supervisor import toml_write
from supervisor.codex_home import prepare_codex_home, user_auth_path
from supervisor.config import load_config
from workers.common.errors import ConfigError

# --- toml_write -------------------------------------------------------------------

REALISTIC_CODEX_CONFIG = r'''
model = "gpt-5-codex"
model_provider = "azure"
model_reasoning_effort = "high"
approval_policy = "never"
sandbox_mode = "workspace-write"
notify = ["notify-send", "Codex \"done\""]
cd = "~/runs/<run_id>"

[flywheel]
workspace_instructions = """
Use /mnt/work as your workspace.
GPUs: 8× H100 — "be nice" to others \\ C:\\path
"""

[model_providers.azure]
name = "Azure"
base_url = "https://example.openai.azure.com/openai"
env_key = "AZURE_OPENAI_API_KEY"
query_params = { api-version = "2025-04-01-preview" }
request_max_retries = 4
stream_idle_timeout_ms = 300_000

[model_providers."my local"]
name = "Ollama"
base_url = "http://localhost:11434/v1"

[mcp_servers.docs]
command = "npx"
args = ["-y", "@acme/docs-server", "--root", "~/docs"]
env = { API_KEY = "k\tv", "WITH SPACE" = "ü" }
startup_timeout_sec = 20.5

[mcp_servers.docs.tools]
enabled = true

[profiles.fast]
model = "gpt-5-mini"
model_reasoning_effort = "low"

[profiles.fast.features]
web_search = false

[sandbox_workspace_write]
writable_roots = ["~/.cache", "/mnt/work"]
network_access = true
exclude_tmpdir_env_var = false

[shell_environment_policy]
inherit = "core"
exclude = ["AWS_*", "AZURE_*"]
set = { PATH = "/usr/bin:/bin" }

[projects."/home/me/src/repo"]
trust_level = "trusted"

[[hooks]]
event = "start"
cmd = ["echo", "line1\nline2"]

[[hooks]]
event = "stop"
[hooks.options]
when = 1979-05-27T07:32:00-08:00
[[hooks.steps]]
name = "a"
[[hooks.steps]]
name = "b"

[tui]
notifications = ["agent-turn-complete", "approval-requested"]
'''

ROUND_TRIP_CASES: list[dict[str, Any]] = [
    {},
    {"a": 1},
    {"": "empty key", "a b": 1, "ü": 2, 'q"uote': 3, "dot.ted": 4, "back\\slash": 5, "nl\nkey": 6},
    {"s": "quotes \" and ' and \\ and \b\t\n\f\r and \x00\x01\x1f\x7f and ü€😀"},
    {"s": "'''\"\"\"", "t": "# not a comment", "u": "= not a key"},
    {"i": 0, "neg": -17, "big": 2**63 - 1, "small": -(2**63)},
    {"f": 0.1, "g": -0.0, "h": 1e100, "j": 1.5e-7, "k": 3.0, "inf": math.inf, "ninf": -math.inf},
    {"t": True, "f": False},
    {
        "odt": dt.datetime(1979, 5, 27, 7, 32, tzinfo=dt.UTC),
        "odt2": dt.datetime(1979, 5, 27, 0, 32, 0, 999999, tzinfo=dt.timezone(dt.timedelta(hours=-7))),
        "ldt": dt.datetime(1979, 5, 27, 7, 32, 1),
        "ld": dt.date(1979, 5, 27),
        "lt": dt.time(7, 32),
        "lt2": dt.time(0, 32, 0, 999999),
    },
    {"empty_list": [], "nested": [[1, 2], ["a"], [], [[[]]]], "mixed": [1, "a", 2.5, True, {"x": 1}]},
    {"empty_table": {}, "deep": {"a": {"b": {"c": {}}}}},
    {"only_sub": {"sub": {"x": 1}}, "after": {"y": [1]}},
    {"aot": [{"a": 1}, {}, {"b": {"c": [{"d": 1}, {"e": {}}]}}]},
    {"inline_in_list": [{"a": {"b": [{"c": 1}]}}, 1]},
    {"t": {"aot": [{"x": 1}], "plain": 2, "sub": {"aot2": [{"y": 2}]}}},
    {"list_of_tables_in_list": [[{"a": 1}], [{"b": 2}]]},
]


@pytest.mark.parametrize("data", ROUND_TRIP_CASES)
def test_round_trip(data: dict[str, Any]) -> None:
    text = toml_write.dumps(data)
    assert tomllib.loads(text) == data, text


def test_round_trip_realistic_codex_config() -> None:
    data = tomllib.loads(REALISTIC_CODEX_CONFIG)
    text = toml_write.dumps(data)
    assert tomllib.loads(text) == data, text
    # and it is stable
    assert toml_write.dumps(tomllib.loads(text)) == text


def test_nan_round_trips() -> None:
    back = tomllib.loads(toml_write.dumps({"x": math.nan, "l": [math.nan]}))
    assert math.isnan(back["x"]) and math.isnan(back["l"][0])


def test_layout_is_readable() -> None:
    text = toml_write.dumps({"model": "m", "mcp_servers": {"y": {"args": ["a"], "env": {"K": "v"}}}})
    assert text.startswith('model = "m"\n')
    assert "[mcp_servers.y]" in text
    assert "[mcp_servers]\n" not in text  # implied by its sub-table
    assert text.endswith("\n")


def test_empty_document() -> None:
    assert toml_write.dumps({}) == ""


@pytest.mark.parametrize(
    ("value", "error"),
    [(object(), TypeError), ({1: 2}, TypeError), (dt.time(1, tzinfo=dt.UTC), ValueError)],
)
def test_unsupported_values(value: Any, error: type[Exception]) -> None:
    data = value if isinstance(value, dict) else {"x": value}
    with pytest.raises(error):
        toml_write.dumps(data)


_KEY_CHARS = "abcXYZ019_- .\"'\\\n\tü=#[]{}"


def _random_key(rng: random.Random) -> str:
    return "".join(rng.choice(_KEY_CHARS) for _ in range(rng.randint(0, 5)))


def _random_scalar(rng: random.Random) -> Any:
    kind = rng.randrange(7)
    if kind == 0:
        return rng.randint(-(2**63), 2**63 - 1)
    if kind == 1:
        return rng.choice([rng.uniform(-1e6, 1e6), rng.random() * 10 ** rng.randint(-300, 300), math.inf])
    if kind == 2:
        return rng.random() < 0.5
    if kind == 3:
        length = rng.randint(0, 8)
        return "".join(chr(rng.choice([rng.randrange(0, 128), rng.randrange(128, 0xD7FF)])) for _ in range(length))
    if kind == 4:
        return dt.date(rng.randint(1, 9999), rng.randint(1, 12), rng.randint(1, 28))
    if kind == 5:
        return dt.time(rng.randrange(24), rng.randrange(60), rng.randrange(60), rng.choice([0, rng.randrange(10**6)]))
    tz = rng.choice([None, dt.UTC, dt.timezone(dt.timedelta(minutes=rng.randint(-23 * 60, 23 * 60)))])
    return dt.datetime(rng.randint(1, 9999), rng.randint(1, 12), rng.randint(1, 28), rng.randrange(24),
                       rng.randrange(60), tzinfo=tz)


def _random_value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth <= 0 or roll < 0.5:
        return _random_scalar(rng)
    if roll < 0.65:
        return [_random_value(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    if roll < 0.8:
        return [_random_table(rng, depth - 1) for _ in range(rng.randint(1, 3))]
    return _random_table(rng, depth - 1)


def _random_table(rng: random.Random, depth: int) -> dict[str, Any]:
    return {_random_key(rng): _random_value(rng, depth) for _ in range(rng.randint(0, 4))}


def test_round_trip_random_documents() -> None:
    rng = random.Random(20240607)
    for _ in range(400):
        data = _random_table(rng, 4)
        text = toml_write.dumps(data)
        assert tomllib.loads(text) == data, text


# --- prepare_codex_home ----------------------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def user_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


def test_codex_home_config_copy(tmp_path: Path, user_home: Path) -> None:
    conf = tmp_path / "conf" / "config.toml"
    conf.parent.mkdir()
    conf.write_text(REALISTIC_CODEX_CONFIG + '\n[other]\nrel = "~/x"\nnot_home = "a~/b"\n')
    cfg = load_config(conf)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)

    codex_home = prepare_codex_home(state, cfg, {"HOME": str(user_home)})

    assert codex_home == state / "codex_home"
    assert mode_of(codex_home) == 0o700
    written = codex_home / "config.toml"
    assert mode_of(written) == 0o600
    data = tomllib.loads(written.read_text())
    assert "flywheel" not in data and "cd" not in data and "workspace_dir" not in data
    assert data["model"] == "gpt-5-codex"
    assert data["model_providers"]["my local"]["base_url"] == "http://localhost:11434/v1"
    assert data["mcp_servers"]["docs"]["args"] == ["-y", "@acme/docs-server", "--root", str(user_home / "docs")]
    assert data["mcp_servers"]["docs"]["env"]["WITH SPACE"] == "ü"
    assert data["other"]["rel"] == str(user_home / "x")
    assert data["other"]["not_home"] == "a~/b"
    assert data["hooks"][1]["steps"] == [{"name": "a"}, {"name": "b"}]
    # writable_roots become absolute (relative ones would now be read against codex_home)
    assert data["sandbox_workspace_write"]["writable_roots"] == [str(p) for p in cfg.writable_roots]
    assert data["sandbox_workspace_write"]["network_access"] is True
    # the user's config object is untouched
    assert cfg.raw["mcp_servers"]["docs"]["args"][-1] == "~/docs"
    assert "flywheel" in cfg.raw


def test_relative_writable_roots_made_absolute(tmp_path: Path, user_home: Path) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text(
        '[flywheel]\nworkspace_instructions = "x"\n'
        '[sandbox_workspace_write]\nwritable_roots = ["runs", "~/cache"]\n'
    )
    cfg = load_config(conf)
    home = prepare_codex_home(tmp_path / "state", cfg, {"HOME": str(user_home)})
    roots = tomllib.loads((home / "config.toml").read_text())["sandbox_workspace_write"]["writable_roots"]
    assert roots[0] == str(cfg.path.parent / "runs")
    assert all(Path(r).is_absolute() for r in roots)


def _simple_cfg(tmp_path: Path):  # type: ignore[no-untyped-def]
    conf = tmp_path / "config.toml"
    conf.write_text('model = "m"\n[flywheel]\nworkspace_instructions = "x"\n')
    return load_config(conf)


def test_auth_from_home_dot_codex(tmp_path: Path, user_home: Path) -> None:
    (user_home / ".codex").mkdir()
    (user_home / ".codex" / "auth.json").write_text(json.dumps({"OPENAI_API_KEY": "sk-test"}))
    (user_home / ".codex" / "auth.json").chmod(0o644)
    codex_home = prepare_codex_home(tmp_path / "s", _simple_cfg(tmp_path), {"HOME": str(user_home)})
    copied = codex_home / "auth.json"
    assert json.loads(copied.read_text()) == {"OPENAI_API_KEY": "sk-test"}
    assert mode_of(copied) == 0o600


def test_auth_from_codex_home_env(tmp_path: Path, user_home: Path) -> None:
    (user_home / ".codex").mkdir()
    (user_home / ".codex" / "auth.json").write_text('{"from": "home"}')
    other = tmp_path / "other_codex"
    other.mkdir()
    (other / "auth.json").write_text('{"from": "env"}')
    env = {"HOME": str(user_home), "CODEX_HOME": str(other)}
    assert user_auth_path(env) == other / "auth.json"
    codex_home = prepare_codex_home(tmp_path / "s", _simple_cfg(tmp_path), env)
    assert json.loads((codex_home / "auth.json").read_text()) == {"from": "env"}


def test_no_auth_anywhere(tmp_path: Path, user_home: Path) -> None:
    codex_home = prepare_codex_home(tmp_path / "s", _simple_cfg(tmp_path), {"HOME": str(user_home)})
    assert not (codex_home / "auth.json").exists()
    assert (codex_home / "config.toml").is_file()


def test_idempotent_keeps_sessions_and_refreshed_auth(tmp_path: Path, user_home: Path) -> None:
    (user_home / ".codex").mkdir()
    user_auth = user_home / ".codex" / "auth.json"
    user_auth.write_text('{"v": 1}')
    os.utime(user_auth, (1_000_000, 1_000_000))
    env = {"HOME": str(user_home)}
    cfg = _simple_cfg(tmp_path)
    codex_home = prepare_codex_home(tmp_path / "s", cfg, env)

    rollout = codex_home / "sessions" / "2025" / "01" / "01" / "rollout-x.jsonl"
    rollout.parent.mkdir(parents=True)
    rollout.write_text('{"type":"session_meta"}\n')
    # Codex refreshed the tokens in the run's copy: a second call must keep them.
    (codex_home / "auth.json").write_text('{"v": "refreshed"}')

    again = prepare_codex_home(tmp_path / "s", cfg, env)
    assert again == codex_home
    assert rollout.read_text() == '{"type":"session_meta"}\n'
    assert json.loads((codex_home / "auth.json").read_text()) == {"v": "refreshed"}
    assert mode_of(codex_home) == 0o700
    assert [p.name for p in codex_home.iterdir() if p.name.startswith(".")] == []  # no temp files left

    # The user logged in again since: the newer login is taken.
    user_auth.write_text('{"v": 2}')
    os.utime(user_auth, None)
    os.utime(codex_home / "auth.json", (1_000_000, 1_000_000))
    prepare_codex_home(tmp_path / "s", cfg, env)
    assert json.loads((codex_home / "auth.json").read_text()) == {"v": 2}


def test_codex_home_env_pointing_at_the_run_copy(tmp_path: Path, user_home: Path) -> None:
    # A restart may inherit the run's own CODEX_HOME: copying onto itself must be a no-op.
    cfg = _simple_cfg(tmp_path)
    codex_home = prepare_codex_home(tmp_path / "s", cfg, {"HOME": str(user_home)})
    (codex_home / "auth.json").write_text('{"self": true}')
    prepare_codex_home(tmp_path / "s", cfg, {"HOME": str(user_home), "CODEX_HOME": str(codex_home)})
    assert json.loads((codex_home / "auth.json").read_text()) == {"self": True}


def test_codex_home_blocked_by_a_file(tmp_path: Path, user_home: Path) -> None:
    state = tmp_path / "s"
    state.mkdir()
    (state / "codex_home").write_text("")
    with pytest.raises(ConfigError) as info:
        prepare_codex_home(state, _simple_cfg(tmp_path), {"HOME": str(user_home)})
    assert "codex_home" in info.value.message
