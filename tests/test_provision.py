"""Codex provisioning against a real HTTP server on 127.0.0.1 serving real tarballs."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from supervisor import mock_agent
from supervisor.provision import (
    CHECKSUM_NAME,
    CODEX_VERSION,
    CodexCommand,
    TerminalProgress,
    arch_for,
    ensure_downloaded,
    find_codex,
    host_arch,
    installed_path,
    kept_checksum,
    login_ok,
    member_name,
    release_url,
    terminal_progress,
)
from tests.loopback import serving
from workers.common.errors import ConfigError, ProvisionError

ARCH = "x86_64"
FAKE_CODEX = b"#!/bin/sh\necho \"fake-codex $*\"\n"
PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def make_tarball(members: dict[str, bytes] | None = None, *, arch: str = ARCH, symlink: bool = False) -> bytes:
    """A gzip tar like the release's: by default one executable member."""
    if members is None:
        members = {member_name(arch): FAKE_CODEX}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if symlink:
                info.type = tarfile.SYMTYPE
                info.linkname = "/bin/sh"
                tar.addfile(info)
            else:
                info.size = len(data)
                info.mode = 0o755
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    truncate: bool = False  # announce the full length, send half, hang up
    gate: threading.Event | None = None  # hold the answer until set


@dataclass
class ServerState:
    replies: list[Reply] = field(default_factory=list)  # consumed in order; the last repeats
    requests: list[str] = field(default_factory=list)
    first_request: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_reply(self, path: str) -> Reply:
        with self.lock:
            self.requests.append(path)
            self.first_request.set()
            return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


@dataclass
class Server:
    url: str
    state: ServerState

    def serve(self, *replies: Reply) -> None:
        self.state.replies[:] = list(replies)

    @property
    def count(self) -> int:
        return len(self.state.requests)


@pytest.fixture
def server() -> Iterator[Server]:
    state = ServerState(replies=[Reply(404)])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            reply = state.next_reply(self.path)
            if reply.gate is not None:
                reply.gate.wait(30)
            self.send_response(reply.status)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if reply.truncate:
                self.wfile.write(reply.body[: len(reply.body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(reply.body)

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as base:
        yield Server(f"{base}/mirror", state)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


def env_for(server: Server, **extra: str) -> dict[str, str]:
    return {"FLYWHEEL_CODEX_DOWNLOAD_URL": server.url, **extra}


def download(home: Path, env: dict[str, str], **kw: object) -> Path:
    opts: dict[str, object] = {"arch": ARCH, "tries": 3, "backoff_base": 0.01, "backoff_cap": 0.02}
    opts.update(kw)
    return ensure_downloaded(home, env, **opts)  # type: ignore[arg-type]


def folder_entries(home: Path) -> set[str]:
    folder = home / "codex" / CODEX_VERSION
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


# ----------------------------------------------------------------------------- names


def test_release_url_default_and_mirror() -> None:
    assert release_url("0.169.0", "x86_64") == (
        "https://github.com/openai/codex/releases/download/rust-v0.169.0/"
        "codex-x86_64-unknown-linux-musl.tar.gz"
    )
    assert release_url("1.2.3", "aarch64", "http://mirror/x/") == (
        "http://mirror/x/codex-aarch64-unknown-linux-musl.tar.gz"
    )


def test_arch_for() -> None:
    assert arch_for("Linux", "x86_64") == "x86_64"
    assert arch_for("Linux", "AMD64") == "x86_64"
    assert arch_for("Linux", "aarch64") == "aarch64"
    assert arch_for("Linux", "arm64") == "aarch64"
    with pytest.raises(ProvisionError, match="riscv64"):
        arch_for("Linux", "riscv64")
    with pytest.raises(ProvisionError, match="Darwin.*PATH"):
        arch_for("Darwin", "arm64")


# -------------------------------------------------------------------------- download


def test_first_download_installs_a_working_binary_then_reuses_it(tmp_path: Path, server: Server) -> None:
    body = make_tarball()
    server.serve(Reply(200, body))
    seen: list[tuple[int, int | None]] = []

    path = download(tmp_path, env_for(server), progress=lambda d, t: seen.append((d, t)))

    assert path == installed_path(tmp_path) == tmp_path / "codex" / CODEX_VERSION / "codex"
    assert os.access(path, os.X_OK)
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "fake-codex --version"
    assert server.state.requests == [f"/mirror/{member_name(ARCH)}.tar.gz"]
    assert seen[0] == (0, len(body)) and seen[-1] == (len(body), len(body))
    assert folder_entries(tmp_path) == {"codex", ".lock", CHECKSUM_NAME}

    # Second start on the same host: no request at all.
    assert download(tmp_path, env_for(server)) == path
    assert server.count == 1


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"this is not an archive at all", id="garbage"),
        pytest.param(make_tarball({"something-else": FAKE_CODEX}), id="member-missing"),
        pytest.param(make_tarball({member_name(ARCH): b""}), id="member-empty"),
        pytest.param(make_tarball({member_name(ARCH): b""}, symlink=True), id="member-is-symlink"),
        pytest.param(make_tarball()[:-40], id="gzip-cut-short"),
        pytest.param(gzip.compress(b"\0" * 1024), id="gzip-not-tar"),
    ],
)
def test_corrupt_archive_is_never_installed(tmp_path: Path, server: Server, body: bytes) -> None:
    server.serve(Reply(200, body))
    with pytest.raises(ProvisionError) as info:
        download(tmp_path, env_for(server))
    assert server.url in info.value.message
    assert "FLYWHEEL_CODEX_DOWNLOAD_URL" in info.value.message
    assert folder_entries(tmp_path) == {".lock"}
    assert server.count == 3  # retried, then gave up


