"""`flywheel-bootstrap doctor` (SPEC 16): one line per check, exit 0/1, --json; the
token is checked without claiming the run; TLS/DNS/refused named as such."""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import doctor as dr
from supervisor.local_backend import LocalBackend
from tests.conftest import Env
from tests.test_real_codex import REAL_CODEX, SKIP_REASON

DANGER = '[flywheel]\nworkspace_instructions = "x"\n'
NO_SANDBOX = 'sandbox_mode = "danger-full-access"\n' + DANGER


def doctor(env: Env, *args: str, extra: dict[str, str] | None = None) -> tuple[int, str, str]:
    done = env.run("doctor", *args, extra=extra)
    return done.returncode, done.stdout, done.stderr


def lines_by_name(out: str) -> dict[str, str]:
    found = {}
    for line in out.splitlines():
        mark, rest = line.split(" ", 1)
        found[rest.split(":", 1)[0]] = f"{mark} {rest}"
    return found


def test_all_pass_and_token_checked_without_claiming(env: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    code, out, err = doctor(env, "--config", str(env.config(NO_SANDBOX)), "--server", backend.url,
                            "--run-id", run_id, extra={"FLYWHEEL_RUN_TOKEN": token})
    checks = lines_by_name(out)
    assert checks["config"].startswith("✓"), out
    assert checks["codex"].startswith("✓") and "codex-cli 0.169.0" in checks["codex"], out
    assert checks["codex login"].startswith("✓"), out
    assert checks["backend"].startswith("✓"), out
    # The local backend may not have the control channel yet: then the token is
    # not checked (never by claiming the run); with it, the token is accepted.
    assert checks["token"].startswith(("✓", "–")), out
    assert token not in out + err
    assert backend.request_counts(run_id).get("bootstrap", 0) == 0
    assert backend.run(run_id)["state"] not in ("claimed", "running")
    assert code == (0 if "✗" not in out else 1), out


def test_wrong_token_is_refused_or_not_checked(env: Env, backend: LocalBackend) -> None:
    run_id, _ = backend.create_run()
    code, out, _ = doctor(env, "--config", str(env.config(NO_SANDBOX)), "--server", backend.url,
                          "--run-id", run_id, extra={"FLYWHEEL_RUN_TOKEN": "not-the-token"})
    token_line = lines_by_name(out)["token"]
    assert token_line.startswith(("✗ token: refused", "– token: not checked")), out
    assert backend.request_counts(run_id).get("bootstrap", 0) == 0


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there


def test_refused_and_dns_are_named_and_exit_1(env: Env) -> None:
    url = closed_port_url()
    code, out, _ = doctor(env, "--config", str(env.config(NO_SANDBOX)), "--server", url)
    assert code == 1
    assert f"✗ backend: {url}: connection refused" in out
    assert "fix: start the backend" in out
    code, out, _ = doctor(env, "--config", str(env.config(NO_SANDBOX)), "--server", "http://no-such-host.invalid")
    assert code == 1 and "DNS lookup of no-such-host.invalid failed" in out


@pytest.fixture
def tls_server() -> Iterator[str]:
    """A loopback TLS server with a certificate nobody trusts."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        key, cert = Path(folder) / "k.pem", Path(folder) / "c.pem"
        made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                               "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"], capture_output=True)
        if made.returncode != 0:
            pytest.skip("openssl cannot make a test certificate here")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.2)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                try:
                    with context.wrap_socket(conn, server_side=True):
                        pass
                except (ssl.SSLError, OSError):
                    conn.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield f"https://127.0.0.1:{listener.getsockname()[1]}"
        finally:
            stop.set()
            thread.join(5)
            listener.close()


def test_tls_error_named(env: Env, tls_server: str) -> None:
    code, out, _ = doctor(env, "--config", str(env.config(NO_SANDBOX)), "--server", tls_server)
    assert code == 1
    assert "✗ backend:" in out and "TLS error" in out, out


def test_bad_config_and_json(env: Env, backend: LocalBackend) -> None:
    bad = env.config("[flywheel]\n")
    code, out, _ = doctor(env, "--config", str(bad), "--server", backend.url, "--json")
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["config"]["status"] == "fail" and by_name["config"]["fix"]
    assert by_name["backend"]["status"] == "ok"
    assert {"config", "codex", "codex login", "sandbox", "bubblewrap", "GPUs", "containment", "state folder",
            "backend", "token"} <= set(by_name)
    assert by_name["containment"]["status"] == "ok"


def test_containment_names_cgroup_or_fallback(env: Env, backend: LocalBackend) -> None:
    _, out, _ = doctor(env, "--config", str(env.config(NO_SANDBOX)), "--server", backend.url)
    assert lines_by_name(out)["containment"].startswith(("✓ containment: cgroup v2 ", "✓ containment: no writable"))
    _, out, _ = doctor(env, "--config", str(env.config(NO_SANDBOX)), "--server", backend.url,
                       extra={"FLYWHEEL_CONTAINMENT": "marker"})
    assert "falling back to the FLYWHEEL_RUN_MARKER environment marker" in lines_by_name(out)["containment"]


def test_config_defaults_to_codex_home_config(env: Env, backend: LocalBackend) -> None:
    user_config = Path(env.vars["HOME"]) / ".codex" / "config.toml"
    user_config.parent.mkdir(parents=True)
    user_config.write_text(NO_SANDBOX)
    code, out, _ = doctor(env, "--server", backend.url)
    assert f"✓ config: {user_config} is valid" in out, out


def test_gpus_named_and_missing_nvidia_smi_said(env: Env, backend: LocalBackend) -> None:
    code, out, _ = doctor(env, "--config", str(env.config(NO_SANDBOX)), "--server", backend.url,
                          extra={"PATH": f"{env.bin}:/usr/bin:/bin"})
    if not os.path.exists("/usr/bin/nvidia-smi"):
        assert "– GPUs: nvidia-smi not found" in out, out
    fake = Path(__file__).resolve().parent.parent / "examples" / "fake_nvidia_smi"
    (env.bin / "nvidia-smi").symlink_to(fake)
    code, out, _ = doctor(env, "--config", str(env.config(NO_SANDBOX)), "--server", backend.url)
    assert lines_by_name(out)["GPUs"].startswith("✓ GPUs: "), out


def test_missing_login_fails_with_the_fix(env: Env, backend: LocalBackend) -> None:
    code, out, _ = doctor(env, "--config", str(env.config(NO_SANDBOX)), "--server", backend.url,
                          extra={"FAKE_CODEX_LOGGED_OUT": "1"})
    login = lines_by_name(out)["codex login"]
    assert login.startswith("✗") and "codex login" in login and code == 1


@pytest.mark.parametrize("status,mark,words", [
    (200, dr.OK, "accepted"),
    (204, dr.OK, "accepted"),
    (401, dr.FAIL, "refused"),
    (403, dr.FAIL, "refused"),
    (404, dr.SKIP, "no control channel"),
    (405, dr.SKIP, "no control channel"),
    (500, dr.FAIL, "unexpected HTTP 500"),
])
def test_token_check_table(status: int, mark: str, words: str) -> None:
    check = dr.token_check(status, "r1", "tok")
    assert check.status == mark and words in check.detail
    assert "tok" not in check.detail.replace("token", "")


def test_token_check_needs_run_and_token() -> None:
    assert dr.token_check(200, None, "t").status == dr.SKIP
    assert dr.token_check(200, "r1", None).status == dr.SKIP


@pytest.mark.real_codex
@pytest.mark.skipif(REAL_CODEX is None, reason=SKIP_REASON)
def test_real_codex_sandbox_probe(env: Env, backend: LocalBackend) -> None:
    (env.bin / "codex").unlink()
    (env.bin / "codex").symlink_to(REAL_CODEX)
    tmp_git_before = Path("/tmp/.git").exists()
    root = env.tmp / "root"
    root.mkdir()
    config = env.config('sandbox_mode = "workspace-write"\n' + DANGER
                        + f'[sandbox_workspace_write]\nwritable_roots = ["{root}"]\n')
    code, out, _ = doctor(env, "--config", str(config), "--server", backend.url)
    sandbox = lines_by_name(out)["sandbox"]
    # Codex's bubblewrap sandbox has no network namespace link to the host.
    assert "workspace-write" in sandbox and "network blocked inside" in sandbox, out
    # The probe leaves no `.git` mount point behind in /tmp or a writable root.
    assert not Path("/tmp/.git").exists() or tmp_git_before
    assert not (root / ".git").exists()
    # The npm package's own bubblewrap (vendor/<triple>/codex-resources/bwrap) is found.
    assert lines_by_name(out)["bubblewrap"].startswith("✓"), out


@pytest.mark.parametrize("layout", ["bin/codex-resources/bwrap", "codex-resources/bwrap"])
def test_bundled_bubblewrap_found_in_both_layouts(tmp_path: Path, layout: str) -> None:
    from supervisor.preflight import bundled_bwrap

    binary = tmp_path / "bin" / "codex"
    binary.parent.mkdir()
    binary.touch()
    assert bundled_bwrap(binary) is None
    (tmp_path / layout).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / layout).touch()
    assert bundled_bwrap(binary) == tmp_path / layout
