"""The heartbeat's one-line summary, as a table (no processes)."""

from __future__ import annotations

import pytest

from workers.common.spool import ShipperState
from workers.heartbeat import duration, summarize


@pytest.mark.parametrize("seconds,expected", [
    (0, "0s"), (59.9, "59s"), (60, "1m00s"), (3599, "59m59s"), (3600, "1h00m00s"), (90061, "25h01m01s"),
    (-5, "0s"),
])
def test_duration(seconds: float, expected: str) -> None:
    assert duration(seconds) == expected


@pytest.mark.parametrize("phase,started,state,age,expected", [
    ("preparing the workspace", None, ShipperState(), None, "preparing the workspace, 0 log entries shipped"),
    ("codex running", 1000.0, ShipperState(next_seq=1235, delivered=1234), 3.0,
     "codex running for 2m05s, 1,234 log entries shipped, last event 3s ago"),
    ("codex running", 1000.0, ShipperState(next_seq=1501, delivered=1000, input_tokens=24763, output_tokens=122),
     None, "codex running for 2m05s, 1,000 log entries shipped, 500 waiting, tokens 24,763 in / 122 out"),
    # The Codex start time only shows while Codex runs.
    ("codex exited, reporting", 1000.0, ShipperState(next_seq=11, delivered=10), None,
     "codex exited, reporting, 10 log entries shipped"),
    ("codex running", None, ShipperState(), None, "codex running, 0 log entries shipped"),
])
def test_summarize(phase: str, started: float | None, state: ShipperState, age: float | None,
                   expected: str) -> None:
    assert summarize(phase, started, 1125.0, state, age) == expected
