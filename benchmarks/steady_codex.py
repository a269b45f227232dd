#!/usr/bin/env python3
"""A benchmark stand-in for the `codex` CLI (stdlib only), used for BOTH the
original flywheel-bootstrap and this one, so the comparison is fair.

It prints real-shaped `codex exec --json` lines (command_execution started /
completed pairs, as Codex prints them while an agent runs a training loop),
one write() per line as the real CLI does (Rust's stdout is line-buffered),
and records when it printed. Unlike tests/fake_codex it takes any argv the
two tools pass (the original has no `--sandbox` when the config has none).

Commands:
  codex --version                -> `codex-cli 0.169.0`
  codex login [status|...]       -> exit 0 (reads stdin when --with-api-key)
  codex exec ... [PROMPT|-]      -> the run below; stdin read to EOF first
  codex exec ... resume ID ...   -> thread.started + turn.completed, exit 0

Environment:
  BENCH_LINES=N       lines of command events in the body (default 100)
  BENCH_RATE=R        lines per second; 0 or unset = as fast as possible
  BENCH_IDLE=S        after half of the body, print nothing for S seconds
                      (an agent waiting on the model), then the other half
  BENCH_TIMES_DIR=D   write D/<run id>.json = {"start", "end", "lines",
                      "idle_start"} (time.time() seconds) and "cpu" (its own
                      CPU seconds) when done, and
                      D/<run id>.idle when the idle period begins

Every event carries `"bench_t": <time.time() when it was formatted>` so the
latency from printing to the backend storing it can be computed; a line that
blocks in write() (a full pipe) is therefore counted as late, as it should be.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

VERSION = "0.169.0"
MANIFEST = "flywheel_artifacts.json"

# The same shapes as tests/fake_codex `lines=N` (and as real Codex prints).
STARTED = ('{"type":"item.started","bench_t":%.6f,"item":{"id":"item_l%d","type":"command_execution",'
           '"command":"bash -lc \'python train.py --step %d\'","aggregated_output":"",'
           '"exit_code":null,"status":"in_progress"}}\n')
FINISHED = ('{"type":"item.completed","bench_t":%.6f,"item":{"id":"item_l%d","type":"command_execution",'
            '"command":"bash -lc \'python train.py --step %d\'","aggregated_output":"step %d: loss=%.4f\\n",'
            '"exit_code":0,"status":"completed"}}\n')


def write_all(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


def event(obj: dict[str, object]) -> None:
    write_all((json.dumps({**obj, "bench_t": round(time.time(), 6)}, separators=(",", ":")) + "\n").encode())


def body_line(n: int) -> bytes:
    step, done = divmod(n, 2)
    now = time.time()
    if done:
        return (FINISHED % (now, step, step, step, 1.0 / (step + 1))).encode()
    return (STARTED % (now, step, step)).encode()


def paced(first: int, last: int, rate: float, t0: float) -> None:
    """Lines first..last-1; with a rate, line n is due at t0 + n/rate."""
    for n in range(first, last):
        if rate > 0:
            ahead = t0 + n / rate - time.time()
            if ahead > 0.0005:
                time.sleep(ahead)
        write_all(body_line(n))


def workspace(argv: list[str]) -> Path:
    if os.environ.get("FLYWHEEL_WORKSPACE"):
        return Path(os.environ["FLYWHEEL_WORKSPACE"])
    for flag in ("--cd", "-C"):
        if flag in argv and argv.index(flag) + 1 < len(argv):
            return Path(argv[argv.index(flag) + 1])
    return Path.cwd()


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_exec(argv: list[str]) -> int:
    try:
        if not os.isatty(0):
            sys.stdin.buffer.read()  # like the real CLI: stdin is read to EOF
    except OSError:
        pass
    if "resume" in argv:
        thread = argv[argv.index("resume") + 1] if argv.index("resume") + 1 < len(argv) else str(uuid.uuid4())
        event({"type": "thread.started", "thread_id": thread})
        event({"type": "turn.completed", "usage": {"input_tokens": 1, "cached_input_tokens": 0, "output_tokens": 1}})
        return 0
    lines = int(os.environ.get("BENCH_LINES", "100"))
    rate = float(os.environ.get("BENCH_RATE", "0") or 0)
    idle = float(os.environ.get("BENCH_IDLE", "0") or 0)
    times_dir = os.environ.get("BENCH_TIMES_DIR")
    name = os.environ.get("FLYWHEEL_RUN_ID") or str(os.getpid())
    ws = workspace(argv)

    start = time.time()
    event({"type": "thread.started", "thread_id": str(uuid.uuid4())})
    event({"type": "turn.started"})
    idle_start = None
    if idle > 0:
        half = lines // 2
        paced(0, half, rate, start)
        idle_start = time.time()
        if times_dir:
            Path(times_dir, f"{name}.idle").write_text(f"{idle_start}\n")
        time.sleep(idle)
        paced(half, lines, rate, time.time() - half / rate if rate > 0 else 0)
    else:
        paced(0, lines, rate, start)
    (ws / "report.md").write_text(f"# Benchmark report\n\n{lines} lines printed.\n")
    changes = [{"path": "report.md", "kind": "add"}]
    event({"type": "item.completed", "item": {"id": "item_f", "type": "file_change", "changes": changes,
                                              "status": "completed"}})
    write_atomic(ws / MANIFEST, json.dumps([{"artifact_type": "text", "payload": {"path": "report.md"}}]))
    event({"type": "item.completed", "item": {"id": "item_m", "type": "agent_message", "text": "Done."}})
    usage = {"input_tokens": 24763, "cached_input_tokens": 24448, "output_tokens": 122}
    event({"type": "turn.completed", "usage": usage})
    end = time.time()
    if times_dir:
        write_atomic(Path(times_dir, f"{name}.json"),
                     json.dumps({"start": start, "end": end, "lines": lines, "idle_start": idle_start,
                                 "cpu": sum(os.times()[:2])}))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--version"]:
        print(f"codex-cli {VERSION}")
        return 0
    if argv[:1] == ["login"]:
        if "--with-api-key" in argv:
            sys.stdin.read()
        print("Logged in using an API key", file=sys.stderr)
        return 0
    if argv[:1] == ["exec"]:
        return run_exec(argv)
    print(f"steady_codex: unsupported command {argv[:2]}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
