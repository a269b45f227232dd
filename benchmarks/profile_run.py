#!/usr/bin/env python3
"""Profile one run of this flywheel-bootstrap under py-spy (a helper of
bench.py, for finding hot spots; py-spy is not a project dependency:
`/work/venv/bin/pip install py-spy`).

    /work/venv/bin/python benchmarks/profile_run.py --lines 20000 --batch
    /work/venv/bin/python benchmarks/profile_run.py --lines 20000 --rate 1000 --idle 20

It starts the local backend in this process, runs `python -m supervisor` with
benchmarks/steady_codex.py as codex under `py-spy record --subprocesses`
(supervisor and workers), and also records this process (the backend) with a
second py-spy. It prints, per process, the functions with the most samples
(own time, and with callees) and keeps the collapsed stacks in --out.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor.local_backend import LocalBackend  # noqa: E402 - after the sys.path line above

STEADY_CODEX = ROOT / "benchmarks" / "steady_codex.py"


ROLES = (("workers/log_shipper.py", "log-shipper"), ("workers/heartbeat.py", "heartbeat"),
         ("workers/artifact_watcher.py", "artifact-watcher"), ("steady_codex", "codex"))


def role_of(process: str, frames: list[str]) -> str:
    text = process + ";".join(frames)
    return next((role for mark, role in ROLES if mark in text), "supervisor")


def summarize(raw: Path, top: int) -> str:
    """Collapsed stacks -> top own/inclusive frames per process role. With
    --subprocesses py-spy prefixes each stack with `process PID:"cmdline"`
    frames, parent first; a forked worker's stack also holds the frames it
    inherited from the fork, so the role is found from the whole stack."""
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    incl: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    stacks = []
    roles: dict[str, str] = {}  # process frame -> role, learned from its main thread
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        procs = [i for i, f in enumerate(frames) if f.startswith("process ")]
        process = frames[procs[-1]] if procs else "this process"
        frames = frames[procs[-1] + 1:] if procs else frames
        role = role_of(process, frames)
        if role != "supervisor":
            roles[process] = role
        stacks.append((process, frames, int(count)))
    for process, frames, n in stacks:
        # A worker's other threads (watchdog, liveness ticker) hold no frame
        # that names the worker: they get the role of their process.
        key = roles.get(process, "supervisor")
        totals[key] += n
        if frames:
            own[key][frames[-1]] += n
        for frame in set(frames):
            incl[key][frame] += n
    out = []
    for key, total in totals.most_common():
        out.append(f"\n### {key}: {total} samples")
        out.append("  own time:")
        out += [f"    {n / total:6.1%}  {frame}" for frame, n in own[key].most_common(top)]
        out.append("  with callees:")
        out += [f"    {n / total:6.1%}  {frame}" for frame, n in incl[key].most_common(top)]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=0)
    parser.add_argument("--idle", type=float, default=0)
    parser.add_argument("--batch", action="store_true", help="log_batch on")
    parser.add_argument("--delay-ms", type=float, default=0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path("/tmp/flywheel-profile"))
    parser.add_argument("--with-idle", action="store_true", help="count idle (waiting) samples too")
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL (CPU hot spots)")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    if not py_spy:
        raise SystemExit("py-spy not found: /work/venv/bin/pip install py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="flywheel-profile-"))
    (work / "bin").mkdir()
    wrapper = work / "bin" / "codex"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STEADY_CODEX}" "$@"\n')
    wrapper.chmod(0o755)
    config = work / "config.toml"
    config.write_text(f'workspace_dir = "{work}/ws/<run_id>"\nsandbox_mode = "workspace-write"\n'
                      '[flywheel]\nworkspace_instructions = "Work in the workspace."\n')
    backend = LocalBackend(work / "backend.sqlite3").start()
    try:
        run_id, token = backend.create_run(prompt="Profile run.", log_batch=args.batch)
        backend.set_faults(delay_ms=args.delay_ms)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "BOOTSTRAP_", "BENCH_"))}
        env.update(PATH=f"{work / 'bin'}:{os.environ['PATH']}", HOME=str(work / "home"),
                   FLYWHEEL_HOME=str(work / "flywheel"), FLYWHEEL_RUN_TOKEN=token, PYTHONPATH=str(ROOT),
                   BENCH_LINES=str(args.lines), BENCH_RATE=str(args.rate), BENCH_IDLE=str(args.idle))
        idle = (["--idle"] if args.with_idle else []) + (["--gil"] if args.gil else [])
        tool_raw, backend_raw = args.out / "tool.txt", args.out / "backend.txt"
        spy_backend = subprocess.Popen([py_spy, "record", "--pid", str(os.getpid()), "--format", "raw",
                                        "--rate", "250", "-o", str(backend_raw), *idle],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        start = time.time()
        subprocess.run([py_spy, "record", "--subprocesses", "--format", "raw", "--rate", "250", "-o",
                        str(tool_raw), *idle, "--", sys.executable, "-m", "supervisor", "--run-id", run_id,
                        "--config", str(config), "--server", backend.url],
                       env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        wall = time.time() - start
        spy_backend.send_signal(2)
        spy_backend.wait(30)
        print(f"run {run_id}: {backend.entry_count(run_id):,} entries, state {backend.run(run_id)['state']}, "
              f"{wall:.2f} s under py-spy")
        print("== tool (supervisor and workers)" + summarize(tool_raw, args.top))
        if backend_raw.exists():
            print("\n== backend (this process)" + summarize(backend_raw, args.top))
    finally:
        backend.stop()
        backend.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
