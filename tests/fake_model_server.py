"""A fake model server for running the *real* Codex CLI offline in tests.

It speaks just enough of the OpenAI Responses API (``POST /v1/responses``,
streamed as server-sent events) for ``codex exec``: each request Codex sends is
answered by the next step of a per-test script — run a shell command through
Codex's ``exec_command`` function tool, say a final message, or fail with an
HTTP status. Codex then runs the command itself (sandbox, workspace, events on
stdout) and sends its result back as a ``function_call_output`` input item in
the following request, exactly as against the real service.

Codex is pointed at it by its ``config.toml`` (see ``provider_toml``)::

    model = "mock-model"
    model_provider = "mock"
    [model_providers.mock]
    name = "mock"
    base_url = "http://127.0.0.1:PORT/v1"
    wire_api = "responses"
    request_max_retries = 0
    stream_max_retries = 0

Stdlib only; it listens on 127.0.0.1 only (a free port), and stops by itself
after ``lifetime`` seconds so a forgotten server never outlives a test session.
Every request is recorded (``requests``) so tests can check what Codex sent.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "mock-model"
PROVIDER = "mock"


@dataclass(frozen=True)
class Exec:
    """The model calls ``exec_command`` with ``cmd`` (a shell command line)."""

    cmd: str
    # Codex's unified exec returns to the model after `yield_time_ms` even if the
    # command still runs; a generous value keeps each command one round trip.
    yield_time_ms: int = 20_000


@dataclass(frozen=True)
class Say:
    """The model answers with a final assistant message, ending the turn."""

    text: str


@dataclass(frozen=True)
class Fail:
    """The server answers the request with an HTTP error instead of a stream."""

    status: int = 500
    message: str = "fake model server: scripted failure"


# One step answers one request; Exec steps may be grouped to make several tool
# calls in one response.
Step = Exec | Say | Fail | tuple[Exec, ...]


@dataclass
class ModelRequest:
    """One request Codex sent, as received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def input_items(self) -> list[dict[str, Any]]:
        if isinstance(self.body, dict) and isinstance(self.body.get("input"), list):
            return self.body["input"]
        return []

    def function_outputs(self) -> list[dict[str, Any]]:
        """The ``function_call_output`` items Codex sent back (tool results)."""
        return [i for i in self.input_items if i.get("type") == "function_call_output"]

    def tool_names(self) -> list[str]:
        tools = self.body.get("tools", []) if isinstance(self.body, dict) else []
        return [t.get("name") or t.get("type", "?") for t in tools]


def output_text(item: dict[str, Any]) -> str:
    """The text of a ``function_call_output`` item (a string, or content parts)."""
    out = item.get("output")
    if isinstance(out, str):
        return out
    if isinstance(out, dict):
        out = out.get("content", out.get("body", ""))
        if isinstance(out, str):
            return out
    if isinstance(out, list):
        return "".join(p.get("text", "") for p in out if isinstance(p, dict))
    return json.dumps(out)


def sse(event: dict[str, Any]) -> bytes:
    """One server-sent event; Codex dispatches on the JSON ``type``."""
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def _usage() -> dict[str, Any]:
    return {
        "input_tokens": 100,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 10,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 110,
    }


def stream_for(step: Exec | Say | tuple[Exec, ...], n: int) -> bytes:
    """The SSE body answering one request: created, each output item added and
    done, completed with usage (Codex fails the turn without `completed`)."""
    resp_id = f"resp_{n}"
    items: list[dict[str, Any]]
    if isinstance(step, Say):
        items = [{
            "type": "message", "id": f"msg_{n}", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": step.text, "annotations": []}],
        }]
    else:
        calls = step if isinstance(step, tuple) else (step,)
        items = [{
            "type": "function_call", "id": f"fc_{n}_{k}", "call_id": f"call_{n}_{k}",
            "name": "exec_command", "status": "completed",
            "arguments": json.dumps({"cmd": c.cmd, "yield_time_ms": c.yield_time_ms}),
        } for k, c in enumerate(calls)]
    chunks = [sse({"type": "response.created", "sequence_number": 0,
                   "response": {"id": resp_id, "object": "response", "status": "in_progress",
                                "model": MODEL, "output": []}})]
    for index, item in enumerate(items):
        added = {**item, "status": "in_progress"}
        if item["type"] == "message":
            added["content"] = []
        chunks.append(sse({"type": "response.output_item.added", "output_index": index,
                           "item": added}))
        if item["type"] == "message":
            chunks.append(sse({"type": "response.output_text.delta", "item_id": item["id"],
                               "output_index": index, "content_index": 0,
                               "delta": item["content"][0]["text"]}))
        chunks.append(sse({"type": "response.output_item.done", "output_index": index,
                           "item": item}))
    chunks.append(sse({"type": "response.completed",
                       "response": {"id": resp_id, "object": "response", "status": "completed",
                                    "model": MODEL, "output": items, "usage": _usage()}}))
    return b"".join(chunks)


