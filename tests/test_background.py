"""A command started now and awaited later (supervisor.background): its result,
a timeout, a program that cannot run, and nothing left behind."""

from __future__ import annotations

import os

from supervisor.background import Background
from tests.faultkit import alive

ENV = {"PATH": os.environ.get("PATH", "")}


def test_result_of_a_finished_command() -> None:
    with Background(["sh", "-c", "echo out; echo err >&2; exit 3"], ENV, timeout=60) as command:
        done = command.result()
    assert (done.returncode, done.stdout, done.stderr, done.problem) == (3, b"out\n", b"err\n", "")


def test_a_command_past_its_timeout_is_killed_and_reaped() -> None:
    command = Background(["sleep", "600"], ENV, timeout=0.2)
    done = command.result()
    assert done.returncode is None and done.timed_out and "did not answer within 0.2 s" in done.problem
    assert command._proc is not None and command._proc.returncode is not None


def test_leaving_early_never_leaves_it_running() -> None:
    with Background(["sleep", "600"], ENV, timeout=60) as command:
        assert command._proc is not None
        pid = command._proc.pid
        assert alive(pid)
    assert not alive(pid) and command._proc.returncode is not None


def test_a_program_that_cannot_run() -> None:
    done = Background(["/nonexistent/program"], ENV, timeout=60).result()
    assert done.returncode is None and not done.timed_out
    assert done.problem.startswith("cannot run /nonexistent/program: ")
