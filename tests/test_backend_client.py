"""The backend client against the real local backend: the bootstrap fetch's
answers and retries, telemetry posts and when they stop trying."""

from __future__ import annotations

import re

import pytest

from supervisor.local_backend import LocalBackend
from workers.common.backend_client import Backend
from workers.common.errors import BackendUnavailable, ConfigError
from workers.common.server_url import validate_server_url
from workers.common.timing import Timing

FAST = Timing(backoff_base=0.01, backoff_cap=0.05, fetch_tries=3, connect_timeout=2, read_timeout=5)
CLOSED_SERVER = "http://127.0.0.1:9"  # nothing listens on the discard port


@pytest.mark.parametrize("url,expected", [
    ("http://localhost:8000", "http://localhost:8000"),
    (" https://fw.example.com/ ", "https://fw.example.com"),
    ("http://127.0.0.1:8000/api/", "http://127.0.0.1:8000/api"),
])
def test_valid_server_urls(url: str, expected: str) -> None:
    assert validate_server_url(url) == expected


@pytest.mark.parametrize("url,problem", [
    ("localhost:8000", "not a valid backend URL"),
    ("ftp://host", "not a valid backend URL"),
    ("http://", "not a valid backend URL"),
    ("http://host:99999", "invalid port"),
    ("http://host/?x=1", "query string"),
])
def test_invalid_server_urls(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        validate_server_url(url)


def test_fetch_returns_the_payload_and_claims_the_run(backend: LocalBackend) -> None:
    run_id, token = backend.create_run(prompt="Work.", log_batch=True)
    with Backend(backend.url, run_id, token, FAST) as client:
        payload = client.fetch_bootstrap()
    assert payload is not None and payload["prompt"] == "Work." and payload["log_batch"] is True
    assert backend.run(run_id)["state"] == "claimed"


def test_fetch_of_a_run_claimed_elsewhere_is_none(backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    backend.set_faults(bootstrap_status={run_id: 409})
    with Backend(backend.url, run_id, token, FAST) as client:
        assert client.fetch_bootstrap() is None


@pytest.mark.parametrize("token_ok,run_ok,message", [
    (False, True, "refused the run token (HTTP 401)"),
    (True, False, "does not know this run (HTTP 404 for"),
])
def test_fetch_refusals_are_final_at_once(backend: LocalBackend, token_ok: bool, run_ok: bool,
                                          message: str) -> None:
    run_id, token = backend.create_run()
    naps: list[float] = []
    with Backend(backend.url, run_id if run_ok else "r-unknown", token if token_ok else "wrong-token",
                 FAST) as client:
        with pytest.raises(BackendUnavailable, match=re.escape(message)):
            client.fetch_bootstrap(sleep=naps.append)
    assert naps == []


def test_fetch_retries_5xx_then_succeeds(backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    backend.set_faults(status=503, status_count=2, paths=["/bootstrap"])
    naps: list[float] = []
    with Backend(backend.url, run_id, token, FAST) as client:
        assert client.fetch_bootstrap(sleep=naps.append) is not None
    assert len(naps) == 2


def test_fetch_gives_up_after_its_tries(backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    backend.set_faults(status=503, paths=["/bootstrap"])
    naps: list[float] = []
    with Backend(backend.url, run_id, token, FAST) as client:
        with pytest.raises(BackendUnavailable, match=r"after 3 tries \(last: HTTP 503\)"):
            client.fetch_bootstrap(sleep=naps.append)
    assert len(naps) == 2


def test_post_is_not_retried_on_a_final_answer(backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    backend.set_faults(status=400, paths=["/heartbeat"])
    with Backend(backend.url, run_id, token, FAST) as client:
        answer = client.post("/heartbeat", {"observed_at": "2026-01-01T00:00:00Z", "summary": "x"},
                             sleep=lambda s: pytest.fail("slept"))  # type: ignore[func-returns-value]
    assert answer.status == 400 and not answer.ok
    assert backend.request_counts(run_id).get("heartbeat") == 1


def test_post_retries_5xx_until_answered(backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    backend.set_faults(status=503, status_count=3, paths=["/heartbeat"])
    with Backend(backend.url, run_id, token, FAST) as client:
        answer = client.post("/heartbeat", {"observed_at": "2026-01-01T00:00:00Z", "summary": "x"})
    assert answer.ok and len(backend.heartbeats(run_id)) == 1


def test_post_stops_when_told(backend: LocalBackend) -> None:
    run_id, token = backend.create_run()
    backend.set_faults(status=503, paths=["/heartbeat"])
    tries: list[float] = []
    with Backend(backend.url, run_id, token, FAST) as client:
        answer = client.post("/heartbeat", {"observed_at": "2026-01-01T00:00:00Z", "summary": "x"},
                             keep_trying=lambda: len(tries) < 2, sleep=lambda s: bool(tries.append(s)))
        assert answer.status == 503 and len(tries) == 2
        # `sleep` may abandon the post too (a stop command arrived).
        answer = client.post("/heartbeat", {"observed_at": "2026-01-01T00:00:00Z", "summary": "x"},
                             sleep=lambda s: True)
        assert answer.status == 503


def test_unreachable_backend_is_answer_zero() -> None:
    with Backend(CLOSED_SERVER, "r1", "token", FAST) as client:
        answer = client.post("/heartbeat", {}, keep_trying=lambda: False)
    assert answer.status == 0 and not answer.ok
