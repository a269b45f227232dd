"""Where bootstrap keeps its own files, and how it writes them: private to the
user (folders 0700, files 0600) and, where a reader may look at any moment,
atomically."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

from workers.common.errors import ConfigError

# Temporary files of atomic writes live in this subfolder of the destination's
# folder: the workers watch the state folder with watchdog, which holds back a
# rename *within* a watched folder for half a second (to pair its two halves)
# and delays every later event with it.
TMP_FOLDER = ".tmp"


def flywheel_home(env: Mapping[str, str] | None = None) -> Path:
    """Bootstrap's own home: FLYWHEEL_HOME of `env` (default os.environ), else ~/.flywheel."""
    env = os.environ if env is None else env
    # Absolute at once: Codex runs with --cd <workspace>, so a relative
    # CODEX_HOME under it would name another folder (or none).
    return Path(os.path.abspath(Path(env.get("FLYWHEEL_HOME") or "~/.flywheel").expanduser()))


def open_private(path: Path, flags: int) -> int:
    return os.open(path, flags | os.O_CLOEXEC, 0o600)


def write_all(fd: int, data: bytes | bytearray) -> None:
    """os.write until every byte is written (a write may take only part)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_private(path: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    """Replace `path` by `data` atomically, as a 0600 file: never a moment where
    another user could read it, never a half-written file. The temporary file
    goes to `tmp_dir` (on the same filesystem), by default TMP_FOLDER beside
    `path`."""
    tmp_dir = path.parent / TMP_FOLDER if tmp_dir is None else tmp_dir
    tmp_dir.mkdir(mode=0o700, exist_ok=True)
    tmp = tmp_dir / f"{path.name}.{os.getpid()}"
    try:
        fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.fchmod(fd, 0o600)  # a temporary left by a crash may have other bits
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def replace_file(path: Path, data: bytes) -> None:
    """Write `path` as a new regular file, never through whatever stands at that
    name: a symlink (which could point out of a workspace that an earlier,
    sandboxed Codex wrote) or a FIFO is replaced, not followed or opened."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by a crash; unlink removes a link, not its target
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        try:
            os.replace(tmp, path)
        except IsADirectoryError:
            raise IsADirectoryError(f"{path} is a folder, where bootstrap writes a file: remove or rename it") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def make_private_dir(path: Path, label: str, hint: str = "") -> None:
    """Create `path` (parents too) as 0700, also when it already existed."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise ConfigError(f"{label} {path} cannot be created: {exc.strerror or exc}{hint}") from None
