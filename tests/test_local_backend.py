"""The local backend over real HTTP: protocol, storage, faults, admin API, serve, demo."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import requests

from supervisor.local_backend import KINDS, LocalBackend, serve
from workers.common.errors import ConfigError

try:
    from backend_fixture import backend  # noqa: F401
except ImportError:  # tests/ became a package
    from tests.backend_fixture import backend  # noqa: F401

TIMEOUT = 5


def _entry(message: str, seq: int | None = None, level: str = "info") -> dict[str, Any]:
    extra: dict[str, Any] = {"run_event_source": "codex", "run_event_kind": "codex_event"}
    if seq is not None:
        extra["seq"] = seq
    return {
        "created_at": "2026-01-01T00:00:00+00:00",
        "level": level,
        "message": message,
        "extra": extra,
    }


class Client:
    """A run's view of the backend: URL, id, token, one kept-alive session."""

    def __init__(self, backend: LocalBackend, run_id: str, token: str) -> None:
        self.base = f"{backend.url}/runs/{run_id}"
        self.session = requests.Session()
        self.session.headers["X-Run-Token"] = token

    def get(self, action: str, **kw: Any) -> requests.Response:
        return self.session.get(f"{self.base}/{action}", timeout=kw.pop("timeout", TIMEOUT), **kw)

    def post(self, action: str, body: Any = None, **kw: Any) -> requests.Response:
        return self.session.post(
            f"{self.base}/{action}", json=body, timeout=kw.pop("timeout", TIMEOUT), **kw
        )


@pytest.fixture
def client(backend: LocalBackend) -> Client:
    return Client(backend, *backend.create_run("Train it."))


# ---------------------------------------------------------------- protocol


def test_bootstrap_returns_only_set_keys_and_claims(backend: LocalBackend) -> None:
    run_id, token = backend.create_run(
        "Do the thing", github_token="ghp_x", log_batch=True, repo_context={"repo_url": "u"}
    )
    c = Client(backend, run_id, token)
    assert backend.run(run_id)["state"] == "created"
    r = c.get("bootstrap")
    assert r.status_code == 200
    assert r.json() == {
        "payload": {
            "prompt": "Do the thing",
            "github_token": "ghp_x",
            "log_batch": True,
            "repo_context": {"repo_url": "u"},
        }
    }
    run = backend.run(run_id)
    assert run["state"] == "claimed" and run["claimed_at"]
    assert "token" not in run and run["github_token"] == "***"
    # A restarted bootstrap may fetch a claimed run again.
    assert c.get("bootstrap").status_code == 200

    plain_id, plain_token = backend.create_run("Plain")
    assert Client(backend, plain_id, plain_token).get("bootstrap").json() == {
        "payload": {"prompt": "Plain"}
    }


def test_token_checks(backend: LocalBackend, client: Client) -> None:
    url = client.base + "/bootstrap"
    assert requests.get(url, timeout=TIMEOUT).status_code == 401
    assert requests.get(url, headers={"X-Run-Token": "nope"}, timeout=TIMEOUT).status_code == 401
    r = requests.post(client.base + "/logs", json=_entry("x"), timeout=TIMEOUT)
    assert r.status_code == 401 and "error" in r.json()
    unknown = f"{backend.url}/runs/nosuchrun/bootstrap"
    assert requests.get(unknown, headers={"X-Run-Token": "t"}, timeout=TIMEOUT).status_code == 404
    run_id = client.base.rsplit("/", 1)[1]
    assert backend.entries(run_id) == []
    assert backend.run(run_id)["state"] == "created"


