"""The Flywheel backend protocol (docs/protocol.md) over one kept-alive session.

Two kinds of call: the bootstrap fetch, which gives up after a few tries and maps
refusals to exit statuses, and telemetry posts, which never give up on their own:
the caller decides how long it may keep trying (`keep_trying`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson
import requests

from workers.common.backoff import backoff_delay
from workers.common.errors import BackendUnavailable
from workers.common.lean_http import LeanPoster, Meanwhile, MeanwhileFailed, TransportError
from workers.common.net_trouble import describe
from workers.common.redact import mask_url_userinfo
from workers.common.timing import Timing

RETRYABLE_STATUS = frozenset({429}) | frozenset(range(500, 600))


@dataclass(frozen=True)
class Answer:
    """What one telemetry call ended with. `status` 0 means it was never answered."""

    status: int
    body: bytes = b""
    # Why it was not answered (TLS, DNS, refused, timed out), in words; "" if it was.
    why: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return orjson.loads(self.body)




class MalformedPayload(BackendUnavailable):
    """The backend answered the fetch with 200, so it may have claimed the run,
    but not with a payload: the run is reported failed (SPEC 13: a fetched run
    ends with one terminal report)."""


def parse_payload(content: bytes) -> dict[str, Any]:
    """The payload of a 200 answer to the fetch; ValueError saying what is wrong."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        try:
            # Valid JSON that orjson refuses: integers over 64 bits, a BOM.
            body = json.loads(content.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
    payload = body.get("payload") if isinstance(body, dict) else None
    if not isinstance(payload, dict) or not isinstance(payload.get("prompt"), str):
        raise ValueError('expected {"payload": {"prompt": "...", ...}}')
    try:
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError, RecursionError):
        raise ValueError("it holds text that is not valid Unicode (a lone surrogate)") from None
    return cast(dict[str, Any], payload)


class Backend:
    """One run's view of the backend. Not shared between processes: each worker
    makes its own (a requests.Session must not cross a fork)."""

    def __init__(self, server: str, run_id: str, token: str, timing: Timing) -> None:
        self.base = f"{server}/runs/{run_id}"
        self.timing = timing
        self._timeout = (timing.connect_timeout, timing.read_timeout)
        self._session = requests.Session()
        self._session.headers.update(
            {"X-Run-Token": token, "Content-Type": "application/json", "Accept": "application/json"}
        )
        self._session.trust_env = False  # a proxy env var must not reroute loopback traffic
        # Telemetry posts skip requests' per-call layer (lean_http); neither
        # path follows a redirect: it could carry the token to another host.
        self._poster = LeanPoster(self._session, self.base, timing.connect_timeout, timing.read_timeout)
        # The latest answer of `post`, for a caller that reports trouble between tries.
        self.last_answer: Answer | None = None

    def close(self) -> None:
        self._poster.close()
        self._session.close()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def post_once(self, path: str, body: bytes | dict[str, Any],
                  progress: Callable[[], None] | None = None, meanwhile: Meanwhile | None = None) -> Answer:
        """One attempt. Transport failures come back as Answer(0) with no
        exception. `progress()` is called as a big body's bytes go out;
        `meanwhile` runs while the backend works on its answer (lean_http)."""
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        try:
            status, content = self._poster.post(path, data, progress, meanwhile)
        except MeanwhileFailed as failed:
            raise cast(Exception, failed.__cause__) from None  # the caller's own error, as raised
        except TransportError as exc:
            return Answer(0, why=describe(exc, self.base))
        return Answer(status, content)

    def get_once(self, path: str, read_timeout: float | None = None) -> Answer:
        """One GET on the kept-alive connection the posts use (the control
        poll: once a second for the whole run, so without requests' per-call
        layer, 0.3 ms of CPU each; lean_http); transport failures come back as
        Answer(0)."""
        try:
            status, content = self._poster.get(path, self.timing.read_timeout if read_timeout is None
                                               else read_timeout)
        except TransportError as exc:
            return Answer(0, why=describe(exc, self.base))
        return Answer(status, content)

    def reset(self) -> None:
        """Drop every connection: after a request was abandoned mid-way, the
        state of its connection is unknown."""
        self._poster.close()
        self._session.get_adapter(self.base).close()

    def post(
        self,
        path: str,
        body: bytes | dict[str, Any],
        keep_trying: Callable[[], bool] = lambda: True,
        sleep: Callable[[float], bool] | None = None,
        attempt: Callable[[Callable[[], Answer]], Answer] | None = None,
        progress: Callable[[], None] | None = None,
        meanwhile: Meanwhile | None = None,
    ) -> Answer:
        """Post until answered with a status that is not worth retrying, or until
        `keep_trying()` says stop. `sleep(seconds)` waits between tries and may
        return True to abandon early (e.g. a stop command arrived); `attempt`
        runs each try (e.g. under a deadline)."""
        tries = 0
        while True:
            answer = (self.post_once(path, body, progress, meanwhile) if attempt is None
                      else attempt(lambda: self.post_once(path, body, progress, meanwhile)))
            self.last_answer = answer
            if answer.status and answer.status not in RETRYABLE_STATUS:
                return answer
            if not keep_trying():
                return answer
            delay = backoff_delay(tries, self.timing.backoff_base, self.timing.backoff_cap)
            tries += 1
            if sleep is not None:
                if sleep(delay):
                    return answer
            else:
                time.sleep(delay)

    def fetch_bootstrap(self, sleep: Callable[[float], None] = time.sleep,
                        on_retry: Callable[[str, int], None] | None = None) -> dict[str, Any] | None:
        """The run's payload, or None when another bootstrap already claimed it (409).

        Retries connection errors, timeouts and 5xx a few times, then gives up with
        exit 3; 401/403/404 are final at once. `on_retry(why, try_number)` hears
        of each retry, so the user is not left waiting in silence."""
        last = ""
        for attempt in range(self.timing.fetch_tries):
            if attempt:
                if on_retry is not None:
                    on_retry(last, attempt + 1)
                sleep(backoff_delay(attempt - 1, self.timing.backoff_base, self.timing.backoff_cap))
            try:
                r = self._session.get(self.base + "/bootstrap", timeout=self._timeout, allow_redirects=False)
            except requests.RequestException as exc:
                last = describe(exc, self.base)
                continue
            if r.status_code == 409:
                return None
            if r.status_code in (401, 403):
                raise BackendUnavailable(
                    f"the backend refused the run token (HTTP {r.status_code}) for {self.base}/bootstrap; "
                    "check --token / FLYWHEEL_RUN_TOKEN and the run id"
                )
            if r.status_code == 404:
                raise BackendUnavailable(
                    f"the backend does not know this run (HTTP 404 for {self.base}/bootstrap); "
                    "check --run-id and --server"
                )
            if r.status_code in RETRYABLE_STATUS:
                last = f"HTTP {r.status_code}"
                continue
            if r.status_code != 200:
                raise BackendUnavailable(f"unexpected HTTP {r.status_code} from {self.base}/bootstrap")
            try:
                return parse_payload(r.content)
            except ValueError as exc:
                # Reported to the backend as well as printed: no password of --server in it.
                raise MalformedPayload(f"the backend's answer from {mask_url_userinfo(self.base)}/bootstrap "
                                       f"is not a bootstrap payload ({exc})") from None
        raise BackendUnavailable(
            f"could not fetch the run from {self.base}/bootstrap after {self.timing.fetch_tries} tries "
            f"(last: {last}); is the backend up and --server right?"
        )
