"""What a run's start guarantees, however its steps are ordered for speed
(benchmarks/README.md, issue 14 item 2): the heartbeat worker runs before
Codex starts, bootstrap's own entries about the start come before Codex's
lines, and the workers started after Codex lose none of its lines. (A run
that ends before Codex still ships its log: tests/test_crash.py.)"""

from __future__ import annotations

from supervisor.local_backend import LocalBackend
from tests.conftest import Env
from tests.faultkit import codex_calls, finish, wait_until, workers
from workers.run_processes import process_start


def test_heartbeat_before_codex_and_start_entries_before_its_lines(env: Env, backend: LocalBackend) -> None:
    run_id, token = backend.create_run(prompt="Work.", log_batch=True)
    log, gate = env.tmp / "codex.jsonl", env.tmp / "codex-may-finish"
    proc = env.start("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": "lines=300,gate",
                            "FAKE_CODEX_GATE": str(gate), "FAKE_CODEX_LOG": str(log)})
    try:
        codex = wait_until(lambda: next((c["pid"] for c in codex_calls(log) if c["subcommand"] == "exec"), None),
                           30, "codex's pid")
        heartbeat = wait_until(lambda: workers(env.state(run_id)).get("heartbeat"), 10, "the heartbeat's pid")
        # Start times in clock ticks: the heartbeat worker was forked before Codex.
        codex_start, heartbeat_start = process_start(codex), process_start(heartbeat)
        assert codex_start is not None and heartbeat_start is not None
        assert heartbeat_start <= codex_start
        wait_until(lambda: backend.entry_count(run_id) > 300, 30, "codex's lines at the backend")
    finally:
        gate.touch()
        code, err = finish(proc)
    assert code == 0, err
    entries = backend.entries(run_id)
    assert [e["extra"]["seq"] for e in entries] == list(range(1, len(entries) + 1))
    launched = next(e["extra"]["seq"] for e in entries if e["message"] == "codex exec launched")
    first_codex = min(e["extra"]["seq"] for e in entries if e["extra"]["run_event_source"] == "codex")
    assert launched < first_codex
    assert all(e["extra"]["run_event_source"] == "bootstrap" for e in entries[:launched])
    assert entries[0]["message"].startswith("containment: "), "the containment line opens the log"
    printed = (env.state(run_id) / "codex.out").read_bytes().splitlines()
    assert sum(e["extra"]["run_event_source"] == "codex" for e in entries) == len(printed)
    assert backend.heartbeats(run_id)

