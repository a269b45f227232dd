"""The pool's check that each backend answers before any run starts: the first
try over http.client, the rest (and the words on failure) through requests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from supervisor.local_backend import LocalBackend
from supervisor.pool.main import first_try_answers, reach_servers
from supervisor.pool.runs_file import RunSpec
from tests.test_doctor import closed_port_url
from workers.common.errors import BackendUnavailable
from workers.common.timing import Timing

pytestmark = pytest.mark.timeout(60)

QUICK = Timing(connect_timeout=5.0, read_timeout=5.0, backoff_base=0.01, backoff_cap=0.02)


def test_any_http_status_is_an_answer(backend: LocalBackend) -> None:
    assert first_try_answers(backend.url, QUICK)
    assert first_try_answers(backend.url + "/no/such/path/", QUICK)


@pytest.mark.parametrize("server", [closed_port_url(), "ftp://127.0.0.1/", "http://"])
def test_no_answer_is_false_never_an_exception(server: str) -> None:
    assert not first_try_answers(server, QUICK)


@pytest.mark.parametrize("tries", [1, 3])
def test_a_failed_first_try_keeps_requests_words_and_the_count_of_tries(tries: int) -> None:
    url = closed_port_url()
    spec = RunSpec(run_id="r1", token="tok", config=Path("config.toml"), server=url, gpus=None, line=1)
    with pytest.raises(BackendUnavailable, match=rf"connection refused .* \(after {tries} tries\); no run was started"):
        reach_servers([spec], replace(QUICK, fetch_tries=tries))