def test_entries_stored_in_order_with_seq(backend: LocalBackend, client: Client) -> None:
    run_id = client.base.rsplit("/", 1)[1]
    for seq in range(5):
        assert client.post("logs", _entry(f"line {seq}", seq)).status_code == 200
    assert client.post("logs", _entry("no seq", level="warning")).status_code == 200
    batch = {"entries": [_entry(f"batched {seq}", seq) for seq in range(5, 9)]}
    r = client.post("logs/batch", batch)
    assert r.status_code == 200 and r.json()["accepted"] == 4

    entries = backend.entries(run_id)
    assert [e["message"] for e in entries] == [
        *(f"line {i}" for i in range(5)),
        "no seq",
        *(f"batched {i}" for i in range(5, 9)),
    ]
    assert [e["seq"] for e in entries] == [0, 1, 2, 3, 4, None, 5, 6, 7, 8]
    assert entries[5]["level"] == "warning"
    assert entries[0]["extra"] == {"run_event_source": "codex", "run_event_kind": "codex_event", "seq": 0}
    assert entries[0]["created_at"] == "2026-01-01T00:00:00+00:00"
    ids = [e["id"] for e in entries]
    assert ids == sorted(ids)
    counts = backend.request_counts(run_id)
    assert set(counts) == set(KINDS)
    assert counts["logs"] == 6 and counts["batch"] == 1 and counts["heartbeat"] == 0


def test_dedupe_keeps_first_of_each_seq(backend: LocalBackend, client: Client) -> None:
    run_id = client.base.rsplit("/", 1)[1]
    for seq in (0, 1, 1, 2, 0):
        client.post("logs", _entry(f"m{seq}", seq))
    assert [e["seq"] for e in backend.entries(run_id, dedupe=True)] == [0, 1, 2]
    assert backend.entry_count(run_id) == 5


def test_bad_bodies_are_400(backend: LocalBackend, client: Client) -> None:
    run_id = client.base.rsplit("/", 1)[1]
    r = client.session.post(client.base + "/logs", data=b"{not json", timeout=TIMEOUT)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    assert client.post("logs", ["a list"]).status_code == 400
    assert client.post("logs", {"level": "info", "message": "m"}).status_code == 400
    assert client.post("logs", _entry("m", level="debug")).status_code == 400
    assert client.post("logs/batch", {"entries": "x"}).status_code == 400
    # One bad entry refuses the whole batch: nothing half-stored.
    assert client.post("logs/batch", {"entries": [_entry("ok", 1), {"level": "info"}]}).status_code == 400
    assert client.post("heartbeat", {"summary": "s"}).status_code == 400
    assert client.post("artifacts", {"artifact_type": "text"}).status_code == 400
    assert client.post("error", {"summary": "s"}).status_code == 400
    assert client.post("complete", {}).status_code == 400
    assert backend.entries(run_id) == []
    assert backend.run(run_id)["state"] == "created"
    assert backend.request_counts(run_id)["logs"] == 4


def test_heartbeats_artifacts_and_terminal_reports(backend: LocalBackend, client: Client) -> None:
    run_id = client.base.rsplit("/", 1)[1]
    client.get("bootstrap")
    body = {"observed_at": "2026-01-01T00:00:00Z", "summary": "codex running"}
    assert client.post("heartbeat", body).status_code == 200
    art = {"artifact_type": "text", "payload": {"content": "hi", "size_bytes": 2}}
    assert client.post("artifacts", art).status_code == 200
    assert backend.heartbeats(run_id)[0]["summary"] == "codex running"
    assert backend.run(run_id)["last_heartbeat_at"]
    assert backend.artifacts(run_id)[0]["payload"] == {"content": "hi", "size_bytes": 2}

    r = client.post("complete", {"summary": "done"})
    assert r.status_code == 200 and r.json()["state"] == "complete"
    # Later reports are accepted (the client may resend) but the first one wins.
    r = client.post("error", {"summary": "late", "reason": "x"})
    assert r.status_code == 200 and r.json()["state"] == "complete"
    assert client.post("complete", {"summary": "again"}).status_code == 200
    run = backend.run(run_id)
    assert (run["state"], run["summary"], run["reason"]) == ("complete", "done", None)
    assert [r["kind"] for r in backend.reports(run_id)] == ["complete", "error", "complete"]
    # A terminal run cannot be bootstrapped again.
    r = client.get("bootstrap")
    assert r.status_code == 409 and "complete" in r.json()["error"]


def test_error_report(backend: LocalBackend, client: Client) -> None:
    run_id = client.base.rsplit("/", 1)[1]
    assert client.post("error", {"summary": "failed", "reason": "codex exit code 1"}).status_code == 200
    run = backend.run(run_id)
    assert (run["state"], run["reason"]) == ("error", "codex exit code 1")
    assert run["finished_at"]
    assert client.get("bootstrap").status_code == 409


