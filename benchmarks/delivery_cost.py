#!/usr/bin/env python3
"""What delivering one entry costs the client: the log-shipper's delivery loop
against a bare `http.client` loop posting the very same encoded entries.

    python benchmarks/delivery_cost.py --lines 4000            # one entry per request
    python benchmarks/delivery_cost.py --lines 20000 --batch
    python benchmarks/delivery_cost.py --root /other/checkout  # A/B a change
    python benchmarks/delivery_cost.py --lines 20000 --no-http # the shipper's own part
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/delivery_cost.py --lines 300 --only ours   # instructions;
        # run again with --lines 1300: the difference / 1000 is per entry

The backend (supervisor.local_backend) runs in a process of its own, so the
CPU figures are the client's alone (getrusage) and the backend's alone
(/proc/PID/stat). steady_codex's lines are encoded by the shipper first (not
counted), then delivered by each client in turn into a run of its own. CPU
per entry is a steadier proof than wall time on a busy machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
BACKEND = """
import json, sys, tempfile
from pathlib import Path
from supervisor.local_backend import LocalBackend
b = LocalBackend(Path(tempfile.mkdtemp()) / "db.sqlite3").start()
runs = [b.create_run(prompt="x", log_batch=sys.argv[1] == "1") for _ in range(2)]
print(json.dumps({"url": b.url, "runs": runs}), flush=True)
sys.stdin.read()
b.stop()
b.close()
"""


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def own_cpu() -> float:
    return sum(os.times()[:2])


class _Mailbox:
    """The shipper's mailbox with nobody on the other end."""

    def tick(self) -> None:
        pass

    def wait(self, timeout: float, extra: Any) -> list[Any]:
        return []

    def put(self, *message: Any) -> None:
        pass


def without_http(shipper: Any, lines: int) -> int:
    """The shipper's CPU per entry outside HTTP: encoding, then its delivery
    loop with every post answered at once, without a request."""
    from workers.common.backend_client import Answer

    accepted = Answer(200)
    shipper.backend.post = lambda *args, **kwargs: accepted
    c0 = own_cpu()
    while shipper.encode_new():
        pass
    c1 = own_cpu()
    while shipper.state.pending:
        shipper.deliver_some()
    c2 = own_cpu()
    print(f"shipper without HTTP: {lines:,} entries; encode {(c1 - c0) / lines * 1e6:.1f} us/entry, "
          f"delivery loop {(c2 - c1) / lines * 1e6:.1f} us/entry (CPU)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=4000)
    parser.add_argument("--batch", action="store_true", help="log_batch on (batches of the shipper's size)")
    parser.add_argument("--root", type=Path, default=HERE.parent, help="the checkout whose shipper is measured")
    parser.add_argument("--only", choices=("ours", "bare"), help="measure one client only")
    parser.add_argument("--no-http", action="store_true", help="the shipper's own CPU: posts answered without a request")
    args = parser.parse_args()
    root = str(args.root.resolve())
    sys.path[:0] = [root, str(HERE)]
    from steady_codex import body_line

    from workers.common.spool import CODEX_OUT, OUTBOX
    from workers.log_shipper import Shipper, ShipperConfig

    if args.no_http:
        state = Path(tempfile.mkdtemp())
        (state / CODEX_OUT).write_bytes(b"".join(body_line(n) for n in range(args.lines)))
        return without_http(Shipper(_Mailbox(), ShipperConfig(state_dir=state, server="http://127.0.0.1:9", run_id="r",
                                                              token="t", log_batch=args.batch)), args.lines)
    backend = subprocess.Popen([sys.executable, "-c", BACKEND, "1" if args.batch else "0"], cwd=root,
                               env={**os.environ, "PYTHONPATH": root}, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert backend.stdout is not None
        info = json.loads(backend.stdout.readline())
        (ours_run, ours_token), (bare_run, bare_token) = info["runs"]
        state = Path(tempfile.mkdtemp())
        (state / CODEX_OUT).write_bytes(b"".join(body_line(n) for n in range(args.lines)))
        shipper = Shipper(_Mailbox(), ShipperConfig(state_dir=state, server=info["url"], run_id=ours_run,
                                                   token=ours_token, log_batch=args.batch))
        while shipper.encode_new():
            pass
        entries = (state / OUTBOX).read_bytes().splitlines()
        results = {}
        if args.only in (None, "ours"):
            t0, c0, b0 = time.perf_counter(), own_cpu(), proc_cpu(backend.pid)
            while shipper.state.pending:
                shipper.deliver_some()
            results["ours"] = (time.perf_counter() - t0, own_cpu() - c0, proc_cpu(backend.pid) - b0)
        if args.only in (None, "bare"):
            url = urlsplit(info["url"])
            conn = http.client.HTTPConnection(url.hostname, url.port)
            headers = {"X-Run-Token": bare_token, "Content-Type": "application/json"}
            size = shipper.cfg.batch_entries if args.batch else 1
            path = f"/runs/{bare_run}/logs" + ("/batch" if args.batch else "")
            t0, c0, b0 = time.perf_counter(), own_cpu(), proc_cpu(backend.pid)
            for i in range(0, len(entries), size):
                body = b'{"entries":[' + b",".join(entries[i:i + size]) + b"]}" if args.batch else entries[i]
                conn.request("POST", path, body, headers)
                answer = conn.getresponse()
                answer.read()
                if answer.status != 200:
                    raise SystemExit(f"bare client: HTTP {answer.status}")
            results["bare"] = (time.perf_counter() - t0, own_cpu() - c0, proc_cpu(backend.pid) - b0)
    finally:
        if backend.stdin is not None:
            backend.stdin.close()
        backend.wait(30)
    n = len(entries)
    mode = "batches" if args.batch else "one per request"
    for name, (wall, cpu, backend_cpu) in results.items():
        print(f"{name:4}: {n:,} entries ({mode}) in {wall:.3f} s = {n / wall:,.0f}/s; client CPU "
              f"{cpu / n * 1e6:.1f} us/entry; backend CPU {backend_cpu / n * 1e6:.1f} us/entry")
    return 0


if __name__ == "__main__":
    sys.exit(main())
