"""Every rule of the README's Configuration section, on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervisor.config import SANDBOX_MODES, CodexConfig, load_config, sandbox_args
from workers.common.errors import EXIT_USAGE, ConfigError

is_root = os.geteuid() == 0


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def fails(path: Path, *needles: str) -> str:
    """load_config must raise a ConfigError (exit 2) mentioning every needle."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.exit_code == EXIT_USAGE
    for needle in needles:
        assert needle in err.message, (needle, err.message)
    assert "Traceback" not in err.message
    return err.message


OK_FLYWHEEL = '[flywheel]\nworkspace_instructions = "Use /mnt/work."\n'


# --- the file itself -----------------------------------------------------------


def test_minimal_config_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, OK_FLYWHEEL))
    assert isinstance(cfg, CodexConfig)
    assert cfg.instructions == "Use /mnt/work."
    assert cfg.path == (tmp_path / "config.toml").resolve()
    assert cfg.workspace_template is None
    assert cfg.writable_roots == ()
    assert cfg.model_provider is None
    assert cfg.raw == {"flywheel": {"workspace_instructions": "Use /mnt/work."}}


def test_relative_config_path_is_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, OK_FLYWHEEL)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("config.toml"))
    assert cfg.path.is_absolute()
    assert cfg.path == (tmp_path / "config.toml").resolve()


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    fails(path, str(path), "does not exist")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    fails(tmp_path, str(tmp_path), "folder")


@pytest.mark.skipif(is_root, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, OK_FLYWHEEL)
    path.chmod(0)
    try:
        fails(path, str(path), "permission denied")
    finally:
        path.chmod(0o600)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'[flywheel]\nworkspace_instructions = "caf\xe9"\n')
    fails(path, str(path), "UTF-8", "line 2")


def test_utf8_bom_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xef\xbb\xbf" + OK_FLYWHEEL.encode())
    assert load_config(path).instructions == "Use /mnt/work."


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, OK_FLYWHEEL + 'model = "gpt\nsandbox_mode = "read-only"\n')
    fails(path, str(path), "not valid TOML", "line 3")


# --- [flywheel] and the instructions ---------------------------------------------


def test_flywheel_table_missing(tmp_path: Path) -> None:
    path = write(tmp_path, 'model = "gpt-5"\n')
    fails(path, str(path), "[flywheel]", "workspace_instructions")


def test_flywheel_not_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, 'flywheel = "yes"\n')
    fails(path, str(path), "flywheel", "must be a table")


def test_neither_instruction_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[flywheel]\nother = 1\n")
    fails(path, str(path), "workspace_instructions", "workspace_instructions_file")


@pytest.mark.parametrize(
    ("toml_value", "kind"),
    [("42", "number"), ("1.5", "number"), ('["a"]', "list"), ("true", "boolean"),
     ("{ a = 1 }", "table"), ("1979-05-27", "date")],
)
def test_inline_instructions_wrong_type(tmp_path: Path, toml_value: str, kind: str) -> None:
    path = write(tmp_path, f"[flywheel]\nworkspace_instructions = {toml_value}\n")
    fails(path, str(path), "workspace_instructions", "must be a string", kind)


def test_instructions_file_key_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, "[flywheel]\nworkspace_instructions_file = 7\n")
    fails(path, str(path), "workspace_instructions_file", "must be a string", "number")


def test_wrong_type_is_an_error_even_when_the_other_key_is_fine(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("notes")
    path = write(
        tmp_path,
        '[flywheel]\nworkspace_instructions = 3\nworkspace_instructions_file = "notes.md"\n',
    )
    fails(path, "workspace_instructions", "number")


def test_blank_inline_instructions(tmp_path: Path) -> None:
    path = write(tmp_path, '[flywheel]\nworkspace_instructions = """\n   \n"""\n')
    fails(path, str(path), "workspace_instructions", "blank")


def test_instructions_file_relative_to_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "notes.md").write_text("\n  Use /data for datasets.\n\n")
    path = write(conf_dir, '[flywheel]\nworkspace_instructions_file = "notes.md"\n')
    monkeypatch.chdir(tmp_path)  # not the config's folder
    cfg = load_config(path)
    assert cfg.instructions == "Use /data for datasets."
    assert not any("both" in w for w in cfg.warnings)


def test_instructions_file_tilde_expands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.md").write_text("from home")
    monkeypatch.setenv("HOME", str(home))
    path = write(tmp_path, '[flywheel]\nworkspace_instructions_file = "~/notes.md"\n')
    assert load_config(path).instructions == "from home"