def test_github_token(backend: LocalBackend) -> None:
    c = Client(backend, *backend.create_run("p", github_token="ghp_secret"))
    r = c.post("github-token")
    assert r.status_code == 200 and r.json() == {"token": "ghp_secret"}
    assert Client(backend, *backend.create_run("p")).post("github-token").status_code == 404


def test_unknown_endpoint_and_method(backend: LocalBackend, client: Client) -> None:
    assert client.post("nope", {}).status_code == 404
    assert client.get("logs").status_code == 405
    assert requests.get(backend.url + "/elsewhere", timeout=TIMEOUT).status_code == 404
    assert requests.get(backend.url + "/health", timeout=TIMEOUT).json()["ok"] is True


def test_wait_terminal_wakes_on_write(backend: LocalBackend, client: Client) -> None:
    run_id = client.base.rsplit("/", 1)[1]
    started = threading.Event()

    def report() -> None:
        started.wait(TIMEOUT)
        client.post("complete", {"summary": "ok"})

    thread = threading.Thread(target=report)
    thread.start()
    started.set()
    assert backend.wait_terminal(run_id, timeout=TIMEOUT)["state"] == "complete"
    thread.join()
    assert backend.wait_for(lambda: backend.reports(run_id), timeout=TIMEOUT)


def test_wait_for_entry_count(backend: LocalBackend, client: Client) -> None:
    run_id = client.base.rsplit("/", 1)[1]

    def ship() -> None:
        for seq in range(3):
            client.post("logs", _entry("m", seq))
        client.post("logs/batch", {"entries": [_entry("b", 3), _entry("b", 4)]})

    thread = threading.Thread(target=ship)
    thread.start()
    assert backend.wait_for(lambda: backend.entry_count(run_id) >= 5, timeout=TIMEOUT)
    thread.join()
    assert [e["seq"] for e in backend.entries(run_id)] == [0, 1, 2, 3, 4]


def test_wait_terminal_times_out(backend: LocalBackend, client: Client) -> None:
    run_id = client.base.rsplit("/", 1)[1]
    with pytest.raises(TimeoutError, match="state created"):
        backend.wait_terminal(run_id, timeout=0.05)


def test_keep_alive_reuses_one_connection(backend: LocalBackend, client: Client) -> None:
    before = backend.connections_opened
    for seq in range(3):
        assert client.post("logs", _entry("m", seq)).status_code == 200
    assert client.get("bootstrap").status_code == 200
    assert backend.connections_opened - before == 1
    assert client.post("logs", _entry("m")).headers["Content-Length"]
    # Without a session, each request opens its own connection.
    for _ in range(2):
        requests.get(client.base + "/bootstrap", headers={"X-Run-Token": "x"}, timeout=TIMEOUT)
    assert backend.connections_opened - before == 3


def test_server_is_quiet(backend: LocalBackend, capfd: pytest.CaptureFixture[str]) -> None:
    run_id, token = backend.create_run("p", github_token="ghp_secret_value")
    c = Client(backend, run_id, token)
    c.get("bootstrap")
    c.post("logs", _entry("hello"))
    c.session.post(c.base + "/logs", data=b"garbage", timeout=TIMEOUT)
    requests.get(c.base + "/bootstrap", headers={"X-Run-Token": "wrong"}, timeout=TIMEOUT)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# ------------------------------------------------------------------ faults


def test_status_for_n_requests(backend: LocalBackend, client: Client) -> None:
    run_id = client.base.rsplit("/", 1)[1]
    backend.set_faults(status=503, status_count=2)
    assert [client.post("logs", _entry("m", 0)).status_code for _ in range(3)] == [503, 503, 200]
    assert len(backend.entries(run_id)) == 1
    assert backend.request_counts(run_id)["logs"] == 3


def test_status_for_seconds(backend: LocalBackend, client: Client) -> None:
    backend.set_faults(status=500, status_for_s=0.2)
    assert client.get("bootstrap").status_code == 500
    deadline = time.monotonic() + TIMEOUT  # bounded: the window is 0.2 s
    while client.get("bootstrap").status_code != 200:
        if time.monotonic() > deadline:
            pytest.fail("status fault did not end")
    assert backend.faults()["remaining"]["status_for_s"] == 0.0


