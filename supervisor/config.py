"""Load and validate the user's Codex ``config.toml`` (README: Configuration).

Bootstrap reads only its own ``[flywheel]`` table and the few Codex keys that
decide where a run works and how it is sandboxed; everything else is kept in
``CodexConfig.raw`` untouched, for the per-run copy handed to Codex
(``supervisor.codex_home``).

Every problem a user can make in the file is a ``ConfigError`` (exit 2) whose
message names the file and the key, raised before any request to the backend.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.common.errors import ConfigError

SANDBOX_MODES: tuple[str, ...] = ("read-only", "workspace-write", "danger-full-access")
# Codex's own default for `exec` is read-only, where no manifest can be written.
DEFAULT_SANDBOX_MODE = "workspace-write"
NO_SANDBOX_MODE = "danger-full-access"

INLINE_KEY = "workspace_instructions"
FILE_KEY = "workspace_instructions_file"

MiB = 1024 * 1024
# A config and its instructions are a few KiB; the cap keeps /dev/zero or a
# sparse multi-GB file from eating the host's memory before any message.
CONFIG_MAX_BYTES = MiB
INSTRUCTIONS_MAX_BYTES = MiB


@dataclass(frozen=True)
class CodexConfig:
    """What bootstrap needs from one config file, resolved and validated.

    ``workspace_template`` is the raw ``cd`` (or ``workspace_dir``) value, still
    holding ``~`` and ``<run_id>``; ``supervisor.workspace.resolve_workspace``
    turns it into a path. ``raw`` is the whole parsed TOML; treat it as
    read-only.
    """

    path: Path
    instructions: str
    warnings: tuple[str, ...] = ()
    workspace_template: str | None = None
    sandbox_mode: str | None = None
    writable_roots: tuple[Path, ...] = ()
    model_provider: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

    @property
    def sandboxed(self) -> bool:
        """True unless Codex runs without a sandbox (unset means workspace-write)."""
        return self.sandbox_mode != NO_SANDBOX_MODE


def sandbox_args(mode: str | None) -> list[str]:
    """The Codex flags for a sandbox mode (README: Configuration)."""
    if mode is None:
        return ["--sandbox", DEFAULT_SANDBOX_MODE]
    if mode == NO_SANDBOX_MODE:
        return ["--dangerously-bypass-approvals-and-sandbox"]
    if mode in SANDBOX_MODES:
        return ["--sandbox", mode]
    raise ConfigError(f"sandbox_mode {mode!r} is not valid; use one of: {', '.join(SANDBOX_MODES)}")


def load_config(path: Path) -> CodexConfig:
    """Read, parse and validate the config file at ``path``.

    Decisions beyond the README's rules:
    - ``cd`` and ``workspace_dir`` both set: ``cd`` wins (it is the name of
      Codex's own flag); if they differ, one warning says so.
    - A ``profile`` key selecting ``[profiles.<name>]`` is honoured for
      ``sandbox_mode`` and ``model_provider``, as Codex itself does; a profile
      that does not exist is an error (Codex would refuse to start).
    - A UTF-8 byte-order mark at the start of the file is tolerated.
    - The instructions text is stripped of leading/trailing blank space.
    """
    path = _absolute(Path(path).expanduser())
    raw = _parse(path, read_text_file(path, what="config file", limit=CONFIG_MAX_BYTES, regular_only=True))
    where = str(path)
    warnings: list[str] = []

    flywheel = raw.get("flywheel")
    if flywheel is None:
        raise ConfigError(
            f"{where}: no [flywheel] table. Add one with the instructions for Codex, e.g.\n"
            f'  [flywheel]\n  {INLINE_KEY} = "Use /mnt/work as your workspace."\n'
            f'or\n  [flywheel]\n  {FILE_KEY} = "workspace_notes.md"'
        )
    if not isinstance(flywheel, dict):
        raise ConfigError(
            f"{where}: key 'flywheel' must be a table ([flywheel]), not {_kind(flywheel)}"
        )

    instructions = _instructions(path, flywheel, warnings)

    workspace_template = _workspace_template(path, raw, warnings)
    sandbox_mode = _effective(path, raw, "sandbox_mode")
    if sandbox_mode is not None and sandbox_mode not in SANDBOX_MODES:
        raise ConfigError(
            f"{where}: sandbox_mode = {sandbox_mode!r} is not valid; "
            f"use one of: {', '.join(SANDBOX_MODES)} (or leave it unset)"
        )
    if sandbox_mode is None:
        warnings.append(
            f"{where}: sandbox_mode is not set; passing --sandbox {DEFAULT_SANDBOX_MODE} "
            "to Codex (its default for exec, read-only, could not write any file)"
        )
    elif sandbox_mode == "read-only":
        warnings.append(
            f"{where}: sandbox_mode = 'read-only': Codex cannot write files, so no "
            "artifacts (flywheel_artifacts.json) can be written; use 'workspace-write'"
        )

    writable_roots = _writable_roots(path, raw)
    model_provider = _effective(path, raw, "model_provider")

    return CodexConfig(
        path=path,
        instructions=instructions,
        warnings=tuple(warnings),
        workspace_template=workspace_template,
        sandbox_mode=sandbox_mode,
        writable_roots=writable_roots,
        model_provider=model_provider,
        raw=raw,
    )


def _absolute(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL: reading will say so
        return path.absolute()


# --- reading -----------------------------------------------------------------


def read_text_file(path: Path, *, what: str, limit: int, key: str | None = None, regular_only: bool = False,
                   instead: str = "give a plain text file") -> str:
    """The UTF-8 text of ``path`` (at most ``limit`` bytes; with ``regular_only``,
    only a regular file, else ``instead`` says what to do), or a ConfigError
    saying why it can't be had."""
    label = f"{what} {path}" if key is None else f"{what} {path} (from {key})"
    try:
        data = _read_bounded(path, label, limit, regular_only, instead)
    except FileNotFoundError:
        raise ConfigError(f"{label} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{label} is a folder, not a file") from None
    except PermissionError:
        raise ConfigError(f"{label} cannot be read: permission denied") from None
    except OSError as exc:
        raise ConfigError(f"{label} cannot be read: {exc.strerror or exc}") from None
    except ValueError:  # os.open refuses a NUL in the path
        raise ConfigError(f"{what} path {str(path)!r} contains a NUL byte") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{label} is not UTF-8 text (invalid byte 0x{data[exc.start]:02x} on line {line}); "
            "save it as UTF-8"
        ) from None