@dataclass
class _Shared:
    script: list[Step]
    after_script: Step
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[ModelRequest] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    served: threading.Condition = field(default_factory=threading.Condition)
    counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def next_step(self) -> tuple[Step, int]:
        with self.lock:
            n = next(self.counter)
            step = self.script.pop(0) if self.script else self.after_script
        return step, n


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # keep pytest output clean; requests are recorded instead

    def _record(self, body: Any) -> None:
        shared = self.server.shared
        # Headers are kept minus credentials: Codex may send a bearer token.
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"}
        with shared.served:
            shared.requests.append(ModelRequest(self.command, self.path, headers, body))
            shared.served.notify_all()

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._record(None)
        # e.g. a model list: nothing to offer; Codex falls back to its defaults.
        self._send(404, b'{"error":{"message":"not found"}}', "application/json")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding", "").lower() == "zstd":
            self.server.shared.errors.append("request body is zstd-compressed; cannot decode")
            body: Any = None
        else:
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", "replace")
        self._record(body)
        if not self.path.rstrip("/").endswith("/responses"):
            self._send(404, b'{"error":{"message":"not found"}}', "application/json")
            return
        step, n = self.server.shared.next_step()
        if isinstance(step, Fail):
            payload = {"error": {"message": step.message, "type": "server_error", "code": None}}
            self._send(step.status, json.dumps(payload).encode(), "application/json")
            return
        self._send(200, stream_for(step, n), "text/event-stream")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, shared: _Shared) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.shared = shared


class FakeModelServer:
    """A scripted Responses API server on 127.0.0.1; use as a context manager.

    ``script`` holds one step per request Codex will send, in order; once it is
    used up every further request gets ``after_script`` (by default a final
    message, so a Codex that asks more than expected still ends its turn).
    """

    def __init__(self, script: Sequence[Step], *, after_script: Step = Say("Done."),
                 lifetime: float = 120.0) -> None:
        self._shared = _Shared(list(script), after_script)
        self._server = _Server(self._shared)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True,
                                        name="fake-model-server")
        # Bounded lifetime: a server leaked by a crashed test stops by itself.
        self._timer = threading.Timer(lifetime, self._server.shutdown)
        self._timer.daemon = True

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[ModelRequest]:
        with self._shared.served:
            return list(self._shared.requests)

    @property
    def errors(self) -> list[str]:
        return list(self._shared.errors)

    def response_requests(self) -> list[ModelRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/responses")]

    def wait_for_requests(self, count: int, timeout: float) -> bool:
        """Block until at least ``count`` requests arrived (or ``timeout`` s)."""
        with self._shared.served:
            return self._shared.served.wait_for(lambda: len(self._shared.requests) >= count,
                                                timeout)

    def start(self) -> FakeModelServer:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice or unstarted."""
        self._timer.cancel()
        if self._thread.is_alive():
            # shutdown() waits for serve_forever to return, so only while it runs.
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    def __enter__(self) -> FakeModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def provider_toml(base_url: str) -> str:
    """The config.toml lines that make Codex use a server at ``base_url``; top-level
    keys first, then the provider table (callers append further tables)."""
    return (
        f'model = "{MODEL}"\n'
        f'model_provider = "{PROVIDER}"\n'
        f"[model_providers.{PROVIDER}]\n"
        f'name = "{PROVIDER}"\n'
        f'base_url = "{base_url}"\n'
        'wire_api = "responses"\n'
        "request_max_retries = 0\n"
        "stream_max_retries = 0\n"
    )
