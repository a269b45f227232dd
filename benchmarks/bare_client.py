#!/usr/bin/env python3
"""The backend's ceiling: the least a client can do to deliver the same entries.

No supervisor, no workers, no spool, no Codex: it builds the entries that
steady_codex.py's lines become (same shapes and sizes, orjson) and posts them
in seq order over one kept-alive `http.client` connection, each request
answered before the next is sent (SPEC 8's order), one entry per request or in
batches. bench.py compares the tool against it; what this costs is what any
client must cost.

    BENCH_TOKEN=... bare_client.py URL RUN_ID LINES BATCH

BATCH 1 posts to /logs, more to /logs/batch. Prints one JSON line: when it
started (its first instruction, time.time()), sent its first request, and got
its last answer, and its own CPU seconds.
"""

from __future__ import annotations

import time

STARTED = time.time()

import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import orjson  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steady_codex import body_line  # noqa: E402


def entry(line: bytes, seq: int, now: str) -> bytes:
    event = orjson.loads(line)
    item = event["item"]
    message = f"$ {item['command']}" if event["type"] == "item.started" else item["aggregated_output"]
    return orjson.dumps({"created_at": now, "level": "info", "message": message,
                         "extra": {"run_event_source": "codex", "run_event_kind": "command_output",
                                   "event": event, "seq": seq}})


def main(url: str, run_id: str, lines: int, batch: int) -> dict[str, float]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port)
    headers = {"X-Run-Token": os.environ["BENCH_TOKEN"], "Content-Type": "application/json"}
    path = f"/runs/{run_id}/logs" + ("/batch" if batch > 1 else "")
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    first = 0.0
    for start in range(0, lines, batch):
        entries = [entry(body_line(n), n + 1, now) for n in range(start, min(lines, start + batch))]
        body = b'{"entries":[' + b",".join(entries) + b"]}" if batch > 1 else entries[0]
        first = first or time.time()
        conn.request("POST", path, body, headers)
        answer = conn.getresponse()
        answer.read()
        if answer.status >= 300:
            raise SystemExit(f"bare client: HTTP {answer.status} at seq {start + 1}")
    return {"started": STARTED, "first_send": first, "end": time.time(), "cpu": sum(os.times()[:2])}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