def _read_bounded(path: Path, label: str, limit: int, regular_only: bool, instead: str) -> bytes:
    # O_NONBLOCK: opening a FIFO with no writer would wait forever; for a
    # regular file the flag changes nothing.
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_NONBLOCK if regular_only else 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError
        if regular_only and not stat.S_ISREG(mode):
            raise ConfigError(f"{label} is not a regular file ({_file_kind(mode)}); {instead}")
        data = _read_up_to(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(f"{label} is larger than {_size(limit)}, the most bootstrap reads; "
                          "is it the right file?")
    return data


def _read_up_to(fd: int, count: int) -> bytes:
    chunks: list[bytes] = []
    left = count
    while left > 0:
        chunk = os.read(fd, min(left, MiB))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a plain file"


def _size(count: int) -> str:
    return f"{count // MiB} MiB" if count % MiB == 0 else f"{count} bytes"


def _parse(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deeply to read") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message carries "(at line N, column M)"; surface the line first.
        msg = str(exc)
        m = re.search(r"at line (\d+)", msg)
        at = f" line {m.group(1)}" if m else ""
        raise ConfigError(f"{path}{at}: not valid TOML: {msg}") from None


# --- values ------------------------------------------------------------------


def _kind(value: Any) -> str:
    """A TOML-flavoured name for a value's type, for error messages."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (_dt.date, _dt.time)):
        return f"a date/time ({value.isoformat()})"
    return type(value).__name__


def _string(path: Path, table: dict[str, Any], key: str, label: str) -> str | None:
    value = table.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ConfigError(f"{path}: {label} must be a string, not {_kind(value)}")


def _instructions(path: Path, flywheel: dict[str, Any], warnings: list[str]) -> str:
    inline = _string(path, flywheel, INLINE_KEY, f"[flywheel] {INLINE_KEY}")
    file_value = _string(path, flywheel, FILE_KEY, f"[flywheel] {FILE_KEY}")
    if inline is None and file_value is None:
        raise ConfigError(
            f"{path}: [flywheel] needs {INLINE_KEY} (the text) or {FILE_KEY} "
            "(a file holding it, relative to the config's folder)"
        )
    if file_value is not None:
        if not file_value.strip():
            raise ConfigError(f"{path}: [flywheel] {FILE_KEY} is empty; give a file path")
        if inline is not None:
            warnings.append(
                f"{path}: both [flywheel] {INLINE_KEY} and {FILE_KEY} are set; "
                "the file wins, inline value ignored"
            )
        _no_nul(path, f"[flywheel] {FILE_KEY}", file_value)
        file_path = _relative_to(path, file_value)
        text = read_text_file(
            file_path, what="instructions file", key=f"[flywheel] {FILE_KEY} in {path}",
            limit=INSTRUCTIONS_MAX_BYTES, regular_only=True,
        )
        if not text.strip():
            raise ConfigError(
                f"instructions file {file_path} (from [flywheel] {FILE_KEY} in {path}) "
                "is blank; write the workspace instructions into it"
            )
        return text.strip()
    assert inline is not None
    if not inline.strip():
        raise ConfigError(
            f"{path}: [flywheel] {INLINE_KEY} is blank; write the workspace instructions "
            "(where to work, what the machine has)"
        )
    return inline.strip()


def _workspace_template(path: Path, raw: dict[str, Any], warnings: list[str]) -> str | None:
    cd = _string(path, raw, "cd", "cd")
    workspace_dir = _string(path, raw, "workspace_dir", "workspace_dir")
    for key, value in (("cd", cd), ("workspace_dir", workspace_dir)):
        if value is not None and not value.strip():
            raise ConfigError(f"{path}: {key} is empty; give a folder or remove the key")
        if value is not None:
            _no_nul(path, key, value)
    if cd is not None and workspace_dir is not None and cd != workspace_dir:
        warnings.append(
            f"{path}: both cd ({cd!r}) and workspace_dir ({workspace_dir!r}) are set; "
            "cd wins, workspace_dir ignored"
        )
    return cd if cd is not None else workspace_dir


def _effective(path: Path, raw: dict[str, Any], key: str) -> str | None:
    """``key`` as Codex sees it: the selected profile's value, else the top level."""
    value = _string(path, raw, key, key)
    profile = _string(path, raw, "profile", "profile")
    if profile is None:
        return value
    profiles = raw.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigError(f"{path}: profiles must be a table ([profiles.<name>]), not {_kind(profiles)}")
    chosen = profiles.get(profile)
    if chosen is None:
        raise ConfigError(
            f"{path}: profile = {profile!r} but there is no [profiles.{profile}] table"
        )
    if not isinstance(chosen, dict):
        raise ConfigError(f"{path}: profiles.{profile} must be a table, not {_kind(chosen)}")
    from_profile = _string(path, chosen, key, f"[profiles.{profile}] {key}")
    return from_profile if from_profile is not None else value


def _writable_roots(path: Path, raw: dict[str, Any]) -> tuple[Path, ...]:
    section = raw.get("sandbox_workspace_write")
    if section is None:
        return ()
    if not isinstance(section, dict):
        raise ConfigError(
            f"{path}: sandbox_workspace_write must be a table ([sandbox_workspace_write]), "
            f"not {_kind(section)}"
        )
    roots = section.get("writable_roots")
    if roots is None:
        return ()
    label = "[sandbox_workspace_write] writable_roots"
    if not isinstance(roots, list):
        raise ConfigError(f"{path}: {label} must be a list of folder paths, not {_kind(roots)}")
    resolved: list[Path] = []
    for i, root in enumerate(roots):
        if not isinstance(root, str):
            raise ConfigError(
                f"{path}: {label} must be a list of folder paths; item {i + 1} is {_kind(root)}"
            )
        if not root.strip():
            raise ConfigError(f"{path}: {label} item {i + 1} is empty; give a folder path")
        _no_nul(path, f"{label} item {i + 1}", root)
        resolved.append(_relative_to(path, root))
    return tuple(resolved)


def _no_nul(path: Path, label: str, value: str) -> None:
    # No file name can hold one; the OS would refuse it later with a ValueError.
    if "\x00" in value:
        raise ConfigError(f"{path}: {label} contains a NUL byte (\\u0000); no path can hold one")


def _relative_to(config_path: Path, value: str) -> Path:
    """``value`` with ``~`` expanded, relative paths taken from the config's folder."""
    p = Path(os.path.expanduser(value))
    if not p.is_absolute():
        p = config_path.parent / p
    return p
