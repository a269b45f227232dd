"""The pool's pure decisions: exit statuses, GPUs, who starts next, each
child's command and environment."""

from __future__ import annotations

import signal
from pathlib import Path

from supervisor.pool import states
from supervisor.pool.children import read_delivered
from supervisor.pool.decisions import (
    EXIT_PRIORITY,
    child_env,
    classify_exit,
    next_starts,
    plan_gpus,
    pool_exit_status,
    supervisor_argv,
)
from supervisor.pool.gpus import GpuAllocator
from supervisor.pool.runs_file import RunSpec


def test_classify_exit() -> None:
    assert classify_exit(0, cancelling=False).state == states.COMPLETE
    assert classify_exit(1, cancelling=False).status == 1
    killed = classify_exit(-9, cancelling=False)
    assert (killed.state, killed.status, killed.post_reason) == (
        states.ERROR, 1, "bootstrap supervisor killed by SIGKILL")
    assert classify_exit(-15, cancelling=True).post_reason == "cancelled (SIGTERM)"
    assert classify_exit(143, cancelling=True).state == states.CANCELLED
    assert classify_exit(143, cancelling=True).post_reason is None
    # A supervisor stopped by SIGHUP/SIGQUIT reported its run cancelled itself.
    for code, name in ((129, "SIGHUP"), (131, "SIGQUIT")):
        hung_up = classify_exit(code, cancelling=False)
        assert (hung_up.state, hung_up.result, hung_up.post_reason) == (states.CANCELLED, f"cancelled ({name})", None)
    assert classify_exit(77, cancelling=False).status == 1
    # 70: the supervisor failed and could not report the run; the pool reports it.
    unreported = classify_exit(70, cancelling=False)
    assert (unreported.state, unreported.status) == (states.ERROR, 1)
    assert unreported.post_reason is not None and unreported.post_reason.startswith("bootstrap failed:")


def test_pool_exit_status_priority() -> None:
    assert EXIT_PRIORITY == (2, 4, 3, 1)
    assert pool_exit_status([0, 0], None) == 0
    assert pool_exit_status([0, 1, 3], None) == 3
    assert pool_exit_status([4, 1, 3, 2], None) == 2
    assert pool_exit_status([1, 4], None) == 4
    assert pool_exit_status([1], signal.SIGINT) == 130
    assert pool_exit_status([0], signal.SIGTERM) == 143


def test_next_starts_keeps_promised_gpus_for_runs_ahead() -> None:
    alloc = GpuAllocator(["0", "1", "2", "3"])
    assert alloc.try_acquire(["0"]) == ("0",)
    requests = {"a": 2, "b": ("1",), "c": None, "d": 2}
    # "a" takes 1,2; "b" wants 1 and waits; "c" needs no GPU; "d" must not take 3 —
    # only one is free and it waits too.
    starts, why = next_starts(["a", "b", "c", "d"], requests, alloc, running=1, max_parallel=None)
    assert starts == [("a", ("1", "2")), ("c", None)]
    assert why == {"b": "needs GPU 1", "d": "needs 2 free GPUs"}
    alloc.release(["0"])
    # "b" waits for GPU 1: "x" behind it may not take 1 even when free later.
    alloc.release(["1", "2"])
    alloc.try_acquire(["1"])
    starts, why = next_starts(["b", "x"], {"b": ("1",), "x": ("0", "1")}, alloc, running=0, max_parallel=None)
    assert starts == [] and set(why) == {"b", "x"}
    starts, why = next_starts(["p", "q"], {"p": None, "q": None}, alloc, running=1, max_parallel=2)
    assert starts == [("p", None)] and why == {"q": "max-parallel 2"}


def test_plan_gpus_without_discovery_trusts_named_gpus() -> None:
    specs = [RunSpec("a", "t", Path("c"), "http://x", ("5",), 1), RunSpec("b", "t", Path("c"), "http://x", None, 2)]
    plan = plan_gpus(specs, None, (), "nvidia-smi -L")
    assert plan.host == ("5",) and plan.requests == {"a": ("5",), "b": None}


def test_child_command_and_environment() -> None:
    spec = RunSpec("r1", "s3cret", Path("/c.toml"), "http://h:1", None, 1)
    argv = supervisor_argv(spec, heartbeat_interval=2.5, codex_timeout=None)
    assert argv[1:] == ["-m", "supervisor", "--run-id", "r1", "--config", "/c.toml", "--server",
                        "http://h:1", "--heartbeat-interval", "2.5"]
    assert "s3cret" not in argv
    env = child_env({"FLYWHEEL_RUN_ID": "other", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, spec, None, pci_order=True)
    assert env["FLYWHEEL_RUN_TOKEN"] == "s3cret" and "FLYWHEEL_RUN_ID" not in env
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"  # no assignment: left alone
    env = child_env({"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}, spec, ("1", "2"), pci_order=True)
    assert env["CUDA_VISIBLE_DEVICES"] == "1,2" and env["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"


def test_read_delivered_tolerates_partial_files(tmp_path: Path) -> None:
    assert read_delivered(tmp_path) is None
    (tmp_path / "shipper.json").write_text('{"deliv')
    assert read_delivered(tmp_path) is None
    (tmp_path / "shipper.json").write_text('{"delivered": true}')
    assert read_delivered(tmp_path) is None
    (tmp_path / "shipper.json").write_text('{"delivered": 1234, "seq": 9}')
    assert read_delivered(tmp_path) == 1234