def test_status_until_cleared_and_paths_filter(backend: LocalBackend, client: Client) -> None:
    backend.set_faults(status=502, paths=["/logs"])
    hb = {"observed_at": "2026-01-01T00:00:00Z", "summary": "s"}
    assert client.post("heartbeat", hb).status_code == 200
    assert client.post("logs", _entry("m")).status_code == 502
    assert client.post("logs/batch", {"entries": [_entry("m")]}).status_code == 502
    assert client.post("logs", _entry("m")).status_code == 502
    backend.clear_faults()
    assert client.post("logs", _entry("m")).status_code == 200


def test_fault_limited_to_run_ids(backend: LocalBackend, client: Client) -> None:
    other = Client(backend, *backend.create_run("other"))
    backend.set_faults(status=503, run_ids=[other.base.rsplit("/", 1)[1]])
    assert other.get("bootstrap").status_code == 503
    assert client.get("bootstrap").status_code == 200


def test_max_body_bytes_413_on_logs_only(backend: LocalBackend, client: Client) -> None:
    run_id = client.base.rsplit("/", 1)[1]
    backend.set_faults(max_body_bytes=300)
    assert client.post("logs", _entry("small")).status_code == 200
    r = client.post("logs", _entry("x" * 400))
    assert r.status_code == 413
    assert r.json()["limit_bytes"] == 300 and r.json()["body_bytes"] > 300
    assert client.post("logs/batch", {"entries": [_entry("y" * 200), _entry("z" * 200)]}).status_code == 413
    hb = {"observed_at": "2026-01-01T00:00:00Z", "summary": "s" * 1000}
    assert client.post("heartbeat", hb).status_code == 200
    # The connection survives a 413 (the body was read).
    assert client.post("logs", _entry("after")).status_code == 200
    assert [e["message"] for e in backend.entries(run_id)] == ["small", "after"]


def test_dropped_connection_raises_on_client(backend: LocalBackend, client: Client) -> None:
    run_id = client.base.rsplit("/", 1)[1]
    backend.set_faults(drop_count=1)
    with pytest.raises(requests.ConnectionError):
        client.post("logs", _entry("lost", 0))
    assert client.post("logs", _entry("kept", 1)).status_code == 200
    assert [e["message"] for e in backend.entries(run_id)] == ["kept"]
    assert backend.request_counts(run_id)["logs"] == 2


def test_drop_after_handling_stores_then_drops(backend: LocalBackend, client: Client) -> None:
    run_id = client.base.rsplit("/", 1)[1]
    backend.set_faults(drop_count=1, drop_after_handling=True)
    with pytest.raises(requests.ConnectionError):
        client.post("logs", _entry("stored, answer lost", 0))
    assert client.post("logs", _entry("stored, answer lost", 0)).status_code == 200
    assert [e["seq"] for e in backend.entries(run_id)] == [0, 0]
    assert [e["seq"] for e in backend.entries(run_id, dedupe=True)] == [0]


def test_delay(backend: LocalBackend, client: Client) -> None:
    backend.set_faults(delay_ms=3000)
    with pytest.raises(requests.ReadTimeout):
        client.get("bootstrap", timeout=(TIMEOUT, 0.1))
    backend.set_faults(delay_ms=50)
    r = client.get("bootstrap")
    assert r.status_code == 200 and r.elapsed.total_seconds() >= 0.05


def test_bootstrap_status_override(backend: LocalBackend) -> None:
    statuses = [409, 401, 403, 404, 500]
    clients = [Client(backend, *backend.create_run(f"p{s}")) for s in statuses]
    overrides = {c.base.rsplit("/", 1)[1]: s for c, s in zip(clients, statuses)}
    backend.set_faults(bootstrap_status=overrides)
    for c, status in zip(clients, statuses):
        assert c.get("bootstrap").status_code == status
        assert c.post("logs", _entry("m")).status_code == 200
    # Merged with other faults, cleared by clear_faults.
    backend.set_faults(delay_ms=1)
    assert clients[0].get("bootstrap").status_code == 409
    backend.clear_faults()
    assert clients[0].get("bootstrap").status_code == 200