def test_both_instruction_keys_file_wins_with_one_warning(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("from the file")
    path = write(
        tmp_path,
        '[flywheel]\nworkspace_instructions = "inline"\nworkspace_instructions_file = "notes.md"\n',
    )
    cfg = load_config(path)
    assert cfg.instructions == "from the file"
    both = [w for w in cfg.warnings if "file wins, inline value ignored" in w]
    assert len(both) == 1
    assert str(cfg.path) in both[0]


def test_instructions_file_missing(tmp_path: Path) -> None:
    path = write(tmp_path, '[flywheel]\nworkspace_instructions_file = "missing.md"\n')
    fails(path, str(tmp_path / "missing.md"), "workspace_instructions_file", str(path), "does not exist")


def test_instructions_file_missing_even_when_inline_is_set(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[flywheel]\nworkspace_instructions = "x"\nworkspace_instructions_file = "missing.md"\n',
    )
    fails(path, "missing.md", "does not exist")


def test_instructions_file_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    path = write(tmp_path, '[flywheel]\nworkspace_instructions_file = "notes"\n')
    fails(path, str(tmp_path / "notes"), "workspace_instructions_file", "folder")


@pytest.mark.skipif(is_root, reason="root reads files whatever their mode")
def test_instructions_file_unreadable(tmp_path: Path) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text("secret")
    notes.chmod(0)
    path = write(tmp_path, '[flywheel]\nworkspace_instructions_file = "notes.md"\n')
    try:
        fails(path, str(notes), "workspace_instructions_file", "permission denied")
    finally:
        notes.chmod(0o600)


def test_instructions_file_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_bytes(b"ok\n\xff\xfe")
    path = write(tmp_path, '[flywheel]\nworkspace_instructions_file = "notes.md"\n')
    fails(path, str(tmp_path / "notes.md"), "UTF-8", "line 2")


def test_instructions_file_blank(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text(" \n\t\n")
    path = write(tmp_path, '[flywheel]\nworkspace_instructions_file = "notes.md"\n')
    fails(path, str(tmp_path / "notes.md"), "workspace_instructions_file", "blank")


def test_instructions_file_key_empty_string(tmp_path: Path) -> None:
    path = write(tmp_path, '[flywheel]\nworkspace_instructions_file = ""\n')
    fails(path, str(path), "workspace_instructions_file", "empty")


# --- workspace keys ------------------------------------------------------------


def test_cd_is_the_workspace_template(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, 'cd = "~/runs/<run_id>"\n' + OK_FLYWHEEL))
    assert cfg.workspace_template == "~/runs/<run_id>"


def test_workspace_dir_is_the_workspace_template(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, 'workspace_dir = "/w/<run_id>"\n' + OK_FLYWHEEL))
    assert cfg.workspace_template == "/w/<run_id>"


def test_cd_wins_over_workspace_dir_with_a_warning(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, 'cd = "/a"\nworkspace_dir = "/b"\n' + OK_FLYWHEEL))
    assert cfg.workspace_template == "/a"
    assert any("cd wins" in w for w in cfg.warnings)


def test_cd_and_workspace_dir_equal_no_warning(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, 'cd = "/a"\nworkspace_dir = "/a"\n' + OK_FLYWHEEL))
    assert not any("cd wins" in w for w in cfg.warnings)


@pytest.mark.parametrize("key", ["cd", "workspace_dir"])
def test_workspace_key_wrong_type(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, f"{key} = 5\n" + OK_FLYWHEEL)
    fails(path, str(path), key, "must be a string")


@pytest.mark.parametrize("key", ["cd", "workspace_dir"])
def test_workspace_key_empty(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, f'{key} = " "\n' + OK_FLYWHEEL)
    fails(path, str(path), key, "empty")


# --- sandbox -------------------------------------------------------------------


def test_sandbox_unset_says_workspace_write_is_passed(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, OK_FLYWHEEL))
    assert cfg.sandbox_mode is None
    assert cfg.sandboxed
    notes = [w for w in cfg.warnings if "--sandbox workspace-write" in w]
    assert len(notes) == 1


def test_sandbox_read_only_warns_no_artifacts(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, 'sandbox_mode = "read-only"\n' + OK_FLYWHEEL))
    assert cfg.sandbox_mode == "read-only"
    assert any("no" in w and "artifacts" in w for w in cfg.warnings)


@pytest.mark.parametrize("mode", ["workspace-write", "danger-full-access"])
def test_sandbox_valid_modes_no_warning(tmp_path: Path, mode: str) -> None:
    cfg = load_config(write(tmp_path, f'sandbox_mode = "{mode}"\n' + OK_FLYWHEEL))
    assert cfg.sandbox_mode == mode
    assert cfg.warnings == ()
    assert cfg.sandboxed == (mode != "danger-full-access")


