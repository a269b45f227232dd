"""The local backend's control channel over real HTTP (docs/control-channel.md): the
queue per run, oldest unacknowledged first and again until acked, the acks,
and the admin API that queues commands and reads them back."""

from __future__ import annotations

import subprocess
import sys

import requests

from supervisor.local_backend import LocalBackend
from tests.conftest import ROOT
from tests.faultkit import wait_until

TIMEOUT = 5


def run_session(backend: LocalBackend) -> tuple[str, requests.Session, str]:
    run_id, token = backend.create_run("Train it.")
    session = requests.Session()
    session.headers["X-Run-Token"] = token
    return run_id, session, f"{backend.url}/runs/{run_id}/control"


def test_poll_hands_out_the_oldest_unacknowledged_until_acked(backend: LocalBackend) -> None:
    run_id, s, url = run_session(backend)
    assert s.get(url + "/poll", timeout=TIMEOUT).json() == {}
    first = backend.queue_command(run_id, "take_over")
    second = backend.queue_command(run_id, "send_input", {"text": "hi"})
    for _ in range(2):  # again on every poll until acknowledged
        assert s.get(url + "/poll", timeout=TIMEOUT).json() == {"command_id": first, "command": "take_over"}
    r = s.post(url + "/ack", json={"command_id": first, "status": "applied", "detail": "codex interrupted"},
               timeout=TIMEOUT)
    assert r.status_code == 200
    assert s.get(url + "/poll", timeout=TIMEOUT).json() == {
        "command_id": second, "command": "send_input", "payload": {"text": "hi"}}
    # A repeated ack is accepted; the first one stays.
    assert s.post(url + "/ack", json={"command_id": first, "status": "failed"}, timeout=TIMEOUT).status_code == 200
    done = backend.command(run_id, first)
    assert (done["status"], done["detail"], done["acks"], done["handed_out"]) == ("applied", "codex interrupted", 2, 2)
    assert backend.control(run_id)["polls"]["n"] == 4
    counts = backend.request_counts(run_id)
    assert (counts["control_poll"], counts["control_ack"]) == (4, 2)


def test_ack_refusals(backend: LocalBackend) -> None:
    run_id, s, url = run_session(backend)
    cid = backend.queue_command(run_id, "take_over")
    for body, words in [
        ({"status": "applied"}, "command_id"),
        ({"command_id": cid, "status": "done"}, "status"),
        ({"command_id": cid, "status": "applied", "detail": 3}, "detail"),
    ]:
        r = s.post(url + "/ack", json=body, timeout=TIMEOUT)
        assert r.status_code == 400 and words in r.json()["error"]
    r = s.post(url + "/ack", json={"command_id": "cmd_nope", "status": "applied"}, timeout=TIMEOUT)
    assert r.status_code == 404
    assert requests.get(url + "/poll", timeout=TIMEOUT).status_code == 401  # no token
    assert s.post(url + "/poll", timeout=TIMEOUT).status_code == 405
    assert backend.command(run_id, cid)["acked_at"] is None


def test_a_finished_run_has_nothing_to_poll(backend: LocalBackend) -> None:
    run_id, s, url = run_session(backend)
    backend.queue_command(run_id, "take_over")
    s.post(f"{backend.url}/runs/{run_id}/complete", json={"summary": "done"}, timeout=TIMEOUT)
    assert s.get(url + "/poll", timeout=TIMEOUT).json() == {}


def test_admin_api_queues_and_reads_commands(backend: LocalBackend) -> None:
    run_id, s, _ = run_session(backend)
    admin = f"{backend.url}/admin/runs/{run_id}/control"
    r = requests.post(admin, json={"command": "send_input", "payload": {"text": "go"}}, timeout=TIMEOUT)
    cid = r.json()["command_id"]
    one = requests.get(f"{admin}/{cid}", timeout=TIMEOUT).json()
    assert (one["command"], one["payload"], one["acked_at"]) == ("send_input", {"text": "go"}, None)
    listed = requests.get(admin, timeout=TIMEOUT).json()
    assert [c["command_id"] for c in listed["commands"]] == [cid] and listed["polls"]["n"] == 0
    assert requests.get(f"{backend.url}/admin/runs/{run_id}", timeout=TIMEOUT).json()["control"] == listed
    for body, words in [({}, "command"), ({"command": ""}, "command"), ({"command": "x", "payload": 1}, "payload"),
                        ({"command": "x", "extra": 1}, "unknown key")]:
        r = requests.post(admin, json=body, timeout=TIMEOUT)
        assert r.status_code == 400 and words in r.json()["error"]
    assert requests.post(f"{backend.url}/admin/runs/nope/control", json={"command": "x"},
                         timeout=TIMEOUT).status_code == 404
    assert requests.get(f"{admin}/cmd_nope", timeout=TIMEOUT).status_code == 404
    assert requests.delete(admin, timeout=TIMEOUT).status_code == 405


def test_control_command_queues_and_prints_the_ack(backend: LocalBackend) -> None:
    run_id, s, url = run_session(backend)
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "control", run_id, "send", "try lr=1e-4",
                             "--server", backend.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    handed = wait_until(lambda: s.get(url + "/poll", timeout=TIMEOUT).json(), 30, "the queued command")
    assert (handed["command"], handed["payload"]) == ("send_input", {"text": "try lr=1e-4"})
    s.post(url + "/ack", json={"command_id": handed["command_id"], "status": "failed", "detail": "codex exit code 1"},
           timeout=TIMEOUT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert f"{handed['command_id']} failed: codex exit code 1" in out

    unanswered = subprocess.run([sys.executable, "-m", "supervisor", "control", run_id, "take-over",
                                 "--server", backend.url, "--wait", "0.3"], capture_output=True, text=True,
                                cwd=ROOT, timeout=30)
    assert unanswered.returncode == 1 and "stays queued" in unanswered.stdout
    unknown = subprocess.run([sys.executable, "-m", "supervisor", "control", "nope", "take-over",
                              "--server", backend.url], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert unknown.returncode == 3 and "unknown run" in unknown.stderr and "Traceback" not in unknown.stderr
    # A run id that is no run id is bad usage, said before any request.
    bad = subprocess.run([sys.executable, "-m", "supervisor", "control", "../x", "take-over",
                          "--server", backend.url], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert bad.returncode == 2 and "run id '../x' contains a slash" in bad.stderr


def test_the_client_polls_on_one_kept_alive_connection(backend: LocalBackend) -> None:
    from workers.common.backend_client import Backend
    from workers.common.timing import Timing

    run_id, token = backend.create_run("Train it.")
    command_id = backend.queue_command(run_id, "take_over")
    before = backend.connections_opened
    with Backend(backend.url, run_id, token, Timing()) as client:
        answers = [client.get_once("/control/poll", 5.0) for _ in range(3)]
        assert client.post_once("/control/ack", {"command_id": command_id, "status": "applied"}).ok
        assert client.get_once("/control/poll", 5.0).json() == {}
    assert [a.json()["command_id"] for a in answers] == [command_id] * 3
    assert backend.connections_opened - before <= 2, "polls share one connection (acks may use the poster's)"