def test_other_members_are_never_extracted(tmp_path: Path, server: Server) -> None:
    body = make_tarball({"../../escaped": b"nope", member_name(ARCH): FAKE_CODEX, "/abs": b"nope"})
    server.serve(Reply(200, body))
    download(tmp_path, env_for(server))
    assert folder_entries(tmp_path) == {"codex", ".lock", CHECKSUM_NAME}
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "codex" / "escaped").exists()


def test_sha256_checked(tmp_path: Path, server: Server) -> None:
    body = make_tarball()
    server.serve(Reply(200, body))
    with pytest.raises(ProvisionError, match="SHA-256 mismatch"):
        download(tmp_path, env_for(server, FLYWHEEL_CODEX_SHA256="0" * 64))
    assert folder_entries(tmp_path) == {".lock"}

    good = hashlib.sha256(body).hexdigest().upper()
    assert download(tmp_path, env_for(server, FLYWHEEL_CODEX_SHA256=f" {good}\n")).is_file()


def test_sha256_of_every_download_printed_and_kept(tmp_path: Path, server: Server,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    body = make_tarball()
    server.serve(Reply(200, body))
    digest = hashlib.sha256(body).hexdigest()
    download(tmp_path, env_for(server))
    said = capsys.readouterr().err
    assert f"SHA-256 {digest} (not verified: set FLYWHEEL_CODEX_SHA256 to pin it)" in said
    assert kept_checksum(tmp_path) == digest
    (tmp_path / "codex" / CODEX_VERSION / "codex").unlink()
    download(tmp_path, env_for(server, FLYWHEEL_CODEX_SHA256=digest))
    assert f"SHA-256 {digest} (verified against FLYWHEEL_CODEX_SHA256)" in capsys.readouterr().err


def test_malformed_sha256_is_a_config_error(tmp_path: Path, server: Server) -> None:
    with pytest.raises(ConfigError, match="FLYWHEEL_CODEX_SHA256"):
        download(tmp_path, env_for(server, FLYWHEEL_CODEX_SHA256="abc"))
    assert server.count == 0


def test_404_fails_at_once(tmp_path: Path, server: Server) -> None:
    server.serve(Reply(404, b"no such release"))
    # A long backoff would make any retry obvious; the request count proves none happened.
    with pytest.raises(ProvisionError, match="HTTP 404") as info:
        download(tmp_path, env_for(server), tries=4, backoff_base=60, backoff_cap=60)
    assert server.count == 1
    assert "PATH" in info.value.message and info.value.exit_code == 4
    assert folder_entries(tmp_path) == {".lock"}


def test_5xx_is_retried(tmp_path: Path, server: Server) -> None:
    server.serve(Reply(503), Reply(200, make_tarball()))
    assert download(tmp_path, env_for(server)).is_file()
    assert server.count == 2


def test_interrupted_download_is_discarded_and_retried(tmp_path: Path, server: Server) -> None:
    body = make_tarball({member_name(ARCH): FAKE_CODEX + b"#" * 50_000})
    server.serve(Reply(200, body, truncate=True), Reply(200, body))
    path = download(tmp_path, env_for(server))
    assert path.read_bytes().startswith(FAKE_CODEX)
    assert server.count == 2
    assert folder_entries(tmp_path) == {"codex", ".lock", CHECKSUM_NAME}


def test_always_interrupted_download_fails_cleanly(tmp_path: Path, server: Server) -> None:
    server.serve(Reply(200, make_tarball(), truncate=True))
    with pytest.raises(ProvisionError, match="interrupted"):
        download(tmp_path, env_for(server), tries=2)
    assert folder_entries(tmp_path) == {".lock"}


def test_leftovers_of_a_killed_download_are_removed(tmp_path: Path, server: Server) -> None:
    folder = tmp_path / "codex" / CODEX_VERSION
    folder.mkdir(parents=True)
    (folder / ".download-abc").write_bytes(b"half")
    (folder / ".extract-def").write_bytes(b"half")
    server.serve(Reply(200, make_tarball()))
    download(tmp_path, env_for(server))
    assert folder_entries(tmp_path) == {"codex", ".lock", CHECKSUM_NAME}


def test_server_down(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/gone"
    with pytest.raises(ProvisionError, match="cannot connect") as info:
        download(tmp_path, {"FLYWHEEL_CODEX_DOWNLOAD_URL": url}, tries=2)
    assert url in info.value.message
    assert folder_entries(tmp_path) == {".lock"}


def test_credentials_in_mirror_url_are_not_shown(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ProvisionError) as info:
        download(tmp_path, {"FLYWHEEL_CODEX_DOWNLOAD_URL": f"http://user:s3cret@127.0.0.1:{port}/x"}, tries=1)
    assert "s3cret" not in info.value.message


CHILD = """
import sys
from pathlib import Path
from supervisor.provision import ensure_downloaded
path = ensure_downloaded(Path(sys.argv[1]), {"FLYWHEEL_CODEX_DOWNLOAD_URL": sys.argv[2]}, arch="x86_64", tries=1)
print(path)
"""


def lock_waiter_seen(lock_file: Path) -> bool:
    """Whether some process is blocked in flock() on this file (Linux /proc/locks)."""
    ino = os.stat(lock_file).st_ino
    text = Path("/proc/locks").read_text()
    return any("->" in line and f":{ino} " in line for line in text.splitlines())


def test_parallel_starts_download_once(tmp_path: Path, server: Server) -> None:
    gate = threading.Event()
    server.serve(Reply(200, make_tarball(), gate=gate))
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    cmd = [sys.executable, "-c", CHILD, str(tmp_path), server.url]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    second = None
    try:
        # The first holds the lock while its answer is held back by the gate.
        assert server.state.first_request.wait(20)
        second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        lock_file = tmp_path / "codex" / CODEX_VERSION / ".lock"
        if Path("/proc/locks").exists():
            deadline = time.monotonic() + 20
            while not lock_waiter_seen(lock_file):
                assert time.monotonic() < deadline, "second process never waited on the lock"
                time.sleep(0.02)
        gate.set()
        out1, _ = first.communicate(timeout=30)
        out2, _ = second.communicate(timeout=30)
    finally:
        gate.set()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert first.returncode == 0 and second.returncode == 0
    assert out1.strip() == out2.strip() == str(installed_path(tmp_path))
    assert server.count == 1


# ------------------------------------------------------------------- find / login


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_find_codex_mock(tmp_path: Path) -> None:
    cmd = find_codex({"PATH": ""}, tmp_path, mock=True, echo_progress=None)
    assert cmd == CodexCommand(mock_agent.command(), "mock")


def test_find_codex_on_path(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = write_script(bindir / "codex", "#!/bin/sh\nexit 0\n")
    cmd = find_codex({"PATH": str(bindir)}, tmp_path / "home", mock=False, echo_progress=None)
    assert cmd == CodexCommand((str(script),), "path")


def test_find_codex_downloads_then_uses_cache(tmp_path: Path, server: Server) -> None:
    try:
        arch = host_arch()
    except ProvisionError:
        pytest.skip("no Codex build for this host")
    server.serve(Reply(200, make_tarball(arch=arch)))
    env = {"PATH": str(tmp_path / "empty"), "FLYWHEEL_CODEX_DOWNLOAD_URL": server.url}
    first = find_codex(env, tmp_path, mock=False, echo_progress=None, tries=1)
    assert first == CodexCommand((str(installed_path(tmp_path)),), "download")
    again = find_codex(env, tmp_path, mock=False, echo_progress=None, tries=1)
    assert again == CodexCommand((str(installed_path(tmp_path)),), "cache")
    assert server.count == 1


LOGIN_SCRIPT = """#!/bin/sh
cat >/dev/null  # hangs unless stdin is closed
if [ "$1 $2" = "login status" ] && [ -f "$CODEX_HOME/auth.json" ]; then
  echo "Logged in using an API key" >&2; exit 0
fi
echo "Not logged in" >&2; exit 1
"""


def test_login_ok(tmp_path: Path) -> None:
    codex = CodexCommand((str(write_script(tmp_path / "codex", LOGIN_SCRIPT)),), "path")
    home = tmp_path / "codex-home"
    home.mkdir()
    env = {"PATH": os.environ.get("PATH", "")}
    assert login_ok(codex, home, env) == (False, "Not logged in")
    (home / "auth.json").write_text("{}")
    assert login_ok(codex, home, env) == (True, "Logged in using an API key")


def test_login_ok_mock_and_unrunnable(tmp_path: Path) -> None:
    assert login_ok(CodexCommand(("x",), "mock"), tmp_path, {}) == (True, "")
    ok, why = login_ok(CodexCommand((str(tmp_path / "missing"),), "path"), tmp_path, {})
    assert not ok and "missing" in why


# ------------------------------------------------------------------------ progress


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_progress() -> None:
    assert terminal_progress(io.StringIO()) is None
    out = FakeTty()
    bar = terminal_progress(out)
    assert isinstance(bar, TerminalProgress)
    bar(0, 2 * 1024 * 1024)
    bar(2 * 1024 * 1024, 2 * 1024 * 1024)
    text = out.getvalue()
    assert text.endswith("Downloading Codex: 2.0 MiB / 2.0 MiB (100%)\x1b[K\n")
    assert text.startswith("\rDownloading Codex: 0 B / 2.0 MiB (0%)")
    bar(10, None)
    bar.finish()
    assert out.getvalue().endswith("Downloading Codex: 10 B\x1b[K\n")
