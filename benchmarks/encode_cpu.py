"""CPU time of the log-shipper's encode step alone (no backend, no processes):
50,000 real-shaped Codex lines with a bootstrap entry every 50 lines.

    python benchmarks/encode_cpu.py LABEL                              # this checkout
    PYTHONPATH=/other/checkout python benchmarks/encode_cpu.py other   # A/B another one
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import multiprocess  # type: ignore[import-untyped]
import orjson

from workers.common.spool import CODEX_OUT, EntryLog
from workers.common.timing import Timing
from workers.log_shipper import Shipper, ShipperConfig
from workers.run_processes import RunProcesses
from workers.runtime import Channels, Mailbox

LINES = 50_000
BOOTSTRAP_EVERY = 50


def codex_line(i: int) -> bytes:
    item = {"id": f"item_{i}", "type": "command_execution", "command": "bash -lc ls",
            "aggregated_output": "docs\nsrc\n" * 5, "exit_code": 0, "status": "completed"}
    return orjson.dumps({"type": "item.completed", "item": item}) + b"\n"


def spool(folder: Path) -> None:
    log = EntryLog(folder)
    with open(folder / CODEX_OUT, "ab") as f:
        for i in range(LINES):
            f.write(codex_line(i))
            if i % BOOTSTRAP_EVERY == 0:
                f.flush()
                log.write("info", f"note {i}", "codex_event")


def encode_seconds(folder: Path) -> float:
    mp = multiprocess.get_context("fork")
    procs = RunProcesses(marker="bench", cgroup=None, owner=os.getpid(), owner_start=None)
    channels = Channels(name="log-shipper", commands=mp.SimpleQueue(), events=mp.SimpleQueue(),
                        liveness=mp.Value("d", 0.0, lock=False), run_processes=procs, parent_pid=os.getpid())
    shipper = Shipper(Mailbox(channels), ShipperConfig(folder, "http://127.0.0.1:9", "r", "tok", timing=Timing()))
    started = time.process_time()
    while shipper.encode_new():
        pass
    spent = time.process_time() - started
    assert shipper.state.next_seq == LINES + LINES // BOOTSTRAP_EVERY + 1, shipper.state.next_seq
    return spent


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "this checkout"
    runs = []
    for _ in range(5):
        folder = Path(tempfile.mkdtemp(prefix="encode-bench-"))
        try:
            spool(folder)
            runs.append(encode_seconds(folder))
        finally:
            shutil.rmtree(folder)
    shown = ", ".join(f"{r:.3f}" for r in runs)
    print(f"{label}: encode {LINES + LINES // BOOTSTRAP_EVERY:,} entries, best of 5: {min(runs):.3f} CPU s ({shown})")


if __name__ == "__main__":
    main()
