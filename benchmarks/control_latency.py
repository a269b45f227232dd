#!/usr/bin/env python3
"""Control channel latency (SPEC section 15), measured by hand, never in tests.

- first poll: from the supervisor launching Codex (its `codex exec launched`
  entry) to the backend receiving the run's first `GET /control/poll`; one
  figure per run, over --runs runs started one after the other;
- ack: from a command being queued in the backend to its ack being stored
  there, idle backend, --commands commands queued one at a time at random
  moments (so they fall anywhere in the 1 s poll cycle): the first is a
  take_over that stops Codex, the others find the run interactive already
  (ack at once) or are unknown commands (ignored at once).

Both ends are timestamps of the same machine's clock (millisecond resolution).

    python benchmarks/control_latency.py [--runs 10] [--commands 40]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor.local_backend import LocalBackend  # noqa: E402


def fake_codex() -> Path:
    for candidate in (ROOT / "tests" / "fake_codex", ROOT / "examples" / "fake_codex"):
        if candidate.exists():
            return candidate
    raise SystemExit("no fake codex found under tests/ or examples/")


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--commands", type=int, default=40)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="flywheel-control-bench-"))
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "codex").symlink_to(fake_codex())
    config = tmp / "config.toml"
    config.write_text(f'workspace_dir = "{tmp}/ws/<run_id>"\n[flywheel]\nworkspace_instructions = "Benchmark."\n')
    gate = tmp / "gate"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "FAKE_CODEX", "CODEX_"))}
    env.update(PATH=f"{bin_dir}:{env.get('PATH', '')}", FLYWHEEL_HOME=str(tmp / "home"), PYTHONPATH=str(ROOT),
               FAKE_CODEX_MODE="gate=0.05", FAKE_CODEX_GATE=str(gate))
    first_polls: list[float] = []
    acks: list[float] = []
    take_over: list[float] = []
    with LocalBackend(tmp / "backend.sqlite3") as backend:
        for n in range(args.runs):
            gate.unlink(missing_ok=True)
            run_id, token = backend.create_run("Benchmark the control channel.")
            proc = subprocess.Popen([sys.executable, "-m", "supervisor", "--run-id", run_id, "--config", str(config),
                                     "--server", backend.url], env={**env, "FLYWHEEL_RUN_TOKEN": token},
                                    stdout=subprocess.DEVNULL, stderr=open(tmp / f"{run_id}.err", "wb"))
            polled = wait(lambda: backend.control(run_id)["polls"]["first_at"] or proc.poll() is not None, 60,
                          "the first poll")
            if proc.returncode is not None:
                raise SystemExit(f"bootstrap exited {proc.returncode}: {(tmp / f'{run_id}.err').read_text()}")
            launched = wait(lambda: next((e["created_at"] for e in backend.entries(run_id)
                                          if e["message"] == "codex exec launched"), None), 60, "the launch entry")
            first_polls.append(seconds(polled) - seconds(launched))
            if n == 0:
                rng = random.Random(12)
                for i in range(args.commands):
                    time.sleep(rng.uniform(0.0, 1.0))
                    name = "take_over" if i % 2 == 0 else "no_such_command"
                    command_id = backend.queue_command(run_id, name)
                    done = backend.wait_ack(run_id, command_id, 60)
                    latency = seconds(done["acked_at"]) - seconds(done["queued_at"])
                    (take_over if i == 0 else acks).append(latency)
                backend.queue_command(run_id, "resume_autonomous")
            gate.touch()
            proc.wait(120)
    print("| measure | n | p50 | p95 | max |\n| --- | --- | --- | --- | --- |")
    for name, values in (("first poll after Codex starts", first_polls),
                         ("take_over ack (stops Codex)", take_over),
                         ("ack, idle backend", acks)):
        if values:
            print(f"| {name} | {len(values)} | {statistics.median(values):.3f} s | {pct(values, 0.95):.3f} s "
                  f"| {max(values):.3f} s |")


if __name__ == "__main__":
    main()
