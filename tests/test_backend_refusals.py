"""The backend refuses log entries (SPEC section 6): one bad entry costs only
itself, never the batch that carries it; a refused run token stops the run."""

from __future__ import annotations

import subprocess

from supervisor.local_backend import LocalBackend
from tests.conftest import Env
from tests.faultkit import alive, codex_calls, finish, wait_until

MARKER = "step 137: loss"  # in exactly one line the fake codex prints with lines=N


def start(env: Env, backend: LocalBackend, mode: str, **payload: object) -> tuple[str, subprocess.Popen[str]]:
    run_id, token = backend.create_run(prompt="Work.", **payload)
    proc = env.start("--run-id", run_id, "--config", str(env.config()), "--server", backend.url,
                     extra={"FLYWHEEL_RUN_TOKEN": token, "FAKE_CODEX_MODE": mode,
                            "FAKE_CODEX_GATE": str(env.tmp / "never"), "FAKE_CODEX_LOG": str(env.tmp / "calls")})
    return run_id, proc


def test_a_4xx_for_one_entry_of_a_batch_drops_only_that_entry(env: Env, backend: LocalBackend) -> None:
    backend.set_faults(reject_containing=MARKER)
    run_id, proc = start(env, backend, "lines=1000", log_batch=True)
    code, err = finish(proc)
    assert code == 0, err
    assert backend.run(run_id)["state"] == "complete"
    entries = backend.entries(run_id, dedupe=True)
    seqs = sorted(e["extra"]["seq"] for e in entries)
    missing = sorted(set(range(1, seqs[-1] + 1)) - set(seqs))
    assert len(missing) == 1, f"exactly the refused entry is missing, not {missing[:10]}"
    assert not any(MARKER in e["message"] for e in entries)
    printed = (env.state(run_id) / "codex.out").read_bytes().splitlines()
    codex = [e for e in entries if e["extra"]["run_event_source"] == "codex"]
    assert len(codex) == len(printed) - 1
    assert "refused log entries (HTTP 422)" in (env.state(run_id) / "worker-log-shipper.log").read_text()
    assert "Traceback" not in err


def test_a_refused_run_token_mid_run_stops_the_run_with_a_clear_error(env: Env, backend: LocalBackend) -> None:
    run_id, proc = start(env, backend, "gate", log_batch=True)
    wait_until(lambda: backend.entry_count(run_id) > 20, 30, "the first entries")
    backend.set_faults(status=401, paths=["/logs"])
    code, err = finish(proc)  # the gate never opens: only the refusal ends the run
    assert code != 0
    run = backend.run(run_id)
    assert run["state"] == "error"
    assert "refused the run token (HTTP 401)" in run["reason"]
    assert "refused the run token (HTTP 401)" in err
    assert "Traceback" not in err
    pid = codex_calls(env.tmp / "calls")[0]["pid"]
    assert not alive(pid), "codex was stopped"
