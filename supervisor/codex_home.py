"""The per-run ``CODEX_HOME`` (README: Codex).

Codex keeps its session state under ``CODEX_HOME``: ``sessions/…/rollout-*.jsonl``,
SQLite files, refreshed login tokens. Each run gets its own, inside its private
state folder, because

- parallel runs on one host must not share (and race on) that state;
- ``codex exec resume <thread_id>`` looks the session up there, so a run, and a
  restart of the same run, must keep finding its own folder — hence
  ``prepare_codex_home`` is idempotent and never touches ``sessions/``;
- Codex refuses to start unless the folder exists and is writable.

It holds a copy of the user's config — without the ``[flywheel]`` table and the
``cd``/``workspace_dir`` keys, which Codex would report as unrecognized, and
with ``~/`` paths expanded and ``writable_roots`` made absolute, because
relative paths would now be read against this folder — and a copy of the
user's ``auth.json`` when there is one.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from supervisor import toml_write
from supervisor.config import CodexConfig
from workers.common.errors import ConfigError
from workers.common.files import TMP_FOLDER, make_private_dir, write_private

CODEX_HOME_NAME = "codex_home"
CONFIG_NAME = "config.toml"
AUTH_NAME = "auth.json"
# Keys bootstrap consumes; Codex does not know them.
BOOTSTRAP_ONLY_KEYS = ("flywheel", "cd", "workspace_dir")


def prepare_codex_home(state_dir: Path, cfg: CodexConfig, env: Mapping[str, str]) -> Path:
    """Create or refresh ``state_dir/codex_home`` (0700) and return it.

    ``env`` is the environment bootstrap was started with: its ``HOME`` expands
    ``~/`` and its ``CODEX_HOME`` (else ``~/.codex``) is where the user's
    ``auth.json`` is found. On a second call for the same run, ``config.toml``
    is rewritten, ``auth.json`` is replaced only by a newer user copy (Codex may
    have refreshed the tokens in the run's copy), and everything else stays.
    """
    home = _home_dir(env)
    codex_home = state_dir / CODEX_HOME_NAME
    make_private_dir(codex_home, "Codex home")

    text = toml_write.dumps(codex_config(cfg, home))
    _write_private(codex_home / CONFIG_NAME, text.encode("utf-8"))

    source = user_auth_path(env)
    if source is not None:
        _copy_auth(source, codex_home / AUTH_NAME)
    return codex_home


def codex_config(cfg: CodexConfig, home: Path) -> dict[str, Any]:
    """The config Codex gets: the user's, minus bootstrap's keys, ``~/`` expanded
    against ``home``, ``writable_roots`` absolute."""
    data = {k: copy.deepcopy(v) for k, v in cfg.raw.items() if k not in BOOTSTRAP_ONLY_KEYS}
    data = dict(_expand_tilde(data, home))
    section = data.get("sandbox_workspace_write")
    if isinstance(section, dict) and "writable_roots" in section:
        section["writable_roots"] = [str(p) for p in cfg.writable_roots]
    return data


def user_auth_path(env: Mapping[str, str]) -> Path | None:
    """The user's ``auth.json``: ``$CODEX_HOME/auth.json`` when CODEX_HOME is
    set (as Codex itself decides), else ``~/.codex/auth.json``; None if absent."""
    codex_home = env.get("CODEX_HOME")
    if codex_home:
        base = Path(_expand_str(codex_home, _home_dir(env)))
    else:
        base = _home_dir(env) / ".codex"
    path = base / AUTH_NAME
    return path if path.is_file() else None


def _home_dir(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or os.path.expanduser("~"))


def _expand_str(value: str, home: Path) -> str:
    if value == "~":
        return str(home)
    if value.startswith("~/"):
        return str(home / value[2:])
    return value


def _expand_tilde(value: Any, home: Path) -> Any:
    """Every string value starting with ``~/``, anywhere in the tree, expanded."""
    if isinstance(value, str):
        return str(home / value[2:]) if value.startswith("~/") else value
    if isinstance(value, dict):
        return {k: _expand_tilde(v, home) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_tilde(v, home) for v in value]
    return value


def _copy_auth(source: Path, dest: Path) -> None:
    try:
        if dest.exists():
            if dest.samefile(source):
                return
            if source.stat().st_mtime <= dest.stat().st_mtime:
                return
        data = source.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"Codex login file {source} cannot be read: {exc.strerror or exc}"
        ) from None
    _write_private(dest, data)


def _write_private(path: Path, data: bytes) -> None:
    try:
        # The temporary goes to the state folder: CODEX_HOME is Codex's.
        write_private(path, data, tmp_dir=path.parent.parent / TMP_FOLDER)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
