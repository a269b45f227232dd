"""Making sure a `codex` CLI is there (README: Codex).

Order: the built-in mock agent in mock mode; else `codex` on PATH; else the pinned
release, downloaded once per host into `$FLYWHEEL_HOME/codex/<version>/codex`.

The download is the only long, failure-prone step before a run starts, so it is
built to be boring: one process downloads while parallel runs wait on a file lock;
the archive is streamed to a temporary file beside the destination, checked
(complete, optional SHA-256, a gzip tar holding the one member we want as a regular
file), and only the extracted binary is renamed into place. Nothing half-written is
ever at the final path, so an interrupted or corrupt download is simply retried on
the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

from supervisor import mock_agent
from supervisor.background import Background
from workers.common.backoff import backoff_delay
from workers.common.errors import ConfigError, ProvisionError
from workers.common.redact import mask_url_userinfo

if TYPE_CHECKING:
    import requests

CODEX_VERSION = "0.169.0"

DEFAULT_BASE_TEMPLATE = "https://github.com/openai/codex/releases/download/rust-v{version}"
ENV_DOWNLOAD_URL = "FLYWHEEL_CODEX_DOWNLOAD_URL"
ENV_SHA256 = "FLYWHEEL_CODEX_SHA256"
# The SHA-256 of the archive a downloaded Codex came from, beside the binary.
CHECKSUM_NAME = "codex.tar.gz.sha256"

# Temporary files live beside the destination (same filesystem, so os.replace is
# atomic) under these prefixes; leftovers of a killed download are removed under
# the lock by the next start.
_PART_PREFIX = ".download-"
_EXTRACT_PREFIX = ".extract-"
_LOCK_NAME = ".lock"
_CHUNK = 256 * 1024

ProgressFn = Callable[[int, "int | None"], None]
Source = Literal["mock", "path", "download", "cache"]


@dataclass(frozen=True)
class CodexCommand:
    """How to start Codex: the argv that `exec …` is appended to, and where it came from."""

    argv_prefix: tuple[str, ...]
    source: Source


class _Retryable(Exception):
    """One attempt failed in a way another attempt may fix."""


# --------------------------------------------------------------------------- names


def arch_for(system: str, machine: str) -> str:
    """The release's CPU name for an OS/CPU pair; ProvisionError when there is no build."""
    if system != "Linux":
        raise ProvisionError(
            f"No Codex release is downloaded for {system}: only Linux builds are fetched. "
            "Install codex yourself so it is on PATH (e.g. `npm install -g @openai/codex`)."
        )
    m = machine.lower()
    if m in ("x86_64", "amd64"):
        return "x86_64"
    if m in ("aarch64", "arm64"):
        return "aarch64"
    raise ProvisionError(
        f"No Codex release exists for CPU {machine!r} (only x86_64 and aarch64). "
        "Install codex yourself so it is on PATH."
    )


def host_arch() -> str:
    """`x86_64` or `aarch64` for this host; ProvisionError elsewhere."""
    return arch_for(platform.system(), platform.machine())


def member_name(arch: str) -> str:
    """The binary's name inside the release archive."""
    return f"codex-{arch}-unknown-linux-musl"


def release_url(version: str, arch: str, base: str | None = None) -> str:
    """URL of the release tarball; `base` (a mirror) replaces GitHub's release folder."""
    root = base if base else DEFAULT_BASE_TEMPLATE.format(version=version)
    return f"{root.rstrip('/')}/{member_name(arch)}.tar.gz"


def kept_checksum(home: Path, version: str = CODEX_VERSION) -> str | None:
    """The SHA-256 kept when bootstrap downloaded this Codex; None if not kept."""
    try:
        text = (install_dir(home, version) / CHECKSUM_NAME).read_text()
    except OSError:
        return None
    digest = text.split()[0] if text.split() else ""
    return digest if re.fullmatch(r"[0-9a-f]{64}", digest) else None


def install_dir(home: Path, version: str = CODEX_VERSION) -> Path:
    return home / "codex" / version


def installed_path(home: Path, version: str = CODEX_VERSION) -> Path:
    """Where the downloaded binary lives once complete."""
    return install_dir(home, version) / "codex"


