"""Workspace, run id and state folder rules (README: Configuration, Where things live)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from supervisor.config import CodexConfig, load_config
from supervisor.workspace import (
    check_manifest_in_roots,
    prepare_state_dir,
    prepare_workspace,
    resolve_workspace,
    validate_run_id,
)
from workers.common.errors import EXIT_USAGE, ConfigError
from workers.common.names import MANIFEST_NAME, PROMPT_NAME

is_root = os.geteuid() == 0


def make_cfg(tmp_path: Path, extra: str = "") -> CodexConfig:
    path = tmp_path / "conf" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(extra + '[flywheel]\nworkspace_instructions = "x"\n')
    return load_config(path)


def raises_config_error(fn, *args, needles: tuple[str, ...] = ()) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as info:
        fn(*args)
    assert info.value.exit_code == EXIT_USAGE
    for needle in needles:
        assert needle in info.value.message, (needle, info.value.message)
    return info.value.message


def test_constants() -> None:
    assert MANIFEST_NAME == "flywheel_artifacts.json"
    assert PROMPT_NAME == "flywheel_prompt.txt"


# --- run ids ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "run_id", ["1", "run-42", "0199a213-81c0-7800-8aa1-bbab2a035a53", "a.b_c-D", "x" * 128, "a.b"]
)
def test_valid_run_ids(run_id: str) -> None:
    validate_run_id(run_id)


@pytest.mark.parametrize(
    ("run_id", "why"),
    [
        ("", "empty"),
        ("a/b", "slash"),
        ("..", ".."),
        ("a..b", ".."),
        (".", "not valid"),
        (".hidden", "not valid"),
        ("-rf", "not valid"),
        ("a b", "white space"),
        ("a\tb", "white space"),
        ("a\x00b", "control"),
        ("a\x1bb", "control"),
        ("x" * 129, "129 characters"),
        ("a?b", "not valid"),
        ("a%2Fb", "not valid"),
        ("é", "not valid"),
        ("a\\b", "slash"),
    ],
)
def test_invalid_run_ids(run_id: str, why: str) -> None:
    raises_config_error(validate_run_id, run_id, needles=(why,))


# --- resolving the workspace ------------------------------------------------------


def test_default_workspace_is_under_home(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    assert resolve_workspace(cfg, "r1", tmp_path / "fw") == tmp_path / "fw" / "runs" / "r1"


def test_template_run_id_and_tilde(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = make_cfg(tmp_path, 'cd = "~/work/<run_id>/out-<run_id>"\n')
    assert resolve_workspace(cfg, "r7", tmp_path) == tmp_path / "home" / "work" / "r7" / "out-r7"


def test_relative_template_is_relative_to_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_cfg(tmp_path, 'workspace_dir = "ws/<run_id>"\n')
    monkeypatch.chdir("/")
    assert resolve_workspace(cfg, "r1", tmp_path) == cfg.path.parent / "ws" / "r1"


def test_absolute_template_without_placeholder(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, f'cd = "{tmp_path / "fixed"}"\n')
    assert resolve_workspace(cfg, "r1", tmp_path) == tmp_path / "fixed"


def test_resolve_workspace_checks_run_id(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    raises_config_error(resolve_workspace, cfg, "../etc", tmp_path)


# --- preparing the workspace ------------------------------------------------------


def test_prepare_creates_parents_and_leaves_nothing(tmp_path: Path) -> None:
    ws = tmp_path / "a" / "b" / "c"
    prepare_workspace(ws)
    assert ws.is_dir()
    assert list(ws.iterdir()) == []
    prepare_workspace(ws)  # again: fine


def test_prepare_existing_file(tmp_path: Path) -> None:
    f = tmp_path / "ws"
    f.write_text("")
    raises_config_error(prepare_workspace, f, needles=(str(f), "not a folder"))


def test_prepare_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    ws = tmp_path / "file" / "ws"
    raises_config_error(prepare_workspace, ws, needles=(str(ws), "cannot be created"))


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_prepare_unwritable_folder_even_for_root() -> None:
    # /proc is a folder nobody, root included, can create files in.
    raises_config_error(prepare_workspace, Path("/proc"), needles=("/proc", "not writable"))


@pytest.mark.skipif(is_root, reason="root writes whatever the mode")
def test_prepare_read_only_folder(tmp_path: Path) -> None:
    ws = tmp_path / "ro"
    ws.mkdir()
    ws.chmod(0o500)
    try:
        raises_config_error(prepare_workspace, ws, needles=(str(ws), "not writable"))
    finally:
        ws.chmod(0o700)


# --- manifest inside writable roots ----------------------------------------------


def roots_cfg(tmp_path: Path, roots: list[Path], mode: str | None = None) -> CodexConfig:
    mode_line = f'sandbox_mode = "{mode}"\n' if mode else ""
    listed = ", ".join(f'"{r}"' for r in roots)
    return make_cfg(tmp_path, mode_line + f"[sandbox_workspace_write]\nwritable_roots = [{listed}]\n")


def test_manifest_inside_a_root(tmp_path: Path) -> None:
    ws = tmp_path / "roots" / "b" / "run1"
    prepare_workspace(ws)
    cfg = roots_cfg(tmp_path, [tmp_path / "roots" / "a", tmp_path / "roots" / "b"])
    check_manifest_in_roots(ws, cfg)
    assert (tmp_path / "roots" / "a").is_dir()  # missing roots are created


def test_manifest_outside_roots(tmp_path: Path) -> None:
    ws = tmp_path / "elsewhere"
    prepare_workspace(ws)
    root = tmp_path / "root"
    cfg = roots_cfg(tmp_path, [root])
    raises_config_error(
        check_manifest_in_roots,
        ws,
        cfg,
        needles=(str(ws.resolve() / MANIFEST_NAME), str(root), "writable_roots"),
    )
    assert root.is_dir()


def test_manifest_outside_roots_is_fine_without_sandbox(tmp_path: Path) -> None:
    ws = tmp_path / "elsewhere"
    prepare_workspace(ws)
    check_manifest_in_roots(ws, roots_cfg(tmp_path, [tmp_path / "root"], "danger-full-access"))


def test_no_roots_nothing_to_check(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    prepare_workspace(ws)
    check_manifest_in_roots(ws, make_cfg(tmp_path))


def test_read_only_mode_still_checks_roots(tmp_path: Path) -> None:
    ws = tmp_path / "elsewhere"
    prepare_workspace(ws)
    raises_config_error(
        check_manifest_in_roots, ws, roots_cfg(tmp_path, [tmp_path / "root"], "read-only")
    )


def test_roots_compared_after_resolving_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    ws = link / "run1"  # really inside real/
    prepare_workspace(ws)
    check_manifest_in_roots(ws, roots_cfg(tmp_path, [real]))
    # and the other way round: a root given through a symlink
    ws2 = real / "run2"
    prepare_workspace(ws2)
    check_manifest_in_roots(ws2, roots_cfg(tmp_path, [link]))


def test_sibling_prefix_is_not_inside(tmp_path: Path) -> None:
    ws = tmp_path / "root-other" / "run"
    prepare_workspace(ws)
    raises_config_error(check_manifest_in_roots, ws, roots_cfg(tmp_path, [tmp_path / "root"]))


def test_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "rootfile").write_text("")
    ws = tmp_path / "ws"
    prepare_workspace(ws)
    raises_config_error(
        check_manifest_in_roots,
        ws,
        roots_cfg(tmp_path, [tmp_path / "rootfile"]),
        needles=("writable_roots", str(tmp_path / "rootfile")),
    )


# --- state folder --------------------------------------------------------------------


def test_state_dir_created_private(tmp_path: Path) -> None:
    state = prepare_state_dir(tmp_path / "fw", "r1")
    assert state == tmp_path / "fw" / "state" / "r1"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_state_dir_existing_is_chmodded(tmp_path: Path) -> None:
    state = tmp_path / "state" / "r1"
    state.mkdir(parents=True)
    state.chmod(0o755)
    (state / "keep").write_text("x")
    assert prepare_state_dir(tmp_path, "r1") == state
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert (state / "keep").read_text() == "x"


def test_state_dir_bad_run_id(tmp_path: Path) -> None:
    raises_config_error(prepare_state_dir, tmp_path, "..")


def test_state_dir_blocked_by_a_file(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    raises_config_error(prepare_state_dir, tmp_path, "r1", needles=("state",))
