#!/usr/bin/env python3
"""How long ending a run of many processes takes (workers/run_processes.py).

Starts N processes as one run's processes, in the shapes the real Codex's
commands take (each `setsid` daemon in a session of its own), then times
`kill_all` + `wait_empty` until the last one is gone; with the cgroup engine
(where this host allows one) and with the environment-marker fallback.
Run by hand (the test suite has no wall-clock thresholds):

    python benchmarks/kill_run.py            # 200 processes, 5 repetitions
    python benchmarks/kill_run.py -n 1000 --reps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.run_processes import ENGINE_VAR, RunProcesses, open_run


def start_many(procs: RunProcesses, count: int) -> subprocess.Popen[bytes]:
    script = f"for i in $(seq {count}); do setsid sleep 600 & done; wait"
    proc = procs.start(["bash", "-c", script], env=dict(os.environ), start_new_session=True,
                       stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(procs.members()) < count + 1:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(procs.members())} of {count} processes started")
        time.sleep(0.05)
    return proc


def one(engine: str, count: int) -> float | None:
    env = {ENGINE_VAR: "marker"} if engine == "marker" else {}
    procs = open_run(f"bench-{engine}", env)
    if engine == "cgroup" and procs.cgroup is None:
        return None
    try:
        shell = start_many(procs, count)
        started = time.perf_counter()
        procs.kill_all()
        if not procs.wait_empty(30):
            raise SystemExit(f"{engine}: processes left after 30 s")
        took = time.perf_counter() - started
        shell.wait()
        return took
    finally:
        procs.end(None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="processes in the run (default 200)")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    for engine in ("cgroup", "marker"):
        times = []
        for _ in range(args.reps):
            took = one(engine, args.n)
            if took is None:
                print(f"{engine}: no writable cgroup v2 here, skipped")
                break
            times.append(took)
        if times:
            print(f"{engine}: {args.n} processes killed and gone in median {statistics.median(times) * 1000:.0f} ms "
                  f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}, {len(times)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