def expected_sha256(env: Mapping[str, str]) -> str | None:
    """The checksum the user pinned, lower-case; ConfigError when it is not one."""
    raw = (env.get(ENV_SHA256) or "").strip().lower()
    if not raw:
        return None
    if not re.fullmatch(r"[0-9a-f]{64}", raw):
        raise ConfigError(
            f"{ENV_SHA256}={raw[:80]!r} is not a SHA-256 (64 hex digits). "
            "Set it to the archive's checksum or unset it."
        )
    return raw


def _is_usable(path: Path) -> bool:
    # Only complete binaries are ever renamed to this path, so existence plus the
    # executable bit is proof enough; the size check guards against a user's touch.
    try:
        st = path.stat()
    except OSError:
        return False
    return path.is_file() and st.st_size > 0 and os.access(path, os.X_OK)


# ------------------------------------------------------------------------ download


def _failure(url: str, why: str) -> ProvisionError:
    return ProvisionError(
        f"Could not download Codex {CODEX_VERSION} from {mask_url_userinfo(url)}: {why}. "
        f"Install codex so it is on PATH (e.g. `npm install -g @openai/codex`), or set "
        f"{ENV_DOWNLOAD_URL} to a mirror folder holding {url.rsplit('/', 1)[-1]}."
    )


def _describe(exc: requests.RequestException) -> str:
    """A short reason: requests' own text nests three exception reprs deep."""
    import requests

    kind = "timed out" if isinstance(exc, requests.Timeout) else "cannot connect"
    if not isinstance(exc, (requests.Timeout, requests.ConnectionError)):
        kind = type(exc).__name__
    errno_text = re.findall(r"\[Errno -?\d+\] ([^\"')]+)", str(exc))
    return f"{kind} ({errno_text[-1].strip()})" if errno_text else kind


def _stream_to(
    url: str,
    out: IO[bytes],
    *,
    timeout: tuple[float, float],
    progress: ProgressFn | None,
) -> str:
    """Download `url` into `out`; return the SHA-256 of the bytes as sent.

    Raises _Retryable for what another try may fix, ProvisionError for what it won't.
    """
    # Imported here: a start that finds Codex on PATH never downloads, and
    # requests is a good part of a start's import time (benchmarks/README.md).
    import requests
    import urllib3.exceptions

    try:
        resp = requests.get(url, stream=True, timeout=timeout)
    except requests.RequestException as exc:
        raise _Retryable(_describe(exc)) from exc
    with resp:
        if resp.status_code >= 500 or resp.status_code in (408, 429):
            raise _Retryable(f"HTTP {resp.status_code}")
        if resp.status_code != 200:
            raise _failure(url, f"HTTP {resp.status_code}")
        total_header = resp.headers.get("Content-Length", "")
        total = int(total_header) if total_header.isdigit() else None
        digest = hashlib.sha256()
        done = 0
        if progress:
            progress(0, total)
        try:
            # Raw bytes, not decoded: a server that labels the .tar.gz with
            # Content-Encoding: gzip must not make us checksum something else.
            for chunk in resp.raw.stream(_CHUNK, decode_content=False):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise _Retryable(f"download interrupted after {done} bytes ({type(exc).__name__})") from exc
        if total is not None and done != total:
            raise _Retryable(f"download interrupted: got {done} of {total} bytes")
        if done == 0:
            raise _Retryable("the server sent an empty file")
        return digest.hexdigest()


def _extract_member(archive: Path, member: str, folder: Path) -> Path:
    """Copy the one wanted member's bytes out of the archive into a temp file.

    Never `extract()`: member paths and links in a downloaded archive are not
    trusted, and nothing but this one file is wanted.
    """
    # Here, not at the top: only a download needs them, and every start imports this module.
    import gzip
    import tarfile
    import zlib

    try:
        with tarfile.open(archive, "r:gz") as tar:
            info = None
            for candidate in (member, f"./{member}"):
                try:
                    info = tar.getmember(candidate)
                    break
                except KeyError:
                    continue
            if info is None:
                raise _Retryable(f"the archive holds no file named {member}")
            if not info.isreg():
                raise _Retryable(f"{member} in the archive is not a regular file")
            if info.size <= 0:
                raise _Retryable(f"{member} in the archive is empty")
            src = tar.extractfile(info)
            if src is None:
                raise _Retryable(f"{member} in the archive cannot be read")
            fd, name = tempfile.mkstemp(prefix=_EXTRACT_PREFIX, dir=folder)
            out_path = Path(name)
            try:
                with os.fdopen(fd, "wb") as out, src:
                    copied = 0
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                        copied += len(chunk)
                if copied != info.size:
                    raise _Retryable(f"{member} in the archive is truncated")
            except BaseException:
                out_path.unlink(missing_ok=True)
                raise
            return out_path
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _Retryable(f"not a valid .tar.gz archive ({exc})") from exc