def test_sandbox_invalid_mode_lists_valid_ones(tmp_path: Path) -> None:
    path = write(tmp_path, 'sandbox_mode = "full"\n' + OK_FLYWHEEL)
    fails(path, str(path), "sandbox_mode", "'full'", *SANDBOX_MODES)


def test_sandbox_mode_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, "sandbox_mode = 1\n" + OK_FLYWHEEL)
    fails(path, str(path), "sandbox_mode", "must be a string")


def test_sandbox_workspace_write_not_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, 'sandbox_workspace_write = ["/x"]\n' + OK_FLYWHEEL)
    fails(path, str(path), "sandbox_workspace_write", "must be a table")


def test_writable_roots_not_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, OK_FLYWHEEL + '[sandbox_workspace_write]\nwritable_roots = "/x"\n')
    fails(path, str(path), "writable_roots", "list")


def test_writable_roots_item_not_a_string(tmp_path: Path) -> None:
    path = write(tmp_path, OK_FLYWHEEL + '[sandbox_workspace_write]\nwritable_roots = ["/x", 3]\n')
    fails(path, str(path), "writable_roots", "item 2", "number")


def test_writable_roots_expanded_and_relative_to_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(
        tmp_path,
        OK_FLYWHEEL
        + '[sandbox_workspace_write]\nwritable_roots = ["~/work", "rel/dir", "/abs"]\n'
        + "network_access = true\n",
    )
    monkeypatch.chdir("/")
    cfg = load_config(path)
    assert cfg.writable_roots == (
        tmp_path / "home" / "work",
        cfg.path.parent / "rel" / "dir",
        Path("/abs"),
    )


def test_sandbox_args() -> None:
    assert sandbox_args(None) == ["--sandbox", "workspace-write"]
    assert sandbox_args("read-only") == ["--sandbox", "read-only"]
    assert sandbox_args("workspace-write") == ["--sandbox", "workspace-write"]
    assert sandbox_args("danger-full-access") == ["--dangerously-bypass-approvals-and-sandbox"]
    with pytest.raises(ConfigError):
        sandbox_args("nope")


# --- model provider and profiles -------------------------------------------------


def test_model_provider(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, 'model_provider = "ollama"\n' + OK_FLYWHEEL))
    assert cfg.model_provider == "ollama"


def test_model_provider_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, "model_provider = [1]\n" + OK_FLYWHEEL)
    fails(path, str(path), "model_provider", "list")


def test_selected_profile_overrides_provider_and_sandbox(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            'profile = "local"\nmodel_provider = "openai"\nsandbox_mode = "read-only"\n'
            + OK_FLYWHEEL
            + '[profiles.local]\nmodel_provider = "ollama"\nsandbox_mode = "danger-full-access"\n'
            + '[profiles.other]\nmodel_provider = "x"\n',
        )
    )
    assert cfg.model_provider == "ollama"
    assert cfg.sandbox_mode == "danger-full-access"


def test_profile_without_the_key_falls_back_to_top_level(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, 'profile = "p"\nmodel_provider = "oss"\n' + OK_FLYWHEEL + '[profiles.p]\nmodel = "m"\n')
    )
    assert cfg.model_provider == "oss"


def test_unknown_profile(tmp_path: Path) -> None:
    path = write(tmp_path, 'profile = "ghost"\n' + OK_FLYWHEEL)
    fails(path, str(path), "profile", "ghost", "[profiles.ghost]")


def test_raw_keeps_every_key(tmp_path: Path) -> None:
    text = (
        'model = "gpt-5"\napproval_policy = "never"\n'
        + OK_FLYWHEEL
        + '[mcp_servers.docs]\ncommand = "npx"\nargs = ["-y", "docs"]\n'
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.raw["model"] == "gpt-5"
    assert cfg.raw["mcp_servers"]["docs"]["args"] == ["-y", "docs"]
    assert cfg.raw["flywheel"]["workspace_instructions"] == "Use /mnt/work."


def test_config_is_frozen_and_hashable(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, OK_FLYWHEEL))
    with pytest.raises(AttributeError):
        cfg.instructions = "x"  # type: ignore[misc]
    hash(cfg)


def test_profile_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, "profile = 3\n" + OK_FLYWHEEL)
    fails(path, str(path), "profile", "must be a string")


def test_profiles_not_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, 'profile = "p"\nprofiles = ["p"]\n' + OK_FLYWHEEL)
    fails(path, str(path), "profiles", "must be a table")


def test_profile_value_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, 'profile = "p"\n' + OK_FLYWHEEL + "[profiles.p]\nsandbox_mode = false\n")
    fails(path, str(path), "[profiles.p] sandbox_mode", "boolean")