def test_bad_faults_are_refused(backend: LocalBackend) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        backend.set_faults(delay=5)
    with pytest.raises(ValueError, match="need 'status'"):
        backend.set_faults(status_count=3)
    with pytest.raises(ValueError, match="status"):
        backend.set_faults(status=99)


# --------------------------------------------------------------- admin API


def test_admin_api(backend: LocalBackend) -> None:
    admin = requests.Session()
    r = admin.post(
        backend.url + "/admin/runs",
        json={"prompt": "Hello", "log_batch": True, "hf_token": "hf_x"},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200
    run_id, token = r.json()["run_id"], r.json()["token"]
    c = Client(backend, run_id, token)
    assert c.get("bootstrap").json()["payload"] == {"prompt": "Hello", "log_batch": True, "hf_token": "hf_x"}
    c.post("logs/batch", {"entries": [_entry("a", 0), _entry("b", 1)]})
    c.post("artifacts", {"artifact_type": "text", "payload": {"content": "c"}})
    c.post("complete", {"summary": "ok"})

    runs = admin.get(backend.url + "/admin/runs", timeout=TIMEOUT).json()["runs"]
    assert [run["id"] for run in runs] == [run_id]
    assert token not in admin.get(backend.url + "/admin/runs", timeout=TIMEOUT).text

    detail = admin.get(f"{backend.url}/admin/runs/{run_id}", timeout=TIMEOUT)
    assert token not in detail.text and "hf_x" not in detail.text
    d = detail.json()
    assert d["run"]["state"] == "complete" and d["run"]["hf_token"] == "***"
    assert [e["message"] for e in d["entries"]] == ["a", "b"]
    assert d["entries"][1]["extra"]["seq"] == 1
    assert d["artifacts"][0]["payload"] == {"content": "c"}
    assert d["heartbeats"] == []
    assert d["requests"]["batch"] == 1 and d["requests"]["logs"] == 0
    assert admin.get(f"{backend.url}/admin/runs/nope", timeout=TIMEOUT).status_code == 404

    assert admin.post(backend.url + "/admin/runs", json={}, timeout=TIMEOUT).status_code == 400
    assert admin.post(backend.url + "/admin/runs", json={"prompt": "p", "bogus": 1}, timeout=TIMEOUT).status_code == 400


def test_admin_faults(backend: LocalBackend, client: Client) -> None:
    url = backend.url + "/admin/faults"
    r = requests.post(url, json={"status": 503, "status_count": 1, "paths": ["/bootstrap"]}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["faults"]["status"] == 503
    assert requests.get(url, timeout=TIMEOUT).json()["remaining"]["status_count"] == 1
    assert client.get("bootstrap").status_code == 503
    assert client.get("bootstrap").status_code == 200
    requests.post(url, json={"drop_count": 1}, timeout=TIMEOUT)
    assert requests.delete(url, timeout=TIMEOUT).json()["faults"]["drop_count"] == 0
    assert client.get("bootstrap").status_code == 200
    assert requests.post(url, json={"status": "x"}, timeout=TIMEOUT).status_code == 400
    # Faults never touch the admin API itself.
    requests.post(url, json={"status": 503}, timeout=TIMEOUT)
    assert requests.get(backend.url + "/admin/runs", timeout=TIMEOUT).status_code == 200


# ------------------------------------------------------------ lifecycle/serve


def test_restart_keeps_data_and_port(tmp_path: Path) -> None:
    db = tmp_path / "b.sqlite3"
    with LocalBackend(db) as b:
        run_id, token = b.create_run("p")
        c = Client(b, run_id, token)
        c.post("logs", _entry("before", 0))
        port = b.port
        b.stop()
        with pytest.raises(requests.ConnectionError):
            c.post("logs", _entry("while down", 1), timeout=1)
        b.start()
        assert b.port == port
        assert c.post("logs", _entry("after", 1)).status_code == 200
    with LocalBackend(db) as again:
        assert [e["message"] for e in again.entries(run_id)] == ["before", "after"]
        assert again.entry_count(run_id) == 2


def test_port_in_use_is_config_error(backend: LocalBackend, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=str(backend.port)):
        serve("127.0.0.1", backend.port, tmp_path / "other.sqlite3", echo=lambda _: None)


def test_unwritable_db_is_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="database"):
        LocalBackend(blocker / "db.sqlite3")


def test_serve_foreground_until_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "serve.sqlite3"
    code = ("from pathlib import Path; from supervisor.local_backend import serve; "
            f"serve('127.0.0.1', 0, Path({str(db)!r}))")
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert str(db) in first and "http://127.0.0.1:" in first
        url = first.split(" at ", 1)[1].split(" ", 1)[0]
        assert "curl" in proc.stdout.readline()
        r = requests.post(url + "/admin/runs", json={"prompt": "p"}, timeout=TIMEOUT)
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
        assert r.json()["token"] not in out + err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -------------------------------------------------------------------- demo

FAKE_BOOTSTRAP = textwrap.dedent(
    """
    import os, sys, requests
    args = sys.argv[1:]
    run_id = args[args.index("--run-id") + 1]
    server = args[args.index("--server") + 1]
    token = os.environ["FLYWHEEL_RUN_TOKEN"]
    assert token not in " ".join(sys.argv), "token on the command line"
    assert os.environ["BOOTSTRAP_MOCK_CODEX"] == "1"
    assert os.environ["FLYWHEEL_HEARTBEAT_INTERVAL"] == "1"
    assert os.path.isfile(args[args.index("--config") + 1])
    mode = os.environ.get("FAKE_MODE", "ok")
    s = requests.Session(); s.headers["X-Run-Token"] = token
    base = f"{server}/runs/{run_id}"
    s.get(base + "/bootstrap", timeout=5).raise_for_status()
    s.post(base + "/logs", json={"created_at": "t", "level": "info", "message": "hi", "extra": {"seq": 0}}, timeout=5)
    if mode == "hang":
        import time
        time.sleep(600)
    if mode == "fail":
        s.post(base + "/error", json={"summary": "no", "reason": "codex exit code 1"}, timeout=5)
        sys.exit(1)
    s.post(base + "/artifacts", json={"artifact_type": "text", "payload": {"content": "x"}}, timeout=5)
    s.post(base + "/complete", json={"summary": "ok"}, timeout=5)
    """
)


def _fake(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_bootstrap.py"
    script.write_text(FAKE_BOOTSTRAP)
    return [sys.executable, str(script)]


def test_demo_runs_in_parallel_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.demo import run_demo

    lines: list[str] = []
    folder = tmp_path / "demo"
    code = run_demo(folder, runs=3, echo=lines.append, command=_fake(tmp_path))
    text = "\n".join(lines)
    assert code == 0, text
    assert str(folder / "backend.sqlite3") in text
    assert text.count("complete") >= 3
    config = tomllib.loads((folder / "config.toml").read_text())
    assert config["flywheel"]["workspace_instructions"].strip()
    assert config["workspace_dir"] == f"{folder}/workspaces/<run_id>"
    with LocalBackend(folder / "backend.sqlite3") as b:
        runs = b.runs()
        assert len(runs) == 3 and {r["state"] for r in runs} == {"complete"}
        assert all(len(b.entries(r["id"])) == 1 for r in runs)


def test_demo_failure_and_straggler_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor.demo import run_demo

    monkeypatch.setenv("FAKE_MODE", "hang")
    lines: list[str] = []
    code = run_demo(tmp_path / "d", runs=2, echo=lines.append, command=_fake(tmp_path), timeout=1.0)
    assert code == 1
    text = "\n".join(lines)
    assert "timed out" in text
    # The stragglers were killed: nothing of ours is left running.
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "fake_bootstrap.py")], capture_output=True)
    assert leftovers.stdout == b""

    monkeypatch.setenv("FAKE_MODE", "fail")
    lines.clear()
    assert run_demo(tmp_path / "e", runs=1, echo=lines.append, command=_fake(tmp_path)) == 1
    assert "error" in "\n".join(lines)


def test_demo_rejects_zero_runs(tmp_path: Path) -> None:
    from supervisor.demo import run_demo

    with pytest.raises(ConfigError):
        run_demo(tmp_path, runs=0, echo=lambda _: None)