def _clean_leftovers(folder: Path) -> None:
    # Called with the lock held: no other process is writing these right now.
    for entry in folder.iterdir():
        if entry.name.startswith((_PART_PREFIX, _EXTRACT_PREFIX)):
            with contextlib.suppress(OSError):
                entry.unlink()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    # flock is released by the kernel when the holder dies, so a killed download
    # never blocks the next start.
    fd = os.open(folder / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _attempt(
    url: str,
    folder: Path,
    dest: Path,
    *,
    arch: str,
    sha256: str | None,
    timeout: tuple[float, float],
    progress: ProgressFn | None,
) -> None:
    """One download + verify + install; temp files are gone whatever happens."""
    fd, part_name = tempfile.mkstemp(prefix=_PART_PREFIX, dir=folder)
    part = Path(part_name)
    binary: Path | None = None
    try:
        with os.fdopen(fd, "wb") as out:
            got = _stream_to(url, out, timeout=timeout, progress=progress)
        if sha256 is not None and got != sha256:
            raise _Retryable(f"SHA-256 mismatch: got {got}, {ENV_SHA256} says {sha256}")
        binary = _extract_member(part, member_name(arch), folder)
        binary.chmod(0o755)
        # Kept beside the binary (before it appears, so a binary never lacks it)
        # and said once, so what was installed can be checked later.
        checked = f"verified against {ENV_SHA256}" if sha256 is not None else \
            f"not verified: set {ENV_SHA256} to pin it"
        (folder / CHECKSUM_NAME).write_text(f"{got}  {url.rsplit('/', 1)[-1]}\n")
        os.replace(binary, dest)
        binary = None
        lead = "\n" if progress is not None else ""  # end the progress line first
        print(f"{lead}flywheel-bootstrap: downloaded Codex {CODEX_VERSION} from {mask_url_userinfo(url)}: "
              f"SHA-256 {got} ({checked}); kept in {folder / CHECKSUM_NAME}", file=sys.stderr, flush=True)
    finally:
        part.unlink(missing_ok=True)
        if binary is not None:
            binary.unlink(missing_ok=True)


def _install(
    home: Path,
    env: Mapping[str, str],
    *,
    progress: ProgressFn | None,
    timeout: tuple[float, float],
    tries: int,
    backoff_base: float,
    backoff_cap: float,
    version: str,
    arch: str | None,
) -> tuple[Path, bool]:
    """The binary's path and whether this call downloaded it."""
    dest = installed_path(home, version)
    if _is_usable(dest):
        return dest, False
    sha256 = expected_sha256(env)
    arch = arch or host_arch()
    url = release_url(version, arch, env.get(ENV_DOWNLOAD_URL) or None)
    folder = install_dir(home, version)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(
            f"Cannot create {folder} for the Codex download: {exc.strerror}. "
            "Set FLYWHEEL_HOME to a writable folder."
        ) from exc
    with _locked(folder):
        # Whoever held the lock before us may have finished the job.
        if _is_usable(dest):
            return dest, False
        _clean_leftovers(folder)
        last = "no attempt made"
        for attempt in range(max(1, tries)):
            if attempt:
                time.sleep(backoff_delay(attempt - 1, backoff_base, backoff_cap))
            try:
                _attempt(url, folder, dest, arch=arch, sha256=sha256, timeout=timeout, progress=progress)
                return dest, True
            except _Retryable as exc:
                last = str(exc)
            except OSError as exc:
                raise ProvisionError(
                    f"Cannot write the Codex download into {folder}: {exc.strerror or exc}. "
                    "Free some disk space or set FLYWHEEL_HOME to a writable folder."
                ) from exc
        n = max(1, tries)
        raise _failure(url, f"{last} (after {n} {'try' if n == 1 else 'tries'})")


def ensure_downloaded(
    home: Path,
    env: Mapping[str, str],
    *,
    progress: ProgressFn | None = None,
    timeout: tuple[float, float] = (10, 30),
    tries: int = 4,
    backoff_base: float = 1.0,
    backoff_cap: float = 15.0,
    version: str = CODEX_VERSION,
    arch: str | None = None,
) -> Path:
    """Path of the pinned Codex binary under `home`, downloading it once if missing."""
    path, _ = _install(
        home,
        env,
        progress=progress,
        timeout=timeout,
        tries=tries,
        backoff_base=backoff_base,
        backoff_cap=backoff_cap,
        version=version,
        arch=arch,
    )
    return path


# ----------------------------------------------------------------------- selection


def find_codex(
    env: Mapping[str, str],
    home: Path,
    *,
    mock: bool,
    echo_progress: ProgressFn | None,
    timeout: tuple[float, float] = (10, 30),
    tries: int = 4,
    backoff_base: float = 1.0,
    backoff_cap: float = 15.0,
) -> CodexCommand:
    """The Codex to run, in the README's order (mock, PATH, cache, download)."""
    if mock:
        return CodexCommand(mock_agent.command(), "mock")
    on_path = shutil.which("codex", path=env.get("PATH", os.defpath))
    if on_path:
        return CodexCommand((os.path.abspath(on_path),), "path")
    path, downloaded = _install(
        home,
        env,
        progress=echo_progress,
        timeout=timeout,
        tries=tries,
        backoff_base=backoff_base,
        backoff_cap=backoff_cap,
        version=CODEX_VERSION,
        arch=None,
    )
    return CodexCommand((str(path),), "download" if downloaded else "cache")


LOGIN_TIMEOUT = 30.0


class LoginCheck:
    """`codex login status` with this CODEX_HOME, started at once and judged
    by `result()`, so a start does its other work while Codex answers (a
    context manager: never left behind)."""

    def __init__(self, codex: CodexCommand, codex_home: Path, env: Mapping[str, str]) -> None:
        self._command = None if codex.source == "mock" else Background(
            [*codex.argv_prefix, "login", "status"], {**env, "CODEX_HOME": str(codex_home)}, LOGIN_TIMEOUT)

    def result(self) -> tuple[bool, str]:
        """Whether it succeeded, and its stderr tail (waits for it, bounded)."""
        if self._command is None:
            return True, ""
        done = self._command.result()
        if done.returncode is None:
            return False, f"`codex login status` {done.problem}" if done.timed_out else done.problem
        tail = done.stderr.decode("utf-8", "replace").strip()[-2000:]
        if done.returncode != 0 and not tail:
            tail = f"`codex login status` exited with code {done.returncode}"
        return done.returncode == 0, tail

    def __enter__(self) -> LoginCheck:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._command is not None:
            self._command.close()


def login_ok(codex: CodexCommand, codex_home: Path, env: Mapping[str, str]) -> tuple[bool, str]:
    """Whether `codex login status` succeeds with this CODEX_HOME, and its stderr tail."""
    with LoginCheck(codex, codex_home, env) as check:
        return check.result()


# ------------------------------------------------------------------------ progress


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


class TerminalProgress:
    """A one-line `\\r` progress display for the download, throttled to ~10 updates/s.

    The line ends (newline) when the count reaches the known total; call finish()
    when the total is unknown or the download stopped early.
    """

    def __init__(self, stream: IO[str], label: str = "Downloading Codex", interval: float = 0.1) -> None:
        self._stream = stream
        self._label = label
        self._interval = interval
        self._last = 0.0
        self._open = False

    def render(self, done: int, total: int | None) -> str:
        if total:
            pct = min(100, done * 100 // total)
            return f"{self._label}: {_human(done)} / {_human(total)} ({pct}%)"
        return f"{self._label}: {_human(done)}"

    def __call__(self, done: int, total: int | None) -> None:
        complete = total is not None and done >= total
        now = time.monotonic()
        if not complete and self._open and now - self._last < self._interval:
            return
        self._last = now
        self._stream.write("\r" + self.render(done, total) + "\x1b[K")
        self._open = True
        if complete:
            self.finish()
        else:
            self._stream.flush()

    def finish(self) -> None:
        if self._open:
            self._stream.write("\n")
            self._stream.flush()
            self._open = False


def terminal_progress(stream: IO[str] | None = None) -> TerminalProgress | None:
    """A progress display when `stream` (default stderr) is a terminal, else None."""
    out = stream if stream is not None else sys.stderr
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        tty = False
    return TerminalProgress(out) if tty else None
