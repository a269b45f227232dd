"""The pool of `--runs` with real processes: scheduling, GPUs, failures,
signals (the single-run supervisor replaced by tests/pool_host.py's fake).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from supervisor.local_backend import LocalBackend
from supervisor.pool.runs_file import RunSpec
from supervisor.provision import CODEX_VERSION, host_arch, member_name
from tests.pool_host import CLOSED_SERVER, POOL_DRIVER, Host, max_concurrency, overlapping_gpu_sets, wait_gone
from workers.common.errors import ConfigError

# --------------------------------------------------------------------- the pool


def test_eight_runs_two_gpus_each_on_four(host: Host) -> None:
    specs = host.specs(8)
    assert host.run(specs, gpus_per_run=2) == 0
    events = host.read_events()
    starts = [e for e in events if e["ev"] == "start"]
    assert sorted(e["run"] for e in starts) == [f"r{i}" for i in range(1, 9)]
    assert max_concurrency(events) == 2
    assert overlapping_gpu_sets(events) == []
    assert all(len(e["gpus"].split(",")) == 2 for e in starts)
    assert {g for e in starts for g in e["gpus"].split(",")} <= {"0", "1", "2", "3"}
    # GPUs from nvidia-smi are numbered in PCI bus order; CUDA must count the same way.
    assert {e["order"] for e in starts} == {"PCI_BUS_ID"}
    for event in starts:
        number = event["run"][1:]
        assert event["token"] == f"tok-{number}-secret"
        assert event["pool_child"] == "1"
        assert event["sid"] is True  # own session: a terminal Ctrl-C reaches only the pool
        assert not any("secret" in arg for arg in event["argv"])
    output = host.output()
    assert "secret" not in output
    assert "8 runs: 8 complete" in output
    assert output.count("waiting") >= 6  # runs 3..8 waited for GPUs
    # Entries shipped, from each run's shipper.json.
    assert "42 entries shipped" in output


def test_failed_run_gives_exit_1_and_the_others_complete(host: Host) -> None:
    host.plan(r2="fail")
    assert host.run(host.specs(4), gpus_per_run=1) == 1
    events = host.read_events()
    assert sorted(e["run"] for e in events if e["ev"] == "end") == ["r1", "r2", "r3", "r4"]
    output = host.output()
    assert "4 runs: 3 complete, 1 error" in output
    assert "run reported an error (exit 1): codex exit code 1 (fake)" in output  # no doubled prefix
    assert str(host.home / "state" / "r2" / "pool-output.log") in output


def test_sigkilled_supervisor_is_reported_by_the_pool(host: Host, backend: LocalBackend) -> None:
    runs = [backend.create_run(prompt=f"task {i}") for i in range(3)]
    victim = runs[1][0]
    specs = [RunSpec(rid, tok, host.config, backend.url, None, n) for n, (rid, tok) in enumerate(runs, 1)]
    host.plan(**{victim: "sigkill"})
    assert host.run(specs) == 1
    ended = {e["run"] for e in host.read_events() if e["ev"] == "end"}
    assert ended == {runs[0][0], runs[2][0]}
    reported = backend.run(victim)
    assert reported["state"] == "error"
    assert reported["reason"] == "bootstrap supervisor killed by SIGKILL"
    assert backend.run(runs[0][0])["state"] != "error"
    output = host.output()
    assert "supervisor killed by SIGKILL; reported to the backend by the pool" in output
    assert "3 runs: 2 complete, 1 error" in output


def test_unreachable_backend_for_the_report_is_said(host: Host) -> None:
    host.plan(r1="sigkill")
    host.env["FLYWHEEL_TIMING_BACKOFF_BASE"] = "0.01"
    assert host.run(host.specs(1)) == 1
    assert "the pool could not report it to the backend (no answer)" in host.output()


def test_max_parallel_without_gpus(host: Host) -> None:
    assert host.run(host.specs(5), max_parallel=2) == 0
    events = host.read_events()
    assert max_concurrency(events) == 2
    # Without --gpus-per-run the pool leaves CUDA_VISIBLE_DEVICES alone.
    assert {e["gpus"] for e in events if e["ev"] == "start"} == {None}


def test_gpus_named_on_a_line_are_honoured(host: Host) -> None:
    specs = host.specs(4, r1=("3",), r2=("3",), r4=("0", "1"))
    assert host.run(specs, gpus_per_run=1) == 0
    events = host.read_events()
    gpus = {e["run"]: e["gpus"] for e in events if e["ev"] == "start"}
    assert gpus["r1"] == "3" and gpus["r2"] == "3" and gpus["r4"] == "0,1"
    assert overlapping_gpu_sets(events) == []


def test_run_holding_a_gpu_leaves_it_to_no_one_else(host: Host) -> None:
    # r1 keeps GPU 0 until the test lets it go; r2 wants GPU 0 and must wait.
    host.plan(r1="hang", r2="ok")
    specs = host.specs(2, r1=("0",), r2=("0",))

    def let_go() -> None:
        host.wait_for(lambda events: any(e["ev"] == "start" for e in events))
        os.kill(host.read_events()[0]["pid"], signal.SIGTERM)

    threading.Thread(target=let_go, daemon=True).start()
    status = host.run(specs)
    starts = [e["run"] for e in host.read_events() if e["ev"] in ("start", "term")]
    assert starts == ["r1", "r1", "r2"]  # r2 started only after r1 let GPU 0 go
    assert status == 1  # r1 was cancelled by someone other than the pool
    assert "run r2: waiting (needs GPU 0)" in host.output()


def test_requests_that_can_never_be_met_fail_up_front(host: Host) -> None:
    too_many = r"--gpus-per-run 5: this host has only 4 GPUs \(0, 1, 2, 3, from nvidia-smi -L\)"
    with pytest.raises(ConfigError, match=too_many):
        host.run(host.specs(2), gpus_per_run=5)
    with pytest.raises(ConfigError, match=r"line 2: run 'r2' asks for GPU 7"):
        host.run(host.specs(2, r2=("7",)))
    host.env["FAKE_NVIDIA_SMI_GPUS"] = "0"
    with pytest.raises(ConfigError, match="no GPUs found"):
        host.run(host.specs(2), gpus_per_run=1)
    with pytest.raises(ConfigError, match="--max-parallel 0"):
        host.run(host.specs(2), max_parallel=0)
    assert host.read_events() == []


def test_inherited_cuda_visible_devices_is_the_host(host: Host) -> None:
    host.env["CUDA_VISIBLE_DEVICES"] = "2,3"
    assert host.run(host.specs(3), gpus_per_run=1) == 0
    starts = [e for e in host.read_events() if e["ev"] == "start"]
    assert {e["gpus"] for e in starts} <= {"2", "3"}
    # The user's own numbering: the pool does not impose an order on it.
    assert {e["order"] for e in starts} == {None}


def test_bad_config_fails_everything_before_any_run(host: Host) -> None:
    bad = host.tmp / "bad.toml"
    bad.write_text("[flywheel]\n")
    specs = host.specs(3)
    specs[1] = RunSpec("r2", "t", bad, CLOSED_SERVER, None, 2)
    with pytest.raises(ConfigError) as caught:
        host.run(specs)
    assert str(bad) in caught.value.message and "run r2" in caught.value.message
    assert host.read_events() == []


def test_supervisor_leaving_a_process_behind_is_cleaned_up(host: Host) -> None:
    host.plan(r1="orphan")
    assert host.run(host.specs(1)) == 0
    grandchild = next(e["child"] for e in host.read_events() if e["ev"] == "grandchild")
    assert wait_gone([grandchild]) == []


def test_exit_statuses_map_to_the_pool_status(host: Host) -> None:
    host.plan(r1="exit:3", r2="exit:2", r3="ok")
    assert host.run(host.specs(3)) == 2
    output = host.output()
    assert "bad usage or config (exit 2)" in output and "backend refused or unreachable (exit 3)" in output


class _Tarball(BaseHTTPRequestHandler):
    body = b""
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        type(self).hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def codex_mirror() -> Iterator[tuple[str, list[str]]]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        data = b"#!/bin/sh\necho fake codex\n"
        info = tarfile.TarInfo(member_name(host_arch()))
        info.size, info.mode = len(data), 0o755
        archive.addfile(info, io.BytesIO(data))
    handler = type("Handler", (_Tarball,), {"body": gzip.compress(raw.getvalue()), "hits": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.hits
    server.shutdown()
    server.server_close()


def test_codex_is_downloaded_once_and_found_on_path_by_every_run(
    host: Host, codex_mirror: tuple[str, list[str]]
) -> None:
    url, hits = codex_mirror
    del host.env["BOOTSTRAP_MOCK_CODEX"]
    host.env["FLYWHEEL_CODEX_DOWNLOAD_URL"] = url
    assert host.run(host.specs(3)) == 0
    assert len(hits) == 1
    codex_dir = str(host.home / "codex" / CODEX_VERSION)
    assert {e["path0"] for e in host.read_events() if e["ev"] == "start"} == {codex_dir}
    # A second pool finds it in the cache: no download, same PATH.
    host.events.write_text("")
    assert host.run(host.specs(2)) == 0
    assert len(hits) == 1
    assert {e["path0"] for e in host.read_events() if e["ev"] == "start"} == {codex_dir}


def test_terminal_gets_a_live_table_then_the_summary(host: Host) -> None:
    assert host.run(host.specs(3), gpus_per_run=2, is_tty=True) == 0
    frames = [line for line in host.lines if line.startswith("RUN") or "\x1b[" in line]
    assert frames, host.lines
    assert "\x1b[" in host.output()  # redrawn in place
    summary = host.lines[-1]
    assert summary.startswith("RUN") and summary.endswith("3 runs: 3 complete")


# --------------------------------------------------------------------- signals


def start_driver(host: Host, count: int, **options: Any) -> subprocess.Popen[str]:
    host.env["FAKE_TOTAL"] = str(count)
    spec = {
        "runs": [
            {"run_id": f"r{i}", "token": f"tok-{i}", "config": str(host.config), "server": CLOSED_SERVER}
            for i in range(1, count + 1)
        ],
        "child": str(host.child),
        **options,
    }
    return subprocess.Popen(
        [sys.executable, "-c", POOL_DRIVER, json.dumps(spec)],
        env=host.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def started(count: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda events: sum(e["ev"] == "start" for e in events) == count


def test_sigint_cancels_every_run_and_leaves_nothing(host: Host) -> None:
    host.plan(r1="hang", r2="hang", r3="hang", r4="hang")
    pool = start_driver(host, 5, gpus_per_run=1)  # r5 waits for a GPU
    host.wait_for(started(4))
    pool.send_signal(signal.SIGINT)
    out, _ = pool.communicate(timeout=30)
    assert pool.returncode == 130, out
    events = host.read_events()
    assert sorted(e["run"] for e in events if e["ev"] == "term") == ["r1", "r2", "r3", "r4"]
    assert "r5" not in {e["run"] for e in events}
    assert "5 runs: 5 cancelled" in out
    assert "cancelled before it started" in out
    assert wait_gone([e["pid"] for e in events if e["ev"] == "start"]) == []


def test_sigterm_gives_143(host: Host) -> None:
    host.plan(r1="hang")
    pool = start_driver(host, 1)
    host.wait_for(started(1))
    pool.send_signal(signal.SIGTERM)
    out, _ = pool.communicate(timeout=30)
    assert pool.returncode == 143, out
    assert "1 run: 1 cancelled" in out


def test_second_sigint_kills_at_once(host: Host) -> None:
    host.plan(r1="stubborn", r2="stubborn")
    pool = start_driver(host, 2, cancel_grace=600)
    host.wait_for(started(2))
    pool.send_signal(signal.SIGINT)
    host.wait_for(lambda events: sum(e["ev"] == "term" for e in events) == 2)
    pool.send_signal(signal.SIGINT)
    out, _ = pool.communicate(timeout=30)
    assert pool.returncode == 130, out
    assert "killing every run now" in out
    assert "cancelled (supervisor killed by SIGKILL)" in out
    assert wait_gone([e["pid"] for e in host.read_events() if e["ev"] == "start"]) == []


def test_cancel_grace_bounds_a_stuck_shutdown(host: Host) -> None:
    host.plan(r1="stubborn")
    pool = start_driver(host, 1, cancel_grace=0.3)
    host.wait_for(started(1))
    pool.send_signal(signal.SIGINT)
    out, _ = pool.communicate(timeout=30)
    assert pool.returncode == 130, out
    assert "still stopping after 0.3s" in out


def test_sigkilled_pool_takes_its_runs_down(host: Host) -> None:
    host.plan(r1="hang", r2="hang")
    pool = start_driver(host, 2)
    host.wait_for(started(2))
    pool.kill()
    pool.communicate(timeout=30)
    # PR_SET_PDEATHSIG: each supervisor gets SIGTERM and shuts down as if cancelled.
    host.wait_for(lambda events: sum(e["ev"] == "term" for e in events) == 2)
    assert wait_gone([e["pid"] for e in host.read_events() if e["ev"] == "start"]) == []


